/* The enclave's obfuscation pass, fused: gather + scale of a tensor's rows and columns (channels), with
 * the statistics the Freivalds checks need, from one read of each row while it is in cache.
 *
 * Built and loaded by blindtrain/kernels/native.py (ctypes); blindtrain/kernels/gather.py has the same
 * pass in plain PyTorch, used when no C compiler is at hand, and its tests compare the two.
 *
 * x: rows x cols x plane, row-major float32 (a matrix: plane = 1; a conv activation: plane = h*w).
 * Per row i, with s = p0[i] its source row, and per plane position t:
 *
 *   out[i, j, t]     = x[s, p1[j], t] * r0[i] * r1[j]
 *   src_dot[s, k, t] = sum_c x[s, c, t] * src_vecs[k, c]      (the source, in its own order)
 *   src_sq[s, t]     = sum_c x[s, c, t]^2                      (float64)
 *   src_l1[s, t]     = sum_c |x[s, c, t]|,   src_linf[s, t] = max_c |x[s, c, t]|
 *   src_min[s]       = min_{c,t} x[s, c, t]                    (NaN entries ignored)
 *   out_dot[i, k, t] = sum_j out[i, j, t] * out_vecs[k, j]
 *   out_sq[i, t]     = sum_j out[i, j, t]^2                    (float64)
 *
 * p0 and p1 must be permutations.  Any statistic may be skipped (a NULL pointer, or no vectors).
 * Returns 0; or -1, writing nothing, when p0 or p1 is not a permutation (an index out of range or
 * repeated); -2 when out of memory.  A matrix row's dot products accumulate in double (rounded to float
 * once); the plane maps' sums are float32, in another order than a BLAS's: the checks' bounds hold for any order.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

static void gather_scale(const float *restrict src, const int64_t *restrict p1, const float *restrict r1, float ri,
                         float *restrict out, int64_t cols)
{
    /* AVX2 gathers are slow on several x86 cores; unrolled scalar loads are as fast or faster */
    #pragma GCC unroll 8
    for (int64_t j = 0; j < cols; j++) out[j] = (src[p1[j]] * ri) * r1[j];
}

/* dot[k] = sum_j row[j] * vecs[k, j], three vectors per read of the row; accumulated in double (each float
 * product is exact in double), rounded to float once: the matrix checks' own products add almost nothing
 * to their tolerance */
static void row_dots(const float *restrict row, int64_t cols, const float *restrict vecs, int64_t n_vecs,
                     float *restrict dot)
{
    int64_t k = 0;
    for (; k + 3 <= n_vecs; k += 3) {
        const float *v0 = vecs + k * cols, *v1 = v0 + cols, *v2 = v1 + cols;
        double a0 = 0.0, a1 = 0.0, a2 = 0.0;
        #pragma omp simd reduction(+:a0, a1, a2)
        for (int64_t j = 0; j < cols; j++) {
            const double e = row[j];
            a0 += e * v0[j];
            a1 += e * v1[j];
            a2 += e * v2[j];
        }
        dot[k] = (float)a0;
        dot[k + 1] = (float)a1;
        dot[k + 2] = (float)a2;
    }
    for (; k < n_vecs; k++) {
        const float *v0 = vecs + k * cols;
        double a0 = 0.0;
        #pragma omp simd reduction(+:a0)
        for (int64_t j = 0; j < cols; j++) a0 += (double)row[j] * v0[j];
        dot[k] = (float)a0;
    }
}

static double row_sq(const float *restrict row, int64_t cols)
{
    double sq = 0.0;
    #pragma omp simd reduction(+:sq)
    for (int64_t j = 0; j < cols; j++) sq += (double)row[j] * row[j];
    return sq;
}

/* one call's operands and outputs (see the header comment); NULL / 0 where a statistic is not wanted */
struct pass {
    const float *x;
    int64_t rows, cols, plane;
    const int64_t *p0, *p1;
    const float *r0, *r1;
    float *out;
    const float *src_vecs, *out_vecs;
    int64_t n_src_vecs, n_out_vecs;
    float *src_dot, *src_l1, *src_linf, *src_min, *out_dot;
    double *src_sq, *out_sq;
};

static void matrix_row(const struct pass *a, int64_t i)
{
    const int64_t cols = a->cols, s = a->p0[i];
    const float *src = a->x + s * cols;
    float *row = a->out + i * cols;
    gather_scale(src, a->p1, a->r1, a->r0[i], row, cols);
    if (a->n_src_vecs > 0) row_dots(src, cols, a->src_vecs, a->n_src_vecs, a->src_dot + s * a->n_src_vecs);
    if (a->src_sq) a->src_sq[s] = row_sq(src, cols);
    if (a->src_min || a->src_l1 || a->src_linf) {
        float least = INFINITY, l1 = 0.0f, linf = 0.0f;
        #pragma omp simd reduction(min:least) reduction(+:l1) reduction(max:linf)
        for (int64_t j = 0; j < cols; j++) {
            const float e = src[j], abs_e = fabsf(e);
            least = e < least ? e : least;
            l1 += abs_e;
            linf = abs_e > linf ? abs_e : linf;
        }
        if (a->src_min) a->src_min[s] = least;
        if (a->src_l1) a->src_l1[s] = l1;
        if (a->src_linf) a->src_linf[s] = linf;
    }
    if (a->n_out_vecs > 0) row_dots(row, cols, a->out_vecs, a->n_out_vecs, a->out_dot + i * a->n_out_vecs);
    if (a->out_sq) a->out_sq[i] = row_sq(row, cols);
}

/* plane > 1: whole planes are gathered (contiguous, no element gathers); the statistics are maps over the
 * plane, accumulated channel by channel into the row's output blocks */
static void plane_row(const struct pass *a, int64_t i)
{
    const int64_t cols = a->cols, plane = a->plane, s = a->p0[i];
    float *sdot = a->src_dot ? a->src_dot + s * a->n_src_vecs * plane : NULL;
    float *odot = a->out_dot ? a->out_dot + i * a->n_out_vecs * plane : NULL;
    double *ssq = a->src_sq ? a->src_sq + s * plane : NULL, *osq = a->out_sq ? a->out_sq + i * plane : NULL;
    float *sl1 = a->src_l1 ? a->src_l1 + s * plane : NULL, *slinf = a->src_linf ? a->src_linf + s * plane : NULL;
    for (int64_t t = 0; t < a->n_src_vecs * plane; t++) sdot[t] = 0.0f;
    for (int64_t t = 0; t < a->n_out_vecs * plane; t++) odot[t] = 0.0f;
    for (int64_t t = 0; t < plane; t++) {
        if (ssq) ssq[t] = 0.0;
        if (osq) osq[t] = 0.0;
        if (sl1) sl1[t] = 0.0f;
        if (slinf) slinf[t] = 0.0f;
    }
    float least = INFINITY;
    for (int64_t j = 0; j < cols; j++) {
        const int64_t c = a->p1[j];
        const float *restrict src = a->x + (s * cols + c) * plane;
        float *restrict o = a->out + (i * cols + j) * plane;
        const float scale = a->r0[i] * a->r1[j];
        #pragma omp simd
        for (int64_t t = 0; t < plane; t++) o[t] = src[t] * scale;
        for (int64_t k = 0; k < a->n_src_vecs; k++) {
            const float w = a->src_vecs[k * cols + c];
            float *restrict d = sdot + k * plane;
            #pragma omp simd
            for (int64_t t = 0; t < plane; t++) d[t] += src[t] * w;
        }
        for (int64_t k = 0; k < a->n_out_vecs; k++) {
            const float w = a->out_vecs[k * cols + j];
            float *restrict d = odot + k * plane;
            #pragma omp simd
            for (int64_t t = 0; t < plane; t++) d[t] += o[t] * w;
        }
        if (ssq) {
            #pragma omp simd
            for (int64_t t = 0; t < plane; t++) ssq[t] += (double)src[t] * src[t];
        }
        if (osq) {
            #pragma omp simd
            for (int64_t t = 0; t < plane; t++) osq[t] += (double)o[t] * o[t];
        }
        if (sl1) {
            #pragma omp simd
            for (int64_t t = 0; t < plane; t++) sl1[t] += fabsf(src[t]);
        }
        if (slinf) {
            #pragma omp simd
            for (int64_t t = 0; t < plane; t++) slinf[t] = fabsf(src[t]) > slinf[t] ? fabsf(src[t]) : slinf[t];
        }
        if (a->src_min) {
            #pragma omp simd reduction(min:least)
            for (int64_t t = 0; t < plane; t++) least = src[t] < least ? src[t] : least;
        }
    }
    if (a->src_min) a->src_min[s] = least;
}

/* 0 if p is a permutation of 0..n-1; -1 if not; -2 out of memory */
static int is_permutation(const int64_t *p, int64_t n)
{
    unsigned char *seen = calloc((size_t)(n > 0 ? n : 1), 1);
    if (!seen) return -2;
    int status = 0;
    for (int64_t i = 0; i < n && status == 0; i++) {
        if (p[i] < 0 || p[i] >= n || seen[p[i]]) status = -1;
        else seen[p[i]] = 1;
    }
    free(seen);
    return status;
}

int bt_gather(const float *x, int64_t rows, int64_t cols, int64_t plane, const int64_t *p0, const int64_t *p1,
              const float *r0, const float *r1, float *out,
              const float *src_vecs, int64_t n_src_vecs, float *src_dot, double *src_sq,
              float *src_l1, float *src_linf, float *src_min,
              const float *out_vecs, int64_t n_out_vecs, float *out_dot, double *out_sq, int64_t threads)
{
    const int checked = is_permutation(p0, rows);
    if (checked != 0) return checked;
    const int checked_cols = is_permutation(p1, cols);
    if (checked_cols != 0) return checked_cols;
    const struct pass a = {
        .x = x, .rows = rows, .cols = cols, .plane = plane, .p0 = p0, .p1 = p1, .r0 = r0, .r1 = r1, .out = out,
        .src_vecs = src_vecs, .out_vecs = out_vecs,
        .n_src_vecs = src_dot ? n_src_vecs : 0, .n_out_vecs = out_dot ? n_out_vecs : 0,
        .src_dot = src_dot, .src_l1 = src_l1, .src_linf = src_linf, .src_min = src_min, .out_dot = out_dot,
        .src_sq = src_sq, .out_sq = out_sq,
    };
    #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < rows; i++) {
        if (plane == 1)
            matrix_row(&a, i);
        else
            plane_row(&a, i);
    }
    return 0;
}
