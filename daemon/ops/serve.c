#include "daemon/ops/serve.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/cpu.h"
#include "common/log.h"
#include "common/path.h"
#include "common/version.h"
#include "daemon/base/db.h"
#include "daemon/base/migrate.h"
#include "daemon/detect/detect.h"
#include "daemon/detect/family.h"
#include "daemon/detect/integrity.h"
#include "daemon/fetch/cache.h"
#include "daemon/fetch/checkpoint_files.h"
#include "daemon/fetch/fetch.h"
#include "daemon/fetch/hub.h"
#include "daemon/fetch/stage.h"
#include "daemon/ops/metrics.h"
#include "daemon/ops/node.h"
#include "daemon/ops/notify.h"
#include "daemon/ops/space.h"
#include "daemon/plan/cost.h"
#include "daemon/plan/forecast.h"
#include "daemon/plan/registry.h"
#include "daemon/plan/sae_opts.h"
#include "daemon/plan/source.h"
#include "daemon/store/artifacts.h"
#include "daemon/store/ingest.h"
#include "daemon/work/policy.h"
#include "daemon/work/queue.h"
#include "daemon/work/supervise.h"

#define MAX_SLOTS DAEMON_MAX_WORKERS
#define PLAN_EVERY_S 2.0       /* adaptive runs' plans looked at (duty 14) */
#define SERVE_MAX_PROBES 16    /* --probe files passed to a worker */
#define SERVE_MAX_SAE_DICTS 16 /* --sae dictionaries passed to a worker */
#define SERVE_MAX_SAE_SITES 16 /* --sae-site hooks passed to a worker */
#define SERVE_MAX_PAIRS 16     /* --pairs files passed to a worker */
/* a worker slot's checkpoint and the one prefetched for it */
#define NSLOTS (2 * MAX_SLOTS)

enum slot_phase {
    SLOT_FETCH,             /* claimed; its files are being staged */
    SLOT_READY,             /* staged; waiting for a free worker */
    SLOT_GATED,             /* its worker started and loads it, then waits at its
                               gate for a worker to end (prefetch) */
    SLOT_RUN,               /* its worker runs (or ran: see ended) */
    SLOT_PHASE_COUNT
};

/* One claimed checkpoint: its staging, then its worker. */
struct slot {
    int busy;
    int ended;              /* worker finished; result not yet settled */
    enum slot_phase phase;
    struct claim claim;
    struct stage *stage;
    struct worker w;
    double last_heartbeat;
    double lease_renewed;   /* when a claim or heartbeat of it was last answered */
    double claim_ms, spawn_ms;
    double fetch_started, fetch_s;
    double progress_ran;    /* when its download progress was last recorded (run_every) */
    long long dup_step;     /* the step it repeats, or -1 */
};

struct server {
    struct daemon_config cfg;
    const char *config_path;
    int until_idle;
    char worker_core[64]; /* "OPENBLAS_CORETYPE=..." for the workers, or "" (common/cpu.h) */
    struct db *db;
    struct registry reg;
    int ready;              /* registry synced and schema checked on this connection */
    char worker[1024];
    char artifact_root[1024]; /* cfg.artifact_dir made absolute */
    struct slot slots[NSLOTS];
    struct fetcher *fetcher;
    struct cache *cache;
    struct owner *spool;    /* our tag on spool files; dead daemons' files swept at start */
    int offline;            /* HF_HUB_OFFLINE */
    double last_tick;
    double wait_dl, wait_dl_total, wait_dl_after_first; /* a worker idle while a download runs */
    long launches;
    unsigned long spool_seq; /* tells apart the spool files of one checkpoint's workers */
    int stopping;
    double stop_deadline;
    int idle;
    long jobs_done, jobs_failed, leases_lost;
    /* operating (duty 10): /metrics and /healthz, systemd, the nodes row */
    long jobs_claimed;
    double download_s, worker_s;
    struct metrics m;
    struct metrics_server *http;
    struct notify notify;
    double started;
    double now;             /* monotonic seconds at the start of this tick */
    /* the paced duties: when each last ran (run_every; 0: due at once) */
    struct {
        double expire, claim, idle, plan, family, node, queue_depths;
    } ran;
    double expire_ms;       /* the lease expiry's period, jittered each time */
    char host[256];
    char db_error[256];     /* why the database is not usable, for /healthz */
    int disk_short;         /* a directory below disk_min_free_mb: no claims (space.h) */
};

static volatile sig_atomic_t got_term, got_hup;

/* SIGCHLD writes a byte here, so serve_wait wakes the moment a worker
 * ends instead of at the next timer tick (a self-pipe: no race with a
 * child that ends just before poll() starts). */
static int chld_pipe[2] = {-1, -1};

static void on_chld(int sig)
{
    (void)sig;
    int saved = errno;
    if (chld_pipe[1] >= 0) {
        char b = 0;
        ssize_t w = write(chld_pipe[1], &b, 1); /* full pipe: a wake-up is pending anyway */
        (void)w;
    }
    errno = saved;
}

static void on_term(int sig)
{
    (void)sig;
    got_term++;
}

static void on_hup(int sig)
{
    (void)sig;
    got_hup = 1;
}

/* A paced duty (redis serverCron's run_with_period): true when ms
 * milliseconds have passed since it last ran, *last (monotonic seconds;
 * 0: never, so due at once), which then becomes now. */
static int run_every(double *last, double now, double ms)
{
    if (*last > 0 && (now - *last) * 1000 < ms)
        return 0;
    *last = now;
    return 1;
}

static int busy_count(const struct server *s)
{
    int n = 0;
    for (int i = 0; i < NSLOTS; i++)
        n += s->slots[i].busy;
    return n;
}

static int phase_count(const struct server *s, enum slot_phase ph)
{
    int n = 0;
    for (int i = 0; i < NSLOTS; i++)
        n += s->slots[i].busy && s->slots[i].phase == ph;
    return n;
}

/* The slot's worker process has been started (gated or running). */
static int has_worker(const struct slot *sl)
{
    return sl->phase == SLOT_GATED || sl->phase == SLOT_RUN;
}

static void slot_free(struct slot *sl)
{
    supervise_cleanup(&sl->w);
    stage_free(sl->stage); /* unpins the snapshot */
    memset(sl, 0, sizeof *sl);
}

/* Connected, LISTENing, schema current, registry synced. */
static int ensure_ready(struct server *s)
{
    struct err e;
    /* a handle that is still there but broken is not the connection we
     * made ready: db_ensure replaces it, and the new one needs LISTEN */
    int was = db_conn(s->db) && PQstatus(db_conn(s->db)) == CONNECTION_OK;
    if (db_ensure(s->db, &e) < 0) {
        s->ready = 0;
        snprintf(s->db_error, sizeof s->db_error, "%s", err_str(&e));
        return -1;
    }
    if (!was)
        s->ready = 0;
    if (s->ready)
        return 0;
    if (migrate_check(s->db, &e) < 0) {
        log_err("database not usable", &e);
        snprintf(s->db_error, sizeof s->db_error, "%s", err_str(&e));
        /* a reachable database with the wrong schema is not transient */
        return db_conn(s->db) && PQstatus(db_conn(s->db)) == CONNECTION_OK ? -2 : -1;
    }
    if (queue_listen(s->db, &e) < 0 || registry_sync(&s->reg, s->db, &e) < 0) {
        log_err("database not usable", &e);
        snprintf(s->db_error, sizeof s->db_error, "%s", err_str(&e));
        return -1;
    }
    s->ready = 1;
    /* NOTIFYs sent while we were away are lost: look for work now rather
     * than a poll_s later */
    s->ran.claim = 0;
    return 0;
}

static struct backoff backoff_of(const struct server *s)
{
    struct backoff b = {s->cfg.backoff_base_s, s->cfg.backoff_max_s};
    return b;
}

/* Work that failed while a directory of this node is short of space failed
 * for want of space, not by its own fault: its jobs go back without
 * counting the attempt, their last_error saying why (space.h).  1 when
 * that is what happened (the slot is freed once the database took it). */
static int giveback_if_short(struct server *s, struct slot *sl, const char *error)
{
    char why[640], msg[2048];
    struct err e;
    if (!space_short(&s->cfg, why, sizeof why))
        return 0;
    snprintf(msg, sizeof msg, "given back, not counted as an attempt: %s; the attempt: %s", why, error);
    if (queue_giveback(s->db, s->cfg.node, sl->claim.job_ids, sl->claim.njobs, msg, &e) < 0) {
        log_err("cannot give the jobs back yet; will retry", &e);
        return 1;
    }
    log_warn("work failed for want of disk space: jobs given back, not counted as an attempt",
             "run=%s step=%lld disk=%s error=%s", log_quote(sl->claim.run), sl->claim.step,
             log_quote(why), log_quote(error));
    slot_free(sl);
    return 1;
}

/* No new work while a directory is short of space; said once when it
 * starts and once when it ends.  1 while short (the next claim is tried
 * after poll_s, as when nothing is claimable). */
static int disk_full(struct server *s)
{
    char why[640];
    int shortage = space_short(&s->cfg, why, sizeof why);
    if (shortage && !s->disk_short)
        log_warn("not claiming work: disk space low", "why=%s", log_quote(why));
    else if (!shortage && s->disk_short)
        log_info("disk space back: claiming work again", "min_free_mb=%ld", s->cfg.disk_min_free_mb);
    s->disk_short = shortage;
    return shortage;
}

/* The claim reduced to its jobs that are done (for detection). */
static void claim_done_part(const struct claim *c, const struct item_outcome *out, struct claim *d)
{
    *d = *c;
    d->njobs = 0;
    for (int i = 0; i < c->njobs; i++)
        if (out[i].state == ITEM_DONE) {
            d->job_ids[d->njobs] = c->job_ids[i];
            d->versions[d->njobs] = c->versions[i];
            memcpy(d->items[d->njobs++], c->items[i], sizeof c->items[i]);
        }
}

/* Log what ingest_settle did: "checkpoint done" when every job is,
 * "checkpoint failed" when none is, else "checkpoint partly done"; one
 * "item failed" line per failed job. */
static void log_settled(const struct slot *sl, const struct item_outcome *out,
                        const struct ingest_result *res, double ingest_ms)
{
    const struct claim *c = &sl->claim;
    const char *first = NULL;
    for (int i = 0; i < c->njobs; i++)
        if (out[i].state != ITEM_DONE) {
            first = first ? first : out[i].error;
            log_warn("item failed", "run=%s step=%lld item=%s attempt=%d error=%s", log_quote(c->run),
                     c->step, c->items[i], c->attempts, log_quote(out[i].error));
        }
    if (res->skipped > 0)
        log_info("rows of unfinished items not stored", "run=%s step=%lld rows=%ld", log_quote(c->run),
                 c->step, res->skipped);
    if (res->failed == 0)
        log_info("checkpoint done", "run=%s step=%lld jobs=%d rows=%ld worker_s=%.3f claim_ms=%.2f"
                 " spawn_ms=%.2f ingest_ms=%.2f", log_quote(c->run), c->step, c->njobs, res->rows,
                 sl->w.seconds, sl->claim_ms, sl->spawn_ms, ingest_ms);
    else if (res->done == 0)
        log_warn("checkpoint failed", "run=%s step=%lld attempt=%d error=%s", log_quote(c->run), c->step,
                 c->attempts, log_quote(first));
    else
        log_warn("checkpoint partly done", "run=%s step=%lld attempt=%d jobs_done=%d jobs_failed=%d rows=%ld"
                 " worker_s=%.3f", log_quote(c->run), c->step, c->attempts, res->done, res->failed,
                 res->rows, sl->w.seconds);
}

/* policy.h's detect: every series of the run examined, logged. */
static int detect_whole_run(struct db *db, long long run_id, struct err *e)
{
    struct detect_stats st;
    int rc = detect_run(db, run_id, NULL, NULL, 0, &st, e);
    if (rc == 0)
        log_info("transitions detected", "run_id=%lld series=%ld points=%ld transitions=%ld spikes=%ld read_ms=%.1f"
                 " write_ms=%.1f", run_id, st.series, st.points, st.transitions, st.spikes, st.read_s * 1e3,
                 st.write_s * 1e3);
    return rc;
}

/* A worker ended: store the rows of its items that finished and record
 * the failure of the others (ingest_settle), or of every job when the
 * server refused the rows.  Leaves the slot busy when the database is
 * unreachable, to try again next tick. */
static void settle(struct server *s, struct slot *sl)
{
    struct err e;
    err_clear(&e);
    struct claim *c = &sl->claim;
    struct backoff b = backoff_of(s);
    struct item_outcome out[CLAIM_MAX_JOBS];
    struct ingest_result res;
    if (!s->ready)
        return;
    supervise_outcomes(&sl->w, (const char (*)[64])c->items, c->versions, c->njobs, out);
    /* a worker that failed while a directory is full: all of it again
     * later, uncounted (what it finished is redone, nothing is lost) */
    if (!sl->w.ok && giveback_if_short(s, sl, sl->w.error))
        return;
    double t0 = mono_now();
    int rc = ingest_settle(s->db, &s->reg, s->cfg.node, c, sl->w.out_path, sl->w.seconds, out, &b,
                           &res, &e);
    if (rc == ERR_DB || rc == ERR_NOMEM) {
        log_err("cannot store results yet; will retry", &e);
        return;
    }
    if (rc == INGEST_LEASE_LOST) {
        s->leases_lost++;
        log_err("results dropped", &e);
        slot_free(sl);
        return;
    }
    if (rc == 0) {
        s->jobs_done += res.done;
        s->jobs_failed += res.failed;
        log_settled(sl, out, &res, (mono_now() - t0) * 1e3);
        /* analysed either way: a retry finds it in the cache while it is recent */
        if (s->cache && stage_key(sl->stage)[0] && cache_mark_analysed(s->cache, stage_key(sl->stage), &e) < 0)
            log_err("cache: cannot mark the snapshot analysed", &e);
        if (res.done > 0) {
            struct claim done;
            claim_done_part(c, out, &done);
            integrity_after_ingest(s->db, &done); /* before detection: suspects are left out */
            /* an adaptive run's next phase; its first pass is examined once, at its end */
            if (policy_after_ingest(s->db, &done, detect_whole_run))
                detect_after_ingest(s->db, &done); /* logs its own failure; the rows are stored */
        }
        slot_free(sl);
        long long freed = 0;
        if (s->cache && cache_evict(s->cache, &freed, &e) < 0)
            log_err("cache eviction failed", &e);
        return;
    }
    snprintf(sl->w.error, sizeof sl->w.error, "results rejected: %s", err_str(&e));
    if (queue_fail(s->db, s->cfg.node, c->job_ids, c->njobs, sl->w.error, &b, &e) < 0) {
        log_err("cannot record job failure yet; will retry", &e);
        return;
    }
    s->jobs_failed += c->njobs;
    log_warn("checkpoint failed", "run=%s step=%lld attempt=%d error=%s", log_quote(c->run), c->step,
             c->attempts, log_quote(sl->w.error));
    slot_free(sl);
}

/* The claimed items as the worker's --items list; ERR_UNSUPPORTED when the
 * worker offers an item at another version than the one queued. */
static int claim_items(const struct server *s, const struct claim *c, char *items, size_t n, struct err *e)
{
    int rc = 0;
    items[0] = '\0';
    for (int i = 0; rc == 0 && i < c->njobs; i++) {
        int v = registry_item_version(&s->reg, c->items[i]);
        if (v != c->versions[i])
            rc = err_set(e, ERR_UNSUPPORTED, c->items[i],
                         v < 0 ? "the worker has no battery item %s (version %d)"
                               : "the worker offers %s version %d, not the one queued",
                         c->items[i], v < 0 ? c->versions[i] : v);
        size_t len = strlen(items);
        snprintf(items + len, n - len, "%s%s", i ? "," : "", c->items[i]);
    }
    return rc;
}

/* Artifacts: this step's directory into adir, its claimed items' parts
 * emptied, when an item needs it; the previous step's into pdir when the
 * jobs read it ("" otherwise; ARTIFACT_PATH_MAX bytes each). */
static int claim_artifacts(const struct server *s, struct claim *c, char *adir, char *pdir, struct err *e)
{
    const char *art_items[CLAIM_MAX_JOBS];
    int nart = 0, rc = 0;
    adir[0] = pdir[0] = '\0';
    for (int i = 0; i < c->njobs; i++) {
        const struct reg_item *ri = registry_item(&s->reg, c->items[i]);
        if (ri && ri->needs_artifacts)
            art_items[nart++] = c->items[i];
    }
    if (nart > 0 && (rc = artifacts_prepare(s->artifact_root, c->run, c->step, art_items, nart, adir,
                                            ARTIFACT_PATH_MAX, e)) == 0)
        snprintf(c->artifact_dir, sizeof c->artifact_dir, "%s", s->artifact_root);
    if (rc == 0 && c->prev_step >= 0)
        rc = artifacts_step_dir(pdir, ARTIFACT_PATH_MAX, s->artifact_root, c->run, c->prev_step, e);
    return rc;
}

/* The text of a worker's run options (runs.options), alive until it starts. */
struct run_argv {
    char eval[1024], seed[32], ctx[24], seqs[24], model[256], step[32];
};

/* The eval set's options of opt into argv from a; the new a. */
static int eval_argv(json_t *opt, struct run_argv *ra, const char **argv, int a)
{
    json_t *jv = json_object_get(opt, "eval_tokens");
    snprintf(ra->eval, sizeof ra->eval, "%s", json_is_string(jv) ? json_string_value(jv) : "");
    const struct {
        const char *key, *flag;
        char *buf;
        size_t n;
        int with_eval; /* only with an eval set */
    } nums[] = {{"seed", "--seed", ra->seed, sizeof ra->seed, 0},
                {"ctx", "--ctx", ra->ctx, sizeof ra->ctx, 1},
                {"eval_seqs", "--max-seqs", ra->seqs, sizeof ra->seqs, 1}};
    if (ra->eval[0]) {
        argv[a++] = "--eval-tokens";
        argv[a++] = ra->eval;
    }
    for (size_t i = 0; i < sizeof nums / sizeof *nums; i++) {
        jv = json_object_get(opt, nums[i].key);
        if (!json_is_integer(jv) || (nums[i].with_eval && !ra->eval[0]))
            continue;
        snprintf(nums[i].buf, nums[i].n, "%lld", (long long)json_integer_value(jv));
        argv[a++] = nums[i].flag;
        argv[a++] = nums[i].buf;
    }
    return a;
}

/* The run's probe sets, SAE sites, fixed dictionaries, pair sets (strings borrowed
 * from opt, freed after the spawn) and the provenance of the SAE files its
 * jobs write (sae_opts.h) into argv from a; the new a. */
static int run_extras_argv(const struct claim *c, json_t *opt, struct run_argv *ra, const char **argv, int a)
{
    const struct {
        const char *key, *flag;
        size_t max;
    } lists[] = {{"probes", "--probe", SERVE_MAX_PROBES},
                 {"sae_sites", "--sae-site", SERVE_MAX_SAE_SITES},
                 {"sae_fixed", "--sae", SERVE_MAX_SAE_DICTS},
                 {"pairs", "--pairs", SERVE_MAX_PAIRS}};
    for (size_t i = 0; i < sizeof lists / sizeof *lists; i++) {
        json_t *l = json_object_get(opt, lists[i].key);
        for (size_t k = 0; k < json_array_size(l) && k < lists[i].max; k++)
            if (json_is_string(json_array_get(l, k))) {
                argv[a++] = lists[i].flag;
                argv[a++] = json_string_value(json_array_get(l, k));
            }
    }
    json_t *jv = json_object_get(opt, "model_name");
    if (json_is_string(jv))
        snprintf(ra->model, sizeof ra->model, "%s", json_string_value(jv));
    else
        sae_opts_model_name(c->source, c->run, ra->model, sizeof ra->model);
    snprintf(ra->step, sizeof ra->step, "%lld", c->step);
    argv[a++] = "--model-name";
    argv[a++] = ra->model;
    argv[a++] = "--run";
    argv[a++] = c->run;
    argv[a++] = "--step";
    argv[a++] = ra->step;
    return a;
}

/* Start the worker for a fresh claim; on failure the jobs fail now.
 * gated: it loads the checkpoint and waits at its gate (--gate) until
 * launch_ready opens it. */
static void launch(struct server *s, struct slot *sl, int gated)
{
    struct err e;
    err_clear(&e);
    struct claim *c = &sl->claim;
    char dir[2048], items[CLAIM_MAX_JOBS * 65], threads[16], tag[OWNER_TAG_MAX + 32], status[2048];
    char adir[ARTIFACT_PATH_MAX], pdir[ARTIFACT_PATH_MAX];
    struct run_argv ra;
    snprintf(dir, sizeof dir, "%s", stage_dir(sl->stage));
    /* the model's shape for the cost model, the first time one is staged */
    if (forecast_note_model(s->db, c->run_id, dir, &e) < 0) {
        log_debug("model shape not recorded", "run=%s error=%s", log_quote(c->run),
                  log_quote(err_str(&e)));
        err_clear(&e);
    }
    int rc = claim_items(s, c, items, sizeof items, &e);
    if (rc == 0)
        rc = claim_artifacts(s, c, adir, pdir, &e);
    else
        adir[0] = pdir[0] = '\0';
    int nthreads = s->cfg.worker_threads;
    if (nthreads <= 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        nthreads = (int)(cores / s->cfg.workers);
        nthreads = nthreads < 1 ? 1 : nthreads;
    }
    snprintf(threads, sizeof threads, "%d", nthreads);
    /* one checkpoint can have two workers of this daemon at once (a job
     * claimed while the worker of its others ends or waits at its gate):
     * each launch names its own spool files */
    snprintf(tag, sizeof tag, "%s.ck%lld.%lu", owner_tag(s->spool), c->checkpoint_id, ++s->spool_seq);
    supervise_status_path(status, sizeof status, s->cfg.spool_dir, tag);
    const char *argv[32 + 2 * SERVE_MAX_PROBES + 2 * SERVE_MAX_SAE_SITES + 2 * SERVE_MAX_SAE_DICTS +
                     2 * SERVE_MAX_PAIRS];
    int a = 0;
    argv[a++] = s->worker;
    argv[a++] = "--threads";
    argv[a++] = threads;
    argv[a++] = "analyze";
    argv[a++] = dir;
    argv[a++] = "--items";
    argv[a++] = items;
    argv[a++] = "--status";
    argv[a++] = status;
    json_t *opt = json_loads(c->options, 0, NULL);
    a = eval_argv(opt, &ra, argv, a);
    if (adir[0]) {
        argv[a++] = "--artifacts";
        argv[a++] = adir;
    }
    /* the run's skeleton of full sweeps (cost.h): every sweep_every-th
     * checkpoint and the last */
    json_t *jv = json_object_get(opt, "sweep_every");
    int every = json_is_integer(jv) ? (int)json_integer_value(jv) : COST_SWEEP_EVERY;
    const int full_sweep = cost_on_skeleton(c->index, c->count, every);
    if (full_sweep)
        argv[a++] = "--full-sweep";
    if (pdir[0]) {
        argv[a++] = "--prev-artifacts";
        argv[a++] = pdir;
    }
    a = run_extras_argv(c, opt, &ra, argv, a);
    if (gated)
        argv[a++] = "--gate";
    argv[a] = NULL;
    /* OpenBLAS's own threads: as many as the worker will use.  Left to
     * itself the library starts one per core when it loads, and they spin
     * for its first ~0.1 s even when the worker then asks for fewer: a
     * second core taken by every worker start (common/cpu.h: the kernels) */
    char nblas[48];
    snprintf(nblas, sizeof nblas, "OPENBLAS_NUM_THREADS=%d", nthreads);
    const char *env[3] = {nblas, s->worker_core[0] ? s->worker_core : NULL, NULL};
    struct worker_limits lim = {s->cfg.worker_timeout_s, s->cfg.worker_memory_mb, s->cfg.worker_cpu_s, env,
                                gated};
    double t0 = mono_now();
    if (rc == 0)
        rc = supervise_start(&sl->w, argv, s->cfg.spool_dir, tag, &lim, &e);
    json_decref(opt);
    sl->spawn_ms = (mono_now() - t0) * 1e3;
    sl->last_heartbeat = mono_now();
    if (rc < 0) {
        snprintf(sl->w.error, sizeof sl->w.error, "cannot start worker: %s", err_str(&e));
        sl->w.done = 1;
        sl->w.ok = 0;
        sl->ended = 1;
        sl->phase = SLOT_RUN; /* settled as a failed worker */
        return;
    }
    log_info("worker started", "run=%s step=%lld items=%s pid=%d attempt=%d fetch_s=%.3f download_wait_ms=%.1f"
             " prev_step=%lld full_sweep=%d gated=%d", log_quote(c->run), c->step, items, (int)sl->w.proc.pid,
             c->attempts, sl->fetch_s, s->wait_dl * 1e3, c->prev_step, full_sweep, gated);
    if (s->launches++ > 0)
        s->wait_dl_after_first += s->wait_dl;
    s->wait_dl_total += s->wait_dl;
    s->wait_dl = 0;
}

/* Record a failure of the jobs of a slot that has no worker (fetch). */
static void fail_unlaunched(struct server *s, struct slot *sl, const char *error)
{
    struct err e;
    struct backoff b = backoff_of(s);
    if (giveback_if_short(s, sl, error))
        return;
    if (queue_fail(s->db, s->cfg.node, sl->claim.job_ids, sl->claim.njobs, error, &b, &e) < 0) {
        log_err("cannot record job failure yet; will retry", &e);
        return;
    }
    s->jobs_failed += sl->claim.njobs;
    log_warn("checkpoint failed", "run=%s step=%lld attempt=%d error=%s", log_quote(sl->claim.run),
             sl->claim.step, sl->claim.attempts, log_quote(error));
    slot_free(sl);
}

static void report_progress(struct server *s, struct slot *sl, const char *state, const char *error)
{
    struct err e;
    long long done = 0, total = -1;
    double rate = 0;
    if (sl->stage)
        stage_progress(sl->stage, &done, &total, &rate);
    if (queue_fetch_progress(s->db, sl->claim.checkpoint_id, s->cfg.node, state, done, total, rate, error, &e) < 0)
        log_err("cannot record download progress", &e);
    if (strcmp(state, "fetching") == 0)
        log_info("download progress", "run=%s step=%lld bytes=%lld total=%lld bytes_per_s=%.0f eta_s=%.0f",
                 log_quote(sl->claim.run), sl->claim.step, done, total, rate,
                 rate > 0 && total >= 0 ? (double)(total - done) / rate : -1.0);
}

/* Advance a slot's staging: on success record its files (and whether it
 * duplicates another step); on failure fail its jobs. */
static void advance_fetch(struct server *s, struct slot *sl, double now)
{
    struct err e;
    err_clear(&e);
    int rc = stage_poll(sl->stage, &e);
    if (rc == 0) {
        if (run_every(&sl->progress_ran, now, s->cfg.heartbeat_s * 1000))
            report_progress(s, sl, "fetching", NULL);
        return;
    }
    if (rc < 0) {
        char msg[1200];
        snprintf(msg, sizeof msg, "fetch failed: %s", err_str(&e));
        s->download_s += now - sl->fetch_started;
        report_progress(s, sl, "failed", msg);
        fail_unlaunched(s, sl, msg);
        return;
    }
    long long dup = -1;
    int recorded = checkpoint_files_record(s->db, sl->claim.checkpoint_id, stage_files(sl->stage), &dup, &e);
    if (recorded < 0) {
        log_err("cannot record the checkpoint's files yet; will retry", &e);
        return; /* stays in SLOT_FETCH: the stage answers done again */
    }
    struct integrity_stats ist; /* new files: shards and equal weights judged again */
    if (recorded == 0 && integrity_run(s->db, sl->claim.run_id, &ist, &e) < 0)
        log_err("integrity check after the files were recorded failed", &e);
    sl->dup_step = dup;
    sl->fetch_s = now - sl->fetch_started;
    s->download_s += sl->fetch_s;
    report_progress(s, sl, "done", NULL);
    if (dup >= 0)
        log_warn("duplicate checkpoint: same weights as an earlier step; left out of series",
                 "run=%s step=%lld same_as_step=%lld", log_quote(sl->claim.run), sl->claim.step, dup);
    log_info("checkpoint fetched", "run=%s step=%lld files=%d fetch_s=%.3f downloaded=%lld dir=%s",
             log_quote(sl->claim.run), sl->claim.step, stage_files(sl->stage)->n, sl->fetch_s,
             stage_downloaded(sl->stage), log_quote(stage_dir(sl->stage)));
    sl->phase = SLOT_READY;
}

/* Workers running: started and not ended (an ended one waiting for its
 * rows to be stored holds no core). */
static int running_count(const struct server *s)
{
    int n = 0;
    for (int i = 0; i < NSLOTS; i++)
        n += s->slots[i].busy && s->slots[i].phase == SLOT_RUN && !s->slots[i].ended;
    return n;
}

/* The oldest held checkpoint in phase ph, or in ph2 (-1: none); NULL if none. */
static struct slot *oldest(struct server *s, int ph, int ph2)
{
    struct slot *best = NULL;
    for (int i = 0; i < NSLOTS; i++) {
        struct slot *c = &s->slots[i];
        if (c->busy && ((int)c->phase == ph || (int)c->phase == ph2) &&
            (!best || c->fetch_started < best->fetch_started))
            best = c;
    }
    return best;
}

/* Checkpoints start as workers free up, oldest first: a gated worker's
 * gate opens (it has loaded its checkpoint already), a staged one gets a
 * worker.  With prefetch, while every worker is busy, each staged
 * checkpoint (at most one per worker) gets its worker now, gated: the
 * process starts, loads the checkpoint and its inputs beside the running
 * analysis, and begins the moment a worker ends. */
static void launch_ready(struct server *s)
{
    struct slot *best;
    while (!s->stopping && running_count(s) < s->cfg.workers &&
           (best = oldest(s, SLOT_GATED, SLOT_READY))) {
        if (best->phase == SLOT_GATED) {
            best->phase = SLOT_RUN;
            supervise_open_gate(&best->w);
            log_debug("worker gate opened", "run=%s step=%lld pid=%d", log_quote(best->claim.run),
                      best->claim.step, (int)best->w.proc.pid);
        } else {
            best->phase = SLOT_RUN;
            launch(s, best, 0);
        }
    }
    while (!s->stopping && s->cfg.prefetch && phase_count(s, SLOT_GATED) < s->cfg.workers &&
           (best = oldest(s, SLOT_READY, -1))) {
        best->phase = SLOT_GATED;
        launch(s, best, 1);
    }
}

/* SIGHUP: take the new settings.  Kept until a restart, with a warning
 * when they changed: the node name (its leases), the database (the
 * connection and its LISTEN), worker_path (the battery registry was read
 * from that worker) and cache_dir (pinned snapshots live there).  The
 * fetch settings and the cache budget go to the fetcher and the cache
 * now (fetcher_set_opts says when each takes effect); a lower budget
 * evicts at once. */
static void reload(struct server *s, struct daemon_config *c)
{
    struct err e;
    struct {
        const char *key;
        char *now, *want;
        size_t n;
    } fixed[] = {{"node", s->cfg.node, c->node, sizeof c->node},
                 {"database", s->cfg.database, c->database, sizeof c->database},
                 {"worker_path", s->cfg.worker_path, c->worker_path, sizeof c->worker_path},
                 {"cache_dir", s->cfg.cache_dir, c->cache_dir, sizeof c->cache_dir},
                 {"metrics_listen", s->cfg.metrics_listen, c->metrics_listen, sizeof c->metrics_listen},
                 {"artifact_dir", s->cfg.artifact_dir, c->artifact_dir, sizeof c->artifact_dir}};
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++) {
        /* node: a name given on the command line or made from host:pid;
         * database "": the file does not name one (--db or libpq's
         * environment chose it) */
        if (strcmp(fixed[i].now, fixed[i].want) != 0 && strcmp(fixed[i].key, "node") != 0 &&
            (fixed[i].want[0] || (strcmp(fixed[i].key, "database") != 0 && strcmp(fixed[i].key, "metrics_listen") != 0)))
            log_warn("config: this setting changes only at a restart", "key=%s running=%s file=%s", fixed[i].key,
                     strcmp(fixed[i].key, "database") == 0 ? "\"(hidden)\"" : log_quote(fixed[i].now),
                     strcmp(fixed[i].key, "database") == 0 ? "\"(hidden)\"" : log_quote(fixed[i].want));
        memcpy(fixed[i].want, fixed[i].now, fixed[i].n);
    }
    c->metrics_allow_remote = s->cfg.metrics_allow_remote; /* goes with metrics_listen */
    s->cfg = *c; /* checked by daemon_config_load: workers <= MAX_SLOTS */
    db_set_backoff_max(s->db, s->cfg.lease_s / 2);
    db_set_timeouts(s->db, s->cfg.db_statement_timeout_s, s->cfg.db_idle_in_transaction_timeout_s);
    struct fetch_opts fo;
    daemon_config_fetch_opts(&s->cfg, &fo);
    fetcher_set_opts(s->fetcher, &fo);
    cache_set_budget(s->cache, (long long)(s->cfg.cache_budget_gb * (1LL << 30)));
    const struct fetch_opts *o = fetcher_opts(s->fetcher);
    log_info("config reloaded", "workers=%d prefetch=%d fetch_parallel=%d fetch_retries=%d fetch_low_speed_bytes=%ld"
             " fetch_low_speed_s=%ld fetch_connect_timeout_s=%ld fetch_backoff_base_s=%g fetch_backoff_max_s=%g"
             " cache_budget_bytes=%lld", s->cfg.workers, s->cfg.prefetch, o->parallel, o->retries,
             o->low_speed_bytes, o->low_speed_s, o->connect_timeout_s, o->backoff_base_s, o->backoff_max_s,
             cache_budget(s->cache));
    long long freed = 0;
    if (cache_evict(s->cache, &freed, &e) < 0)
        log_err("cache eviction failed", &e);
}

/* What each held checkpoint is doing, for the nodes row: a JSON array
 * (schema/006_nodes.sql lists the fields); durations, not timestamps.
 * The caller frees it; NULL on out of memory. */
static char *activity_json(struct server *s, double now)
{
    json_t *a = json_array();
    for (int i = 0; a && i < NSLOTS; i++) {
        struct slot *sl = &s->slots[i];
        if (!sl->busy)
            continue;
        const struct claim *c = &sl->claim;
        const char *phase = sl->phase == SLOT_FETCH ? "fetching"
                            : sl->phase == SLOT_READY || sl->phase == SLOT_GATED ? "staged"
                            : sl->ended ? "storing"
                                        : "analysing";
        double since = sl->phase == SLOT_RUN && sl->w.proc.started > 0 ? sl->w.proc.started : sl->fetch_started;
        json_t *jobs = json_array(), *items = json_array();
        for (int k = 0; k < c->njobs; k++) {
            json_array_append_new(jobs, json_integer(c->job_ids[k]));
            json_array_append_new(items, json_string(c->items[k]));
        }
        json_t *o = json_pack("{s:s, s:s, s:I, s:I, s:o, s:o, s:i, s:f}", "phase", phase, "run", c->run,
                              "step", (json_int_t)c->step, "checkpoint", (json_int_t)c->checkpoint_id, "jobs",
                              jobs, "items", items, "attempt", c->attempts, "for_s",
                              round((now - since) * 1000) / 1000);
        if (!o)
            continue;
        if (has_worker(sl) && !sl->ended && sl->w.proc.pid > 0)
            json_object_set_new(o, "pid", json_integer(sl->w.proc.pid));
        if (sl->phase == SLOT_FETCH && sl->stage) {
            long long done = 0, total = -1;
            double rate = 0;
            stage_progress(sl->stage, &done, &total, &rate);
            json_object_set_new(o, "bytes_done", json_integer(done));
            json_object_set_new(o, "bytes_total", json_integer(total));
            json_object_set_new(o, "bytes_per_s", json_real(round(rate)));
        }
        json_array_append_new(a, o);
    }
    char *txt = a ? json_dumps(a, JSON_COMPACT | JSON_REAL_PRECISION(12)) : NULL;
    json_decref(a);
    return txt;
}

/* Renew this node's row in `nodes` (node.h): its identity, counters and
 * activity.  A database round trip, which the watchdog and /healthz count. */
static void node_beat(struct server *s, double now)
{
    struct err e;
    char *act = activity_json(s, now), *stats = NULL;
    json_t *st = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f}", "jobs_claimed", (json_int_t)s->jobs_claimed,
                           "jobs_done", (json_int_t)s->jobs_done, "jobs_failed", (json_int_t)s->jobs_failed,
                           "leases_lost", (json_int_t)s->leases_lost, "fetch_bytes",
                           (json_int_t)fetcher_bytes(s->fetcher), "db_reconnects",
                           (json_int_t)db_reconnects(s->db), "worker_s", round(s->worker_s * 1000) / 1000,
                           "download_s", round(s->download_s * 1000) / 1000);
    stats = st ? json_dumps(st, JSON_COMPACT | JSON_REAL_PRECISION(12)) : NULL;
    json_decref(st);
    struct node_info ni = {s->cfg.node, s->host, CKPTD_VERSION, (int)getpid(), s->cfg.workers,
                           s->cfg.heartbeat_s, now - s->started};
    if (act && stats && node_heartbeat(s->db, &ni, act, stats, &e) < 0)
        log_warn("node heartbeat failed", "error=%s", log_quote(err_str(&e)));
    free(act);
    free(stats);
    s->ran.node = now;
}

/* The counters and gauges the metrics endpoint reads (metrics.h). */
static void metrics_sync(struct server *s, double now)
{
    struct metrics *m = &s->m;
    m->jobs_claimed = s->jobs_claimed;
    m->jobs_done = s->jobs_done;
    m->jobs_failed = s->jobs_failed;
    m->leases_lost = s->leases_lost;
    m->fetch_bytes = fetcher_bytes(s->fetcher);
    m->download_s = s->download_s;
    m->download_wait_s = s->wait_dl_total + s->wait_dl;
    m->worker_s = s->worker_s;
    m->db_reconnects = db_reconnects(s->db);
    m->workers = s->cfg.workers;
    m->slots_fetch = phase_count(s, SLOT_FETCH);
    m->slots_ready = phase_count(s, SLOT_READY) + phase_count(s, SLOT_GATED);
    m->slots_run = phase_count(s, SLOT_RUN);
    m->healthz_max_age_s = s->cfg.healthz_max_age_s;
    m->db_last_ok = db_last_ok(s->db);
    if (s->ready) {
        m->ever_ready = 1;
        m->unready_since = 0;
        m->db_error[0] = '\0';
    } else {
        if (m->unready_since == 0)
            m->unready_since = now;
        snprintf(m->db_error, sizeof m->db_error, "%s", s->db_error);
    }
    m->ready = s->ready;
}

/* Duty 14 (see serve_tick). */
static void operate(struct server *s)
{
    struct err e;
    const double now = s->now;
    if (s->ready && run_every(&s->ran.node, now, s->cfg.heartbeat_s * 1000))
        node_beat(s, now);
    if (s->http && s->ready && run_every(&s->ran.queue_depths, now, METRICS_QUEUE_REFRESH_S * 1000) &&
        metrics_refresh_queue(&s->m, s->db, now, &e) < 0)
        log_warn("cannot read the queue depths", "error=%s", log_quote(err_str(&e)));
    if (notify_watchdog_due(&s->notify, now) && s->ready) {
        if (db_last_ok(s->db) <= s->notify.last_ping)
            node_beat(s, now); /* nothing answered since the last ping: ask now */
        if (s->ready && db_last_ok(s->db) > s->notify.last_ping)
            notify_watchdog(&s->notify, now);
    }
    metrics_sync(s, now);
    if (s->stopping)
        notify_status(&s->notify, now, "stopping: %d checkpoints still held", busy_count(s));
    else
        notify_status(&s->notify, now, "%d/%d workers busy, %d fetching, %d staged; %ld jobs done, %ld failed; %s",
                      s->m.slots_run, s->cfg.workers, s->m.slots_fetch, s->m.slots_ready, s->jobs_done,
                      s->jobs_failed, s->ready ? "database ok" : "database unreachable");
}

/* Duty 1: SIGHUP reloads the config, SIGTERM starts draining (a second
 * one ends the grace period). */
static void handle_signals(struct server *s)
{
    struct err e;
    if (got_hup) {
        got_hup = 0;
        if (s->config_path) {
            struct daemon_config c = s->cfg;
            notify_reloading(&s->notify);
            if (daemon_config_load(&c, s->config_path, &e) < 0)
                log_err("config not reloaded", &e);
            else
                reload(s, &c);
            if (s->notify.ready)
                notify_ready(&s->notify);
        }
    }
    if (got_term && !s->stopping) {
        s->stopping = 1;
        s->stop_deadline = s->now + s->cfg.shutdown_grace_s;
        notify_stopping(&s->notify);
        log_info("stopping: no new claims", "running=%d grace_s=%.0f", busy_count(s), s->cfg.shutdown_grace_s);
    }
    if (got_term > 1 && s->stop_deadline > s->now)
        s->stop_deadline = s->now;
}

/* Duty 2: the database usable (ensure_ready); the first time, systemd
 * hears READY=1 and the nodes row is written at once.  1 when usable. */
static int check_database(struct server *s)
{
    int dbok = ensure_ready(s) == 0;
    if (dbok && !s->notify.ready) {
        notify_ready(&s->notify);
        s->ran.node = 0;
    }
    return dbok;
}

/* Duty 3: workers that ended are reaped (or killed past their deadline). */
static void reap(struct server *s)
{
    for (int i = 0; i < NSLOTS; i++) {
        struct slot *sl = &s->slots[i];
        if (sl->busy && has_worker(sl) && !sl->ended && supervise_poll(&sl->w)) {
            sl->ended = 1;
            sl->phase = SLOT_RUN; /* a gated one ended before its gate: its load failed */
            s->worker_s += sl->w.seconds;
        }
    }
}

/* Duty 4: the results of ended workers stored or their failure recorded. */
static void settle_ended(struct server *s)
{
    for (int i = 0; i < NSLOTS; i++) {
        struct slot *sl = &s->slots[i];
        if (sl->busy && sl->phase == SLOT_RUN && sl->ended)
            settle(s, sl);
    }
}

/* Duty 5: staging advances; a worker idle while a download runs is time
 * lost to the network. */
static void advance_fetches(struct server *s, int dbok)
{
    if (s->last_tick > 0 && phase_count(s, SLOT_FETCH) > 0 && phase_count(s, SLOT_READY) == 0 &&
        phase_count(s, SLOT_GATED) == 0 && running_count(s) < s->cfg.workers)
        s->wait_dl += s->now - s->last_tick;
    s->last_tick = s->now;
    for (int i = 0; dbok && i < NSLOTS; i++)
        if (s->slots[i].busy && s->slots[i].phase == SLOT_FETCH)
            advance_fetch(s, &s->slots[i], s->now);
}

/* Duty 7: a lease not renewed for lease_s has passed, database or not:
 * its worker is killed (or its download stopped) and its work dropped. */
static void drop_unrenewed(struct server *s)
{
    for (int i = 0; i < NSLOTS; i++) {
        struct slot *sl = &s->slots[i];
        if (!sl->busy || sl->ended || s->now - sl->lease_renewed <= s->cfg.lease_s)
            continue;
        s->leases_lost++;
        log_warn("lease expired unrenewed: stopping the worker, its work dropped",
                 "run=%s step=%lld renewed_s_ago=%.1f phase=%s", log_quote(sl->claim.run), sl->claim.step,
                 s->now - sl->lease_renewed, sl->phase == SLOT_RUN ? "run" : "fetch");
        if (has_worker(sl))
            supervise_kill(&sl->w);
        slot_free(sl);
    }
}

/* Duty 8: every heartbeat_s each held lease is renewed; one another node
 * took (fewer jobs renewed than held) kills its worker and drops it. */
static void renew_leases(struct server *s)
{
    struct err e;
    for (int i = 0; i < NSLOTS; i++) {
        struct slot *sl = &s->slots[i];
        if (!sl->busy || sl->ended || s->now - sl->last_heartbeat < s->cfg.heartbeat_s)
            continue;
        int got = queue_heartbeat(s->db, s->cfg.node, s->cfg.lease_s, sl->claim.job_ids, sl->claim.njobs, &e);
        if (got < 0) {
            log_err("heartbeat failed", &e);
            continue;
        }
        sl->last_heartbeat = s->now;
        sl->lease_renewed = mono_now();
        if (got < sl->claim.njobs) {
            s->leases_lost++;
            log_warn("lease lost: stopping the worker", "run=%s step=%lld", log_quote(sl->claim.run),
                     sl->claim.step);
            supervise_kill(&sl->w);
            slot_free(sl);
        }
    }
}

/* Duty 9: other nodes' expired leases back to the queue; the next sweep
 * in lease_s/2, jittered by ±25 % so the nodes do not sweep together. */
static void expire_leases(struct server *s)
{
    struct err e;
    struct backoff b = backoff_of(s);
    if (queue_expire(s->db, &b, &e) < 0)
        log_err("lease expiry failed", &e);
    s->expire_ms = s->cfg.lease_s / 2 * 1000 * (0.75 + 0.5 * (rand() / (double)RAND_MAX));
}

/* Duty 10: one checkpoint per worker to stage, plus (prefetch) one more
 * per worker while it analyses.  Nothing claimable: the next try after
 * poll_s (a NOTIFY sooner); every slot taken: at the next tick. */
static void claim_more(struct server *s)
{
    struct err e;
    int exhausted = 0;
    while (phase_count(s, SLOT_FETCH) + phase_count(s, SLOT_READY) + phase_count(s, SLOT_GATED) <
           (s->cfg.prefetch ? s->cfg.workers : s->cfg.workers - phase_count(s, SLOT_RUN))) {
        struct slot *sl = NULL;
        for (int i = 0; i < NSLOTS && !sl; i++)
            if (!s->slots[i].busy)
                sl = &s->slots[i];
        if (!sl) /* every slot held: ended workers whose rows wait to be stored */
            return;
        double t0 = mono_now();
        int got = queue_claim(s->db, s->cfg.node, s->cfg.lease_s, &sl->claim, &e);
        if (got < 0)
            log_err("claim failed", &e);
        if (got <= 0) {
            exhausted = 1;
            break;
        }
        sl->busy = 1;
        sl->lease_renewed = mono_now();
        s->jobs_claimed += sl->claim.njobs;
        sl->claim_ms = (mono_now() - t0) * 1e3;
        sl->phase = SLOT_FETCH;
        sl->dup_step = -1;
        sl->fetch_started = mono_now();
        sl->progress_ran = sl->fetch_started;
        sl->last_heartbeat = sl->fetch_started;
        sl->stage = stage_new(s->fetcher, s->cache, sl->claim.source, sl->claim.step, s->offline, &e);
        if (!sl->stage) {
            char msg[1200];
            snprintf(msg, sizeof msg, "fetch failed: %s", err_str(&e));
            fail_unlaunched(s, sl, msg);
            continue;
        }
        if (!s->cfg.hf_cache_write)
            stage_set_hf_cache(sl->stage, NULL);
        advance_fetch(s, sl, mono_now());
        launch_ready(s); /* staged at once (a local checkpoint): start it now */
    }
    if (!exhausted)
        s->ran.claim = 0;
}

/* Duty 10 is due: not draining, not short of disk, and a claim not tried
 * within poll_s of one that found nothing (run_every). */
static int claim_due(struct server *s)
{
    return !s->stopping && run_every(&s->ran.claim, s->now, s->cfg.poll_s * 1000) && !disk_full(s);
}

/* Duty 11: draining: checkpoints not started yet go back at once. */
static void release_unstarted(struct server *s)
{
    struct err e;
    for (int i = 0; i < NSLOTS; i++) {
        struct slot *sl = &s->slots[i];
        if (!sl->busy || sl->phase == SLOT_RUN)
            continue;
        if (sl->phase == SLOT_GATED) /* loaded, not begun: stopped like a fetch */
            supervise_kill(&sl->w);
        if (queue_release(s->db, s->cfg.node, sl->claim.job_ids, sl->claim.njobs, &e) < 0)
            log_err("cannot release jobs (their lease will expire)", &e);
        log_info("fetch stopped, jobs released", "run=%s step=%lld", log_quote(sl->claim.run), sl->claim.step);
        slot_free(sl);
    }
}

/* Duty 12: past the grace period, kill the workers and give their jobs
 * back; results that could not be stored wait for their lease to expire. */
static void drain(struct server *s, int dbok)
{
    struct err e;
    for (int i = 0; i < NSLOTS; i++) {
        struct slot *sl = &s->slots[i];
        if (sl->busy && sl->ended) {
            log_warn("results not stored before shutdown; the jobs will be retried", "run=%s step=%lld",
                     log_quote(sl->claim.run), sl->claim.step);
            slot_free(sl);
            continue;
        }
        if (!sl->busy)
            continue;
        supervise_kill(&sl->w);
        if (dbok && queue_release(s->db, s->cfg.node, sl->claim.job_ids, sl->claim.njobs, &e) < 0)
            log_err("cannot release jobs (their lease will expire)", &e);
        log_info("worker stopped, jobs released", "run=%s step=%lld", log_quote(sl->claim.run), sl->claim.step);
        slot_free(sl);
    }
}

/* Duty 13: with --until-idle, notice that nothing is queued or running
 * anywhere. */
static void check_idle(struct server *s)
{
    struct err e;
    long queued = 0, running = 0;
    if (queue_counts(s->db, &queued, &running, &e) == 0 && queued == 0 && running == 0)
        s->idle = 1;
}

/*
 * The scheduler's tick.  Every duty is one call, in this order; the paced
 * ones run when run_every says their period has passed (redis serverCron):
 *   1. signals: SIGHUP reloads the config (reload(): the fetcher's
 *      settings and the cache budget too); SIGTERM starts draining
 *   2. database: reconnect with backoff; on a new connection check the
 *      schema, LISTEN, sync the metric registry; READY=1 the first time
 *   3. reap: workers that ended (or passed their deadline, killed); a
 *      checkpoint staged for a worker that ended starts now (duty 6),
 *      before the ended one's rows are stored, so ingest, integrity and
 *      detection run beside the next analysis rather than before it
 *   4. settle: store results of ended workers (COPY + done in one
 *      transaction) or record their failure; kept for later if the
 *      database is down (or memory short); an analysed snapshot becomes
 *      evictable and the cache is trimmed to its budget.  A failure (of a
 *      worker or a fetch) while a directory is short of space gives the
 *      jobs back uncounted (space.h)
 *   5. fetch: advance the staging of claimed checkpoints (stage.h); a
 *      staged one records its files and duplicates (checkpoint_files);
 *      a failed one fails its jobs with the reason; progress goes to the
 *      fetches table and the log every heartbeat_s
 *   6. launch: staged checkpoints get a worker as workers free up
 *   7. unrenewed: a lease not renewed for lease_s kills the worker (or
 *      stops the download) and drops it, database or not (the database
 *      set its expiry before it answered the last renewal: it has passed)
 *   8. heartbeat: renew leases every heartbeat_s (fetching ones too); a
 *      lost lease kills the worker and drops it.  A worker that already
 *      ended keeps its rows: the database refuses them if the lease is
 *      gone (ingest.h)
 *   9. expire: every lease_s/2 (jittered), return other nodes' expired leases
 *  10. claim: one checkpoint per worker to stage, plus (prefetch) one more
 *      per worker while it analyses, unless draining or a directory is
 *      below disk_min_free_mb; every poll_s, or at
 *      once after a NOTIFY, a reconnect or a claim that filled every slot
 *  11. release: draining, the jobs of checkpoints not yet started go back
 *  12. drain: past the grace period, kill workers and give jobs back
 *  13. idle: with --until-idle, every 0.5 s, notice that nothing is queued
 *      or running
 *  14. plan: every PLAN_EVERY_S, adaptive runs whose first pass ended get
 *      their dense phase (policy.h); every FAMILY_EVERY_S, families whose
 *      members changed are analysed again (family.h)
 *  15. operate: this node's row in `nodes` every heartbeat_s (node.h);
 *      with the metrics endpoint on, the per-run queue depths every
 *      METRICS_QUEUE_REFRESH_S; systemd: RELOADING=1 and READY=1 around a
 *      SIGHUP, STOPPING=1 at SIGTERM, the watchdog ping when due and a
 *      statement got an answer since the last one (else the nodes row is
 *      renewed now to find out), STATUS= when the summary changes; the
 *      counters are copied for /metrics and /healthz (metrics.h)
 */
static void serve_tick(struct server *s)
{
    s->now = mono_now();
    handle_signals(s);                                                            /* 1 */
    const int dbok = check_database(s);                                           /* 2 */
    reap(s);                                                                      /* 3 */
    if (dbok) {
        launch_ready(s); /* 6, at once: a staged checkpoint needs no settled rows */
        /* 10, first: the next checkpoint is claimed and its worker loads
         * while an ended one's rows are stored */
        if (claim_due(s))
            claim_more(s);
        settle_ended(s);                                                          /* 4 */
    }
    advance_fetches(s, dbok);                                                     /* 5 */
    if (dbok)
        launch_ready(s);                                                          /* 6 */
    drop_unrenewed(s);                                                            /* 7 */
    if (dbok)
        renew_leases(s);                                                          /* 8 */
    if (dbok && run_every(&s->ran.expire, s->now, s->expire_ms))
        expire_leases(s);                                                         /* 9 */
    if (dbok && claim_due(s))
        claim_more(s);                                                            /* 10 */
    if (s->stopping && dbok)
        release_unstarted(s);                                                     /* 11 */
    if (s->stopping && s->now >= s->stop_deadline)
        drain(s, dbok);                                                           /* 12 */
    if (s->until_idle && dbok && busy_count(s) == 0 && run_every(&s->ran.idle, s->now, 500))
        check_idle(s);                                                            /* 13 */
    if (dbok && !s->stopping && run_every(&s->ran.plan, s->now, PLAN_EVERY_S * 1000))
        policy_duty(s->db, detect_whole_run);                                     /* 14 */
    if (dbok && !s->stopping && run_every(&s->ran.family, s->now, FAMILY_EVERY_S * 1000))
        family_duty(s->db);                                                       /* 14 */
    operate(s);                                                                   /* 15 */
}

/* NOTIFYs libpq has already read (during a statement: this node's own,
 * such as the one that releases an adaptive run's planned jobs): 1 when
 * there were any, and the next claim is due now. */
static int take_notifies(struct server *s, PGconn *c)
{
    PGnotify *n;
    int woke = 0;
    while (c && (n = PQnotifies(c))) {
        woke = 1;
        PQfreemem(n);
    }
    if (woke)
        s->ran.claim = 0;
    return woke;
}

/* Sleep until the database says something, a worker ends, or the next
 * duty is due. */
static void serve_wait(struct server *s)
{
    if (take_notifies(s, db_conn(s->db)))
        return; /* heard already: no sleep */
    double timeout = s->cfg.poll_s;
    if (busy_count(s) > 0 || s->stopping)
        timeout = 0.05;
    if (s->until_idle && timeout > 0.5)
        timeout = 0.5;
    if (s->notify.watchdog_s > 0 && timeout > s->notify.watchdog_s / 4)
        timeout = s->notify.watchdog_s / 4;
    int http_ms = metrics_server_timeout_ms(s->http);
    if (http_ms >= 0 && timeout * 1000 > http_ms)
        timeout = http_ms / 1000.0;
    struct pollfd pfd[3];
    int nfd = 0, dbfd = -1;
    if (chld_pipe[0] >= 0)
        pfd[nfd++] = (struct pollfd){chld_pipe[0], POLLIN, 0};
    PGconn *c = db_conn(s->db);
    if (c) {
        dbfd = nfd;
        pfd[nfd++] = (struct pollfd){PQsocket(c), POLLIN, 0};
    } else if (timeout > 1.0) {
        timeout = 1.0; /* reconnecting */
    }
    if (s->http) /* a scrape wakes the loop; metrics_server_run answers it */
        pfd[nfd++] = (struct pollfd){metrics_server_fd(s->http), POLLIN, 0};
    int r;
    if (s->fetcher && fetcher_pending(s->fetcher) > 0) {
        /* move bytes until a worker ends, the database speaks, a
         * download finishes or the timeout passes */
        int fds[3];
        for (int i = 0; i < nfd; i++)
            fds[i] = pfd[i].fd;
        fetcher_run(s->fetcher, fds, nfd, (int)(timeout * 1000));
        r = poll(pfd, (nfds_t)nfd, 0);
    } else {
        r = poll(pfd, (nfds_t)nfd, (int)(timeout * 1000));
    }
    if (r <= 0)
        return;
    if (chld_pipe[0] >= 0 && (pfd[0].revents & POLLIN)) {
        char buf[64];
        while (read(chld_pipe[0], buf, sizeof buf) > 0)
            ;
    }
    if (dbfd >= 0 && pfd[dbfd].revents) {
        if (!PQconsumeInput(c)) {
            db_lost(s->db);
            return;
        }
        take_notifies(s, c);
    }
}

/* SIGTERM, SIGINT and SIGHUP set flags; SIGCHLD wakes serve_wait through
 * the self-pipe (when one could be made). */
static void catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_hup;
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (pipe2(chld_pipe, O_NONBLOCK | O_CLOEXEC) == 0) {
        sa.sa_handler = on_chld;
        sa.sa_flags = SA_RESTART | SA_NOCLDSTOP; /* waitpid() and libpq are not interrupted */
        sigaction(SIGCHLD, &sa, NULL);
    } else {
        chld_pipe[0] = chld_pipe[1] = -1; /* then only the timer notices ended workers */
    }
}

static void release_signals(void)
{
    signal(SIGCHLD, SIG_DFL);
    if (chld_pipe[0] >= 0) {
        close(chld_pipe[0]);
        close(chld_pipe[1]);
        chld_pipe[0] = chld_pipe[1] = -1;
    }
}

/* The worker's battery, the fetcher, the cache, the artifact root, the
 * database handle: what the node needs before its first tick.  On failure
 * the error is logged and the caller releases what was made. */
static int serve_setup(struct server *s)
{
    struct err e;
    int rc;
    supervise_worker_path(s->cfg.worker_path, s->worker, sizeof s->worker);
    if ((rc = registry_from_worker(&s->reg, s->worker, &e)) < 0) {
        log_err("cannot read the battery from the worker", &e);
        return ERR_CHILD;
    }
    struct fetch_opts fo;
    daemon_config_fetch_opts(&s->cfg, &fo);
    s->offline = daemon_offline();
    /* the cache and the spool: the leftovers of dead daemons go first */
    if (!(s->fetcher = fetcher_new(&fo, &e)) ||
        !(s->cache = cache_open_as(s->cfg.cache_dir, (long long)(s->cfg.cache_budget_gb * (1LL << 30)),
                                   s->cfg.node, &e)) ||
        !(s->spool = supervise_spool_open(s->cfg.spool_dir, s->cfg.node, &e))) {
        log_err("cannot set up downloads and the spool", &e);
        return ERR_IO;
    }
    char real[PATH_MAX];
    if (path_mkdir_p(s->cfg.artifact_dir, &e) < 0 ||
        (!realpath(s->cfg.artifact_dir, real) &&
         err_set(&e, ERR_IO, s->cfg.artifact_dir, "cannot resolve: %s", strerror(errno)) < 0) ||
        (strlen(real) >= sizeof s->artifact_root &&
         err_set(&e, ERR_IO, s->cfg.artifact_dir, "path too long") < 0)) {
        log_err("cannot set up the artifact directory", &e);
        return ERR_IO;
    }
    snprintf(s->artifact_root, sizeof s->artifact_root, "%s", real);
    if (!(s->db = db_new(s->cfg.database)))
        return ERR_NOMEM;
    /* back in time to renew: at least two connect attempts per lease */
    db_set_backoff_max(s->db, s->cfg.lease_s / 2);
    db_set_timeouts(s->db, s->cfg.db_statement_timeout_s, s->cfg.db_idle_in_transaction_timeout_s);
    return 0;
}

int serve_run(const struct serve_opts *o)
{
    static struct server srv;
    struct server *s = &srv;
    struct err e;
    int rc, caught = 0;
    memset(s, 0, sizeof *s);
    s->cfg = *o->config; /* checked (daemon_config_check): workers <= MAX_SLOTS */
    s->config_path = o->config_path;
    s->until_idle = o->until_idle;
    /* the workers load OpenBLAS with the kernels chosen here instead of
     * each re-executing itself to choose them */
    const char *core = cpu_blas_wanted();
    if (core) {
        snprintf(s->worker_core, sizeof s->worker_core, "OPENBLAS_CORETYPE=%s", core);
        log_info("kernels chosen for the workers", "OPENBLAS_CORETYPE=%s", core);
    }
    s->started = mono_now();
    if (gethostname(s->host, sizeof s->host - 1) != 0)
        snprintf(s->host, sizeof s->host, "unknown");
    metrics_init(&s->m, s->cfg.node);
    notify_init(&s->notify, s->started);
    if ((rc = serve_setup(s)) < 0)
        goto out;
    srand((unsigned)getpid() ^ (unsigned)mono_now());
    catch_signals();
    caught = 1;
    if (db_connect_wait(s->db, 10.0, &e) == 0 && ensure_ready(s) == -2) {
        rc = ERR_DB;
        goto out;
    }
    if (s->cfg.metrics_listen[0]) {
        if (!(s->http = metrics_server_start(s->cfg.metrics_listen, s->cfg.metrics_allow_remote, &s->m, &e))) {
            log_err("cannot serve metrics", &e);
            rc = ERR_IO;
            goto out;
        }
        log_info("metrics endpoint", "listen=%s paths=\"/metrics /healthz\"", s->cfg.metrics_listen);
    }
    log_info("serving", "node=%s workers=%d worker=%s lease_s=%.0f until_idle=%d cache=%s prefetch=%d offline=%d"
             " artifacts=%s", s->cfg.node, s->cfg.workers, s->worker, s->cfg.lease_s, s->until_idle,
             log_quote(cache_root(s->cache)), s->cfg.prefetch, s->offline, log_quote(s->artifact_root));
    for (;;) {
        serve_tick(s);
        if (s->stopping && busy_count(s) == 0)
            break;
        if (s->idle)
            break;
        serve_wait(s);
        metrics_server_run(s->http);
    }
    log_info("stopped", "node=%s jobs_done=%ld jobs_failed=%ld leases_lost=%ld db_reconnects=%ld"
             " downloaded=%lld download_wait_s=%.3f download_wait_after_first_s=%.3f",
             s->cfg.node, s->jobs_done, s->jobs_failed, s->leases_lost, db_reconnects(s->db),
             fetcher_bytes(s->fetcher), s->wait_dl_total, s->wait_dl_after_first);
    for (int i = 0; i < NSLOTS; i++)
        if (s->slots[i].busy)
            slot_free(&s->slots[i]);
    if (s->ready) /* the final counters, then the stop */
        node_beat(s, mono_now());
    if (s->ready && node_stopped(s->db, s->cfg.node, (int)getpid(), &e) < 0)
        log_warn("cannot mark the node stopped", "error=%s", log_quote(err_str(&e)));
    rc = 0;
out:
    metrics_server_stop(s->http);
    if (caught)
        release_signals();
    db_free(s->db);
    fetcher_free(s->fetcher);
    cache_close(s->cache);
    owner_close(s->spool);
    registry_free(&s->reg);
    metrics_free(&s->m);
    return rc;
}
