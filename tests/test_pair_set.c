/*
 * test_pair_set - prompt-pair datasets (workers/battery/pair_set.h) and the
 * shipped sets (pair_gen.h, the files in pairs/).
 *
 * Data-driven cases: each directory tests/cases/pairs/<case>/ holds `input`
 * (a pair-set file) and `expected`:
 *   "ok B=.. T=.. npos=.. pos<k>=.. nans<b>=.. nwrong<b>=.."   loads, with those sizes
 *   "<code>\t<substring>"   fails with that err_code_name, the message
 *                           holding the substring
 * The GPT-NeoX-20B tokenizer (var/data/20B_tokenizer.json) tokenizes the
 * texts, except in cases that hold a file `notokenizer`.
 *
 * Against a model: ids outside the vocabulary, prompts longer than
 * max_position_embeddings.  Round trip: the canonical token form reads back
 * as the same set (same digest).  Built-in induction pairs: shape, R and
 * R' disjoint, answer and wrong answer as documented.
 *
 * The shipped sets: every name, place, object and noun a generator keeps
 * is one token; in each IOI pair the answer and the wrong answer are the
 * tokens at the name slots (positions of interest) and the corrupted
 * prompt differs at S2 only; in each greater-than pair the answers are the
 * two-digit tokens above YY; and `scripts/make-pairs`'s files (pairs/) are
 * byte for byte what the generators write now.
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/lib/test_files.h"
#include "workers/battery/pair_gen.h"
#include "workers/battery/pair_set.h"

#define CASES "tests/cases/pairs"
#define TOKENIZER "var/data/20B_tokenizer.json"

static struct tokenizer *tok;

static int setup(void **state)
{
    (void)state;
    struct err e;
    if (tokenizer_load(&tok, TOKENIZER, &e) < 0) {
        fprintf(stderr, "test_pair_set: %s (make tokenizer-data)\n", err_str(&e));
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tokenizer_free(tok);
    return 0;
}

static void check_ok(const char *c, const struct pair_set *ps, const char *spec)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", spec);
    for (char *kv = strtok(buf + 3, " \n"); kv; kv = strtok(NULL, " \n")) {
        char key[32];
        int want, k = -1;
        if (sscanf(kv, "%31[a-z]%d=%d", key, &k, &want) != 3 &&
            sscanf(kv, "%31[A-Za-z]=%d", key, &want) != 2)
            fail_msg("%s: bad expectation '%s'", c, kv);
        int got = strcmp(key, "B") == 0      ? ps->B
                  : strcmp(key, "T") == 0    ? ps->T
                  : strcmp(key, "npos") == 0 ? ps->npos
                  : strcmp(key, "pos") == 0  ? ps->pos[k]
                  : strcmp(key, "nans") == 0 ? ps->ans_off[k + 1] - ps->ans_off[k]
                  : strcmp(key, "nwrong") == 0 ? ps->wrong_off[k + 1] - ps->wrong_off[k]
                                               : -12345;
        if (got == -12345)
            fail_msg("%s: unknown key %s", c, key);
        if (got != want)
            fail_msg("%s: %s = %d, expected %d", c, kv, got, want);
    }
}

static void test_cases(void **state)
{
    (void)state;
    DIR *d = opendir(CASES);
    assert_non_null(d);
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char *input = xasprintf("%s/%s/input", CASES, de->d_name);
        char *exp_path = xasprintf("%s/%s/expected", CASES, de->d_name);
        char *notok = xasprintf("%s/%s/notokenizer", CASES, de->d_name);
        char *expected = slurp(exp_path, NULL);
        struct pair_set *ps = NULL;
        struct err e;
        err_clear(&e);
        int rc = pair_set_load(&ps, input, access(notok, F_OK) == 0 ? NULL : tok, &e);
        if (strncmp(expected, "ok", 2) == 0) {
            if (rc < 0)
                fail_msg("%s: expected success, got %s", de->d_name, err_str(&e));
            check_ok(de->d_name, ps, expected);
            assert_int_equal(strlen(ps->digest), 16);
        } else {
            char code[32], sub[400];
            if (sscanf(expected, "%31[^\t]\t%399[^\n]", code, sub) != 2)
                fail_msg("%s: bad expected file", de->d_name);
            if (rc == 0)
                fail_msg("%s: expected %s, loaded", de->d_name, code);
            assert_null(ps);
            if (strcmp(err_code_name(rc), code) != 0 || !strstr(e.msg, sub))
                fail_msg("%s: got %s '%s', expected %s '%s'", de->d_name, err_code_name(rc),
                         e.msg, code, sub);
            assert_string_equal(e.ctx, input); /* the message names the file */
        }
        pair_set_free(ps);
        free(expected);
        free(notok);
        free(exp_path);
        free(input);
        n++;
    }
    closedir(d);
    assert_true(n >= 30);
}

static void test_missing_file(void **state)
{
    (void)state;
    struct pair_set *ps = NULL;
    struct err e;
    assert_int_equal(pair_set_load(&ps, CASES "/nonesuch/input", NULL, &e), ERR_NOTFOUND);
    assert_null(ps);
}

static void test_check_model(void **state)
{
    (void)state;
    struct pair_set *ps = NULL;
    struct err e;
    assert_int_equal(pair_set_load(&ps, CASES "/tokens_lists/input", NULL, &e), 0);
    struct gptneox_config cfg;
    gptneox_config_default(&cfg, 64, 32, 1, 4, 16);
    cfg.max_positions = 16;
    assert_int_equal(pair_set_check(ps, &cfg, &e), 0);
    cfg.vocab_size = 11; /* wrong answer 11 of pair 1 is outside */
    assert_int_equal(pair_set_check(ps, &cfg, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "pair 1: wrong answer 11 is outside the vocabulary [0, 11)"));
    cfg.vocab_size = 9; /* corrupted token 9 of pair 0 */
    assert_int_equal(pair_set_check(ps, &cfg, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "pair 0, position 2: token 9 of the corrupted prompt"));
    cfg.vocab_size = 64;
    cfg.max_positions = 3;
    assert_int_equal(pair_set_check(ps, &cfg, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "prompts of 4 tokens are longer than the model's "
                                  "max_position_embeddings 3"));
    pair_set_free(ps);
}

static void test_roundtrip(void **state)
{
    (void)state;
    const char *cases[3] = {"tokens_lists", "text_ioi", "tokens_minimal"};
    char dir[] = "/tmp/test_pair_set.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *path = xasprintf("%s/set.json", dir);
    for (int i = 0; i < 3; i++) {
        char *in = xasprintf("%s/%s/input", CASES, cases[i]);
        struct pair_set *a = NULL, *b = NULL;
        struct err e;
        assert_int_equal(pair_set_load(&a, in, tok, &e), 0);
        if (pair_set_write(a, path, &e) < 0)
            fail_msg("%s", err_str(&e));
        if (pair_set_load(&b, path, NULL, &e) < 0) /* token form: no tokenizer needed */
            fail_msg("%s: %s", cases[i], err_str(&e));
        assert_string_equal(a->digest, b->digest);
        assert_int_equal(a->B, b->B);
        assert_int_equal(a->T, b->T);
        assert_memory_equal(a->clean, b->clean, (size_t)a->B * a->T * sizeof(int));
        assert_memory_equal(a->pos, b->pos, (size_t)a->npos * sizeof(int));
        assert_memory_equal(a->wrong, b->wrong, (size_t)a->wrong_off[a->B] * sizeof(int));
        pair_set_free(a);
        pair_set_free(b);
        free(in);
    }
    unlink(path);
    rmdir(dir);
    free(path);
}

static void test_induction_builtin(void **state)
{
    (void)state;
    struct pair_set *ps = NULL;
    struct err e;
    assert_int_equal(pair_set_induction(&ps, 256, 33, PAIR_IND_PAIRS, 0, 7, &e), 0);
    const int L = 16, T = 32;
    assert_int_equal(ps->T, T);
    assert_int_equal(ps->B, PAIR_IND_PAIRS);
    assert_int_equal(ps->npos, 3);
    assert_int_equal(ps->pos[0], L - 1);
    assert_int_equal(ps->pos[1], L);
    assert_int_equal(ps->pos[2], T - 1);
    for (int b = 0; b < ps->B; b++) {
        const int *c = ps->clean + b * T, *k = ps->corrupted + b * T;
        assert_int_equal(c[0], PAIR_IND_BOS);
        for (int j = 0; j + 1 < L; j++) /* the second copy repeats R */
            assert_int_equal(c[1 + L + j], c[1 + j]);
        for (int i = 1; i <= L; i++)
            for (int j = 1; j < i; j++)
                assert_int_not_equal(c[i], c[j]); /* R: distinct ids */
        for (int t = 0; t < T; t++) /* only R[L-2] of the first copy is corrupted */
            if (t != L - 1)
                assert_int_equal(k[t], c[t]);
        assert_int_equal(ps->ans[b], c[L]);
        for (int t = 0; t < T; t++) { /* Z and W are in no clean prompt; W in neither */
            assert_int_not_equal(c[t], k[L - 1]);
            assert_int_not_equal(c[t], ps->wrong[b]);
            assert_int_not_equal(k[t], ps->wrong[b]);
        }
    }
    struct pair_set *again = NULL;
    assert_int_equal(pair_set_induction(&again, 256, 33, PAIR_IND_PAIRS, 0, 7, &e), 0);
    assert_string_equal(ps->digest, again->digest); /* a pure function of the seed */
    pair_set_free(again);
    assert_int_equal(pair_set_induction(&again, 256, 33, PAIR_IND_PAIRS, 0, 8, &e), 0);
    assert_string_not_equal(ps->digest, again->digest);
    pair_set_free(again);
    pair_set_free(ps);
    /* small models: L shrinks, and below 2 is an error */
    assert_int_equal(pair_set_induction(&ps, 7, 64, 2, 0, 0, &e), 0);
    assert_int_equal(ps->T, 6);
    pair_set_free(ps);
    assert_int_equal(pair_set_induction(&ps, 4, 64, 2, 0, 0, &e), ERR_INVALID);
    assert_null(ps);
}

/* the tokens' text */
static char *text_of(const int *ids, int n)
{
    char *t = NULL;
    size_t len;
    struct err e;
    if (tokenizer_decode(tok, ids, (size_t)n, &t, &len, &e) < 0)
        fail_msg("%s", err_str(&e));
    return t;
}

static void test_single_token_words(void **state)
{
    (void)state;
    const char *slots[4] = {"name", "place", "object", "noun"};
    const int need[4] = {20, 4, 4, 6};
    for (int s = 0; s < 4; s++) {
        int ids[64];
        const char *words[64];
        int n = pair_gen_words(tok, slots[s], ids, words, 64);
        if (n < need[s])
            fail_msg("%d %ss are one token, want at least %d", n, slots[s], need[s]);
        for (int i = 0; i < n; i++) {
            int *enc = NULL;
            size_t m = 0;
            struct err e;
            assert_int_equal(tokenizer_encode(tok, words[i], strlen(words[i]), &enc, &m, &e), 0);
            assert_int_equal(m, 1); /* checked with the tokenizer itself */
            assert_int_equal(enc[0], ids[i]);
            free(enc);
        }
        printf("%-6s %2d single-token candidates\n", slots[s], n);
    }
}

static void test_ioi(void **state)
{
    (void)state;
    struct pair_set *ps = NULL;
    struct err e;
    if (pair_gen_ioi(&ps, tok, 32, 1, &e) < 0)
        fail_msg("%s", err_str(&e));
    assert_int_equal(ps->npos, 4);
    const int A = ps->pos[0], Bp = ps->pos[1], S2 = ps->pos[2];
    assert_int_equal(ps->pos[3], ps->T - 1);
    for (int b = 0; b < ps->B; b++) {
        const int *c = ps->clean + b * ps->T, *k = ps->corrupted + b * ps->T;
        int io = ps->ans[b], s = ps->wrong[b];
        for (int t = 0; t < ps->T; t++)
            if (t != S2)
                assert_int_equal(c[t], k[t]); /* only S2 is corrupted */
        assert_int_equal(c[S2], s);
        assert_true(k[S2] != io && k[S2] != s); /* a third name */
        if (b % 2 == 0) { /* ABBA */
            assert_int_equal(c[A], io);
            assert_int_equal(c[Bp], s);
        } else { /* BABA */
            assert_int_equal(c[A], s);
            assert_int_equal(c[Bp], io);
        }
        char *t = text_of(c, ps->T), *ans = text_of(&io, 1);
        assert_true(strncmp(t, "When ", 5) == 0 && strstr(t, " went to the ") &&
                    strstr(t, " gave a "));
        assert_non_null(strstr(t, ans));
        free(ans);
        free(t);
    }
    pair_set_free(ps);
}

static void test_greater_than(void **state)
{
    (void)state;
    struct pair_set *ps = NULL;
    struct err e;
    if (pair_gen_greater_than(&ps, tok, 32, 1, &e) < 0)
        fail_msg("%s", err_str(&e));
    const int Y = ps->pos[0];
    for (int b = 0; b < ps->B; b++) {
        const int *c = ps->clean + b * ps->T, *k = ps->corrupted + b * ps->T;
        char *yy = text_of(c + Y, 1), *y1 = text_of(k + Y, 1), *all = text_of(c, ps->T);
        assert_int_equal(strlen(yy), 2);
        assert_string_equal(y1, "01");
        int y = atoi(yy);
        assert_true(y >= 2 && y <= 98);
        assert_non_null(strstr(all, " lasted from the year 17"));
        assert_true(strlen(all) > 3 && strcmp(all + strlen(all) - 3, " 17") == 0);
        for (int a = ps->ans_off[b]; a < ps->ans_off[b + 1]; a++) {
            char *v = text_of(&ps->ans[a], 1);
            assert_true(strlen(v) == 2 && atoi(v) > y);
            free(v);
        }
        for (int w = ps->wrong_off[b]; w < ps->wrong_off[b + 1]; w++) {
            char *v = text_of(&ps->wrong[w], 1);
            assert_true(strlen(v) == 2 && atoi(v) <= y);
            free(v);
        }
        assert_int_equal(ps->ans_off[b + 1] - ps->ans_off[b] + ps->wrong_off[b + 1] -
                             ps->wrong_off[b],
                         100); /* GPT-NeoX has every two-digit token */
        free(all);
        free(y1);
        free(yy);
    }
    pair_set_free(ps);
}

/* the files in pairs/ are what the generators write with scripts/make-pairs's
 * arguments */
static void test_shipped_files(void **state)
{
    (void)state;
    const char *names[3] = {"induction", "ioi", "greater-than"};
    char dir[] = "/tmp/test_pair_set.XXXXXX";
    assert_non_null(mkdtemp(dir));
    for (int i = 0; i < 3; i++) {
        struct pair_set *ps = NULL;
        struct err e;
        int rc = i == 0 ? pair_set_induction(&ps, tokenizer_vocab_size(tok), 1 << 20, 32, 0, 1, &e)
                 : i == 1 ? pair_gen_ioi(&ps, tok, 32, 1, &e)
                          : pair_gen_greater_than(&ps, tok, 32, 1, &e);
        assert_int_equal(rc, 0);
        char *path = xasprintf("%s/%s.json", dir, names[i]);
        char *shipped_path = xasprintf("pairs/%s.json", names[i]);
        assert_int_equal(pair_set_write(ps, path, &e), 0);
        size_t n1 = 0, n2 = 0;
        char *made = slurp(path, &n1), *shipped = slurp(shipped_path, &n2);
        if (n1 != n2 || memcmp(made, shipped, n1) != 0)
            fail_msg("%s differs from what scripts/make-pairs writes now", shipped_path);
        struct pair_set *back = NULL;
        assert_int_equal(pair_set_load(&back, shipped_path, NULL, &e), 0);
        assert_string_equal(back->digest, ps->digest);
        pair_set_free(back);
        unlink(path);
        free(made);
        free(shipped);
        free(shipped_path);
        free(path);
        pair_set_free(ps);
    }
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_check_model),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_induction_builtin),
        cmocka_unit_test(test_single_token_words),
        cmocka_unit_test(test_ioi),
        cmocka_unit_test(test_greater_than),
        cmocka_unit_test(test_shipped_files),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
