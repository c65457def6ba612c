/* Products x @ W of any number of rows over column panels (fp32), in register tiles of up to 8 rows x 64 columns.
 *
 * y[m][p * w + j] = sum_k x[m][k] * W[p][k][j] for a weight stored as P contiguous panels W[P][K][w]
 * (services/worker/engine/panels.py, w = 16, 32 or 64). Each panel is one contiguous stream of K * w floats
 * and each thread streams whole panels, with its M x w outputs in registers: the weight is read once, front
 * to back, at the memory's streaming rate, and each weight vector serves all M rows (a row-major [K, N]
 * matrix-vector product reads N-float rows from several places at once and ran slower here; 256-wide panels
 * kept M x 256 accumulators in memory and made 8 rows 2x slower than one: docs/benchmarks.md). More rows go
 * through the panel 8 at a time while it sits in L2; on this project's CPUs that beat MKL's sgemm and a bmm
 * over the panels up to 512 rows (docs/benchmarks.md), so prefill uses it too.
 *
 * Portable C (GCC/Clang vector extensions: 16-float vectors, split by the compiler where the CPU has
 * narrower ones). Built on first use by native.py with -O3 -march=native -fopenmp, linked against the
 * OpenMP runtime torch already loaded, so its threads are torch's.
 */
#include <stdint.h>
#include <string.h>

#include "kernels.h"

typedef float v16 __attribute__((vector_size(64)));

static inline v16 load(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }

/* One panel (16 * NV columns) times M rows of x, M and NV compile-time constants so the M x NV accumulators
   live in registers: one pass over the panel, front to back, each weight vector loaded once for all M rows.
   out [M][16 * NV]. */
#define PANEL(M, NV)                                                                                        \
    static void panel_##M##_##NV(const float *restrict x, const float *restrict Wp, float *restrict out,   \
                                 int64_t K) {                                                               \
        v16 a[M][NV];                                                                                       \
        memset(a, 0, sizeof a);                                                                             \
        for (int64_t k = 0; k < K; k++) {                                                                   \
            v16 wv[NV];                                                                                     \
            for (int v = 0; v < NV; v++) wv[v] = load(Wp + k * 16 * NV + 16 * v);                          \
            for (int m = 0; m < M; m++) {                                                                   \
                const float xm = x[m * K + k];                                                              \
                for (int v = 0; v < NV; v++) a[m][v] += xm * wv[v];                                         \
            }                                                                                               \
        }                                                                                                   \
        memcpy(out, a, sizeof a);                                                                           \
    }
#define PANELS_OF(M) PANEL(M, 1) PANEL(M, 2) PANEL(M, 4)
PANELS_OF(1) PANELS_OF(2) PANELS_OF(3) PANELS_OF(4) PANELS_OF(5) PANELS_OF(6) PANELS_OF(7) PANELS_OF(8)

typedef void (*panel_fn)(const float *, const float *, float *, int64_t);
static const panel_fn PANEL_FNS[MAX_M][3] = {  /* [M - 1][log2(w / 16)] */
    {panel_1_1, panel_1_2, panel_1_4}, {panel_2_1, panel_2_2, panel_2_4}, {panel_3_1, panel_3_2, panel_3_4},
    {panel_4_1, panel_4_2, panel_4_4}, {panel_5_1, panel_5_2, panel_5_4}, {panel_6_1, panel_6_2, panel_6_4},
    {panel_7_1, panel_7_2, panel_7_4}, {panel_8_1, panel_8_2, panel_8_4}};

void gemv_panel(const float *restrict x, int64_t M, const float *restrict Wp, float *restrict y, int64_t ldy,
                int64_t K, int64_t w, int add) {
    float acc[MAX_M * MAX_W] __attribute__((aligned(64)));
    for (int64_t m0 = 0; m0 < M; m0 += MAX_M) {  /* rows in chunks of MAX_M: the panel stays in L2 between them */
        const int64_t mc = M - m0 < MAX_M ? M - m0 : MAX_M;
        PANEL_FNS[mc - 1][w == 16 ? 0 : w == 32 ? 1 : 2](x + m0 * K, Wp, acc, K);
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

int gemv_check(int64_t M, int64_t w) { return (w != 16 && w != 32 && w != 64) || M < 1 ? -1 : 0; }

/* x [M][K], W [P][K][w] (w = 16, 32 or 64), y [M][P * w]; nthreads OpenMP threads share the panels. Returns 0,
   or -1 for a shape it does not take (nothing computed). */
int gemv_panels(const float *x, const float *W, float *y, int64_t M, int64_t K, int64_t w, int64_t P,
                int nthreads) {
    if (gemv_check(M, w)) return -1;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t p = 0; p < P; p++) gemv_panel(x, M, W + p * K * w, y + p * w, P * w, K, w, 0);
    return 0;
}
