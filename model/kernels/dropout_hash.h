/* Whether dropout keeps element i: a pure function of (seed, i), so any thread can decide any
 * element, and backward recomputes the mask instead of storing it. Two rounds of MurmurHash3's 32-bit
 * finaliser over the index and the seed; element i is kept when the hash is >= threshold (= p * 2^32).
 * Shared by dropout.c and attention_probs.c, which must drop the same elements for the same seed. */
#ifndef TINYGPT_DROPOUT_HASH_H
#define TINYGPT_DROPOUT_HASH_H
#include <stdint.h>

static inline uint32_t fmix32(uint32_t h) {
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

static inline uint32_t dropout_hash(uint64_t seed, int64_t i) {
    uint32_t h = fmix32((uint32_t)i ^ (uint32_t)seed);
    return fmix32(h ^ (uint32_t)((uint64_t)i >> 32) ^ (uint32_t)(seed >> 32));
}

static inline int dropout_keeps(uint64_t seed, int64_t i, uint32_t threshold) {
    return dropout_hash(seed, i) >= threshold;
}
#endif
