/* ckpt_crc.h: per-tensor checksums of anatomy's checkpoints.
 *
 * A checkpoint's __metadata__ carries "crc32c": "NAME=XXXXXXXX" for every
 * tensor, separated by spaces, XXXXXXXX the 8-digit hex CRC-32C
 * (data/crc32c.h) of the tensor's bytes as stored. Keyed by name, not by
 * position: safetensors writers that copy a file's metadata reorder its
 * tensors (Python's save_file sorts them), and such a copy still verifies.
 * A loader verifies every tensor; files without the entry (Hugging Face,
 * llm.c, anatomy checkpoints from before it) load unchecked, as before. */
#ifndef ANATOMY_CKPT_CRC_H
#define ANATOMY_CKPT_CRC_H

#include "safetensors.h"

#define CKPT_CRC_KEY "crc32c"

/* The "crc32c" value for tensors t[0..n) (none transposed). malloc'd
 * string, or NULL when out of memory. */
char *ckpt_crc_value(const st_out_tensor *t, int n);

/* Checks every tensor of f against its "crc32c" entry, when there is one.
 * -1 with err naming the file and the first tensor whose bytes differ (or
 * that the entry and the file do not list the same tensors). */
int ckpt_crc_verify(const st_file *f, char *err);

#endif
