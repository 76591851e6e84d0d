/*
 * test_evalset - daemon/plan/evalset.h, a run's eval text tokenized once,
 * with a stand-in worker (a shell script that records its arguments and
 * writes the text's bytes as the "tokens"):
 *
 *   name     the file is DATA_DIR/eval-<16 hex>.u32, the hex from
 *            sha256(sha256hex(tokenizer) sha256hex(text)) (computed here with
 *            sha256sum), the path absolute; the worker got `tokenize
 *            --tokenizer T --in TEXT --out PATH`
 *   once     the same text and tokenizer again: the file is reused, the
 *            worker not run; another text or tokenizer: another file
 *   failures a worker that fails (ERR_CHILD naming it and its status, no
 *            file left), a worker that is not there, a text that cannot
 *            be read (the worker not run), a data directory that cannot be
 *            made
 *   data dir $CKPTD_DATA, else var/data
 */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "daemon/plan/evalset.h"
#include "tests/lib/test_files.h"

static char dir[64];

/* A stand-in worker DIR/name: appends its arguments to DIR/calls, then
 * copies --in to --out, or (fail_status > 0) complains on stderr and exits
 * with fail_status. */
static char *make_worker(const char *name, int fail_status)
{
    char *p = xasprintf("%s/%s", dir, name);
    char *body = xasprintf("#!/bin/sh\n"
                           "echo \"$*\" >> '%s/calls'\n"
                           "while [ $# -gt 0 ]; do\n"
                           "  case \"$1\" in --in) in=$2; shift ;; --out) out=$2; shift ;; esac; shift\n"
                           "done\n"
                           "[ %d = 0 ] || { echo 'tokenizer broken' >&2; exit %d; }\n"
                           "cat \"$in\" > \"$out\"\n",
                           dir, fail_status, fail_status);
    put_text(p, body);
    free(body);
    assert_int_equal(chmod(p, 0755), 0);
    return p;
}

static int calls(void)
{
    char *p = xasprintf("%s/calls", dir), *t = slurp(p, NULL);
    int n = 0;
    for (const char *c = t; c && *c; c++)
        n += *c == '\n';
    free(t);
    free(p);
    return n;
}

/* The expected file name's 16 hex digits, with sha256sum. */
static void expected_key(const char *tokenizer, const char *text, char out[17])
{
    char *cmd = xasprintf("printf '%%s%%s' $(sha256sum < '%s' | cut -c1-64) $(sha256sum < '%s' | cut -c1-64)"
                          " | sha256sum | cut -c1-16", tokenizer, text);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    assert_non_null(fgets(out, 17, p));
    pclose(p);
    free(cmd);
}

static void test_tokenize_once(void **state)
{
    (void)state;
    struct err e;
    char *worker = make_worker("worker", 0), *text = xasprintf("%s/text.txt", dir);
    char *tok = xasprintf("%s/tok.json", dir), *data = xasprintf("%s/data", dir);
    put_text(text, "hello world\n");
    put_text(tok, "{\"model\": {}}");
    char out[PATH_MAX], key[17], want[PATH_MAX + 64], real[PATH_MAX];
    assert_int_equal(evalset_tokenize(worker, text, tok, data, out, sizeof out, &e), 0);
    expected_key(tok, text, key);
    assert_non_null(realpath(data, real));
    snprintf(want, sizeof want, "%s/eval-%s.u32", real, key);
    assert_string_equal(out, want);
    char *got = slurp(out, NULL);
    assert_string_equal(got, "hello world\n");
    free(got);
    assert_int_equal(calls(), 1);
    char *log = xasprintf("%s/calls", dir), *args = slurp(log, NULL);
    char *wargs = xasprintf("tokenize --tokenizer %s --in %s --out %s\n", tok, text, out);
    assert_string_equal(args, wargs);
    free(wargs);
    free(args);
    /* again: reused, the worker not run */
    char out2[PATH_MAX];
    assert_int_equal(evalset_tokenize(worker, text, tok, data, out2, sizeof out2, &e), 0);
    assert_string_equal(out2, out);
    assert_int_equal(calls(), 1);
    /* another text, another tokenizer: other files */
    put_text(text, "hello world!\n");
    assert_int_equal(evalset_tokenize(worker, text, tok, data, out2, sizeof out2, &e), 0);
    assert_string_not_equal(out2, out);
    put_text(tok, "{\"model\": {\"x\": 1}}");
    char out3[PATH_MAX];
    assert_int_equal(evalset_tokenize(worker, text, tok, data, out3, sizeof out3, &e), 0);
    assert_string_not_equal(out3, out2);
    assert_int_equal(calls(), 3);
    /* out too small */
    char tiny[8];
    assert_int_equal(evalset_tokenize(worker, text, tok, data, tiny, sizeof tiny, &e), ERR_INVALID);
    free(log);
    free(data);
    free(tok);
    free(text);
    free(worker);
}

static void test_failures(void **state)
{
    (void)state;
    struct err e;
    char *bad = make_worker("bad-worker", 3), *text = xasprintf("%s/t2.txt", dir);
    char *tok = xasprintf("%s/tok2.json", dir), *data = xasprintf("%s/data2", dir);
    put_text(text, "some text");
    put_text(tok, "{}");
    char out[PATH_MAX];
    int before = calls();
    err_clear(&e);
    assert_int_equal(evalset_tokenize(bad, text, tok, data, out, sizeof out, &e), ERR_CHILD);
    assert_non_null(strstr(e.msg, "tokenize --tokenizer"));
    assert_non_null(strstr(e.msg, "exited with status 3"));
    assert_int_equal(access(out, F_OK), -1);
    assert_int_equal(calls(), before + 1);
    /* a worker that is not there */
    char *none = xasprintf("%s/no-such-worker", dir);
    err_clear(&e);
    assert_int_equal(evalset_tokenize(none, text, tok, data, out, sizeof out, &e), ERR_CHILD);
    assert_non_null(strstr(e.msg, "status 127"));
    /* a text that cannot be read: nothing run */
    char *missing = xasprintf("%s/missing.txt", dir);
    err_clear(&e);
    assert_true(evalset_tokenize(bad, missing, tok, data, out, sizeof out, &e) < 0);
    assert_non_null(strstr(err_str(&e), "missing.txt"));
    assert_int_equal(calls(), before + 1);
    /* a data directory under a regular file */
    char *under = xasprintf("%s/t2.txt/data", dir);
    err_clear(&e);
    assert_int_equal(evalset_tokenize(bad, text, tok, under, out, sizeof out, &e), ERR_IO);
    free(under);
    free(missing);
    free(none);
    free(data);
    free(tok);
    free(text);
    free(bad);
}

static void test_data_dir(void **state)
{
    (void)state;
    unsetenv("CKPTD_DATA");
    assert_string_equal(evalset_data_dir(), "var/data");
    setenv("CKPTD_DATA", "", 1);
    assert_string_equal(evalset_data_dir(), "var/data");
    setenv("CKPTD_DATA", "/srv/ckptd-data", 1);
    assert_string_equal(evalset_data_dir(), "/srv/ckptd-data");
    unsetenv("CKPTD_DATA");
}

static int setup(void **state)
{
    (void)state;
    return scratch_make(dir, sizeof dir, "ckptd_test_evalset_");
}

static int teardown(void **state)
{
    (void)state;
    return scratch_remove(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tokenize_once),
        cmocka_unit_test(test_failures),
        cmocka_unit_test(test_data_dir),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
