/*
 * test_tokenizer - the byte-level BPE tokenizer and its Unicode support.
 *
 * - GPT-NeoX-20B's real tokenizer.json (scripts/fetch-tokenizer puts it in
 *   var/data; `make unit` runs that first) against the ids, decoded text
 *   and round-trip flag that HuggingFace's JavaScript library gives for
 *   every string of tests/cases/tokenizer/corpus.json
 *   (tests/golden/tokenizer_ref.json, by tests/reference/tokenizer_ref.mjs):
 *   exact equality, no tolerance.
 * - NFC against String.prototype.normalize on 2000 random mark/jamo
 *   sequences (tests/golden/nfc_cases.json, by scripts/gen-unicode-tables.mjs).
 * - Hand-written tiny tokenizers (tests/cases/tokenizer/<case>/): merge
 *   order, added tokens (leftmost-longest, before and after
 *   normalisation), prefix space, and every malformed file's error.
 * - UTF-8 handling: ill-formed input refused with its offset; decoding
 *   partial byte tokens gives U+FFFD.
 */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "tests/lib/test_files.h"
#include "workers/text/tokenizer.h"
#include "workers/text/unicode.h"

#define CASES_DIR "tests/cases/tokenizer"
#define GOLDEN "tests/golden/tokenizer_ref.json"

static const char *real_path(void)
{
    const char *d = getenv("CKPTD_DATA");
    static char p[4096];
    snprintf(p, sizeof p, "%s/20B_tokenizer.json", d && *d ? d : "var/data");
    return p;
}

static struct tokenizer *load_real(void)
{
    struct tokenizer *tok = NULL;
    struct err e;
    if (tokenizer_load(&tok, real_path(), &e) < 0)
        fail_msg("%s (run scripts/fetch-tokenizer)", err_str(&e));
    return tok;
}

static int code_by_name(const char *name)
{
    for (int c = 0; c > -ERR_CODE_COUNT; c--)
        if (strcmp(err_code_name(c), name) == 0)
            return c;
    return 1;
}

static void test_reference_corpus(void **state)
{
    (void)state;
    struct tokenizer *tok = load_real();
    json_error_t je;
    json_t *root = json_load_file(GOLDEN, JSON_ALLOW_NUL, &je);
    if (!root)
        fail_msg("%s: %s", GOLDEN, je.text);
    json_t *cases = json_object_get(root, "cases");
    size_t ncase = json_array_size(cases), match = 0, roundtrips = 0, nids = 0;
    assert_true(ncase >= 60);
    for (size_t i = 0; i < ncase; i++) {
        json_t *c = json_array_get(cases, i);
        json_t *text = json_object_get(c, "text"), *want = json_object_get(c, "ids");
        const char *s = json_string_value(text);
        size_t len = json_string_length(text);
        int *ids = NULL;
        size_t n = 0;
        struct err e;
        if (tokenizer_encode(tok, s, len, &ids, &n, &e) < 0)
            fail_msg("case %zu: %s", i, err_str(&e));
        int same = n == json_array_size(want);
        for (size_t j = 0; same && j < n; j++)
            same = ids[j] == json_integer_value(json_array_get(want, j));
        if (!same) {
            print_error("case %zu (%s): %zu ids, reference %zu\n", i, s, n, json_array_size(want));
            for (size_t j = 0; j < n || j < json_array_size(want); j++)
                print_error("  %zu: %d %lld\n", j, j < n ? ids[j] : -1,
                            j < json_array_size(want) ? json_integer_value(json_array_get(want, j)) : -1);
        } else
            match++;
        nids += n;
        /* decoding gives the reference's text, and the input back where it does */
        char *dec = NULL;
        size_t dlen = 0;
        if (tokenizer_decode(tok, ids, n, &dec, &dlen, &e) < 0)
            fail_msg("case %zu: decode: %s", i, err_str(&e));
        json_t *wd = json_object_get(c, "decoded");
        assert_int_equal(dlen, json_string_length(wd));
        assert_memory_equal(dec, json_string_value(wd), dlen);
        if (json_is_true(json_object_get(c, "roundtrip"))) {
            assert_int_equal(dlen, len);
            assert_memory_equal(dec, s, len);
            roundtrips++;
        }
        free(dec);
        free(ids);
    }
    print_message("%zu/%zu reference strings match exactly (%zu ids), %zu round-trip\n", match,
                  ncase, nids, roundtrips);
    assert_int_equal(match, ncase);
    json_decref(root);
    tokenizer_free(tok);
}

static void test_real_file(void **state)
{
    (void)state;
    struct tokenizer *tok = load_real();
    assert_int_equal(tokenizer_vocab_size(tok), 50277);
    assert_int_equal(tokenizer_token_id(tok, "<|endoftext|>"), 0);
    assert_int_equal(tokenizer_token_id(tok, "<|padding|>"), 1);
    assert_int_equal(tokenizer_token_id(tok, "no such token at all"), -1);
    /* an ordinary token is found by its bytes, and its bytes by its id */
    int id = tokenizer_token_id(tok, " the");
    assert_true(id > 1);
    size_t len = 0;
    const char *b = tokenizer_token_bytes(tok, id, &len);
    assert_non_null(b);
    assert_int_equal(len, 4);
    assert_memory_equal(b, " the", 4);
    assert_null(tokenizer_token_bytes(tok, 50277, &len));
    assert_null(tokenizer_token_bytes(tok, -1, &len));

    /* ill-formed UTF-8 is refused with its offset, nothing returned */
    int *ids = (int *)1;
    size_t n = 7;
    struct err e;
    static const char *const bad[] = {"ab\xff", "ab\xc3", "ab\xed\xa0\x80", "ab\xc0\xaf",
                                      "ab\xf4\x90\x80\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(tokenizer_encode(tok, bad[i], strlen(bad[i]), &ids, &n, &e), ERR_FORMAT);
        assert_null(ids);
        assert_non_null(strstr(e.msg, "byte offset 2"));
    }

    /* an emoji is several byte tokens; a prefix of them decodes to U+FFFD */
    const char *emoji = "\xf0\x9f\x98\x80";
    assert_int_equal(tokenizer_encode(tok, emoji, 4, &ids, &n, &e), 0);
    assert_true(n >= 2);
    char *dec = NULL;
    size_t dlen = 0;
    assert_int_equal(tokenizer_decode(tok, ids, n - 1, &dec, &dlen, &e), 0);
    assert_string_equal(dec, "\xef\xbf\xbd");
    free(dec);
    int badid[] = {ids[0], 50277};
    assert_int_equal(tokenizer_decode(tok, badid, 2, &dec, &dlen, &e), ERR_INVALID);
    assert_null(dec);
    assert_non_null(strstr(e.msg, "token id 50277 at position 1"));
    free(ids);

    /* an empty text is no ids, and no ids is an empty text */
    assert_int_equal(tokenizer_encode(tok, "", 0, &ids, &n, &e), 0);
    assert_non_null(ids);
    assert_int_equal(n, 0);
    assert_int_equal(tokenizer_decode(tok, ids, 0, &dec, &dlen, &e), 0);
    assert_string_equal(dec, "");
    free(dec);
    free(ids);
    tokenizer_free(tok);
}

/* Encoding speed on repeated English prose: printed, never asserted. */
static void test_speed(void **state)
{
    (void)state;
    struct tokenizer *tok = load_real();
    static const char para[] =
        "It was the best of times, it was the worst of times, it was the age of wisdom, it was "
        "the age of foolishness, it was the epoch of belief, it was the epoch of incredulity.\n";
    size_t reps = 2000, plen = sizeof para - 1, len = plen * reps;
    char *text = malloc(len);
    assert_non_null(text);
    for (size_t i = 0; i < reps; i++)
        memcpy(text + i * plen, para, plen);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int *ids;
    size_t n;
    struct err e;
    assert_int_equal(tokenizer_encode(tok, text, len, &ids, &n, &e), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    print_message("encoded %zu bytes into %zu ids in %.3f s (%.2f M ids/s)\n", len, n, s,
                  (double)n / s / 1e6);
    free(ids);
    free(text);
    tokenizer_free(tok);
}

static void test_nfc(void **state)
{
    (void)state;
    json_error_t je;
    json_t *root = json_load_file("tests/golden/nfc_cases.json", 0, &je);
    if (!root)
        fail_msg("nfc_cases.json: %s", je.text);
    json_t *cases = json_object_get(root, "cases");
    size_t n = json_array_size(cases), changed = 0;
    assert_true(n >= 1000);
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_array_get(cases, i), *in = json_object_get(c, "in"),
               *want = json_object_get(c, "nfc");
        char *out;
        size_t olen;
        struct err e;
        assert_int_equal(uni_nfc(json_string_value(in), json_string_length(in), &out, &olen, &e), 0);
        if (olen != json_string_length(want) || memcmp(out, json_string_value(want), olen) != 0)
            fail_msg("NFC case %zu differs", i);
        changed += strcmp(json_string_value(in), json_string_value(want)) != 0;
        free(out);
    }
    print_message("%zu NFC cases match (%zu change under NFC)\n", n, changed);
    assert_true(changed > n / 4);
    json_decref(root);

    /* classes of the split pattern */
    assert_int_equal(uni_class_of('a'), UNI_LETTER);
    assert_int_equal(uni_class_of(0x4e2d), UNI_LETTER);  /* CJK */
    assert_int_equal(uni_class_of(0x0663), UNI_NUMBER);  /* Arabic-Indic 3 */
    assert_int_equal(uni_class_of(0x2167), UNI_NUMBER);  /* Roman numeral 8 (Nl) */
    assert_int_equal(uni_class_of(0x0085), UNI_SPACE);   /* NEL: Oniguruma's \s */
    assert_int_equal(uni_class_of(0xfeff), UNI_OTHER);   /* BOM: not White_Space */
    assert_int_equal(uni_class_of(0x3000), UNI_SPACE);
    assert_int_equal(uni_class_of(0x0301), UNI_OTHER);   /* a mark is neither L nor N */
    assert_int_equal(uni_class_of(0x10ffff), UNI_OTHER);

    /* lossy repair: maximal subparts, as TextDecoder */
    char *o;
    size_t ol;
    assert_int_equal(uni_utf8_lossy("a\xf0\x9f\x98z\xff\xed\xa0\x80", 9, &o, &ol, NULL), 0);
    assert_string_equal(o, "a\xef\xbf\xbdz\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    free(o);
}

static int cmp_strp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* An ok case: every line after "ok" is ["text", [ids]]. */
static int check_encodings(struct tokenizer *tok, const char *name, char *lines)
{
    int rows = 0;
    for (char *line = strtok(lines, "\n"); line; line = strtok(NULL, "\n")) {
        json_error_t je;
        json_t *row = json_loads(line, 0, &je);
        if (!row)
            fail_msg("%s: bad expected line %s", name, line);
        const char *text = json_string_value(json_array_get(row, 0));
        json_t *want = json_array_get(row, 1);
        int *ids;
        size_t n;
        struct err e;
        if (tokenizer_encode(tok, text, strlen(text), &ids, &n, &e) < 0)
            fail_msg("%s: \"%s\": %s", name, text, err_str(&e));
        int same = n == json_array_size(want);
        for (size_t j = 0; same && j < n; j++)
            same = ids[j] == json_integer_value(json_array_get(want, j));
        if (!same)
            fail_msg("%s: \"%s\": got %zu ids (first %d), want %s", name, text, n, n ? ids[0] : -1,
                     line);
        /* decoding gives the text in NFC (with add_prefix_space, plus spaces) */
        if (strstr(name, "prefix_space")) {
            free(ids);
            json_decref(row);
            rows++;
            continue;
        }
        char *dec, *nfc;
        size_t dlen, nlen;
        assert_int_equal(tokenizer_decode(tok, ids, n, &dec, &dlen, &e), 0);
        assert_int_equal(uni_nfc(text, strlen(text), &nfc, &nlen, &e), 0);
        assert_int_equal(dlen, nlen);
        assert_memory_equal(dec, nfc, nlen);
        free(dec);
        free(nfc);
        free(ids);
        json_decref(row);
        rows++;
    }
    return rows;
}

static void test_cases(void **state)
{
    (void)state;
    DIR *d = opendir(CASES_DIR);
    if (!d)
        fail_msg("cannot open %s (run from the repo root): %s", CASES_DIR, strerror(errno));
    char *names[256];
    size_t nn = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' || strchr(de->d_name, '.'))
            continue;
        assert_true(nn < 256);
        names[nn++] = strdup(de->d_name);
    }
    closedir(d);
    qsort(names, nn, sizeof *names, cmp_strp);
    int nok = 0, nerr = 0, rows = 0;
    for (size_t i = 0; i < nn; i++) {
        char input[512], exp_path[512];
        snprintf(input, sizeof input, "%s/%s/input.json", CASES_DIR, names[i]);
        snprintf(exp_path, sizeof exp_path, "%s/%s/expected", CASES_DIR, names[i]);
        char *expected = slurp(exp_path, NULL);
        if (!expected)
            fail_msg("%s: no expected file", names[i]);
        struct tokenizer *tok = (struct tokenizer *)1;
        struct err e;
        err_clear(&e);
        int rc = tokenizer_load(&tok, input, &e);
        if (strncmp(expected, "ok\n", 3) == 0) {
            if (rc != 0)
                fail_msg("%s: want ok, got %s", names[i], err_str(&e));
            rows += check_encodings(tok, names[i], expected + 3);
            tokenizer_free(tok);
            nok++;
        } else {
            expected[strcspn(expected, "\n")] = '\0';
            char *tab = strchr(expected, '\t');
            if (!tab)
                fail_msg("%s: expected file needs 'code<TAB>substring'", names[i]);
            *tab = '\0';
            int code = code_by_name(expected);
            if (code > 0)
                fail_msg("%s: unknown code name '%s'", names[i], expected);
            if (rc != code || !strstr(err_str(&e), tab + 1))
                fail_msg("%s: want %s containing '%s', got %s: %s", names[i], expected, tab + 1,
                         err_code_name(rc), err_str(&e));
            assert_null(tok);
            assert_string_equal(e.ctx, input);
            assert_int_equal(tokenizer_load(&tok, input, NULL), code);
            nerr++;
        }
        free(expected);
        free(names[i]);
    }
    print_message("%d valid tokenizer files (%d encodings) and %d invalid ones\n", nok, rows, nerr);
    assert_true(nok >= 4 && nerr >= 20);
    struct tokenizer *tok;
    struct err e;
    assert_int_equal(tokenizer_load(&tok, CASES_DIR "/absent.json", &e), ERR_NOTFOUND);
    assert_null(tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases),
        cmocka_unit_test(test_nfc),
        cmocka_unit_test(test_real_file),
        cmocka_unit_test(test_reference_corpus),
        cmocka_unit_test(test_speed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
