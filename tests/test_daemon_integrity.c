/*
 * test_daemon_integrity.c - the integrity judge (daemon/detect/integrity.h)
 * on simulated runs: sketches of weights that drift and diffuse from a
 * random init along Pythia's schedule and a toy run's, with plants the
 * Pythia tracker reports (a late step's weights under an early name, a
 * block of them, step0 equal to the final step, a shard of the final
 * checkpoint in an early one, identical early steps).  Each plant must be
 * flagged with its reason and the step it copies; genuine runs, never.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/detect/integrity.h"

#define K INTEGRITY_SKETCH_K
#define MAXN 200

static uint64_t rng_state;

static double unif(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return ((rng_state >> 11) + 0.5) / 9007199254740992.0;
}

static double gauss(void)
{
    return sqrt(-2.0 * log(unif())) * cos(6.283185307179586 * unif());
}

/* Pythia's 154 steps, or a toy run's (0, 1, 2, 4 ... 64, then every 100 to
 * 3000: 38). */
static int schedule(long long *steps, int pythia)
{
    int n = 0;
    steps[n++] = 0;
    for (long long s = 1; s <= (pythia ? 512 : 64); s *= 2)
        steps[n++] = s;
    for (long long s = pythia ? 1000 : 100; s <= (pythia ? 143000 : 3000); s += pythia ? 1000 : 100)
        steps[n++] = s;
    return n;
}

/* A simulated run: weights w(step) in K dimensions (a sketch is linear,
 * so sketches of weights are weights here): a random init of norm ~30,
 * a drift along a fixed direction saturating like training, and a
 * diffusion of variance `noise` per step. */
struct sim {
    int n;
    long long steps[MAXN];
    double w[MAXN][K];
    char ids[MAXN][40];
    struct integrity_file files[MAXN][2];
    char shas[MAXN][2][65];
    struct integrity_ckpt c[MAXN];
    struct integrity_verdict v[MAXN];
    struct integrity_margins margins;
};

static void sim_make(struct sim *s, int pythia, uint64_t seed, double noise)
{
    memset(s, 0, sizeof *s);
    rng_state = seed;
    s->n = schedule(s->steps, pythia);
    double dir[K], w[K];
    for (int q = 0; q < K; q++) {
        dir[q] = gauss() / sqrt(K);
        w[q] = 2.0 * gauss();
    }
    double T = (double)s->steps[s->n - 1];
    long long prev = 0;
    for (int i = 0; i < s->n; i++) {
        double dt = (double)(s->steps[i] - prev), g = 20.0 * (1.0 - exp(-4.0 * s->steps[i] / T));
        for (int q = 0; q < K; q++) {
            w[q] += sqrt(noise * dt / T) * gauss();
            s->w[i][q] = w[q] + g * dir[q];
        }
        prev = s->steps[i];
        snprintf(s->ids[i], sizeof s->ids[i], "weights-%d", i);
    }
}

/* Wire up the inputs: every checkpoint sketched and fetched, two shards each. */
static void sim_inputs(struct sim *s, int with_files)
{
    for (int i = 0; i < s->n; i++) {
        s->c[i].step = s->steps[i];
        s->c[i].sketch = s->w[i];
        s->c[i].weights = s->ids[i];
        if (!with_files)
            continue;
        for (int f = 0; f < 2; f++) {
            if (!s->shas[i][f][0])
                snprintf(s->shas[i][f], 65, "%032d%032d", i + 1, f + 1);
            s->files[i][f].name = f ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
            s->files[i][f].sha256 = s->shas[i][f];
        }
        s->c[i].files = s->files[i];
        s->c[i].nfiles = 2;
    }
}

static int judge(struct sim *s)
{
    struct err e;
    int rc = integrity_judge(s->c, s->n, K, s->v, &s->margins, &e);
    if (rc < 0)
        fail_msg("judge: %s", err_str(&e));
    int suspects = 0;
    for (int i = 0; i < s->n; i++)
        suspects += s->v[i].reason != INTEGRITY_OK;
    return suspects;
}

static void print_suspects(const struct sim *s)
{
    for (int i = 0; i < s->n; i++)
        if (s->v[i].reason != INTEGRITY_OK)
            print_message("  step %lld: %s like %lld: %s\n", s->steps[i], integrity_reason_name(s->v[i].reason),
                          s->v[i].like >= 0 ? s->steps[s->v[i].like] : -1, s->v[i].detail);
}

static int find(const struct sim *s, long long step)
{
    for (int i = 0; i < s->n; i++)
        if (s->steps[i] == step)
            return i;
    fail_msg("no step %lld", step);
    return -1;
}

/* Genuine runs: nothing suspect, every signal set; noise from a smooth
 * drift to a random walk that dominates it. */
static void test_genuine_runs(void **state)
{
    (void)state;
    static struct sim s;
    const double noises[4] = {1.0, 25.0, 100.0, 400.0};
    double near = INFINITY, detour = 0.0;
    for (int pythia = 0; pythia < 2; pythia++)
        for (int ni = 0; ni < 4; ni++)
            for (uint64_t seed = 1; seed <= 10; seed++) {
                sim_make(&s, pythia, seed * 7919 + (uint64_t)ni, noises[ni]);
                sim_inputs(&s, 1);
                if (judge(&s) != 0) {
                    print_suspects(&s);
                    fail_msg("genuine run (pythia %d, noise %g, seed %llu) has suspects", pythia, noises[ni],
                             (unsigned long long)seed);
                }
                near = fmin(near, s.margins.near);
                detour = fmax(detour, s.margins.detour);
                for (int i = 1; i < s.n; i++) {
                    assert_int_equal(s.v[i].prev, i - 1);
                    assert_int_equal(s.v[i].init, 0);
                    assert_true(s.v[i].dist_prev > 0 && s.v[i].cos_prev > 0.5 && s.v[i].cos_prev <= 1.0);
                    assert_int_equal(s.v[i].duplicate_of, -1);
                }
            }
    print_message("80 genuine runs: nearest non-neighbour at >= %.3f x the neighbour distance (flagged below "
                  "%.2f); largest detour %.3f (flagged above %.1f)\n", near, INTEGRITY_NEAR_RATIO, detour,
                  INTEGRITY_DETOUR_RATIO);
}

/* A late step's weights under an early step's name: the early one is the
 * mislabel, like the late one, whatever the noise; the late one is fine. */
static void test_mislabel(void **state)
{
    (void)state;
    static struct sim s;
    for (int pythia = 0; pythia < 2; pythia++)
        for (uint64_t seed = 1; seed <= 5; seed++) {
            sim_make(&s, pythia, seed, 25.0);
            int early = find(&s, pythia ? 8 : 16), late = s.n - 4;
            memcpy(s.w[early], s.w[late], sizeof s.w[early]);
            for (int q = 0; q < K; q++) /* re-saved in another precision: not byte-identical */
                s.w[early][q] *= 1.0 + 1e-4 * gauss();
            sim_inputs(&s, 1);
            int n = judge(&s);
            print_suspects(&s);
            assert_int_equal(n, 1);
            assert_int_equal(s.v[early].reason, INTEGRITY_MISLABEL);
            assert_int_equal(s.v[early].like, late);
            assert_int_equal(s.v[late].reason, INTEGRITY_OK);
            /* the neighbours' previous believed checkpoint skips it */
            assert_int_equal(s.v[early + 1].prev, early - 1);
        }
}

/* The same, byte-identical: a duplicate whose canonical copy is the late
 * step (the one that fits), not the earliest. */
static void test_mislabel_identical(void **state)
{
    (void)state;
    static struct sim s;
    sim_make(&s, 0, 3, 25.0);
    int early = find(&s, 16), late = s.n - 4;
    memcpy(s.w[early], s.w[late], sizeof s.w[early]);
    sim_inputs(&s, 1);
    s.c[early].weights = s.ids[late];
    memcpy(s.shas[early], s.shas[late], sizeof s.shas[early]);
    assert_int_equal(judge(&s), 1);
    assert_int_equal(s.v[early].reason, INTEGRITY_MISLABEL);
    assert_int_equal(s.v[early].duplicate_of, late);
    assert_int_equal(s.v[late].duplicate_of, -1);
    assert_int_equal(s.v[late].reason, INTEGRITY_OK);
}

/* Five early labels carrying five late steps' weights (a shifted upload,
 * pythia #205's pattern): the early block is flagged, each like its twin;
 * the twins are canonical. */
static void test_mislabel_block(void **state)
{
    (void)state;
    static struct sim s;
    for (uint64_t seed = 1; seed <= 5; seed++) {
        sim_make(&s, 0, seed, 25.0);
        int e0 = find(&s, 8), l0 = s.n - 8;
        for (int b = 0; b < 5; b++)
            memcpy(s.w[e0 + b], s.w[l0 + b], sizeof s.w[0]);
        sim_inputs(&s, 1);
        for (int b = 0; b < 5; b++) {
            s.c[e0 + b].weights = s.ids[l0 + b];
            memcpy(s.shas[e0 + b], s.shas[l0 + b], sizeof s.shas[0]);
        }
        int n = judge(&s);
        print_suspects(&s);
        assert_int_equal(n, 5);
        for (int b = 0; b < 5; b++) {
            assert_int_equal(s.v[e0 + b].reason, INTEGRITY_MISLABEL);
            assert_int_equal(s.v[e0 + b].like, l0 + b);
            assert_int_equal(s.v[e0 + b].duplicate_of, l0 + b);
            assert_int_equal(s.v[l0 + b].reason, INTEGRITY_OK);
            assert_int_equal(s.v[l0 + b].duplicate_of, -1);
        }
    }
}

/* A block of early labels whose weights come from nowhere in the run (far
 * out, along the drift): a jump of the distance from init, and back. */
static void test_init_jump(void **state)
{
    (void)state;
    static struct sim s;
    sim_make(&s, 1, 11, 25.0);
    int e0 = find(&s, 16);
    for (int b = 0; b < 3; b++) /* three times as far from init as the final step, and more */
        for (int q = 0; q < K; q++)
            s.w[e0 + b][q] = s.w[0][q] + 3.0 * (s.w[s.n - 1][q] - s.w[0][q]) + 0.01 * b * gauss();
    sim_inputs(&s, 1);
    int n = judge(&s);
    print_suspects(&s);
    assert_int_equal(n, 3);
    for (int b = 0; b < 3; b++)
        assert_int_equal(s.v[e0 + b].reason, INTEGRITY_INIT_JUMP);
}

/* step0 holding the final weights, byte-identical: step0_is_final, a
 * duplicate of the last step, which stays canonical. */
static void test_step0_is_final(void **state)
{
    (void)state;
    static struct sim s;
    for (int pythia = 0; pythia < 2; pythia++) {
        sim_make(&s, pythia, 5, 25.0);
        int last = s.n - 1;
        memcpy(s.w[0], s.w[last], sizeof s.w[0]);
        sim_inputs(&s, 1);
        s.c[0].weights = s.ids[last];
        memcpy(s.shas[0], s.shas[last], sizeof s.shas[0]);
        assert_int_equal(judge(&s), 1);
        assert_int_equal(s.v[0].reason, INTEGRITY_STEP0_IS_FINAL);
        assert_int_equal(s.v[0].like, last);
        assert_int_equal(s.v[0].duplicate_of, last);
        assert_int_equal(s.v[last].duplicate_of, -1);
        assert_int_equal(s.v[1].init, 1); /* distances from init: from the first believed */
    }
}

/* The first shard of the final checkpoint in an early one (pythia #206):
 * the early one's weights are half the final's; flagged shard_duplicate,
 * like the last step; by sha alone (no sketches) the later step keeps it
 * too.  A shard that never changes (shared by every step) is no evidence. */
static void test_shard_duplicate(void **state)
{
    (void)state;
    static struct sim s;
    for (int sketches = 0; sketches < 2; sketches++) {
        sim_make(&s, 1, 21, 25.0);
        int early = find(&s, 50000), last = s.n - 1;
        for (int q = 0; q < K / 2; q++) /* the first shard's half of the weights */
            s.w[early][q] = s.w[last][q];
        sim_inputs(&s, 1);
        memcpy(s.shas[early][0], s.shas[last][0], 65);
        if (!sketches)
            for (int i = 0; i < s.n; i++)
                s.c[i].sketch = NULL;
        int n = judge(&s);
        print_suspects(&s);
        assert_int_equal(n, 1);
        assert_int_equal(s.v[early].reason, INTEGRITY_SHARD_DUPLICATE);
        assert_int_equal(s.v[early].like, last);
        assert_int_equal(s.v[last].reason, INTEGRITY_OK);
        assert_non_null(strstr(s.v[early].detail, "model-00001-of-00002.safetensors"));
    }
    /* a frozen second shard, the same file at every step: nothing */
    sim_make(&s, 0, 22, 25.0);
    for (int i = 0; i < s.n; i++)
        memset(s.shas[i][1], 'f', 64);
    sim_inputs(&s, 1);
    assert_int_equal(judge(&s), 0);
}

/* The plants together, as tests/daemon_integrity.sh makes them: step 0 a
 * whole copy of the final step (so it shares the final step's first shard
 * too), an early step a copy of a late one, and another step holding the
 * final step's first shard.  Each keeps its own reason: the whole copy is
 * not a shard duplicate of the step with the planted shard. */
static void test_plants_together(void **state)
{
    (void)state;
    static struct sim s;
    sim_make(&s, 0, 51, 25.0);
    int last = s.n - 1, early = find(&s, 300), late = find(&s, 2400), sh = find(&s, 1000);
    memcpy(s.w[0], s.w[last], sizeof s.w[0]);
    memcpy(s.w[early], s.w[late], sizeof s.w[0]);
    for (int q = 0; q < K / 2; q++)
        s.w[sh][q] = s.w[last][q];
    sim_inputs(&s, 1);
    s.c[0].weights = s.ids[last];
    memcpy(s.shas[0], s.shas[last], sizeof s.shas[0]);
    s.c[early].weights = s.ids[late];
    memcpy(s.shas[early], s.shas[late], sizeof s.shas[0]);
    memcpy(s.shas[sh][0], s.shas[last][0], 65);
    int n = judge(&s);
    print_suspects(&s);
    assert_int_equal(n, 3);
    assert_int_equal(s.v[0].reason, INTEGRITY_STEP0_IS_FINAL);
    assert_int_equal(s.v[early].reason, INTEGRITY_MISLABEL);
    assert_int_equal(s.v[early].like, late);
    assert_int_equal(s.v[sh].reason, INTEGRITY_SHARD_DUPLICATE);
    assert_int_equal(s.v[sh].like, last);
}

/* A shifted stretch early in training, where the run moves fast, so the
 * way that skips the stretch is long too: the copies are found by their
 * twins, whose ends join their neighbours. */
static void test_block_fast_start(void **state)
{
    (void)state;
    static struct sim s;
    for (uint64_t seed = 1; seed <= 5; seed++) {
        sim_make(&s, 0, 100 + seed, 25.0);
        for (int i = 0; i < s.n; i++) /* a much faster drift early: steps 100..600 move most */
            for (int q = 0; q < K; q++)
                s.w[i][q] += 40.0 * (1.0 - exp(-(double)s.steps[i] / 300.0)) * (q % 7 == 0 ? 1.0 : 0.0);
        int e0 = find(&s, 200), l0 = find(&s, 1100);
        for (int b = 0; b < 5; b++)
            memcpy(s.w[e0 + b], s.w[l0 + b], sizeof s.w[0]);
        sim_inputs(&s, 1);
        for (int b = 0; b < 5; b++)
            s.c[e0 + b].weights = s.ids[l0 + b];
        int n = judge(&s);
        print_suspects(&s);
        assert_int_equal(n, 5);
        for (int b = 0; b < 5; b++) {
            assert_int_equal(s.v[e0 + b].reason, INTEGRITY_MISLABEL);
            assert_int_equal(s.v[e0 + b].like, l0 + b);
            assert_int_equal(s.v[e0 + b].duplicate_of, l0 + b);
        }
    }
}

/* step0 = step1 = step2 (pythia #83, #198): duplicates of step0, nothing
 * suspect, and nothing else disturbed. */
static void test_identical_start(void **state)
{
    (void)state;
    static struct sim s;
    sim_make(&s, 1, 31, 25.0);
    memcpy(s.w[1], s.w[0], sizeof s.w[0]);
    memcpy(s.w[2], s.w[0], sizeof s.w[0]);
    sim_inputs(&s, 1);
    s.c[1].weights = s.c[2].weights = s.ids[0];
    assert_int_equal(judge(&s), 0);
    assert_int_equal(s.v[1].duplicate_of, 0);
    assert_int_equal(s.v[2].duplicate_of, 0);
    assert_int_equal(s.v[0].duplicate_of, -1);
    assert_int_equal(s.v[3].prev, 0);
}

/* Checkpoints without sketches or files yet: judged on what there is, and
 * equal weights without sketches stay duplicates of the earliest. */
static void test_partial(void **state)
{
    (void)state;
    static struct sim s;
    sim_make(&s, 0, 41, 25.0);
    sim_inputs(&s, 0);
    int late = s.n - 3;
    for (int i = 0; i < s.n; i++)
        s.c[i].sketch = NULL;
    s.c[3].weights = s.ids[late];
    assert_int_equal(judge(&s), 0);
    assert_int_equal(s.v[late].duplicate_of, 3);
    for (int i = 0; i < s.n; i++)
        assert_true(isnan(s.v[i].dist_prev));
    struct err e;
    s.c[2].step = s.c[1].step; /* steps not increasing: refused */
    assert_int_equal(integrity_judge(s.c, s.n, K, s.v, NULL, &e), ERR_INVALID);
    assert_int_equal(integrity_judge(s.c, 0, K, s.v, NULL, &e), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_genuine_runs),      cmocka_unit_test(test_mislabel),
        cmocka_unit_test(test_mislabel_identical), cmocka_unit_test(test_mislabel_block),
        cmocka_unit_test(test_init_jump),          cmocka_unit_test(test_step0_is_final),
        cmocka_unit_test(test_shard_duplicate),    cmocka_unit_test(test_identical_start),
        cmocka_unit_test(test_partial),           cmocka_unit_test(test_plants_together),
        cmocka_unit_test(test_block_fast_start),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
