/* safetensors.h: reading and writing safetensors files, and atomic file
 * replacement.
 *
 * The format: 8-byte little-endian header length N, N bytes of JSON
 *   { "__metadata__": {"key": "value", ...},           (optional, strings only)
 *     "<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]},
 *     ... }
 * then the data section; offsets are relative to its start, row-major,
 * little-endian. st_open validates everything before anyone reads a byte of
 * data: N within the file, the JSON, every dtype known, shape product times
 * dtype size equal to end - begin, offsets inside the data section, tensors
 * not overlapping, names unique. The file is read into memory whole (not
 * mapped: a file truncated under a mapping would fault), so nothing that
 * happens to it after st_open returns matters.
 *
 * Writes go to a temporary file in the same folder, are fsync'd, renamed over
 * the destination, and the folder is fsync'd: a failed write leaves whatever
 * was there before.
 */
#ifndef ANATOMY_SAFETENSORS_H
#define ANATOMY_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAXDIM 8
/* Largest header accepted (the reference implementation's limit). */
#define ST_MAXHEADER ((uint64_t)100 << 20)

typedef enum {
    ST_BOOL, ST_U8, ST_I8, ST_U16, ST_I16, ST_F16, ST_BF16, ST_U32, ST_I32,
    ST_F32, ST_U64, ST_I64, ST_F64, ST_F8_E4M3, ST_F8_E5M2, ST_NDTYPES
} st_dtype;

/* "F32" etc.; st_dtype_parse returns -1 for an unknown name. */
const char *st_dtype_name(st_dtype t);
int st_dtype_parse(const char *name);
size_t st_dtype_size(st_dtype t);

typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAXDIM];
    uint64_t numel;
    uint64_t begin, end;    /* byte offsets in the data section */
} st_tensor;

typedef struct st_file st_file;

/* Reads `size` bytes of the open file fd into *out (malloc'd; the caller
 * frees it). A file shorter than size by then (truncated meanwhile) is an
 * error naming path, where a mapping would have faulted (SIGBUS). */
int st_read_fd(int fd, const char *path, size_t size, void **out, char *err);
/* Opens and validates a file. NULL with err ("<path>: ...") on failure. */
st_file *st_open(const char *path, char *err);
void st_close(st_file *f);
const char *st_path(const st_file *f);

/* Tensors in header order. */
int st_count(const st_file *f);
const st_tensor *st_at(const st_file *f, int i);
/* By name (binary search), or NULL. */
const st_tensor *st_find(const st_file *f, const char *name);
/* The tensor's bytes (mapped, possibly unaligned). */
const void *st_data(const st_file *f, const st_tensor *t);

/* __metadata__: count, i-th pair, value by key (NULL when absent). */
int st_meta_count(const st_file *f);
void st_meta_at(const st_file *f, int i, const char **key, const char **val);
const char *st_meta(const st_file *f, const char *key);

/* Converts a float tensor (F32, F16, BF16, F64) to fp32 into out[numel].
 * transpose (2-D only): out is the [shape[1], shape[0]] transpose.
 * -1 with err naming file and tensor for other dtypes. */
int st_read_f32(const st_file *f, const st_tensor *t, float *out, int transpose, char *err);
/* Converts n elements of a float dtype (F32, F16, BF16, F64) at src (any
 * alignment) to fp32; other dtypes: -1, nothing written. */
int st_convert_f32(const void *src, st_dtype dt, float *dst, size_t n);
/* Writes `shape` as "[a, b]" into buf (for error messages); returns buf. */
char *st_shape_str(const int64_t *shape, int ndim, char *buf, size_t cap);

/* One tensor to write. data holds numel elements of dtype, row-major in the
 * file's shape; with transpose (2-D only) data is instead the [shape[1],
 * shape[0]] matrix and the writer stores its transpose. */
typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAXDIM];
    const void *data;
    int transpose;
} st_out_tensor;

/* Writes tensors in the given order (header in that order too) and nmeta
 * string pairs meta[2i] (key), meta[2i+1] (value) as __metadata__ (meta may
 * be NULL when nmeta is 0).
 * The header is padded with spaces so that data starts 8-byte aligned.
 * Atomic; on failure an existing file at path is left untouched. */
int st_write(const char *path, const st_out_tensor *t, int n,
             const char *const *meta, int nmeta, char *err);

/* Atomic replacement of one file: open writes a temporary file beside path;
 * commit fsyncs, renames over path and fsyncs the folder; abort removes the
 * temporary file. Every failure fills err naming path and cleans up, so after
 * an error from write or commit the handle is finished (abort is a no-op). */
typedef struct {
    int fd;
    char *path, *tmp;
} st_atomic;

int st_atomic_open(st_atomic *a, const char *path, char *err);
int st_atomic_write(st_atomic *a, const void *buf, size_t n, char *err);
int st_atomic_commit(st_atomic *a, char *err);
void st_atomic_abort(st_atomic *a);
/* Creates a folder and its parents (mkdir -p); 0 or -1 with err. */
int st_mkdirs(const char *dir, char *err);

#endif
