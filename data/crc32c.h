/* crc32c.h: CRC-32C (Castagnoli, polynomial 0x1EDC6F41 reflected: 0x82F63B78),
 * the checksum of iSCSI, ext4 and of anatomy's checkpoint tensors.
 * crc32c("123456789") = 0xe3069283. */
#ifndef ANATOMY_CRC32C_H
#define ANATOMY_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Extends crc (0 to start) over n bytes at p; crc32c(crc32c(0, a), b) is the
 * checksum of a followed by b. Uses the CPU's crc32 instruction (SSE4.2) where
 * there is one, else a table-driven loop 8 bytes at a time. */
uint32_t crc32c(uint32_t crc, const void *p, size_t n);

/* The portable loop alone (for tests: both must agree). */
uint32_t crc32c_portable(uint32_t crc, const void *p, size_t n);

#endif
