/* Products x @ W of any number of rows over column panels (fp32), in register tiles sized for the build's ISA.
 *
 * y[m][p * w + j] = sum_k x[m][k] * W[p][k][j] for a weight stored as P contiguous panels W[P][K][w]
 * (services/worker/engine/panels.py; w one of the build's WIDTHS, kernels.h). Each panel is one contiguous
 * stream of K * w floats and each thread streams whole panels, with its R x w outputs in registers (R: the
 * width's TILE_ROWS): the weight is read once, front to back, at the memory's streaming rate, and each weight
 * vector serves all R rows. More rows go through the panel R at a time while it sits in L2; gemv_panels takes
 * the rows of a large x in blocks that stay in L2 while all panels pass over them.
 * gemv_for splits one matrix over the threads of an enclosing parallel region (the fused decode step's).
 *
 * The tiles must fit the register file: 8 x 64 floats fill AVX-512's 32 zmm registers but would spill 64 ymm
 * registers on AVX2 to the stack (16 ymm), so the AVX2 build takes 6 x 16 or 12 x 8 tiles instead (kernels.h).
 * Portable C (GCC/Clang vector extensions of VW floats). Built by native.py once per ISA with -O3, that ISA's
 * flags and -fopenmp, linked against the OpenMP runtime torch already loaded, so its threads are torch's.
 */
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

static const int64_t WIDTH_OF[NWIDTHS] = WIDTHS, ROWS_OF[NWIDTHS] = TILE_ROWS;
#ifndef ROW_BLOCK_BYTES
#define ROW_BLOCK_BYTES (256 * 1024)  /* x rows per block of gemv_panels: half an L2 of 512 KiB */
#endif
#ifndef X_BLOCK_MIN_BYTES
#define X_BLOCK_MIN_BYTES (6 * 1024 * 1024)  /* gemv_panels blocks the rows of an x larger than this */
#endif

/* One panel (VW * NV columns) times M rows of x, M and NV compile-time constants so the M x NV accumulators
   live in registers: one pass over the panel, front to back, each weight vector loaded once for all M rows.
   out [M][VW * NV]. pf: K cache lines to fetch into L2 meanwhile, one per k (part of the next panel), or NULL. */
#define PANEL(M, NV)                                                                                        \
    static void panel_##M##_##NV(const float *restrict x, const float *restrict Wp, float *restrict out,   \
                                 int64_t K, const char *pf) {                                               \
        vf a[M][NV];                                                                                        \
        memset(a, 0, sizeof a);                                                                             \
        for (int64_t k = 0; k < K; k++) {                                                                   \
            vf wv[NV];                                                                                      \
            if (pf) __builtin_prefetch(pf + 64 * k, 0, 2);                                                  \
            for (int v = 0; v < NV; v++) wv[v] = vfload(Wp + k * VW * NV + VW * v);                          \
            for (int m = 0; m < M; m++) {                                                                   \
                const float xm = x[m * K + k];                                                              \
                for (int v = 0; v < NV; v++) a[m][v] += xm * wv[v];                                         \
            }                                                                                               \
        }                                                                                                   \
        memcpy(out, a, sizeof a);                                                                           \
    }

/* One row, two sets of NV accumulators (even and odd k): two dependency chains per vector keep the FMA
   units busy where NV alone is too few (a batch-1 decode step). */
#define PANEL_ROW(NV)                                                                                       \
    static void panel_1_##NV(const float *restrict x, const float *restrict Wp, float *restrict out,       \
                             int64_t K, const char *pf) {                                                   \
        (void)pf;                                                                                           \
        vf a[NV], b[NV];                                                                                    \
        memset(a, 0, sizeof a), memset(b, 0, sizeof b);                                                     \
        int64_t k = 0;                                                                                      \
        for (; k + 2 <= K; k += 2)                                                                          \
            for (int v = 0; v < NV; v++) {                                                                  \
                a[v] += x[k] * vfload(Wp + k * VW * NV + VW * v);                                             \
                b[v] += x[k + 1] * vfload(Wp + (k + 1) * VW * NV + VW * v);                                   \
            }                                                                                               \
        for (; k < K; k++)                                                                                  \
            for (int v = 0; v < NV; v++) a[v] += x[k] * vfload(Wp + k * VW * NV + VW * v);                   \
        for (int v = 0; v < NV; v++) a[v] += b[v];                                                          \
        memcpy(out, a, sizeof a);                                                                           \
    }

typedef void (*panel_fn)(const float *, const float *, float *, int64_t, const char *);

/* TABLE(NV) lists panel_1_NV .. panel_12_NV (rows beyond the width's TILE_ROWS are never called). */
#define ROWS_2_TO_12(NV) PANEL(2, NV) PANEL(3, NV) PANEL(4, NV) PANEL(5, NV) PANEL(6, NV) PANEL(7, NV) \
    PANEL(8, NV) PANEL(9, NV) PANEL(10, NV) PANEL(11, NV) PANEL(12, NV)
#define TABLE(NV) {panel_1_##NV, panel_2_##NV, panel_3_##NV, panel_4_##NV, panel_5_##NV, panel_6_##NV, \
    panel_7_##NV, panel_8_##NV, panel_9_##NV, panel_10_##NV, panel_11_##NV, panel_12_##NV}

#if VW == 16
PANEL_ROW(4) PANEL_ROW(2) PANEL_ROW(1)
ROWS_2_TO_12(4) ROWS_2_TO_12(2) ROWS_2_TO_12(1)
static const panel_fn PANEL_FNS[NWIDTHS][MAX_M] = {TABLE(4), TABLE(2), TABLE(1)};  /* [width index][M - 1] */
#elif VW == 8
PANEL_ROW(2) PANEL_ROW(1)
ROWS_2_TO_12(2) ROWS_2_TO_12(1)
static const panel_fn PANEL_FNS[NWIDTHS][MAX_M] = {TABLE(2), TABLE(1)};
#else
PANEL_ROW(4) PANEL_ROW(2)
ROWS_2_TO_12(4) ROWS_2_TO_12(2)
static const panel_fn PANEL_FNS[NWIDTHS][MAX_M] = {TABLE(4), TABLE(2)};
#endif

static int width_index(int64_t w) {
    for (int i = 0; i < NWIDTHS; i++)
        if (WIDTH_OF[i] == w) return i;
    return -1;
}

void gemv_panel(const float *restrict x, int64_t M, const float *restrict Wp, float *restrict y, int64_t ldy,
                int64_t K, int64_t w, int add, const float *next) {
    float acc[MAX_M * MAX_W] __attribute__((aligned(64)));
    const int wi = width_index(w);
    const int64_t R = ROWS_OF[wi], lines = w / 16;  /* 64-byte lines per k of a panel */
    for (int64_t m0 = 0; m0 < M; m0 += R) {  /* rows in tiles of R: the panel stays in L2 between them */
        const int64_t mc = M - m0 < R ? M - m0 : R, t = m0 / R;
        /* tile t fetches lines t K .. (t + 1) K - 1 of the next panel into L2, one per k (a multi-row tile only) */
        const char *pf = next && mc > 1 && t < lines ? (const char *)next + t * K * 64 : NULL;
        PANEL_FNS[wi][mc - 1](x + m0 * K, Wp, acc, K, pf);
        for (int64_t m = 0; m < mc; m++) {
            const float *a = acc + m * w;
            float *ym = y + (m0 + m) * ldy;
            if (add)
                for (int64_t j = 0; j < w; j++) ym[j] += a[j];
            else
                memcpy(ym, a, sizeof(float) * w);
        }
    }
}

/* Matrix over the threads of the enclosing parallel region: y [M][N] (+)= x [M][K] @ W (P panels of w). Thread t
   owns panels [P t / nt, P (t + 1) / nt) and takes them front to back; a thread done with its own takes the
   rest of the others' ranges the same way (one shared counter per range, ctr: nt counters, zero before the
   matrix), so a thread that lost its core for a while holds the others up at the barrier by a panel, not by
   its whole range. While a panel is computed its tiles fetch the next one of the range into L2 (after the
   range's last, `next`: the first panel of this thread's range in the matrix that follows, or NULL), so
   memory reads overlap the arithmetic. */
void gemv_for(const float *x, int64_t M, const float *W, float *y, int64_t K, int64_t w, int64_t N, int add,
              int64_t *ctr, const float *next) {
    const int64_t P = N / w, nt = omp_get_num_threads(), t = omp_get_thread_num();
    for (int64_t r = 0; r < nt; r++) {  /* its own range first, then the others' */
        const int64_t u = (t + r) % nt, lo = P * u / nt, hi = P * (u + 1) / nt;
        for (;;) {
            int64_t i;
#pragma omp atomic capture
            i = ctr[u]++;
            const int64_t p = lo + i;
            if (p >= hi) break;
            gemv_panel(x, M, W + p * K * w, y + p * w, N, K, w, add,
                       p + 1 < hi ? W + (p + 1) * K * w : r == 0 ? next : NULL);
        }
    }
#pragma omp barrier
}

/* The first panel of this thread's range (gemv_for) in a [K, N] matrix of w-wide panels; NULL for no matrix. */
const float *first_panel(const float *W, int64_t K, int64_t w, int64_t N) {
    if (!W) return NULL;
    return W + (N / w) * omp_get_thread_num() / omp_get_num_threads() * K * w;
}

int gemv_check(int64_t M, int64_t w) { return width_index(w) < 0 || M < 1 ? -1 : 0; }

int kernel_info(int64_t *out) {
    out[0] = VW, out[1] = NWIDTHS;
    for (int i = 0; i < NWIDTHS; i++) out[2 + i] = WIDTH_OF[i], out[2 + NWIDTHS + i] = ROWS_OF[i];
    return ISA_CODE;
}

/* x [M][K], W [P][K][w] (w one of the build's widths), y [M][P * w]; nthreads OpenMP threads share the panels.
   Returns 0, or -1 for a shape it does not take (nothing computed). */
int gemv_panels(const float *x, const float *W, float *y, int64_t M, int64_t K, int64_t w, int64_t P,
                int nthreads) {
    if (gemv_check(M, w)) return -1;
    /* An x of over X_BLOCK_MIN_BYTES in row blocks of ROW_BLOCK_BYTES, which stay in L2 while every panel
       passes over them: x is read from memory once, each panel once per block. A smaller x stays in cache
       over the panels as it is. */
    const int64_t R = ROWS_OF[width_index(w)], fit = (ROW_BLOCK_BYTES / (4 * K)) / R * R;
    const int64_t MB = 4 * M * K <= X_BLOCK_MIN_BYTES ? M : fit < R ? R : fit;
#pragma omp parallel num_threads(nthreads)
    for (int64_t m0 = 0; m0 < M; m0 += MB) {
        const int64_t mb = M - m0 < MB ? M - m0 : MB;
#pragma omp for schedule(static) nowait
        for (int64_t p = 0; p < P; p++) gemv_panel(x + m0 * K, mb, W + p * K * w, y + m0 * P * w + p * w, P * w, K, w, 0, NULL);
    }
    return 0;
}
