/* blas.h: the one place that names the BLAS library's symbols. Include this
 * instead of <cblas.h>.
 *
 * mk/blas.mk links either the OpenBLAS of PyPI's scipy-openblas32 wheel,
 * whose every symbol carries a prefix (scipy_cblas_sgemm,
 * scipy_openblas_get_corename, ...) and whose pkg-config flags define
 * BLAS_SYMBOL_PREFIX=scipy_, or Debian's libopenblas, with plain names. The
 * macros below map the plain names the code uses onto the prefixed ones, so
 * the rest of the code reads the same with either library. A function used
 * from the BLAS must be listed here. */
#ifndef ANATOMY_BLAS_H
#define ANATOMY_BLAS_H

#include <cblas.h>

#ifdef BLAS_SYMBOL_PREFIX
#define BLAS_CAT_(p, n) p##n
#define BLAS_CAT(p, n) BLAS_CAT_(p, n)
#define cblas_sgemm BLAS_CAT(BLAS_SYMBOL_PREFIX, cblas_sgemm)
#define cblas_dgemm BLAS_CAT(BLAS_SYMBOL_PREFIX, cblas_dgemm)
#define openblas_set_num_threads BLAS_CAT(BLAS_SYMBOL_PREFIX, openblas_set_num_threads)
#define openblas_get_num_threads BLAS_CAT(BLAS_SYMBOL_PREFIX, openblas_get_num_threads)
#define openblas_get_corename BLAS_CAT(BLAS_SYMBOL_PREFIX, openblas_get_corename)
#define openblas_get_config BLAS_CAT(BLAS_SYMBOL_PREFIX, openblas_get_config)
#endif

#endif
