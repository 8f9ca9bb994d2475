/* Block-quantized linear layers for the CPU (the cpu-blockq backend; mistralrs_torch/generic/_blockq.py).

   A weight row is blocks of 32 codes, 4-bit (two per byte: byte i holds code i in its low nibble and code
   16 + i in its high nibble, as GGUF's Q4 blocks) or 8-bit (signed), with a float32 scale d and offset m per
   block: w = d * code + m, so x . w = sum_b d_b (x_b . code_b) + m_b sum(x_b).
   Activations are multiplied in float32 against the codes converted to float, and each block's sum is scaled
   once: as exact as a dense float32 layer. Half-precision activations are widened to float32 first.

   Compiled at first use for the CPU it runs on (-march=native): AVX2 where the CPU has it, plain C elsewhere.
   The OpenMP threads are torch's (the runtime loads torch's libgomp first). */
#include <stdlib.h>

#include "_half.h"

#define BLOCK 32
#define TILE 4 /* activation rows per pass over a weight row */

#ifdef MISTRALRS_AVX2
/* The 32 codes of block b as floats: c[0] codes 0..7, c[1] 8..15, c[2] 16..23, c[3] 24..31. */
static inline __attribute__((always_inline)) void block_codes(const uint8_t *w, int bits, int64_t b, __m256 c[4]) {
    __m128i first, second; /* 4-bit: the low and high nibbles; 8-bit: the two halves */
    if (bits == 4) {
        const __m128i raw = _mm_loadu_si128((const __m128i *)(w + b * 16)), nibble = _mm_set1_epi8(0x0f);
        first = _mm_and_si128(raw, nibble);
        second = _mm_and_si128(_mm_srli_epi16(raw, 4), nibble);
        c[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(first));
        c[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(first, 8)));
        c[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(second));
        c[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(second, 8)));
    } else {
        first = _mm_loadu_si128((const __m128i *)(w + b * 32));
        second = _mm_loadu_si128((const __m128i *)(w + b * 32 + 16));
        c[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(first));
        c[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(first, 8)));
        c[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(second));
        c[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(second, 8)));
    }
}

/* res[j] = sum_b d_b (code_b . x[j,b]) in float32 for R (a constant once inlined) rows of x. */
static inline __attribute__((always_inline)) void dot_rows(const uint8_t *w, int bits, const float *d, int64_t K,
                                                               const float *x, int R, float *res) {
    const int64_t blocks = K / BLOCK;
    __m256 acc[TILE];
    for (int j = 0; j < R; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        __m256 c[4];
        block_codes(w, bits, b, c);
        const __m256 scale = _mm256_broadcast_ss(d + b);
        for (int j = 0; j < R; j++) {
            const float *v = x + j * K + b * BLOCK;
            __m256 t = _mm256_mul_ps(c[0], _mm256_loadu_ps(v));
            t = _mm256_fmadd_ps(c[1], _mm256_loadu_ps(v + 8), t);
            t = _mm256_fmadd_ps(c[2], _mm256_loadu_ps(v + 16), t);
            t = _mm256_fmadd_ps(c[3], _mm256_loadu_ps(v + 24), t);
            acc[j] = _mm256_fmadd_ps(scale, t, acc[j]);
        }
    }
    for (int j = 0; j < R; j++) res[j] = hsum(acc[j]);
}
#else
/* Code i of block b (the plain C path's block_codes). */
static int code_at(const uint8_t *w, int bits, int64_t b, int i) {
    return bits == 4 ? (w[b * 16 + i % 16] >> (i < 16 ? 0 : 4)) & 15 : (int8_t)w[b * BLOCK + i];
}

static void dot_rows(const uint8_t *w, int bits, const float *d, int64_t K, const float *x, int R, float *res) {
    const int64_t blocks = K / BLOCK;
    for (int j = 0; j < R; j++) {
        float a = 0.f;
        for (int64_t b = 0; b < blocks; b++) {
            float s = 0.f;
            for (int i = 0; i < BLOCK; i++) s += (float)code_at(w, bits, b, i) * x[j * K + b * BLOCK + i];
            a += d[b] * s;
        }
        res[j] = a;
    }
}
#endif

static inline __attribute__((always_inline)) void linear(const uint8_t *w, const int bits, const float *d,
        const float *m, int64_t N, int64_t K, const float *x, const float *sx, int64_t M, void *y, int dtype) {
    const int64_t blocks = K / BLOCK, row_bytes = K * bits / 8;
    #pragma omp parallel for schedule(static) if (N * K * M >= (1 << 18))
    for (int64_t n = 0; n < N; n++) {
        for (int64_t r0 = 0; r0 < M; r0 += TILE) {
            const int rows = M - r0 < TILE ? (int)(M - r0) : TILE;
            const uint8_t *wn = w + n * row_bytes;
            const float *dn = d + n * blocks, *mn = m + n * blocks, *v = x + r0 * K;
            float res[TILE];
            switch (rows) { /* constant tile heights keep the accumulators in registers */
                case 1: dot_rows(wn, bits, dn, K, v, 1, res); break;
                case 2: dot_rows(wn, bits, dn, K, v, 2, res); break;
                case 3: dot_rows(wn, bits, dn, K, v, 3, res); break;
                default: dot_rows(wn, bits, dn, K, v, TILE, res); break;
            }
            for (int j = 0; j < rows; j++) {
                float offset = 0.f;
                for (int64_t b = 0; b < blocks; b++) offset += mn[b] * sx[(r0 + j) * blocks + b];
                store_y(y, dtype, (r0 + j) * N + n, res[j] + offset);
            }
        }
    }
}

/* y (M, N) = x (M, K) @ W.T for a block-quantized W (N, K); x and y of one dtype (0 float32, 1 bfloat16,
   2 float16). Returns 0, or -1 when the scratch for the widened activations and block sums cannot be allocated. */
int blockq_linear(const uint8_t *w, int bits, const float *d, const float *m, int64_t N, int64_t K,
                  const void *x, int64_t M, void *y, int dtype) {
    const int64_t blocks = K / BLOCK;
    float *wide = dtype == 0 ? NULL : malloc((size_t)(M * K) * sizeof(float));
    float *sx = malloc((size_t)(M * blocks) * sizeof(float));
    if (!sx || (dtype != 0 && !wide)) { free(wide); free(sx); return -1; }
    if (wide) for (int64_t i = 0; i < M * K; i++) wide[i] = load_x(x, dtype, i);
    const float *xf = wide ? wide : (const float *)x;
    for (int64_t i = 0; i < M * blocks; i++) {
        float sum = 0.f;
        for (int k = 0; k < BLOCK; k++) sum += xf[i * BLOCK + k];
        sx[i] = sum;
    }
    if (bits == 4) linear(w, 4, d, m, N, K, xf, sx, M, y, dtype);
    else linear(w, 8, d, m, N, K, xf, sx, M, y, dtype);
    free(wide); free(sx);
    return 0;
}

/* The weight (N, K) as float32, for calls with many rows (a matrix product beats per-row dot products). */
void blockq_dequantize(const uint8_t *w, int bits, const float *d, const float *m, int64_t N, int64_t K,
                       float *out) {
    const int64_t blocks = K / BLOCK, row_bytes = K * bits / 8;
    #pragma omp parallel for schedule(static) if (N * K >= (1 << 20))
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *wn = w + n * row_bytes;
        for (int64_t b = 0; b < blocks; b++) {
            const float s = d[n * blocks + b], o = m[n * blocks + b];
            float *dst = out + n * K + b * BLOCK;
#ifdef MISTRALRS_AVX2
            __m256 c[4];
            block_codes(wn, bits, b, c);
            const __m256 scale = _mm256_set1_ps(s), offset = _mm256_set1_ps(o);
            for (int i = 0; i < 4; i++) _mm256_storeu_ps(dst + 8 * i, _mm256_fmadd_ps(scale, c[i], offset));
#else
            for (int i = 0; i < BLOCK; i++) dst[i] = s * (float)code_at(wn, bits, b, i) + o;
#endif
        }
    }
}

/* 1 when this build has the AVX2 dot products, 0 for the plain C one (several times slower than torch's). */
int blockq_vectorized(void) {
#ifdef MISTRALRS_AVX2
    return 1;
#else
    return 0;
#endif
}
