/*
 * vfsearch search kernel: masked region cosine at every offset of every image.
 *
 * For a query of K cells (dy_k, dx_k) inside an h x w box, with folded query
 * vectors Q_k = m_k^2 q_k, and an image feature map x (H, W, C):
 *
 *   num(a,b) = sum_k <Q_k, x[a+dy_k, b+dx_k]>
 *   den(a,b) = sum_k m_k^2 |x[a+dy_k, b+dx_k]|^2      (|x|^2 given as sqnorm)
 *   score    = num / (qnorm * sqrt(den))              (0 if den <= 0 or qnorm == 0)
 *
 * Every image cell is loaded once per group of up to GMAX query cells for
 * which the implied offset is valid (register-blocked: one accumulator per
 * query cell); the (cell, k) pair lists are built once per call (they do not
 * depend on the image).
 *
 * 8-bit features (uint8 / int8 with a per-cell float scale) are dotted in
 * exact int32 arithmetic with an integer query (Qi_k, per-cell scale sq_k):
 * int16 (qfmt 0, every level), int8 (qfmt 1, AVX-512 VNNI vpdpbusd, two images
 * per pass over the query) or 6-bit (qfmt 2, AVX2 vpmaddubsw). The rounding of
 * the query is part of the returned bounds (eps_q), so the caller can re-scan
 * the few images that may reach its top k with the int16 query.
 * float16 / float32 features are accumulated in float32.
 *
 * Pass B (per offset, summed over k in order) runs on the H x W grid layout
 * (offset (a, b) at a*W + b) so that each of its loops is one contiguous run.
 *
 * Built once with "-O3 -fPIC -shared -fno-math-errno -fno-trapping-math" (no
 * -march); the SIMD variants carry target attributes and are selected at run
 * time (vfs_cpu_level()). -DVFS_NO_SIMD builds the generic path only (that is
 * also what non-x86-64 targets get).
 *
 * Cost, 7x7x512, 3x3 query: 225 (cell, k) pairs x 512 bytes; the VNNI path
 * issues 3600 256-bit vpdpbusd per image (2 per cycle on Zen 4) plus the
 * reductions; it is then within ~1.5x of reading the features once.
 *
 * Levels: 0 generic C, 1 AVX2+FMA+F16C, 2 AVX-512 (F, BW, VL, VNNI).
 * Dtypes: 0 uint8, 1 int8, 2 float16, 3 float32.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(VFS_NO_SIMD)
#define VFS_X86 1
#include <cpuid.h>
#include <immintrin.h>
#define VFS_AVX2 __attribute__((target("avx2,fma,f16c")))
#define VFS_AVX512 \
    __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#endif

#define VFS_INLINE static inline __attribute__((always_inline))
#define GMAX 12
#ifndef VFS_PREFETCH
#define VFS_PREFETCH 65536 /* bytes ahead: a few images; into L2 (prefetcht1) */
#endif

#define VFS_PI 3.14159265358979323846
#define VFS_PI_2 1.57079632679489661923
#define VFS_SLACK 1e-5

enum { DT_U8 = 0, DT_I8 = 1, DT_F16 = 2, DT_F32 = 3 };
enum { LV_GENERIC = 0, LV_AVX2 = 1, LV_AVX512 = 2 };
/* 8-bit query formats: int16 rows (C); int8 rows (C padded to 64 with zeros) for the AVX-512
 * VNNI kernel; int8 rows with |q| <= 31 (padded the same way) for the AVX2 vpmaddubsw kernel */
enum { QF_I16 = 0, QF_I8 = 1, QF_I6 = 2 };

/* ------------------------------------------------------------------------ */
/* CPU detection                                                             */
/* ------------------------------------------------------------------------ */

static int vfs_detect_level(void) {
#ifdef VFS_X86
    __builtin_cpu_init();
    unsigned int a = 0, b = 0, c = 0, d = 0;
    const int f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29)); /* F16C */
    int level = LV_GENERIC;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c)
        level = LV_AVX2;
    if (level == LV_AVX2 && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512vnni"))
        level = LV_AVX512;
    return level;
#else
    return LV_GENERIC;
#endif
}

/* Best SIMD level this CPU (and OS) supports: 0 generic, 1 AVX2, 2 AVX-512 VNNI. */
int vfs_cpu_level(void) {
    static volatile int cached = -1;
    int level = cached;
    if (level < 0) cached = level = vfs_detect_level();
    return level;
}

int vfs_abi_version(void) { return 2; }

/* ------------------------------------------------------------------------ */
/* helpers                                                                   */
/* ------------------------------------------------------------------------ */

static inline float h2f(uint16_t h) {
    const uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
    const uint32_t e = ((uint32_t)h >> 10) & 0x1fu;
    const uint32_t m = (uint32_t)h & 0x3ffu;
    uint32_t bits;
    if (e == 0) {
        if (m == 0) {
            bits = sign;
        } else { /* subnormal: m * 2^-24 */
            float v = (float)m * 5.9604644775390625e-8f;
            return sign ? -v : v;
        }
    } else if (e == 31) {
        bits = sign | 0x7f800000u | (m << 13);
    } else {
        bits = sign | ((e + 112u) << 23) | (m << 13);
    }
    float r;
    memcpy(&r, &bits, sizeof r);
    return r;
}

typedef struct {
    int32_t cell;        /* image cell index y*W+x */
    int32_t G;           /* number of query cells in this group (1..GMAX) */
    int32_t dst[GMAX];   /* where each dot goes in the (K, H*W) dot array: k*HW + cell */
    const void *q[GMAX]; /* the group's query rows */
    int32_t corr[16];    /* int8 query on int8 features: 128 * sum(q row), subtracted */
} group_t;

typedef struct {
    const uint8_t *feats;
    int64_t n;
    int H, W, C, esize, h, w;
    const float *scale, *sqnorm, *qerr2;
    int O, K, ngroups, is8;
    const group_t *groups;
    const int32_t *dy, *dx;
    const double *wq, *wm; /* per k: sq_k (8-bit) or 1, and m_k^2 */
    double qnorm, eps_q;
    float *out_score, *out_upper, *out_lower;
    int32_t *out_offset;
    double *dots;           /* scratch (2, K, H*W): scale_cell * dot for two images */
    uint8_t *ovr;           /* NULL, or room for one image + 64 bytes: kernels that read past a
                             * cell's end scan the array's last image from a copy there */
    double *num, *den, *qe; /* scratch, O each */
} scan_t;

/* angle bound: |cos(a,b) - cos(a,b^)| <= angle(b, b^) <= asin(d) <= f(d) for
 * d = |b - b^| / |b^|: asin(d) = atan(d / sqrt(1 - d^2)) <= d / sqrt(1 - d^2)
 * = d (1 - d^2)^(-1/2) <= d (1 + ANGLE_C d^2) for d^2 <= 1/4, since (1 - x)^(-1/2) is convex
 * and ANGLE_C is the slope of its chord over [0, 1/4] (rounded up); pi from d = 0.5 on.
 * Branch-free; vfsearch.engine.kernel._angle_bound is the same formula. */
#define ANGLE_C 0.6190
static inline double angle_bound(double d) {
    const double v = d * (1.0 + ANGLE_C * d * d);
    return d < 0.5 ? v : VFS_PI;
}

/* Per-offset values live on the H x W grid: offset (a, b) at p = a*W + b, for
 * p < L = (OH-1)*W + OW (positions with b >= OW are computed and ignored), so
 * that every pass-B loop is one contiguous, vectorisable run. */

/* per-image epilogue: scores, argmax (lowest offset on ties), bounds. One
 * vectorised pass computes the scores and, for 8-bit features, each offset's
 * f(delta) (delta = |b - b^| / |b^| from the stored quantisation errors),
 * sharing 1/sqrt(den); the max and argmax run over the valid offsets only. */
VFS_INLINE void finish_image(const scan_t *s, int64_t i) {
    double *restrict num = s->num, *restrict den = s->den, *restrict qe = s->qe;
    const int W = s->W, OH = s->H - s->h + 1, OW = s->W - s->w + 1;
    const int L = (OH - 1) * W + OW;
    const double qn = s->qnorm, iq = qn > 0.0 ? 1.0 / qn : 0.0;
    const int bounds = s->is8 && s->qerr2;
    for (int p = 0; p < L; ++p) { /* branch-free so that it vectorises */
        const double d = den[p];
        const int ok = d > 0.0;
        const double inv = 1.0 / sqrt(ok ? d : 1.0);
        num[p] = ok ? num[p] * inv * iq : 0.0;
        if (bounds) {
            const double e = qe[p];
            const double f = angle_bound(sqrt(e > 0.0 ? e : 0.0) * inv);
            qe[p] = e > 0.0 ? (ok ? f : VFS_PI) : 0.0;
        }
    }
    double best = -INFINITY, U = -INFINITY; /* over the valid offsets */
    for (int a = 0; a < OH; ++a) {
        const double *r = num + a * W, *f = qe + a * W;
        for (int b = 0; b < OW; ++b) {
            best = r[b] > best ? r[b] : best;
            if (bounds) U = r[b] + f[b] > U ? r[b] + f[b] : U;
        }
    }
    int bp = 0; /* the first valid offset holding the best score */
    for (int a = 0, found = 0; a < OH && !found; ++a)
        for (int b = 0; b < OW; ++b)
            if (num[a * W + b] == best) {
                bp = a * W + b;
                found = 1;
                break;
            }
    if (!(best > -INFINITY)) best = num[0]; /* NaN guard */
    double up, lo;
    if (!s->is8) {
        up = best + VFS_SLACK;
        lo = best - VFS_SLACK;
    } else if (!bounds) { /* no feature error: delta = 0 everywhere */
        up = best + s->eps_q + VFS_SLACK;
        lo = best - (s->eps_q + VFS_SLACK);
    } else {
        if (!(U > -INFINITY)) U = best + VFS_PI; /* NaN guard */
        up = U + s->eps_q + VFS_SLACK;
        lo = best - (s->eps_q + qe[bp] + VFS_SLACK);
    }
    s->out_score[i] = (float)best;
    s->out_offset[i] = (bp / W) * OW + bp % W;
    s->out_upper[i] = (float)up;
    s->out_lower[i] = (float)lo;
}

/* Pass B for one image: num/den/qe per offset (summed over k in order) from its
 * dots D (K, H*W), then the epilogue. */
VFS_INLINE void offsets_image(const scan_t *s, const double *restrict D, int64_t i) {
    const int W = s->W, HW = s->H * s->W;
    const int OH = s->H - s->h + 1, OW = s->W - s->w + 1, K = s->K;
    const int L = (OH - 1) * W + OW;
    double *restrict num = s->num, *restrict den = s->den, *restrict qe = s->qe;
    const float *restrict sn = s->sqnorm + i * HW;
    const float *restrict qr = s->qerr2 ? s->qerr2 + i * HW : NULL;
    for (int p = 0; p < L; ++p) num[p] = den[p] = qe[p] = 0.0;
    for (int k = 0; k < K; ++k) {
        const double wk = s->wq[k], mk = s->wm[k];
        const int off = s->dy[k] * W + s->dx[k];
        const double *restrict d = D + (int64_t)k * HW + off;
        const float *restrict sr = sn + off;
        for (int p = 0; p < L; ++p) {
            num[p] += wk * d[p];
            den[p] += mk * (double)sr[p];
        }
        if (qr) {
            const float *restrict er = qr + off;
            for (int p = 0; p < L; ++p) qe[p] += mk * (double)er[p];
        }
    }
    finish_image(s, i);
}

/* dot(x, grp, G, C, f, out): out[t] = f * <x, grp->q[t]> for t < G. It may
 * write zeros up to out[round_up(G, 4) - 1].
 * dot2: the same for two images at once (the query rows are loaded once). */
typedef void (*dot_fn)(const void *x, const group_t *grp, int G, int C, double f,
                       double *out);
typedef void (*dot2_fn)(const void *xa, const void *xb, const group_t *grp, int G, int C,
                        double fa, double fb, double *outa, double *outb);

/* software prefetch of the cell VFS_PREFETCH bytes ahead, into L2 (locality 2 =
 * prefetcht1): the scan is otherwise stalled on memory for about as long as it
 * computes. Measured, 50k x 7x7x512 u8, 2 threads: no prefetch 48-50 ms, 8 KiB
 * ahead into L1 (prefetcht0) 56 ms, 32-128 KiB ahead into L2 35-41 ms. */
VFS_INLINE void prefetch_cell(const uint8_t *xc, int64_t cell_bytes) {
    for (int64_t off = 0; off < cell_bytes; off += 64)
        __builtin_prefetch(xc + VFS_PREFETCH + off, 0, 2);
}

/* The per-image loop; always inlined into each (level, dtype) entry so that
 * the dot functions are inlined too.
 * Pass A: one dot product per valid (cell, k) pair, grouped by cell, stored
 *         at D[k*HW + cell] (two images at a time when dot2 is given).
 * Pass B: num/den/qe per offset (offsets_image). */
VFS_INLINE void scan_driver(const scan_t *s, dot_fn dot, dot2_fn dot2) {
    const int HW = s->H * s->W;
    const int C = s->C;
    const int64_t cell_bytes = (int64_t)C * s->esize;
    const int64_t img_bytes = (int64_t)HW * cell_bytes;
    double *DA = s->dots, *DB = s->dots + (int64_t)s->K * HW;
    double ta[16], tb[16];
    int64_t i = 0;
    while (i < s->n) {
        const uint8_t *ia = s->feats + i * img_bytes;
        const float *sa = s->scale ? s->scale + i * HW : NULL;
        if (dot2 && i + 1 < s->n) {
            const uint8_t *ib = ia + img_bytes;
            const float *sb = sa ? sa + HW : NULL;
            for (int gi = 0; gi < s->ngroups; ++gi) {
                const group_t *g = &s->groups[gi];
                const int G = g->G, c = g->cell;
                const uint8_t *xa = ia + (int64_t)c * cell_bytes, *xb = ib + (int64_t)c * cell_bytes;
                prefetch_cell(xa, cell_bytes);
                prefetch_cell(xb, cell_bytes);
                dot2(xa, xb, g, G, C, sa ? (double)sa[c] : 1.0, sb ? (double)sb[c] : 1.0, ta, tb);
                for (int t = 0; t < G; ++t) {
                    DA[g->dst[t]] = ta[t];
                    DB[g->dst[t]] = tb[t];
                }
            }
            offsets_image(s, DA, i);
            offsets_image(s, DB, i + 1);
            i += 2;
        } else {
            if (s->ovr && i == s->n - 1) {
                memcpy(s->ovr, ia, (size_t)img_bytes);
                ia = s->ovr;
            }
            for (int gi = 0; gi < s->ngroups; ++gi) {
                const group_t *g = &s->groups[gi];
                const int G = g->G, c = g->cell;
                const uint8_t *xa = ia + (int64_t)c * cell_bytes;
                prefetch_cell(xa, cell_bytes);
                dot(xa, g, G, C, sa ? (double)sa[c] : 1.0, ta);
                for (int t = 0; t < G; ++t) DA[g->dst[t]] = ta[t];
            }
            offsets_image(s, DA, i);
            i += 1;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* generic dot products                                                      */
/* ------------------------------------------------------------------------ */

/* exact integer dots of 8-bit x (XT) with integer query rows (QT) */
#define VFS_GENERIC_IDOT(NAME, XT, QT)                                                       \
    static inline void NAME(const void *x_, const group_t *grp, int G, int C, double f,     \
                            double *out) {                                                  \
        const XT *x = (const XT *)x_;                                                        \
        for (int g = 0; g < G; ++g) {                                                        \
            const QT *qq = (const QT *)grp->q[g];                                            \
            int32_t acc = 0;                                                                 \
            for (int j = 0; j < C; ++j) acc += (int32_t)x[j] * (int32_t)qq[j];               \
            out[g] = f * (double)acc;                                                        \
        }                                                                                    \
    }
VFS_GENERIC_IDOT(dot_u8_generic, uint8_t, int16_t)
VFS_GENERIC_IDOT(dot_i8_generic, int8_t, int16_t)
/* int8 query rows (qfmt 1 and 2): the exact same integers as the VNNI / AVX2 paths */
VFS_GENERIC_IDOT(dot_u8q8_generic, uint8_t, int8_t)
VFS_GENERIC_IDOT(dot_i8q8_generic, int8_t, int8_t)

static inline void dot_f32_generic(const void *x_, const group_t *grp, int G, int C,
                                   double f, double *out) {
    const void *const *q = grp->q;
    const float *x = (const float *)x_;
    for (int g = 0; g < G; ++g) {
        const float *qq = (const float *)q[g];
        float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int j = 0;
        for (; j + 8 <= C; j += 8)
            for (int l = 0; l < 8; ++l) lane[l] += x[j + l] * qq[j + l];
        float acc = ((lane[0] + lane[4]) + (lane[2] + lane[6])) +
                    ((lane[1] + lane[5]) + (lane[3] + lane[7]));
        for (; j < C; ++j) acc += x[j] * qq[j];
        out[g] = f * (double)acc;
    }
}

static inline void dot_f16_generic(const void *x_, const group_t *grp, int G, int C,
                                   double f, double *out) {
    const void *const *q = grp->q;
    const uint16_t *x = (const uint16_t *)x_;
    float xb[256];
    float acc[GMAX];
    float lane[GMAX][8];
    for (int g = 0; g < G; ++g) {
        acc[g] = 0.0f;
        for (int l = 0; l < 8; ++l) lane[g][l] = 0.0f;
    }
    for (int j0 = 0; j0 < C; j0 += 256) {
        const int len = C - j0 < 256 ? C - j0 : 256;
        for (int j = 0; j < len; ++j) xb[j] = h2f(x[j0 + j]);
        for (int g = 0; g < G; ++g) {
            const float *qq = (const float *)q[g] + j0;
            int j = 0;
            for (; j + 8 <= len; j += 8)
                for (int l = 0; l < 8; ++l) lane[g][l] += xb[j + l] * qq[j + l];
            for (; j < len; ++j) acc[g] += xb[j] * qq[j];
        }
    }
    for (int g = 0; g < G; ++g) {
        const float *L = lane[g];
        const float t = ((L[0] + L[4]) + (L[2] + L[6])) + ((L[1] + L[5]) + (L[3] + L[7]));
        out[g] = f * (double)(t + acc[g]);
    }
}

static void scan_generic(const scan_t *s, int dtype, int qfmt) {
    if (qfmt == QF_I8 || qfmt == QF_I6) { /* the same integers as the SIMD paths */
        if (dtype == DT_U8) scan_driver(s, dot_u8q8_generic, NULL);
        else scan_driver(s, dot_i8q8_generic, NULL);
        return;
    }
    switch (dtype) {
    case DT_U8: scan_driver(s, dot_u8_generic, NULL); break;
    case DT_I8: scan_driver(s, dot_i8_generic, NULL); break;
    case DT_F16: scan_driver(s, dot_f16_generic, NULL); break;
    default: scan_driver(s, dot_f32_generic, NULL); break;
    }
}

/* ------------------------------------------------------------------------ */
/* AVX2                                                                      */
/* ------------------------------------------------------------------------ */
#ifdef VFS_X86

/* acc += v, forcing the accumulator to stay in its register (GCC otherwise
 * adds into the temporary and copies back every iteration). */
VFS_INLINE VFS_AVX2 __m256i acc_add_epi32(__m256i acc, __m256i v) {
    __asm__("vpaddd %1, %0, %0" : "+x"(acc) : "x"(v));
    return acc;
}

/* 4 horizontal sums at once: {sum a, sum b, sum c, sum d} */
VFS_INLINE VFS_AVX2 __m128i hsum4_epi32(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i t = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
    return _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
}

/* the lane sums of G (<= GMAX) accumulators -> t[0..G-1] (t may get zeros up to a multiple of 4) */
VFS_INLINE VFS_AVX2 void hsum_G_epi32(const __m256i *acc, const int G, int32_t *t) {
    const __m256i z = _mm256_setzero_si256();
#pragma GCC unroll 3
    for (int g = 0; g < G; g += 4)
        _mm_storeu_si128((__m128i *)(t + g),
                         hsum4_epi32(acc[g], g + 1 < G ? acc[g + 1] : z,
                                     g + 2 < G ? acc[g + 2] : z, g + 3 < G ? acc[g + 3] : z));
}

VFS_INLINE VFS_AVX2 __m128 hsum4_ps(__m256 a, __m256 b, __m256 c, __m256 d) {
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

/* 8-bit x (unsigned or signed) . int16 query, G accumulators, exact int32.
 * x is widened to int16 once per 16 elements and reused for all G rows. */
VFS_INLINE VFS_AVX2 void dot8_avx2_G(const void *x_, const void *const *q, int C,
                                     double f, double *out, const int G, const int sgn) {
    const uint8_t *x = (const uint8_t *)x_;
    __m256i acc[GMAX];
    const int16_t *qq[GMAX];
#pragma GCC unroll 12
    for (int g = 0; g < G; ++g) {
        acc[g] = _mm256_setzero_si256();
        qq[g] = (const int16_t *)q[g];
    }
    int j = 0;
    for (; j + 32 <= C; j += 32) {
        const __m128i r0 = _mm_loadu_si128((const __m128i *)(x + j));
        const __m128i r1 = _mm_loadu_si128((const __m128i *)(x + j + 16));
        const __m256i x0 = sgn ? _mm256_cvtepi8_epi16(r0) : _mm256_cvtepu8_epi16(r0);
        const __m256i x1 = sgn ? _mm256_cvtepi8_epi16(r1) : _mm256_cvtepu8_epi16(r1);
#pragma GCC unroll 12
        for (int g = 0; g < G; ++g)
            acc[g] = acc_add_epi32(
                acc[g], _mm256_madd_epi16(x0, _mm256_loadu_si256((const __m256i *)(qq[g] + j))));
#pragma GCC unroll 12
        for (int g = 0; g < G; ++g)
            acc[g] = acc_add_epi32(
                acc[g], _mm256_madd_epi16(x1, _mm256_loadu_si256((const __m256i *)(qq[g] + j + 16))));
    }
    if (j + 16 <= C) {
        const __m128i r0 = _mm_loadu_si128((const __m128i *)(x + j));
        const __m256i x0 = sgn ? _mm256_cvtepi8_epi16(r0) : _mm256_cvtepu8_epi16(r0);
#pragma GCC unroll 12
        for (int g = 0; g < G; ++g)
            acc[g] = acc_add_epi32(
                acc[g], _mm256_madd_epi16(x0, _mm256_loadu_si256((const __m256i *)(qq[g] + j))));
        j += 16;
    }
    int32_t t[GMAX];
    hsum_G_epi32(acc, G, t);
    if (j < C) {
        for (int g = 0; g < G; ++g)
            for (int jj = j; jj < C; ++jj)
                t[g] += (sgn ? (int32_t)((const int8_t *)x)[jj] : (int32_t)x[jj]) *
                        (int32_t)qq[g][jj];
    }
    const __m256d fv = _mm256_set1_pd(f);
#pragma GCC unroll 3
    for (int g = 0; g < G; g += 4)
        _mm256_storeu_pd(out + g,
                         _mm256_mul_pd(fv, _mm256_cvtepi32_pd(_mm_loadu_si128((const __m128i *)(t + g)))));
}

/* float32 / float16 x . float32 query, G rows; S independent accumulator sets
 * so that small groups are not bound by the FMA latency. */
VFS_INLINE VFS_AVX2 void dotf_avx2_G(const void *x_, const void *const *q, int C,
                                     double f, double *out, const int G, const int half) {
    const int S = G <= 2 ? 4 : (G <= 5 ? 2 : 1);
    const float *xf = (const float *)x_;
    const uint16_t *xh = (const uint16_t *)x_;
    __m256 acc[4][GMAX];
    const float *qq[GMAX];
#pragma GCC unroll 12
    for (int g = 0; g < G; ++g) {
        qq[g] = (const float *)q[g];
#pragma GCC unroll 4
        for (int u = 0; u < S; ++u) acc[u][g] = _mm256_setzero_ps();
    }
    int j = 0;
    for (; j + 8 * S <= C; j += 8 * S) {
#pragma GCC unroll 4
        for (int u = 0; u < S; ++u) {
            const int jj = j + 8 * u;
            const __m256 xv = half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(xh + jj)))
                                   : _mm256_loadu_ps(xf + jj);
#pragma GCC unroll 12
            for (int g = 0; g < G; ++g)
                acc[u][g] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(qq[g] + jj), acc[u][g]);
        }
    }
    for (; j + 8 <= C; j += 8) {
        const __m256 xv = half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(xh + j)))
                               : _mm256_loadu_ps(xf + j);
#pragma GCC unroll 12
        for (int g = 0; g < G; ++g)
            acc[0][g] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(qq[g] + j), acc[0][g]);
    }
#pragma GCC unroll 12
    for (int g = 0; g < G; ++g) {
        if (S == 4) {
            acc[0][g] = _mm256_add_ps(_mm256_add_ps(acc[0][g], acc[1][g]),
                                      _mm256_add_ps(acc[2][g], acc[3][g]));
        } else if (S == 2) {
            acc[0][g] = _mm256_add_ps(acc[0][g], acc[1][g]);
        }
    }
    float t[GMAX];
    const __m256 z = _mm256_setzero_ps();
#pragma GCC unroll 3
    for (int g = 0; g < G; g += 4)
        _mm_storeu_ps(t + g, hsum4_ps(acc[0][g], g + 1 < G ? acc[0][g + 1] : z,
                                      g + 2 < G ? acc[0][g + 2] : z,
                                      g + 3 < G ? acc[0][g + 3] : z));
    if (j < C) {
        for (int g = 0; g < G; ++g)
            for (int jj = j; jj < C; ++jj) t[g] += (half ? h2f(xh[jj]) : xf[jj]) * qq[g][jj];
    }
    const __m256d fv = _mm256_set1_pd(f);
#pragma GCC unroll 3
    for (int g = 0; g < G; g += 4)
        _mm256_storeu_pd(out + g, _mm256_mul_pd(fv, _mm256_cvtps_pd(_mm_loadu_ps(t + g))));
}

#define VFS_SWITCH_G(CALL)                                                                  \
    switch (G) {                                                                            \
    case 1: CALL(1); break;                                                                 \
    case 2: CALL(2); break;                                                                 \
    case 3: CALL(3); break;                                                                 \
    case 4: CALL(4); break;                                                                 \
    case 5: CALL(5); break;                                                                 \
    case 6: CALL(6); break;                                                                 \
    case 7: CALL(7); break;                                                                 \
    case 8: CALL(8); break;                                                                 \
    case 9: CALL(9); break;                                                                 \
    case 10: CALL(10); break;                                                               \
    case 11: CALL(11); break;                                                               \
    default: CALL(12); break;                                                               \
    }

VFS_INLINE VFS_AVX2 void dot_u8_avx2(const void *x, const group_t *grp, int G, int C,
                                     double f, double *out) {
    const void *const *q = grp->q;
#define CALL(g) dot8_avx2_G(x, q, C, f, out, g, 0)
    VFS_SWITCH_G(CALL)
#undef CALL
}
VFS_INLINE VFS_AVX2 void dot_i8_avx2(const void *x, const group_t *grp, int G, int C,
                                     double f, double *out) {
    const void *const *q = grp->q;
#define CALL(g) dot8_avx2_G(x, q, C, f, out, g, 1)
    VFS_SWITCH_G(CALL)
#undef CALL
}
VFS_INLINE VFS_AVX2 void dot_f32_avx2(const void *x, const group_t *grp, int G, int C,
                                      double f, double *out) {
    const void *const *q = grp->q;
#define CALL(g) dotf_avx2_G(x, q, C, f, out, g, 0)
    VFS_SWITCH_G(CALL)
#undef CALL
}
VFS_INLINE VFS_AVX2 void dot_f16_avx2(const void *x, const group_t *grp, int G, int C,
                                      double f, double *out) {
    const void *const *q = grp->q;
#define CALL(g) dotf_avx2_G(x, q, C, f, out, g, 1)
    VFS_SWITCH_G(CALL)
#undef CALL
}

static VFS_AVX2 void scan_u8_avx2(const scan_t *s) { scan_driver(s, dot_u8_avx2, NULL); }
static VFS_AVX2 void scan_i8_avx2(const scan_t *s) { scan_driver(s, dot_i8_avx2, NULL); }
static VFS_AVX2 void scan_f16_avx2(const scan_t *s) { scan_driver(s, dot_f16_avx2, NULL); }
static VFS_AVX2 void scan_f32_avx2(const scan_t *s) { scan_driver(s, dot_f32_avx2, NULL); }

/* 8-bit x . 6-bit query (int8 rows, |q| <= 31, zero-padded to a multiple of 64), exact:
 * vpmaddubsw multiplies u8 x s8 and adds pairs into int16 (|pair| <= 2*255*31 = 15810, so
 * two chunks' sums, <= 31620, fit without saturating), vpmaddwd with ones widens them to
 * int32: 5 instructions per 64 channels where the int16 query needs 8. Signed x is flipped
 * to unsigned as in the VNNI kernel (x ^ 0x80 = x + 128, minus 128 * sum(q) afterwards).
 * The last partial block of 64 reads up to 63 bytes past the cell (the query is zero there);
 * the driver copies the array's last image into a padded buffer (ovr) so that no read leaves
 * the features. */
VFS_INLINE VFS_AVX2 void dotq6_avx2_G(const void *x_, const group_t *grp, int C, double f,
                                      double *out, const int G, const int sgn) {
    const uint8_t *x = (const uint8_t *)x_;
    __m256i acc[GMAX];
    const int8_t *qq[GMAX];
    const __m256i ones = _mm256_set1_epi16(1);
#pragma GCC unroll 12
    for (int g = 0; g < G; ++g) {
        acc[g] = _mm256_setzero_si256();
        qq[g] = (const int8_t *)grp->q[g];
    }
    for (int j = 0; j < C; j += 64) {
        const uint8_t *xb = x + j;
        __m256i x0 = _mm256_loadu_si256((const __m256i *)xb);
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(xb + 32));
        if (sgn) {
            const __m256i flip = _mm256_set1_epi8((char)0x80);
            x0 = _mm256_xor_si256(x0, flip);
            x1 = _mm256_xor_si256(x1, flip);
        }
#pragma GCC unroll 12
        for (int g = 0; g < G; ++g) {
            const __m256i t = _mm256_add_epi16(
                _mm256_maddubs_epi16(x0, _mm256_loadu_si256((const __m256i *)(qq[g] + j))),
                _mm256_maddubs_epi16(x1, _mm256_loadu_si256((const __m256i *)(qq[g] + j + 32))));
            acc[g] = acc_add_epi32(acc[g], _mm256_madd_epi16(t, ones));
        }
    }
    int32_t t[GMAX];
    hsum_G_epi32(acc, G, t);
#pragma GCC unroll 12
    for (int g = 0; g < G; ++g) out[g] = f * (double)(sgn ? t[g] - grp->corr[g] : t[g]);
}

VFS_INLINE VFS_AVX2 void dot_u8q6_avx2(const void *x, const group_t *grp, int G, int C,
                                       double f, double *out) {
#define CALL(g) dotq6_avx2_G(x, grp, C, f, out, g, 0)
    VFS_SWITCH_G(CALL)
#undef CALL
}
VFS_INLINE VFS_AVX2 void dot_i8q6_avx2(const void *x, const group_t *grp, int G, int C,
                                       double f, double *out) {
#define CALL(g) dotq6_avx2_G(x, grp, C, f, out, g, 1)
    VFS_SWITCH_G(CALL)
#undef CALL
}
static VFS_AVX2 void scan_u8q6_avx2(const scan_t *s) { scan_driver(s, dot_u8q6_avx2, NULL); }
static VFS_AVX2 void scan_i8q6_avx2(const scan_t *s) { scan_driver(s, dot_i8q6_avx2, NULL); }

/* ------------------------------------------------------------------------ */
/* AVX-512 (VNNI)                                                            */
/* ------------------------------------------------------------------------ */

VFS_INLINE VFS_AVX512 void dot8_avx512_G(const void *x_, const void *const *q, int C,
                                         double f, double *out, const int G, const int sgn) {
    const uint8_t *x = (const uint8_t *)x_;
    __m512i acc[GMAX];
    const int16_t *qq[GMAX];
#pragma GCC unroll 12
    for (int g = 0; g < G; ++g) {
        acc[g] = _mm512_setzero_si512();
        qq[g] = (const int16_t *)q[g];
    }
    int j = 0;
    for (; j + 32 <= C; j += 32) {
        const __m256i raw = _mm256_loadu_si256((const __m256i *)(x + j));
        const __m512i xw = sgn ? _mm512_cvtepi8_epi16(raw) : _mm512_cvtepu8_epi16(raw);
#pragma GCC unroll 12
        for (int g = 0; g < G; ++g)
            acc[g] = _mm512_dpwssd_epi32(acc[g], xw, _mm512_loadu_si512((const void *)(qq[g] + j)));
    }
    if (j < C) {
        const __mmask32 m = (__mmask32)((1ull << (C - j)) - 1ull);
        const __m256i raw = _mm256_maskz_loadu_epi8(m, (const void *)(x + j));
        const __m512i xw = sgn ? _mm512_cvtepi8_epi16(raw) : _mm512_cvtepu8_epi16(raw);
#pragma GCC unroll 12
        for (int g = 0; g < G; ++g)
            acc[g] = _mm512_dpwssd_epi32(acc[g], xw, _mm512_maskz_loadu_epi16(m, (const void *)(qq[g] + j)));
    }
#pragma GCC unroll 12
    for (int g = 0; g < G; ++g) out[g] = f * (double)_mm512_reduce_add_epi32(acc[g]);
}


/* 8-bit x . int8 query (rows zero-padded to a multiple of 64) with VNNI
 * vpdpbusd (u8 x s8 products summed in groups of 4 into int32, exact).
 * Signed x is flipped to unsigned (x ^ 0x80 = x + 128) and 128 * sum(q) is
 * subtracted afterwards (corr); padded query bytes are 0, so the masked tail
 * contributes nothing either way. 256-bit vectors: on cores that split 512-bit
 * operations in two (Zen 4) they move as many bytes per cycle and their
 * reductions are cheaper (measured 10-15% faster per image than 512-bit).
 *
 * acc += x . q in place (GCC otherwise copies the accumulator around the
 * destructive instruction, or reloads q for every use). */
VFS_INLINE VFS_AVX512 __m256i dpbusd_acc256(__m256i acc, __m256i x, __m256i q) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(q));
    return acc;
}

/* 4 ymm accumulators -> xmm {sum a, sum b, sum c, sum d} */
VFS_INLINE VFS_AVX512 __m128i quad_sum256(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i ab = _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
    const __m256i cd = _mm256_add_epi32(_mm256_unpacklo_epi32(c, d), _mm256_unpackhi_epi32(c, d));
    const __m256i t = _mm256_add_epi32(_mm256_unpacklo_epi64(ab, cd), _mm256_unpackhi_epi64(ab, cd));
    return _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
}

/* NI images (1 or 2) at once: each 32-byte query chunk is loaded once for all of them */
VFS_INLINE VFS_AVX512 void dotq8_vnni256_NG(const uint8_t *const *x, const group_t *grp, int C,
                                            const double *f, double *const *out, const int NI,
                                            const int G, const int sgn) {
    __m256i acc[2][GMAX];
    const int8_t *qq[GMAX];
    const __m256i flip = _mm256_set1_epi8((char)0x80);
#pragma GCC unroll 2
    for (int u = 0; u < NI; ++u)
#pragma GCC unroll 12
        for (int g = 0; g < G; ++g) acc[u][g] = _mm256_setzero_si256();
#pragma GCC unroll 12
    for (int g = 0; g < G; ++g) qq[g] = (const int8_t *)grp->q[g];
    for (int j = 0; j < C; j += 32) {
        /* the last block is a masked load: no read past the cell (query bytes there are 0) */
        const __mmask32 m = j + 32 <= C ? (__mmask32)0xffffffffu : (__mmask32)((1ull << (C - j)) - 1ull);
        __m256i xv[2];
#pragma GCC unroll 2
        for (int u = 0; u < NI; ++u) {
            xv[u] = _mm256_maskz_loadu_epi8(m, (const void *)(x[u] + j));
            if (sgn) xv[u] = _mm256_xor_si256(xv[u], flip);
        }
#pragma GCC unroll 12
        for (int g = 0; g < G; ++g) {
            const __m256i qv = _mm256_loadu_si256((const __m256i *)(qq[g] + j));
#pragma GCC unroll 2
            for (int u = 0; u < NI; ++u) acc[u][g] = dpbusd_acc256(acc[u][g], xv[u], qv);
        }
    }
    const __m256i z = _mm256_setzero_si256();
#pragma GCC unroll 2
    for (int u = 0; u < NI; ++u) {
        const __m256d fv = _mm256_set1_pd(f[u]);
#define ACC(g) ((g) < G ? acc[u][(g)] : z)
#pragma GCC unroll 3
        for (int g = 0; g < G; g += 4) {
            __m128i t = quad_sum256(ACC(g), ACC(g + 1), ACC(g + 2), ACC(g + 3));
            if (sgn) t = _mm_sub_epi32(t, _mm_loadu_si128((const __m128i *)(grp->corr + g)));
            const __m256d r = _mm256_mul_pd(fv, _mm256_cvtepi32_pd(t));
            _mm256_storeu_pd(out[u] + g, r);
        }
#undef ACC
    }
}

VFS_INLINE VFS_AVX512 void dotf_avx512_G(const void *x_, const void *const *q, int C,
                                         double f, double *out, const int G, const int half) {
    const float *xf = (const float *)x_;
    const uint16_t *xh = (const uint16_t *)x_;
    __m512 acc[GMAX];
    const float *qq[GMAX];
#pragma GCC unroll 12
    for (int g = 0; g < G; ++g) {
        acc[g] = _mm512_setzero_ps();
        qq[g] = (const float *)q[g];
    }
    int j = 0;
    for (; j + 16 <= C; j += 16) {
        const __m512 xv = half ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(xh + j)))
                               : _mm512_loadu_ps(xf + j);
#pragma GCC unroll 12
        for (int g = 0; g < G; ++g)
            acc[g] = _mm512_fmadd_ps(xv, _mm512_loadu_ps(qq[g] + j), acc[g]);
    }
    if (j < C) {
        const __mmask16 m = (__mmask16)((1u << (C - j)) - 1u);
        const __m512 xv = half ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const void *)(xh + j)))
                               : _mm512_maskz_loadu_ps(m, xf + j);
#pragma GCC unroll 12
        for (int g = 0; g < G; ++g)
            acc[g] = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(m, qq[g] + j), acc[g]);
    }
#pragma GCC unroll 12
    for (int g = 0; g < G; ++g) out[g] = f * (double)_mm512_reduce_add_ps(acc[g]);
}

VFS_INLINE VFS_AVX512 void dot_u8_avx512(const void *x, const group_t *grp, int G, int C,
                                         double f, double *out) {
    const void *const *q = grp->q;
#define CALL(g) dot8_avx512_G(x, q, C, f, out, g, 0)
    VFS_SWITCH_G(CALL)
#undef CALL
}
VFS_INLINE VFS_AVX512 void dot_i8_avx512(const void *x, const group_t *grp, int G, int C,
                                         double f, double *out) {
    const void *const *q = grp->q;
#define CALL(g) dot8_avx512_G(x, q, C, f, out, g, 1)
    VFS_SWITCH_G(CALL)
#undef CALL
}
VFS_INLINE VFS_AVX512 void dot_f32_avx512(const void *x, const group_t *grp, int G, int C,
                                          double f, double *out) {
    const void *const *q = grp->q;
#define CALL(g) dotf_avx512_G(x, q, C, f, out, g, 0)
    VFS_SWITCH_G(CALL)
#undef CALL
}
VFS_INLINE VFS_AVX512 void dot_f16_avx512(const void *x, const group_t *grp, int G, int C,
                                          double f, double *out) {
    const void *const *q = grp->q;
#define CALL(g) dotf_avx512_G(x, q, C, f, out, g, 1)
    VFS_SWITCH_G(CALL)
#undef CALL
}

static VFS_AVX512 void scan_u8_avx512(const scan_t *s) { scan_driver(s, dot_u8_avx512, NULL); }
static VFS_AVX512 void scan_i8_avx512(const scan_t *s) { scan_driver(s, dot_i8_avx512, NULL); }
static VFS_AVX512 void scan_f16_avx512(const scan_t *s) { scan_driver(s, dot_f16_avx512, NULL); }
static VFS_AVX512 void scan_f32_avx512(const scan_t *s) { scan_driver(s, dot_f32_avx512, NULL); }

/* G as a compile-time constant (NI, sgn are constants after inlining) */
VFS_INLINE VFS_AVX512 void dotq8_switch(const uint8_t *const *xs, const group_t *grp, int G, int C,
                                        const double *fs, double *const *os, const int NI,
                                        const int sgn) {
#define CALL(g) dotq8_vnni256_NG(xs, grp, C, fs, os, NI, g, sgn)
    VFS_SWITCH_G(CALL)
#undef CALL
}
/* one- and two-image dots and the scan entry for unsigned (SGN 0) / signed (SGN 1) features */
#define VFS_Q8_ENTRY(T, SGN)                                                                   \
    VFS_INLINE VFS_AVX512 void dot_##T##q8_avx512(const void *x, const group_t *grp, int G,    \
                                                  int C, double f, double *out) {             \
        const uint8_t *xs[1] = {(const uint8_t *)x};                                           \
        dotq8_switch(xs, grp, G, C, &f, &out, 1, SGN);                                         \
    }                                                                                          \
    VFS_INLINE VFS_AVX512 void dot2_##T##q8_avx512(const void *xa, const void *xb,             \
                                                   const group_t *grp, int G, int C, double fa, \
                                                   double fb, double *oa, double *ob) {        \
        const uint8_t *xs[2] = {(const uint8_t *)xa, (const uint8_t *)xb};                     \
        const double fs[2] = {fa, fb};                                                         \
        double *os[2] = {oa, ob};                                                              \
        dotq8_switch(xs, grp, G, C, fs, os, 2, SGN);                                           \
    }                                                                                          \
    static VFS_AVX512 void scan_##T##q8_avx512(const scan_t *s) {                              \
        scan_driver(s, dot_##T##q8_avx512, dot2_##T##q8_avx512);                               \
    }
VFS_Q8_ENTRY(u8, 0)
VFS_Q8_ENTRY(i8, 1)

#endif /* VFS_X86 */

/* ------------------------------------------------------------------------ */
/* entry point                                                               */
/* ------------------------------------------------------------------------ */

/*
 * Scan n images. Returns 0 on success, <0 on bad arguments / level not
 * supported / out of memory.
 *
 * feats : (n, H, W, C) of dtype; scale (n,H,W) f32 for 8-bit else NULL;
 * sqnorm: (n, H, W) f32; qerr2 (n,H,W) f32 or NULL.
 * query : h, w, K, dy[K], dx[K], m2[K] (f32);
 *         qdata (K, C): int16 Qi for 8-bit, float32 Q = m2*q for float;
 *         qscale[K] (f32): sq_k for 8-bit, ignored (NULL) for float.
 * outputs: score, offset, upper, lower (n each).
 */
static int32_t qsum8(const int8_t *q, int C) {
    int32_t t = 0;
    for (int j = 0; j < C; ++j) t += q[j];
    return t;
}

int vfs_scan(int level, int dtype, const void *feats, int64_t n, int H, int W, int C,
             const float *scale, const float *sqnorm, const float *qerr2, int h, int w, int K,
             const int32_t *dy, const int32_t *dx, const float *m2, const void *qdata,
             const float *qscale, double qnorm, double eps_q, float *out_score,
             int32_t *out_offset, float *out_upper, float *out_lower, int qfmt) {
    if (n < 0 || H < 1 || W < 1 || C < 1 || h < 1 || w < 1 || h > H || w > W || K < 1)
        return -1;
    if (dtype < DT_U8 || dtype > DT_F32) return -1;
    const int is8 = dtype == DT_U8 || dtype == DT_I8;
    if (is8 && (scale == NULL || qscale == NULL)) return -1;
    if (qfmt != QF_I16 && qfmt != QF_I8 && qfmt != QF_I6) return -1;
    if (qfmt != QF_I16 && !is8) return -1;
    if (qfmt == QF_I8 && level == LV_AVX2) return -2; /* int8 query: VNNI or generic */
    if (qfmt == QF_I6 && level == LV_AVX512) return -2; /* 6-bit query: AVX2 or generic */
    if (level == LV_AVX2 && vfs_cpu_level() < LV_AVX2) return -2;
    if (level == LV_AVX512 && vfs_cpu_level() < LV_AVX512) return -2;
    if (level < LV_GENERIC || level > LV_AVX512) return -2;
#ifndef VFS_X86
    if (level != LV_GENERIC) return -2;
#endif
    if (n == 0) return 0;

    const int OH = H - h + 1, OW = W - w + 1, O = OH * OW, HW = H * W;
    /* AVX2 with a 6-bit query keeps G accumulators and 6 more vectors in 16 registers */
    const int gmax = level == LV_GENERIC ? 4 : (qfmt == QF_I6 ? 10 : GMAX);
    for (int k = 0; k < K; ++k)
        if (dy[k] < 0 || dy[k] >= h || dx[k] < 0 || dx[k] >= w) return -1;

    if ((int64_t)K * HW > 0x3fffffffLL) return -1;
    const int64_t qstride = qfmt != QF_I16 ? (int64_t)(C + 63) / 64 * 64 : (int64_t)C * (is8 ? 2 : 4);
    if (qfmt == QF_I6) /* larger values would saturate vpmaddubsw's int16 sums */
        for (int64_t t = 0; t < (int64_t)K * qstride; ++t) {
            const int v = ((const int8_t *)qdata)[t];
            if (v > 31 || v < -31) return -1;
        }

    /* count groups */
    int64_t ngroups = 0;
    for (int c = 0; c < HW; ++c) {
        const int y = c / W, x = c % W;
        int nk = 0;
        for (int k = 0; k < K; ++k) {
            const int a = y - dy[k], b = x - dx[k];
            nk += (a >= 0 && a < OH && b >= 0 && b < OW);
        }
        ngroups += (nk + gmax - 1) / gmax;
    }
    group_t *groups = (group_t *)calloc((size_t)(ngroups > 0 ? ngroups : 1), sizeof(group_t));
    /* num, den, qe (H*W each), wq, wm (K each), dots (2, K, H*W); zeroed, so that dots never
     * written (cells no offset uses) read as 0 */
    double *scratch = (double *)calloc((size_t)(3 * HW + 2 * K + 2 * K * HW + 16), sizeof(double));
    int32_t *kbuf = (int32_t *)malloc(sizeof(int32_t) * (size_t)(2 * K));
    const int need_ovr = qfmt == QF_I6 && level == LV_AVX2; /* reads whole 64-byte blocks */
    uint8_t *ovr = need_ovr ? (uint8_t *)calloc((size_t)HW * (size_t)C + 64, 1) : NULL;
    if (!groups || !scratch || !kbuf || (need_ovr && !ovr)) {
        free(groups);
        free(scratch);
        free(kbuf);
        free(ovr);
        return -3;
    }
    int gi = 0;
    for (int c = 0; c < HW; ++c) {
        const int y = c / W, x = c % W;
        int nk = 0;
        for (int k = 0; k < K; ++k) {
            const int a = y - dy[k], b = x - dx[k];
            if (a >= 0 && a < OH && b >= 0 && b < OW) {
                kbuf[2 * nk] = k;
                kbuf[2 * nk + 1] = c;
                ++nk;
            }
        }
        if (nk == 0) continue;
        const int ng = (nk + gmax - 1) / gmax;
        const int base = nk / ng, rem = nk % ng;
        int t0 = 0;
        for (int q = 0; q < ng; ++q) {
            const int G = base + (q < rem);
            group_t *g = &groups[gi++];
            g->cell = c;
            g->G = G;
            for (int t = 0; t < G; ++t) {
                const int k = kbuf[2 * (t0 + t)];
                g->q[t] = (const uint8_t *)qdata + (int64_t)k * qstride;
                g->dst[t] = k * HW + c;
                g->corr[t] = qfmt != QF_I16 && dtype == DT_I8 ? 128 * qsum8((const int8_t *)g->q[t], C) : 0;
            }
            t0 += G;
        }
    }

    double *wq = scratch + 3 * HW, *wm = wq + K;
    for (int k = 0; k < K; ++k) {
        wq[k] = is8 ? (double)qscale[k] : 1.0;
        wm[k] = (double)m2[k];
    }

    static const int esizes[4] = {1, 1, 2, 4};
    scan_t s;
    s.feats = (const uint8_t *)feats;
    s.n = n;
    s.H = H;
    s.W = W;
    s.C = C;
    s.h = h;
    s.w = w;
    s.dy = dy;
    s.dx = dx;
    s.esize = esizes[dtype];
    s.scale = is8 ? scale : NULL;
    s.sqnorm = sqnorm;
    s.qerr2 = is8 ? qerr2 : NULL;
    s.O = O;
    s.K = K;
    s.ngroups = gi;
    s.is8 = is8;
    s.groups = groups;
    s.wq = wq;
    s.wm = wm;
    s.qnorm = qnorm;
    s.eps_q = is8 ? eps_q : 0.0;
    s.out_score = out_score;
    s.out_offset = out_offset;
    s.out_upper = out_upper;
    s.out_lower = out_lower;
    s.num = scratch;
    s.den = scratch + HW;
    s.qe = scratch + 2 * HW;
    s.dots = wm + K;
    s.ovr = ovr;

    switch (level) {
#ifdef VFS_X86
    case LV_AVX512:
        if (qfmt == QF_I8) {
            if (dtype == DT_U8) scan_u8q8_avx512(&s);
            else scan_i8q8_avx512(&s);
            break;
        }
        switch (dtype) {
        case DT_U8: scan_u8_avx512(&s); break;
        case DT_I8: scan_i8_avx512(&s); break;
        case DT_F16: scan_f16_avx512(&s); break;
        default: scan_f32_avx512(&s); break;
        }
        break;
    case LV_AVX2:
        if (qfmt == QF_I6) {
            if (dtype == DT_U8) scan_u8q6_avx2(&s);
            else scan_i8q6_avx2(&s);
            break;
        }
        switch (dtype) {
        case DT_U8: scan_u8_avx2(&s); break;
        case DT_I8: scan_i8_avx2(&s); break;
        case DT_F16: scan_f16_avx2(&s); break;
        default: scan_f32_avx2(&s); break;
        }
        break;
#endif
    default: scan_generic(&s, dtype, qfmt); break;
    }
    free(groups);
    free(scratch);
    free(kbuf);
    free(ovr);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* memory-bandwidth floor: read every byte once                              */
/* ------------------------------------------------------------------------ */

static uint64_t read_generic(const uint8_t *p, int64_t nbytes) {
    uint64_t a[4] = {0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 32 <= nbytes; i += 32) {
        uint64_t v[4];
        memcpy(v, p + i, 32);
        a[0] ^= v[0];
        a[1] ^= v[1];
        a[2] ^= v[2];
        a[3] ^= v[3];
    }
    uint64_t r = a[0] ^ a[1] ^ a[2] ^ a[3];
    for (; i < nbytes; ++i) r ^= p[i];
    return r;
}

#ifdef VFS_X86
static VFS_AVX2 uint64_t read_avx2(const uint8_t *p, int64_t nbytes) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 128 <= nbytes; i += 128) {
        a0 = _mm256_xor_si256(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
        a1 = _mm256_xor_si256(a1, _mm256_loadu_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_xor_si256(a2, _mm256_loadu_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_xor_si256(a3, _mm256_loadu_si256((const __m256i *)(p + i + 96)));
    }
    a0 = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
    uint64_t v[4];
    _mm256_storeu_si256((__m256i *)v, a0);
    uint64_t r = v[0] ^ v[1] ^ v[2] ^ v[3];
    return r ^ read_generic(p + i, nbytes - i);
}
#endif

uint64_t vfs_read_floor(const void *p, int64_t nbytes, int level) {
    if (nbytes <= 0) return 0;
#ifdef VFS_X86
    if (level >= LV_AVX2 && vfs_cpu_level() >= LV_AVX2)
        return read_avx2((const uint8_t *)p, nbytes);
#endif
    (void)level;
    return read_generic((const uint8_t *)p, nbytes);
}
