/* LayerNorm from the float32 residual stream straight to bfloat16, and its backward pass.
 *
 * Under bfloat16 autocast PyTorch normalises in float32, writes a float32 result, and the next
 * linear layer casts it to bfloat16; backward converts the gradient back to float32 first. That is
 * four passes over a (B, T, C) tensor around each norm. Here the forward
 * pass writes bfloat16 directly and the backward pass reads the bfloat16 gradient directly; the
 * arithmetic is float32 throughout, as in PyTorch.
 *
 *   y = (x - mean) * rstd * w + b,   rstd = 1 / sqrt(var + eps)
 *   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),  dxhat = dy * w
 *   dw = sum over rows of dy * xhat,  db = sum over rows of dy
 *
 * The weight and bias gradients are summed per thread into rows of `partial` (threads x 2C, zeroed
 * by the caller), which the caller adds up. Called through model/kernels/layernorm.py (the ops
 * tinygpt::layer_norm_to_bf16 and its backward).
 */
#include <math.h>

#include "bf16.h"
#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_thread_num(void) { return 0; }  /* built without OpenMP: one thread */
#endif

void layernorm_forward_bf16(const float *x, const float *w, const float *b, uint16_t *y, float *mean_out,
                            float *rstd_out, int64_t rows, int64_t C, float eps) {
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * C;
        float sum = 0.0f;
        #pragma omp simd reduction(+ : sum)
        for (int64_t c = 0; c < C; c++) sum += xr[c];
        float mean = sum / C, squares = 0.0f;
        #pragma omp simd reduction(+ : squares)
        for (int64_t c = 0; c < C; c++) squares += (xr[c] - mean) * (xr[c] - mean);
        float rstd = 1.0f / sqrtf(squares / C + eps);
        uint16_t *yr = y + r * C;
        #pragma omp simd
        for (int64_t c = 0; c < C; c++) yr[c] = f32_to_bf16((xr[c] - mean) * rstd * w[c] + (b ? b[c] : 0.0f));
        mean_out[r] = mean;
        rstd_out[r] = rstd;
    }
}

void layernorm_backward_bf16(const float *x, const float *w, const float *mean, const float *rstd,
                             const uint16_t *dy, float *dx, float *partial, int64_t rows, int64_t C, int threads) {
    #pragma omp parallel num_threads(threads)
    {
        float *dw = partial + (int64_t)omp_get_thread_num() * 2 * C, *db = dw + C;
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = x + r * C;
            const uint16_t *dyr = dy + r * C;
            float m = mean[r], s = rstd[r], sum_dxhat = 0.0f, sum_dxhat_xhat = 0.0f;
            #pragma omp simd reduction(+ : sum_dxhat, sum_dxhat_xhat)
            for (int64_t c = 0; c < C; c++) {
                float g = bf16_to_f32(dyr[c]), xhat = (xr[c] - m) * s, dxhat = g * w[c];
                sum_dxhat += dxhat;
                sum_dxhat_xhat += dxhat * xhat;
                dw[c] += g * xhat;
                db[c] += g;
            }
            float mean_dxhat = sum_dxhat / C, mean_dxhat_xhat = sum_dxhat_xhat / C;
            float *dxr = dx + r * C;
            #pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                float xhat = (xr[c] - m) * s;
                dxr[c] = s * (bf16_to_f32(dyr[c]) * w[c] - mean_dxhat - xhat * mean_dxhat_xhat);
            }
        }
    }
}
