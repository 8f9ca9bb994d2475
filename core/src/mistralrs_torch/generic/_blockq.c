/* Block-quantized linear layers for the CPU (the cpu-blockq backend; mistralrs_torch/generic/_blockq.py).

   A weight row is blocks of 32 codes, 4-bit (two per byte: byte i holds code i in its low nibble and code
   16 + i in its high nibble, as GGUF's Q4 blocks) or 8-bit (signed), with a float32 scale d and offset m per
   block: w = d * code + m. Activations are quantized per block of 32 to int16 (scale amax / 32767, so the
   rounding error is about 2e-5 of the block's largest value), and each block's dot product is exact integer
   arithmetic: x . w = sum_b dx_b d_b (qx_b . code_b) + m_b sum(x_b).

   Compiled at first use for the CPU it runs on (-march=native): AVX2 where the CPU has it, plain C elsewhere.
   The OpenMP threads are torch's (the runtime loads torch's libgomp first). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define BLOCKQ_AVX2 1
#endif

#define BLOCK 32
#define TILE 4 /* activation rows per pass over a weight row */

static float bf16_to_f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
static float f16_to_f32(uint16_t h) {
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
static uint16_t f32_to_bf16(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  /* a NaN stays a NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);                  /* round to nearest even */
}
static uint16_t f32_to_f16(float f) {
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
static float load_x(const void *x, int dtype, int64_t i) {
    if (dtype == 1) return bf16_to_f32(((const uint16_t *)x)[i]);
    if (dtype == 2) return f16_to_f32(((const uint16_t *)x)[i]);
    return ((const float *)x)[i];
}
static void store_y(void *y, int dtype, int64_t i, float v) {
    if (dtype == 1) ((uint16_t *)y)[i] = f32_to_bf16(v);
    else if (dtype == 2) ((uint16_t *)y)[i] = f32_to_f16(v);
    else ((float *)y)[i] = v;
}

/* Rows of x (M, K) -> per block: int16 codes, scale, sum of the block's values. */
static void quantize_rows(const void *x, int dtype, int64_t M, int64_t K, int16_t *qx, float *dx, float *sx) {
    const int64_t blocks = K / BLOCK;
    for (int64_t r = 0; r < M; r++) {
        for (int64_t b = 0; b < blocks; b++) {
            float v[BLOCK], amax = 0.f, sum = 0.f;
            for (int i = 0; i < BLOCK; i++) v[i] = load_x(x, dtype, r * K + b * BLOCK + i);
            for (int i = 0; i < BLOCK; i++) { amax = fmaxf(amax, fabsf(v[i])); sum += v[i]; }
            const float d = amax / 32767.f, inv = d > 0.f ? 1.f / d : 0.f;
            for (int i = 0; i < BLOCK; i++) qx[r * K + b * BLOCK + i] = (int16_t)lrintf(v[i] * inv);
            dx[r * blocks + b] = d;
            sx[r * blocks + b] = sum;
        }
    }
}

#ifdef BLOCKQ_AVX2
static inline float hsum(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* res[j] = sum_b d_b dx[j,b] (code_b . qx[j,b]) for R (a constant once inlined) rows of qx. */
static inline __attribute__((always_inline)) void dot_rows(const uint8_t *w, int bits, const float *d, int64_t K,
                                                           const int16_t *qx, const float *dx, int R, float *res) {
    const int64_t blocks = K / BLOCK;
    __m256 acc[TILE];
    for (int j = 0; j < R; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        __m256i lo, hi; /* codes 0..15 and 16..31 as int16 */
        if (bits == 4) {
            const __m128i raw = _mm_loadu_si128((const __m128i *)(w + b * 16)), nibble = _mm_set1_epi8(0x0f);
            lo = _mm256_cvtepu8_epi16(_mm_and_si128(raw, nibble));
            hi = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), nibble));
        } else {
            lo = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + b * 32)));
            hi = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + b * 32 + 16)));
        }
        const __m256 scale = _mm256_broadcast_ss(d + b);
        for (int j = 0; j < R; j++) {
            const int16_t *v = qx + j * K + b * BLOCK;
            const __m256i p = _mm256_add_epi32(_mm256_madd_epi16(lo, _mm256_loadu_si256((const __m256i *)v)),
                                               _mm256_madd_epi16(hi, _mm256_loadu_si256((const __m256i *)(v + 16))));
            acc[j] = _mm256_fmadd_ps(_mm256_mul_ps(scale, _mm256_broadcast_ss(dx + j * blocks + b)),
                                     _mm256_cvtepi32_ps(p), acc[j]);
        }
    }
    for (int j = 0; j < R; j++) res[j] = hsum(acc[j]);
}
#else
static void dot_rows(const uint8_t *w, int bits, const float *d, int64_t K, const int16_t *qx, const float *dx,
                     int R, float *res) {
    const int64_t blocks = K / BLOCK;
    for (int j = 0; j < R; j++) {
        float a = 0.f;
        for (int64_t b = 0; b < blocks; b++) {
            const int16_t *v = qx + j * K + b * BLOCK;
            int32_t s = 0;
            if (bits == 4) {
                for (int i = 0; i < 16; i++) s += (w[b * 16 + i] & 15) * v[i] + (w[b * 16 + i] >> 4) * v[i + 16];
            } else {
                for (int i = 0; i < BLOCK; i++) s += (int8_t)w[b * BLOCK + i] * v[i];
            }
            a += d[b] * dx[j * blocks + b] * (float)s;
        }
        res[j] = a;
    }
}
#endif

static inline __attribute__((always_inline)) void linear(const uint8_t *w, const int bits, const float *d,
        const float *m, int64_t N, int64_t K, const int16_t *qx, const float *dx, const float *sx, int64_t M,
        void *y, int dtype) {
    const int64_t blocks = K / BLOCK, row_bytes = K * bits / 8;
    #pragma omp parallel for schedule(static) if (N * K * M >= (1 << 18))
    for (int64_t n = 0; n < N; n++) {
        for (int64_t r0 = 0; r0 < M; r0 += TILE) {
            const int rows = M - r0 < TILE ? (int)(M - r0) : TILE;
            const int16_t *q = qx + r0 * K;
            const float *s = dx + r0 * blocks;
            const uint8_t *wn = w + n * row_bytes;
            const float *dn = d + n * blocks, *mn = m + n * blocks;
            float res[TILE];
            switch (rows) { /* constant tile heights keep the accumulators in registers */
                case 1: dot_rows(wn, bits, dn, K, q, s, 1, res); break;
                case 2: dot_rows(wn, bits, dn, K, q, s, 2, res); break;
                case 3: dot_rows(wn, bits, dn, K, q, s, 3, res); break;
                default: dot_rows(wn, bits, dn, K, q, s, TILE, res); break;
            }
            for (int j = 0; j < rows; j++) {
                float offset = 0.f;
                for (int64_t b = 0; b < blocks; b++) offset += mn[b] * sx[(r0 + j) * blocks + b];
                store_y(y, dtype, (r0 + j) * N + n, res[j] + offset);
            }
        }
    }
}

/* y (M, N) = x (M, K) @ W.T for a block-quantized W (N, K); x and y of one dtype. Returns 0, or -1 when the
   scratch for the quantized activations cannot be allocated. */
int blockq_linear(const uint8_t *w, int bits, const float *d, const float *m, int64_t N, int64_t K,
                  const void *x, int64_t M, void *y, int dtype) {
    const int64_t blocks = K / BLOCK;
    int16_t *qx = malloc((size_t)(M * K) * sizeof(int16_t));
    float *dx = malloc((size_t)(M * blocks) * sizeof(float)), *sx = malloc((size_t)(M * blocks) * sizeof(float));
    if (!qx || !dx || !sx) { free(qx); free(dx); free(sx); return -1; }
    quantize_rows(x, dtype, M, K, qx, dx, sx);
    if (bits == 4) linear(w, 4, d, m, N, K, qx, dx, sx, M, y, dtype);
    else linear(w, 8, d, m, N, K, qx, dx, sx, M, y, dtype);
    free(qx); free(dx); free(sx);
    return 0;
}

/* The weight (N, K) as float32, for calls with many rows (a matrix product beats per-row dot products). */
void blockq_dequantize(const uint8_t *w, int bits, const float *d, const float *m, int64_t N, int64_t K,
                       float *out) {
    const int64_t blocks = K / BLOCK, row_bytes = K * bits / 8;
    #pragma omp parallel for schedule(static) if (N * K >= (1 << 20))
    for (int64_t n = 0; n < N; n++) {
        for (int64_t b = 0; b < blocks; b++) {
            const float s = d[n * blocks + b], o = m[n * blocks + b];
            float *dst = out + n * K + b * BLOCK;
            if (bits == 4) {
                const uint8_t *q = w + n * row_bytes + b * 16;
                for (int i = 0; i < 16; i++) dst[i] = s * (float)(q[i] & 15) + o;
                for (int i = 0; i < 16; i++) dst[i + 16] = s * (float)(q[i] >> 4) + o;
            } else {
                const int8_t *q = (const int8_t *)(w + n * row_bytes + b * BLOCK);
                for (int i = 0; i < BLOCK; i++) dst[i] = s * (float)q[i] + o;
            }
        }
    }
}
