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
 * Three layouts of the work in SIMD lanes (8-bit features; float16 / float32 use the first):
 *  - channels in lanes: every image cell is loaded once per group of up to GMAX query cells
 *    for which the implied offset is valid (register-blocked: one accumulator per query
 *    cell; the (cell, k) pair lists are built once per call), one horizontal sum per pair,
 *    then pass B (per offset, summed over k in order) on the H x W grid layout (offset (a, b)
 *    at a*W + b) so that each of its loops is one contiguous run. Best for wide layers on
 *    small grids (7x7x512: 225 pairs x 8 vpdpbusd per image). AVX-512 with the int8 query
 *    sums no pair horizontally: each pair's lanes are added into its offset's 8 float lanes
 *    (scan_lsum_avx512), which is what makes it the layout for 384 channels on 14x14 / 16x16.
 *  - offsets in lanes ("offsets in lanes" below): 16 / 8 consecutive offsets per vector from
 *    a transposed copy of the image, no horizontal sums; best for many offsets and few
 *    channels (14x14x112, 28x28x40).
 *  - one offset (whole-image queries): each cell's channels in lanes, folded lane by lane.
 * vfs_scan picks one by an estimated cost (choose_offsets_path) unless told.
 * Measured (AVX-512 VNNI Zen 5 VM, one thread, CPU time per image, features in L2/L3, 3x3
 * query, fast query): 14x14x112 offsets 1.6-2.2 us vs channels 2.6-2.9; 28x28x40 offsets 3.5
 * vs channels 9.6; 7x7x512 channels 1.3-1.6 vs offsets 2.2; 7x7x1280 channels 3.6-4.1 vs
 * offsets 5.9. Streamed from DRAM add ~0.8 us per 14x14x112 image (the read does not fully
 * overlap the compute); one read of it costs ~0.7 us on one thread.
 * Zen 4 (EPYC, 512-bit operations split in two), one thread, CPU time, streamed, fast query,
 * lane sums: 16x16x384 channels 8.0 us vs offsets 11.9 (AVX2 11.0; one read 3.3); 14x14x384
 * 5.1 vs 9.2 (AVX2 8.1; read 2.5). Offsets layout with aligned cell-vector loads shifted in
 * float, den in registers and the next image prefetched through the dots: 14x14x112 int8
 * 3.6 -> 2.3-2.9 us (read 0.75; lane sums 3.7-4.7), 28x28x40 6.0 -> 4.5 (read 1.1; lane sums
 * 14-18), 7x7x320 2.2 -> 2.0 (channels 1.0-1.2 stays the choice). Per image at 14x14x112 the
 * dots are 9 k x 28 groups x 12 cell vectors of vpdpbusd (~1.3 us), the 26 16x16 transposes
 * ~0.5, the epilogue ~0.25: the layout cannot reach 2.5x the read there.
 *
 * 8-bit features (uint8 / int8 with a per-cell float scale) are dotted in
 * exact int32 arithmetic with an integer query (Qi_k, per-cell scale sq_k):
 * int16 (qfmt 0, every level; |q| <= 8191), int8 (qfmt 1, AVX-512 VNNI vpdpbusd)
 * or 7-bit (qfmt 2, AVX2 vpmaddubsw). The rounding of the query is part of the
 * returned bounds (eps_q), so the caller can re-scan the few images that may reach
 * its top k with the int16 query (ids: a list of rows, scanned in place).
 * float16 / float32 features are accumulated in float32.
 *
 * Built once with "-O3 -fPIC -shared -fno-math-errno -fno-trapping-math" (no
 * -march); the SIMD variants carry target attributes and are selected at run
 * time (vfs_cpu_level()). -DVFS_NO_SIMD builds the generic path only (that is
 * also what non-x86-64 targets get).
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
/* 8-bit query formats: int16 rows (C), |q| <= 8191 (the offsets-in-lanes kernels split each
 * value into 128 * hi + lo, both int8 with |.| <= 64); int8 rows (C padded to 64 with zeros)
 * for the AVX-512 VNNI kernel; int8 rows with |q| <= 63 (padded the same way) for the AVX2
 * vpmaddubsw kernel */
enum { QF_I16 = 0, QF_I8 = 1, QF_I7 = 2 };

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

int vfs_abi_version(void) { return 5; }

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
    int32_t pos[GMAX];   /* lane sums (AVX-512, int8 query): the offset's grid position */
    int32_t kq[GMAX];    /* ... and the query cell k of each dot */
} group_t;

typedef struct {
    const uint8_t *feats;
    int64_t n;            /* images to scan (outputs 0..n-1) */
    int64_t nrows;        /* rows in feats / scale / sqnorm / qerr2 */
    const int64_t *ids;   /* NULL: output i is row i; else row ids[i] */
    int H, W, C, esize, h, w;
    const float *scale, *sqnorm, *qerr2;
    int O, K, ngroups, is8;
    const group_t *groups;
    const int32_t *dy, *dx;
    const double *wq, *wm; /* per k: sq_k (8-bit) or 1, and m_k^2 */
    const float *wmf;      /* m_k^2 as given (float; wm[k] == wmf[k]) */
    double qnorm, eps_q;
    float *out_score, *out_upper, *out_lower;
    int32_t *out_offset;
    double *dots;           /* scratch (2, K, H*W): scale_cell * dot for two images */
    uint8_t *ovr;           /* NULL, or room for one image + 64 bytes: kernels that read past a
                             * cell's end scan the array's last image from a copy there */
    double *num, *den, *qe; /* scratch, H*W + 64 each */
    /* offsets-in-lanes path (8-bit, SIMD): see "offsets in lanes" below */
    int32_t *T;             /* one channel block of the image, transposed: 16 x HWs words */
    int32_t *accm;          /* int32 partial sums carried across channel blocks (K x NV x 16) */
    float *sdf;             /* the image's per-cell scales, zero past the image (H*W + 64) */
    float *numf, *qef;      /* per-position num and scratch in float (H*W + 64 each) */
    const int32_t *q4;      /* per k: the query's 4-byte channel groups (K x G4); fine: high parts */
    const int32_t *q4lo;    /* fine: low parts (q = 128 hi + lo), else NULL */
    const int32_t *corr;    /* signed features: 128 * sum(q) per k (fine: hi then lo, 2K) */
    const int32_t *offk;    /* dy_k * W + dx_k */
    const uint8_t *vmask;   /* bit p % 8 of vmask[p / 8]: position p is a valid offset */
    int HWs, NV, G4, GT;    /* cells per group row, position vectors, groups, groups in T */
    const int32_t *inter;   /* NULL, or every image already transposed (vfs_scan's inter) */
    int NS;                 /* AVX-512: accm slots per k (NV + blocks: each block NB + 1) */
    /* one-offset path */
    const int8_t *q8, *q8lo; /* int8 query rows (K x QS; fine: high and low parts) */
    const int32_t *cvec;     /* signed features: per k, 128 * each lane's query bytes (2 x 16) */
    int QS, QW;
    /* one offset, flat (C % 4 == 0): the query and its lane corrections laid out like the
     * image, per-cell query scales, and the lane -> cell pattern of the P-block period */
    const int8_t *qflat, *qflatlo;
    const int32_t *fcorr, *fcorrlo, *fidx, *fcell0;
    const float *fwq;
    int fP, fstep;
    /* channels in lanes, lane sums (AVX-512, int8 query): see scan_lsum_avx512 */
    float *lsum;            /* per image (2), per grid position 8 float lane sums */
    const float *wqf;       /* per k: sq_k as float */
    const int32_t *cv8;     /* signed features: per k, 128 * each ymm lane's query bytes (8) */
    double slack;           /* what finish_image adds to the bounds for float rounding */
} scan_t;

/* the row of output i */
static inline int64_t row_of(const scan_t *s, int64_t i) { return s->ids ? s->ids[i] : i; }

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
        up = best + s->slack;
        lo = best - s->slack;
    } else if (!bounds) { /* no feature error: delta = 0 everywhere */
        up = best + s->eps_q + s->slack;
        lo = best - (s->eps_q + s->slack);
    } else {
        if (!(U > -INFINITY)) U = best + VFS_PI; /* NaN guard */
        up = U + s->eps_q + s->slack;
        lo = best - (s->eps_q + qe[bp] + s->slack);
    }
    s->out_score[i] = (float)best;
    s->out_offset[i] = (bp / W) * OW + bp % W;
    s->out_upper[i] = (float)up;
    s->out_lower[i] = (float)lo;
}

/* Pass B for one image: num/den/qe per offset (summed over k in order) from its
 * dots D (K, H*W), then the epilogue. D NULL: num is already there (den, qe only). */
VFS_INLINE void offsets_image(const scan_t *s, const double *restrict D, int64_t i) {
    const int W = s->W, HW = s->H * s->W;
    const int OH = s->H - s->h + 1, OW = s->W - s->w + 1, K = s->K;
    const int L = (OH - 1) * W + OW;
    double *restrict num = s->num, *restrict den = s->den, *restrict qe = s->qe;
    const int64_t r = row_of(s, i);
    const float *restrict sn = s->sqnorm + r * HW;
    const float *restrict qr = s->qerr2 ? s->qerr2 + r * HW : NULL;
    for (int p = 0; p < L; ++p) den[p] = qe[p] = 0.0;
    if (D)
        for (int p = 0; p < L; ++p) num[p] = 0.0;
    for (int k = 0; k < K; ++k) {
        const double wk = s->wq[k], mk = s->wm[k];
        const int off = s->dy[k] * W + s->dx[k];
        const float *restrict sr = sn + off;
        if (D) {
            const double *restrict d = D + (int64_t)k * HW + off;
            for (int p = 0; p < L; ++p) num[p] += wk * d[p];
        }
        for (int p = 0; p < L; ++p) den[p] += mk * (double)sr[p];
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
        const int64_t ra = row_of(s, i);
        const uint8_t *ia = s->feats + ra * img_bytes;
        const float *sa = s->scale ? s->scale + ra * HW : NULL;
        if (dot2 && i + 1 < s->n) {
            const int64_t rb = row_of(s, i + 1);
            const uint8_t *ib = s->feats + rb * img_bytes;
            const float *sb = s->scale ? s->scale + rb * HW : NULL;
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
            if (s->ovr && ra == s->nrows - 1) {
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
    if (qfmt == QF_I8 || qfmt == QF_I7) { /* the same integers as the SIMD paths */
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

/* 8-bit x . 7-bit query (int8 rows, |q| <= 63, zero-padded to a multiple of 64), exact:
 * vpmaddubsw multiplies u8 x s8 and adds pairs into int16 (|pair| <= 2*255*63 = 32130: no
 * saturation), vpmaddwd with ones widens them to int32: 3 instructions per 32 channels where
 * the int16 query needs 4 and a widening. Signed x is flipped to unsigned as in the VNNI kernel
 * (x ^ 0x80 = x + 128, minus 128 * sum(q) afterwards). The last partial block of 32 reads up
 * to 31 bytes past the cell (the query is zero there); the driver copies the array's last
 * image into a padded buffer (ovr) so that no read leaves the features. */
VFS_INLINE VFS_AVX2 void dotq7_avx2_G(const void *x_, const group_t *grp, int C, double f,
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
    for (int j = 0; j < C; j += 32) {
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(x + j));
        if (sgn) x0 = _mm256_xor_si256(x0, _mm256_set1_epi8((char)0x80));
#pragma GCC unroll 12
        for (int g = 0; g < G; ++g) {
            const __m256i t =
                _mm256_maddubs_epi16(x0, _mm256_loadu_si256((const __m256i *)(qq[g] + j)));
            acc[g] = acc_add_epi32(acc[g], _mm256_madd_epi16(t, ones));
        }
    }
    int32_t t[GMAX];
    hsum_G_epi32(acc, G, t);
#pragma GCC unroll 12
    for (int g = 0; g < G; ++g) out[g] = f * (double)(sgn ? t[g] - grp->corr[g] : t[g]);
}

VFS_INLINE VFS_AVX2 void dot_u8q7_avx2(const void *x, const group_t *grp, int G, int C,
                                       double f, double *out) {
#define CALL(g) dotq7_avx2_G(x, grp, C, f, out, g, 0)
    VFS_SWITCH_G(CALL)
#undef CALL
}
VFS_INLINE VFS_AVX2 void dot_i8q7_avx2(const void *x, const group_t *grp, int G, int C,
                                       double f, double *out) {
#define CALL(g) dotq7_avx2_G(x, grp, C, f, out, g, 1)
    VFS_SWITCH_G(CALL)
#undef CALL
}
static VFS_AVX2 void scan_u8q7_avx2(const scan_t *s) { scan_driver(s, dot_u8q7_avx2, NULL); }
static VFS_AVX2 void scan_i8q7_avx2(const scan_t *s) { scan_driver(s, dot_i8q7_avx2, NULL); }

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
 * contributes nothing either way. 512-bit vectors: where 512-bit operations run
 * at full width (measured here: a 512-bit vpdpbusd costs 1.1x a 256-bit one) they
 * move 1.75x the bytes per instruction; where they are split in two (Zen 4) they
 * move as many bytes as 256-bit ones and cost one more add per reduction.
 *
 * acc += x . q in place (GCC otherwise copies the accumulator around the
 * destructive instruction, or reloads q for every use). */
VFS_INLINE VFS_AVX512 __m256i dpbusd_acc256(__m256i acc, __m256i x, __m256i q) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(q));
    return acc;
}

VFS_INLINE VFS_AVX512 __m512i dpbusd_acc512(__m512i acc, __m512i x, __m512i q) {
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

/* NI images (1 or 2) at once: each 64-byte query chunk is loaded once for all of them */
VFS_INLINE VFS_AVX512 void dotq8_vnni_NG(const uint8_t *const *x, const group_t *grp, int C,
                                         const double *f, double *const *out, const int NI,
                                         const int G, const int sgn) {
    __m512i acc[2][GMAX];
    const int8_t *qq[GMAX];
    const __m512i flip = _mm512_set1_epi8((char)0x80);
#pragma GCC unroll 2
    for (int u = 0; u < NI; ++u)
#pragma GCC unroll 12
        for (int g = 0; g < G; ++g) acc[u][g] = _mm512_setzero_si512();
#pragma GCC unroll 12
    for (int g = 0; g < G; ++g) qq[g] = (const int8_t *)grp->q[g];
    for (int j = 0; j < C; j += 64) {
        /* the last block is a masked load: no read past the cell (query bytes there are 0) */
        const __mmask64 m = j + 64 <= C ? ~(__mmask64)0 : (((__mmask64)1 << (C - j)) - 1);
        __m512i xv[2];
#pragma GCC unroll 2
        for (int u = 0; u < NI; ++u) {
            xv[u] = _mm512_maskz_loadu_epi8(m, (const void *)(x[u] + j));
            if (sgn) xv[u] = _mm512_xor_si512(xv[u], flip);
        }
#pragma GCC unroll 12
        for (int g = 0; g < G; ++g) {
            const __m512i qv = _mm512_loadu_si512((const void *)(qq[g] + j));
#pragma GCC unroll 2
            for (int u = 0; u < NI; ++u) acc[u][g] = dpbusd_acc512(acc[u][g], xv[u], qv);
        }
    }
    const __m256i z = _mm256_setzero_si256();
#pragma GCC unroll 2
    for (int u = 0; u < NI; ++u) {
        const __m256d fv = _mm256_set1_pd(f[u]);
        __m256i h[GMAX];
#pragma GCC unroll 12
        for (int g = 0; g < G; ++g)
            h[g] = _mm256_add_epi32(_mm512_castsi512_si256(acc[u][g]), _mm512_extracti64x4_epi64(acc[u][g], 1));
#define ACC(g) ((g) < G ? h[(g)] : z)
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
#define CALL(g) dotq8_vnni_NG(xs, grp, C, fs, os, NI, g, sgn)
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

/* ------------------------------------------------------------------------ */
/* 8-bit features, int8 query: channels in lanes, lane sums per offset       */
/* ------------------------------------------------------------------------ */
/*
 * The channels layout (one dot per valid (cell, k) pair, the cell's bytes loaded once for all
 * its k, two images at a time) without the horizontal sum per pair, the (K, H*W) dot array and
 * pass B's num: each pair's 16 int32 lanes are folded to 8, corrected (signed features),
 * converted to float and added, times scale(cell) * sq_k, into the 8 float lanes of its
 * offset's grid position (lsum: 32 bytes per position, p = cell - off_k, in L1). After the
 * image's last cell each position's 8 lanes are summed (3 levels) into num; den and qe are
 * pass B's (double). About 8 instructions per pair where the horizontal sum, the scatter and
 * pass B took ~25 (measured, Zen 4, 16x16x384: 4.4 us of overhead per image -> ~1.5).
 *
 * Rounding (u = 2^-24): each lane's int32 partial dot d is exact; the conversion, the product
 * scale * sq_k and the fma's add cost <= 3u per term, a lane's K terms (K - 1)u more and the
 * 8-lane sum 3u: |num - num~| <= (K + 5)u sum |t| <= (K + 5)u (1 + eps_q) |q||x| (the lanes'
 * |d| sum to at most sum_c |q_c x_c|, then Cauchy-Schwarz as in "offsets in lanes"), so the
 * score moves by at most (K + 5)u (1 + eps_q) < (3K + 8)u: CIL_SLACK(K) on the bounds.
 */
VFS_INLINE VFS_AVX512 void lsum_dots_NG(const uint8_t *const *x, const group_t *grp, int C,
                                        const float *sc, float *const *F, const float *wqf,
                                        const int32_t *cv8, const int NI, const int G,
                                        const int sgn) {
    __m512i acc[2][GMAX];
    const int8_t *qq[GMAX];
    const __m512i flip = _mm512_set1_epi8((char)0x80);
#pragma GCC unroll 2
    for (int u = 0; u < NI; ++u)
#pragma GCC unroll 12
        for (int g = 0; g < G; ++g) acc[u][g] = _mm512_setzero_si512();
#pragma GCC unroll 12
    for (int g = 0; g < G; ++g) qq[g] = (const int8_t *)grp->q[g];
    for (int j = 0; j < C; j += 64) {
        /* the last block is a masked load: no read past the cell (query bytes there are 0) */
        const __mmask64 m = j + 64 <= C ? ~(__mmask64)0 : (((__mmask64)1 << (C - j)) - 1);
        __m512i xv[2];
#pragma GCC unroll 2
        for (int u = 0; u < NI; ++u) {
            xv[u] = _mm512_maskz_loadu_epi8(m, (const void *)(x[u] + j));
            if (sgn) xv[u] = _mm512_xor_si512(xv[u], flip);
        }
#pragma GCC unroll 12
        for (int g = 0; g < G; ++g) {
            const __m512i qv = _mm512_load_si512((const void *)(qq[g] + j));
#pragma GCC unroll 2
            for (int u = 0; u < NI; ++u) acc[u][g] = dpbusd_acc512(acc[u][g], xv[u], qv);
        }
    }
#pragma GCC unroll 2
    for (int u = 0; u < NI; ++u) {
        const __m256 su = _mm256_set1_ps(sc[u]);
#pragma GCC unroll 12
        for (int g = 0; g < G; ++g) {
            const int k = grp->kq[g];
            __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(acc[u][g]),
                                         _mm512_extracti64x4_epi64(acc[u][g], 1));
            if (sgn) h = _mm256_sub_epi32(h, _mm256_loadu_si256((const __m256i *)(cv8 + 8 * k)));
            const __m256 w = _mm256_mul_ps(su, _mm256_broadcast_ss(wqf + k));
            float *f = F[u] + 8 * (int64_t)grp->pos[g];
            _mm256_store_ps(f, _mm256_fmadd_ps(_mm256_cvtepi32_ps(h), w, _mm256_load_ps(f)));
        }
    }
}

/* num[p] = the sum of position p's 8 lanes, for p < L (rounded up to 8); the lanes are zeroed
 * for the next image */
VFS_INLINE VFS_AVX512 void lsum_fold(float *F, double *num, int L) {
    const __m256 z = _mm256_setzero_ps();
    for (int p = 0; p < L; p += 8) {
        __m256 v[8];
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) {
            v[j] = _mm256_load_ps(F + 8 * (p + j));
            _mm256_store_ps(F + 8 * (p + j), z);
        }
        const __m256 h12 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
        const __m256 h34 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
        const __m256 r = _mm256_add_ps(_mm256_permute2f128_ps(h12, h34, 0x20),
                                       _mm256_permute2f128_ps(h12, h34, 0x31));
        _mm256_storeu_pd(num + p, _mm256_cvtps_pd(_mm256_castps256_ps128(r)));
        _mm256_storeu_pd(num + p + 4, _mm256_cvtps_pd(_mm256_extractf128_ps(r, 1)));
    }
}

VFS_INLINE VFS_AVX512 void lsum_switch(const uint8_t *const *xs, const group_t *grp, int G,
                                       int C, const float *sc, float *const *F,
                                       const scan_t *s, const int NI, const int sgn) {
#define CALL(g) lsum_dots_NG(xs, grp, C, sc, F, s->wqf, s->cv8, NI, g, sgn)
    VFS_SWITCH_G(CALL)
#undef CALL
}

static VFS_AVX512 void scan_lsum_avx512(const scan_t *s, const int sgn) {
    const int HW = s->H * s->W, C = s->C;
    const int L = (s->H - s->h) * s->W + (s->W - s->w + 1);
    const int64_t img_bytes = (int64_t)HW * C;
    float *FA = s->lsum, *FB = s->lsum + 8 * ((int64_t)HW + 8);
    for (int64_t i = 0; i < s->n;) {
        const int NI = i + 1 < s->n ? 2 : 1;
        const int64_t ra = row_of(s, i), rb = NI == 2 ? row_of(s, i + 1) : ra;
        const uint8_t *ia = s->feats + ra * img_bytes, *ib = s->feats + rb * img_bytes;
        const float *sa = s->scale + ra * HW, *sb = s->scale + rb * HW;
        /* the next two images (by row: ids may jump), prefetched cell by cell into L2 */
        const uint8_t *pa = i + 2 < s->n ? s->feats + row_of(s, i + 2) * img_bytes : NULL;
        const uint8_t *pb = i + 3 < s->n ? s->feats + row_of(s, i + 3) * img_bytes : NULL;
        float *const F[2] = {FA, FB};
        for (int gi = 0, cp = -1; gi < s->ngroups; ++gi) {
            const group_t *g = &s->groups[gi];
            const int c = g->cell;
            const uint8_t *xs[2] = {ia + (int64_t)c * C, ib + (int64_t)c * C};
            const float sc[2] = {sa[c], sb[c]};
            if (c != cp) { /* a cell's groups are consecutive */
                for (int64_t o = (int64_t)c * C; pa && o < (int64_t)(c + 1) * C; o += 64) {
                    __builtin_prefetch(pa + o, 0, 2);
                    if (pb) __builtin_prefetch(pb + o, 0, 2);
                }
                cp = c;
            }
            if (NI == 2)
                lsum_switch(xs, g, g->G, C, sc, F, s, 2, sgn);
            else
                lsum_switch(xs, g, g->G, C, sc, F, s, 1, sgn);
        }
        for (int u = 0; u < NI; ++u) {
            lsum_fold(F[u], s->num, L);
            offsets_image(s, NULL, i + u);
        }
        i += NI;
    }
}

/* ------------------------------------------------------------------------ */
/* 8-bit features, offsets in lanes                                          */
/* ------------------------------------------------------------------------ */
/*
 * num at VL consecutive grid positions p .. p+VL-1 (offset (a, b) at p = a*W + b) for query
 * cell k reads the cells p + off_k .. p + off_k + VL-1 (off_k = dy_k*W + dx_k): one unaligned
 * load from a transposed copy of the image, T[g][p] = the 4 bytes of channels 4g..4g+3 of cell
 * p, dotted with the query's 4 bytes of group g broadcast to every lane (AVX-512 vpdpbusd, 16
 * lanes; AVX2 vpmaddubsw + vpmaddwd, 8 lanes). No horizontal sums: each lane is one offset;
 * positions with b >= OW (or p >= L) are computed and ignored. Per image, as many channel
 * blocks of 64 bytes (16 groups) as fit in CIL_TBYTES are transposed into T (16 x 16 / 8 x 8
 * dword transposes), and every block of position vectors accumulates, for each k, its int32
 * dots over those groups (partial sums carry to the next chunk of groups in accm).
 *
 * Signed features are flipped to unsigned while transposing (x ^ 0x80 = x + 128; 128 * sum(q)
 * is subtracted per k). The fine (int16) query is split into q = 128 hi + lo with int8 hi, lo
 * (|.| <= 64: no vpmaddubsw saturation), two dots per load. Reads: whole cells through masked
 * loads (AVX-512) or dword masked loads (AVX2; the array's last image goes through the padded
 * copy ovr when C % 4 != 0), so nothing outside the features is read.
 *
 * Per position, num = sum_k wq_k * (scale(cell) * dot), den and qe are summed in float32 in k
 * order (16 / 8 lanes), and the epilogue runs in float32. Rounding: the int dot converts with
 * relative error <= u = 2^-24 (exact below 2^24); each of the K terms gets <= 3u more and the
 * running sum (K - 1)u, so |num - num~| <= (K + 3)u sum_k |t_k| <= (K + 3)u (1 + eps_q) |q||x|
 * by Cauchy-Schwarz (|t_k| <= m_k^2 |q^_k| |x_k|); den (positive terms) and qe have relative
 * error <= K u, so sqrt(den) <= (K/2 + 1)u, the division, the 1/qnorm product and the final
 * rounding to float 3u more: |score - exact dequantised score| <= (3K + 8)u on top of what the
 * double kernels have; CIL_SLACK(K) adds it to every bound.
 */
#ifndef CIL_NB512
#define CIL_NB512 11 /* position vectors per block: 12 int32 + 11 float accumulators */
#endif
#define CIL_NB512F 7 /* fine: 16 int32 + 7 float */
#define CIL_NB2 4    /* AVX2: 4 int32 + 4 float accumulators (+ query, ones, temps) */
#define CIL_NB2F 3
#define CIL_TBYTES (32 << 10) /* transposed groups held at once (L1) */
typedef struct {
    const uint8_t *p, *e; /* the next line to prefetch and the end of the prefetched image */
    int two;              /* lines per group step: 2 when 1 would not cover the image */
} pf_cursor;
#define CIL_SLACK(K) (VFS_SLACK + (3.0 * (K) + 8.0) * 5.9604644775390625e-8)

VFS_INLINE VFS_AVX512 void transpose16_epi32(__m512i *r) {
    __m512i a[16], b[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
        a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
        b[4 * i + 0] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
        b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
    }
    /* b[4i + j], 128-bit lane L = column 4L + j of rows 4i..4i+3 */
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
        const __m512i c0 = _mm512_shuffle_i32x4(b[j], b[4 + j], 0x44);
        const __m512i c1 = _mm512_shuffle_i32x4(b[j], b[4 + j], 0xEE);
        const __m512i c2 = _mm512_shuffle_i32x4(b[8 + j], b[12 + j], 0x44);
        const __m512i c3 = _mm512_shuffle_i32x4(b[8 + j], b[12 + j], 0xEE);
        r[j] = _mm512_shuffle_i32x4(c0, c2, 0x88);
        r[4 + j] = _mm512_shuffle_i32x4(c0, c2, 0xDD);
        r[8 + j] = _mm512_shuffle_i32x4(c1, c3, 0x88);
        r[12 + j] = _mm512_shuffle_i32x4(c1, c3, 0xDD);
    }
}

/* channel block cb (bytes 64 cb .. +63) of image x into T: T[g * HWs + p] = bytes
 * 64 cb + 4 (g - g0) .. +3 of cell p, for the block's groups g0 <= g < g0 + ng */
VFS_INLINE VFS_AVX512 void cil_transpose512(const uint8_t *x, int HW, int C, int cb, int HWs,
                                            const int sgn, int32_t *T) {
    const int j0 = cb * 64;
    const int nb = C - j0 < 64 ? C - j0 : 64;
    const __mmask64 m = nb == 64 ? ~(__mmask64)0 : (((__mmask64)1 << nb) - 1);
    const int ng = (nb + 3) / 4;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int p0 = 0; p0 < HW; p0 += 16) {
        __m512i r[16];
        const int nc = HW - p0 < 16 ? HW - p0 : 16;
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) {
            if (i < nc) {
                const int64_t o = (int64_t)(p0 + i) * C + j0;
                r[i] = _mm512_maskz_loadu_epi8(m, (const void *)(x + o));
                if (sgn) r[i] = _mm512_mask_add_epi8(r[i], m, r[i], flip); /* x + 128, 0 past C */
            } else {
                r[i] = _mm512_setzero_si512();
            }
        }
        transpose16_epi32(r);
        for (int g = 0; g < ng; ++g) _mm512_store_si512((void *)(T + g * HWs + p0), r[g]);
    }
}

/* One block of NB position vectors (positions 16 v0 ..): for every k, the int32 dots over the
 * ngc transposed groups in T (query groups gq0 ..) at the NB + 1 cell vectors the block's
 * positions read (cells 16 (v0 + off_k / 16) ..: aligned loads, which on Zen 4 cost half what
 * the unaligned ones at 16 v0 + off_k do); partial sums in accm (slot: where this block's NB + 1
 * vectors go, per k) unless this chunk of groups is the first / last; at the last chunk each
 * cell vector becomes scale(cell) * dot in float, shifted by off_k % 16 lanes onto the positions
 * (vpermt2ps) and folded into num (k order): num += wq_k * (scale(cell) * dot), the same
 * arithmetic per position as an unaligned load of the cells would give. */
VFS_INLINE VFS_AVX512 void cil_block512(const scan_t *s, const int32_t *T, int ngc, int gq0,
                                        int v0, int slot, const int NB, const int fine,
                                        const int sgn, const int first, const int last,
                                        pf_cursor *pc) {
    const int K = s->K, HWs = s->HWs, NS = s->NS;
    const uint8_t *pp = pc->p, *const pe = pc->e;
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512 nacc[CIL_NB512];
#pragma GCC unroll 11
    for (int j = 0; j < NB; ++j) nacc[j] = _mm512_setzero_ps();
    for (int k = 0; k < K; ++k) {
        if (s->wq[k] == 0.0) continue; /* a cell the query rounding dropped: its dots are 0 */
        __m512i A[CIL_NB512 + 1], B[CIL_NB512F + 1];
        int32_t *am = s->accm + ((int64_t)k * NS + slot) * 16 * (fine ? 2 : 1);
        const int off = s->offk[k];
        /* signed features: the dots start at -128 sum(q) (exact int32), no subtraction later */
        const __m512i ch = _mm512_set1_epi32(sgn ? -s->corr[k] : 0);
        const __m512i cl = _mm512_set1_epi32(sgn && fine ? -s->corr[K + k] : 0);
#pragma GCC unroll 12
        for (int j = 0; j <= NB; ++j) {
            A[j] = first ? ch : _mm512_loadu_si512((const void *)(am + 16 * j));
            if (fine)
                B[j] = first ? cl : _mm512_loadu_si512((const void *)(am + 16 * (NB + 1 + j)));
        }
        const int32_t *q = s->q4 + (int64_t)k * s->QW + gq0;
        const int32_t *ql = fine ? s->q4lo + (int64_t)k * s->QW + gq0 : q;
        const int c0 = v0 + (off >> 4); /* the block's first cell vector */
        const int32_t *t = T + 16 * c0;
        for (int g = 0; g < ngc; ++g, t += HWs) {
            const __m512i qv = _mm512_set1_epi32(q[g]);
            if (pp < pe) {
                __builtin_prefetch(pp, 0, 2);
                if (pc->two) __builtin_prefetch(pp + 64, 0, 2);
                pp += pc->two ? 128 : 64;
            }
            if (fine) {
                const __m512i qw = _mm512_set1_epi32(ql[g]);
#pragma GCC unroll 12
                for (int j = 0; j <= NB; ++j) {
                    const __m512i xv = _mm512_load_si512((const void *)(t + 16 * j));
                    A[j] = dpbusd_acc512(A[j], xv, qv);
                    B[j] = dpbusd_acc512(B[j], xv, qw);
                }
            } else {
#pragma GCC unroll 12
                for (int j = 0; j <= NB; ++j)
                    A[j] = dpbusd_acc512(A[j], _mm512_load_si512((const void *)(t + 16 * j)), qv);
            }
        }
        if (!last) {
#pragma GCC unroll 12
            for (int j = 0; j <= NB; ++j) {
                _mm512_storeu_si512((void *)(am + 16 * j), A[j]);
                if (fine) _mm512_storeu_si512((void *)(am + 16 * (NB + 1 + j)), B[j]);
            }
            continue;
        }
        const __m512 w = _mm512_set1_ps((float)s->wq[k]);
        const float *sd = s->sdf + 16 * c0;
        __m512 d[CIL_NB512 + 1];
#pragma GCC unroll 12
        for (int j = 0; j <= NB; ++j) {
            __m512 e = _mm512_cvtepi32_ps(A[j]);
            if (fine)
                e = _mm512_fmadd_ps(_mm512_set1_ps(128.0f), e, _mm512_cvtepi32_ps(B[j]));
            d[j] = _mm512_mul_ps(_mm512_loadu_ps(sd + 16 * j), e);
        }
        const __m512i idx = _mm512_add_epi32(lane, _mm512_set1_epi32(off & 15));
#pragma GCC unroll 11
        for (int j = 0; j < NB; ++j)
            nacc[j] = _mm512_fmadd_ps(w, _mm512_permutex2var_ps(d[j], idx, d[j + 1]), nacc[j]);
    }
    if (last) {
        float *num = s->numf + 16 * v0;
#pragma GCC unroll 11
        for (int j = 0; j < NB; ++j) _mm512_storeu_ps(num + 16 * j, nacc[j]);
    }
    pc->p = pp;
}

#define VFS_SWITCH_NB(CALL)                                                                 \
    switch (nb) {                                                                           \
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
    default: CALL(11); break;                                                               \
    }

VFS_INLINE VFS_AVX512 void cil_block512_n(const scan_t *s, const int32_t *T, int ngc, int gq0,
                                          int v0, int slot, int nb, const int fine,
                                          const int sgn, const int first, const int last,
                                          pf_cursor *pc) {
    if (fine) {
#define CALL(v) cil_block512(s, T, ngc, gq0, v0, slot, (v) > CIL_NB512F ? CIL_NB512F : (v), 1, sgn, first, last, pc)
        VFS_SWITCH_NB(CALL)
#undef CALL
    } else {
#define CALL(v) cil_block512(s, T, ngc, gq0, v0, slot, (v) > CIL_NB512 ? CIL_NB512 : (v), 0, sgn, first, last, pc)
        VFS_SWITCH_NB(CALL)
#undef CALL
    }
}

/* bounds and outputs from the best score, the max of score + f, and f at the argmax */
static inline void cil_outputs(const scan_t *s, int64_t i, float bst, float Us, float fbp,
                               int bp) {
    const int W = s->W, OW = s->W - s->w + 1;
    const double slack = CIL_SLACK(s->K);
    double up, lo;
    if (!s->qerr2) {
        up = (double)bst + s->eps_q + slack;
        lo = (double)bst - (s->eps_q + slack);
    } else {
        if (!(Us > -INFINITY)) Us = bst + (float)VFS_PI;
        up = (double)Us + s->eps_q + slack;
        lo = (double)bst - (s->eps_q + (double)fbp + slack);
    }
    s->out_score[i] = bst;
    s->out_offset[i] = (bp / W) * OW + bp % W;
    s->out_upper[i] = (float)up;
    s->out_lower[i] = (float)lo;
}

VFS_INLINE VFS_AVX512 __m512 angle_bound512(__m512 d) {
    const __m512 v = _mm512_mul_ps(d, _mm512_fmadd_ps(_mm512_set1_ps((float)ANGLE_C), _mm512_mul_ps(d, d), _mm512_set1_ps(1.0f)));
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(d, _mm512_set1_ps(0.5f), _CMP_LT_OQ), _mm512_set1_ps((float)VFS_PI), v);
}

/* the epilogue, 16 positions at a time: what finish_image computes (in float), with den and qe
 * summed per vector in registers (k order; masked loads past L, so nothing outside image r's
 * sqnorm / qerr2 rows is read) */
static VFS_AVX512 void finish_cil512(const scan_t *s, int64_t i, int64_t r) {
    const int L = (s->H - s->h) * s->W + (s->W - s->w + 1);
    const int bounds = s->qerr2 != NULL;
    const int HW = s->H * s->W, K = s->K;
    const float *sn = s->sqnorm + r * HW, *qr = bounds ? s->qerr2 + r * HW : NULL;
    float *sc = s->numf, *fb = s->qef; /* scores and f, written over num / qe */
    const __m512 iq = _mm512_set1_ps(s->qnorm > 0.0 ? (float)(1.0 / s->qnorm) : 0.0f);
    const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
    const __m512 pi = _mm512_set1_ps((float)VFS_PI);
    __m512 best = _mm512_set1_ps(-INFINITY), U = best;
    for (int p = 0; p < L; p += 16) {
        const __mmask16 valid = (__mmask16)(s->vmask[p >> 3] | (s->vmask[(p >> 3) + 1] << 8));
        const __mmask16 in = L - p >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (L - p)) - 1);
        __m512 d = zero, e = zero;
        for (int k = 0; k < K; ++k) {
            const __m512 mk = _mm512_set1_ps((float)s->wm[k]);
            const int o = s->offk[k] + p;
            d = _mm512_fmadd_ps(mk, _mm512_maskz_loadu_ps(in, sn + o), d);
            if (bounds) e = _mm512_fmadd_ps(mk, _mm512_maskz_loadu_ps(in, qr + o), e);
        }
        const __mmask16 ok = _mm512_cmp_ps_mask(d, zero, _CMP_GT_OQ);
        const __m512 inv = _mm512_div_ps(one, _mm512_sqrt_ps(_mm512_mask_blend_ps(ok, one, d)));
        const __m512 rs = _mm512_maskz_mul_ps(ok, _mm512_mul_ps(_mm512_loadu_ps(sc + p), inv), iq);
        __m512 f = zero;
        if (bounds) {
            const __mmask16 pos = _mm512_cmp_ps_mask(e, zero, _CMP_GT_OQ);
            const __m512 fv = angle_bound512(_mm512_mul_ps(_mm512_sqrt_ps(_mm512_max_ps(e, zero)), inv));
            f = _mm512_maskz_mov_ps(pos, _mm512_mask_blend_ps(ok, pi, fv));
        }
        best = _mm512_mask_max_ps(best, valid, best, rs);
        U = _mm512_mask_max_ps(U, valid, U, _mm512_add_ps(rs, f));
        _mm512_storeu_ps(sc + p, rs);
        _mm512_storeu_ps(fb + p, f);
    }
    float bst = _mm512_reduce_max_ps(best), Us = _mm512_reduce_max_ps(U);
    int bp = 0;
    if (bst > -INFINITY) {
        const __m512 bv = _mm512_set1_ps(bst);
        for (int p = 0; p < L; p += 16) {
            const __mmask16 valid = (__mmask16)(s->vmask[p >> 3] | (s->vmask[(p >> 3) + 1] << 8));
            const __mmask16 hit = _mm512_cmp_ps_mask(_mm512_loadu_ps(sc + p), bv, _CMP_EQ_OQ) & valid;
            if (hit) {
                bp = p + __builtin_ctz((unsigned)hit);
                break;
            }
        }
    } else {
        bst = sc[0]; /* NaN guard */
    }
    cil_outputs(s, i, bst, Us, fb[bp], bp);
}

/* the position blocks: NV vectors split into near-equal blocks of at most nbmax */
static inline int cil_nblocks(int NV, int nbmax) { return (NV + nbmax - 1) / nbmax; }

/* the image's per-cell scales as float, zero past the image (shifted reads go up to H*W + 15) */
VFS_INLINE void cil_scales(const scan_t *s, int64_t r) {
    const int HW = s->H * s->W;
    memcpy(s->sdf, s->scale + r * HW, sizeof(float) * (size_t)HW);
}

static VFS_AVX512 void scan_cil_avx512(const scan_t *s, const int sgn, const int fine) {
    const int HW = s->H * s->W, C = s->C, NV = s->NV, HWs = s->HWs, G4 = s->G4, GT = s->GT;
    const int nblk = cil_nblocks(NV, fine ? CIL_NB512F : CIL_NB512);
    const int64_t img_bytes = (int64_t)HW * C;
    int kon = 0; /* query cells the dots visit (cil_block512 skips the rows rounded to 0) */
    for (int k = 0; k < s->K; ++k) kon += s->wq[k] != 0.0;
    /* what one image occupies in the array the dots read: the features, or their
     * transposed copy (inter) */
    const int64_t istride = (int64_t)G4 * HWs, img_read = s->inter ? 4 * istride : img_bytes;
    const uint8_t *src = s->inter ? (const uint8_t *)s->inter : s->feats;
    const int64_t lines = (img_read + 63) / 64, steps = (int64_t)kon * G4 * nblk;
    for (int64_t i = 0; i < s->n; ++i) {
        const int64_t r = row_of(s, i);
        const uint8_t *x = s->feats + r * img_bytes;
        /* the next image, prefetched one or two lines per group step of the dots (spread over
         * them; in a burst while transposing, they stalled on the misses in flight: 14x14x112
         * 2.8 -> 2.2 us on Zen 4) */
        pf_cursor pc = {NULL, NULL, steps < lines};
        if (i + 1 < s->n) {
            pc.p = src + row_of(s, i + 1) * img_read;
            pc.e = pc.p + img_read;
        }
        cil_scales(s, r);
        for (int g0 = 0; g0 < G4; g0 += GT) {
            const int ngc = G4 - g0 < GT ? G4 - g0 : GT;
            const int32_t *T = s->inter ? s->inter + r * istride + (int64_t)g0 * HWs : s->T;
            for (int cb = g0 / 16; !s->inter && cb * 16 < g0 + ngc; ++cb)
                cil_transpose512(x, HW, C, cb, HWs, sgn, s->T + (cb * 16 - g0) * HWs);
            for (int b = 0, v0 = 0; b < nblk; ++b) {
                const int nb = (NV * (b + 1)) / nblk - (NV * b) / nblk;
                cil_block512_n(s, T, ngc, g0, v0, v0 + b, nb, fine, sgn, g0 == 0,
                               g0 + GT >= G4, &pc);
                v0 += nb;
            }
        }
        finish_cil512(s, i, r);
    }
}

/* --- AVX2: 8 lanes ------------------------------------------------------- */

VFS_INLINE VFS_AVX2 void transpose8_epi32(__m256i *r) {
    __m256i t[8], u[8];
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 2
    for (int i = 0; i < 2; ++i) {
        u[4 * i + 0] = _mm256_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm256_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm256_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm256_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
        r[j] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x20);
        r[4 + j] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x31);
    }
}

/* as cil_transpose512, 8 cells x 32 bytes at a time; dword-granular masked loads (a cell's last
 * partial dword reads up to 3 bytes of the next cell, or of the padded copy ovr) */
VFS_INLINE VFS_AVX2 void cil_transpose2(const uint8_t *x, int HW, int C, int cb, int HWs,
                                        const int sgn, int32_t *T, const uint8_t *pf) {
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    for (int h = 0; h < 2; ++h) {
        const int j0 = cb * 64 + 32 * h;
        if (j0 >= C) break;
        const int nw = C - j0 >= 32 ? 8 : (C - j0 + 3) / 4; /* dwords of this half */
        const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(nw), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for (int p0 = 0; p0 < HW; p0 += 8) {
            __m256i r[8];
            const int nc = HW - p0 < 8 ? HW - p0 : 8;
#pragma GCC unroll 8
            for (int i = 0; i < 8; ++i) {
                if (i < nc) {
                    const int64_t o = (int64_t)(p0 + i) * C + j0;
                    r[i] = nw == 8 ? _mm256_loadu_si256((const __m256i *)(x + o))
                                   : _mm256_maskload_epi32((const int *)(x + o), m);
                    if (sgn) r[i] = _mm256_xor_si256(r[i], flip);
                    if (pf) __builtin_prefetch(pf + o, 0, 2);
                } else {
                    r[i] = _mm256_setzero_si256();
                }
            }
            transpose8_epi32(r);
            for (int g = 0; g < nw; ++g) _mm256_store_si256((__m256i *)(T + (8 * h + g) * HWs + p0), r[g]);
        }
    }
}

VFS_INLINE VFS_AVX2 void cil_block2(const scan_t *s, const int32_t *T, int ngc, int gq0,
                                    int v0, const int NB, const int fine, const int sgn,
                                    const int first, const int last) {
    const int K = s->K, HWs = s->HWs, NV = s->NV;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 nacc[CIL_NB2];
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) nacc[j] = _mm256_setzero_ps();
    for (int k = 0; k < K; ++k) {
        if (s->wq[k] == 0.0) continue; /* a cell the query rounding dropped: its dots are 0 */
        __m256i A[CIL_NB2], B[CIL_NB2F];
        int32_t *am = s->accm + ((int64_t)k * NV + v0) * 8 * (fine ? 2 : 1);
#pragma GCC unroll 4
        for (int j = 0; j < NB; ++j) {
            A[j] = first ? _mm256_setzero_si256() : _mm256_loadu_si256((const __m256i *)(am + 8 * j));
            if (fine)
                B[j] = first ? _mm256_setzero_si256() : _mm256_loadu_si256((const __m256i *)(am + 8 * (NB + j)));
        }
        const int32_t *q = s->q4 + (int64_t)k * s->QW + gq0;
        const int32_t *ql = fine ? s->q4lo + (int64_t)k * s->QW + gq0 : q;
        const int off = s->offk[k];
        const int32_t *t = T + 8 * v0 + off;
        for (int g = 0; g < ngc; ++g, t += HWs) {
            const __m256i qv = _mm256_set1_epi32(q[g]);
            if (fine) {
                const __m256i qw = _mm256_set1_epi32(ql[g]);
#pragma GCC unroll 4
                for (int j = 0; j < NB; ++j) {
                    const __m256i xv = _mm256_loadu_si256((const __m256i *)(t + 8 * j));
                    A[j] = acc_add_epi32(A[j], _mm256_madd_epi16(_mm256_maddubs_epi16(xv, qv), ones));
                    B[j] = acc_add_epi32(B[j], _mm256_madd_epi16(_mm256_maddubs_epi16(xv, qw), ones));
                }
            } else {
#pragma GCC unroll 4
                for (int j = 0; j < NB; ++j) {
                    const __m256i xv = _mm256_loadu_si256((const __m256i *)(t + 8 * j));
                    A[j] = acc_add_epi32(A[j], _mm256_madd_epi16(_mm256_maddubs_epi16(xv, qv), ones));
                }
            }
        }
        if (!last) {
#pragma GCC unroll 4
            for (int j = 0; j < NB; ++j) {
                _mm256_storeu_si256((__m256i *)(am + 8 * j), A[j]);
                if (fine) _mm256_storeu_si256((__m256i *)(am + 8 * (NB + j)), B[j]);
            }
            continue;
        }
        const __m256i ch = _mm256_set1_epi32(sgn ? s->corr[k] : 0);
        const __m256i cl = _mm256_set1_epi32(sgn && fine ? s->corr[K + k] : 0);
        const __m256 w = _mm256_set1_ps((float)s->wq[k]);
        const float *sd = s->sdf + 8 * v0 + off;
#pragma GCC unroll 4
        for (int j = 0; j < NB; ++j) {
            __m256 d = _mm256_cvtepi32_ps(_mm256_sub_epi32(A[j], ch));
            if (fine)
                d = _mm256_fmadd_ps(_mm256_set1_ps(128.0f), d,
                                    _mm256_cvtepi32_ps(_mm256_sub_epi32(B[j], cl)));
            nacc[j] = _mm256_fmadd_ps(w, _mm256_mul_ps(_mm256_loadu_ps(sd + 8 * j), d), nacc[j]);
        }
    }
    if (last) {
        float *num = s->numf + 8 * v0;
#pragma GCC unroll 4
        for (int j = 0; j < NB; ++j) _mm256_storeu_ps(num + 8 * j, nacc[j]);
    }
}

VFS_INLINE VFS_AVX2 void cil_block2_n(const scan_t *s, const int32_t *T, int ngc, int gq0,
                                      int v0, int nb, const int fine, const int sgn,
                                      const int first, const int last) {
    if (fine) {
        if (nb <= 1) cil_block2(s, T, ngc, gq0, v0, 1, 1, sgn, first, last);
        else if (nb == 2) cil_block2(s, T, ngc, gq0, v0, 2, 1, sgn, first, last);
        else cil_block2(s, T, ngc, gq0, v0, CIL_NB2F, 1, sgn, first, last);
    } else {
        if (nb <= 1) cil_block2(s, T, ngc, gq0, v0, 1, 0, sgn, first, last);
        else if (nb == 2) cil_block2(s, T, ngc, gq0, v0, 2, 0, sgn, first, last);
        else if (nb == 3) cil_block2(s, T, ngc, gq0, v0, 3, 0, sgn, first, last);
        else cil_block2(s, T, ngc, gq0, v0, CIL_NB2, 0, sgn, first, last);
    }
}

VFS_INLINE VFS_AVX2 __m256 angle_bound2(__m256 d) {
    const __m256 v = _mm256_mul_ps(d, _mm256_fmadd_ps(_mm256_set1_ps((float)ANGLE_C), _mm256_mul_ps(d, d), _mm256_set1_ps(1.0f)));
    return _mm256_blendv_ps(_mm256_set1_ps((float)VFS_PI), v, _mm256_cmp_ps(d, _mm256_set1_ps(0.5f), _CMP_LT_OQ));
}

/* finish_cil512 with 8 lanes */
static VFS_AVX2 void finish_cil2(const scan_t *s, int64_t i, int64_t r) {
    const int L = (s->H - s->h) * s->W + (s->W - s->w + 1);
    const int bounds = s->qerr2 != NULL;
    const int HW = s->H * s->W, K = s->K;
    const float *sn = s->sqnorm + r * HW, *qr = bounds ? s->qerr2 + r * HW : NULL;
    float *sc = s->numf, *fb = s->qef;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 iq = _mm256_set1_ps(s->qnorm > 0.0 ? (float)(1.0 / s->qnorm) : 0.0f);
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    const __m256 pi = _mm256_set1_ps((float)VFS_PI);
    const __m256i bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    __m256 best = _mm256_set1_ps(-INFINITY), U = best;
    for (int p = 0; p < L; p += 8) {
        const __m256 valid = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
            _mm256_and_si256(_mm256_set1_epi32(s->vmask[p >> 3]), bits), _mm256_setzero_si256()));
        /* den and qe in registers, k order; the last vector's loads masked past L (nothing
         * outside row r), the others plain (p + 7 < L: every cell read lies in row r) */
        __m256 d = zero, e = zero;
        if (p + 8 <= L) {
            for (int k = 0; k < K; ++k) {
                const __m256 mk = _mm256_broadcast_ss(s->wmf + k);
                const int o = s->offk[k] + p;
                d = _mm256_fmadd_ps(mk, _mm256_loadu_ps(sn + o), d);
                if (bounds) e = _mm256_fmadd_ps(mk, _mm256_loadu_ps(qr + o), e);
            }
        } else {
            const __m256i in = _mm256_cmpgt_epi32(_mm256_set1_epi32(L - p), lane);
            for (int k = 0; k < K; ++k) {
                const __m256 mk = _mm256_broadcast_ss(s->wmf + k);
                const int o = s->offk[k] + p;
                d = _mm256_fmadd_ps(mk, _mm256_maskload_ps(sn + o, in), d);
                if (bounds) e = _mm256_fmadd_ps(mk, _mm256_maskload_ps(qr + o, in), e);
            }
        }
        const __m256 ok = _mm256_cmp_ps(d, zero, _CMP_GT_OQ);
        const __m256 inv = _mm256_div_ps(one, _mm256_sqrt_ps(_mm256_blendv_ps(one, d, ok)));
        const __m256 r = _mm256_and_ps(ok, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(sc + p), inv), iq));
        __m256 f = zero;
        if (bounds) {
            const __m256 pos = _mm256_cmp_ps(e, zero, _CMP_GT_OQ);
            const __m256 fv = angle_bound2(_mm256_mul_ps(_mm256_sqrt_ps(_mm256_max_ps(e, zero)), inv));
            f = _mm256_and_ps(pos, _mm256_blendv_ps(pi, fv, ok));
        }
        best = _mm256_blendv_ps(best, _mm256_max_ps(best, r), valid);
        U = _mm256_blendv_ps(U, _mm256_max_ps(U, _mm256_add_ps(r, f)), valid);
        _mm256_storeu_ps(sc + p, r);
        _mm256_storeu_ps(fb + p, f);
    }
    float bv[8], uv[8];
    _mm256_storeu_ps(bv, best);
    _mm256_storeu_ps(uv, U);
    float bst = bv[0], Us = uv[0];
    for (int t = 1; t < 8; ++t) {
        bst = bv[t] > bst ? bv[t] : bst;
        Us = uv[t] > Us ? uv[t] : Us;
    }
    int bp = 0;
    if (bst > -INFINITY) {
        const __m256 bb = _mm256_set1_ps(bst);
        for (int p = 0; p < L; p += 8) {
            const int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(sc + p), bb, _CMP_EQ_OQ)) & s->vmask[p >> 3];
            if (hit) {
                bp = p + __builtin_ctz((unsigned)hit);
                break;
            }
        }
    } else {
        bst = sc[0]; /* NaN guard */
    }
    cil_outputs(s, i, bst, Us, fb[bp], bp);
}

static VFS_AVX2 void scan_cil_avx2(const scan_t *s, const int sgn, const int fine) {
    const int HW = s->H * s->W, C = s->C, NV = s->NV, HWs = s->HWs, G4 = s->G4, GT = s->GT;
    const int nblk = cil_nblocks(NV, fine ? CIL_NB2F : CIL_NB2);
    const int64_t img_bytes = (int64_t)HW * C, istride = (int64_t)G4 * HWs;
    for (int64_t i = 0; i < s->n; ++i) {
        const int64_t r = row_of(s, i);
        const uint8_t *x = s->feats + r * img_bytes;
        if (s->ovr && r == s->nrows - 1) {
            memcpy(s->ovr, x, (size_t)img_bytes);
            x = s->ovr;
        }
        const uint8_t *pf = NULL;
        if (i + 1 < s->n) pf = s->feats + row_of(s, i + 1) * img_bytes;
        cil_scales(s, r);
        for (int g0 = 0; g0 < G4; g0 += GT) {
            const int ngc = G4 - g0 < GT ? G4 - g0 : GT;
            if (s->inter) { /* the transposed chunk copied into T (L1): the unaligned loads of
                             * the dots from elsewhere cost more than the copy */
                const int32_t *src = s->inter + r * istride + (int64_t)g0 * HWs;
                const int64_t nw = (int64_t)ngc * HWs;
                const uint8_t *pn = pf ? (const uint8_t *)(s->inter + row_of(s, i + 1) * istride +
                                                          (int64_t)g0 * HWs) : NULL;
                for (int64_t o = 0; o < nw; o += 16) {
                    _mm256_store_si256((__m256i *)(s->T + o), _mm256_load_si256((const __m256i *)(src + o)));
                    _mm256_store_si256((__m256i *)(s->T + o + 8), _mm256_load_si256((const __m256i *)(src + o + 8)));
                    if (pn) __builtin_prefetch(pn + 4 * o, 0, 2);
                }
            }
            for (int cb = g0 / 16; !s->inter && cb * 16 < g0 + ngc; ++cb)
                cil_transpose2(x, HW, C, cb, HWs, sgn, s->T + (cb * 16 - g0) * HWs, pf);
            for (int b = 0, v0 = 0; b < nblk; ++b) {
                const int nb = (NV * (b + 1)) / nblk - (NV * b) / nblk;
                cil_block2_n(s, s->T, ngc, g0, v0, nb, fine, sgn, g0 == 0, g0 + GT >= G4);
                v0 += nb;
            }
        }
        finish_cil2(s, i, r);
    }
}

/* ------------------------------------------------------------------------ */
/* 8-bit features, one offset (whole-image queries: the box is the grid)     */
/* ------------------------------------------------------------------------ */
/*
 * num = sum_k wq_k * scale(c_k) * <q_k, x_{c_k}> over the query's cells c_k = off_k: per cell,
 * its channels in lanes (vpdpbusd over 64-byte blocks, or vpmaddubsw + vpmaddwd over 32), the
 * lane partial sums corrected for the signed-feature flip lane by lane (cvec: 128 * the query
 * bytes of each lane, so every lane holds its exact int32 partial dot, converted to float
 * exactly: |lane| < 2^24 for C < 8000) and folded into a float accumulator with the cell's
 * factor: no horizontal sum per cell, every feature byte read once. The float accumulator
 * takes at most 16 cells and is then added into a double one: the score moves by at most
 * 18u (1 + eps_q) from the rounding (Cauchy-Schwarz on the lanes' absolute values, as for the
 * offsets path), within CIL_SLACK(16). den and qe are summed in double.
 */
static inline void single_outputs(const scan_t *s, int64_t i, double num, double den, double qe) {
    const double qn = s->qnorm;
    const double sc = den > 0.0 && qn > 0.0 ? num / (qn * sqrt(den)) : 0.0;
    double f = 0.0;
    if (s->qerr2 && qe > 0.0) f = den > 0.0 ? angle_bound(sqrt(qe / den)) : VFS_PI;
    const double slack = CIL_SLACK(16);
    s->out_score[i] = (float)sc;
    s->out_offset[i] = 0;
    s->out_upper[i] = (float)(sc + f + s->eps_q + slack);
    s->out_lower[i] = (float)(sc - (f + s->eps_q + slack));
}

static inline void single_den(const scan_t *s, int64_t r, double *den, double *qe) {
    const int HW = s->H * s->W;
    const float *sn = s->sqnorm + r * HW, *er = s->qerr2 ? s->qerr2 + r * HW : NULL;
    double d = 0.0, e = 0.0;
    for (int k = 0; k < s->K; ++k) {
        d += s->wm[k] * (double)sn[s->offk[k]];
        if (er) e += s->wm[k] * (double)er[s->offk[k]];
    }
    *den = d;
    *qe = e;
}

/* per-cell factors wq_k * scale(c_k) of row r, as float (the fold multiplies in float) */
static inline void single_factors(const scan_t *s, int64_t r) {
    const float *sc = s->scale + r * s->H * s->W;
    for (int k = 0; k < s->K; ++k) s->sdf[k] = (float)(s->wq[k] * (double)sc[s->offk[k]]);
}

/* int32 lane sums of x . q over C bytes (4 accumulators for long rows; masked tail) */
VFS_INLINE VFS_AVX512 __m512i single_dot512(const uint8_t *x, const int8_t *q, int C,
                                            const int sgn, const uint8_t *pf) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512i A0 = _mm512_setzero_si512(), A1 = A0, A2 = A0, A3 = A0;
    int j = 0;
#define LD(o) (sgn ? _mm512_xor_si512(_mm512_loadu_si512((const void *)(x + (o))), flip) \
                   : _mm512_loadu_si512((const void *)(x + (o))))
#define QL(o) _mm512_loadu_si512((const void *)(q + (o)))
    for (; j + 256 <= C; j += 256) {
        for (int o = 0; o < 256; o += 64) __builtin_prefetch(pf + j + o, 0, 2);
        A0 = dpbusd_acc512(A0, LD(j), QL(j));
        A1 = dpbusd_acc512(A1, LD(j + 64), QL(j + 64));
        A2 = dpbusd_acc512(A2, LD(j + 128), QL(j + 128));
        A3 = dpbusd_acc512(A3, LD(j + 192), QL(j + 192));
    }
    for (; j + 64 <= C; j += 64) {
        __builtin_prefetch(pf + j, 0, 2);
        A1 = dpbusd_acc512(A1, LD(j), QL(j));
    }
#undef LD
    if (j < C) {
        __builtin_prefetch(pf + j, 0, 2);
        __m512i xv = _mm512_maskz_loadu_epi8(((__mmask64)1 << (C - j)) - 1, (const void *)(x + j));
        if (sgn) xv = _mm512_xor_si512(xv, flip);
        A2 = dpbusd_acc512(A2, xv, QL(j));
    }
#undef QL
    return _mm512_add_epi32(_mm512_add_epi32(A0, A1), _mm512_add_epi32(A2, A3));
}

static VFS_AVX512 void scan_single_avx512(const scan_t *s, const int sgn, const int fine) {
    const int HW = s->H * s->W, C = s->C, K = s->K, QS = s->QS;
    const int64_t img_bytes = (int64_t)HW * C;
    for (int64_t i = 0; i < s->n; ++i) {
        const int64_t r = row_of(s, i);
        const uint8_t *x = s->feats + r * img_bytes;
        const uint8_t *pf = s->feats + row_of(s, i + 1 < s->n ? i + 1 : i) * img_bytes;
        single_factors(s, r);
        __m512d D0 = _mm512_setzero_pd(), D1 = D0;
        __m512 fa[4];
        for (int t = 0; t < 4; ++t) fa[t] = _mm512_setzero_ps();
        for (int k = 0; k < K; ++k) {
            const int64_t co = (int64_t)s->offk[k] * C;
            __m512i A = single_dot512(x + co, s->q8 + (int64_t)k * QS, C, sgn, pf + co);
            if (sgn) A = _mm512_sub_epi32(A, _mm512_loadu_si512((const void *)(s->cvec + 32 * k)));
            __m512 d = _mm512_cvtepi32_ps(A);
            if (fine) {
                __m512i B = single_dot512(x + co, s->q8lo + (int64_t)k * QS, C, sgn, pf + co);
                if (sgn) B = _mm512_sub_epi32(B, _mm512_loadu_si512((const void *)(s->cvec + 32 * k + 16)));
                d = _mm512_fmadd_ps(_mm512_set1_ps(128.0f), d, _mm512_cvtepi32_ps(B));
            }
            fa[k & 3] = _mm512_fmadd_ps(_mm512_set1_ps(s->sdf[k]), d, fa[k & 3]);
            if ((k & 15) == 15 || k == K - 1) { /* at most 4 terms per lane in float */
                const __m512 t = _mm512_add_ps(_mm512_add_ps(fa[0], fa[1]), _mm512_add_ps(fa[2], fa[3]));
                D0 = _mm512_add_pd(D0, _mm512_cvtps_pd(_mm512_castps512_ps256(t)));
                D1 = _mm512_add_pd(D1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(t), 1))));
                for (int u = 0; u < 4; ++u) fa[u] = _mm512_setzero_ps();
            }
        }
        double den, qe;
        single_den(s, r, &den, &qe);
        single_outputs(s, i, _mm512_reduce_add_pd(_mm512_add_pd(D0, D1)), den, qe);
    }
}

/* AVX2: 32-byte blocks (reads up to 31 bytes past a cell: the array's last image goes through
 * the padded copy ovr), 7-bit query or its 128 hi + lo split */
VFS_INLINE VFS_AVX2 __m256i single_dot2(const uint8_t *x, const int8_t *q, int C, const int sgn,
                                        const uint8_t *pf) {
    const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    __m256i A0 = _mm256_setzero_si256(), A1 = A0;
#define LD(o) (sgn ? _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(x + (o))), flip) \
                   : _mm256_loadu_si256((const __m256i *)(x + (o))))
#define DOT(o) _mm256_madd_epi16(_mm256_maddubs_epi16(LD(o), _mm256_loadu_si256((const __m256i *)(q + (o)))), ones)
    int j = 0;
    for (; j + 64 <= C; j += 64) {
        __builtin_prefetch(pf + j, 0, 2);
        A0 = acc_add_epi32(A0, DOT(j));
        A1 = acc_add_epi32(A1, DOT(j + 32));
    }
    if (j < C) __builtin_prefetch(pf + j, 0, 2);
    if (j < C) A0 = acc_add_epi32(A0, DOT(j));
    if (j + 32 < C) A1 = acc_add_epi32(A1, DOT(j + 32));
#undef DOT
#undef LD
    return _mm256_add_epi32(A0, A1);
}

static VFS_AVX2 void scan_single_avx2(const scan_t *s, const int sgn, const int fine) {
    const int HW = s->H * s->W, C = s->C, K = s->K, QS = s->QS;
    const int64_t img_bytes = (int64_t)HW * C;
    for (int64_t i = 0; i < s->n; ++i) {
        const int64_t r = row_of(s, i);
        const uint8_t *x = s->feats + r * img_bytes;
        if (s->ovr && r == s->nrows - 1) {
            memcpy(s->ovr, x, (size_t)img_bytes);
            x = s->ovr;
        }
        const uint8_t *pf = s->feats + row_of(s, i + 1 < s->n ? i + 1 : i) * img_bytes;
        single_factors(s, r);
        __m256d D0 = _mm256_setzero_pd(), D1 = D0;
        __m256 fa[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
        for (int k = 0; k < K; ++k) {
            const int64_t co = (int64_t)s->offk[k] * C;
            __m256i A = single_dot2(x + co, s->q8 + (int64_t)k * QS, C, sgn, pf + co);
            if (sgn) A = _mm256_sub_epi32(A, _mm256_loadu_si256((const __m256i *)(s->cvec + 32 * k)));
            __m256 d = _mm256_cvtepi32_ps(A);
            if (fine) {
                __m256i B = single_dot2(x + co, s->q8lo + (int64_t)k * QS, C, sgn, pf + co);
                if (sgn) B = _mm256_sub_epi32(B, _mm256_loadu_si256((const __m256i *)(s->cvec + 32 * k + 16)));
                d = _mm256_fmadd_ps(_mm256_set1_ps(128.0f), d, _mm256_cvtepi32_ps(B));
            }
            fa[k & 1] = _mm256_fmadd_ps(_mm256_set1_ps(s->sdf[k]), d, fa[k & 1]);
            if ((k & 15) == 15 || k == K - 1) {
                const __m256 t = _mm256_add_ps(fa[0], fa[1]);
                D0 = _mm256_add_pd(D0, _mm256_cvtps_pd(_mm256_castps256_ps128(t)));
                D1 = _mm256_add_pd(D1, _mm256_cvtps_pd(_mm256_extractf128_ps(t, 1)));
                fa[0] = fa[1] = _mm256_setzero_ps();
            }
        }
        double t[4];
        _mm256_storeu_pd(t, _mm256_add_pd(D0, D1));
        double den, qe;
        single_den(s, r, &den, &qe);
        single_outputs(s, i, (t[0] + t[1]) + (t[2] + t[3]), den, qe);
    }
}

/* ------------------------------------------------------------------------ */
/* 8-bit features, one offset, C % 4 == 0: the image as one flat vector      */
/* ------------------------------------------------------------------------ */
/*
 * With the box the whole grid and C a multiple of 4, cell c's channels are bytes c*C ..
 * c*C + C - 1 of the image and every 4-byte lane of a 64-byte block belongs to one cell: the
 * dot of the whole image with the query laid out the same way (qflat: cell c_k's row at
 * c_k * C, zeros for cells outside the mask) is one pass of vpdpbusd over the image's blocks,
 * each block's 16 lane sums (exact int32, corrected lane by lane for the signed-feature flip)
 * converted and folded with a vector of the lanes' cells' factors wq * scale (one permute of
 * 16 consecutive cells' factors; the lane -> cell pattern repeats every P = C / gcd(C, 64)
 * blocks). Every feature byte is read once, with no per-cell work. Float accumulators take 16
 * blocks before going into double ones: the rounding bound is that of the one-offset path.
 */
static VFS_AVX512 void scan_flat_avx512(const scan_t *s, const int sgn, const int fine) {
    const int HW = s->H * s->W, C = s->C, P = s->fP;
    const int64_t img_bytes = (int64_t)HW * C, nblk = (img_bytes + 63) / 64;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    float *fc = s->sdf; /* per-cell factors wq * scale, zero past the image */
    for (int64_t i = 0; i < s->n; ++i) {
        const int64_t r = row_of(s, i);
        const uint8_t *x = s->feats + r * img_bytes;
        const uint8_t *pf = s->feats + row_of(s, i + 1 < s->n ? i + 1 : i) * img_bytes;
        const float *sc = s->scale + r * HW;
        for (int c = 0; c < HW; ++c) fc[c] = s->fwq[c] * sc[c];
        __m512d D0 = _mm512_setzero_pd(), D1 = D0;
        __m512 fa = _mm512_setzero_ps(), fb = fa;
        int64_t j = 0;
        for (int64_t base = 0; j < nblk; base += s->fstep) {
            for (int t = 0; t < P && j < nblk; ++t, ++j) {
                const int64_t o = 64 * j;
                const __mmask64 m = o + 64 <= img_bytes ? ~(__mmask64)0
                                  : (((__mmask64)1 << (img_bytes - o)) - 1);
                __m512i xv = _mm512_maskz_loadu_epi8(m, (const void *)(x + o));
                if (sgn) xv = _mm512_xor_si512(xv, flip);
                __builtin_prefetch(pf + o, 0, 2);
                __m512i A = dpbusd_acc512(_mm512_setzero_si512(), xv, _mm512_loadu_si512((const void *)(s->qflat + o)));
                if (sgn) A = _mm512_sub_epi32(A, _mm512_loadu_si512((const void *)(s->fcorr + 16 * j)));
                __m512 d = _mm512_cvtepi32_ps(A);
                if (fine) {
                    __m512i B = dpbusd_acc512(_mm512_setzero_si512(), xv, _mm512_loadu_si512((const void *)(s->qflatlo + o)));
                    if (sgn) B = _mm512_sub_epi32(B, _mm512_loadu_si512((const void *)(s->fcorrlo + 16 * j)));
                    d = _mm512_fmadd_ps(_mm512_set1_ps(128.0f), d, _mm512_cvtepi32_ps(B));
                }
                const __m512 f = _mm512_permutexvar_ps(_mm512_loadu_si512((const void *)(s->fidx + 16 * t)),
                                                       _mm512_loadu_ps(fc + base + s->fcell0[t]));
                if (j & 1) fb = _mm512_fmadd_ps(f, d, fb);
                else fa = _mm512_fmadd_ps(f, d, fa);
                if ((j & 15) == 15 || j == nblk - 1) {
                    const __m512 u = _mm512_add_ps(fa, fb);
                    D0 = _mm512_add_pd(D0, _mm512_cvtps_pd(_mm512_castps512_ps256(u)));
                    D1 = _mm512_add_pd(D1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(u), 1))));
                    fa = fb = _mm512_setzero_ps();
                }
            }
        }
        double den, qe;
        single_den(s, r, &den, &qe);
        single_outputs(s, i, _mm512_reduce_add_pd(_mm512_add_pd(D0, D1)), den, qe);
    }
}

/* AVX2: 32-byte blocks, 8 lanes (reads up to 31 bytes past the image: the array's last image
 * goes through the padded copy ovr) */
static VFS_AVX2 void scan_flat_avx2(const scan_t *s, const int sgn, const int fine) {
    const int HW = s->H * s->W, C = s->C, P = s->fP;
    const int64_t img_bytes = (int64_t)HW * C, nblk = (img_bytes + 31) / 32;
    const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    float *fc = s->sdf;
    for (int64_t i = 0; i < s->n; ++i) {
        const int64_t r = row_of(s, i);
        const uint8_t *x = s->feats + r * img_bytes;
        if (s->ovr && r == s->nrows - 1) {
            memcpy(s->ovr, x, (size_t)img_bytes);
            x = s->ovr;
        }
        const uint8_t *pf = s->feats + row_of(s, i + 1 < s->n ? i + 1 : i) * img_bytes;
        const float *sc = s->scale + r * HW;
        for (int c = 0; c < HW; ++c) fc[c] = s->fwq[c] * sc[c];
        __m256d D0 = _mm256_setzero_pd(), D1 = D0;
        __m256 fa = _mm256_setzero_ps(), fb = fa;
        int64_t j = 0;
        for (int64_t base = 0; j < nblk; base += s->fstep) {
            for (int t = 0; t < P && j < nblk; ++t, ++j) {
                const int64_t o = 32 * j;
                __m256i xv = _mm256_loadu_si256((const __m256i *)(x + o));
                if (sgn) xv = _mm256_xor_si256(xv, flip);
                if ((j & 1) == 0) __builtin_prefetch(pf + o, 0, 2);
                __m256i A = _mm256_madd_epi16(_mm256_maddubs_epi16(xv, _mm256_loadu_si256((const __m256i *)(s->qflat + o))), ones);
                if (sgn) A = _mm256_sub_epi32(A, _mm256_loadu_si256((const __m256i *)(s->fcorr + 8 * j)));
                __m256 d = _mm256_cvtepi32_ps(A);
                if (fine) {
                    __m256i B = _mm256_madd_epi16(_mm256_maddubs_epi16(xv, _mm256_loadu_si256((const __m256i *)(s->qflatlo + o))), ones);
                    if (sgn) B = _mm256_sub_epi32(B, _mm256_loadu_si256((const __m256i *)(s->fcorrlo + 8 * j)));
                    d = _mm256_fmadd_ps(_mm256_set1_ps(128.0f), d, _mm256_cvtepi32_ps(B));
                }
                const __m256 f = _mm256_permutevar8x32_ps(_mm256_loadu_ps(fc + base + s->fcell0[t]),
                                                          _mm256_loadu_si256((const __m256i *)(s->fidx + 8 * t)));
                if (j & 1) fb = _mm256_fmadd_ps(f, d, fb);
                else fa = _mm256_fmadd_ps(f, d, fa);
                if ((j & 15) == 15 || j == nblk - 1) {
                    const __m256 u = _mm256_add_ps(fa, fb);
                    D0 = _mm256_add_pd(D0, _mm256_cvtps_pd(_mm256_castps256_ps128(u)));
                    D1 = _mm256_add_pd(D1, _mm256_cvtps_pd(_mm256_extractf128_ps(u, 1)));
                    fa = fb = _mm256_setzero_ps();
                }
            }
        }
        double t4[4];
        _mm256_storeu_pd(t4, _mm256_add_pd(D0, D1));
        double den, qe;
        single_den(s, r, &den, &qe);
        single_outputs(s, i, (t4[0] + t4[1]) + (t4[2] + t4[3]), den, qe);
    }
}

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

/* where the 8-bit scan puts its lanes: chosen by cost (PATH_AUTO) or forced (tests) */
enum { PATH_AUTO = 0, PATH_CHANNELS = 1, PATH_OFFSETS = 2, PATH_SINGLE = 3 };

/* Estimated cost per image (ns, fitted to per-core timings on the AVX-512 machine of
 * DESIGN.md section 5, 7x7 to 28x28 grids, 40 to 1280 channels, 3x3 queries) of the two
 * layouts: channels in lanes = per valid (cell, k) pair one dot of ceil(C / 64) (AVX2: 32)
 * vector steps plus its horizontal sum; offsets in lanes = K x channel groups x position
 * vectors dot steps, the transpose (per cell and 64 channels) and the per-position sums.
 * AVX-512 with the int8 query (lane sums, scan_lsum_avx512): the channels cost is fitted on a
 * Zen 4 (512-bit operations split in two; streamed, 64-byte aligned features: 0.6 ns per pair
 * and 64 channels + 1.8 ns per pair) and divided by 1.45, the ratio of the offsets layout's
 * time there to this model of it: on Zen 4 the offsets layout's unaligned 64-byte loads cost
 * about twice what they do on the Zen 5 of the fit (16x16x384: offsets 11.9 us, channels 9.5
 * us, the model said 8.3 vs 10.8). The Zen 5 choices measured above are kept. AVX2 with the
 * 7-bit query: least squares over 12 grids on the Zen 4 (1 thread, streamed; the Zen 5 fit
 * had 14x14x112 on channels at 4.9 us against offsets 3.5, 28x28x64 at 18.3 against 10.4). */
static int choose_offsets_path(int level, int H, int W, int C, int h, int w, int K, int fine,
                               int pre) {
    const int OH = H - h + 1, OW = W - w + 1, HW = H * W;
    const int VL = level == LV_AVX512 ? 16 : 8;
    const double L = (double)(OH - 1) * W + OW, NV = ceil(L / VL), G4 = (C + 3) / 4;
    /* pre: the images come transposed (vfs_scan's inter), so the transposes cost nothing */
    const double D = (double)K * G4 * NV, T = pre ? 0.0 : (double)HW * ((C + 63) / 64);
    const double KL = (double)K * L;
    const double pairs = (double)OH * OW * K;
    double offs, chan;
    if (level == LV_AVX512) {
        offs = (fine ? 0.9 : 0.45) * D + 1.6 * T + 0.2 * KL;
        chan = fine ? (0.91 * pairs * ((C + 63) / 64) + 0.67 * pairs) * 1.15
                    : 0.41 * pairs * ((C + 63) / 64) + 1.24 * pairs;
    } else if (fine) {
        offs = 1.5 * D + 1.6 * T + 0.3 * KL;
        chan = 0.55 * pairs * ((C + 31) / 32) + 0.62 * pairs;
        chan += 0.15 * pairs * (C % 16); /* the int16 kernel's scalar tail */
    } else { /* 7-bit query: refitted on Zen 4 (12 grids 7x7 to 28x28, 40 to 1280 channels) */
        offs = 0.47 * D + 3.3 * T + 0.2 * KL;
        chan = 0.41 * pairs * ((C + 31) / 32) + 1.24 * pairs + 5.8 * HW;
    }
    return offs < chan;
}

/* inter: NULL, or the 8-bit images already transposed for the offsets path (what
 * cil_transpose512 / cil_transpose2 write, for the whole image): row r at inter + r * G4 * HWs
 * int32 words (G4 = ceil(C / 4), HWs = H * W rounded up to 16), word g * HWs + p = channels
 * 4g .. 4g + 3 of cell p (zero past C and past H * W; signed features as x + 128), 64-byte
 * aligned, with 64 zero words after the last row (the shifted reads of its last group).
 * The offsets path then reads it instead of transposing; every other path ignores it. */
int vfs_scan(int level, int dtype, const void *feats, int64_t n, int H, int W, int C,
             const float *scale, const float *sqnorm, const float *qerr2, int h, int w, int K,
             const int32_t *dy, const int32_t *dx, const float *m2, const void *qdata,
             const float *qscale, double qnorm, double eps_q, float *out_score,
             int32_t *out_offset, float *out_upper, float *out_lower, int qfmt,
             const int64_t *ids, int64_t nids, int path, const int32_t *inter) {
    if (n < 0 || H < 1 || W < 1 || C < 1 || h < 1 || w < 1 || h > H || w > W || K < 1)
        return -1;
    if (path < PATH_AUTO || path > PATH_SINGLE) return -1;
    const int64_t nrows = n;
    if (ids) {
        if (nids < 0) return -1;
        for (int64_t t = 0; t < nids; ++t)
            if (ids[t] < 0 || ids[t] >= nrows) return -1;
        n = nids;
    }
    if (dtype < DT_U8 || dtype > DT_F32) return -1;
    const int is8 = dtype == DT_U8 || dtype == DT_I8;
    if (is8 && (scale == NULL || qscale == NULL)) return -1;
    if (qfmt != QF_I16 && qfmt != QF_I8 && qfmt != QF_I7) return -1;
    if (qfmt != QF_I16 && !is8) return -1;
    if (qfmt == QF_I8 && level == LV_AVX2) return -2; /* int8 query: VNNI or generic */
    if (qfmt == QF_I7 && level == LV_AVX512) return -2; /* 7-bit query: AVX2 or generic */
    if (level == LV_AVX2 && vfs_cpu_level() < LV_AVX2) return -2;
    if (level == LV_AVX512 && vfs_cpu_level() < LV_AVX512) return -2;
    if (level < LV_GENERIC || level > LV_AVX512) return -2;
#ifndef VFS_X86
    if (level != LV_GENERIC) return -2;
#endif
    if (n == 0) return 0;

    const int OH = H - h + 1, OW = W - w + 1, O = OH * OW, HW = H * W;
    for (int k = 0; k < K; ++k)
        if (dy[k] < 0 || dy[k] >= h || dx[k] < 0 || dx[k] >= w) return -1;
    if ((int64_t)K * HW > 0x3fffffffLL) return -1;
    const int64_t qstride = qfmt != QF_I16 ? (int64_t)(C + 63) / 64 * 64 : (int64_t)C * (is8 ? 2 : 4);
    int qmax = 0; /* the largest |q| (8-bit features) */
    if (is8)
        for (int64_t t = 0; t < (int64_t)K * qstride / (qfmt == QF_I16 ? 2 : 1); ++t) {
            const int v = qfmt == QF_I16 ? ((const int16_t *)qdata)[t] : ((const int8_t *)qdata)[t];
            qmax = v > qmax ? v : (-v > qmax ? -v : qmax);
        }
    if (qfmt == QF_I7 && qmax > 63) return -1; /* would saturate vpmaddubsw's int16 sums */

    /* offsets in lanes / one offset: 8-bit features, SIMD levels, int16 query within
     * 128 * 64 + 64 (so that it splits into two int8 parts) */
    const int fine = qfmt == QF_I16;
    int offsets = 0, single = 0;
#ifdef VFS_X86
    if (is8 && level != LV_GENERIC && !(fine && qmax > 8191)) {
        /* one offset: flat (C % 4 == 0) or per cell; on its own (auto), the channels layout
         * for wide cells, where it measured as fast as flat */
        single = O == 1 && (path == PATH_SINGLE ||
                            (path == PATH_AUTO && ((C % 4 == 0 && C <= 512) || C < 256)));
        offsets = !single && (path == PATH_OFFSETS ||
                              (path == PATH_AUTO &&
                               choose_offsets_path(level, H, W, C, h, w, K, fine, inter != NULL)));
    }
#endif
    const int lanes = offsets || single; /* the setup both share */
    /* channels in lanes with lane sums (AVX-512, int8 query): scan_lsum_avx512 */
    const int lsum = level == LV_AVX512 && qfmt == QF_I8 && !lanes;
    const int VL = level == LV_AVX512 ? 16 : 8;
    const int L = (OH - 1) * W + OW, NV = (L + VL - 1) / VL, G4 = (C + 3) / 4;
    const int HWs = (HW + 15) / 16 * 16;
    int GT = (int)(CIL_TBYTES / (4 * (int64_t)HWs)) / 16 * 16; /* groups transposed at once */
    if (GT < 16) GT = 16;
    if (GT > (G4 + 15) / 16 * 16) GT = (G4 + 15) / 16 * 16;
    const int gmax = level == LV_GENERIC ? 4 : (qfmt == QF_I7 ? 10 : GMAX);

    /* count groups (channels in lanes) */
    int64_t ngroups = 0;
    for (int c = 0; c < HW && !lanes; ++c) {
        const int y = c / W, x = c % W;
        int nk = 0;
        for (int k = 0; k < K; ++k) {
            const int a = y - dy[k], b = x - dx[k];
            nk += (a >= 0 && a < OH && b >= 0 && b < OW);
        }
        ngroups += (nk + gmax - 1) / gmax;
    }
    group_t *groups = (group_t *)calloc((size_t)(ngroups > 0 ? ngroups : 1), sizeof(group_t));
    /* num, den, qe (H*W + 64 each), wq, wm (K each), dots (2, K, H*W) (channels in lanes) or
     * sd (H*W + 64) (offsets in lanes); zeroed, so that dots never written (cells no offset
     * uses) read as 0 and sd is 0 past the image */
    const int64_t S3 = 3 * ((int64_t)HW + 64);
    const int64_t nscratch = S3 + 2 * K + (lanes ? HW + 64 : 2 * (int64_t)K * HW) + 16;
    double *scratch = (double *)calloc((size_t)nscratch, sizeof(double));
    int32_t *kbuf = (int32_t *)malloc(sizeof(int32_t) * (size_t)(2 * K));
    /* kernels that read past a cell's end: the AVX2 7-bit channels and one-offset kernels
     * (whole 32-byte blocks) and the AVX2 offsets transpose (whole dwords) */
    const int need_ovr = level == LV_AVX2 && ((qfmt == QF_I7 && !offsets) || single || (offsets && C % 4 && !inter));
    uint8_t *ovr = need_ovr ? (uint8_t *)calloc((size_t)HW * (size_t)C + 64, 1) : NULL;
    int32_t *T = NULL, *accm = NULL, *q4 = NULL;
    const int QS = (C + 63) / 64 * 64, QW = QS / 4; /* int8 query row: bytes, words */
    if (offsets) {
        T = (int32_t *)aligned_alloc(64, (size_t)(GT * (int64_t)HWs + 64) * 4);
        accm = (int32_t *)malloc((size_t)(G4 > GT ? (int64_t)K * 2 * NV * VL * 2 + 16 : 16) * 4);
    }
    /* lane sums: 2 images x (HW + 8) positions x 8 floats, the query rows (64-byte aligned
     * copy), sq_k as float (K), the signed corrections (8 K) */
    float *lbuf = NULL;
    const size_t lfl = 16 * ((size_t)HW + 8), lqb = (size_t)K * (size_t)qstride;
    if (lsum) {
        const size_t bytes = 4 * lfl + lqb + 4 * 9 * (size_t)K + 64;
        lbuf = (float *)aligned_alloc(64, (bytes + 63) / 64 * 64);
        if (lbuf) {
            memset(lbuf, 0, bytes);
            memcpy(lbuf + lfl, qdata, lqb);
        }
    }
    const void *qrows = lbuf ? (const void *)(lbuf + lfl) : qdata;
    if (lanes) /* rows (2 K QW words), corr (2K), offk (K), cvec (32 K), vmask (HW / 8 + 64 B) */
        q4 = (int32_t *)calloc((size_t)(2 * (int64_t)K * QW + 35 * (int64_t)K + HW / 32 + 16), 4);
    if (!groups || !scratch || !kbuf || (need_ovr && !ovr) || (offsets && (!T || !accm)) ||
        (lanes && !q4) || (lsum && !lbuf)) {
        free(lbuf);
        free(groups);
        free(scratch);
        free(kbuf);
        free(ovr);
        free(T);
        free(accm);
        free(q4);
        return -3;
    }
    int gi = 0;
    for (int c = 0; c < HW && !lanes; ++c) {
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
                g->q[t] = (const uint8_t *)qrows + (int64_t)k * qstride;
                g->dst[t] = k * HW + c;
                g->kq[t] = k;
                g->pos[t] = c - (dy[k] * W + dx[k]);
                g->corr[t] = qfmt != QF_I16 && dtype == DT_I8 ? 128 * qsum8((const int8_t *)g->q[t], C) : 0;
            }
            t0 += G;
        }
    }

    double *wq = scratch + S3, *wm = wq + K;
    for (int k = 0; k < K; ++k) {
        wq[k] = is8 ? (double)qscale[k] : 1.0;
        wm[k] = (double)m2[k];
    }

    static const int esizes[4] = {1, 1, 2, 4};
    scan_t s;
    memset(&s, 0, sizeof s);
    s.feats = (const uint8_t *)feats;
    s.n = n;
    s.nrows = nrows;
    s.ids = ids;
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
    s.wmf = m2;
    s.qnorm = qnorm;
    s.eps_q = is8 ? eps_q : 0.0;
    s.slack = VFS_SLACK;
    s.out_score = out_score;
    s.out_offset = out_offset;
    s.out_upper = out_upper;
    s.out_lower = out_lower;
    s.num = scratch;
    s.den = scratch + HW + 64;
    s.qe = scratch + 2 * (HW + 64);
    s.dots = wm + K;
    s.ovr = ovr;
    if (lsum) {
        float *wqf = (float *)((uint8_t *)(lbuf + lfl) + lqb);
        int32_t *cv8 = (int32_t *)(wqf + K);
        for (int k = 0; k < K; ++k) {
            const int8_t *q = (const int8_t *)qdata + (int64_t)k * qstride;
            wqf[k] = qscale[k];
            for (int c = 0; c < C; ++c) cv8[8 * k + (c % 32) / 4] += 128 * q[c];
        }
        s.lsum = lbuf;
        s.wqf = wqf;
        s.cv8 = cv8;
        s.slack = CIL_SLACK(K);
    }

    if (lanes) {
        /* the query's int8 rows (fine: q = 128 hi + lo, both int8), zero past C, read as
         * 4-byte channel groups by the offsets path; the signed-feature corrections, per k and
         * per lane (cvec, the one-offset path); and the cells' offsets */
        int32_t *qh = q4, *ql = q4 + (int64_t)K * QW, *corr = ql + (int64_t)K * QW;
        int32_t *offk = corr + 2 * K, *cvec = offk + K;
        int8_t *bh = (int8_t *)qh, *bl = (int8_t *)ql;
        const int lb = level == LV_AVX512 ? 64 : 32; /* bytes per vector: lane = (c % lb) / 4 */
        for (int k = 0; k < K; ++k) {
            int32_t sh = 0, sl = 0;
            for (int c = 0; c < C; ++c) {
                int v, vl = 0;
                if (fine) {
                    const int q = ((const int16_t *)qdata)[(int64_t)k * C + c];
                    v = (q + 64) >> 7; /* floor((q + 64) / 128): |v| <= 64, lo in [-64, 63] */
                    vl = q - 128 * v;
                } else {
                    v = ((const int8_t *)qdata)[(int64_t)k * qstride + c];
                }
                bh[(int64_t)k * QS + c] = (int8_t)v;
                bl[(int64_t)k * QS + c] = (int8_t)vl;
                sh += v;
                sl += vl;
                cvec[32 * k + (c % lb) / 4] += 128 * v;
                cvec[32 * k + 16 + (c % lb) / 4] += 128 * vl;
            }
            corr[k] = 128 * sh;
            corr[K + k] = 128 * sl;
            offk[k] = dy[k] * W + dx[k];
        }
        s.q8 = bh;
        s.q8lo = bl;
        s.cvec = cvec;
        s.QS = QS;
        s.QW = QW;
        s.offk = offk;
        s.T = T;
        s.accm = accm;
        float *fs = (float *)s.dots; /* HW + 64 doubles: room for two float arrays */
        s.sdf = fs;
        s.numf = (float *)s.num;
        s.qef = (float *)s.qe;
        s.q4 = qh;
        s.q4lo = fine ? ql : NULL;
        s.corr = corr;
        uint8_t *vmask = (uint8_t *)(cvec + 32 * K);
        for (int p = 0; p < L; ++p)
            if (p % W < OW) vmask[p >> 3] |= (uint8_t)(1u << (p & 7));
        s.vmask = vmask;
        s.HWs = HWs;
        s.NV = NV;
        s.NS = 2 * NV;
        s.G4 = G4;
        s.GT = GT;
        s.inter = inter;
    }

    /* the flat one-offset layout (see scan_flat_avx512) */
    void *flatbuf = NULL;
    if (single && C % 4 == 0) {
        const int lb = level == LV_AVX512 ? 64 : 32, nl = lb / 4;
        int g = lb, t = C; /* gcd(C, lb) */
        while (t) {
            const int u = g % t;
            g = t;
            t = u;
        }
        const int P = C / g;
        const int64_t img = (int64_t)HW * C, nblk = (img + lb - 1) / lb;
        const size_t bytes = 2 * (size_t)(img + 64) + 2 * 4 * (size_t)(nblk * nl + 16) +
                             4 * (size_t)(P * nl + P + HW + 16);
        flatbuf = calloc(bytes, 1);
        if (flatbuf) {
            int8_t *qf = (int8_t *)flatbuf, *qfl = qf + img + 64;
            int32_t *fcr = (int32_t *)(qfl + img + 64), *fcrl = fcr + nblk * nl + 16;
            int32_t *fidx = fcrl + nblk * nl + 16, *fcell0 = fidx + P * nl;
            float *fwq = (float *)(fcell0 + P);
            for (int k = 0; k < K; ++k) {
                const int c0 = dy[k] * W + dx[k];
                fwq[c0] = (float)wq[k];
                for (int c = 0; c < C; ++c) {
                    const int64_t b = (int64_t)c0 * C + c;
                    qf[b] = s.q8[(int64_t)k * QS + c];
                    qfl[b] = s.q8lo[(int64_t)k * QS + c];
                    fcr[(b / lb) * nl + (b % lb) / 4] += 128 * qf[b];
                    fcrl[(b / lb) * nl + (b % lb) / 4] += 128 * qfl[b];
                }
            }
            for (int tb = 0; tb < P; ++tb) {
                fcell0[tb] = (int)((int64_t)lb * tb / C);
                for (int l = 0; l < nl; ++l)
                    fidx[tb * nl + l] = (int)(((int64_t)lb * tb + 4 * l) / C) - fcell0[tb];
            }
            s.qflat = qf;
            s.qflatlo = qfl;
            s.fcorr = fcr;
            s.fcorrlo = fcrl;
            s.fidx = fidx;
            s.fcell0 = fcell0;
            s.fwq = fwq;
            s.fP = P;
            s.fstep = (int)((int64_t)lb * P / C);
        }
    }

    switch (level) {
#ifdef VFS_X86
    case LV_AVX512:
        if (flatbuf) {
            scan_flat_avx512(&s, dtype == DT_I8, fine);
            break;
        }
        if (single) {
            scan_single_avx512(&s, dtype == DT_I8, fine);
            break;
        }
        if (offsets) {
            scan_cil_avx512(&s, dtype == DT_I8, fine);
            break;
        }
        if (lsum) {
            scan_lsum_avx512(&s, dtype == DT_I8);
            break;
        }
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
        if (flatbuf) {
            scan_flat_avx2(&s, dtype == DT_I8, fine);
            break;
        }
        if (single) {
            scan_single_avx2(&s, dtype == DT_I8, fine);
            break;
        }
        if (offsets) {
            scan_cil_avx2(&s, dtype == DT_I8, fine);
            break;
        }
        if (qfmt == QF_I7) {
            if (dtype == DT_U8) scan_u8q7_avx2(&s);
            else scan_i8q7_avx2(&s);
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
    free(T);
    free(accm);
    free(q4);
    free(flatbuf);
    free(lbuf);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* exact re-scoring (the refine step): float32 features, float64 sums        */
/* ------------------------------------------------------------------------ */
/*
 * Best score and its offset (lowest on ties) of m float32 images, in double. Every dot
 * <x_cell, Q_k> and squared norm |x_cell|^2 sums its channels in a fixed lane pattern (lane l
 * of the vector takes channels l, l + VL, ...; then a fixed reduction), and num / den add the
 * pairs in a fixed order, so an image's result depends on its values alone, not on where it
 * sits in memory or in the batch: identical rows tie exactly (and are ranked by id). Each cell
 * is loaded once for all the query cells (up to 8 at a time) it meets. Levels as vfs_scan
 * (AVX-512: 8 doubles per vector; AVX2: 4; generic: 4 scalar lanes).
 */
#define EX_G 8

/* out[g] = <x, q[g]> and, when sq, *sq = |x|^2, for g < G */
static void exact_dots_generic(const float *x, const double *const *q, int G, int C, double *out,
                               double *sq) {
    for (int g = 0; g < G; ++g) {
        double a[4] = {0.0, 0.0, 0.0, 0.0};
        for (int j = 0; j < C; ++j) a[j & 3] += (double)x[j] * q[g][j];
        out[g] = (a[0] + a[1]) + (a[2] + a[3]);
    }
    if (sq) {
        double a[4] = {0.0, 0.0, 0.0, 0.0};
        for (int j = 0; j < C; ++j) a[j & 3] += (double)x[j] * (double)x[j];
        *sq = (a[0] + a[1]) + (a[2] + a[3]);
    }
}

#ifdef VFS_X86
static VFS_AVX512 void exact_dots_avx512(const float *x, const double *const *q, int G, int C,
                                         double *out, double *sq) {
    __m512d acc[EX_G], s2 = _mm512_setzero_pd();
    for (int g = 0; g < EX_G; ++g) acc[g] = _mm512_setzero_pd();
    for (int j = 0; j < C; j += 8) { /* masked tail: the lanes past C add exact zeros */
        const __mmask8 m = C - j >= 8 ? 0xff : (__mmask8)((1u << (C - j)) - 1u);
        const __m512d xv = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, x + j));
        s2 = _mm512_fmadd_pd(xv, xv, s2);
#pragma GCC unroll 8
        for (int g = 0; g < EX_G; ++g)
            if (g < G) acc[g] = _mm512_fmadd_pd(xv, _mm512_maskz_loadu_pd(m, q[g] + j), acc[g]);
    }
    for (int g = 0; g < G; ++g) out[g] = _mm512_reduce_add_pd(acc[g]);
    if (sq) *sq = _mm512_reduce_add_pd(s2);
}

VFS_INLINE VFS_AVX2 double hsum4_pd(__m256d v) {
    const __m128d t = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(t, _mm_unpackhi_pd(t, t)));
}

static VFS_AVX2 void exact_dots_avx2(const float *x, const double *const *q, int G, int C,
                                     double *out, double *sq) {
    __m256d acc[EX_G], s2 = _mm256_setzero_pd();
    for (int g = 0; g < EX_G; ++g) acc[g] = _mm256_setzero_pd();
    int j = 0;
    for (; j + 4 <= C; j += 4) {
        const __m256d xv = _mm256_cvtps_pd(_mm_loadu_ps(x + j));
        s2 = _mm256_fmadd_pd(xv, xv, s2);
#pragma GCC unroll 8
        for (int g = 0; g < EX_G; ++g)
            if (g < G) acc[g] = _mm256_fmadd_pd(xv, _mm256_loadu_pd(q[g] + j), acc[g]);
    }
    double t[EX_G], t2 = hsum4_pd(s2);
    for (int g = 0; g < G; ++g) t[g] = hsum4_pd(acc[g]);
    for (; j < C; ++j) { /* scalar tail, in order */
        const double xj = (double)x[j];
        t2 += xj * xj;
        for (int g = 0; g < G; ++g) t[g] += xj * q[g][j];
    }
    for (int g = 0; g < G; ++g) out[g] = t[g];
    if (sq) *sq = t2;
}
#endif

/*
 * feats (m, H, W, C) float32; query: K cells (dy, dx) in an h x w box, m2[K], Q (K, C) double
 * (= m2_k q_k), qnorm. Outputs best[m] (double) and offset[m] (a * (W - w + 1) + b).
 * Returns 0, or < 0 on bad arguments / out of memory.
 */
int vfs_exact(int level, const float *feats, int64_t m, int H, int W, int C, int h, int w,
              int K, const int32_t *dy, const int32_t *dx, const double *m2, const double *Q,
              double qnorm, double *best, int32_t *offset) {
    if (m < 0 || H < 1 || W < 1 || C < 1 || h < 1 || w < 1 || h > H || w > W || K < 1) return -1;
    if (level < LV_GENERIC || level > LV_AVX512 || level > vfs_cpu_level()) return -2;
    for (int k = 0; k < K; ++k)
        if (dy[k] < 0 || dy[k] >= h || dx[k] < 0 || dx[k] >= w) return -1;
    const int OH = H - h + 1, OW = W - w + 1, HW = H * W, O = OH * OW;
    /* per cell, the (k, offset) pairs it takes part in, k ascending */
    int32_t *start = (int32_t *)malloc(sizeof(int32_t) * (size_t)(HW + 1));
    int32_t *pk = (int32_t *)malloc(sizeof(int32_t) * (size_t)O * K);
    int32_t *po = (int32_t *)malloc(sizeof(int32_t) * (size_t)O * K);
    double *sq = (double *)malloc(sizeof(double) * (size_t)(HW + 2 * O + EX_G));
    if (!start || !pk || !po || !sq) {
        free(start);
        free(pk);
        free(po);
        free(sq);
        return -3;
    }
    int np = 0;
    for (int c = 0; c < HW; ++c) {
        start[c] = np;
        const int y = c / W, xx = c % W;
        for (int k = 0; k < K; ++k) {
            const int a = y - dy[k], b = xx - dx[k];
            if (a >= 0 && a < OH && b >= 0 && b < OW) {
                pk[np] = k;
                po[np++] = a * OW + b;
            }
        }
    }
    start[HW] = np;
    double *num = sq + HW, *den = num + O, d[EX_G];
    const double *qg[EX_G];
    for (int64_t i = 0; i < m; ++i) {
        const float *x = feats + i * (int64_t)HW * C;
        for (int o = 0; o < O; ++o) num[o] = den[o] = 0.0;
        for (int c = 0; c < HW; ++c) {
            const float *xc = x + (int64_t)c * C;
            double sqc = 0.0;
            for (int t0 = start[c]; t0 < start[c + 1]; t0 += EX_G) {
                const int G = start[c + 1] - t0 < EX_G ? start[c + 1] - t0 : EX_G;
                for (int g = 0; g < G; ++g) qg[g] = Q + (int64_t)pk[t0 + g] * C;
                double *want = t0 == start[c] ? &sqc : NULL;
#ifdef VFS_X86
                if (level == LV_AVX512) exact_dots_avx512(xc, qg, G, C, d, want);
                else if (level == LV_AVX2) exact_dots_avx2(xc, qg, G, C, d, want);
                else exact_dots_generic(xc, qg, G, C, d, want);
#else
                exact_dots_generic(xc, qg, G, C, d, want);
#endif
                for (int g = 0; g < G; ++g) num[po[t0 + g]] += d[g];
            }
            for (int t = start[c]; t < start[c + 1]; ++t) den[po[t]] += m2[pk[t]] * sqc;
        }
        double bs = -INFINITY;
        int bo = 0;
        for (int o = 0; o < O; ++o) {
            const double sc = den[o] > 0.0 && qnorm > 0.0 ? num[o] / (qnorm * sqrt(den[o])) : 0.0;
            if (sc > bs) { /* strictly greater: the lowest offset wins ties */
                bs = sc;
                bo = o;
            }
        }
        best[i] = bs > -INFINITY ? bs : 0.0;
        offset[i] = bo;
    }
    free(start);
    free(pk);
    free(po);
    free(sq);
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

/* ------------------------------------------------------------------------ */
/* the cell-interleaved copy (vfs_scan's inter): n 8-bit images transposed   */
/* ------------------------------------------------------------------------ */
/* out: n * G4 * HWs int32 words (see vfs_scan), written in full (zeros past C and H * W);
 * AVX-512 through the offsets path's own transpose, else word by word */
#ifdef VFS_X86
static VFS_AVX512 void interleave_avx512(const uint8_t *x, int HW, int C, int HWs, int G4,
                                         int sgn, int32_t *out) {
    for (int cb = 0; cb * 16 < G4; ++cb) {
        int32_t *T = out + (int64_t)cb * 16 * HWs;
        cil_transpose512(x, HW, C, cb, HWs, sgn, T);
        const int ng = G4 - 16 * cb < 16 ? G4 - 16 * cb : 16;
        for (int g = 0; g < ng; ++g)
            for (int p = HW; p < HWs; ++p) T[(int64_t)g * HWs + p] = 0;
    }
}
#endif

int vfs_interleave(int level, const uint8_t *feats, int64_t n, int H, int W, int C, int sgn,
                   int32_t *out) {
    if (n < 0 || H < 1 || W < 1 || C < 1) return -1;
    const int HW = H * W, HWs = (HW + 15) / 16 * 16, G4 = (C + 3) / 4;
    const int64_t img = (int64_t)HW * C, stride = (int64_t)G4 * HWs;
    for (int64_t i = 0; i < n; ++i) {
        const uint8_t *x = feats + i * img;
        int32_t *o = out + i * stride;
#ifdef VFS_X86
        if (level == LV_AVX512 && vfs_cpu_level() >= LV_AVX512) {
            interleave_avx512(x, HW, C, HWs, G4, sgn, o);
            continue;
        }
#endif
        (void)level;
        memset(o, 0, (size_t)stride * 4);
        for (int p = 0; p < HW; ++p)
            for (int c = 0; c < C; ++c) {
                const uint8_t b = (uint8_t)(x[(int64_t)p * C + c] ^ (sgn ? 0x80 : 0));
                ((uint8_t *)(o + (int64_t)(c / 4) * HWs + p))[c % 4] = b;
            }
    }
    return 0;
}
