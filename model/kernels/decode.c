/* Decoding one token of one sequence: row dot products, and the whole GPT step built on them.
 *
 * Row dot products: y[o] = sum_i W[o][i] * x[i] (+ b[o]), for one row x or a few.
 *
 * W is row-major (out, in), as nn.Linear stores it, so each output is one dot product over a
 * contiguous row, vectorised by the compiler (omp simd). The rows are split across the OpenMP
 * threads in contiguous shares (PyTorch's own thread pool: this library links the libgomp that
 * torch has already loaded), so each core streams one long run of memory.
 *
 * bf16 weights are widened to float32 in registers (a bf16 is the top half of a float32), so they
 * halve the bytes read and still accumulate in float32. x, b and y are float32.
 *
 * Plain C, no intrinsics. decode_step, at the end, runs a whole GPT decoding step for one token around
 * these products; model/kernels/decode.py calls both.
 */
#include "bf16.h"

/* Several rows at once: Y[r][o] = sum_i W[o][i] * X[r][i] (+ b[o]) for X (rows, in), Y (rows, out).
 * Each weight row is read from memory once for all the input rows: two weight rows at a time meet
 * the inputs four at a time while they sit in the L1 cache, eight dot products in one vectorised
 * loop. A block short of rows or outputs repeats its last one and drops the repeated sums. */
#define CLAMP(first, k, n) ((first) + ((n) > (k) ? (k) : (n) - 1))

#define DEFINE_ROWDOT(name, weight_t, widen)                                                            \
    void name(const weight_t *W, const float *X, const float *b, float *Y, int64_t rows, int64_t out,     \
              int64_t in) {                                                                           \
        if (rows == 1) {                                                                              \
            _Pragma("omp parallel for schedule(static)")                                              \
            for (int64_t o = 0; o < out; o++) {                                                       \
                const weight_t *w = W + o * in;                                                       \
                float acc = 0.0f;                                                                     \
                _Pragma("omp simd reduction(+ : acc)")                                                \
                for (int64_t i = 0; i < in; i++) acc += widen(w[i]) * X[i];                           \
                Y[o] = b ? acc + b[o] : acc;                                                          \
            }                                                                                         \
            return;                                                                                   \
        }                                                                                             \
        _Pragma("omp parallel for schedule(static)")                                                  \
        for (int64_t pair = 0; pair < (out + 1) / 2; pair++) {                                        \
            int64_t o = 2 * pair, no = out - o < 2 ? out - o : 2;                                     \
            const weight_t *w0 = W + o * in, *w1 = W + CLAMP(o, 1, no) * in;                          \
            for (int64_t r = 0; r < rows; r += 4) {                                                   \
                int64_t n = rows - r < 4 ? rows - r : 4;                                              \
                const float *x0 = X + r * in, *x1 = X + CLAMP(r, 1, n) * in;                          \
                const float *x2 = X + CLAMP(r, 2, n) * in, *x3 = X + CLAMP(r, 3, n) * in;             \
                float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;                                     \
                float c0 = 0.0f, c1 = 0.0f, c2 = 0.0f, c3 = 0.0f;                                     \
                _Pragma("omp simd reduction(+ : a0, a1, a2, a3, c0, c1, c2, c3)")                     \
                for (int64_t i = 0; i < in; i++) {                                                    \
                    float u = widen(w0[i]), v = widen(w1[i]);                                         \
                    a0 += u * x0[i];                                                                  \
                    a1 += u * x1[i];                                                                  \
                    a2 += u * x2[i];                                                                  \
                    a3 += u * x3[i];                                                                  \
                    c0 += v * x0[i];                                                                  \
                    c1 += v * x1[i];                                                                  \
                    c2 += v * x2[i];                                                                  \
                    c3 += v * x3[i];                                                                  \
                }                                                                                     \
                float sums[2][4] = {{a0, a1, a2, a3}, {c0, c1, c2, c3}};                              \
                for (int64_t p = 0; p < no; p++)                                                      \
                    for (int64_t t = 0; t < n; t++)                                                   \
                        Y[(r + t) * out + o + p] = b ? sums[p][t] + b[o + p] : sums[p][t];            \
            }                                                                                         \
        }                                                                                             \
    }

static inline float as_f32(float v) { return v; }

DEFINE_ROWDOT(rowdot_f32, float, as_f32)
DEFINE_ROWDOT(rowdot_bf16, uint16_t, bf16_to_f32)

/* ---- The whole decoding step of one sequence (batch 1, one new token) ----------------------------
 *
 * Between the products above, a decoding step in PyTorch runs some twenty small ops per layer (norms,
 * attention over the cache, GELU, residual adds), each paying PyTorch's per-op dispatch for almost no
 * arithmetic. decode_step runs the same network for one token in plain loops instead, calling the
 * row-dot kernels for every product, and reads and extends the KV cache buffers that PyTorch's
 * prefill filled (model/nn/attention.py KVCache). model/kernels/decode.py mirrors the two structs
 * below with ctypes; decode_struct_layout reports their sizes and offsets so that the mirror is checked.
 *
 * Activations are float32 throughout; weight matrices, the token and position tables and the KV cache
 * are float32 or bfloat16 (the model's dtype); norm gains, biases and rotary frequencies come as
 * float32 copies. */
#include <math.h>

typedef struct {
    const float *ln1_w, *ln1_b;        /* b NULL: no bias (or RMSNorm) */
    const void *attn_w;                /* (3C, C): [W_Q; W_K; W_V] */
    const float *attn_b;
    const float *q_norm_w, *k_norm_w;  /* (hs,), NULL without QK-norm */
    const void *proj_w;                /* (C, C) */
    const float *proj_b;
    const float *ln2_w, *ln2_b;
    const void *fc_w;                  /* (H, C) */
    const float *fc_b;
    const void *fc2_w;                 /* (C, H) */
    const float *fc2_b;
    void *k_cache, *v_cache;           /* (nh, max_len, hs) each */
} DecodeLayer;

typedef struct {
    int64_t n_layer, n_head, n_embd, hidden, vocab, max_len;
    int64_t bf16;                      /* weights, tables and cache in bfloat16 (else float32) */
    int64_t rmsnorm, relu2, rope, qk_norm;
    double norm_eps, qk_norm_eps;
    const void *wte;                   /* (vocab, C) */
    const void *wpe;                   /* (max_len, C), NULL with rotary positions */
    const float *rope_freq;            /* (hs / 2,) */
    const float *lnf_w, *lnf_b;
    const void *head_w;                /* (vocab, C) */
    DecodeLayer *layers;
    float *scratch;                    /* 6C + H + n_head * max_len floats */
} DecodeModel;

static inline float load(const void *p, int64_t i, int64_t bf16) {
    return bf16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static void product(const void *W, const float *x, const float *b, float *y, int64_t out, int64_t in, int64_t bf16) {
    if (bf16) rowdot_bf16((const uint16_t *)W, x, b, y, 1, out, in);
    else rowdot_f32((const float *)W, x, b, y, 1, out, in);
}

/* LayerNorm (mean and biased variance) or RMSNorm of x (n,) into y, times w, plus b if given */
static void norm(const float *x, const float *w, const float *b, float *y, int64_t n, int64_t rms, double eps) {
    float mean = 0.0f, var = 0.0f;
    if (!rms) {
        for (int64_t i = 0; i < n; i++) mean += x[i];
        mean /= (float)n;
    }
    for (int64_t i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    float inv = 1.0f / sqrtf(var / (float)n + (float)eps);
    for (int64_t i = 0; i < n; i++) {
        float v = (x[i] - mean) * inv * (w ? w[i] : 1.0f);
        y[i] = b ? v + b[i] : v;
    }
}

/* rotate the channel pairs (i, i + hs/2) of x (hs,) by pos * freq[i] */
static void rotate(float *x, const float *freq, int64_t hs, int64_t pos) {
    int64_t half = hs / 2;
    for (int64_t i = 0; i < half; i++) {
        float angle = (float)pos * freq[i], c = cosf(angle), s = sinf(angle);
        float x1 = x[i], x2 = x[i + half];
        x[i] = x1 * c - x2 * s;
        x[i + half] = x1 * s + x2 * c;
    }
}

static void store(void *cache, int64_t i, const float *x, int64_t n, int64_t bf16) {
    for (int64_t j = 0; j < n; j++) {
        if (bf16) ((uint16_t *)cache)[i + j] = f32_to_bf16(x[j]);
        else ((float *)cache)[i + j] = x[j];
    }
}

/* one head's query q (hs,) over the keys and values 0 .. S-1 of its cache rows -> out (hs,) */
static void attend(const float *q, const void *k, const void *v, int64_t S, int64_t hs, int64_t bf16,
                   float *scores, float *out) {
    float scale = 1.0f / sqrtf((float)hs), top = -INFINITY, total = 0.0f;
    for (int64_t j = 0; j < S; j++) {
        float dot = 0.0f;
        if (bf16) {
            const uint16_t *kj = (const uint16_t *)k + j * hs;
            #pragma omp simd reduction(+ : dot)
            for (int64_t i = 0; i < hs; i++) dot += q[i] * bf16_to_f32(kj[i]);
        } else {
            const float *kj = (const float *)k + j * hs;
            #pragma omp simd reduction(+ : dot)
            for (int64_t i = 0; i < hs; i++) dot += q[i] * kj[i];
        }
        scores[j] = dot * scale;
        if (scores[j] > top) top = scores[j];
    }
    for (int64_t j = 0; j < S; j++) {
        scores[j] = expf(scores[j] - top);
        total += scores[j];
    }
    for (int64_t i = 0; i < hs; i++) out[i] = 0.0f;
    for (int64_t j = 0; j < S; j++) {
        float p = scores[j] / total;
        if (bf16) {
            const uint16_t *vj = (const uint16_t *)v + j * hs;
            #pragma omp simd
            for (int64_t i = 0; i < hs; i++) out[i] += p * bf16_to_f32(vj[i]);
        } else {
            const float *vj = (const float *)v + j * hs;
            #pragma omp simd
            for (int64_t i = 0; i < hs; i++) out[i] += p * vj[i];
        }
    }
}

static inline float gelu_tanh(float x) {
    return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

/* Logits (vocab,) for token at position pos, after `past` tokens already in every layer's cache
 * (the caller checked past < max_len); writes this token's keys and values at index past. */
void decode_step(const DecodeModel *m, int64_t token, int64_t pos, int64_t past, float *logits) {
    const int64_t C = m->n_embd, H = m->hidden, nh = m->n_head, hs = C / nh, L = m->max_len, S = past + 1;
    const int64_t bf16 = m->bf16;
    float *x = m->scratch, *xn = x + C, *qkv = xn + C, *y = qkv + 3 * C, *hid = y + C, *scores = hid + H;
    for (int64_t i = 0; i < C; i++)
        x[i] = load(m->wte, token * C + i, bf16) + (m->wpe ? load(m->wpe, pos * C + i, bf16) : 0.0f);
    for (int64_t l = 0; l < m->n_layer; l++) {
        const DecodeLayer *d = &m->layers[l];
        norm(x, d->ln1_w, d->ln1_b, xn, C, m->rmsnorm, m->norm_eps);
        product(d->attn_w, xn, d->attn_b, qkv, 3 * C, C, bf16);
        for (int64_t h = 0; h < nh; h++) {
            float *q = qkv + h * hs, *k = qkv + C + h * hs, *v = qkv + 2 * C + h * hs;
            if (m->qk_norm) {
                norm(q, d->q_norm_w, NULL, q, hs, 1, m->qk_norm_eps);
                norm(k, d->k_norm_w, NULL, k, hs, 1, m->qk_norm_eps);
            }
            if (m->rope) {
                rotate(q, m->rope_freq, hs, pos);
                rotate(k, m->rope_freq, hs, pos);
            }
            store(d->k_cache, (h * L + past) * hs, k, hs, bf16);
            store(d->v_cache, (h * L + past) * hs, v, hs, bf16);
        }
        #pragma omp parallel for schedule(static)
        for (int64_t h = 0; h < nh; h++) {
            int64_t at = h * L * hs * (bf16 ? 2 : 4);
            attend(qkv + h * hs, (const char *)d->k_cache + at, (const char *)d->v_cache + at, S, hs, bf16,
                   scores + h * L, y + h * hs);
        }
        product(d->proj_w, y, d->proj_b, xn, C, C, bf16);
        for (int64_t i = 0; i < C; i++) x[i] += xn[i];
        norm(x, d->ln2_w, d->ln2_b, xn, C, m->rmsnorm, m->norm_eps);
        product(d->fc_w, xn, d->fc_b, hid, H, C, bf16);
        for (int64_t i = 0; i < H; i++) hid[i] = m->relu2 ? (hid[i] > 0.0f ? hid[i] * hid[i] : 0.0f) : gelu_tanh(hid[i]);
        product(d->fc2_w, hid, d->fc2_b, xn, C, H, bf16);
        for (int64_t i = 0; i < C; i++) x[i] += xn[i];
    }
    norm(x, m->lnf_w, m->lnf_b, xn, C, m->rmsnorm, m->norm_eps);
    product(m->head_w, xn, NULL, logits, m->vocab, C, bf16);
}

/* The layout of the two structs above, for model/kernels/decode.py to compare with its ctypes mirror:
 * out[0] = sizeof(DecodeLayer), out[1..16] = the offsets of its fields in order, out[17] =
 * sizeof(DecodeModel), out[18..38] = the offsets of its fields in order. Returns how many were written. */
#include <stddef.h>

int64_t decode_struct_layout(int64_t *out) {
    int64_t i = 0;
#define LAYER(field) out[i++] = offsetof(DecodeLayer, field);
#define MODEL(field) out[i++] = offsetof(DecodeModel, field);
    out[i++] = sizeof(DecodeLayer);
    LAYER(ln1_w) LAYER(ln1_b) LAYER(attn_w) LAYER(attn_b) LAYER(q_norm_w) LAYER(k_norm_w) LAYER(proj_w)
    LAYER(proj_b) LAYER(ln2_w) LAYER(ln2_b) LAYER(fc_w) LAYER(fc_b) LAYER(fc2_w) LAYER(fc2_b) LAYER(k_cache)
    LAYER(v_cache)
    out[i++] = sizeof(DecodeModel);
    MODEL(n_layer) MODEL(n_head) MODEL(n_embd) MODEL(hidden) MODEL(vocab) MODEL(max_len) MODEL(bf16)
    MODEL(rmsnorm) MODEL(relu2) MODEL(rope) MODEL(qk_norm) MODEL(norm_eps) MODEL(qk_norm_eps) MODEL(wte)
    MODEL(wpe) MODEL(rope_freq) MODEL(lnf_w) MODEL(lnf_b) MODEL(head_w) MODEL(layers) MODEL(scratch)
#undef LAYER
#undef MODEL
    return i;
}
