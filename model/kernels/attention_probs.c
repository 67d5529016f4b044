/* Attention weights in one pass: scale, causal mask, softmax and dropout, and the backward of all four.
 *
 * In PyTorch these are four passes over the (B, nh, T, S) scores forward and four backward (scale,
 * masked_fill, softmax, dropout), each reading and writing the largest tensor of a training step. Here each row of scores is read once and its weights
 * written once, keys a causal query can't see are never exponentiated, and the dropout mask is the
 * hash of dropout_hash.h, recomputed in backward from the seed. The backward pass uses that masked
 * entries have zero weight, so their gradient is zero with no mask applied.
 *
 * Row r of the scores belongs to query i = r mod T and sees keys j <= i + offset (offset = S - T for
 * causal attention whose queries are the last T of the S positions; offset >= S - 1 for no mask).
 * The weights are att = softmax(scale * scores); with dropout (att_dropped != NULL) att_dropped
 * = att * keep / (1 - p) is what multiplies the values, and att is kept for backward.
 *
 * Called through model/kernels/attention_probs.py (the ops tinygpt::attention_probs and its backward).
 */
#if defined(__GNUC__) && !defined(__clang__)
/* GCC would split the padded row loops below at n, leaving the remainder scalar again */
#pragma GCC optimize("no-split-loops")
#endif
#include <math.h>

#include "bf16.h"
#include "dropout_hash.h"
#include "exp_approx.h"

/* One kernel body for float32 and bfloat16 storage: `bf16` is a constant in each caller, so the
 * compiler emits two specialised copies. All arithmetic is float32. */
static inline __attribute__((always_inline)) float load(const void *p, int64_t i, int bf16) {
    return bf16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline __attribute__((always_inline)) void store(void *p, int64_t i, float v, int bf16) {
    if (bf16)
        ((uint16_t *)p)[i] = f32_to_bf16(v);
    else
        ((float *)p)[i] = v;
}

static inline int64_t visible_keys(int64_t row, int64_t T, int64_t S, int64_t offset) {
    int64_t n = row % T + offset + 1;
    return n < S ? n : S;
}

/* Rows are processed up to the visible length rounded up to a multiple of this (the elements in
 * between count as masked): a loop of whole vectors, with no scalar remainder loop for every row. */
#define ROW_PAD 32

static inline int64_t padded(int64_t n, int64_t S) {
    int64_t m = (n + ROW_PAD - 1) / ROW_PAD * ROW_PAD;
    return m < S ? m : S;
}

/* One row of softmax_forward: n visible keys out of S, starting at element `base`; e is scratch. */
static inline __attribute__((always_inline)) void forward_row(
    const void *scores, void *att, void *att_dropped, int64_t base, int64_t n, int64_t S, float scale,
    uint64_t seed, uint32_t threshold, float keep_scale, float *e, int bf16) {
    int64_t m = padded(n, S);
    float top = -INFINITY;
    #pragma omp simd reduction(max : top)
    for (int64_t j = 0; j < m; j++) {
        float v = j < n ? load(scores, base + j, bf16) : -INFINITY;
        top = v > top ? v : top;
    }
    float total = 0.0f;
    #pragma omp simd reduction(+ : total)
    for (int64_t j = 0; j < m; j++) {
        float x = exp_approx(scale * (load(scores, base + j, bf16) - top));
        e[j] = j < n ? x : 0.0f;
        total += e[j];
    }
    float inv = 1.0f / total;
    #pragma omp simd
    for (int64_t j = 0; j < m; j++) store(att, base + j, e[j] * inv, bf16);
    if (att_dropped) {
        #pragma omp simd
        for (int64_t j = 0; j < m; j++) {
            float keep = dropout_keeps(seed, base + j, threshold) ? keep_scale : 0.0f;
            store(att_dropped, base + j, e[j] * inv * keep, bf16);
        }
    }
    size_t size = bf16 ? sizeof(uint16_t) : sizeof(float);  /* 0.0 is all zero bits in both */
    memset((char *)att + (base + m) * size, 0, (S - m) * size);
    if (att_dropped) memset((char *)att_dropped + (base + m) * size, 0, (S - m) * size);
}

/* One row of softmax_backward: grad_scores = scale * att * (g - sum(att * g)), where g is the
 * gradient of att (the incoming gradient with dropout undone); g is scratch. Masked keys have att = 0
 * (forward wrote the zeros), so the padded part of the row needs no test. */
static inline __attribute__((always_inline)) void backward_row(
    const void *grad, const void *att, void *grad_scores, int64_t base, int64_t n, int64_t S, float scale,
    uint64_t seed, uint32_t threshold, float keep_scale, int dropout, float *g, int bf16) {
    int64_t m = padded(n, S);
    float dot = 0.0f;
    if (dropout) {
        #pragma omp simd reduction(+ : dot)
        for (int64_t j = 0; j < m; j++) {
            float keep = dropout_keeps(seed, base + j, threshold) ? keep_scale : 0.0f;
            g[j] = load(grad, base + j, bf16) * keep;
            dot += g[j] * load(att, base + j, bf16);
        }
    } else {
        #pragma omp simd reduction(+ : dot)
        for (int64_t j = 0; j < m; j++) {
            g[j] = load(grad, base + j, bf16);
            dot += g[j] * load(att, base + j, bf16);
        }
    }
    #pragma omp simd
    for (int64_t j = 0; j < m; j++) store(grad_scores, base + j, scale * load(att, base + j, bf16) * (g[j] - dot), bf16);
    size_t size = bf16 ? sizeof(uint16_t) : sizeof(float);
    memset((char *)grad_scores + (base + m) * size, 0, (S - m) * size);
}

/* The rows split across threads, each with a float scratch row. Written out in every exported
 * function, so that `bf16` is a constant inside the OpenMP region: GCC outlines a parallel region
 * before it inlines, and a region inside a shared helper would test the flag on every element. */
#define FOR_EACH_ROW(row_call)                                                  \
    _Pragma("omp parallel") {                                                   \
        float *scratch = __builtin_alloca(S * sizeof(float));                   \
        _Pragma("omp for schedule(static)")                                     \
        for (int64_t r = 0; r < rows; r++) {                                    \
            int64_t n = visible_keys(r, T, S, offset);                          \
            row_call;                                                           \
        }                                                                       \
    }

void softmax_forward_f32(const float *scores, float *att, float *att_dropped, int64_t rows, int64_t T, int64_t S,
                         int64_t offset, float scale, uint64_t seed, uint32_t threshold, float keep_scale) {
    FOR_EACH_ROW(forward_row(scores, att, att_dropped, r * S, n, S, scale, seed, threshold, keep_scale, scratch, 0))
}

void softmax_forward_bf16(const uint16_t *scores, uint16_t *att, uint16_t *att_dropped, int64_t rows, int64_t T,
                          int64_t S, int64_t offset, float scale, uint64_t seed, uint32_t threshold, float keep_scale) {
    FOR_EACH_ROW(forward_row(scores, att, att_dropped, r * S, n, S, scale, seed, threshold, keep_scale, scratch, 1))
}

void softmax_backward_f32(const float *grad, const float *att, float *grad_scores, int64_t rows, int64_t T, int64_t S,
                          int64_t offset, float scale, uint64_t seed, uint32_t threshold, float keep_scale, int dropout) {
    FOR_EACH_ROW(backward_row(grad, att, grad_scores, r * S, n, S, scale, seed, threshold, keep_scale, dropout, scratch, 0))
}

void softmax_backward_bf16(const uint16_t *grad, const uint16_t *att, uint16_t *grad_scores, int64_t rows, int64_t T,
                           int64_t S, int64_t offset, float scale, uint64_t seed, uint32_t threshold, float keep_scale,
                           int dropout) {
    FOR_EACH_ROW(backward_row(grad, att, grad_scores, r * S, n, S, scale, seed, threshold, keep_scale, dropout, scratch, 1))
}
