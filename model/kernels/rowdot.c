/* Row dot products for decoding one token: y[o] = sum_i W[o][i] * x[i] (+ b[o]).
 *
 * W is row-major (out, in), as nn.Linear stores it, so each output is one dot product over a
 * contiguous row, vectorised by the compiler (omp simd). The rows are split across the OpenMP
 * threads in contiguous shares (PyTorch's own thread pool: this library links the libgomp that
 * torch has already loaded), so each core streams one long run of memory.
 *
 * bf16 weights are widened to float32 in registers (a bf16 is the top half of a float32), so they
 * halve the bytes read and still accumulate in float32. x, b and y are float32.
 *
 * Built by model/rowdot.py with the system C compiler on first use; plain C, no intrinsics.
 */
#include <stdint.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

void rowdot_f32(const float *W, const float *x, const float *b, float *y, int64_t out, int64_t in) {
    #pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < out; o++) {
        const float *w = W + o * in;
        float acc = 0.0f;
        #pragma omp simd reduction(+ : acc)
        for (int64_t i = 0; i < in; i++) acc += w[i] * x[i];
        y[o] = b ? acc + b[o] : acc;
    }
}

void rowdot_bf16(const uint16_t *W, const float *x, const float *b, float *y, int64_t out, int64_t in) {
    #pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < out; o++) {
        const uint16_t *w = W + o * in;
        float acc = 0.0f;
        #pragma omp simd reduction(+ : acc)
        for (int64_t i = 0; i < in; i++) acc += bf16_to_f32(w[i]) * x[i];
        y[o] = b ? acc + b[o] : acc;
    }
}
