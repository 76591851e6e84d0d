#include "daemon/detect/transitions_v1.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define H TR1_HALF

/* Settings of ramp-v1 besides those in the header (changing any changes
 * the numbers: bump TR1_METHOD). */
#define VARIO_KMAX 8     /* variogram lags used, at most ... */
#define VARIO_DIV 8      /* ... and at most n / VARIO_DIV (at least 2) */
#define MED_VAR 0.287    /* Var(median of 5 iid normals) / sigma^2 */
#define RW_EXTRA 2.4     /* a random walk's extra width between two 5-point levels: 2(H-1)(2H-1)/(6H) */
#define SEP 1.5          /* no change below SEP x the 1%-99% spread of the residuals scores TR1_THRESHOLD */
#define SEP_Q 0.01
#define MIN_REL 0.01     /* nor one below 1% of the smoothed series' range */
#define BFRAC 0.25       /* a candidate's own noise keeps at least this share of the series' random walk */
#define MIN_REF 8        /* clean reference windows needed to judge a candidate on them alone */
#define EXTENT_FRAC 0.9  /* an extent holds this share of the largest change around its core */

#if TR1_HALF != 5
#error "MED_VAR and RW_EXTRA are computed for TR1_HALF 5"
#endif

/* One series being examined: the finite points, their detrended values,
 * the levels on either side of every point and the noise per width. */
struct scan {
    int n;
    long long *s;    /* steps (n) */
    double *v;       /* raw values (n) */
    double *u;       /* v - mu * (step - s[0]) (n) */
    double *m;       /* u smoothed by a running median of 3 (n) */
    double *lv, *rv; /* L(a), R(b) of u (n; valid where the window fits) */
    double *c, *sc;  /* centre and scale of D over width w (wmax + 1) */
    int wmax;
    double A, B;     /* white-noise and random-walk parts of the variogram */
    double floor;    /* no scale below this */
    int *cov, *cum;  /* points inside accepted transitions (n), prefix sums (n + 1) */
    double *tmp;     /* scratch (2n) */
    int nfound, capfound;
    struct tr1_transition *found;
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
        if (a[mid] < a[lo]) /* median of three as the pivot */
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

/* Median of the 5 values x[0..5) in six comparisons: the smaller of two
 * sorted pairs' minima cannot be the median; drop it twice, then the
 * median is the smaller of the two remaining candidates. */
static double med5(const double *x)
{
    double a = x[0], b = x[1], c = x[2], d = x[3], e = x[4];
    if (a > b)
        swapd(&a, &b);
    if (c > d)
        swapd(&c, &d);
    if (a > c) { /* pairs (a<b), (c<d) with a < c: a is out */
        swapd(&a, &c);
        swapd(&b, &d);
    }
    if (e < b)
        swapd(&b, &e);
    if (b > c) { /* pairs (b<e), (c<d) with b < c: b is out */
        swapd(&b, &c);
        swapd(&d, &e);
    }
    return c < e ? c : e;
}

/* Robust scale of x[0..k) around its median (returned in *centre):
 * 1.4826 MAD, sigma for normal data.  x is overwritten. */
static double robust_scale(double *x, int k, double *centre)
{
    double c = median_inplace(x, k);
    for (int j = 0; j < k; j++)
        x[j] = fabs(x[j] - c);
    *centre = c;
    return 1.4826 * median_inplace(x, k);
}


/* Is any of the points [p0, p1] inside [x0, x1] or an accepted transition? */
static int touches(const struct scan *sc, int p0, int p1, int x0, int x1)
{
    return (p1 >= x0 && p0 <= x1) || sc->cum[p1 + 1] - sc->cum[p0] > 0;
}

/* The variogram of u, g(k) = scale^2 of u[i+k] - u[i] for k = 1..kmax,
 * over the pairs whose span touches neither [x0, x1] nor an accepted
 * transition, fitted by least squares as A + B k: white noise of variance
 * A/2 and a random walk of variance B per checkpoint, A, B >= 0
 * (Matheron's variogram with a robust scale).  Lags with fewer than
 * MIN_REF pairs are left out; with fewer than two lags, returns -1 and
 * leaves *A, *B alone. */
static int vario_fit(struct scan *sc, int x0, int x1, double *A, double *B)
{
    int n = sc->n;
    int kmax = n / VARIO_DIV < VARIO_KMAX ? n / VARIO_DIV : VARIO_KMAX;
    if (kmax < 2)
        kmax = 2;
    double sk = 0, sg = 0, skk = 0, skg = 0;
    int used = 0;
    for (int k = 1; k <= kmax; k++) {
        int cnt = 0;
        for (int i = 0; i + k < n; i++)
            if (!touches(sc, i, i + k, x0, x1))
                sc->tmp[cnt++] = sc->u[i + k] - sc->u[i];
        if (cnt < MIN_REF)
            continue;
        double c, s = robust_scale(sc->tmp, cnt, &c);
        double g = s * s;
        used++;
        sk += k;
        sg += g;
        skk += (double)k * k;
        skg += k * g;
    }
    if (used < 2)
        return -1;
    double b = (used * skg - sk * sg) / (used * skk - sk * sk);
    double a = (sg - b * sk) / used;
    if (b < 0) {
        b = 0;
        a = sg / used;
    } else if (a < 0) {
        a = 0;
        b = skg / skk;
    }
    *A = a;
    *B = b;
    return 0;
}

/* Detrend, levels, the smoothed series, the noise model and the noise of
 * a change per width. */
static void scan_prepare(struct scan *sc)
{
    int n = sc->n;
    double *tmp = sc->tmp;
    /* drift per step of training: the median slope between neighbours (a
     * transition is one or a few of them; what noise leaves in it is a
     * line in the checkpoint index where steps are even, which the centre
     * c_w of every width takes out) */
    for (int i = 0; i + 1 < n; i++)
        tmp[i] = (sc->v[i + 1] - sc->v[i]) / (double)(sc->s[i + 1] - sc->s[i]);
    double mu = median_inplace(tmp, n - 1);
    if (!isfinite(mu))
        mu = 0;
    double big = 0;
    for (int i = 0; i < n; i++) {
        sc->u[i] = sc->v[i] - mu * (double)(sc->s[i] - sc->s[0]);
        if (fabs(sc->u[i]) > big)
            big = fabs(sc->u[i]);
    }
    for (int i = 0; i < n; i++)
        sc->m[i] = i == 0 || i == n - 1 ? sc->u[i] : med3(sc->u[i - 1], sc->u[i], sc->u[i + 1]);
    for (int i = 0; i < n; i++) {
        sc->lv[i] = i >= H - 1 ? med5(sc->u + i - H + 1) : NAN;
        sc->rv[i] = i + H <= n ? med5(sc->u + i) : NAN;
    }
    sc->A = sc->B = 0;
    (void)vario_fit(sc, n, n, &sc->A, &sc->B);
    /* floors: no change below SEP x the 1%-99% spread of the residuals
     * from the smoothed series reaches the threshold (values quantised
     * near the noise, where a median level jumps a whole quantum), nor
     * one below MIN_REL of the smoothed range (an accuracy of 1.0 that
     * dips by one example now and then), nor anything in a constant series */
    int nr = 0;
    for (int i = 1; i + 1 < n; i++)
        tmp[nr++] = sc->u[i] - sc->m[i];
    int qlo = (int)(SEP_Q * (nr - 1) + 0.5), qhi = nr - 1 - qlo;
    double rhi = select_k(tmp, nr, qhi), rlo = select_k(tmp, qhi, qlo);
    double mlo = sc->m[0], mhi = sc->m[0];
    for (int i = 1; i < n; i++) {
        mlo = sc->m[i] < mlo ? sc->m[i] : mlo;
        mhi = sc->m[i] > mhi ? sc->m[i] : mhi;
    }
    double fl = 1e-9 * big + DBL_MIN;
    if (SEP * (rhi - rlo) / TR1_THRESHOLD > fl)
        fl = SEP * (rhi - rlo) / TR1_THRESHOLD;
    if (MIN_REL * (mhi - mlo) / TR1_THRESHOLD > fl)
        fl = MIN_REL * (mhi - mlo) / TR1_THRESHOLD;
    sc->floor = fl;
    /* widths: a transition may touch at most a third of the windows */
    sc->wmax = (n - 5 * H + 5) / 4;
    if (sc->wmax < 1)
        sc->wmax = 1;
    for (int w = 1; w <= sc->wmax; w++) {
        int k = 0;
        for (int i = H - 1; i + w + H <= n; i++)
            tmp[k++] = sc->rv[i + w] - sc->lv[i];
        double centre, s = robust_scale(tmp, k, &centre);
        double model = sqrt(MED_VAR * sc->A + sc->B * (w + RW_EXTRA));
        s = model > s ? model : s;
        sc->c[w] = centre;
        sc->sc[w] = s > fl ? s : fl;
    }
}

/* The change of a window beyond what the series does anyway: D less the
 * centre c of its width's windows, or D itself (u is detrended) when that
 * is smaller, so that a flat stretch in a series full of rises (a
 * staircase, where most windows rise) is no change. */
static double excess(double d, double c)
{
    return fabs(d - c) < fabs(d) ? fabs(d - c) : fabs(d);
}

/* D(a, b) against every window of its width. */
static double zscore(const struct scan *sc, int a, int b)
{
    int w = b - a;
    return excess(sc->rv[b] - sc->lv[a], sc->c[w]) / sc->sc[w];
}

/* D(a, b) against the noise of the series without it: the windows of its
 * width that share no point with it nor with an accepted transition (with
 * fewer than MIN_REF of them, none), and the variogram of the pairs that
 * do not either, whose random-walk part stays at least BFRAC of the whole
 * series' (leaving the largest excursion out makes a random walk look
 * calmer than it is); for a candidate spanning more than a third of the
 * series, the whole series' variogram. */
static double rescore(struct scan *sc, int a, int b)
{
    int n = sc->n, w = b - a, k = 0;
    int x0 = a - H + 1, x1 = b + H - 1;
    for (int i = H - 1; i + w + H <= n; i++)
        if (!touches(sc, i - H + 1, i + w + H - 1, x0, x1))
            sc->tmp[k++] = sc->rv[i + w] - sc->lv[i];
    double c = sc->c[w], s = 0;
    if (k >= MIN_REF)
        s = robust_scale(sc->tmp, k, &c);
    double A = sc->A, B = sc->B;
    if (3 * (x1 - x0 + 1) <= n && vario_fit(sc, x0, x1, &A, &B) == 0 && B < BFRAC * sc->B)
        B = BFRAC * sc->B;
    double model = sqrt(MED_VAR * A + B * (w + RW_EXTRA));
    s = model > s ? model : s;
    s = sc->floor > s ? sc->floor : s;
    return excess(sc->rv[b] - sc->lv[a], c) / s;
}

static int record(struct scan *sc, const struct tr1_transition *t)
{
    if (sc->nfound == sc->capfound) {
        int cap = sc->capfound ? 2 * sc->capfound : 8;
        struct tr1_transition *f = realloc(sc->found, (size_t)cap * sizeof *f);
        if (!f)
            return ERR_NOMEM;
        sc->found = f;
        sc->capfound = cap;
    }
    sc->found[sc->nfound++] = *t;
    return 0;
}

/* The transition whose core is the window (ba, bb) in the segment
 * [lo, hi].  Around the core, at most its width plus H further on either
 * side, the window of the largest same-signed change gives the two levels
 * (0% and 100% of the change) and the points searched for positions,
 * *first..*last; the narrowest window with EXTENT_FRAC of that change,
 * (*ea, *eb), is where the segment splits.  Returns 0, or 1 when the
 * change has no level to cross (a pause in a drift). */
static int locate(const struct scan *sc, int lo, int hi, int ba, int bb, int *ea_out, int *eb_out,
                  int *first_out, int *last_out, struct tr1_transition *t)
{
    double sgn = sc->rv[bb] - sc->lv[ba] - sc->c[bb - ba] >= 0 ? 1.0 : -1.0;
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
    *ea_out = ea;
    *eb_out = eb;
    double l0 = sc->lv[ma], span = sc->rv[mb] - l0;
    if (!(sgn * span > 0))
        return 1;
    /* positions: progress of the smoothed series from one level to the other */
    int first = ma - H + 1, last = mb + H - 1, peak = mb;
    *first_out = first;
    *last_out = last;
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
    t->start_step = sc->s[start];
    t->peak_step = sc->s[peak];
    t->end_step = sc->s[end];
    t->magnitude = med5(sc->v + mb) - med5(sc->v + ma - H + 1);
    return 0;
}

/* Binary segmentation, iteratively over a stack of segments [lo, hi]:
 * in each, the window with the highest score against all windows is the
 * candidate; rescored against the clean windows, it is a transition if
 * that reaches threshold, and the parts either side of its extent are
 * searched next.  *best (if non-NULL) gets the highest rescored score.
 * Returns 0 or ERR_NOMEM. */
static int scan_segments(struct scan *sc, double threshold, double *best)
{
    int n = sc->n;
    int *stack = malloc(sizeof(int) * 2 * (size_t)(n + 1)); /* a split leaves two: <= n live */
    if (!stack)
        return ERR_NOMEM;
    int top = 0, rc = 0;
    stack[top++] = 0;
    stack[top++] = n - 1;
    while (top > 0 && rc == 0) {
        int hi = stack[--top], lo = stack[--top];
        if (hi - lo + 1 < 2 * H)
            continue;
        int ba = -1, bb = -1;
        double bz = 0;
        for (int a = lo + H - 1; a + H <= hi; a++) {
            int bmax = a + sc->wmax < hi - H + 1 ? a + sc->wmax : hi - H + 1;
            for (int b = a + 1; b <= bmax; b++) {
                double z = zscore(sc, a, b);
                if (z > bz) {
                    bz = z;
                    ba = a;
                    bb = b;
                }
            }
        }
        if (ba < 0)
            continue;
        bz = rescore(sc, ba, bb);
        if (best && bz > *best)
            *best = bz;
        if (!(bz >= threshold))
            continue;
        struct tr1_transition t;
        int ea, eb, first, last;
        if (locate(sc, lo, hi, ba, bb, &ea, &eb, &first, &last, &t)) { /* nothing to record: split at the core */
            ea = ba;
            eb = bb;
        } else {
            t.score = bz;
            rc = record(sc, &t);
            for (int i = first; i <= last; i++)
                sc->cov[i] = 1;
            for (int i = 0; i < n; i++)
                sc->cum[i + 1] = sc->cum[i] + sc->cov[i];
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
    const struct tr1_transition *a = x, *b = y;
    return (a->score < b->score) - (a->score > b->score);
}

static int by_peak(const void *x, const void *y)
{
    const struct tr1_transition *a = x, *b = y;
    return (a->peak_step > b->peak_step) - (a->peak_step < b->peak_step);
}

/* Check the arguments, keep the finite points and prepare the scan.
 * Returns 1 when prepared (scan_free after), 0 when the series is too
 * short, or a negative code. */
static int scan_open(struct scan *sc, const long long *steps, const double *values, int n,
                     struct err *e)
{
    memset(sc, 0, sizeof *sc);
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
    if (nf < TR1_MIN_POINTS)
        return 0;
    sc->n = nf;
    size_t nd = (size_t)nf; /* one block: v u m lv rv tmp(2n) c sc, then the steps */
    double *block = malloc(sizeof(double) * (7 * nd + 2 * (nd + 1)) + sizeof(long long) * nd);
    sc->cov = calloc(2 * nd + 1, sizeof(int));
    if (!block || !sc->cov) {
        free(block);
        free(sc->cov);
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

int tr1_detect(const long long *steps, const double *values, int n, struct tr1_transition *out,
              int cap, struct err *e)
{
    if (cap < 0 || (cap > 0 && !out))
        return err_set(e, ERR_INVALID, "transitions", "bad arguments (cap %d)", cap);
    struct scan sc;
    int rc = scan_open(&sc, steps, values, n, e);
    if (rc <= 0)
        return rc;
    if (cap > 0 && scan_segments(&sc, TR1_THRESHOLD, NULL) < 0) {
        scan_free(&sc);
        return err_set(e, ERR_NOMEM, "transitions", "out of memory (%d points)", n);
    }
    int k = sc.nfound;
    if (k > cap) {
        qsort(sc.found, (size_t)k, sizeof *sc.found, by_score_desc);
        k = cap;
    }
    if (k > 0) {
        qsort(sc.found, (size_t)k, sizeof *sc.found, by_peak);
        memcpy(out, sc.found, (size_t)k * sizeof *out);
    }
    scan_free(&sc);
    return k;
}

int tr1_max_score(const long long *steps, const double *values, int n, double *score, struct err *e)
{
    *score = 0;
    struct scan sc;
    int rc = scan_open(&sc, steps, values, n, e);
    if (rc <= 0)
        return rc;
    rc = scan_segments(&sc, INFINITY, score);
    scan_free(&sc);
    return rc < 0 ? err_set(e, ERR_NOMEM, "transitions", "out of memory (%d points)", n) : 0;
}
