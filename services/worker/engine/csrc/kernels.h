/* Shared declarations of the native CPU kernels (native.py compiles every .c file here into one library per
   instruction set: avx512, avx2 or generic, chosen by the compiler flags native.py passes).

   The tile shapes follow the vector registers of the build:
     avx512 (__AVX512F__): 16-float vectors, 32 registers: panels 64, 32 or 16 wide, tiles of 6, 12 or 12 rows
       (24 accumulators and the weight vectors in the 32 registers: 8 x 64 tiles spilled 5 accumulators);
     avx2 (__AVX2__ + __FMA__): 8-float vectors, 16 registers: panels 16 or 8 wide, tiles of 6 or 12 rows
       (at most 12 accumulators, the weight vectors and a broadcast in the 16 registers);
     generic: 4-float vectors (SSE2 on x86-64, NEON on aarch64), panels 16 or 8 wide, tiles of 3 or 6 rows.
   panels.py lays the matrices out in the widths kernel_info reports. */
#ifndef MUXSERVE_KERNELS_H
#define MUXSERVE_KERNELS_H
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#define ISA_CODE 2
#define VW 16           /* floats per vector register */
#define NWIDTHS 3
#define WIDTHS {64, 32, 16}
#define TILE_ROWS {6, 12, 12}
#elif defined(__AVX2__) && defined(__FMA__)
#define ISA_CODE 1
#define VW 8
#define NWIDTHS 2
#define WIDTHS {16, 8}
#define TILE_ROWS {6, 12}
#else
#define ISA_CODE 0
#define VW 4
#define NWIDTHS 2
#define WIDTHS {16, 8}
#define TILE_ROWS {3, 6}
#endif

typedef float vf __attribute__((vector_size(VW * 4)));    /* one vector register of the build */
typedef int32_t vi __attribute__((vector_size(VW * 4)));  /* the same register as VW int32 lanes */

static inline vf vfload(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }  /* unaligned */
static inline void vfstore(float *p, vf v) { memcpy(p, &v, sizeof v); }

#define MAX_W 64   /* widest column panel of any build */
#define MAX_M 12   /* most rows of x in one register tile of any build */

/* One column panel: y[m][0:w] (+)= x[m][0:K] @ Wp (K rows of w floats) for M rows; y rows are ldy floats
   apart. add != 0 adds to y (a residual), else overwrites it. w must pass gemv_check. next: the panel (K rows
   of w floats) the caller takes after this one, or NULL: its tiles of several rows fetch it into L2 while they
   compute, so the next panel's memory read overlaps this one's arithmetic. */
void gemv_panel(const float *x, int64_t M, const float *Wp, float *y, int64_t ldy, int64_t K, int64_t w, int add,
                const float *next);

/* Inside an OpenMP parallel region, called by every thread: y [M][N] (+)= x [M][K] @ W (N / w panels of w) over
   the threads, in per-thread panel ranges with the next panel fetched ahead (gemv.c); ctr: one counter per
   thread, zero before the call; next: this thread's first panel of the matrix that follows, or NULL. Ends with
   a barrier. */
void gemv_for(const float *x, int64_t M, const float *W, float *y, int64_t K, int64_t w, int64_t N, int add,
              int64_t *ctr, const float *next);

/* The first panel of the calling thread's range (gemv_for) in a [K, N] matrix of w-wide panels; NULL for none. */
const float *first_panel(const float *W, int64_t K, int64_t w, int64_t N);

/* 0 if a panel width (one of this build's WIDTHS) and row count (>= 1) are ones gemv_panel takes, else -1. */
int gemv_check(int64_t M, int64_t w);

/* out[0] = floats per vector, out[1] = number of panel widths n, out[2 .. 2 + n) the widths (preferred first),
   out[2 + n .. 2 + 2n) their tile rows. Returns ISA_CODE (0 generic, 1 avx2, 2 avx512). */
int kernel_info(int64_t *out);

#endif
