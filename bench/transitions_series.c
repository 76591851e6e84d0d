/*
 * transitions_series - run the transition detectors on series given as
 * JSON, for the benchmark of real training series
 * (bench/transitions_realbench.py) and its test.
 *
 *   transitions_series FILE [--method level-v2|ramp-v1|both] [--p-max P]
 *
 * FILE: {"series": [{"id": ID, "steps": [...], "values": [...]}, ...]}
 * (values may be null: not finite), or a benchmark file whose runs hold
 * such series ({"runs": [{"run": R, "series": [{"metric": M, ...}]}]}: the
 * id is "R/M").  Prints one JSON object per series and method on stdout:
 *
 *   {"id": ID, "method": "level-v2", "points": N, "max_score": Z, "rho": R,
 *    "events": [{"kind": "transition"|"spike", "start_step", "peak_step",
 *                "end_step", "magnitude", "score", "p_value", "noise",
 *                "before", "after"}, ...]}
 *
 * --p-max P: level-v2 with that false-positive rate instead of TR_P_MAX.
 * Exit 1 naming the series on malformed input.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "daemon/detect/transitions.h"
#include "daemon/detect/transitions_v1.h"

static int read_series(json_t *js, json_t *jv, long long **s, double **v, int *n, const char *id)
{
    if (!json_is_array(js) || !json_is_array(jv) || json_array_size(js) != json_array_size(jv)) {
        fprintf(stderr, "transitions_series: %s: steps and values must be arrays of one length\n", id);
        return -1;
    }
    *n = (int)json_array_size(js);
    *s = malloc(sizeof **s * (size_t)(*n + 1));
    *v = malloc(sizeof **v * (size_t)(*n + 1));
    if (!*s || !*v) {
        fprintf(stderr, "transitions_series: out of memory\n");
        return -1;
    }
    for (int i = 0; i < *n; i++) {
        json_t *a = json_array_get(js, (size_t)i), *b = json_array_get(jv, (size_t)i);
        if (!json_is_integer(a) || !(json_is_number(b) || json_is_null(b))) {
            fprintf(stderr, "transitions_series: %s: point %d is not (integer step, number or null)\n", id, i);
            return -1;
        }
        (*s)[i] = json_integer_value(a);
        (*v)[i] = json_is_null(b) ? NAN : json_number_value(b);
    }
    return 0;
}

static void put_num(const char *key, double x, int comma)
{
    if (isfinite(x))
        printf("\"%s\":%.10g%s", key, x, comma ? "," : "");
    else
        printf("\"%s\":null%s", key, comma ? "," : "");
}

static double p_max = TR_P_MAX;

static int one(const char *id, json_t *js, json_t *jv, int v2, int v1)
{
    long long *s = NULL;
    double *v = NULL;
    int n = 0, rc = -1;
    struct err e;
    if (read_series(js, jv, &s, &v, &n, id) < 0)
        goto out;
    if (v2) {
        struct tr_event ev[TR_MAX_PER_SERIES];
        double z = 0, rho = 0;
        int k = tr_detect_p(s, v, n, p_max, ev, TR_MAX_PER_SERIES, &e);
        if (k < 0 || tr_max_score(s, v, n, &z, &rho, &e) < 0) {
            fprintf(stderr, "transitions_series: %s: %s\n", id, err_str(&e));
            goto out;
        }
        printf("{\"id\":\"%s\",\"method\":\"%s\",\"points\":%d,\"max_score\":%.6g,\"rho\":%.4g,\"events\":[", id,
               TR_METHOD, n, z, rho);
        for (int i = 0; i < k; i++) {
            printf("%s{\"kind\":\"%s\",\"start_step\":%lld,\"peak_step\":%lld,\"end_step\":%lld,", i ? "," : "",
                   ev[i].kind == TR_KIND_SPIKE ? "spike" : "transition", ev[i].start_step, ev[i].peak_step,
                   ev[i].end_step);
            put_num("magnitude", ev[i].magnitude, 1);
            put_num("score", ev[i].score, 1);
            put_num("p_value", ev[i].p_value, 1);
            put_num("noise", ev[i].noise, 1);
            put_num("before", ev[i].before, 1);
            put_num("after", ev[i].after, 0);
            printf("}");
        }
        printf("]}\n");
    }
    if (v1) {
        struct tr1_transition t[TR1_MAX_PER_SERIES];
        double z = 0;
        int k = tr1_detect(s, v, n, t, TR1_MAX_PER_SERIES, &e);
        if (k < 0 || tr1_max_score(s, v, n, &z, &e) < 0) {
            fprintf(stderr, "transitions_series: %s: %s\n", id, err_str(&e));
            goto out;
        }
        printf("{\"id\":\"%s\",\"method\":\"%s\",\"points\":%d,\"max_score\":%.6g,\"events\":[", id, TR1_METHOD, n,
               z);
        for (int i = 0; i < k; i++) {
            printf("%s{\"kind\":\"transition\",\"start_step\":%lld,\"peak_step\":%lld,\"end_step\":%lld,",
                   i ? "," : "", t[i].start_step, t[i].peak_step, t[i].end_step);
            put_num("magnitude", t[i].magnitude, 1);
            put_num("score", t[i].score, 0);
            printf("}");
        }
        printf("]}\n");
    }
    rc = 0;
out:
    free(s);
    free(v);
    return rc;
}

int main(int argc, char **argv)
{
    const char *file = NULL, *method = "level-v2";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--method") == 0 && i + 1 < argc)
            method = argv[++i];
        else if (strcmp(argv[i], "--p-max") == 0 && i + 1 < argc)
            p_max = atof(argv[++i]);
        else if (!file && argv[i][0] != '-')
            file = argv[i];
        else
            file = NULL, i = argc;
    }
    int v2 = strcmp(method, "level-v2") == 0 || strcmp(method, "both") == 0;
    int v1 = strcmp(method, "ramp-v1") == 0 || strcmp(method, "both") == 0;
    if (!file || !(v1 || v2)) {
        fprintf(stderr, "usage: transitions_series FILE [--method level-v2|ramp-v1|both] [--p-max P]\n");
        return 2;
    }
    json_error_t je;
    json_t *doc = json_load_file(file, 0, &je);
    if (!doc) {
        fprintf(stderr, "transitions_series: %s: %s (line %d)\n", file, je.text, je.line);
        return 1;
    }
    int rc = 0;
    size_t i, j;
    json_t *x, *y;
    json_array_foreach(json_object_get(doc, "series"), i, x) {
        const char *id = json_string_value(json_object_get(x, "id"));
        if (!id || one(id, json_object_get(x, "steps"), json_object_get(x, "values"), v2, v1) < 0) {
            fprintf(stderr, "transitions_series: %s: series %zu: bad or missing id, steps or values\n", file, i);
            rc = 1;
            break;
        }
    }
    json_array_foreach(json_object_get(doc, "runs"), i, x) {
        const char *run = json_string_value(json_object_get(x, "run"));
        json_array_foreach(json_object_get(x, "series"), j, y) {
            const char *metric = json_string_value(json_object_get(y, "metric"));
            char id[512];
            snprintf(id, sizeof id, "%s/%s", run ? run : "?", metric ? metric : "?");
            if (!run || !metric || one(id, json_object_get(y, "steps"), json_object_get(y, "values"), v2, v1) < 0) {
                fprintf(stderr, "transitions_series: %s: run %zu series %zu: bad input\n", file, i, j);
                rc = 1;
                break;
            }
        }
        if (rc)
            break;
    }
    json_decref(doc);
    return rc;
}
