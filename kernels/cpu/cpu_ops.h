/* cpu_ops.h: private to kernels/cpu/. Op files beside backend_cpu.c that fill
 * in part of the CPU backend's op table.
 *
 * Every C file in kernels/cpu/ is compiled twice (fp32, and fp64 with
 * -DCPU_REAL_DOUBLE), so each install function has one name per build; the
 * macro picks the one of the build that includes this header. */
#ifndef ANATOMY_CPU_OPS_H
#define ANATOMY_CPU_OPS_H

#include "../ops.h"

/* The backend's thread policy (backend_cpu.c's team()): how many threads a
 * parallel region over `work` elements gets. Passed in, so that the op files
 * share it without seeing the backend's private struct. */
typedef int (*cpu_team_fn)(const backend *be, double work);

/* ops_seq.c: embedding, sequence_embed, rows_mean, tanh, regression_loss (forward and
 * backward) into be. */
void cpu_seq_install_f32(backend *be, cpu_team_fn team);
void cpu_seq_install_f64(backend *be, cpu_team_fn team);

/* ops_norm.c: batchnorm (forward, with the residual add, backward) into be. */
void cpu_norm_install_f32(backend *be, cpu_team_fn team);
void cpu_norm_install_f64(backend *be, cpu_team_fn team);

#ifdef CPU_REAL_DOUBLE
#define CPU_SEQ_INSTALL cpu_seq_install_f64
#define CPU_NORM_INSTALL cpu_norm_install_f64
#else
#define CPU_SEQ_INSTALL cpu_seq_install_f32
#define CPU_NORM_INSTALL cpu_norm_install_f32
#endif

#endif
