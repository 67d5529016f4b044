/* GELU (tanh approximation) on the CPU, forward and derivative in one pass.
 *
 * PyTorch's CPU GELU spends its time in tanh, not in memory traffic. Here tanh comes from one exponential computed by a short polynomial the
 * compiler vectorises, and the forward pass also writes the derivative, so the backward pass is one
 * multiplication instead of a second round of tanh. The derivative is stored in place of the input,
 * so the memory kept for backward is the same.
 *
 *   gelu(x)  = x/2 (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
 *   gelu'(x) = (1 + tanh(u))/2 + x/2 (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
 *
 * Called through model/kernels/activation.py (the op tinygpt::gelu_tanh).
 */
#include "bf16.h"
#include "exp_approx.h"

#define SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_CUBIC 0.044715f

/* With tanh(u) = 2s - 1 for s = sigmoid(2u) = E / (1 + E), E = e^(2u), both formulas above become
 *   gelu(x) = x s,   gelu'(x) = s + 2 x s (1 - s) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
 * where s and 1 - s = 1 / (1 + E) come without the cancellation of 1 +- tanh(u) near -+1. */
static inline float sigmoid_of_gelu_argument(float x, float *one_minus_s) {
    float a = 2.0f * SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
    a = a > 80.0f ? 80.0f : a;  /* keeps 1 / (1 + E) clear of subnormals; s rounds to 1 long before */
    float e = exp_approx(a), inv = 1.0f / (1.0f + e);
    *one_minus_s = inv;
    return x < -10.0f ? 0.0f : e * inv;  /* s < 1e-37 there, and x s must not be huge x times a clamped e */
}

static inline float gelu_derivative(float x, float s, float one_minus_s) {
    x = x < -10.0f ? -10.0f : (x > 10.0f ? 10.0f : x);  /* beyond, s (1 - s) is ~0 and x^2 could overflow */
    return s + 2.0f * x * s * one_minus_s * SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_CUBIC * x * x);
}

/* y = gelu(x); d = gelu'(x) unless d is NULL (inference). */
void gelu_tanh_f32(const float *x, float *y, float *d, int64_t n) {
    if (d) {
        #pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < n; i++) {
            float one_minus_s, s = sigmoid_of_gelu_argument(x[i], &one_minus_s);
            y[i] = x[i] * s;
            d[i] = gelu_derivative(x[i], s, one_minus_s);
        }
    } else {
        #pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < n; i++) {
            float one_minus_s;
            y[i] = x[i] * sigmoid_of_gelu_argument(x[i], &one_minus_s);
        }
    }
}

void gelu_tanh_bf16(const uint16_t *x, uint16_t *y, uint16_t *d, int64_t n) {
    if (d) {
        #pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < n; i++) {
            float xi = bf16_to_f32(x[i]), one_minus_s, s = sigmoid_of_gelu_argument(xi, &one_minus_s);
            y[i] = f32_to_bf16(xi * s);
            d[i] = f32_to_bf16(gelu_derivative(xi, s, one_minus_s));
        }
    } else {
        #pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < n; i++) {
            float xi = bf16_to_f32(x[i]), one_minus_s;
            y[i] = f32_to_bf16(xi * sigmoid_of_gelu_argument(xi, &one_minus_s));
        }
    }
}
