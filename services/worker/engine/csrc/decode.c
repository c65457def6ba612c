/* Every decoder layer of a decode step in one call (CPU fp32): M sequences, one new token each.
 *
 * The same math as model.Transformer._layer on the torch path (RMSNorm, fused QKV (+ bias), RoPE, K/V
 * written into the head-wise pool, grouped-query attention over each sequence's blocks with an optional
 * sliding window, output projection + residual, RMSNorm, SwiGLU, down projection + residual), inside ONE
 * OpenMP parallel region: the matrices are split over the threads panel by panel (gemv.c's gemv_for), attention
 * by (sequence, kv head), each thread normalizes the few hidden rows itself. A batch-1 step on the torch
 * path spends ~1/4 of its time dispatching ~40 small ops per layer (docs/benchmarks.md); here a layer
 * costs its weight reads, reading its context (latency-bound: short streams from scattered blocks) and
 * 6 barriers.
 *
 * Layouts (the engine's own, see pool.py and panels.py):
 *   x [M][D] hidden states in, out; matrices as column panels [N / w][K][w] of their [K, N] form;
 *   pool [num_blocks][2][bs][hd]: K^T [hd][bs] then V [bs][hd] per block;
 *   tables [M][tstride] int32: a sequence's block table, index (token_block * L + layer) * H + kv_head;
 *   RoPE in the half-split convention of transformers' Llama (rotate_half).
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

enum { L_, D_, HQ_, H_, HD_, I_, BS_, WINDOW_, WQKV_, WO_, W13_, W2_, V_, WLM_, NBLOCKS_ };  /* dims[] (fused.py) */
enum { ATTN_NORM, WQKV, BQKV, WO, FFN_NORM, W13, W2, NWEIGHTS };  /* weights[] per layer (fused.WEIGHTS) */
enum { NORM, LM_HEAD, INV_FREQ };  /* weights[] after the layers' */

typedef struct {
    int64_t L, D, Hq, H, hd, I, bs, window, wqkv, wo, w13, w2, V, wlm, num_blocks;
    float eps;
} Dims;

typedef struct {
    const float *w[NWEIGHTS];
} LayerW;

/* exp of VW floats, Cephes expf: 2^n * e^r with n = floor(x log2(e) + 1/2), r = x - n ln 2 (in two parts) and a
   degree-6 polynomial for e^r. Within a few ulp of expf for x in [-87, 88]; 0 below -87, exp(88) above 88
   (softmax and SiLU only need that range). The build's own vector width: wider vectors than the registers
   (16 floats on AVX2) compile into split integer ops and stack spills. */
static inline vf vexp(vf x) {
    const vi under = x < -87.f, over = x > 88.f;
    const vf lo = x - x - 87.f, hi = x - x + 88.f;
    x = (vf)(((vi)x & ~(under | over)) | ((vi)lo & under) | ((vi)hi & over));
    const vf fx = x * 1.44269504088896341f + 0.5f;
    vi n = __builtin_convertvector(fx, vi);  /* truncates: floor below */
    n -= (vi)(__builtin_convertvector(n, vf) > fx) & 1;
    const vf fn = __builtin_convertvector(n, vf);
    const vf r = x - fn * 0.693359375f + fn * 2.12194440e-4f;
    vf p = 1.9875691500e-4f * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.f;
    return (vf)((vi)(p * (vf)((n + 127) << 23)) & ~under);
}

/* y[m] = x[m] * rsqrt(mean(x[m]^2) + eps) * g, for M rows of D. */
static void rms_norm(const float *x, const float *g, float *y, int64_t M, int64_t D, float eps) {
    for (int64_t m = 0; m < M; m++) {
        const float *xm = x + m * D;
        vf acc = {0};  /* VW partial sums: a scalar sum is one chain of D dependent adds */
        int64_t j = 0;
        for (; j + VW <= D; j += VW) {
            const vf v = vfload(xm + j);
            acc += v * v;
        }
        float ss = 0.f;
        for (int k = 0; k < VW; k++) ss += acc[k];
        for (; j < D; j++) ss += xm[j] * xm[j];
        const float r = 1.f / sqrtf(ss / (float)D + eps);
        for (int64_t j = 0; j < D; j++) y[m * D + j] = xm[j] * r * g[j];
    }
}

/* v[hd] rotated in place: v * cos + rotate_half(v) * sin. */
static void rope(float *v, const float *cos, const float *sin, int64_t hd) {
    const int64_t h = hd / 2;
    for (int64_t d = 0; d < h; d++) {
        const float a = v[d], b = v[d + h];
        v[d] = a * cos[d] - b * sin[d];
        v[d + h] = b * cos[d + h] + a * sin[d + h];
    }
}

/* The block holding token block b of (layer l, kv head h) in one sequence's table: K^T [hd][bs], then V [bs][hd]. */
static const float *kv_block(const Dims *d, const float *pool, const int32_t *table, int64_t b, int64_t l, int64_t h) {
    return pool + (int64_t)table[(b * d->L + l) * d->H + h] * 2 * d->bs * d->hd;
}

/* New token's K (rotated) and V of (sequence m, kv head h) into its pool slot; bias added first. */
static void write_kv(const Dims *d, const LayerW *lw, int64_t l, int64_t m, int64_t h, float *qkv, float *pool,
                     const int32_t *table, int64_t pos, const float *cos, const float *sin) {
    const int64_t hd = d->hd, N = (d->Hq + 2 * d->H) * hd, bs = d->bs;
    float *k = qkv + m * N + (d->Hq + h) * hd, *v = k + d->H * hd;
    const float *b = lw->w[BQKV];
    if (b)
        for (int64_t j = 0; j < hd; j++) k[j] += b[(d->Hq + h) * hd + j], v[j] += b[(d->Hq + d->H + h) * hd + j];
    rope(k, cos, sin, hd);
    float *blk = (float *)kv_block(d, pool, table, pos / bs, l, h);
    const int64_t slot = pos % bs;
    for (int64_t j = 0; j < hd; j++) blk[j * bs + slot] = k[j], blk[bs * hd + slot * hd + j] = v[j];
}

/* acc[0:bs] = q[0:hd] @ K^T [hd][bs] of one block. NB = BS / VW vectors per K^T row, accumulated in
   registers (two sets, even and odd rows, for two dependency chains, where both fit in 12 registers). */
#define SCORES(BS)                                                                                     \
    static void scores_##BS(const float *q, const float *kt, int64_t hd, float *acc) {                \
        enum { NB = BS / VW, TWO = 2 * (BS / VW) <= 12 };                                               \
        vf a[NB], b[NB];                                                                                \
        memset(a, 0, sizeof a), memset(b, 0, sizeof b);                                                 \
        int64_t j = 0;                                                                                  \
        if (TWO)                                                                                        \
            for (; j + 2 <= hd; j += 2)                                                                 \
                for (int k = 0; k < NB; k++) {                                                          \
                    a[k] += q[j] * vfload(kt + j * BS + VW * k);                                        \
                    b[k] += q[j + 1] * vfload(kt + (j + 1) * BS + VW * k);                              \
                }                                                                                       \
        for (; j < hd; j++)                                                                             \
            for (int k = 0; k < NB; k++) a[k] += q[j] * vfload(kt + j * BS + VW * k);                  \
        for (int k = 0; k < NB; k++) vfstore(acc + VW * k, a[k] + b[k]);                                \
    }
SCORES(16)
SCORES(32)
SCORES(64)

static void scores(const float *q, const float *kt, int64_t hd, int64_t bs, float *acc) {
    if (bs == 16) return scores_16(q, kt, hd, acc);
    if (bs == 32) return scores_32(q, kt, hd, acc);
    if (bs == 64) return scores_64(q, kt, hd, acc);
    memset(acc, 0, sizeof(float) * bs);
    for (int64_t j = 0; j < hd; j++)
        for (int64_t t = 0; t < bs; t++) acc[t] += q[j] * kt[j * bs + t];
}

/* out[0:hd] += sum_t p[t] * v[t][0:hd] over n rows of V; NH = HD / VW vectors per row, in registers (two
   sets, even and odd rows, where both fit in 12 registers). */
#define WSUM(HD)                                                                                       \
    static void wsum_##HD(const float *p, const float *v, int64_t n, float *out) {                     \
        enum { NH = HD / VW, TWO = 2 * (HD / VW) <= 12 };                                               \
        vf a[NH], b[NH];                                                                                \
        memset(b, 0, sizeof b);                                                                         \
        for (int k = 0; k < NH; k++) a[k] = vfload(out + VW * k);                                       \
        int64_t t = 0;                                                                                  \
        if (TWO)                                                                                        \
            for (; t + 2 <= n; t += 2)                                                                  \
                for (int k = 0; k < NH; k++) {                                                          \
                    a[k] += p[t] * vfload(v + t * HD + VW * k);                                         \
                    b[k] += p[t + 1] * vfload(v + (t + 1) * HD + VW * k);                               \
                }                                                                                       \
        for (; t < n; t++)                                                                              \
            for (int k = 0; k < NH; k++) a[k] += p[t] * vfload(v + t * HD + VW * k);                    \
        for (int k = 0; k < NH; k++) vfstore(out + VW * k, a[k] + b[k]);                                \
    }
WSUM(32)
WSUM(64)
WSUM(128)

static void wsum(const float *p, const float *v, int64_t n, int64_t hd, float *out) {
    if (hd == 32) return wsum_32(p, v, n, out);
    if (hd == 64) return wsum_64(p, v, n, out);
    if (hd == 128) return wsum_128(p, v, n, out);
    for (int64_t t = 0; t < n; t++)
        for (int64_t j = 0; j < hd; j++) out[j] += p[t] * v[t * hd + j];
}

/* out[hd] = softmax(q . K[start..pos] / sqrt(hd)) @ V[start..pos] of (sequence m, query head qh) of layer l;
   s: room for pos + 1 scores. Block by block: token t0 + t of block b is slot t. */
static void attend(const Dims *d, int64_t l, int64_t qh, float *q, const float *pool, const int32_t *table,
                   int64_t pos, float *s, float *out) {
    const int64_t hd = d->hd, bs = d->bs, h = qh / (d->Hq / d->H);
    const int64_t start = d->window > 0 && pos + 1 > d->window ? pos + 1 - d->window : 0;
    const float scale = 1.f / sqrtf((float)hd);
    for (int64_t j = 0; j < hd; j++) q[j] *= scale;
    float mx = -INFINITY;
    for (int64_t b = start / bs; b <= pos / bs; b++) {  /* scores */
        const int64_t t0 = b * bs, lo = start > t0 ? start - t0 : 0, hi = pos - t0 + 1 < bs ? pos - t0 + 1 : bs;
        float acc[bs];
        scores(q, kv_block(d, pool, table, b, l, h), hd, bs, acc);
        for (int64_t t = lo; t < hi; t++) s[t0 + t - start] = acc[t], mx = acc[t] > mx ? acc[t] : mx;
    }
    const int64_t n = pos + 1 - start;
    float sum = 0.f;
    int64_t t = 0;
    for (; t + VW <= n; t += VW) {
        const vf e = vexp(vfload(s + t) - mx);
        vfstore(s + t, e);
        for (int k = 0; k < VW; k++) sum += e[k];
    }
    for (; t < n; t++) sum += (s[t] = expf(s[t] - mx));
    const float inv = 1.f / sum;
    for (t = 0; t < n; t++) s[t] *= inv;
    memset(out, 0, sizeof(float) * hd);
    for (int64_t b = start / bs; b <= pos / bs; b++) {  /* weighted sum of V rows */
        const int64_t t0 = b * bs, lo = start > t0 ? start - t0 : 0, hi = pos - t0 + 1 < bs ? pos - t0 + 1 : bs;
        wsum(s + t0 + lo - start, kv_block(d, pool, table, b, l, h) + bs * hd + lo * hd, hi - lo, hd, out);
    }
}

/* act[0:I] = silu(gate) * up for gu = [gate (I), up (I)]. */
static void swiglu(const float *gu, float *act, int64_t I) {
    int64_t i = 0;
    for (; i + VW <= I; i += VW) {
        const vf a = vfload(gu + i);
        vfstore(act + i, a / (1.f + vexp(-a)) * vfload(gu + I + i));
    }
    for (; i < I; i++) act[i] = gu[i] / (1.f + expf(-gu[i])) * gu[I + i];
}

/* Attention of layer l for (sequence m, kv head h): its new K/V into the pool, then its G query heads. */
static void attend_group(const Dims *d, const LayerW *lw, int64_t l, int64_t m, int64_t h, float *qkv, float *pool,
                         const int32_t *table, int64_t pos, const float *cos, const float *sin, float *s,
                         float *attn) {
    const int64_t hd = d->hd, G = d->Hq / d->H, Nqkv = (d->Hq + 2 * d->H) * hd;
    write_kv(d, lw, l, m, h, qkv, pool, table, pos, cos, sin);
    const int64_t start = d->window > 0 && pos + 1 > d->window ? pos + 1 - d->window : 0;
    for (int64_t b = start / d->bs; b <= pos / d->bs; b++) {  /* the context into L2 at once: more loads in flight */
        const char *blk = (const char *)kv_block(d, pool, table, b, l, h);
        for (int64_t o = 0; o < 2 * d->bs * d->hd * (int64_t)sizeof(float); o += 64) __builtin_prefetch(blk + o, 0, 2);
    }
    for (int64_t qh = h * G; qh < (h + 1) * G; qh++) {
        float *q = qkv + m * Nqkv + qh * hd;
        if (lw->w[BQKV])
            for (int64_t j = 0; j < hd; j++) q[j] += lw->w[BQKV][qh * hd + j];
        rope(q, cos, sin, hd);
        attend(d, l, qh, q, pool, table, pos, s, attn + (m * d->Hq + qh) * hd);
    }
}

/* One layer, called by every thread of the region. hp: this thread's own [M][D] (each thread normalizes x
   itself: no barrier for it); s: this thread's room for one head's scores; ctr: gemv_for's counters for the
   layer's 4 matrices (4 x threads, zero); next: this thread's first panel of the matrix after the layer, or NULL.
   6 barriers: after each matrix, after attention, after SwiGLU. */
static void layer(const Dims *d, const LayerW *lw, int64_t l, float *x, int64_t M, float *pool, const int32_t *tables,
                  int64_t tstride, const int64_t *pos, const float *cos, const float *sin, float *hp, float *qkv,
                  float *attn, float *g, float *act, float *s, int64_t *ctr, const float *next) {
    const int64_t D = d->D, hd = d->hd, Nqkv = (d->Hq + 2 * d->H) * hd, I = d->I, nt = omp_get_num_threads();
    rms_norm(x, lw->w[ATTN_NORM], hp, M, D, d->eps);
    gemv_for(hp, M, lw->w[WQKV], qkv, D, d->wqkv, Nqkv, 0, ctr, NULL);  /* attention comes between */
#pragma omp for schedule(dynamic, 1)  /* one (sequence, kv head) at a time: contexts differ in length */
    for (int64_t i = 0; i < M * d->H; i++) {
        const int64_t m = i / d->H;
        attend_group(d, lw, l, m, i % d->H, qkv, pool, tables + m * tstride, pos[m], cos + m * hd, sin + m * hd, s,
                     attn);
    }
    gemv_for(attn, M, lw->w[WO], x, d->Hq * hd, d->wo, D, 1, ctr + nt, first_panel(lw->w[W13], D, d->w13, 2 * I));
    rms_norm(x, lw->w[FFN_NORM], hp, M, D, d->eps);
    gemv_for(hp, M, lw->w[W13], g, D, d->w13, 2 * I, 0, ctr + 2 * nt, first_panel(lw->w[W2], I, d->w2, D));
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; m++) swiglu(g + m * 2 * I, act + m * I, I);
    gemv_for(act, M, lw->w[W2], x, I, d->w2, D, 1, ctr + 3 * nt, next);
}

/* cos, sin [M][hd] of each row's position: angle pos * inv_freq[d % (hd / 2)] (transformers' default RoPE
   embedding; scaled RoPE types come in through inv_freq, model.inv_frequencies). */
static void rope_tables(const int64_t *pos, const float *inv_freq, int64_t M, int64_t hd, float *cos, float *sin) {
    for (int64_t m = 0; m < M; m++)
        for (int64_t d = 0; d < hd; d++) {
            const float a = (float)pos[m] * inv_freq[d % (hd / 2)];
            cos[m * hd + d] = cosf(a), sin[m * hd + d] = sinf(a);
        }
}

static const float *addr(const int64_t *weights, int64_t i) { return (const float *)(intptr_t)weights[i]; }

static Dims dims_of(const int64_t *v, float eps) {
    Dims d = {v[L_], v[D_], v[HQ_], v[H_], v[HD_], v[I_], v[BS_], v[WINDOW_], v[WQKV_], v[WO_], v[W13_], v[W2_], v[V_],
              v[WLM_], v[NBLOCKS_], eps};
    return d;
}

/* -1 if every block id row m reads or writes (its table's first (pos[m] / bs + 1) * L * H entries) lies in
   [0, num_blocks), else the first row that has one outside. */
int decode_bad_row(const int64_t *dims, const int32_t *tables, int64_t M, int64_t tstride, const int64_t *pos) {
    const Dims d = dims_of(dims, 0.f);
    for (int64_t m = 0; m < M; m++) {
        const int64_t n = (pos[m] / d.bs + 1) * d.L * d.H;
        if (n > tstride) return (int)m;
        for (int64_t i = 0; i < n; i++)
            if (tables[m * tstride + i] < 0 || tables[m * tstride + i] >= d.num_blocks) return (int)m;
    }
    return -1;
}

/* x [M][D] (the new tokens' embeddings) through all L layers and the final norm, in place; then, when the LM
   head is given, logits [M][V] = x @ lm_head.
   dims (int64): L, D, Hq, H, hd, I, bs, window (0: none), the panel widths of wqkv, wo, w13, w2, V, the LM head's
   panel width, num_blocks of the pool. weights (addresses): [L][7] attn_norm, wqkv, bqkv (0: none), wo,
   ffn_norm, w13, w2, then the final norm, the LM head (0: not here), RoPE inv_freq [hd / 2].
   tables [M][tstride], checked by decode_bad_row; pos [M]: each row's new position, where its K/V go.
   Returns 0, -1 for shapes it does not take, -2 when out of memory (nothing computed then). */
int decode_layers(float *x, int64_t M, const int64_t *dims, float eps, const int64_t *weights, float *pool,
                  const int32_t *tables, int64_t tstride, const int64_t *pos, float *logits, int nthreads) {
    const Dims d = dims_of(dims, eps);
    const float *norm = addr(weights, d.L * NWEIGHTS + NORM), *lm_head = addr(weights, d.L * NWEIGHTS + LM_HEAD);
    if (gemv_check(M, d.wqkv) || gemv_check(M, d.wo) || gemv_check(M, d.w13) || gemv_check(M, d.w2) ||
        (lm_head && gemv_check(M, d.wlm)) || d.Hq % d.H || d.hd % 2 || d.bs > 1024)
        return -1;
    int64_t smax = 1;
    for (int64_t m = 0; m < M; m++) smax = pos[m] + 1 > smax ? pos[m] + 1 : smax;
    const int64_t Nqkv = (d.Hq + 2 * d.H) * d.hd;
    float *buf = malloc(sizeof(float) * (M * (nthreads * d.D + Nqkv + d.Hq * d.hd + 3 * d.I + 2 * d.hd) + nthreads * smax));
    int64_t *ctrs = calloc((size_t)(4 * d.L + 1) * nthreads, sizeof(int64_t));  /* gemv_for's, per matrix */
    if (!buf || !ctrs) {
        free(buf), free(ctrs);
        return -2;
    }
    float *h = buf, *qkv = h + nthreads * M * d.D, *attn = qkv + M * Nqkv, *g = attn + M * d.Hq * d.hd, *act = g + M * 2 * d.I;
    float *cos = act + M * d.I, *sin = cos + M * d.hd, *s = sin + M * d.hd;
    rope_tables(pos, addr(weights, d.L * NWEIGHTS + INV_FREQ), M, d.hd, cos, sin);
#pragma omp parallel num_threads(nthreads)
    {
        float *hp = h + omp_get_thread_num() * M * d.D, *sp = s + omp_get_thread_num() * smax;  /* this thread's */
        for (int64_t l = 0; l < d.L; l++) {
            LayerW lw;
            for (int k = 0; k < NWEIGHTS; k++) lw.w[k] = addr(weights, l * NWEIGHTS + k);
            const float *next = l + 1 < d.L  /* after the down projection: the next layer's QKV, else the LM head */
                ? first_panel(addr(weights, (l + 1) * NWEIGHTS + WQKV), d.D, d.wqkv, Nqkv)
                : first_panel(lm_head, d.D, d.wlm, d.V);
            layer(&d, &lw, l, x, M, pool, tables, tstride, pos, cos, sin, hp, qkv, attn, g, act, sp,
                  ctrs + 4 * l * nthreads, next);
        }
#pragma omp single
        rms_norm(x, norm, x, M, d.D, d.eps);
        if (lm_head) gemv_for(x, M, lm_head, logits, d.D, d.wlm, d.V, 0, ctrs + 4 * d.L * nthreads, NULL);
    }
    free(buf), free(ctrs);
    return 0;
}
