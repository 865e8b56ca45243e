/* rundir.h: the run directory (--out) of `anatomy train`. */
#ifndef ANATOMY_RUNDIR_H
#define ANATOMY_RUNDIR_H

#include <stddef.h>

/* Creates dir and its parents (mkdir -p); errors name --out. */
int rundir_mkdir_p(const char *dir, char *err);
/* <out>/step_NNNNNN.safetensors, the name of step's checkpoint. */
void rundir_ckpt_path(const char *out, int step, char *path, size_t cap);

#endif
