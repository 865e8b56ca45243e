/* images.h: readers for labelled image sets, as files ship them.
 *
 *  - MNIST's IDX format (MNIST, Fashion-MNIST): an images file, magic
 *    0x00000803 then three big-endian uint32 dims (count, rows, columns)
 *    and count*rows*columns bytes, and a labels file, magic 0x00000801, one
 *    dim (count) and count bytes. Either may be gzip-compressed (as Debian's
 *    dataset-fashion-mnist ships them); the gzip magic is sniffed, not the
 *    name.
 *  - CIFAR-10's binary format: files of records of one label byte and 3072
 *    pixel bytes (1024 red, 1024 green, 1024 blue, each 32 x 32 row-major).
 *
 * Everything is validated before use: magic numbers, dims against the
 * file's length, image and label counts against each other, every label
 * against the number of classes. Errors are one line naming the file.
 * Readers know nothing of models: they return bytes. */
#ifndef ANATOMY_IMAGES_H
#define ANATOMY_IMAGES_H

#include <stdint.h>

typedef struct {
    int n;                      /* images */
    int channels, height, width;
    uint8_t *pixels;            /* [n, channels*height*width], channel-major */
    uint8_t *labels;            /* [n] */
} image_set;

/* The image and label files of one IDX set. classes bounds the labels
 * (each < classes). Returns 0, or -1 with err; s is then empty. */
int images_read_idx(image_set *s, const char *images_path, const char *labels_path,
                    int classes, char *err);

/* The records of npaths CIFAR-10 binary files, concatenated in order. */
int images_read_cifar(image_set *s, const char *const *paths, int npaths, int classes,
                      char *err);

/* Resolves a --data path into a set (the naming convention of the command
 * line):
 *  - a directory: the standard names in it (or in its cifar-10-batches-bin/):
 *    train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz], or
 *    data_batch_1.bin .. data_batch_5.bin; with test set, the test files
 *    t10k-images-idx3-ubyte[.gz] + t10k-labels-idx1-ubyte[.gz], or
 *    test_batch.bin.
 *  - a file whose name ends in ".bin": one CIFAR-10 batch file.
 *  - any other file: an IDX images file; its labels file is the same name
 *    with "images-idx3" replaced by "labels-idx1" (the standard naming).
 *    test is ignored: the file is what is read. */
int images_open(image_set *s, const char *path, int test, int classes, char *err);

void images_free(image_set *s);

#endif
