/* Shared declarations of the native CPU kernels (native.py compiles every .c file here into one library). */
#ifndef MUXSERVE_KERNELS_H
#define MUXSERVE_KERNELS_H
#include <stdint.h>

#define MAX_W 64  /* widest column panel (panels.py PANEL_WIDTHS) */
#define MAX_M 8   /* rows of x in one register tile (gemv_panel takes more in tiles of MAX_M) */

/* One column panel: y[m][0:w] (+)= x[m][0:K] @ Wp (K rows of w floats) for M rows; y rows are ldy floats
   apart. add != 0 adds to y (a residual), else overwrites it. */
void gemv_panel(const float *x, int64_t M, const float *Wp, float *y, int64_t ldy, int64_t K, int64_t w, int add);

/* 0 if a panel width (16, 32, 64) and row count (>= 1) are ones gemv_panel takes, else -1. */
int gemv_check(int64_t M, int64_t w);

#endif
