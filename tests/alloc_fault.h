/* alloc_fault.h: a test executable's aligned_alloc, which fails on demand.
 * The CPU backend takes tensors and its scratch from aligned_alloc; an op
 * whose scratch cannot be had falls back to a path that needs none
 * (attention: the tiled code; cpu-bf16's matmuls: the fp32 BLAS). Defined
 * in the executable, this aligned_alloc is the one every caller gets: while
 * alloc_fails is set it returns NULL, as a machine out of memory would,
 * and counts the refusals in alloc_refused; otherwise it is libc's. */
#ifndef ALLOC_FAULT_H
#define ALLOC_FAULT_H
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>

static int alloc_fails, alloc_refused;

void *aligned_alloc(size_t alignment, size_t size)
{
    static void *(*real)(size_t, size_t);
    if (alloc_fails) {
        alloc_refused++;
        errno = ENOMEM;
        return NULL;
    }
    if (!real)
        *(void **)&real = dlsym(RTLD_NEXT, "aligned_alloc");
    return real(alignment, size);
}
#endif
