/*
 * test_evalpass - the eval set's shared forward (workers/battery/evalpass.h)
 * and the items that read it.
 *
 *   same bytes     loss, lens, probes and sae run on one shared pass
 *                  (battery_pass_prepare, as `analyze` does) print the
 *                  bytes each prints alone with a pass of its own, heads
 *                  beside them (its pattern hooks stay off the shared pass,
 *                  whose readers keep the fused attention path)
 *   batches        a consumer sees every batch once, in order, with
 *                  EVALPASS_SEQS sequences (the last one shorter); logits
 *                  only when some consumer asks for them; the pass runs
 *                  once however often it is asked
 *   isolation      a consumer whose hook fails on one layer is dropped with
 *                  its error (naming the hook) while another sees every
 *                  batch; a failing batch function likewise
 *   forward fails  an id outside the vocabulary fails every consumer with
 *                  the forward's error
 *   add errors     a hook on the pattern (it would change every reader's
 *                  path), a second consumer of a name, too many hooks, a
 *                  layer out of range, adding after the run: ERR_INVALID,
 *                  the state freed
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "workers/battery/battery.h"
#include "workers/battery/evalpass.h"
#include "workers/model/gptneox.h"

static struct gptneox *model(void)
{
    struct gptneox_config cfg;
    gptneox_config_default(&cfg, 97, 32, 3, 4, 64);
    cfg.max_positions = 40;
    struct gptneox *m = NULL;
    struct err e;
    if (gptneox_create(&m, &cfg, &e) < 0)
        fail_msg("%s", err_str(&e));
    gptneox_init_random(m, 3, 0.3f);
    return m;
}

static int *tokens(int B, int T, int V)
{
    int *t = malloc((size_t)B * T * sizeof *t);
    assert_non_null(t);
    for (int i = 0; i < B * T; i++)
        t[i] = (i * 37 + i / T * 11 + 5) % V;
    return t;
}

/* The rows of items run one way or the other, concatenated. */
static char *run_items(struct gptneox *m, const int *tok, int B, int T, int shared,
                       const char *art)
{
    const struct battery_item *items[5] = {&battery_item_loss, &battery_item_heads,
                                           &battery_item_lens, &battery_item_probes,
                                           &battery_item_sae};
    struct battery_ctx c = {.model = m, .eval_tokens = tok, .eval_B = B, .eval_T = T,
                            .eval_name = "test", .artifacts_dir = art};
    struct err e;
    if (shared)
        assert_int_equal(battery_pass_prepare(&c, items, 5, &e), 0);
    assert_true((c.pass != NULL) == (shared != 0));
    struct rows w;
    rows_init(&w);
    size_t len = 0;
    char *all = calloc(1, 1);
    for (int i = 0; i < 5; i++) {
        if (battery_run_item(items[i], &c, &w, &e) < 0)
            fail_msg("%s: %s", items[i]->name, err_str(&e));
        all = realloc(all, len + w.len + 1);
        memcpy(all + len, w.buf, w.len);
        len += w.len;
        all[len] = '\0';
    }
    rows_free(&w);
    evalpass_free(c.pass);
    return all;
}

static void test_same_bytes(void **state)
{
    (void)state;
    struct gptneox *m = model();
    const int B = 11, T = 24; /* two batches, the second of 3 */
    int *tok = tokens(B, T, m->cfg.vocab_size);
    char art1[] = "/tmp/evalpass-a-XXXXXX", art2[] = "/tmp/evalpass-b-XXXXXX";
    assert_non_null(mkdtemp(art1));
    assert_non_null(mkdtemp(art2));
    char *alone = run_items(m, tok, B, T, 0, art1);
    char *shared = run_items(m, tok, B, T, 1, art2);
    assert_true(strlen(alone) > 1000);
    assert_string_equal(alone, shared);
    printf("%zu bytes of rows, the same alone and shared\n", strlen(alone));
    free(alone);
    free(shared);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s %s", art1, art2);
    assert_int_equal(system(cmd), 0);
    free(tok);
    gptneox_free(m);
}

/* A consumer that records what it sees and can be told to fail. */
struct probe {
    int batches, next_b0, hooks, logits_seen, no_logits_seen;
    int fail_layer;  /* its hook fails on this layer (-2: never) */
    int fail_batch;  /* its batch function fails on this batch (-1: never) */
    int *freed;
};

static int probe_hook(void *ctx, struct hook_act *act, struct err *e)
{
    struct probe *p = ctx;
    p->hooks++;
    if (act->layer == p->fail_layer)
        return err_set(e, ERR_NUMERIC, NULL, "planted failure at layer %d", act->layer);
    return 0;
}

static int probe_done(void *state, const struct evalpass_batch *b, struct err *e)
{
    struct probe *p = state;
    assert_int_equal(b->b0, p->next_b0);
    p->next_b0 += b->nb;
    if (b->logits)
        p->logits_seen++;
    else
        p->no_logits_seen++;
    if (p->batches++ == p->fail_batch)
        return err_set(e, ERR_IO, NULL, "planted batch failure");
    return 0;
}

static void probe_free(void *state)
{
    struct probe *p = state;
    (*p->freed)++;
    free(p);
}

static struct probe *probe_new(int *freed, int fail_layer, int fail_batch)
{
    struct probe *p = calloc(1, sizeof *p);
    assert_non_null(p);
    p->freed = freed;
    p->fail_layer = fail_layer;
    p->fail_batch = fail_batch;
    return p;
}

static int add_probe(struct evalpass *ep, const char *name, struct probe *p, int logits,
                     int last_layer, struct err *e)
{
    struct gptneox_hook h = {HOOK_RESID_POST, -1, probe_hook, p};
    struct evalpass_consumer c = {.name = name, .hooks = &h, .nhooks = 1,
                                  .needs_logits = logits, .last_layer = last_layer,
                                  .done = probe_done, .state = p, .state_free = probe_free};
    return evalpass_add(ep, &c, e);
}

static void test_batches_and_isolation(void **state)
{
    (void)state;
    struct gptneox *m = model();
    const int B = 19, T = 16;
    int *tok = tokens(B, T, m->cfg.vocab_size);
    int freed = 0;
    struct err e;
    /* body only: no logits, hooks to layer 1 */
    struct evalpass *ep = NULL;
    assert_int_equal(evalpass_create(&ep, m, tok, B, T, &e), 0);
    struct probe *a = probe_new(&freed, -2, -1);
    assert_int_equal(add_probe(ep, "a", a, 0, 1, &e), 0);
    assert_int_equal(evalpass_run(ep, &e), 0);
    assert_ptr_equal(evalpass_state(ep, "a", &e), a);
    assert_int_equal(a->batches, 3); /* 8 + 8 + 3 */
    assert_int_equal(a->next_b0, B);
    assert_int_equal(a->no_logits_seen, 3);
    assert_int_equal(a->hooks, 3 * 2); /* resid_post of layers 0 and 1 */
    /* once */
    double fs, fc, ff;
    int nc, nf;
    evalpass_totals(ep, &fs, &fc, &ff, &nc, &nf);
    assert_int_equal(evalpass_run(ep, &e), 0);
    int nf2;
    evalpass_totals(ep, &fs, &fc, &ff, &nc, &nf2);
    assert_int_equal(nf, 3);
    assert_int_equal(nf2, 3);
    evalpass_free(ep);
    assert_int_equal(freed, 1);

    /* logits for everyone when one asks; one consumer's hook fails, another's
     * batch function fails, a third sees everything */
    assert_int_equal(evalpass_create(&ep, m, tok, B, T, &e), 0);
    struct probe *good = probe_new(&freed, -2, -1), *badhook = probe_new(&freed, 1, -1);
    struct probe *badbatch = probe_new(&freed, -2, 1);
    assert_int_equal(add_probe(ep, "good", good, 1, 0, &e), 0);
    assert_int_equal(add_probe(ep, "badhook", badhook, 0, 2, &e), 0);
    assert_int_equal(add_probe(ep, "badbatch", badbatch, 0, 0, &e), 0);
    assert_int_equal(evalpass_run(ep, &e), 0);
    assert_ptr_equal(evalpass_state(ep, "good", &e), good);
    assert_int_equal(good->batches, 3);
    assert_int_equal(good->logits_seen, 3);
    assert_int_equal(good->hooks, 3 * 3);
    assert_null(evalpass_state(ep, "badhook", &e));
    assert_int_equal(e.code, ERR_NUMERIC);
    assert_non_null(strstr(e.msg, "planted failure at layer 1"));
    assert_int_equal(badhook->batches, 0);  /* dropped before its first batch ended */
    assert_int_equal(badhook->hooks, 2);    /* layers 0 and 1 of the first batch */
    assert_null(evalpass_state(ep, "badbatch", &e));
    assert_int_equal(e.code, ERR_IO);
    assert_int_equal(badbatch->batches, 2); /* failed on the second, then dropped */
    assert_null(evalpass_state(ep, "nobody", &e));
    assert_int_equal(e.code, ERR_INVALID);
    evalpass_free(ep);
    assert_int_equal(freed, 4);
    free(tok);
    gptneox_free(m);
}

static void test_forward_fails(void **state)
{
    (void)state;
    struct gptneox *m = model();
    const int B = 10, T = 8;
    int *tok = tokens(B, T, m->cfg.vocab_size);
    tok[9 * T + 2] = m->cfg.vocab_size; /* in the second batch */
    int freed = 0;
    struct err e;
    struct evalpass *ep = NULL;
    assert_int_equal(evalpass_create(&ep, m, tok, B, T, &e), 0);
    struct probe *a = probe_new(&freed, -2, -1), *b = probe_new(&freed, -2, -1);
    assert_int_equal(add_probe(ep, "a", a, 1, 0, &e), 0);
    assert_int_equal(add_probe(ep, "b", b, 0, 2, &e), 0);
    assert_int_equal(evalpass_run(ep, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "outside the vocabulary"));
    assert_int_equal(a->batches, 1);
    for (int i = 0; i < 2; i++) {
        struct err ce;
        assert_null(evalpass_state(ep, i ? "b" : "a", &ce));
        assert_int_equal(ce.code, ERR_INVALID);
        assert_non_null(strstr(ce.msg, "outside the vocabulary"));
    }
    evalpass_free(ep);
    assert_int_equal(freed, 2);
    free(tok);
    gptneox_free(m);
}

static void test_add_errors(void **state)
{
    (void)state;
    struct gptneox *m = model();
    int *tok = tokens(2, 8, m->cfg.vocab_size);
    int freed = 0;
    struct err e;
    struct evalpass *ep = NULL;
    assert_int_equal(evalpass_create(&ep, m, tok, 0, 8, &e), ERR_INVALID);
    assert_null(ep);
    assert_int_equal(evalpass_create(&ep, m, tok, 2, 8, &e), 0);
    assert_int_equal(add_probe(ep, "x", probe_new(&freed, -2, -1), 0, 0, &e), 0);
    assert_int_equal(add_probe(ep, "x", probe_new(&freed, -2, -1), 0, 0, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "second consumer"));
    assert_int_equal(freed, 1);
    assert_int_equal(add_probe(ep, "y", probe_new(&freed, -2, -1), 0, 3, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "layer 3"));
    assert_int_equal(freed, 2);
    struct gptneox_hook many[EVALPASS_HOOKS + 1];
    struct probe *p = probe_new(&freed, -2, -1);
    for (int i = 0; i <= EVALPASS_HOOKS; i++)
        many[i] = (struct gptneox_hook){HOOK_RESID_POST, 0, probe_hook, p};
    struct evalpass_consumer c = {.name = "z", .hooks = many, .nhooks = EVALPASS_HOOKS + 1,
                                  .last_layer = 0, .state = p, .state_free = probe_free};
    assert_int_equal(evalpass_add(ep, &c, &e), ERR_INVALID);
    assert_int_equal(freed, 3);
    p = probe_new(&freed, -2, -1);
    struct gptneox_hook pat = {HOOK_ATTN_PATTERN, -1, probe_hook, p};
    struct evalpass_consumer cp = {.name = "pat", .hooks = &pat, .nhooks = 1, .last_layer = 0,
                                   .state = p, .state_free = probe_free};
    assert_int_equal(evalpass_add(ep, &cp, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "change the forward's path"));
    assert_int_equal(freed, 4);
    assert_int_equal(evalpass_run(ep, &e), 0);
    assert_int_equal(add_probe(ep, "late", probe_new(&freed, -2, -1), 0, 0, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "already run"));
    assert_int_equal(freed, 5);
    evalpass_free(ep);
    assert_int_equal(freed, 6);
    assert_true(evalpass_own_seconds(NULL, "x", NULL) == 0.0);
    free(tok);
    gptneox_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_bytes),
        cmocka_unit_test(test_batches_and_isolation),
        cmocka_unit_test(test_forward_fails),
        cmocka_unit_test(test_add_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
