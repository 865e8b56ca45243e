/* fuzz_shard.c: libFuzzer target for the shard reader (data/shard.c), through
 * its public API: the input becomes one or two shard files, which
 * loader_open + loader_next must either read or reject with a message.
 *
 * The first input byte sets the run: bit 0 raw file bytes (else a valid
 * header is written, with a token count that bit 1 may make a lie), bit 2 two
 * files, bits 3-4 B-1, bits 5-6 T-1, bit 7 shuffle; the second byte picks the
 * vocabulary size. Whatever loads must give tokens < vocab and targets equal
 * to the inputs shifted by one, and loader_seek must reproduce a batch. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../data/errbuf.h"
#include "../../data/shard.h"

static char g_dir[64];

static void cleanup(void)
{
    char path[96];
    snprintf(path, sizeof path, "%s/s_000.bin", g_dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/s_001.bin", g_dir);
    unlink(path);
    rmdir(g_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* /dev/shm when there is one: the loader maps files, and RAM is faster */
    const char *tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(g_dir, sizeof g_dir, "%s/fuzz_shard_%d", tmp, (int)getpid());
    mkdir(g_dir, 0700);
    atexit(cleanup);
    return 0;
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

/* Writes one shard file: the bytes as they are, or behind a header. */
static void write_shard(const char *path, const uint8_t *data, size_t n, int raw, int lie)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        abort();
    if (!raw) {
        unsigned char h[SHARD_HEADER_INTS * 4] = {0};
        uint32_t count = (uint32_t)(n / 2);
        if (lie && n >= 4)                      /* a count from the data itself */
            count = (uint32_t)data[0] | (uint32_t)data[1] << 8 | (uint32_t)data[2] << 16;
        put32(h, SHARD_MAGIC);
        put32(h + 4, SHARD_VERSION);
        put32(h + 8, count);
        fwrite(h, 1, sizeof h, f);
    }
    fwrite(data, 1, n, f);
    fclose(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    int flags = data[0], vocab = 1 + data[1] * 257;
    int B = 1 + (flags >> 3 & 3), T = 1 + (flags >> 5 & 3), shuffle = flags >> 7 & 1;
    int two = flags >> 2 & 1;
    data += 2;
    size -= 2;
    char a[96], b[96], pattern[96], err[ERRBUF];
    snprintf(a, sizeof a, "%s/s_000.bin", g_dir);
    snprintf(b, sizeof b, "%s/s_001.bin", g_dir);
    snprintf(pattern, sizeof pattern, "%s/s_*.bin", g_dir);
    size_t half = two ? size / 2 : size;
    write_shard(a, data, half, flags & 1, flags & 2);
    if (two)
        write_shard(b, data + half, size - half, flags & 1, flags & 2);
    else
        unlink(b);

    err[0] = 0;
    loader *ld = loader_open(pattern, B, T, 0, 1, shuffle, 1234, vocab, err);
    if (!ld) {
        if (!err[0])
            __builtin_trap();               /* a failure must say why */
        return 0;
    }
    int32_t in[16], tg[16], in0[16];
    int bt = B * T, ok0 = 0;
    for (int step = 0; step < 4; step++) {
        err[0] = 0;
        if (loader_next(ld, in, tg, err) != 0) {
            if (!err[0])
                __builtin_trap();
            break;
        }
        for (int i = 0; i < bt; i++)
            if (in[i] < 0 || in[i] >= vocab || tg[i] < 0 || tg[i] >= vocab ||
                (i + 1 < bt && tg[i] != in[i + 1]))
                __builtin_trap();
        if (step == 0) {
            memcpy(in0, in, sizeof in);
            ok0 = 1;
        }
        if (loader_position(ld) != (uint64_t)step + 1)
            __builtin_trap();
    }
    if (ok0) {
        loader_seek(ld, 0);
        if (loader_next(ld, in, tg, err) != 0 || memcmp(in, in0, (size_t)bt * sizeof *in) != 0)
            __builtin_trap();
    }
    loader_close(ld);
    return 0;
}
