/* Dropout on the CPU from a counter-based hash: y[i] = keep(seed, i) ? x[i] * scale : 0.
 *
 * PyTorch draws a CPU dropout mask with its one-threaded Bernoulli generator. Here whether element i is kept is a pure function of (seed, i): every thread computes its own share,
 * the loop vectorises, and the backward pass recomputes the same mask from the seed instead of
 * storing it. The hash is two rounds of MurmurHash3's 32-bit finaliser over the index and the seed;
 * element i is kept when it is at least `threshold` (= p * 2^32).
 *
 * Called through model/kernels/dropout.py (the ops tinygpt::dropout and tinygpt::dropout_add).
 */
#include "bf16.h"
#include "dropout_hash.h"

void dropout_f32(const float *x, float *y, int64_t n, uint64_t seed, uint32_t threshold, float scale) {
    #pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) y[i] = dropout_hash(seed, i) >= threshold ? x[i] * scale : 0.0f;
}

void dropout_bf16(const uint16_t *x, uint16_t *y, int64_t n, uint64_t seed, uint32_t threshold, float scale) {
    #pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++)
        y[i] = f32_to_bf16(dropout_hash(seed, i) >= threshold ? bf16_to_f32(x[i]) * scale : 0.0f);
}

/* A residual branch dropped out and added onto the float32 residual stream in one pass,
 * y = x + dropout(h), and its backward, grad_h = dropout(grad) in h's dtype: without these, the
 * branch's dropout, the add and (under bfloat16 autocast) the cast of the gradient back to bfloat16
 * are three passes over the stream. */
void dropout_add_f32(const float *x, const float *h, float *y, int64_t n, uint64_t seed, uint32_t threshold,
                     float scale) {
    #pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) y[i] = x[i] + (dropout_hash(seed, i) >= threshold ? h[i] * scale : 0.0f);
}

void dropout_add_bf16(const float *x, const uint16_t *h, float *y, int64_t n, uint64_t seed, uint32_t threshold,
                      float scale) {
    #pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++)
        y[i] = x[i] + (dropout_hash(seed, i) >= threshold ? bf16_to_f32(h[i]) * scale : 0.0f);
}

void dropout_f32_to_bf16(const float *x, uint16_t *y, int64_t n, uint64_t seed, uint32_t threshold, float scale) {
    #pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) y[i] = f32_to_bf16(dropout_hash(seed, i) >= threshold ? x[i] * scale : 0.0f);
}
