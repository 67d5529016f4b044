/* A vectorisable e^x for the kernels (libm's expf is a function call GCC won't vectorise). */
#ifndef TINYGPT_EXP_APPROX_H
#define TINYGPT_EXP_APPROX_H
#include <stdint.h>
#include <string.h>

/* e^a, within a few float32 ulps, for any a (clamped to [-87, 88], where float32 neither overflows nor
 * goes subnormal): a = n ln2 + r with |r| <= ln2/2, e^r from its Taylor series to r^6, times 2^n.
 * n is rounded by adding 1.5 * 2^23, which leaves it in the low bits of the sum: a float-to-int
 * conversion here would keep GCC from vectorising the loop. */
static inline float exp_approx(float a) {
    a = a < -87.0f ? -87.0f : (a > 88.0f ? 88.0f : a);
    float shifted = a * 1.44269504088896341f + 12582912.0f;
    float n = shifted - 12582912.0f;
    uint32_t shifted_bits;
    memcpy(&shifted_bits, &shifted, sizeof shifted_bits);
    float r = a - n * 0.693145751953125f - n * 1.428606765330187e-06f;  /* ln2 in two parts */
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    uint32_t scale_bits = (shifted_bits - 0x4B400000u + 127u) << 23;  /* 2^n */
    float scale;
    memcpy(&scale, &scale_bits, sizeof scale);
    return p * scale;
}
#endif
