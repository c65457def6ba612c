/* Matrix-vector products of up to 8 rows over column panels (fp32), for CPU decode steps.
 *
 * y[m][p * w + j] = sum_k x[m][k] * W[p][k][j] for a weight stored as P contiguous panels W[P][K][w]
 * (services/worker/engine/panels.py). Each panel is one contiguous stream of K * w floats and each
 * thread streams whole panels, accumulating its M x w outputs in a small local array: the weight is read
 * once, front to back, at the memory's streaming rate (a row-major [K, N] matrix-vector product reads
 * N-float rows from several places at once and ran slower here: docs/benchmarks.md).
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

void gemv_panel(const float *restrict x, int64_t M, const float *restrict Wp, float *restrict y, int64_t ldy,
                int64_t K, int64_t w, int add) {
    v16 acc[MAX_M * (MAX_W / 16)] __attribute__((aligned(64)));
    const int64_t nv = w / 16;  /* w is a multiple of 16 (panels.py) */
    memset(acc, 0, sizeof(v16) * nv * M);
    for (int64_t k = 0; k < K; k++) {
        const float *restrict row = Wp + k * w;
        for (int64_t m = 0; m < M; m++) {
            const float a = x[m * K + k];
            v16 *restrict am = acc + m * nv;
            int64_t v = 0;
            for (; v + 4 <= nv; v += 4) {
                am[v] += a * load(row + 16 * v);
                am[v + 1] += a * load(row + 16 * v + 16);
                am[v + 2] += a * load(row + 16 * v + 32);
                am[v + 3] += a * load(row + 16 * v + 48);
            }
            for (; v < nv; v++) am[v] += a * load(row + 16 * v);
        }
    }
    for (int64_t m = 0; m < M; m++) {
        const float *a = (const float *)(acc + m * nv);
        float *ym = y + m * ldy;
        if (add)
            for (int64_t j = 0; j < w; j++) ym[j] += a[j];
        else
            memcpy(ym, a, sizeof(float) * w);
    }
}

int gemv_check(int64_t M, int64_t w) { return (w > MAX_W || w < 16 || w % 16 || M < 1 || M > MAX_M) ? -1 : 0; }

/* x [M][K] (M <= MAX_M), W [P][K][w] (16 <= w <= MAX_W, w % 16 == 0), y [M][P * w]; nthreads OpenMP
   threads share the panels. Returns 0, or -1 for a shape it does not take (nothing computed). */
int gemv_panels(const float *x, const float *W, float *y, int64_t M, int64_t K, int64_t w, int64_t P,
                int nthreads) {
    if (gemv_check(M, w)) return -1;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t p = 0; p < P; p++) gemv_panel(x, M, W + p * K * w, y + p * w, P * w, K, w, 0);
    return 0;
}
