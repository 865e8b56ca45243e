/* rendezvous_probe.c: drives dist_rendezvous for tests/dist/test_dist.py.
 * usage: rendezvous_probe SPEC SEED TIMEOUT_S  (rank/world from the environment)
 * Rank 0 fills a 128-byte blob (the size of an ncclUniqueId) from SEED; every
 * rank prints the blob it holds afterwards in hex, or the error. */
#include <stdio.h>
#include <stdlib.h>

#include "../../data/errbuf.h"
#include "../../host/dist.h"

int main(int argc, char **argv)
{
    unsigned char blob[128] = { 0 };
    char err[ERRBUF];
    dist_env e;
    if (argc != 4) {
        fprintf(stderr, "usage: rendezvous_probe SPEC SEED TIMEOUT_S\n");
        return 2;
    }
    if (dist_env_detect(&e, err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (e.rank == 0) {
        unsigned long long x = strtoull(argv[2], NULL, 10);
        for (size_t i = 0; i < sizeof blob; i++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            blob[i] = (unsigned char)(x >> 56);
        }
    }
    if (dist_rendezvous(&e, argv[1], blob, sizeof blob, atof(argv[3]), err)) {
        fprintf(stderr, "anatomy: error: %s\n", err);
        return 1;
    }
    printf("rank %d:", e.rank);
    for (size_t i = 0; i < sizeof blob; i++)
        printf("%02x", blob[i]);
    printf("\n");
    return 0;
}
