/*
 * source.h - where a run's checkpoints are, and which steps it has.
 *
 * A source is a URL template: `{step}` is replaced by the step number
 * (`file:///shared/run7/step{step}/`, `https://host/ckpts/step{step}/`).  A
 * source without `{step}` gets `/step{step}` appended: Pythia's layout.
 * A plain path is a file:// source.  The revision of step N is "stepN".
 *
 * Schedules: a comma-separated list whose elements are step numbers,
 * ranges START:STOP:STRIDE (STOP inclusive), "pythia" (Pythia's 154
 * checkpoints: 0, 1, 2, 4 … 512, then 1000, 2000 … 143000) and "refs" (the
 * steps the source itself has: for hf:// the branches named step<N> of the
 * hub's refs API, looked up by the caller, see stage_discover_steps).  The
 * schedule is their union: "0,1,2,4,1000:10000:1000", "pythia", "refs",
 * "refs,pythia".
 *
 *     long long *steps; int n;
 *     if (schedule_parse("pythia", &steps, &n, &e) == 0) { ... free(steps); }
 *     source_checkpoint_url("file:///runs/a", 1000, url, sizeof url, &e);
 *     // "file:///runs/a/step1000"
 */
#ifndef CKPTD_SOURCE_H
#define CKPTD_SOURCE_H

#include <stddef.h>

#include "common/err.h"

#define SCHEDULE_MAX_STEPS 100000
#define SCHEDULE_REFS "refs"

/* Steps in increasing order, duplicates removed. *steps is the caller's.
 * A schedule naming "refs" is ERR_INVALID here: use schedule_parse_refs. */
int schedule_parse(const char *spec, long long **steps, int *n, struct err *e) CK_WUR;

/* 1 when the schedule names "refs". */
int schedule_uses_refs(const char *spec);

/* schedule_parse with "refs" standing for the nrefs steps in refs (the
 * source's discovered steps; nrefs < 0: not looked up, an error). */
int schedule_parse_refs(const char *spec, const long long *refs, int nrefs, long long **steps, int *n,
                        struct err *e) CK_WUR;

/* The URL of one step's checkpoint directory. */
int source_checkpoint_url(const char *source, long long step, char *out, size_t n,
                          struct err *e) CK_WUR;

/* Check a source: a known scheme (file://, a path; http(s):// and hf:// are
 * accepted for the fetcher) and at most one {step}. */
int source_check(const char *source, struct err *e) CK_WUR;

/* For a file:// URL or a plain path, the local directory (percent-decoding
 * is not done: paths are taken literally).  ERR_UNSUPPORTED for network
 * URLs, which need fetching first. */
int source_local_path(const char *url, char *out, size_t n, struct err *e) CK_WUR;

#endif
