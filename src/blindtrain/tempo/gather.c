/* The enclave's 2-D obfuscation pass, fused: gather + scale of a matrix's rows and columns, with the
 * statistics the Freivalds checks need, from one read of each row while it is in L1.
 *
 * Built and loaded by blindtrain/tempo/native.py (ctypes); blindtrain/tempo/gather.py has the same
 * pass in plain PyTorch, used when no C compiler is at hand, and its tests compare the two.
 *
 *   out[i, j]     = x[p0[i], p1[j]] * r0[i] * r1[j]              (x: rows x cols, row-major float32)
 *   src_dot[s, k] = sum_j x[s, j] * src_vecs[k, j]    s = p0[i]  (the source row, in its own order)
 *   src_sq[s]     = sum_j x[s, j]^2                   (float64)
 *   src_min[s]    = min_j x[s, j]
 *   out_dot[i, k] = sum_j out[i, j] * out_vecs[k, j]             (the output row)
 *   out_sq[i]     = sum_j out[i, j]^2                 (float64)
 *
 * p0 and p1 are permutations (checked to be in range; the source-row statistics need p0 injective).
 * Any statistic may be skipped (a NULL pointer, or no vectors).  Returns 0, or -1 (and writes nothing)
 * when an index is out of range.  The sums are float32 inner products
 * in another order than a BLAS's; the checks' error bounds hold for any order.  The minimum
 * ignores NaN entries.
 */
#include <math.h>
#include <stdint.h>

static void gather_scale(const float *restrict src, const int64_t *restrict p1, const float *restrict r1, float ri,
                         float *restrict out, int64_t cols)
{
    /* AVX2 gathers are slow on several x86 cores; unrolled scalar loads are as fast or faster */
    #pragma GCC unroll 8
    for (int64_t j = 0; j < cols; j++) out[j] = (src[p1[j]] * ri) * r1[j];
}

/* dot[k] = sum_j row[j] * vecs[k, j], three vectors per read of the row */
static void row_dots(const float *restrict row, int64_t cols, const float *restrict vecs, int64_t n_vecs,
                     float *restrict dot)
{
    int64_t k = 0;
    for (; k + 3 <= n_vecs; k += 3) {
        const float *v0 = vecs + k * cols, *v1 = v0 + cols, *v2 = v1 + cols;
        float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f;
        #pragma omp simd reduction(+:a0, a1, a2)
        for (int64_t j = 0; j < cols; j++) {
            const float e = row[j];
            a0 += e * v0[j];
            a1 += e * v1[j];
            a2 += e * v2[j];
        }
        dot[k] = a0;
        dot[k + 1] = a1;
        dot[k + 2] = a2;
    }
    for (; k < n_vecs; k++) {
        const float *v0 = vecs + k * cols;
        float a0 = 0.0f;
        #pragma omp simd reduction(+:a0)
        for (int64_t j = 0; j < cols; j++) a0 += row[j] * v0[j];
        dot[k] = a0;
    }
}

static double row_sq(const float *restrict row, int64_t cols)
{
    double sq = 0.0;
    #pragma omp simd reduction(+:sq)
    for (int64_t j = 0; j < cols; j++) sq += (double)row[j] * row[j];
    return sq;
}

int bt_gather_rows(const float *x, int64_t rows, int64_t cols, const int64_t *p0, const int64_t *p1,
                    const float *r0, const float *r1, float *out,
                    const float *src_vecs, int64_t n_src_vecs, float *src_dot, double *src_sq, float *src_min,
                    const float *out_vecs, int64_t n_out_vecs, float *out_dot, double *out_sq, int64_t threads)
{
    for (int64_t i = 0; i < rows; i++)
        if (p0[i] < 0 || p0[i] >= rows) return -1;
    for (int64_t j = 0; j < cols; j++)
        if (p1[j] < 0 || p1[j] >= cols) return -1;
    #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < rows; i++) {
        const int64_t s = p0[i];
        const float *src = x + s * cols;
        float *row = out + i * cols;
        gather_scale(src, p1, r1, r0[i], row, cols);
        if (n_src_vecs > 0) row_dots(src, cols, src_vecs, n_src_vecs, src_dot + s * n_src_vecs);
        if (src_sq) src_sq[s] = row_sq(src, cols);
        if (src_min) {
            float least = INFINITY;
            #pragma omp simd reduction(min:least)
            for (int64_t j = 0; j < cols; j++) least = src[j] < least ? src[j] : least;
            src_min[s] = least;
        }
        if (n_out_vecs > 0) row_dots(row, cols, out_vecs, n_out_vecs, out_dot + i * n_out_vecs);
        if (out_sq) out_sq[i] = row_sq(row, cols);
    }
    return 0;
}
