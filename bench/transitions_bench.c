/*
 * transitions_bench - the transition detector (daemon/detect/transitions.h):
 * its speed, the daemon's path around it, and the calibration of its
 * threshold.
 *
 *   transitions_bench [--series N] [--reps R]
 *       detect on N series of Pythia's 154 steps (default 10,000; white
 *       noise, a third with a sigmoid change): total seconds and
 *       microseconds per series, median of R repetitions (default 5)
 *   transitions_bench --db CONNINFO [--series N] [--reps R]
 *       also the daemon's path: N series of one run in PostgreSQL
 *       (written first, into a run named bench-transitions, deleted at
 *       the end), re-examined as after a checkpoint lands (detect_run: one
 *       COPY out, detect, delete and COPY the transitions in, one
 *       transaction); median of R.  CONNINFO "" is libpq's environment
 *   transitions_bench --calibrate-table N
 *       the null distribution of a series' first-candidate score
 *       (tr_max_score) on N series of white noise plus a random walk for
 *       each length of the table, by the random walk's share it was scored
 *       with: quantiles and the Gumbel law fitted to them, written as
 *       daemon/detect/transitions_null.inc (to stdout; the table is on stderr)
 *   transitions_bench --calibrate N
 *       N simulated series without a transition per kind of noise and
 *       schedule: the highest first-candidate score, how many series
 *       report a transition (calibrated p-value <= TR_P_MAX) and how many
 *       report a spike
 *   transitions_bench --sensitivity N
 *       the share of N series (white noise, sigma 1) in which a change of
 *       J sigma is found, a step or a sigmoid 4 checkpoints wide, at 60% of
 *       Pythia's and a toy run's schedule, and the largest distance in
 *       checkpoints from the peak to the true centre
 *
 * Prints a markdown table and one JSON line per measurement on stdout.
 * Nothing passes or fails on timings.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench_util.h"
#include "common/err.h"
#include "daemon/base/db.h"
#include "daemon/base/migrate.h"
#include "daemon/detect/detect.h"
#include "daemon/detect/transitions.h"
#include "tests/lib/series_sim.h"




/* Series i of the timing set: Pythia's steps, white noise, and for every
 * third a change of 20 sigma somewhere in the run. */
static void timing_series(int i, const long long *s, double *v, int n)
{
    struct sim_rng r = {0x5eed0000ULL + (unsigned long long)i};
    sim_noise(&r, SIM_GAUSS, s, v, n, 1.0);
    if (i % 3 == 0)
        sim_add_sigmoid(s, v, n, s[20 + (int)(sim_unif(&r) * (n - 40))], 3000, 20.0);
}

static int bench_detect(int nseries, int reps)
{
    long long s[SIM_MAX];
    int n = sim_pythia(s);
    double *v = malloc(sizeof(double) * (size_t)n * (size_t)nseries);
    double *secs = malloc(sizeof(double) * (size_t)reps);
    if (!v || !secs) {
        free(v);
        free(secs);
        fprintf(stderr, "transitions_bench: out of memory\n");
        return 1;
    }
    for (int i = 0; i < nseries; i++)
        timing_series(i, s, v + (size_t)i * n, n);
    long found = 0;
    for (int rep = 0; rep < reps; rep++) {
        struct tr_event t[TR_MAX_PER_SERIES];
        struct err e;
        double t0 = now_s();
        found = 0;
        for (int i = 0; i < nseries; i++) {
            int k = tr_detect(s, v + (size_t)i * n, n, t, TR_MAX_PER_SERIES, &e);
            for (int j = 0; j < k; j++)
                found += t[j].kind == TR_KIND_TRANSITION;
        }
        secs[rep] = now_s() - t0;
    }
    double med = median(secs, reps);
    printf("| detect only | %d | %d | %.3f | %.1f | %ld |\n", nseries, n, med, med / nseries * 1e6, found);
    printf("{\"bench\":\"transitions_detect\",\"series\":%d,\"points\":%d,\"reps\":%d,\"seconds\":%.6f,"
           "\"us_per_series\":%.3f,\"transitions\":%ld}\n",
           nseries, n, reps, med, med / nseries * 1e6, found);
    free(v);
    free(secs);
    return 0;
}

/* The schedules calibrated on. */
static int schedule(int which, long long *s, const char **name)
{
    switch (which) {
    case 0: *name = "pythia"; return sim_pythia(s);
    case 1: *name = "toy 3000/100"; return sim_toy(s, 3000, 100);
    case 2: *name = "toy 1000/20"; return sim_toy(s, 1000, 20);
    case 3: *name = "toy 6000/100"; return sim_toy(s, 6000, 100);
    case 4: *name = "even 20"; return sim_even(s, 20);
    case 5: *name = "even 24"; return sim_even(s, 24);
    case 6: *name = "even 300"; return sim_even(s, 300);
    default: return 0;
    }
}
#define NSCHEDULES 7

static int calibrate(int reps)
{
    long long s[SIM_MAX];
    double v[SIM_MAX];
    printf("Series without a transition, %d per kind and schedule: highest first-candidate score; "
           "series reporting a transition (p <= %g); series reporting a spike\n\n", reps, TR_P_MAX);
    printf("| schedule | points |");
    for (int k = 0; k < SIM_KIND_COUNT; k++)
        printf(" %s |", sim_kind_name[k]);
    printf("\n|---|---|");
    for (int k = 0; k < SIM_KIND_COUNT; k++)
        printf("---|");
    printf("\n");
    double worst[SIM_KIND_COUNT] = {0};
    long over[SIM_KIND_COUNT] = {0}, spiky[SIM_KIND_COUNT] = {0};
    for (int sch = 0; sch < NSCHEDULES; sch++) {
        const char *name = "";
        int n = schedule(sch, s, &name);
        printf("| %s | %d |", name, n);
        for (int k = 0; k < SIM_KIND_COUNT; k++) {
            struct sim_rng r = {0xca11b000ULL + 1000003ULL * (unsigned long long)k + 7919ULL * (unsigned long long)sch};
            double mx = 0;
            long o = 0, sp = 0;
            for (int i = 0; i < reps; i++) {
                struct err e;
                struct tr_event t[TR_MAX_PER_SERIES];
                double z;
                sim_noise(&r, (enum sim_kind)k, s, v, n, 1.0);
                int got = tr_detect(s, v, n, t, TR_MAX_PER_SERIES, &e);
                if (got < 0 || tr_max_score(s, v, n, &z, NULL, &e) < 0) {
                    fprintf(stderr, "transitions_bench: %s\n", err_str(&e));
                    return 1;
                }
                int nt = 0, ns = 0;
                for (int j = 0; j < got; j++) {
                    nt += t[j].kind == TR_KIND_TRANSITION;
                    ns += t[j].kind == TR_KIND_SPIKE;
                }
                mx = z > mx ? z : mx;
                o += nt > 0;
                sp += ns > 0;
            }
            over[k] += o;
            spiky[k] += sp;
            worst[k] = mx > worst[k] ? mx : worst[k];
            printf(" %.2f, %ld, %ld |", mx, o, sp);
        }
        printf("\n");
    }
    printf("\n");
    for (int k = 0; k < SIM_KIND_COUNT; k++)
        printf("{\"bench\":\"transitions_null\",\"kind\":\"%s\",\"series\":%d,\"max_score\":%.4f,"
               "\"series_with_transitions\":%ld,\"series_with_spikes\":%ld}\n", sim_kind_name[k],
               reps * NSCHEDULES, worst[k], over[k], spiky[k]);
    return 0;
}

/* The null table of tr_p_value: per length, reps series of white noise
 * plus a random walk whose share rho of the first differences' variance
 * is drawn from RHOS; their first-candidate scores binned by the rho they
 * were scored with (the bins' edges in EDGES); per bin with at least 400
 * series, its median rho and a Gumbel law through its 90% and 99%
 * quantiles (-ln(-ln q) = 2.2504 and 4.6001), checked at 99.9%. */
static int calibrate_table(int reps, int white)
{
    static const int lens[] = {20, 24, 28, 32, 38, 45, 54, 64, 76, 90, 108, 128, 154, 180, 215, 256, 300, 400};
    static const double rhos[] = {0, 0, 0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9, 1.0};
    static const double edges[] = {0, 0.03, 0.08, 0.15, 0.3, 0.5, 0.75, 1.0001};
    enum { NL = sizeof lens / sizeof *lens, NR = sizeof rhos / sizeof *rhos, NB = sizeof edges / sizeof *edges - 1 };
    long long *s = malloc(sizeof *s * 400);
    double *v = malloc(sizeof *v * 400), *z = malloc(sizeof *z * (size_t)reps), *rh = malloc(sizeof *rh * (size_t)reps);
    double *bz = malloc(sizeof *bz * (size_t)reps), *br = malloc(sizeof *br * (size_t)reps);
    if (!s || !v || !z || !rh || !bz || !br) {
        fprintf(stderr, "transitions_bench: out of memory\n");
        return 1;
    }
    fprintf(stderr, "| points | rho bin | series | median rho | q90 | q99 | q99.9 | mu | beta | Gumbel p at q99.9 |\n"
                    "|---|---|---|---|---|---|---|---|---|---|\n");
    printf("/* daemon/detect/transitions_null.inc: {points, rho, mu, beta}, the Gumbel law of the\n"
           " * first-candidate score on white noise plus a random walk of share rho,\n"
           " * %d series per length; written by\n"
           " * build/bench/transitions_bench --calibrate-table %d */\n", reps, reps);
    for (int li = 0; li < NL; li++) {
        int n = lens[li];
        for (int i = 0; i < n; i++)
            s[i] = 10LL * i;
        struct sim_rng r = {0x7ab1e000ULL + (unsigned long long)n};
        for (int k = 0; k < reps; k++) {
            struct err e;
            double rho = white ? 0.0 : rhos[k % NR], sd = rho < 1 ? 1.0 : 0.0;
            double tau = rho < 1 ? sqrt(2.0 * rho / (1.0 - rho)) : 1.0, walk = 0;
            for (int i = 0; i < n; i++) {
                walk += tau * sim_gauss(&r);
                v[i] = 5.0 + sd * sim_gauss(&r) + walk;
            }
            if (tr_max_score(s, v, n, &z[k], &rh[k], &e) < 0) {
                fprintf(stderr, "transitions_bench: %s\n", err_str(&e));
                return 1;
            }
        }
        for (int b = 0; b < NB; b++) {
            int m = 0;
            for (int k = 0; k < reps; k++)
                if (rh[k] >= edges[b] && rh[k] < edges[b + 1]) {
                    bz[m] = z[k];
                    br[m++] = rh[k];
                }
            if (m < 400)
                continue;
            qsort(bz, (size_t)m, sizeof *bz, cmp_double);
            double rmed = median(br, m);
            double q90 = bz[(int)(0.90 * (m - 1))], q99 = bz[(int)(0.99 * (m - 1))];
            double q999 = bz[(int)(0.999 * (m - 1))];
            double beta = (q99 - q90) / (4.6001 - 2.2504), mu = q90 - 2.2504 * beta;
            printf("{%d, %.4f, %.4f, %.4f},\n", n, rmed, mu, beta);
            fprintf(stderr, "| %d | %.2f-%.2f | %d | %.3f | %.3f | %.3f | %.3f | %.4f | %.4f | %.5f |\n", n, edges[b],
                    edges[b + 1], m, rmed, q90, q99, q999, mu, beta, -expm1(-exp(-(q999 - mu) / beta)));
        }
    }
    free(s);
    free(v);
    free(z);
    free(rh);
    free(bz);
    free(br);
    return 0;
}

static int sensitivity(int reps)
{
    static const double heights[] = {8, 12, 16, 24, 32, 48};
    enum { NH = sizeof heights / sizeof *heights };
    long long s[SIM_MAX];
    double v[SIM_MAX];
    printf("Series (of %d) in which a change of J sigma is found; largest peak error in checkpoints\n\n", reps);
    printf("| schedule | change |");
    for (int j = 0; j < NH; j++)
        printf(" J=%.0f |", heights[j]);
    printf("\n|---|---|");
    for (int j = 0; j < NH; j++)
        printf("---|");
    printf("\n");
    for (int sch = 0; sch < 2; sch++) {
        const char *name = "";
        int n = schedule(sch, s, &name);
        int ic = (int)(0.6 * n); /* the true centre: between checkpoints ic and ic + 1 */
        double centre = (double)(s[ic] + s[ic + 1]) / 2;
        for (int shape = 0; shape < 2; shape++) {
            double width = shape ? 4.0 * (double)(s[ic + 1] - s[ic]) : 0;
            printf("| %s | %s |", name, shape ? "sigmoid, 4 checkpoints" : "step");
            for (int j = 0; j < NH; j++) {
                struct sim_rng r = {0x5e750000ULL + 131ULL * (unsigned long long)j + 17ULL * (unsigned long long)(2 * sch + shape)};
                int found = 0, worst = 0;
                for (int i = 0; i < reps; i++) {
                    struct tr_event t[TR_MAX_PER_SERIES];
                    struct err e;
                    sim_noise(&r, SIM_GAUSS, s, v, n, 1.0);
                    sim_add_sigmoid(s, v, n, centre, width, heights[j]);
                    int k = tr_detect(s, v, n, t, TR_MAX_PER_SERIES, &e), it = -1;
                    for (int q = 0; q < k && it < 0; q++)
                        if (t[q].kind == TR_KIND_TRANSITION)
                            it = q;
                    if (it < 0)
                        continue;
                    found++;
                    int ip = 0;
                    while (ip < n - 1 && s[ip] < t[it].peak_step)
                        ip++;
                    int err = ip <= ic ? ic - ip : ip - ic - 1; /* 0: one of the two around the centre */
                    worst = err > worst ? err : worst;
                }
                printf(" %.0f%% (%d) |", 100.0 * found / reps, worst);
            }
            printf("\n");
        }
    }
    return 0;
}

int bench_db(const char *conninfo, int nseries, int reps);

int main(int argc, char **argv)
{
    int nseries = 10000, reps = 5, cal = 0, sens = 0, table = 0, white = 0;
    const char *db = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--series") == 0 && i + 1 < argc)
            nseries = atoi(argv[++i]);
        else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--calibrate") == 0 && i + 1 < argc)
            cal = atoi(argv[++i]);
        else if (strcmp(argv[i], "--calibrate-table") == 0 && i + 1 < argc)
            table = atoi(argv[++i]);
        else if (strcmp(argv[i], "--white") == 0)
            white = 1;
        else if (strcmp(argv[i], "--sensitivity") == 0 && i + 1 < argc)
            sens = atoi(argv[++i]);
        else if (strcmp(argv[i], "--db") == 0 && i + 1 < argc)
            db = argv[++i];
        else {
            fprintf(stderr, "usage: transitions_bench [--series N] [--reps R] [--db CONNINFO] | --calibrate N |"
                            " --calibrate-table N | --sensitivity N\n");
            return 2;
        }
    }
    if (nseries < 1 || reps < 1 || cal < 0 || sens < 0 || table < 0) {
        fprintf(stderr, "transitions_bench: --series, --reps and --calibrate take positive numbers\n");
        return 2;
    }
    if (table)
        return calibrate_table(table, white);
    if (cal)
        return calibrate(cal);
    if (sens)
        return sensitivity(sens);
    printf("| path | series | points | seconds (median of %d) | us per series | transitions |\n|---|---|---|---|---|---|\n", reps);
    int rc = bench_detect(nseries, reps);
    if (rc == 0 && db)
        rc = bench_db(db, nseries, reps);
    return rc;
}

/* Load nseries series of Pythia's steps into a run of its own, then time
 * detect_run over them (the daemon's path after a checkpoint lands); the
 * run is deleted at the end. */
int bench_db(const char *conninfo, int nseries, int reps)
{
    struct err e;
    struct db *db = db_new(conninfo);
    int rc = 1, applied;
    double *secs = malloc(sizeof(double) * (size_t)reps * 3);
    struct {
        char *p;
        size_t len, cap;
    } buf = {0}; /* COPY text */
    long long run_id = 0;
    long transitions = 0;
    if (!db || !secs) {
        fprintf(stderr, "transitions_bench: out of memory\n");
        goto out;
    }
    if (db_connect_wait(db, 5, &e) < 0 || migrate_apply(db, &applied, &e) < 0)
        goto dberr;
    if (db_run(db, "DELETE FROM runs WHERE name = 'bench-transitions'", 0, NULL, &e) < 0 ||
        db_run(db, "INSERT INTO metrics (item, version, name, description) VALUES"
                   " ('bench', 1, 'value', 'transitions_bench') ON CONFLICT (item, version, name) DO NOTHING",
               0, NULL, &e) < 0)
        goto dberr;
    PGresult *r = db_exec(db, "INSERT INTO runs (name, source, schedule, items) VALUES"
                              " ('bench-transitions', 'file:///nowhere', 'pythia', '{bench}') RETURNING id",
                          0, NULL, &e);
    if (!r)
        goto dberr;
    run_id = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    char id[32];
    snprintf(id, sizeof id, "%lld", run_id);
    const char *p1[1] = {id};
    if (db_run(db, "INSERT INTO checkpoints (run_id, step, revision, url)"
                   " SELECT $1::bigint, s, 'step' || s, 'file:///nowhere/step' || s FROM"
                   " (SELECT 0 AS s UNION ALL SELECT (2 ^ g)::bigint FROM generate_series(0, 9) g"
                   "  UNION ALL SELECT 1000 * k FROM generate_series(1, 143) k) x", 1, p1, &e) < 0)
        goto dberr;
    r = db_exec(db, "SELECT id FROM metrics WHERE item = 'bench' AND version = 1 AND name = 'value'", 0, NULL, &e);
    if (!r)
        goto dberr;
    int metric = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    /* the rows, by COPY */
    long long s[SIM_MAX];
    double v[SIM_MAX];
    int n = sim_pythia(s);
    double t0 = now_s();
    r = PQexec(db_conn(db), "COPY measurements (run_id, step, metric_id, layer, head, idx, value) FROM STDIN");
    int copying = PQresultStatus(r) == PGRES_COPY_IN;
    PQclear(r);
    if (!copying) {
        fprintf(stderr, "transitions_bench: COPY refused: %s\n", PQerrorMessage(db_conn(db)));
        goto out;
    }
    buf.cap = 1 << 20;
    buf.p = malloc(buf.cap);
    for (int i = 0; buf.p && i < nseries; i++) {
        timing_series(i, s, v, n);
        for (int k = 0; k < n; k++) {
            if (buf.cap - buf.len < 128) {
                PQputCopyData(db_conn(db), buf.p, (int)buf.len);
                buf.len = 0;
            }
            buf.len += (size_t)snprintf(buf.p + buf.len, buf.cap - buf.len, "%lld\t%lld\t%d\t-1\t-1\t%d\t%.17g\n",
                                        run_id, s[k], metric, i, v[k]);
        }
    }
    if (!buf.p || (buf.len && PQputCopyData(db_conn(db), buf.p, (int)buf.len) != 1) ||
        PQputCopyEnd(db_conn(db), NULL) != 1) {
        fprintf(stderr, "transitions_bench: COPY failed\n");
        goto out;
    }
    while ((r = PQgetResult(db_conn(db)))) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            fprintf(stderr, "transitions_bench: COPY: %s", PQresultErrorMessage(r));
        PQclear(r);
    }
    if (db_run(db, "ANALYZE measurements", 0, NULL, &e) < 0)
        goto dberr;
    fprintf(stderr, "transitions_bench: %d series of %d points loaded in %.1f s\n", nseries, n, now_s() - t0);
    const char *items[1] = {"bench"};
    int versions[1] = {1};
    for (int rep = 0; rep < reps; rep++) {
        struct detect_stats st;
        double t1 = now_s();
        if (detect_run(db, run_id, items, versions, 1, &st, &e) < 0)
            goto dberr;
        secs[rep] = now_s() - t1;
        secs[reps + rep] = st.read_s;
        secs[2 * reps + rep] = st.write_s;
        transitions = st.transitions;
    }
    double med = median(secs, reps), rd = median(secs + reps, reps), wr = median(secs + 2 * reps, reps);
    printf("| detect_run: COPY out, detect, DELETE + COPY in | %d | %d | %.3f (read and detect %.3f, write %.3f) | %.1f | %ld |\n",
           nseries, n, med, rd, wr, med / nseries * 1e6, transitions);
    printf("{\"bench\":\"transitions_db\",\"series\":%d,\"points\":%d,\"reps\":%d,\"seconds\":%.6f,"
           "\"read_detect_s\":%.6f,\"write_s\":%.6f,\"us_per_series\":%.3f,\"transitions\":%ld}\n",
           nseries, n, reps, med, rd, wr, med / nseries * 1e6, transitions);
    rc = 0;
    goto out;
dberr:
    fprintf(stderr, "transitions_bench: %s\n", err_str(&e));
out:
    if (run_id && db_conn(db) && !getenv("BENCH_TR_KEEP")) {
        PGresult *d = PQexec(db_conn(db), "DELETE FROM runs WHERE name = 'bench-transitions'");
        PQclear(d);
    }
    free(buf.p);
    free(secs);
    db_free(db);
    return rc;
}
