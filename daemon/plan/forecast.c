/* A run's forecast: its settings, shape and progress from the database,
 * priced by the cost model. */
#include "daemon/plan/forecast.h"

#include <errno.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "daemon/base/db.h"
#include "daemon/plan/source.h"

#define GENERATED_SEQS 16 /* the worker's generated eval set (BATTERY_EVAL_SEQS x _LEN) */
#define GENERATED_LEN 128

/* Sequences of ctx tokens in a token file (tokens_read_file's formats). */
static int token_file_seqs(const char *path, int ctx, int *seqs, struct err *e)
{
    size_t len = strlen(path);
    if (len > 5 && strcmp(path + len - 5, ".json") == 0) {
        json_error_t je;
        json_t *doc = json_load_file(path, 0, &je);
        if (!doc)
            return err_set(e, ERR_IO, path, "cannot read the eval tokens: %s", je.text);
        *seqs = json_is_array(doc) ? (int)json_array_size(doc) : 0;
        json_decref(doc);
        return 0;
    }
    struct stat st;
    if (stat(path, &st) != 0)
        return err_set(e, ERR_IO, path, "cannot read the eval tokens: %s", strerror(errno));
    const int width = len > 4 && strcmp(path + len - 4, ".u32") == 0 ? 4 : 2;
    *seqs = (int)(st.st_size / width / ctx);
    return 0;
}

int forecast_run_settings(const char *options, struct cost_run *out, struct err *e)
{
    *out = COST_RUN_DEFAULT;
    out->eval_seqs = GENERATED_SEQS;
    out->ctx = GENERATED_LEN;
    json_error_t je;
    json_t *opt = json_loads(options && options[0] ? options : "{}", 0, &je);
    if (!opt || !json_is_object(opt)) {
        json_decref(opt);
        return err_set(e, ERR_FORMAT, "run options", "not a JSON object");
    }
    int rc = 0;
    json_t *v = json_object_get(opt, "ctx");
    if (json_is_integer(v) && json_integer_value(v) > 0)
        out->ctx = (int)json_integer_value(v);
    v = json_object_get(opt, "eval_tokens");
    if (json_is_string(v)) {
        int seqs = 0;
        if ((rc = token_file_seqs(json_string_value(v), out->ctx, &seqs, e)) == 0) {
            json_t *cap = json_object_get(opt, "eval_seqs");
            if (json_is_integer(cap) && json_integer_value(cap) > 0 && json_integer_value(cap) < seqs)
                seqs = (int)json_integer_value(cap);
            out->eval_seqs = seqs;
        }
    }
    v = json_object_get(opt, "sae_sites");
    if (json_array_size(v) > 0)
        out->sae_sites = (int)json_array_size(v);
    out->probe_sets = (int)json_array_size(json_object_get(opt, "probes"));
    v = json_object_get(opt, "sweep_every");
    if (json_is_integer(v) && json_integer_value(v) >= 0)
        out->sweep_every = (int)json_integer_value(v);
    json_decref(opt);
    return rc;
}

char *forecast_read_file(const char *path, struct err *e)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        err_set(e, ERR_IO, path, "cannot open: %s", strerror(errno));
        return NULL;
    }
    char *buf = malloc(1 << 20);
    size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (!buf) {
        err_set(e, ERR_NOMEM, path, "out of memory");
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

/* The config.json text of DIR, malloc'd. */
static char *read_config(const char *dir, struct err *e)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    return forecast_read_file(path, e);
}

/* The shape as the JSON stored in runs.model. */
static char *shape_json(const struct cost_shape *sh)
{
    json_t *o = json_pack("{s:i,s:i,s:i,s:i,s:i,s:i}", "num_hidden_layers", sh->n_layers,
                          "hidden_size", sh->d_model, "num_attention_heads", sh->n_heads,
                          "intermediate_size", sh->d_mlp, "vocab_size", sh->vocab,
                          "max_position_embeddings", sh->max_pos);
    char *s = o ? json_dumps(o, JSON_SORT_KEYS | JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}

static int store_model(struct db *db, long long run_id, const char *config_json, int only_new,
                       struct err *e)
{
    struct cost_shape sh;
    int rc = cost_shape_from_json(&sh, config_json, e);
    if (rc < 0)
        return rc;
    char *js = shape_json(&sh), id[32];
    if (!js)
        return err_set(e, ERR_NOMEM, "runs.model", "out of memory");
    snprintf(id, sizeof id, "%lld", run_id);
    const char *p[2] = {id, js};
    PGresult *r = db_exec(db,
                          only_new ? "UPDATE runs SET model = $2::jsonb WHERE id = $1 AND model IS NULL"
                                   : "UPDATE runs SET model = $2::jsonb WHERE id = $1",
                          2, p, e);
    free(js);
    if (!r)
        return ERR_DB;
    rc = atoi(PQcmdTuples(r)) > 0;
    PQclear(r);
    return rc;
}

int forecast_note_model(struct db *db, long long run_id, const char *dir, struct err *e)
{
    char *text = read_config(dir, e);
    if (!text)
        return e ? e->code : ERR_IO;
    int rc = store_model(db, run_id, text, 1, e);
    free(text);
    return rc;
}

int forecast_set_model(struct db *db, long long run_id, const char *config_json, struct err *e)
{
    int rc = store_model(db, run_id, config_json, 0, e);
    return rc < 0 ? rc : 0;
}

/* A file:// run's first checkpoint's config.json, when it is there. */
static char *local_config(const char *source, long long step)
{
    char url[4096], dir[4096];
    if (source_checkpoint_url(source, step, url, sizeof url, NULL) < 0 ||
        source_local_path(url, dir, sizeof dir, NULL) < 0)
        return NULL;
    return read_config(dir, NULL);
}

int forecast_load(struct db *db, const char *run, struct forecast *f, struct err *e)
{
    memset(f, 0, sizeof *f);
    snprintf(f->run, sizeof f->run, "%s", run);
    const char *p[1] = {run};
    PGresult *r = db_exec(db,
        "SELECT id, array_to_json(items)::text, options::text, coalesce(model::text, ''), source,"
        "   (SELECT min(step) FROM checkpoints WHERE run_id = runs.id)"
        " FROM runs WHERE name = $1", 1, p, e);
    if (!r)
        return ERR_DB;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return err_set(e, ERR_NOTFOUND, run, "no run by this name");
    }
    f->run_id = atoll(PQgetvalue(r, 0, 0));
    int rc = forecast_run_settings(PQgetvalue(r, 0, 2), &f->set, e);
    json_t *items = rc == 0 ? json_loads(PQgetvalue(r, 0, 1), 0, NULL) : NULL;
    for (size_t i = 0; i < json_array_size(items) && f->nitems < FORECAST_ITEMS; i++)
        snprintf(f->items[f->nitems++], sizeof f->items[0], "%s",
                 json_string_value(json_array_get(items, i)));
    json_decref(items);
    const char *model = PQgetvalue(r, 0, 3);
    char *local = NULL;
    if (rc == 0 && !model[0] && !PQgetisnull(r, 0, 5))
        model = local = local_config(PQgetvalue(r, 0, 4), atoll(PQgetvalue(r, 0, 5)));
    if (rc == 0 && model && model[0] && cost_shape_from_json(&f->shape, model, NULL) == 0)
        f->has_shape = 1;
    free(local);
    PQclear(r);
    if (rc < 0)
        return rc;
    /* the checkpoints in step order: finished or not, the recent ones' seconds */
    char id[32];
    snprintf(id, sizeof id, "%lld", f->run_id);
    const char *p2[1] = {id};
    r = db_exec(db,
        "SELECT bool_and(j.state IN ('done', 'dead')), bool_and(j.state = 'done'),"
        "   bool_or(j.state = 'running'), max(j.worker_seconds), max(j.finished_at)"
        " FROM checkpoints c JOIN jobs j ON j.checkpoint_id = c.id WHERE c.run_id = $1"
        " GROUP BY c.id, c.step ORDER BY c.step", 1, p2, e);
    if (!r)
        return ERR_DB;
    const int n = PQntuples(r);
    f->checkpoints = n;
    /* the FORECAST_RECENT latest finished_at among done checkpoints */
    char (*when)[40] = calloc((size_t)n + 1, sizeof *when);
    if (!when) {
        PQclear(r);
        return err_set(e, ERR_NOMEM, run, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        const int finished = PQgetvalue(r, i, 0)[0] == 't', done = PQgetvalue(r, i, 1)[0] == 't';
        f->running += PQgetvalue(r, i, 2)[0] == 't';
        if (!finished) {
            f->left++;
            f->left_sweeps += cost_on_skeleton(i, n, f->set.sweep_every);
        } else {
            f->done++;
        }
        if (done && !PQgetisnull(r, i, 3))
            snprintf(when[i], sizeof when[i], "%s", PQgetvalue(r, i, 4));
    }
    for (int k = 0; k < FORECAST_RECENT; k++) { /* pick the latest, one at a time */
        int best = -1;
        for (int i = 0; i < n; i++)
            if (when[i][0] && (best < 0 || strcmp(when[i], when[best]) > 0))
                best = i;
        if (best < 0)
            break;
        f->measured_s += atof(PQgetvalue(r, best, 3));
        f->recent++;
        f->recent_sweeps += cost_on_skeleton(best, n, f->set.sweep_every);
        when[best][0] = '\0';
    }
    free(when);
    PQclear(r);
    return 0;
}

int forecast_offline(struct forecast *f, const char *name, const char *config_json,
                     const char *const *items, int nitems, const struct cost_run *set,
                     int checkpoints, struct err *e)
{
    memset(f, 0, sizeof *f);
    snprintf(f->run, sizeof f->run, "%s", name);
    if (nitems > FORECAST_ITEMS)
        return err_set(e, ERR_INVALID, name, "%d items: at most %d", nitems, FORECAST_ITEMS);
    int rc = cost_shape_from_json(&f->shape, config_json, e);
    if (rc < 0)
        return rc;
    f->has_shape = 1;
    f->set = *set;
    for (int i = 0; i < nitems; i++)
        snprintf(f->items[f->nitems++], sizeof f->items[0], "%s", items[i]);
    f->checkpoints = f->left = checkpoints;
    f->left_sweeps = cost_skeleton_count(checkpoints, set->sweep_every);
    return 0;
}

static void per_checkpoint(const struct forecast *f, double gflops, struct cost_item *items,
                           struct cost_series *s)
{
    const char *names[FORECAST_ITEMS];
    for (int i = 0; i < f->nitems; i++)
        names[i] = f->items[i];
    cost_series(&f->shape, &f->set, names, f->nitems, f->checkpoints, gflops, items, s);
}

double forecast_ratio(const struct forecast *f, double gflops)
{
    if (!f->has_shape || f->recent == 0)
        return NAN;
    struct cost_series s;
    per_checkpoint(f, gflops, NULL, &s);
    double proj = (f->recent - f->recent_sweeps) * s.checkpoint_s + f->recent_sweeps * s.sweep_s;
    return proj > 0 ? f->measured_s / proj : NAN;
}

double forecast_eta(const struct forecast *f, double gflops)
{
    if (!f->has_shape)
        return NAN;
    if (f->left == 0)
        return 0.0;
    struct cost_series s;
    per_checkpoint(f, gflops, NULL, &s);
    double left = (f->left - f->left_sweeps) * s.checkpoint_s + f->left_sweeps * s.sweep_s;
    double ratio = forecast_ratio(f, gflops);
    if (isfinite(ratio))
        left *= ratio;
    return left / (f->running > 1 ? f->running : 1);
}

static void hours(char *buf, size_t n, double s)
{
    if (!isfinite(s))
        snprintf(buf, n, "?");
    else if (s < 120)
        snprintf(buf, n, "%.0f s", s);
    else if (s < 7200)
        snprintf(buf, n, "%.1f min", s / 60);
    else
        snprintf(buf, n, "%.1f h", s / 3600);
}

void forecast_print(const struct forecast *f, int nodes, int workers, double gflops, int json,
                    FILE *out)
{
    struct cost_item items[FORECAST_ITEMS];
    struct cost_series s;
    per_checkpoint(f, gflops, items, &s);
    nodes = nodes < 1 ? 1 : nodes;
    workers = workers < 1 ? 1 : workers;
    /* a node's throughput is its rate: its workers share it (each gets
     * 1/workers of the cores), so the series takes total / nodes, and no
     * less than one checkpoint per worker in turn */
    const int slots = nodes * workers;
    const double per_worker = s.checkpoint_s * workers;
    double wall = s.total_s / nodes;
    const double rounds = ceil((double)f->checkpoints / slots) * per_worker;
    wall = wall > rounds ? wall : rounds;
    if (json) {
        json_t *o = json_object(), *its = json_array();
        for (int i = 0; i < f->nitems; i++)
            json_array_append_new(its, json_pack("{s:s,s:b,s:f,s:f,s:f,s:f}", "item",
                                                 items[i].name, "known", items[i].known, "gflop",
                                                 items[i].gflop, "sweep_gflop",
                                                 items[i].sweep_gflop, "seconds",
                                                 items[i].seconds, "sweep_seconds",
                                                 items[i].sweep_s));
        json_object_set_new(o, "run", json_string(f->run));
        json_object_set_new(o, "gflops", json_real(gflops));
        json_object_set_new(o, "eval_seqs", json_integer(f->set.eval_seqs));
        json_object_set_new(o, "ctx", json_integer(f->set.ctx));
        json_object_set_new(o, "items", its);
        json_object_set_new(o, "pass_seconds", json_real(s.pass_s));
        json_object_set_new(o, "pass_gflop", json_real(s.pass_gflop));
        json_object_set_new(o, "checkpoint_seconds", json_real(s.checkpoint_s));
        json_object_set_new(o, "sweep_checkpoint_seconds", json_real(s.sweep_s));
        json_object_set_new(o, "checkpoints", json_integer(s.checkpoints));
        json_object_set_new(o, "sweeps", json_integer(s.sweeps));
        json_object_set_new(o, "series_seconds", json_real(s.total_s));
        json_object_set_new(o, "nodes", json_integer(nodes));
        json_object_set_new(o, "workers", json_integer(workers));
        json_object_set_new(o, "series_wall_seconds", json_real(wall));
        json_dumpf(o, out, JSON_INDENT(1));
        fputc('\n', out);
        json_decref(o);
        return;
    }
    char a[32], b[32];
    fprintf(out, "run %s: %d layers, d_model %d, %d heads, d_mlp %d, vocabulary %d; eval set %d x %d"
                 " tokens; %d checkpoints, %d of them full sweeps (every %d and the last)\n",
            f->run, f->shape.n_layers, f->shape.d_model, f->shape.n_heads, f->shape.d_mlp,
            f->shape.vocab, f->set.eval_seqs,
            f->set.ctx < f->shape.max_pos ? f->set.ctx : f->shape.max_pos, s.checkpoints, s.sweeps,
            f->set.sweep_every);
    fprintf(out, "at %.0f GFLOP/s of plain forward per node (%s):\n\n", gflops,
            gflops == cost_reference_gflops() ? "the reference machine" : "--gflops");
    fprintf(out, "  %-16s %12s %12s %12s\n", "item", "GFLOP", "s/checkpoint", "s/full sweep");
    if (s.pass_s > 0)
        fprintf(out, "  %-16s %12s %12.1f %12.1f\n", "(eval forward)", "", s.pass_s, s.pass_s);
    for (int i = 0; i < f->nitems; i++) {
        if (!items[i].known) {
            fprintf(out, "  %-16s %12s %12s %12s  (not in the cost table: counted as 0)\n",
                    items[i].name, "?", "?", "?");
            continue;
        }
        fprintf(out, "  %-16s %12.0f %12.1f %12.1f\n", items[i].name, items[i].gflop,
                items[i].seconds, items[i].sweep_s);
    }
    fprintf(out, "  %-16s %12s %12.1f %12.1f\n\n", "per checkpoint", "", s.checkpoint_s, s.sweep_s);
    hours(a, sizeof a, s.total_s);
    hours(b, sizeof b, wall);
    fprintf(out, "series: %s on one node; %s on %d node%s x %d worker%s\n", a, b, nodes,
            nodes == 1 ? "" : "s", workers, workers == 1 ? "" : "s");
}
