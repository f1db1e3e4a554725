/* A key epoch of one weight matrix in one read: the obfuscated weights and the statistics the incremental
 * checks track, from each row of W while it is in cache.
 *
 * Built and loaded by blindtrain/kernels/weight_epoch.py (through the native loader, ctypes); the same
 * results in PyTorch ops are that module's fallback, and the tests compare the two.
 *
 * w: rows x cols, row-major float32.  p0, p1: permutations; r0, r1: scales in the OUTPUT's order.
 * Per output row i with source row s = p0[i]:
 *
 *   out[i, j]     = (w[s, p1[j]] * r0[i]) * r1[j]           (bit for bit the gather pass's expression)
 *   v[s, k]       = sum_j w[s, j] sigma_t[k, j]              (W sigma)
 *   va[s, k]      = sum_j |w[s, j]| |sigma_t[k, j]|          (|W| |sigma|)
 *   row_sq[s]     = sum_j w[s, j]^2
 *   q[k, j]       = sum_s w[s, j] rho[s, k]                  (W^T rho, stored k x cols)
 *   qa[k, j]      = sum_s |w[s, j]| |rho[s, k]|
 *   col_sq[j]     = sum_s w[s, j]^2
 *
 * Every sum is accumulated in double (a float x float product is exact in double).  The column sums are
 * accumulated per thread over a static split of the rows and added in thread order afterwards, so the
 * results depend only on the thread count, never on scheduling.  Returns 0; -1 (writing nothing) when p0
 * or p1 is not a permutation; -2 when out of memory.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

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

/* one thread's share of the rows: the row-side outputs directly, the column sums into acc
 * (k x cols of q, k x cols of qa, cols of col_sq) */
static void rows_pass(const float *restrict w, int64_t cols, const int64_t *restrict p0, const int64_t *restrict p1,
                      const float *restrict r0, const float *restrict r1, float *restrict out,
                      const float *restrict rho, const float *restrict sigma_t, int64_t k,
                      double *restrict v, double *restrict va, double *restrict row_sq,
                      double *restrict acc, int64_t lo, int64_t hi)
{
    double *q = acc, *qa = acc + k * cols, *col_sq = acc + 2 * k * cols;
    for (int64_t i = lo; i < hi; i++) {
        const int64_t s = p0[i];
        const float *restrict src = w + s * cols;
        float *restrict dst = out + i * cols;
        const float ri = r0[i];
        #pragma GCC unroll 8
        for (int64_t j = 0; j < cols; j++) dst[j] = (src[p1[j]] * ri) * r1[j];
        double sq = 0.0;
        #pragma omp simd reduction(+:sq)
        for (int64_t j = 0; j < cols; j++) {
            const double e = src[j];
            sq += e * e;
            col_sq[j] += e * e;
        }
        row_sq[s] = sq;
        for (int64_t kk = 0; kk < k; kk++) {
            const float *restrict sg = sigma_t + kk * cols;
            const double rk = rho[s * k + kk], ark = fabs(rk);
            double *restrict qk = q + kk * cols, *restrict qak = qa + kk * cols;
            double dot = 0.0, adot = 0.0;
            #pragma omp simd reduction(+:dot, adot)
            for (int64_t j = 0; j < cols; j++) {
                const double e = src[j], ae = fabs(e), g = sg[j];
                dot += e * g;
                adot += ae * fabs(g);
                qk[j] += e * rk;
                qak[j] += ae * ark;
            }
            v[s * k + kk] = dot;
            va[s * k + kk] = adot;
        }
    }
}

int bt_weight_epoch(const float *w, int64_t rows, int64_t cols, const int64_t *p0, const int64_t *p1,
                    const float *r0, const float *r1, float *out, const float *rho, const float *sigma_t, int64_t k,
                    double *q, double *qa, double *v, double *va, double *row_sq, double *col_sq, int64_t threads)
{
    int status = is_permutation(p0, rows);
    if (status == 0) status = is_permutation(p1, cols);
    if (status != 0) return status;
    if (threads < 1) threads = 1;
    if (threads > rows) threads = rows > 0 ? rows : 1;
    const int64_t width = (2 * k + 1) * cols;
    double *acc = calloc((size_t)(threads * width > 0 ? threads * width : 1), sizeof(double));
    if (!acc) return -2;
    #pragma omp parallel for schedule(static, 1) num_threads(threads) if (threads > 1)
    for (int64_t t = 0; t < threads; t++) {
        const int64_t lo = rows * t / threads, hi = rows * (t + 1) / threads;
        rows_pass(w, cols, p0, p1, r0, r1, out, rho, sigma_t, k, v, va, row_sq, acc + t * width, lo, hi);
    }
    /* column sums: the threads' partial sums in thread order */
    memcpy(q, acc, (size_t)(k * cols) * sizeof(double));
    memcpy(qa, acc + k * cols, (size_t)(k * cols) * sizeof(double));
    memcpy(col_sq, acc + 2 * k * cols, (size_t)cols * sizeof(double));
    for (int64_t t = 1; t < threads; t++) {
        const double *part = acc + t * width;
        for (int64_t j = 0; j < k * cols; j++) q[j] += part[j];
        for (int64_t j = 0; j < k * cols; j++) qa[j] += part[k * cols + j];
        for (int64_t j = 0; j < cols; j++) col_sq[j] += part[2 * k * cols + j];
    }
    free(acc);
    return 0;
}
