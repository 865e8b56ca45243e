/* shard.h: token shards in llm.c's layout, and the loader that turns a glob of
 * them into micro-batches.
 *
 * A shard: 256 int32 header words ([0] = 20240520 magic, [1] = 1 version,
 * [2] = token count, the rest 0), then `count` uint16 tokens, little-endian.
 * The loader concatenates the shards (sorted by name) into one token stream.
 * Micro-batch j of rank r is global micro-batch g = j*world + r. Without
 * shuffling it reads B*T+1 consecutive tokens starting at token g*B*T of the
 * stream (mod its length, wrapping around), inputs the first B*T, targets the
 * same shifted by one. With shuffling, the stream is cut into chunks of B*T+1
 * tokens at multiples of B*T and each epoch visits them in a permutation drawn
 * from (seed, epoch); so the position state is the single counter j. */
#ifndef ANATOMY_SHARD_H
#define ANATOMY_SHARD_H

#include <stddef.h>
#include <stdint.h>

#define SHARD_MAGIC 20240520
#define SHARD_VERSION 1
#define SHARD_HEADER_INTS 256

/* Writes a shard atomically (temporary file, fsync, rename). */
int shard_write(const char *path, const uint16_t *tokens, size_t n, char *err);

typedef struct loader loader;

/* Opens every file matching `pattern` (a glob). Validates each header and size
 * against the file length. Tokens >= vocab are reported by loader_next (the
 * files are not scanned up front). */
loader *loader_open(const char *pattern, int B, int T, int rank, int world, int shuffle,
                    uint64_t seed, int vocab, char *err);
/* Fills inputs and targets (int32 [B*T] each) with this rank's next micro-batch.
 * Returns 0, or -1 with err naming the shard and offset of a token >= vocab. */
int loader_next(loader *ld, int32_t *inputs, int32_t *targets, char *err);
/* Micro-batches consumed by this rank so far; loader_seek restores it. */
uint64_t loader_position(const loader *ld);
void loader_seek(loader *ld, uint64_t position);
/* Copies the n tokens at stream index start (wrapping at the stream's end)
 * into out, checked against vocab as loader_next does: for readers that
 * pick their own offsets (random rows). Does not move the position. */
int loader_read_at(loader *ld, uint64_t start, uint64_t n, int32_t *out, char *err);
/* Total tokens across all shards. */
uint64_t loader_tokens(const loader *ld);
int loader_files(const loader *ld);
void loader_close(loader *ld);

#endif
