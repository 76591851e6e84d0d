#include "daemon/detect/integrity.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "daemon/base/db.h"
#include "daemon/detect/detect.h"
#include "daemon/work/queue.h"

#define STR_(x) #x
#define STR(x) STR_(x)

static const char *const reason_names[INTEGRITY_REASON_COUNT] = {
    [INTEGRITY_OK] = NULL,
    [INTEGRITY_MISLABEL] = "mislabel",
    [INTEGRITY_INIT_JUMP] = "init_jump",
    [INTEGRITY_OFF_TRAJECTORY] = "off_trajectory",
    [INTEGRITY_STEP0_IS_FINAL] = "step0_is_final",
    [INTEGRITY_SHARD_DUPLICATE] = "shard_duplicate",
};

const char *integrity_reason_name(enum integrity_reason r)
{
    return (unsigned)r < INTEGRITY_REASON_COUNT ? reason_names[r] : NULL;
}

/* ---- the judge (pure) ---- */

struct judge {
    const struct integrity_ckpt *c;
    int n, k;
    double *d;    /* (n, n) sketch distances, NaN where a sketch is missing */
    double *norm; /* (n) */
    struct integrity_verdict *v;
    struct integrity_margins *margins;
};

#define D(j, a, b) ((j)->d[(size_t)(a) * (size_t)(j)->n + (size_t)(b)])

static int suspect(const struct judge *j, int i) { return j->v[i].reason != INTEGRITY_OK; }

static void mark(struct judge *j, int i, enum integrity_reason r, int like, const char *fmt, ...)
    CK_PRINTF(5, 6);

static void mark(struct judge *j, int i, enum integrity_reason r, int like, const char *fmt, ...)
{
    j->v[i].reason = r;
    j->v[i].like = like;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->v[i].detail, sizeof j->v[i].detail, fmt, ap);
    va_end(ap);
}

/* The weight file named `name` of checkpoint x, or NULL. */
static const struct integrity_file *file_named(const struct integrity_ckpt *x, const char *name)
{
    for (int f = 0; f < x->nfiles; f++)
        if (strcmp(x->files[f].name, name) == 0)
            return &x->files[f];
    return NULL;
}

/* Does the file `name` of i normally change: the nearest checkpoints on
 * either side that have a file of that name have another sha256 (and one
 * of them exists)? */
static int file_changes_around(const struct judge *j, int i, const struct integrity_file *f)
{
    int seen = 0;
    for (int dir = -1; dir <= 1; dir += 2)
        for (int x = i + dir; x >= 0 && x < j->n; x += dir) {
            const struct integrity_file *g = file_named(&j->c[x], f->name);
            if (!j->c[x].nfiles)
                continue; /* not fetched: look further */
            if (!g)
                break;
            if (strcmp(g->sha256, f->sha256) == 0)
                return 0;
            seen = 1;
            break;
        }
    return seen;
}

static int same_weights(const struct integrity_ckpt *a, const struct integrity_ckpt *b)
{
    return a->weights && b->weights && strcmp(a->weights, b->weights) == 0;
}

/* Distance from i to its nearest neighbours in step order that have a
 * sketch, are not suspect and not in `skip` (n flags, may be NULL): the
 * smaller of the two, or NaN. */
static double fit_outside(const struct judge *j, int i, const unsigned char *skip)
{
    if (!j->c[i].sketch)
        return NAN;
    double f = NAN;
    for (int dir = -1; dir <= 1; dir += 2)
        for (int x = i + dir; x >= 0 && x < j->n; x += dir)
            if (j->c[x].sketch && !suspect(j, x) && !(skip && skip[x])) {
                if (!(D(j, i, x) >= f))
                    f = D(j, i, x);
                break;
            }
    return f;
}

/* The weight file of x with this sha256, or NULL. */
static const struct integrity_file *file_with_sha(const struct integrity_ckpt *x, const char *sha)
{
    for (int f = 0; f < x->nfiles; f++)
        if (strcmp(x->files[f].sha256, sha) == 0)
            return &x->files[f];
    return NULL;
}

/* 1: a weight file of one checkpoint in another's place.  For each weight
 * file's sha256, the checkpoints holding it, in groups of equal weights
 * (a whole copy shares every file: rule 3's business); with two groups or
 * more and a file that changes around each holder, the group that fits
 * its place keeps it and the others are suspect. */
static void judge_shards(struct judge *j, unsigned char *in, int *grp)
{
    for (int a = 0; a < j->n; a++)
        for (int fa = 0; fa < j->c[a].nfiles; fa++) {
            const char *sha = j->c[a].files[fa].sha256;
            int holders = 0, first_holder = -1, ok = 1;
            for (int x = 0; x < j->n; x++) {
                const struct integrity_file *g = file_with_sha(&j->c[x], sha);
                in[x] = g != NULL;
                if (!g)
                    continue;
                if (first_holder < 0)
                    first_holder = x;
                holders++;
                ok &= j->c[x].weights != NULL && file_changes_around(j, x, g);
            }
            if (first_holder != a || holders < 2 || !ok)
                continue; /* seen from its first holder; or nothing to judge */
            /* groups of equal weights among the holders */
            int ngroups = 0;
            for (int x = 0; x < j->n; x++) {
                grp[x] = -1;
                if (!in[x])
                    continue;
                for (int y = 0; y < x && grp[x] < 0; y++)
                    if (in[y] && same_weights(&j->c[x], &j->c[y]))
                        grp[x] = grp[y];
                if (grp[x] < 0)
                    grp[x] = ngroups++;
            }
            if (ngroups < 2)
                continue;
            /* the keeper: the group with the best-fitting member; without
             * sketches, the group of the latest holder */
            int keeper = -1, known = 1;
            double best = INFINITY;
            for (int x = 0; x < j->n; x++) {
                if (!in[x])
                    continue;
                double f = fit_outside(j, x, in);
                if (!isfinite(f))
                    known = 0;
                else if (f < best) {
                    best = f;
                    keeper = x;
                }
            }
            if (!known || keeper < 0)
                for (int x = j->n - 1; x >= 0 && (keeper < 0 || !known); x--)
                    if (in[x]) {
                        keeper = x;
                        known = 1;
                    }
            for (int x = 0; x < j->n; x++) {
                if (!in[x] || grp[x] == grp[keeper] || suspect(j, x))
                    continue;
                const struct integrity_file *lf = file_with_sha(&j->c[x], sha), *kf = file_with_sha(&j->c[keeper], sha);
                mark(j, x, INTEGRITY_SHARD_DUPLICATE, keeper,
                     "file %s is step %lld's %s (sha256 %.12s); distance to its neighbours %.4g, step %lld's %.4g",
                     lf->name, j->c[keeper].step, kf->name, sha, fit_outside(j, x, in), j->c[keeper].step,
                     fit_outside(j, keeper, in));
            }
        }
}

/* 2a: copied stretches.  Checkpoints with equal sketches (equal weights)
 * that lie apart in the schedule, and the checkpoints after them equal in
 * turn, are one stretch in two places; the place whose ends join their
 * neighbours worse (the mean distance across its two boundaries, by more
 * than 2x) holds the copy: its members are suspect, like their twins. */
static void judge_twins(struct judge *j, int *cls, int *run_of)
{
    /* the checkpoints with a sketch, not suspect, in order; their classes
     * of equal sketches; runs of consecutive equal ones */
    int m = 0;
    for (int i = 0; i < j->n; i++)
        if (j->c[i].sketch && !suspect(j, i))
            run_of[m++] = i; /* run_of holds the alive list first */
    int *al = malloc(sizeof *al * ((size_t)m + 1)), *rs = malloc(sizeof *rs * ((size_t)m + 1));
    int *re = malloc(sizeof *re * ((size_t)m + 1)), *done = calloc((size_t)m + 1, sizeof *done);
    if (!al || !rs || !re || !done)
        goto out;
    memcpy(al, run_of, sizeof *al * (size_t)m);
    for (int p = 0; p < m; p++) {
        cls[p] = p;
        for (int q = 0; q < p; q++)
            if (D(j, al[p], al[q]) == 0) {
                cls[p] = cls[q];
                break;
            }
    }
    int nr = 0; /* runs: positions rs[r]..re[r] of one class */
    for (int p = 0; p < m; p++)
        if (p > 0 && cls[p] == cls[p - 1])
            re[nr - 1] = p;
        else {
            rs[nr] = re[nr] = p;
            nr++;
        }
    for (int x = 0; x < nr; x++)
        for (int y = x + 2; y < nr; y++) {
            if (done[x] || done[y] || cls[rs[x]] != cls[rs[y]])
                continue;
            int k = 0; /* extend while the runs after them are equal too */
            while (x + k + 1 < y && y + k + 1 < nr && !done[x + k + 1] && !done[y + k + 1] &&
                   cls[rs[x + k + 1]] == cls[rs[y + k + 1]])
                k++;
            double cost[2];
            const int from[2] = {x, y};
            for (int s = 0; s < 2; s++) {
                int lo = rs[from[s]], hi = re[from[s] + k];
                double sum = 0.0;
                int nb = 0;
                if (lo > 0) {
                    sum += D(j, al[lo - 1], al[lo]);
                    nb++;
                }
                if (hi + 1 < m) {
                    sum += D(j, al[hi], al[hi + 1]);
                    nb++;
                }
                cost[s] = nb ? sum / nb : NAN;
            }
            int bad = cost[0] > 2.0 * cost[1] ? 0 : cost[1] > 2.0 * cost[0] ? 1 : -1;
            if (bad < 0)
                continue;
            int good = 1 - bad;
            for (int r = 0; r <= k; r++) {
                done[from[bad] + r] = done[from[good] + r] = 1;
                int twin = al[rs[from[good] + r]];
                for (int p = rs[from[bad] + r]; p <= re[from[bad] + r]; p++) {
                    int c = al[p];
                    if (c == al[0] && twin == al[m - 1])
                        mark(j, c, INTEGRITY_STEP0_IS_FINAL, twin, "weights equal to the last step %lld's", j->c[twin].step);
                    else
                        mark(j, c, INTEGRITY_MISLABEL, twin,
                             "weights equal to step %lld's; steps %lld..%lld join their neighbours at %.4g on "
                             "average, their copies at %lld..%lld at %.4g", j->c[twin].step,
                             j->c[al[rs[from[bad]]]].step, j->c[al[re[from[bad] + k]]].step, cost[bad],
                             j->c[al[rs[from[good]]]].step, j->c[al[re[from[good] + k]]].step, cost[good]);
                }
            }
        }
out:
    free(al);
    free(rs);
    free(re);
    free(done);
}

/* The distance from the first alive checkpoint, for init_jump. */
static double d0(const struct judge *j, const int *al, int x) { return D(j, al[0], x); }

/* 2: the trajectory.  al: the alive checkpoints' indices, in step order. */
static int judge_trajectory(struct judge *j, struct err *e)
{
    int *al = malloc(sizeof *al * (size_t)(j->n + 1));
    double *fit = malloc(sizeof *fit * (size_t)(j->n + 1));
    if (!al || !fit) {
        free(al);
        free(fit);
        return err_set(e, ERR_NOMEM, "integrity", "out of memory for %d checkpoints", j->n);
    }
    for (int round = 0; round < j->n; round++) {
        int m = 0;
        for (int i = 0; i < j->n; i++)
            if (j->c[i].sketch && !suspect(j, i))
                al[m++] = i;
        if (m < 3)
            break;
        for (int p = 0; p < m; p++) {
            double f = NAN;
            if (p > 0)
                f = D(j, al[p], al[p - 1]);
            if (p + 1 < m && !(D(j, al[p], al[p + 1]) >= f))
                f = D(j, al[p], al[p + 1]);
            fit[p] = f;
        }
        double best = 0.0, near_min = INFINITY, detour_max = 0.0;
        int kind = 0, bp = -1, bq = -1, bs = -1, bt = -1;
        /* a: nearer to a step two places away than to its neighbours */
        for (int p = 0; p < m; p++) {
            int nq = -1;
            for (int q = 0; q < m; q++)
                if ((q < p - 1 || q > p + 1) && (nq < 0 || D(j, al[p], al[q]) < D(j, al[p], al[nq])))
                    nq = q;
            if (nq < 0)
                continue;
            double dn = D(j, al[p], al[nq]);
            if (fit[p] > 0)
                near_min = fmin(near_min, dn / fit[p]);
            if (!(dn < INTEGRITY_NEAR_RATIO * fit[p]) || !(fit[nq] < fit[p]))
                continue;
            double bad = dn > fit[p] * 1e-12 ? fit[p] / dn : 1e12;
            if (bad > best) {
                best = bad;
                kind = 1;
                bp = p;
                bq = nq;
            }
        }
        /* b: a stretch the trajectory leaves and comes back from */
        int lmax = (m - 2) / 3 < INTEGRITY_MAX_STRETCH ? (m - 2) / 3 : INTEGRITY_MAX_STRETCH;
        for (int s = 1; s + 1 < m; s++)
            for (int t = s; t < s + lmax && t + 1 < m; t++) {
                double in = D(j, al[s - 1], al[s]), out = D(j, al[t], al[t + 1]);
                double skip = D(j, al[s - 1], al[t + 1]);
                double floor = 1e-12 * fmax(j->norm[al[s - 1]], j->norm[al[t + 1]]);
                double r = fmin(in, out) / fmax(skip, floor);
                detour_max = fmax(detour_max, r);
                if (r > INTEGRITY_DETOUR_RATIO && r > best) {
                    best = r;
                    kind = 2;
                    bs = s;
                    bt = t;
                }
            }
        if (kind == 0) { /* what is left is believed: how close it came */
            j->margins->near = near_min;
            j->margins->detour = detour_max;
            break;
        }
        if (kind == 1) {
            int c = al[bp], l = al[bq];
            if (D(j, c, l) == 0 && bp == 0 && bq == m - 1)
                mark(j, c, INTEGRITY_STEP0_IS_FINAL, l, "weights equal to the last step %lld's", j->c[l].step);
            else if (D(j, c, l) == 0)
                mark(j, c, INTEGRITY_MISLABEL, l,
                     "weights equal to step %lld's, whose distance to its neighbours is %.4g; this step's %.4g",
                     j->c[l].step, fit[bq], fit[bp]);
            else if (bp == 0 && bq == m - 1)
                mark(j, c, INTEGRITY_STEP0_IS_FINAL, l,
                     "d=%.4g to the last step %lld; d=%.4g to the next, step %lld", D(j, c, l), j->c[l].step,
                     fit[bp], j->c[al[1]].step);
            else
                mark(j, c, INTEGRITY_MISLABEL, l,
                     "d=%.4g to step %lld, %.3gx nearer than to its nearest neighbour (d=%.4g); step %lld's "
                     "own is %.4g", D(j, c, l), j->c[l].step, fit[bp] / fmax(D(j, c, l), 1e-300), fit[bp],
                     j->c[l].step, fit[bq]);
            continue;
        }
        int p = al[bs - 1], q = al[bt + 1];
        double in = D(j, p, al[bs]), out = D(j, al[bt], q), skip = D(j, p, q), way = fmin(in, out);
        double lo = fmin(d0(j, al, p), d0(j, al, q)), hi = fmax(d0(j, al, p), d0(j, al, q));
        double smin = INFINITY, smax = -INFINITY;
        for (int x = bs; x <= bt; x++) {
            smin = fmin(smin, d0(j, al, al[x]));
            smax = fmax(smax, d0(j, al, al[x]));
        }
        int jump = fmax(smax - hi, lo - smin) > 0.5 * way;
        for (int x = bs; x <= bt; x++) {
            int c = al[x], nb = -1;
            for (int y = 0; y < j->n; y++) /* its nearest outside the stretch */
                if (j->c[y].sketch && (y < al[bs] || y > al[bt]) && (nb < 0 || D(j, c, y) < D(j, c, nb)))
                    nb = y;
            if (nb >= 0 && D(j, c, nb) < INTEGRITY_NEAR_RATIO * way)
                mark(j, c, INTEGRITY_MISLABEL, nb,
                     "steps %lld..%lld leave the trajectory (way in %.4g, out %.4g, skipping them %.4g); "
                     "d=%.4g to step %lld", j->c[al[bs]].step, j->c[al[bt]].step, in, out, skip, D(j, c, nb),
                     j->c[nb].step);
            else if (jump)
                mark(j, c, INTEGRITY_INIT_JUMP, nb,
                     "steps %lld..%lld: distance from init %.4g..%.4g against %.4g and %.4g around (way in "
                     "%.4g, out %.4g, skipping them %.4g)", j->c[al[bs]].step, j->c[al[bt]].step, smin, smax,
                     d0(j, al, p), d0(j, al, q), in, out, skip);
            else
                mark(j, c, INTEGRITY_OFF_TRAJECTORY, nb,
                     "steps %lld..%lld leave the trajectory: way in %.4g, out %.4g, skipping them %.4g",
                     j->c[al[bs]].step, j->c[al[bt]].step, in, out, skip);
        }
    }
    free(al);
    free(fit);
    return 0;
}

/* Block fit of group members lo..hi (consecutive indices): the distance
 * from their sketch to the nearest believable checkpoints outside the
 * group on either side, or NaN. */
static double block_fit(const struct judge *j, int lo, int hi)
{
    int s = -1;
    for (int x = lo; x <= hi && s < 0; x++)
        if (j->c[x].sketch)
            s = x;
    if (s < 0)
        return NAN;
    double f = NAN;
    for (int dir = -1; dir <= 1; dir += 2)
        for (int x = dir < 0 ? lo - 1 : hi + 1; x >= 0 && x < j->n; x += dir)
            if (j->c[x].sketch && !suspect(j, x) && !same_weights(&j->c[x], &j->c[s])) {
                if (!(D(j, s, x) >= f))
                    f = D(j, s, x);
                break;
            }
    return f;
}

/* 3: equal weights.  grp: scratch (n). */
static void judge_groups(struct judge *j, int *grp)
{
    for (int i = 0; i < j->n; i++)
        grp[i] = 0;
    for (int i = 0; i < j->n; i++) {
        if (grp[i] || !j->c[i].weights)
            continue;
        int nm = 0;
        for (int x = i; x < j->n; x++)
            if (x == i || same_weights(&j->c[i], &j->c[x])) {
                grp[x] = 1;
                nm++;
            }
        if (nm < 2)
            continue;
        /* blocks: members with no other checkpoint between them */
        int cb_lo = -1, cb_hi = -1, by_fit = 1;
        double cb_fit = NAN;
        for (int lo = i; lo < j->n; lo++) {
            if (!same_weights(&j->c[i], &j->c[lo]) || (lo > i && same_weights(&j->c[i], &j->c[lo - 1])))
                continue;
            int hi = lo, live = 0;
            while (hi + 1 < j->n && same_weights(&j->c[i], &j->c[hi + 1]))
                hi++;
            for (int x = lo; x <= hi; x++)
                live |= !suspect(j, x);
            if (!live)
                continue;
            double f = block_fit(j, lo, hi);
            if (!isfinite(f))
                by_fit = 0;
            if (cb_lo < 0 || (isfinite(f) && isfinite(cb_fit) && f < cb_fit)) {
                cb_lo = lo;
                cb_hi = hi;
                cb_fit = f;
            }
        }
        int canon = -1;
        for (int x = cb_lo; cb_lo >= 0 && x <= cb_hi && canon < 0; x++)
            if (!suspect(j, x))
                canon = x;
        if (canon < 0) /* every member suspect: the earliest is the copy */
            canon = i;
        for (int x = i; x < j->n; x++) {
            if (x == canon || !same_weights(&j->c[i], &j->c[x]))
                continue;
            j->v[x].duplicate_of = canon;
            if (suspect(j, x) || (x >= cb_lo && x <= cb_hi) || !by_fit)
                continue;
            int xlo = x, xhi = x; /* x's block, for its fit */
            while (xlo > 0 && same_weights(&j->c[i], &j->c[xlo - 1]))
                xlo--;
            while (xhi + 1 < j->n && same_weights(&j->c[i], &j->c[xhi + 1]))
                xhi++;
            double fx = block_fit(j, xlo, xhi);
            if (!(fx > cb_fit))
                continue; /* as good a fit: a plain duplicate */
            mark(j, x, x == 0 && canon == j->n - 1 ? INTEGRITY_STEP0_IS_FINAL : INTEGRITY_MISLABEL, canon,
                 "same weights as step %lld, whose neighbours are at d=%.4g; this step's at d=%.4g",
                 j->c[canon].step, cb_fit, fx);
        }
    }
}

/* 4: the signals, over the believed checkpoints. */
static void judge_signals(struct judge *j)
{
    int first = -1;
    for (int i = 0; i < j->n && first < 0; i++)
        if (j->c[i].sketch && !suspect(j, i) && j->v[i].duplicate_of < 0)
            first = i;
    for (int i = 0; i < j->n; i++) {
        struct integrity_verdict *v = &j->v[i];
        if (!j->c[i].sketch)
            continue;
        v->norm = j->norm[i];
        for (int x = i - 1; x >= 0 && v->prev < 0; x--)
            if (j->c[x].sketch && !suspect(j, x) && j->v[x].duplicate_of < 0)
                v->prev = x;
        v->init = first;
        for (int x = 0; x < j->n; x++)
            if (x != i && j->c[x].sketch && (v->nearest < 0 || D(j, i, x) < D(j, i, v->nearest)))
                v->nearest = x;
        const int to[2] = {v->prev, v->init};
        double *dist[2] = {&v->dist_prev, &v->dist_init}, *cosv[2] = {&v->cos_prev, &v->cos_init};
        for (int t = 0; t < 2; t++) {
            if (to[t] < 0)
                continue;
            double dot = 0.0;
            for (int q = 0; q < j->k; q++)
                dot += j->c[i].sketch[q] * j->c[to[t]].sketch[q];
            *dist[t] = D(j, i, to[t]);
            double nn = j->norm[i] * j->norm[to[t]];
            *cosv[t] = nn > 0 ? dot / nn : NAN;
        }
        if (v->nearest >= 0)
            v->dist_nearest = D(j, i, v->nearest);
    }
}

int integrity_judge(const struct integrity_ckpt *c, int n, int k, struct integrity_verdict *out,
                    struct integrity_margins *margins, struct err *e)
{
    struct integrity_margins local;
    if (!margins)
        margins = &local;
    margins->near = INFINITY;
    margins->detour = 0.0;
    if (n < 0 || k < 1)
        return err_set(e, ERR_INVALID, "integrity", "%d checkpoints, sketches of %d", n, k);
    for (int i = 1; i < n; i++)
        if (c[i].step <= c[i - 1].step)
            return err_set(e, ERR_INVALID, "integrity", "steps not increasing at %lld", c[i].step);
    for (int i = 0; i < n; i++) {
        memset(&out[i], 0, sizeof out[i]);
        out[i].reason = INTEGRITY_OK;
        out[i].like = out[i].duplicate_of = out[i].prev = out[i].init = out[i].nearest = -1;
        out[i].dist_prev = out[i].cos_prev = out[i].dist_init = out[i].cos_init = NAN;
        out[i].dist_nearest = out[i].norm = NAN;
    }
    struct judge j = {c, n, k, NULL, NULL, out, margins};
    int *grp = NULL, *scratch_i = NULL, rc = 0;
    unsigned char *scratch_u8 = NULL;
    j.d = malloc(sizeof *j.d * ((size_t)n * (size_t)n + 1));
    j.norm = malloc(sizeof *j.norm * ((size_t)n + 1));
    grp = malloc(sizeof *grp * ((size_t)n + 1));
    scratch_i = malloc(sizeof *scratch_i * ((size_t)n + 1));
    scratch_u8 = malloc((size_t)n + 1);
    if (!j.d || !j.norm || !grp || !scratch_i || !scratch_u8) {
        rc = err_set(e, ERR_NOMEM, "integrity", "out of memory for %d checkpoints", n);
        goto out;
    }
    for (int a = 0; a < n; a++) {
        double s = 0.0;
        for (int q = 0; c[a].sketch && q < k; q++)
            s += c[a].sketch[q] * c[a].sketch[q];
        j.norm[a] = c[a].sketch ? sqrt(s) : NAN;
        D(&j, a, a) = c[a].sketch ? 0.0 : NAN;
        for (int b = a + 1; b < n; b++) {
            double d = NAN;
            if (c[a].sketch && c[b].sketch) {
                d = 0.0;
                for (int q = 0; q < k; q++) {
                    double x = c[a].sketch[q] - c[b].sketch[q];
                    d += x * x;
                }
                d = sqrt(d);
            }
            D(&j, a, b) = D(&j, b, a) = d;
        }
    }
    judge_shards(&j, scratch_u8, grp);
    judge_twins(&j, grp, scratch_i);
    if ((rc = judge_trajectory(&j, e)) < 0)
        goto out;
    judge_groups(&j, grp);
    judge_signals(&j);
out:
    free(j.d);
    free(j.norm);
    free(grp);
    free(scratch_i);
    free(scratch_u8);
    return rc;
}

/* ---- the daemon's pass ---- */

/* What the pass read of a run, owned. */
struct run_data {
    int n;
    long long *ids, *dup_ids, *old_like;
    char **old_suspect, **old_detail;
    struct integrity_ckpt *c;
    double *sketches;              /* (n, k) */
    struct integrity_file *files;  /* all of them; c[i].files points in */
    PGresult *ck, *fr;             /* the strings borrow from these */
    int k;
};

static void run_data_free(struct run_data *d)
{
    free(d->ids);
    free(d->dup_ids);
    free(d->old_like);
    free(d->old_suspect);
    free(d->old_detail);
    free(d->c);
    free(d->sketches);
    free(d->files);
    PQclear(d->ck);
    PQclear(d->fr);
}

static int find_step(const struct run_data *d, long long step)
{
    int lo = 0, hi = d->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (d->c[mid].step == step)
            return mid;
        if (d->c[mid].step < step)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

/* Parse "v1,v2,..." into out (k values); 0, or -1 if it has not k finite values. */
static int parse_sketch(const char *s, double *out, int k)
{
    for (int q = 0; q < k; q++) {
        char *end = NULL;
        out[q] = strtod(s, &end);
        if (end == s || !isfinite(out[q]) || (q + 1 < k && *end != ','))
            return -1;
        s = end + 1;
    }
    return 0;
}

static int read_run(struct db *db, long long run_id, struct run_data *d, struct err *e)
{
    char id[32];
    snprintf(id, sizeof id, "%lld", run_id);
    const char *p[1] = {id};
    memset(d, 0, sizeof *d);
    d->k = INTEGRITY_SKETCH_K;
    d->ck = db_exec(db,
        "SELECT id, step, sha256, coalesce(duplicate_of, -1), coalesce(suspect, ''),"
        "   coalesce(suspect_step, -1), coalesce(suspect_detail, '')"
        " FROM checkpoints WHERE run_id = $1 ORDER BY step", 1, p, e);
    if (!d->ck)
        return ERR_DB;
    int n = d->n = PQntuples(d->ck);
    d->ids = calloc((size_t)n + 1, sizeof *d->ids);
    d->dup_ids = calloc((size_t)n + 1, sizeof *d->dup_ids);
    d->old_like = calloc((size_t)n + 1, sizeof *d->old_like);
    d->old_suspect = calloc((size_t)n + 1, sizeof *d->old_suspect);
    d->old_detail = calloc((size_t)n + 1, sizeof *d->old_detail);
    d->c = calloc((size_t)n + 1, sizeof *d->c);
    d->sketches = calloc((size_t)n * (size_t)d->k + 1, sizeof *d->sketches);
    if (!d->ids || !d->dup_ids || !d->old_like || !d->old_suspect || !d->old_detail || !d->c || !d->sketches)
        return err_set(e, ERR_NOMEM, "integrity", "out of memory for %d checkpoints", n);
    for (int i = 0; i < n; i++) {
        d->ids[i] = atoll(PQgetvalue(d->ck, i, 0));
        d->c[i].step = atoll(PQgetvalue(d->ck, i, 1));
        d->c[i].weights = PQgetisnull(d->ck, i, 2) ? NULL : PQgetvalue(d->ck, i, 2);
        d->dup_ids[i] = atoll(PQgetvalue(d->ck, i, 3));
        d->old_suspect[i] = PQgetvalue(d->ck, i, 4);
        d->old_like[i] = atoll(PQgetvalue(d->ck, i, 5));
        d->old_detail[i] = PQgetvalue(d->ck, i, 6);
    }
    /* the newest integrity version's whole-model sketch, per step */
    PGresult *r = db_exec(db,
        "SELECT m.step, array_to_string(array_agg(m.value ORDER BY m.idx), ','), count(*)"
        " FROM measurements m WHERE m.run_id = $1 AND m.layer = -1 AND m.head = -1"
        "   AND m.metric_id = (SELECT id FROM metrics WHERE item = 'integrity' AND name = 'sketch'"
        "                      ORDER BY version DESC LIMIT 1)"
        " GROUP BY m.step", 1, p, e);
    if (!r)
        return ERR_DB;
    for (int t = 0; t < PQntuples(r); t++) {
        int i = find_step(d, atoll(PQgetvalue(r, t, 0)));
        double *s = i >= 0 ? d->sketches + (size_t)i * (size_t)d->k : NULL;
        if (s && atoi(PQgetvalue(r, t, 2)) == d->k && parse_sketch(PQgetvalue(r, t, 1), s, d->k) == 0)
            d->c[i].sketch = s;
        else if (i >= 0)
            log_warn("integrity: sketch left out", "run_id=%lld step=%s buckets=%s", run_id,
                     PQgetvalue(r, t, 0), PQgetvalue(r, t, 2));
    }
    PQclear(r);
    d->fr = db_exec(db,
        "SELECT c.step, f.name, f.sha256 FROM checkpoint_files f JOIN checkpoints c ON c.id = f.checkpoint_id"
        " WHERE c.run_id = $1 AND f.name ~ '\\.(safetensors|bin)$' ORDER BY c.step, f.name", 1, p, e);
    if (!d->fr)
        return ERR_DB;
    int nf = PQntuples(d->fr);
    d->files = calloc((size_t)nf + 1, sizeof *d->files);
    if (!d->files)
        return err_set(e, ERR_NOMEM, "integrity", "out of memory for %d files", nf);
    for (int t = 0; t < nf; t++) {
        int i = find_step(d, atoll(PQgetvalue(d->fr, t, 0)));
        d->files[t].name = PQgetvalue(d->fr, t, 1);
        d->files[t].sha256 = PQgetvalue(d->fr, t, 2);
        if (i < 0)
            continue;
        if (!d->c[i].files)
            d->c[i].files = &d->files[t];
        d->c[i].nfiles++;
    }
    return 0;
}

/* An array literal being built: {a,b,c}. */
struct lit {
    char *p;
    size_t len, cap;
};

static int lit_add(struct lit *l, const char *s)
{
    size_t need = strlen(s) + 2;
    if (l->len + need + 2 > l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4096;
        while (l->len + need + 2 > cap)
            cap *= 2;
        char *p = realloc(l->p, cap);
        if (!p)
            return ERR_NOMEM;
        l->p = p;
        l->cap = cap;
    }
    l->p[l->len] = l->len == 0 ? '{' : ',';
    l->len++;
    memcpy(l->p + l->len, s, need - 2);
    l->len += need - 2;
    l->p[l->len] = '}';
    l->p[l->len + 1] = '\0';
    return 0;
}

static const char *lit_str(struct lit *l) { return l->p ? l->p : "{}"; }

static int lit_num(struct lit *l, double v)
{
    char b[40];
    if (isnan(v))
        snprintf(b, sizeof b, "NaN");
    else
        snprintf(b, sizeof b, "%.17g", v);
    return lit_add(l, b);
}

static int lit_int(struct lit *l, long long v)
{
    char b[32];
    snprintf(b, sizeof b, "%lld", v);
    return lit_add(l, b);
}

/* A text element, quoted and escaped for an array literal. */
static int lit_text(struct lit *l, const char *s)
{
    size_t n = strlen(s);
    char *q = malloc(2 * n + 3);
    if (!q)
        return ERR_NOMEM;
    size_t o = 0;
    q[o++] = '"';
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"' || s[i] == '\\')
            q[o++] = '\\';
        q[o++] = s[i];
    }
    q[o++] = '"';
    q[o] = '\0';
    int rc = lit_add(l, q);
    free(q);
    return rc;
}

/* Store the verdicts that changed and every signal.  *changed: verdicts
 * (suspect or canonical copy) that changed. */
static int write_verdicts(struct db *db, long long run_id, const struct run_data *d,
                          const struct integrity_verdict *v, int *changed, struct err *e)
{
    enum { U_ID, U_SUS, U_STEP, U_DET, U_DUP, S_ID, S_PREV, S_DPREV, S_CPREV, S_INIT, S_DINIT, S_CINIT,
           S_NEAR, S_DNEAR, S_NORM, NLIT };
    struct lit l[NLIT];
    memset(l, 0, sizeof l);
    int rc = 0;
    *changed = 0;
    for (int i = 0; i < d->n && rc == 0; i++) {
        const char *sus = integrity_reason_name(v[i].reason);
        long long like = v[i].like >= 0 ? d->c[v[i].like].step : -1;
        long long dup = v[i].duplicate_of >= 0 ? d->ids[v[i].duplicate_of] : -1;
        int verdict = strcmp(sus ? sus : "", d->old_suspect[i]) != 0 || dup != d->dup_ids[i];
        *changed += verdict;
        if (verdict || like != d->old_like[i] || strcmp(v[i].detail, d->old_detail[i]) != 0)
            if ((rc = lit_int(&l[U_ID], d->ids[i])) < 0 || (rc = lit_text(&l[U_SUS], sus ? sus : "")) < 0 ||
                (rc = lit_int(&l[U_STEP], like)) < 0 || (rc = lit_text(&l[U_DET], v[i].detail)) < 0 ||
                (rc = lit_int(&l[U_DUP], dup)) < 0)
                break;
        if (!d->c[i].sketch)
            continue;
        const int ref[3] = {v[i].prev, v[i].init, v[i].nearest};
        const int col[3] = {S_PREV, S_INIT, S_NEAR};
        for (int t = 0; t < 3 && rc == 0; t++)
            rc = lit_int(&l[col[t]], ref[t] >= 0 ? d->c[ref[t]].step : -1);
        if (rc < 0 || (rc = lit_int(&l[S_ID], d->ids[i])) < 0 || (rc = lit_num(&l[S_DPREV], v[i].dist_prev)) < 0 ||
            (rc = lit_num(&l[S_CPREV], v[i].cos_prev)) < 0 || (rc = lit_num(&l[S_DINIT], v[i].dist_init)) < 0 ||
            (rc = lit_num(&l[S_CINIT], v[i].cos_init)) < 0 ||
            (rc = lit_num(&l[S_DNEAR], v[i].dist_nearest)) < 0 || (rc = lit_num(&l[S_NORM], v[i].norm)) < 0)
            break;
    }
    if (rc < 0) {
        rc = err_set(e, ERR_NOMEM, "integrity", "out of memory");
        goto out;
    }
    char id[32];
    snprintf(id, sizeof id, "%lld", run_id);
    if (l[U_ID].p) {
        const char *pu[5] = {lit_str(&l[U_ID]), lit_str(&l[U_SUS]), lit_str(&l[U_STEP]), lit_str(&l[U_DET]),
                             lit_str(&l[U_DUP])};
        if ((rc = db_run(db,
                "UPDATE checkpoints c SET suspect = nullif(x.s, ''), suspect_step = nullif(x.st, -1),"
                "   suspect_detail = nullif(x.d, ''), duplicate_of = nullif(x.dup, -1)"
                " FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::bigint[])"
                "   AS x(id, s, st, d, dup) WHERE c.id = x.id", 5, pu, e)) < 0)
            goto out;
    }
    const char *pd[1] = {id};
    if ((rc = db_run(db,
            "DELETE FROM checkpoint_integrity WHERE checkpoint_id IN (SELECT id FROM checkpoints WHERE run_id = $1)",
            1, pd, e)) < 0)
        goto out;
    if (l[S_ID].p) {
        const char *ps[10] = {lit_str(&l[S_ID]), lit_str(&l[S_PREV]), lit_str(&l[S_DPREV]), lit_str(&l[S_CPREV]),
                              lit_str(&l[S_INIT]), lit_str(&l[S_DINIT]), lit_str(&l[S_CINIT]),
                              lit_str(&l[S_NEAR]), lit_str(&l[S_DNEAR]), lit_str(&l[S_NORM])};
        rc = db_run(db,
            "INSERT INTO checkpoint_integrity (checkpoint_id, prev_step, dist_prev, cos_prev, init_step,"
            "   dist_init, cos_init, nearest_step, dist_nearest, sketch_norm)"
            " SELECT x.id, nullif(x.p, -1), nullif(x.dp, 'NaN'), nullif(x.cp, 'NaN'), nullif(x.i, -1),"
            "   nullif(x.di, 'NaN'), nullif(x.ci, 'NaN'), nullif(x.nr, -1), nullif(x.dn, 'NaN'),"
            "   nullif(x.nm, 'NaN')"
            " FROM unnest($1::bigint[], $2::bigint[], $3::float8[], $4::float8[], $5::bigint[], $6::float8[],"
            "   $7::float8[], $8::bigint[], $9::float8[], $10::float8[])"
            "   AS x(id, p, dp, cp, i, di, ci, nr, dn, nm)", 10, ps, e);
    }
out:
    for (int t = 0; t < NLIT; t++)
        free(l[t].p);
    return rc;
}

int integrity_run(struct db *db, long long run_id, struct integrity_stats *st, struct err *e)
{
    struct integrity_stats local;
    if (!st)
        st = &local;
    memset(st, 0, sizeof *st);
    double t0 = mono_now();
    struct run_data d;
    memset(&d, 0, sizeof d);
    struct integrity_verdict *v = NULL;
    char id[32];
    snprintf(id, sizeof id, "%lld", run_id);
    const char *p[1] = {id};
    int rc = db_run(db, "BEGIN", 0, NULL, e);
    if (rc < 0)
        return rc;
    /* one run at a time, with checkpoint_files_record */
    if ((rc = db_run(db, "SELECT pg_advisory_xact_lock(" STR(INTEGRITY_LOCK) ", $1::bigint::int)", 1, p, e)) < 0 ||
        (rc = read_run(db, run_id, &d, e)) < 0)
        goto rollback;
    v = calloc((size_t)d.n + 1, sizeof *v);
    if (!v) {
        rc = err_set(e, ERR_NOMEM, "integrity", "out of memory");
        goto rollback;
    }
    if ((rc = integrity_judge(d.c, d.n, d.k, v, &st->margins, e)) < 0 ||
        (rc = write_verdicts(db, run_id, &d, v, &st->changed, e)) < 0 ||
        (rc = db_run(db, "COMMIT", 0, NULL, e)) < 0)
        goto rollback;
    st->checkpoints = d.n;
    for (int i = 0; i < d.n; i++) {
        st->sketched += d.c[i].sketch != NULL;
        st->suspects += v[i].reason != INTEGRITY_OK;
        st->duplicates += v[i].duplicate_of >= 0;
    }
    st->seconds = mono_now() - t0;
    if (st->changed > 0) {
        /* the series changed under the run's transitions: find them again */
        struct detect_stats ds;
        struct err de;
        if (detect_run(db, run_id, NULL, NULL, 0, &ds, &de) < 0)
            log_err("transition detection after an integrity verdict failed; the verdicts are stored", &de);
    }
    goto out;
rollback:
    db_rollback(db);
out:
    free(v);
    run_data_free(&d);
    return rc;
}

void integrity_after_ingest(struct db *db, const struct claim *c)
{
    int has = 0;
    for (int i = 0; i < c->njobs && !has; i++)
        has = strcmp(c->items[i], "integrity") == 0;
    if (!has)
        return;
    struct integrity_stats st;
    struct err e;
    if (integrity_run(db, c->run_id, &st, &e) < 0) {
        log_err("integrity check failed; the checkpoint's results are stored", &e);
        return;
    }
    if (st.changed > 0)
        log_warn("integrity verdicts changed: the run's transitions were found again",
                 "run=%s step=%lld changed=%d suspects=%d duplicates=%d seconds=%.3f", log_quote(c->run), c->step,
                 st.changed, st.suspects, st.duplicates, st.seconds);
    else
        log_debug("integrity checked", "run=%s step=%lld sketched=%d suspects=%d seconds=%.3f", log_quote(c->run),
                  c->step, st.sketched, st.suspects, st.seconds);
}

int integrity_print(struct db *db, const char *run, int json, FILE *out, struct err *e)
{
    long long run_id;
    int rc = db_run_id(db, run, &run_id, e);
    if (rc < 0)
        return rc;
    struct integrity_stats st;
    rc = integrity_run(db, run_id, &st, e);
    if (rc < 0)
        return rc;
    const char *p[1] = {run};
    PGresult *r = db_exec(db,
        "SELECT step, prev_step, dist_prev, cos_prev, init_step, dist_init, cos_init, nearest_step,"
        "   dist_nearest, duplicate_of_step, suspect, suspect_step, suspect_detail"
        " FROM checkpoint_signals WHERE run = $1 ORDER BY step", 1, p, e);
    if (!r)
        return ERR_DB;
    static const char *const keys[13] = {"step", "prev_step", "dist_prev", "cos_prev", "init_step", "dist_init",
                                         "cos_init", "nearest_step", "dist_nearest", "duplicate_of",
                                         "suspect", "suspect_step", "detail"};
    if (json) {
        json_t *a = json_array();
        for (int i = 0; a && i < PQntuples(r); i++) {
            json_t *o = json_object();
            for (int k = 0; o && k < 13; k++) {
                json_t *val;
                if (PQgetisnull(r, i, k))
                    val = json_null();
                else if (k == 10 || k == 12)
                    val = json_string(PQgetvalue(r, i, k));
                else if (k == 2 || k == 3 || k == 5 || k == 6 || k == 8)
                    val = json_real(strtod(PQgetvalue(r, i, k), NULL));
                else
                    val = json_integer(atoll(PQgetvalue(r, i, k)));
                json_object_set_new(o, keys[k], val);
            }
            json_array_append_new(a, o);
        }
        char *s = a ? json_dumps(a, JSON_INDENT(1) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10)) : NULL;
        json_decref(a);
        if (!s) {
            PQclear(r);
            return err_set(e, ERR_NOMEM, "integrity", "out of memory");
        }
        fprintf(out, "%s\n", s);
        free(s);
    } else {
        fprintf(out, "run %s: %d checkpoints, %d with a sketch, %d suspect, %d duplicates\n", run, st.checkpoints,
                st.sketched, st.suspects, st.duplicates);
        if (isfinite(st.margins.near))
            fprintf(out, "headroom: nearest non-neighbour at %.3g x the neighbour distance (suspect below %.2g); "
                         "largest detour %.3g (suspect above %.2g)\n", st.margins.near, INTEGRITY_NEAR_RATIO,
                    st.margins.detour, INTEGRITY_DETOUR_RATIO);
        fprintf(out, "%10s %10s %11s %9s %11s %9s %10s  %s\n", "step", "prev", "dist_prev", "cos_prev", "dist_init",
                "cos_init", "nearest", "verdict");
        for (int i = 0; i < PQntuples(r); i++) {
            char verdict[400] = "";
            if (!PQgetisnull(r, i, 10))
                snprintf(verdict, sizeof verdict, "SUSPECT %s: %s", PQgetvalue(r, i, 10), PQgetvalue(r, i, 12));
            else if (!PQgetisnull(r, i, 9))
                snprintf(verdict, sizeof verdict, "duplicate of step %s", PQgetvalue(r, i, 9));
            char num[4][24];
            const int col[4] = {2, 3, 5, 6};
            for (int k = 0; k < 4; k++)
                if (PQgetisnull(r, i, col[k]))
                    snprintf(num[k], sizeof num[k], "-");
                else
                    snprintf(num[k], sizeof num[k], k % 2 ? "%.6f" : "%.5g", strtod(PQgetvalue(r, i, col[k]), NULL));
            fprintf(out, "%10s %10s %11s %9s %11s %9s %10s  %s\n", PQgetvalue(r, i, 0),
                    PQgetisnull(r, i, 1) ? "-" : PQgetvalue(r, i, 1), num[0], num[1], num[2], num[3],
                    PQgetisnull(r, i, 7) ? "-" : PQgetvalue(r, i, 7), verdict);
        }
    }
    PQclear(r);
    return 0;
}
