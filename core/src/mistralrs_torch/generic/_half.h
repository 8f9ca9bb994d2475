/* Half-precision conversions and vector loads shared by this package's C kernels (_blockq.c, _cpu_ops.c).

   Conversions round to nearest even, as torch's casts do, and keep NaN a NaN. */
#ifndef MISTRALRS_HALF_H
#define MISTRALRS_HALF_H
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#define MISTRALRS_AVX2 1
#endif

static inline float bf16_to_f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
static inline float f16_to_f32(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0x1f) u = sign | 0x7f800000u | (man << 13);
    else if (exp) u = sign | ((exp + 112) << 23) | (man << 13);
    else { float f = ldexpf((float)man, -24); memcpy(&u, &f, 4); u |= sign; }
    float f; memcpy(&f, &u, 4); return f;
#endif
}
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  /* a NaN stays a NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);                  /* round to nearest even */
}
static inline uint16_t f32_to_f16(float f) {
#if defined(__F16C__)
    return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
    uint32_t u; memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00);
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);
    if (a < 0x38800000u) return (uint16_t)(sign | (uint16_t)lrintf(ldexpf(fabsf(f), 24)));
    uint32_t r = a - 0x38000000u; r = (r + 0xfffu + ((r >> 13) & 1u)) >> 13;
    return (uint16_t)(sign | r);
#endif
}

/* dtype: 0 float32, 1 bfloat16, 2 float16 */
static inline float load_x(const void *x, int dtype, int64_t i) {
    if (dtype == 1) return bf16_to_f32(((const uint16_t *)x)[i]);
    if (dtype == 2) return f16_to_f32(((const uint16_t *)x)[i]);
    return ((const float *)x)[i];
}
static inline void store_y(void *y, int dtype, int64_t i, float v) {
    if (dtype == 1) ((uint16_t *)y)[i] = f32_to_bf16(v);
    else if (dtype == 2) ((uint16_t *)y)[i] = f32_to_f16(v);
    else ((float *)y)[i] = v;
}

/* v as the dtype rounds it, back in float32: what torch's half arithmetic keeps of each result. */
static inline float round_to(float v, int dtype) {
    if (dtype == 1) return bf16_to_f32(f32_to_bf16(v));
    if (dtype == 2) return f16_to_f32(f32_to_f16(v));
    return v;
}

#ifdef MISTRALRS_AVX2
static inline float hsum(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* Elements i..i+7 of x as float32. */
static inline __m256 load8(const void *x, int dtype, int64_t i) {
    if (dtype == 0) return _mm256_loadu_ps((const float *)x + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)x + i));
    if (dtype == 1) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
#if defined(__F16C__)
    return _mm256_cvtph_ps(h);
#else
    float f[8];
    for (int j = 0; j < 8; j++) f[j] = f16_to_f32(((const uint16_t *)x)[i + j]);
    return _mm256_loadu_ps(f);
#endif
}

/* v rounded to bfloat16 (nearest even, NaN kept), as float32 bits. */
static inline __m256i bf16_bits8(__m256 v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    const __m256i quiet = _mm256_or_si256(u, _mm256_set1_epi32(0x400000));
    const __m256i bits = _mm256_blendv_epi8(rounded, quiet, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    return _mm256_and_si256(bits, _mm256_set1_epi32((int)0xffff0000u));
}

/* round_to for eight values. */
static inline __m256 round8(__m256 v, int dtype) {
    if (dtype == 1) return _mm256_castsi256_ps(bf16_bits8(v));
#if defined(__F16C__)
    if (dtype == 2) return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
#else
    if (dtype == 2) {
        float f[8];
        _mm256_storeu_ps(f, v);
        for (int j = 0; j < 8; j++) f[j] = round_to(f[j], 2);
        return _mm256_loadu_ps(f);
    }
#endif
    return v;
}

/* store_y for elements i..i+7. */
static inline void store8(void *y, int dtype, int64_t i, __m256 v) {
    if (dtype == 0) { _mm256_storeu_ps((float *)y + i, v); return; }
    __m128i halves;
    if (dtype == 1) {
        const __m256i high = _mm256_srli_epi32(bf16_bits8(v), 16);
        halves = _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(high, high), 0xd8));
    } else {
#if defined(__F16C__)
        halves = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
#else
        float f[8];
        _mm256_storeu_ps(f, v);
        for (int j = 0; j < 8; j++) store_y(y, 2, i + j, f[j]);
        return;
#endif
    }
    _mm_storeu_si128((__m128i *)((uint16_t *)y + i), halves);
}
#endif
#endif
