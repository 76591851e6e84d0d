#include "daemon/detect/transitions.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define H TR_HALF

/* Settings of level-v2 besides those in the header (changing any changes
 * the numbers: bump TR_METHOD). */
#define SPIKE_LEN 2        /* an outlier is at most this many consecutive checkpoints */
#define SPIKE_NB 2         /* neighbours on each side that give a spike's baseline */
#define SPIKE_WIN 10       /* points on each side that give its local noise and level */
#define SPIKE_MASK 5.0     /* an outlier's excursion is at least this many local noise scales ... */
#define SPIKE_RET 0.5      /* ... its sides (and its baseline and the level around) differ by at most this share ... */
#define SPIKE_MIN_REL 0.02 /* ... and it is at least this share of the series' range */
#define SPIKE_GLOBAL 1.0   /* the local noise is at least this share of the whole series' */
#define SPIKE_K 7.0        /* an outlier of at least this many noise scales is a spike event */
#define TRIM_KEEP 0.8      /* noise scales: the RMS distance from the median of the nearest 80% ... */
#define TRIM_CORR 1.5128   /* ... times this: 1 / sqrt(E[Z^2 | |Z| < z_0.9]) for normal Z */
#define MED_VAR 0.4487     /* Var(median of 3 iid normals) / sigma^2 */
#define RW_EXTRA 1.111     /* a random walk's extra width between two 3-point levels: (H-1)(2H-1)/(3H) */
#define DRIFT_Z 3.0        /* a drift is taken out when its slope is this many standard errors from 0 */
#define QUANT_REL 0.1      /* a quantum is at most this share of the values' range */
#define MIN_REL 0.01       /* no change below 1% of the smoothed series' range is reported */
#define PREC_REL 1e-6      /* nor one below this share of the values' magnitude (float32 metrics) */
#define MIN_REF 8          /* pairs or windows needed to estimate a scale from them */
#define EXTENT_FRAC 0.9    /* an extent holds this share of the largest change around its core */
#define FLAT 0.34          /* a stage's level moves by at most this share of either step beside it */

#if TR_HALF != 3
#error "MED_VAR and RW_EXTRA are computed for TR_HALF 3"
#endif

/* One series being examined.  The finite points that are not spikes, in
 * order: their steps, raw and detrended values, the levels on either side
 * of every point and the noise model. */
struct scan {
    int n;
    long long *s;    /* steps (n) */
    double *v;       /* raw values (n) */
    double *u;       /* v - mu * (step - s[0]) (n) */
    double *m;       /* u smoothed by a running median of 3 (n) */
    double *lv, *rv; /* L(a), R(b) of u (n; valid where the window fits) */
    double *c, *sc;  /* centre and scale of D per width w = 1 .. n - 5, for the current exclusions (n + 1) */
    int wmax;
    double A, B;     /* white-noise and random-walk parts of the noise model, whole series */
    double rho;      /* B / (A + B) of the last noise_widths: the random walk's share */
    double p_max;    /* the false-positive rate a transition may have */
    double best_rho; /* rho of the best score scan_segments saw */
    double pfloor;   /* no point-noise scale below this */
    double minchg;   /* no change below this is reported */
    int *cov, *cum;  /* points inside accepted transitions (n), prefix sums (n + 1) */
    double *tmp;     /* scratch (2n) */
    int nfound, capfound;
    struct tr_event *found;
};

static void swapd(double *a, double *b)
{
    double t = *a;
    *a = *b;
    *b = t;
}

/* The k-th smallest of a[0..n) (0-based); a is reordered, a[k] holds it
 * and everything before k is <= it (Hoare's selection). */
static double select_k(double *a, int n, int k)
{
    int lo = 0, hi = n - 1;
    while (hi > lo) {
        int mid = lo + (hi - lo) / 2;
        if (a[mid] < a[lo])
            swapd(&a[mid], &a[lo]);
        if (a[hi] < a[lo])
            swapd(&a[hi], &a[lo]);
        if (a[hi] < a[mid])
            swapd(&a[hi], &a[mid]);
        double piv = a[mid];
        int i = lo, j = hi;
        while (i <= j) {
            while (a[i] < piv)
                i++;
            while (a[j] > piv)
                j--;
            if (i <= j) {
                swapd(&a[i], &a[j]);
                i++;
                j--;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            break;
    }
    return a[k];
}

/* Median of a[0..n), n >= 1 (the mean of the middle two for even n); a is
 * reordered. */
static double median_inplace(double *a, int n)
{
    int k = n / 2;
    double hi = select_k(a, n, k);
    if (n % 2)
        return hi;
    double lo = a[0];
    for (int i = 1; i < k; i++)
        if (a[i] > lo)
            lo = a[i];
    return lo + (hi - lo) / 2;
}

static double med3(double a, double b, double c)
{
    if (a > b)
        swapd(&a, &b);
    if (b > c)
        b = c;
    return a > b ? a : b;
}

/* Median of up to 2 SPIKE_NB values, copied (x is left alone). */
static double median_small(const double *x, int k)
{
    double t[2 * SPIKE_NB];
    memcpy(t, x, sizeof *t * (size_t)k);
    return median_inplace(t, k);
}

/* Scale of x[0..k) around its median (returned in *centre), sigma for
 * normal data, by 1.4826 times the median absolute deviation: half of x
 * may be anything (a series' windows straddling its transitions).  x is
 * overwritten. */
static double mad_scale(double *x, int k, double *centre)
{
    double c = median_inplace(x, k);
    for (int j = 0; j < k; j++)
        x[j] = fabs(x[j] - c);
    *centre = c;
    return 1.4826 * median_inplace(x, k);
}

/* Scale of x[0..k) around its median (returned in *centre), sigma for
 * normal data, by the root mean square of the distances from the median
 * over the nearest TRIM_KEEP of them, times TRIM_CORR: about twice as
 * efficient as the MAD, for differences of which only a few straddle a
 * transition.  x is overwritten. */
static double trimmed_scale(double *x, int k, double *centre)
{
    double c = median_inplace(x, k);
    for (int j = 0; j < k; j++)
        x[j] = fabs(x[j] - c);
    *centre = c;
    int keep = (int)(TRIM_KEEP * k + 0.5);
    if (keep < 1)
        keep = 1;
    if (keep < k)
        (void)select_k(x, k, keep - 1);
    double ss = 0;
    for (int j = 0; j < keep; j++)
        ss += x[j] * x[j];
    return TRIM_CORR * sqrt(ss / keep);
}

/* ---- spikes ---- */

/* An outlier masked by find_spikes: its score and the noise it was
 * judged against. */
struct cand {
    double score, noise;
};

/* Median of the raw values of up to SPIKE_NB unmasked points on each side
 * of the run [i0, i1] (at least one each side is there). */
static double run_baseline(const double *v, const unsigned char *mask, int n, int i0, int i1)
{
    double nb[2 * SPIKE_NB];
    int k = 0;
    for (int j = i0 - 1, c = 0; j >= 0 && c < SPIKE_NB; j--)
        if (!mask[j]) {
            nb[k++] = v[j];
            c++;
        }
    for (int j = i1 + 1, c = 0; j < n && c < SPIKE_NB; j++)
        if (!mask[j]) {
            nb[k++] = v[j];
            c++;
        }
    return median_small(nb, k);
}

/* The outliers and spikes of the finite series (s, v, n), detrended values
 * u.  Repeatedly, over the points not masked yet (idx), an excursion is
 * one to SPIKE_LEN consecutive of them, not the first or the last, that
 * leaves the level of its neighbours and comes back.  Baseline: the
 * median of the SPIKE_NB points on each side; excursion: the smaller
 * distance of its points from the baseline, all on one side; noise: the
 * MAD scale of the differences between consecutive points within
 * SPIKE_WIN either side that involve none of its points, over sqrt 2 (at
 * least floor, and SPIKE_GLOBAL times that scale of all the differences
 * between consecutive points not masked).  An excursion of at least SPIKE_MASK noise scales and
 * SPIKE_MIN_REL of the range, whose two sides' medians differ by at most
 * SPIKE_RET of it, is an outlier; the highest scoring one is masked
 * (mask[j] = 1, info[j] its score and noise) and the search repeats, until
 * none is left or a quarter of the points are masked.  So a spike is
 * masked first and the point it left behind on its way back, judged
 * against the points around both, next.  Runs of consecutive masked
 * points are the events: with an outlier of SPIKE_K noise scales or more
 * in it, a run is a spike (into ev, at most cap, the highest scores; start
 * and end its first and last point, peak the farthest from the raw
 * baseline around it).  idx is scratch for n ints, tmp for 2 SPIKE_WIN
 * values, gtmp for n.  Returns the number of spike events. */
static int find_spikes(const long long *s, const double *v, const double *u, int n, double floor,
                       double range, unsigned char *mask, struct cand *info, int *idx, double *tmp,
                       double *gtmp, struct tr_event *ev, int cap)
{
    int masked = 0;
    while (4 * masked < n) {
        int m = 0;
        for (int i = 0; i < n; i++)
            if (!mask[i])
                idx[m++] = i;
        /* half the noise of all the differences: a floor under the local
         * noise, which a few differences estimate poorly */
        for (int q = 0; q + 1 < m; q++)
            gtmp[q] = u[idx[q + 1]] - u[idx[q]];
        double gc, global = m > 4 ? SPIKE_GLOBAL * mad_scale(gtmp, m - 1, &gc) / sqrt(2.0) : 0;
        double fl = global > floor ? global : floor;
        int bj = -1, bk = 0;
        double bs = 0, bn = 0;
        for (int j = 1; j + 1 < m; j++)
            for (int k = 1; k <= SPIKE_LEN && j + k < m; k++) {
                double left[SPIKE_NB], right[SPIKE_NB], nbv[2 * SPIKE_NB];
                int nl = 0, nr = 0;
                for (int q = j - 1; q >= 0 && nl < SPIKE_NB; q--)
                    left[nl++] = u[idx[q]];
                for (int q = j + k; q < m && nr < SPIKE_NB; q++)
                    right[nr++] = u[idx[q]];
                memcpy(nbv, left, sizeof *nbv * (size_t)nl);
                memcpy(nbv + nl, right, sizeof *nbv * (size_t)nr);
                double base = median_small(nbv, nl + nr);
                double e0 = u[idx[j]] - base, emin = fabs(e0);
                int same = 1;
                for (int q = j + 1; q < j + k; q++) {
                    double eq = u[idx[q]] - base;
                    same &= (eq > 0) == (e0 > 0) && eq != 0;
                    emin = fabs(eq) < emin ? fabs(eq) : emin;
                }
                if (!same || !(emin > 0) || emin < SPIKE_MIN_REL * range)
                    continue;
                if (fabs(median_small(left, nl) - median_small(right, nr)) > SPIKE_RET * emin)
                    continue;
                /* and the baseline is the level around (two spikes side by
                 * side make the points between them no excursion) */
                int nc = 0;
                for (int q = j - SPIKE_WIN; q < j + k + SPIKE_WIN; q++)
                    if (q >= 0 && q < m && (q < j || q >= j + k))
                        tmp[nc++] = u[idx[q]];
                if (fabs(median_inplace(tmp, nc) - base) > SPIKE_RET * emin)
                    continue;
                int nd = 0;
                for (int q = j - SPIKE_WIN; q + 1 < j; q++)
                    if (q >= 0)
                        tmp[nd++] = u[idx[q + 1]] - u[idx[q]];
                for (int q = j + k; q < j + k - 1 + SPIKE_WIN && q + 1 < m; q++)
                    tmp[nd++] = u[idx[q + 1]] - u[idx[q]];
                double noise = 0, c;
                if (nd >= 4)
                    noise = mad_scale(tmp, nd, &c) / sqrt(2.0);
                noise = noise > fl ? noise : fl;
                double score = emin / noise;
                if (score >= SPIKE_MASK && score > bs) {
                    bs = score;
                    bn = noise;
                    bj = j;
                    bk = k;
                }
            }
        if (bj < 0)
            break;
        for (int q = bj; q < bj + bk; q++) {
            mask[idx[q]] = 1;
            info[idx[q]] = (struct cand){bs, bn};
            masked++;
        }
    }
    /* the runs of masked points: spikes where one scored SPIKE_K or more */
    int out = 0;
    for (int i0 = 0; i0 < n;) {
        if (!mask[i0]) {
            i0++;
            continue;
        }
        int i1 = i0, top = i0;
        while (i1 + 1 < n && mask[i1 + 1])
            i1++;
        for (int j = i0; j <= i1; j++)
            top = info[j].score > info[top].score ? j : top;
        if (info[top].score >= SPIKE_K) {
            double base = run_baseline(v, mask, n, i0, i1);
            int peak = i0;
            for (int j = i0 + 1; j <= i1; j++)
                if (fabs(v[j] - base) > fabs(v[peak] - base))
                    peak = j;
            struct tr_event e = {.kind = TR_KIND_SPIKE, .start_step = s[i0], .peak_step = s[peak],
                                 .end_step = s[i1], .magnitude = v[peak] - base, .score = info[top].score,
                                 .p_value = NAN, .noise = info[top].noise, .before = base, .after = v[peak]};
            /* keep the cap highest, by insertion */
            if (out < cap || ev[out - 1].score < e.score) {
                int at = out < cap ? out++ : cap - 1;
                while (at > 0 && ev[at - 1].score < e.score) {
                    ev[at] = ev[at - 1];
                    at--;
                }
                ev[at] = e;
            }
        }
        i0 = i1 + 1;
    }
    return out;
}

/* ---- levels and noise ---- */

/* Is any of the points [p0, p1] inside [x0, x1] or an accepted transition? */
static int touches(const struct scan *sc, int p0, int p1, int x0, int x1)
{
    return (p1 >= x0 && p0 <= x1) || sc->cum[p1 + 1] - sc->cum[p0] > 0;
}

/* White noise of variance A/2 and a random walk of variance B per
 * checkpoint, from the differences that touch neither [x0, x1] nor an
 * accepted transition: s1 the trimmed scale of the first differences
 * u[i+1] - u[i], s2 that of the second differences u[i+2] - 2 u[i+1] +
 * u[i], each about its median.  For white noise plus a random walk
 * s1^2 = A + B and s2^2 = 3 A + 2 B, so A = s2^2 - 2 s1^2 and
 * B = 3 s1^2 - s2^2, each clipped at 0 (then the other is s1^2).  A
 * smooth trend whose slope changes adds to s1, not s2: it counts as a
 * random walk, so a slow bend is judged against itself and is no
 * transition.  With fewer than MIN_REF clean differences of either kind,
 * returns -1 and leaves *A, *B alone. */
static int vario_fit(struct scan *sc, int x0, int x1, double *A, double *B)
{
    int n = sc->n, k1 = 0, k2 = 0;
    double *d = sc->tmp, *t = sc->tmp + n;
    for (int i = 0; i + 1 < n; i++)
        d[i] = sc->u[i + 1] - sc->u[i];
    for (int i = 0; i + 1 < n; i++)
        if (!touches(sc, i, i + 1, x0, x1))
            t[k1++] = d[i];
    if (k1 < MIN_REF)
        return -1;
    double c, s1 = trimmed_scale(t, k1, &c);
    for (int i = 0; i + 2 < n; i++)
        if (!touches(sc, i, i + 2, x0, x1))
            t[k2++] = d[i + 1] - d[i];
    if (k2 < MIN_REF)
        return -1;
    double s2 = trimmed_scale(t, k2, &c);
    double a = s2 * s2 - 2 * s1 * s1, b = 3 * s1 * s1 - s2 * s2;
    if (a < 0) {
        a = 0;
        b = s1 * s1;
    } else if (b < 0) {
        b = 0;
        a = s1 * s1;
    }
    *A = a;
    *B = b;
    return 0;
}

/* The noise of a change over each width w (1 .. n - 2H + 1), for the
 * series without the points [x0, x1] and the accepted transitions: sc->c[w]
 * the median of all windows' D (what the series does anyway over w
 * checkpoints; 0 for w > wmax) and sc->sc[w] the largest of the MAD scale
 * of the clean windows' D (with at least MIN_REF of them), the variogram model sqrt(MED_VAR A + B (w + RW_EXTRA))
 * and the floor sqrt(MED_VAR * 2) pfloor. */
static void noise_widths(struct scan *sc, int x0, int x1)
{
    int n = sc->n;
    double A = sc->A, B = sc->B;
    (void)vario_fit(sc, x0, x1, &A, &B);
    double fl = sqrt(2.0 * MED_VAR) * sc->pfloor;
    if (A < 2.0 * sc->pfloor * sc->pfloor)
        A = 2.0 * sc->pfloor * sc->pfloor;
    sc->rho = A + B > 0 ? B / (A + B) : 0;
    for (int w = 1; w <= n - 2 * H + 1; w++) {
        int k = 0;
        double centre = 0, s = 0;
        for (int i = H - 1; w <= sc->wmax && i + w + H <= n; i++)
            sc->tmp[k++] = sc->rv[i + w] - sc->lv[i];
        if (k > 0)
            centre = median_inplace(sc->tmp, k);
        k = 0;
        for (int i = H - 1; w <= sc->wmax && i + w + H <= n; i++)
            if (!touches(sc, i - H + 1, i + w + H - 1, x0, x1))
                sc->tmp[k++] = sc->rv[i + w] - sc->lv[i];
        if (k >= MIN_REF) {
            double c;
            s = mad_scale(sc->tmp, k, &c);
        }
        double model = sqrt(MED_VAR * A + B * (w + RW_EXTRA));
        s = model > s ? model : s;
        sc->c[w] = centre;
        sc->sc[w] = s > fl ? s : fl;
    }
}

/* The floor of the point noise: half the quantum, the smallest nonzero
 * difference between consecutive values when it is at most QUANT_REL of
 * their range (an accuracy over N examples moves by 1/N; a clean jump is
 * no quantum), and PREC_REL of the values' magnitude.  Where values are
 * quantised so finely that most differences are 0 and a scale collapses,
 * no change of a quantum or two is beyond the noise.  sc->v of sc->n
 * points is read. */
static double point_floor(const struct scan *sc)
{
    int n = sc->n;
    double big = 0, q = INFINITY, lo = sc->v[0], hi = sc->v[0];
    for (int i = 0; i < n; i++) {
        big = fabs(sc->v[i]) > big ? fabs(sc->v[i]) : big;
        lo = sc->v[i] < lo ? sc->v[i] : lo;
        hi = sc->v[i] > hi ? sc->v[i] : hi;
        double d = i + 1 < n ? fabs(sc->v[i + 1] - sc->v[i]) : 0;
        q = d > 0 && d < q ? d : q;
    }
    double pf = PREC_REL * big + DBL_MIN;
    return q <= QUANT_REL * (hi - lo) && q / 2 > pf ? q / 2 : pf;
}

/* Detrend, spikes left out already; levels, the smoothed series, the
 * floors and the noise of the whole series. */
static void scan_prepare(struct scan *sc)
{
    int n = sc->n;
    for (int i = 0; i < n; i++)
        sc->m[i] = i == 0 || i == n - 1 ? sc->u[i] : med3(sc->u[i - 1], sc->u[i], sc->u[i + 1]);
    for (int i = 0; i < n; i++) {
        sc->lv[i] = i >= H - 1 ? med3(sc->u[i - 2], sc->u[i - 1], sc->u[i]) : NAN;
        sc->rv[i] = i + H <= n ? med3(sc->u[i], sc->u[i + 1], sc->u[i + 2]) : NAN;
    }
    /* floors: of the point noise (point_floor); no change below MIN_REL
     * of the smoothed range counts, nor one below PREC_REL of the values */
    double mlo = sc->m[0], mhi = sc->m[0], big = 0;
    for (int i = 0; i < n; i++) {
        mlo = sc->m[i] < mlo ? sc->m[i] : mlo;
        mhi = sc->m[i] > mhi ? sc->m[i] : mhi;
        big = fabs(sc->v[i]) > big ? fabs(sc->v[i]) : big;
    }
    sc->pfloor = point_floor(sc);
    sc->minchg = MIN_REL * (mhi - mlo);
    if (sc->minchg < PREC_REL * big)
        sc->minchg = PREC_REL * big;
    sc->wmax = (n - 2 * H + 1) / 4;
    if (sc->wmax < 1)
        sc->wmax = 1;
    sc->A = sc->B = 0;
    (void)vario_fit(sc, n, n, &sc->A, &sc->B);
}

/* The change of a window beyond what the series does anyway: D less the
 * centre c of its width's windows, or D itself (u is detrended) when that
 * is smaller, so that a flat stretch in a series full of rises (a
 * staircase, where most windows rise) is no change. */
static double excess(double d, double c)
{
    return fabs(d - c) < fabs(d) ? fabs(d - c) : fabs(d);
}

/* ---- calibration ---- */

/* The null distribution of the score of a series' first candidate (what
 * tr_max_score returns), given the number of points n and the random
 * walk's share rho of the noise model it was scored against, as a Gumbel
 * law P(score <= z) = exp(-exp(-(z - mu) / beta)): per length, series of
 * white noise plus a random walk whose share of the first differences'
 * variance is drawn from 0 to 1, binned by the rho they were scored with;
 * per bin its median rho and the law through its 90% and 99% quantiles
 * (bench/transitions_bench --calibrate-table, transitions_null.inc).
 * Between rows mu and beta are interpolated linearly in rho and in log n;
 * beyond the table, held at its edges. */
struct null_row {
    int n;
    double rho, mu, beta;
};

static const struct null_row null_table[] = {
#include "daemon/detect/transitions_null.inc"
};

#define NULL_ROWS ((int)(sizeof null_table / sizeof *null_table))

/* mu and beta of the rows of length null_table[r0].n at rho. */
static void null_at_rho(int r0, double rho, double *mu, double *beta)
{
    int r1 = r0;
    while (r1 + 1 < NULL_ROWS && null_table[r1 + 1].n == null_table[r0].n)
        r1++;
    int k = r0;
    while (k < r1 && null_table[k + 1].rho <= rho)
        k++;
    if (k == r1 || rho <= null_table[k].rho) {
        *mu = null_table[k].mu;
        *beta = null_table[k].beta;
        return;
    }
    double t = (rho - null_table[k].rho) / (null_table[k + 1].rho - null_table[k].rho);
    *mu = null_table[k].mu + t * (null_table[k + 1].mu - null_table[k].mu);
    *beta = null_table[k].beta + t * (null_table[k + 1].beta - null_table[k].beta);
}

double tr_p_value(double z, int n, double rho)
{
    /* the first rows of the lengths at or below n and above it */
    int lo = 0, hi = -1;
    for (int r = 0; r < NULL_ROWS; r++) {
        if (null_table[r].n <= n && (r == 0 || null_table[r].n != null_table[r - 1].n))
            lo = r;
        if (null_table[r].n > n && hi < 0)
            hi = r;
    }
    double mu, beta;
    null_at_rho(lo, rho, &mu, &beta);
    if (hi >= 0 && null_table[lo].n < n) {
        double mu1, beta1;
        null_at_rho(hi, rho, &mu1, &beta1);
        double t = (log((double)n) - log((double)null_table[lo].n)) /
                   (log((double)null_table[hi].n) - log((double)null_table[lo].n));
        mu += t * (mu1 - mu);
        beta += t * (beta1 - beta);
    }
    double x = (z - mu) / beta;
    /* 1 - exp(-exp(-x)), without cancellation in the tail */
    double p = -expm1(-exp(-x));
    return p < TR_P_MIN ? TR_P_MIN : p;
}

/* ---- segmentation ---- */

static int record(struct scan *sc, const struct tr_event *t)
{
    if (sc->nfound == sc->capfound) {
        int cap = sc->capfound ? 2 * sc->capfound : 8;
        struct tr_event *f = realloc(sc->found, (size_t)cap * sizeof *f);
        if (!f)
            return ERR_NOMEM;
        sc->found = f;
        sc->capfound = cap;
    }
    sc->found[sc->nfound++] = *t;
    return 0;
}

/* Positions of a change from the level L(ma) to R(mb): progress of the
 * smoothed series from one to the other over the points ma-H+1 .. mb+H-1.
 * peak: the first point after ma-H+1 with p >= 0.5; start: the last one
 * before the peak with p <= 0.1; end: the first from the peak with p >=
 * 0.9.  magnitude: median of the raw values of R(mb)'s points less L(ma)'s.
 * Returns 1 when the two levels do not differ in the direction sgn. */
static int positions(const struct scan *sc, int ma, int mb, double sgn, struct tr_event *t)
{
    double l0 = sc->lv[ma], span = sc->rv[mb] - l0;
    if (!(sgn * span > 0))
        return 1;
    int first = ma - H + 1, last = mb + H - 1, peak = mb;
    for (int i = first + 1; i <= last; i++)
        if ((sc->m[i] - l0) / span >= 0.5) {
            peak = i;
            break;
        }
    int start = first;
    for (int i = peak - 1; i >= first; i--)
        if ((sc->m[i] - l0) / span <= 0.1) {
            start = i;
            break;
        }
    int end = last;
    for (int i = peak; i <= last; i++)
        if ((sc->m[i] - l0) / span >= 0.9) {
            end = i;
            break;
        }
    t->kind = TR_KIND_TRANSITION;
    t->start_step = sc->s[start];
    t->peak_step = sc->s[peak];
    t->end_step = sc->s[end];
    t->before = med3(sc->v[ma - 2], sc->v[ma - 1], sc->v[ma]);
    t->after = med3(sc->v[mb], sc->v[mb + 1], sc->v[mb + 2]);
    t->magnitude = t->after - t->before;
    return 0;
}

/* Score of the change from L(a) to R(b) against the current noise, with
 * its calibrated p-value; the noise per width must be current. */
static double score_of(const struct scan *sc, int a, int b, double *noise)
{
    int w = b - a;
    *noise = sc->sc[w];
    return excess(sc->rv[b] - sc->lv[a], sc->c[w]) / sc->sc[w];
}

/* Record the change from L(ma) to R(mb) (a transition whose two levels
 * are known; zc the score of the test that found it, nc its noise scale),
 * after looking
 * inside it for a stage: a level held by the H
 * points k..k+H-1 strictly between the two levels, moving by at most FLAT
 * of either step beside it, with both steps significant on their own.
 * The best such stage (the largest smaller score of the two) splits the
 * change in two, each examined again the same way.  Returns 0 or
 * ERR_NOMEM. */
static int record_change(struct scan *sc, int ma, int mb, double sgn, double zc, double nc, int depth)
{
    int bk = -1;
    double bz = 0;
    for (int k = ma + 1; depth < 4 && k + H - 1 <= mb - 1; k++) {
        double lev = sc->rv[k];
        double d1 = sgn * (lev - sc->lv[ma]), d2 = sgn * (sc->rv[mb] - lev);
        if (!(d1 > 0 && d2 > 0) || d1 < sc->minchg || d2 < sc->minchg)
            continue;
        double lo = sc->u[k], hi = sc->u[k];
        for (int j = k + 1; j < k + H; j++) {
            lo = sc->u[j] < lo ? sc->u[j] : lo;
            hi = sc->u[j] > hi ? sc->u[j] : hi;
        }
        if (hi - lo > FLAT * (d1 < d2 ? d1 : d2))
            continue;
        double n1, n2;
        double z1 = score_of(sc, ma, k, &n1), z2 = score_of(sc, k + H - 1, mb, &n2);
        double z = z1 < z2 ? z1 : z2;
        if (tr_p_value(z, sc->n, sc->rho) <= sc->p_max && z > bz) {
            bz = z;
            bk = k;
        }
    }
    if (bk >= 0) {
        double n1, n2;
        double z1 = score_of(sc, ma, bk, &n1), z2 = score_of(sc, bk + H - 1, mb, &n2);
        int rc = record_change(sc, ma, bk, sgn, z1, n1, depth + 1);
        return rc < 0 ? rc : record_change(sc, bk + H - 1, mb, sgn, z2, n2, depth + 1);
    }
    struct tr_event t;
    if (sgn * (sc->rv[mb] - sc->lv[ma]) < sc->minchg || positions(sc, ma, mb, sgn, &t))
        return 0;
    double noise, z = score_of(sc, ma, mb, &noise);
    /* the score of the test that admitted it, or of its own two levels if
     * higher, with the noise scale it divided by */
    if (zc > z) {
        z = zc;
        noise = nc;
    }
    t.score = z;
    t.noise = noise;
    t.p_value = tr_p_value(z, sc->n, sc->rho);
    return record(sc, &t);
}

/* The best window of the segment [lo, hi] against the current noise:
 * (*ba, *bb), its score returned (0 when the segment has no window). */
static double best_window(const struct scan *sc, int lo, int hi, int *ba, int *bb)
{
    double bz = 0;
    *ba = *bb = -1;
    for (int a = lo + H - 1; a + H <= hi; a++) {
        int bmax = a + sc->wmax < hi - H + 1 ? a + sc->wmax : hi - H + 1;
        for (int b = a + 1; b <= bmax; b++) {
            double z = excess(sc->rv[b] - sc->lv[a], sc->c[b - a]) / sc->sc[b - a];
            if (z > bz) {
                bz = z;
                *ba = a;
                *bb = b;
            }
        }
    }
    return bz;
}

/* Binary segmentation over a stack of segments [lo, hi]: in each, the
 * window with the highest score against the series' noise (without the
 * transitions found so far) is the candidate; it is scored again against
 * the noise without its own points, and is a transition when that
 * score's calibrated p-value is at most p_max and its change at least
 * minchg.  Around it, at most its width plus H further on either side,
 * the window of the largest same-signed change gives the two levels; the
 * narrowest window with EXTENT_FRAC of that change is its extent.  The
 * segments either side of the two levels' window are searched next when
 * a transition was recorded, else either side of the extent.  *best (if
 * non-NULL) gets the highest such score.  Returns 0 or ERR_NOMEM. */
static int scan_segments(struct scan *sc, double p_max, double *best)
{
    int n = sc->n;
    int *stack = malloc(sizeof(int) * 2 * (size_t)(n + 1));
    if (!stack)
        return ERR_NOMEM;
    int top = 0, rc = 0;
    stack[top++] = 0;
    stack[top++] = n - 1;
    while (top > 0 && rc == 0) {
        int hi = stack[--top], lo = stack[--top];
        if (hi - lo + 1 < 2 * H + 1)
            continue;
        noise_widths(sc, n, n); /* the series without the accepted transitions */
        int ba, bb;
        if (best_window(sc, lo, hi, &ba, &bb) <= 0)
            continue;
        noise_widths(sc, ba - H + 1, bb + H - 1); /* ... and without the candidate */
        double noise, z = score_of(sc, ba, bb, &noise);
        if (best && z > *best) {
            *best = z;
            sc->best_rho = sc->rho;
        }
        if (!(tr_p_value(z, n, sc->rho) <= p_max))
            continue;
        /* the sign of what made the excess: D - c_w, or D when smaller */
        double dd = sc->rv[bb] - sc->lv[ba], dc = dd - sc->c[bb - ba];
        double sgn = (fabs(dc) < fabs(dd) ? dc : dd) >= 0 ? 1.0 : -1.0;
        int reach = bb - ba + H;
        int alo = lo + H - 1 > ba - reach ? lo + H - 1 : ba - reach;
        int bhi = hi - H + 1 < bb + reach ? hi - H + 1 : bb + reach;
        double dmax = -INFINITY;
        int ma = ba, mb = bb;
        for (int a = alo; a <= ba; a++)
            for (int b = bb; b <= bhi; b++) {
                double d = sgn * (sc->rv[b] - sc->lv[a]);
                if (d > dmax) {
                    dmax = d;
                    ma = a;
                    mb = b;
                }
            }
        int ea = ba, eb = bb;
        double ed = sgn * (sc->rv[bb] - sc->lv[ba]);
        for (int a = alo; a <= ba; a++)
            for (int b = bb; b <= bhi; b++) {
                double d = sgn * (sc->rv[b] - sc->lv[a]);
                if (d < EXTENT_FRAC * dmax)
                    continue;
                int w = b - a, ew = eb - ea;
                if (ed < EXTENT_FRAC * dmax || w < ew || (w == ew && d > ed)) {
                    ea = a;
                    eb = b;
                    ed = d;
                }
            }
        if (dmax >= sc->minchg) {
            /* scored against the noise without it: still current */
            int before = sc->nfound;
            rc = record_change(sc, ma, mb, sgn, z, noise, 0);
            if (rc == 0 && sc->nfound > before) {
                for (int i = ma - H + 1; i <= mb + H - 1; i++)
                    sc->cov[i] = 1;
                for (int i = 0; i < n; i++)
                    sc->cum[i + 1] = sc->cum[i] + sc->cov[i];
                /* recorded: the segments start from its two levels, so
                 * the slow ends of a sigmoid are not found again */
                ea = ma;
                eb = mb;
            }
        }
        stack[top++] = lo;
        stack[top++] = ea;
        stack[top++] = eb;
        stack[top++] = hi;
    }
    free(stack);
    return rc;
}

static int by_score_desc(const void *x, const void *y)
{
    const struct tr_event *a = x, *b = y;
    return (a->score < b->score) - (a->score > b->score);
}

static int by_peak(const void *x, const void *y)
{
    const struct tr_event *a = x, *b = y;
    if (a->peak_step != b->peak_step)
        return (a->peak_step > b->peak_step) - (a->peak_step < b->peak_step);
    return (int)a->kind - (int)b->kind;
}

/* Check the arguments, keep the finite points, find the spikes (into
 * spikes, *nspikes of them) and prepare the scan of the rest.  Returns 1
 * when prepared (scan_free after), 0 when too few points are left for
 * transitions (spikes may still have been found), or a negative code. */
static int scan_open(struct scan *sc, const long long *steps, const double *values, int n,
                     struct tr_event *spikes, int *nspikes, struct err *e)
{
    memset(sc, 0, sizeof *sc);
    *nspikes = 0;
    if (n < 0 || (n > 0 && (!steps || !values)))
        return err_set(e, ERR_INVALID, "transitions", "bad arguments (n %d)", n);
    for (int i = 1; i < n; i++)
        if (steps[i] <= steps[i - 1])
            return err_set(e, ERR_INVALID, "transitions",
                           "steps not strictly increasing: %lld after %lld (point %d)", steps[i],
                           steps[i - 1], i);
    int nf = 0;
    for (int i = 0; i < n; i++)
        nf += isfinite(values[i]) != 0;
    if (nf < TR_MIN_POINTS)
        return 0;
    size_t nd = (size_t)nf; /* one block: v u m lv rv tmp(2n) c sc, then the steps */
    double *block = malloc(sizeof(double) * (7 * nd + 2 * (nd + 1)) + sizeof(long long) * nd);
    sc->cov = calloc(2 * nd + 1, sizeof(int));
    unsigned char *mask = calloc(nd, 1);
    struct cand *info = malloc(sizeof *info * nd);
    int *idx = malloc(sizeof *idx * nd);
    if (!block || !sc->cov || !mask || !info || !idx) {
        free(block);
        free(sc->cov);
        free(mask);
        free(info);
        free(idx);
        sc->cov = NULL;
        return err_set(e, ERR_NOMEM, "transitions", "out of memory (%d points)", nf);
    }
    sc->cum = sc->cov + nd;
    sc->v = block;
    sc->u = sc->v + nd;
    sc->m = sc->u + nd;
    sc->lv = sc->m + nd;
    sc->rv = sc->lv + nd;
    sc->tmp = sc->rv + nd;
    sc->c = sc->tmp + 2 * nd;
    sc->sc = sc->c + nd + 1;
    sc->s = (long long *)(sc->sc + nd + 1);
    for (int i = 0, k = 0; i < n; i++)
        if (isfinite(values[i])) {
            sc->s[k] = steps[i];
            sc->v[k++] = values[i];
        }
    /* drift per step of training: the median slope between neighbours,
     * when it is at least DRIFT_Z standard errors from 0 (else noise
     * alone would tilt the series) */
    double *tmp = sc->tmp;
    for (int i = 0; i + 1 < nf; i++)
        tmp[i] = (sc->v[i + 1] - sc->v[i]) / (double)(sc->s[i + 1] - sc->s[i]);
    double mu, se = mad_scale(tmp, nf - 1, &mu) * 1.2533 / sqrt((double)(nf - 1));
    if (!isfinite(mu) || !(fabs(mu) >= DRIFT_Z * se))
        mu = 0;
    double big = 0;
    for (int i = 0; i < nf; i++) {
        sc->u[i] = sc->v[i] - mu * (double)(sc->s[i] - sc->s[0]);
        big = fabs(sc->v[i]) > big ? fabs(sc->v[i]) : big;
    }
    /* spikes, on the detrended values; the range from the running median
     * of 3 (which a one-point spike cannot move), the floor of the local
     * noise the point-noise floor of the whole series */
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < nf; i++) {
        double mi = i == 0 || i == nf - 1 ? sc->u[i] : med3(sc->u[i - 1], sc->u[i], sc->u[i + 1]);
        lo = mi < lo ? mi : lo;
        hi = mi > hi ? mi : hi;
        sc->m[i] = mi;
    }
    sc->n = nf;
    double pf = point_floor(sc);
    *nspikes = find_spikes(sc->s, sc->v, sc->u, nf, pf, hi - lo, mask, info, idx, tmp, tmp + 2 * SPIKE_WIN,
                           spikes, TR_MAX_SPIKES);
    free(info);
    free(idx);
    int k = 0;
    for (int i = 0; i < nf; i++)
        if (!mask[i]) {
            sc->s[k] = sc->s[i];
            sc->v[k] = sc->v[i];
            sc->u[k++] = sc->u[i];
        }
    free(mask);
    sc->n = k;
    if (k < TR_MIN_POINTS) {
        free(block);
        free(sc->cov);
        memset(sc, 0, sizeof *sc);
        return 0;
    }
    scan_prepare(sc);
    return 1;
}

static void scan_free(struct scan *sc)
{
    free(sc->found);
    free(sc->v); /* the block */
    free(sc->cov);
    memset(sc, 0, sizeof *sc);
}

int tr_detect(const long long *steps, const double *values, int n, struct tr_event *out, int cap,
              struct err *e)
{
    return tr_detect_p(steps, values, n, TR_P_MAX, out, cap, e);
}

int tr_detect_p(const long long *steps, const double *values, int n, double p_max, struct tr_event *out,
                int cap, struct err *e)
{
    if (cap < 0 || (cap > 0 && !out) || !(p_max >= 0 && p_max <= 1))
        return err_set(e, ERR_INVALID, "transitions", "bad arguments (cap %d, p_max %g)", cap, p_max);
    struct scan sc;
    struct tr_event spikes[TR_MAX_SPIKES];
    int nsp = 0;
    int rc = scan_open(&sc, steps, values, n, spikes, &nsp, e);
    if (rc < 0)
        return rc;
    sc.p_max = p_max;
    if (rc > 0 && scan_segments(&sc, p_max, NULL) < 0) {
        scan_free(&sc);
        return err_set(e, ERR_NOMEM, "transitions", "out of memory (%d points)", n);
    }
    /* transitions first, the strongest kept within the cap, then spikes */
    int nt = sc.nfound;
    if (nt > 1)
        qsort(sc.found, (size_t)nt, sizeof *sc.found, by_score_desc);
    int k = 0;
    for (int i = 0; i < nt && k < cap; i++)
        out[k++] = sc.found[i];
    qsort(spikes, (size_t)nsp, sizeof *spikes, by_score_desc);
    for (int i = 0; i < nsp && k < cap; i++)
        out[k++] = spikes[i];
    if (k > 1)
        qsort(out, (size_t)k, sizeof *out, by_peak);
    if (rc > 0)
        scan_free(&sc);
    return k;
}

int tr_max_score(const long long *steps, const double *values, int n, double *score, double *rho,
                 struct err *e)
{
    *score = 0;
    if (rho)
        *rho = 0;
    struct scan sc;
    struct tr_event spikes[TR_MAX_SPIKES];
    int nsp;
    int rc = scan_open(&sc, steps, values, n, spikes, &nsp, e);
    if (rc <= 0)
        return rc;
    rc = scan_segments(&sc, 0.0, score);
    if (rho)
        *rho = sc.best_rho;
    scan_free(&sc);
    return rc < 0 ? err_set(e, ERR_NOMEM, "transitions", "out of memory (%d points)", n) : 0;
}

struct span {
    long long start, end;
    int i;
};

static int by_start(const void *x, const void *y)
{
    const struct span *a = x, *b = y;
    if (a->start != b->start)
        return (a->start > b->start) - (a->start < b->start);
    return (a->i > b->i) - (a->i < b->i);
}

void tr_group(const long long *start, const long long *end, int n, int *group)
{
    if (n <= 0)
        return;
    struct span *sp = malloc(sizeof *sp * (size_t)n);
    if (!sp) { /* no memory: each its own group, still a true answer */
        for (int i = 0; i < n; i++)
            group[i] = i + 1;
        return;
    }
    for (int i = 0; i < n; i++)
        sp[i] = (struct span){start[i], end[i], i};
    qsort(sp, (size_t)n, sizeof *sp, by_start);
    int g = 0;
    long long reach = 0;
    for (int k = 0; k < n; k++) {
        if (k == 0 || sp[k].start >= reach) {
            g++;
            reach = sp[k].end;
        } else if (sp[k].end > reach) {
            reach = sp[k].end;
        }
        group[sp[k].i] = g;
    }
    free(sp);
}
