/* RMSNorm, rotary embedding, paged attention and paged-cache writes for the CPU (the cpu-native-layers and
   cpu-native-attention backends; mistralrs_torch/generic/_cpu_ops.py).

   At decode each of these is a few thousand multiplications, which plain torch spreads over five to fifteen
   tensor ops and their allocations; one call here does it in place. Arithmetic is float32, as the generic
   backends compute, and half-precision results are rounded where torch rounds them (RMSNorm rounds the
   normalized value before the weight multiplies it, rotary rounds each product and the sum), so a bfloat16
   model gives the tokens it gives with plain torch.
   dtype codes: 0 float32, 1 bfloat16, 2 float16. Strides are in elements. */
#include <stdlib.h>

#include "_half.h"

/* out (rows, n) = x / sqrt(mean(x ** 2) + eps) * w, rows contiguous; w of x's dtype. */
void cpu_rms_norm(const void *x, const void *w, void *out, int64_t rows, int64_t n, float eps, int dtype) {
    #pragma omp parallel for schedule(static) if (rows * n >= (1 << 16))
    for (int64_t r = 0; r < rows; r++) {
        const int64_t base = r * n;
        int64_t i = 0;
        float squares = 0.f;
#ifdef MISTRALRS_AVX2
        __m256 acc = _mm256_setzero_ps();
        for (; i + 8 <= n; i += 8) {
            const __m256 v = load8(x, dtype, base + i);
            acc = _mm256_fmadd_ps(v, v, acc);
        }
        squares = hsum(acc);
#endif
        for (; i < n; i++) squares += load_x(x, dtype, base + i) * load_x(x, dtype, base + i);
        const float inverse = 1.f / sqrtf(squares / (float)n + eps);
        i = 0;
#ifdef MISTRALRS_AVX2
        const __m256 scale = _mm256_set1_ps(inverse);
        for (; i + 8 <= n; i += 8)
            store8(out, dtype, base + i, _mm256_mul_ps(round8(_mm256_mul_ps(load8(x, dtype, base + i), scale), dtype),
                                                       load8(w, dtype, i)));
#endif
        for (; i < n; i++)
            store_y(out, dtype, base + i, round_to(load_x(x, dtype, base + i) * inverse, dtype) * load_x(w, dtype, i));
    }
}

/* One (batch, head, token) row of D: out = x * cos + rotate_half(x) * sin, each product and the sum rounded to
   the dtype; x's and out's elements at stride xe and oe; cos and sin rows of D / 2 (the tables repeat). */
static inline void rotate_row(const void *x, int64_t xb, int64_t xe, void *out, int64_t ob, int64_t oe,
                              const void *cos_, const void *sin_, int64_t tb, int64_t half, int dtype) {
    int64_t j = 0;
#ifdef MISTRALRS_AVX2
    if (xe == 1 && oe == 1)
        for (; j + 8 <= half; j += 8) {
            const __m256 first = load8(x, dtype, xb + j), second = load8(x, dtype, xb + half + j);
            const __m256 c = load8(cos_, dtype, tb + j), s = load8(sin_, dtype, tb + j);
            store8(out, dtype, ob + j, _mm256_sub_ps(round8(_mm256_mul_ps(first, c), dtype),
                                                     round8(_mm256_mul_ps(second, s), dtype)));
            store8(out, dtype, ob + half + j, _mm256_add_ps(round8(_mm256_mul_ps(second, c), dtype),
                                                            round8(_mm256_mul_ps(first, s), dtype)));
        }
#endif
    for (; j < half; j++) {
        const float first = load_x(x, dtype, xb + j * xe), second = load_x(x, dtype, xb + (j + half) * xe);
        const float c = load_x(cos_, dtype, tb + j), s = load_x(sin_, dtype, tb + j);
        store_y(out, dtype, ob + j * oe, round_to(first * c, dtype) - round_to(second * s, dtype));
        store_y(out, dtype, ob + (j + half) * oe, round_to(second * c, dtype) + round_to(first * s, dtype));
    }
}

/* Rotate-half rotary embedding of q (B, Hq, S, D) and k (B, Hk, S, D) into q_out and k_out. strides holds
   16 element strides: q's, q_out's, k's, k_out's (4 each). cos and sin are (B, S, D) contiguous in the dtype,
   the tables the generic backend computes (their second halves repeat the first). */
void cpu_rotary(const void *q, void *q_out, const void *k, void *k_out, const int64_t *strides, int64_t B,
                int64_t Hq, int64_t Hk, int64_t S, int64_t D, const void *cos_, const void *sin_, int dtype) {
    const int64_t half = D / 2, *qs = strides, *qo = strides + 4, *ks = strides + 8, *ko = strides + 12;
    #pragma omp parallel for collapse(2) schedule(static) if (B * S * (Hq + Hk) * D >= (1 << 16))
    for (int64_t b = 0; b < B; b++) {
        for (int64_t s = 0; s < S; s++) {
            const int64_t tb = (b * S + s) * D;
            for (int64_t h = 0; h < Hq; h++)
                rotate_row(q, b * qs[0] + h * qs[1] + s * qs[2], qs[3], q_out, b * qo[0] + h * qo[1] + s * qo[2],
                           qo[3], cos_, sin_, tb, half, dtype);
            for (int64_t h = 0; h < Hk; h++)
                rotate_row(k, b * ks[0] + h * ks[1] + s * ks[2], ks[3], k_out, b * ko[0] + h * ko[1] + s * ko[2],
                           ko[3], cos_, sin_, tb, half, dtype);
        }
    }
}

static inline float dot(const float *q, const void *row, int dtype, int64_t D) {
    int64_t d = 0;
    float sum = 0.f;
#ifdef MISTRALRS_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (; d + 8 <= D; d += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8(row, dtype, d), acc);
    sum = hsum(acc);
#endif
    for (; d < D; d++) sum += q[d] * load_x(row, dtype, d);
    return sum;
}

/* scores[t] = scale * q . row t for the keys' rows (bytes from cache), four keys at once where the head size is
   a multiple of 8: four independent FMA chains instead of one. */
static inline __attribute__((always_inline)) void score_keys(const float *q, const char *cache,
        const int64_t *rows, int64_t keys, int dtype, int64_t D, float scale, float *scores) {
    int64_t t = 0;
#ifdef MISTRALRS_AVX2
    if (D % 8 == 0)
        for (; t + 4 <= keys; t += 4) {
            __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
            for (int64_t d = 0; d < D; d += 8) {
                const __m256 query = _mm256_loadu_ps(q + d);
                for (int j = 0; j < 4; j++)
                    acc[j] = _mm256_fmadd_ps(query, load8(cache + rows[t + j], dtype, d), acc[j]);
            }
            for (int j = 0; j < 4; j++) scores[t + j] = hsum(acc[j]) * scale;
        }
#endif
    for (; t < keys; t++) scores[t] = dot(q, cache + rows[t], dtype, D) * scale;
}

/* acc += sum_t weights[t] * row t, four rows a pass over acc where the head size is a multiple of 8. */
static inline __attribute__((always_inline)) void add_values(float *acc, const float *weights,
        const char *cache, const int64_t *rows, int64_t keys, int dtype, int64_t D) {
    int64_t t = 0;
#ifdef MISTRALRS_AVX2
    if (D % 8 == 0)
        for (; t + 4 <= keys; t += 4)
            for (int64_t d = 0; d < D; d += 8) {
                __m256 sum = _mm256_loadu_ps(acc + d);
                for (int j = 0; j < 4; j++)
                    sum = _mm256_fmadd_ps(_mm256_set1_ps(weights[t + j]), load8(cache + rows[t + j], dtype, d), sum);
                _mm256_storeu_ps(acc + d, sum);
            }
#endif
    for (; t < keys; t++)
        for (int64_t d = 0; d < D; d++) acc[d] += weights[t] * load_x(cache + rows[t], dtype, d);
}

/* acc = softmax(scale * query . keys) . values over the rows of one KV head; scores is scratch of keys floats. */
static inline __attribute__((always_inline)) void attend(const float *query, float *acc, float *scores,
        const char *k_head, const char *v_head, const int64_t *rows, int64_t keys, int dtype, int64_t D,
        float scale) {
    float top = -INFINITY, total = 0.f;
    score_keys(query, k_head, rows, keys, dtype, D, scale, scores);
    for (int64_t t = 0; t < keys; t++) top = scores[t] > top ? scores[t] : top;
    for (int64_t t = 0; t < keys; t++) {
        scores[t] = expf(scores[t] - top);
        total += scores[t];
    }
    for (int64_t d = 0; d < D; d++) acc[d] = 0.f;
    add_values(acc, scores, v_head, rows, keys, dtype, D);
    for (int64_t d = 0; d < D; d++) acc[d] /= total;
}

/* out (B, H, L, D) contiguous = softmax(q k^T * scale) v, q (B, H, L, D) with strides qs, against the paged
   caches (blocks, block_size, KVH, D) contiguous: sequence b's token t is in block table[b * width + t /
   block_size] at t % block_size; query i sees tokens 0 .. lens[b] - L + i (bottom-right causal), its head h
   reads KV head h / (H / KVH). The caller checked lens and the table. Returns -1 when scratch memory runs out. */
int cpu_paged_attention(const void *q, const int64_t *qs, void *out, int64_t B, int64_t H, int64_t L, int64_t D,
                        const void *k_cache, const void *v_cache, int64_t block_size, int64_t KVH,
                        const int32_t *table, int64_t width, const int32_t *lens, float scale, int dtype) {
    const int64_t group = H / KVH;
    const size_t element = dtype == 0 ? 4 : 2;
    /* Each sequence's tokens as byte offsets of their cache rows, looked up once for all its heads and queries. */
    int64_t *first = malloc((size_t)(B + 1) * sizeof(int64_t));
    if (!first) return -1;
    first[0] = 0;
    for (int64_t b = 0; b < B; b++) first[b + 1] = first[b] + lens[b];
    int64_t *rows = malloc((size_t)(first[B] > 0 ? first[B] : 1) * sizeof(int64_t));
    if (!rows) { free(first); return -1; }
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0, block = 0; t < lens[b]; block++)
            for (int64_t o = 0; o < block_size && t < lens[b]; o++, t++)
                rows[first[b] + t] = ((int64_t)table[b * width + block] * block_size + o) * KVH * D * (int64_t)element;
    int failed = 0;
    #pragma omp parallel for collapse(3) schedule(static) reduction(|: failed) \
        if (B * H * L * width * block_size * D >= (1 << 18))
    for (int64_t b = 0; b < B; b++) {
        for (int64_t h = 0; h < H; h++) {
            for (int64_t i = 0; i < L; i++) {
                const int64_t keys = lens[b] - L + i + 1;
                const char *k_head = (const char *)k_cache + (h / group) * D * (int64_t)element;
                const char *v_head = (const char *)v_cache + (h / group) * D * (int64_t)element;
                float *scratch = malloc((size_t)(2 * D + keys) * sizeof(float));
                if (!scratch) { failed = 1; continue; }
                float *query = scratch, *acc = scratch + D, *scores = scratch + 2 * D;
                const int64_t qb = b * qs[0] + h * qs[1] + i * qs[2], *seq = rows + first[b];
                for (int64_t d = 0; d < D; d++) query[d] = load_x(q, dtype, qb + d * qs[3]);
                switch (dtype) { /* a constant dtype takes its branch out of the inner loops */
                    case 0: attend(query, acc, scores, k_head, v_head, seq, keys, 0, D, scale); break;
                    case 1: attend(query, acc, scores, k_head, v_head, seq, keys, 1, D, scale); break;
                    default: attend(query, acc, scores, k_head, v_head, seq, keys, 2, D, scale); break;
                }
                const int64_t ob = ((b * H + h) * L + i) * D;
                for (int64_t d = 0; d < D; d++) store_y(out, dtype, ob + d, acc[d]);
                free(scratch);
            }
        }
    }
    free(rows);
    free(first);
    return failed ? -1 : 0;
}

/* Row t of k and v (tokens, row_bytes) contiguous into flat slot slots[t] of the caches (slots of row_bytes),
   skipping -1; slots int64 when wide, else int32. Returns -1, writing nothing, when a slot is outside 0..total-1. */
int cpu_write_kv(const void *k, const void *v, void *k_cache, void *v_cache, const void *slots, int wide,
                 int64_t tokens, int64_t row_bytes, int64_t total) {
    for (int64_t t = 0; t < tokens; t++) {
        const int64_t slot = wide ? ((const int64_t *)slots)[t] : ((const int32_t *)slots)[t];
        if (slot < -1 || slot >= total) return -1;
    }
    for (int64_t t = 0; t < tokens; t++) {
        const int64_t slot = wide ? ((const int64_t *)slots)[t] : ((const int32_t *)slots)[t];
        if (slot < 0) continue;
        memcpy((char *)k_cache + slot * row_bytes, (const char *)k + t * row_bytes, (size_t)row_bytes);
        memcpy((char *)v_cache + slot * row_bytes, (const char *)v + t * row_bytes, (size_t)row_bytes);
    }
    return 0;
}
