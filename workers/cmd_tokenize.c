/* ckpt-worker tokenize / detokenize: text to token ids and back with a
 * HuggingFace tokenizer.json (workers/text/tokenizer.h). */
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/args.h"
#include "common/log.h"
#include "workers/cli.h"
#include "workers/text/tokenizer.h"
#include "workers/text/tokens.h"

static const char tokenize_usage[] =
    "usage: ckpt-worker tokenize --tokenizer FILE [--in FILE|-] [--text STRING] [--out FILE]\n"
    "\n"
    "Encode UTF-8 text (a file, standard input with '-' or by default, or\n"
    "--text) into token ids.  The output format follows --out's extension:\n"
    "  .u16   little-endian uint16 (an id >= 65536 is an error)\n"
    "  .u32   little-endian uint32\n"
    "  .npy   NumPy int32, 1-D\n"
    "  .json  a JSON list of ids\n"
    "Without --out the ids are printed on one line, separated by spaces.\n"
    "Files are written atomically.  Text that is not valid UTF-8 is an error.\n";

static const char detokenize_usage[] =
    "usage: ckpt-worker detokenize --tokenizer FILE [--in FILE|-]\n"
    "\n"
    "Decode token ids to text on standard output.  The input format follows\n"
    "the file's extension: .u16, .u32, .npy (int32, int64, uint16 or uint32;\n"
    "1-D or 2-D, read in order), .json (a list of ids, or of lists, read in\n"
    "order); anything else, and standard input ('-' or by default), is ids\n"
    "as decimal text separated by white space.  Byte sequences that are not\n"
    "valid UTF-8 (a multi-byte character cut between ids) become U+FFFD.\n";

static int has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && strcmp(s + n - k, suf) == 0;
}

/* All of f into *buf (NUL-terminated; caller frees). */
static int read_all(FILE *f, const char *name, char **buf, size_t *len, struct err *e)
{
    size_t cap = 65536, n = 0;
    char *b = malloc(cap);
    *buf = NULL;
    if (!b)
        return err_set(e, ERR_NOMEM, name, "out of memory");
    for (;;) {
        if (cap - n < 2) {
            char *nb = realloc(b, cap * 2);
            if (!nb) {
                free(b);
                return err_set(e, ERR_NOMEM, name, "out of memory reading %zu bytes", n);
            }
            b = nb;
            cap *= 2;
        }
        size_t k = fread(b + n, 1, cap - n - 1, f);
        n += k;
        if (k == 0)
            break;
    }
    if (ferror(f)) {
        free(b);
        return err_set(e, ERR_IO, name, "read failed: %s", strerror(errno));
    }
    b[n] = '\0';
    *buf = b;
    *len = n;
    return 0;
}

static int read_input(const char *path, char **buf, size_t *len, struct err *e)
{
    if (!path || strcmp(path, "-") == 0)
        return read_all(stdin, "<stdin>", buf, len, e);
    FILE *f = fopen(path, "rb");
    if (!f)
        return err_set(e, errno == ENOENT ? ERR_NOTFOUND : ERR_IO, path, "cannot open: %s",
                       strerror(errno));
    int rc = read_all(f, path, buf, len, e);
    fclose(f);
    return rc;
}

int cmd_tokenize(int argc, char **argv)
{
    const char *tok_path = NULL, *in = NULL, *out = NULL, *text_arg = NULL;
    enum { O_HELP = 256, O_TOKENIZER, O_IN, O_TEXT, O_OUT };
    static const struct option opts[] = {
        {"help", no_argument, NULL, O_HELP},
        {"tokenizer", required_argument, NULL, O_TOKENIZER},
        {"in", required_argument, NULL, O_IN},
        {"text", required_argument, NULL, O_TEXT},
        {"out", required_argument, NULL, O_OUT},
        {NULL, 0, NULL, 0},
    };
    struct args c;
    args_start(&c, argc, argv, "", opts);
    for (int k; (k = args_next(&c)) != ARGS_END;) {
        if (k == O_HELP) {
            fputs(tokenize_usage, stdout);
            return 0;
        } else if (k == O_TOKENIZER) {
            tok_path = c.arg;
        } else if (k == O_IN) {
            in = c.arg;
        } else if (k == O_TEXT) {
            text_arg = c.arg;
        } else if (k == O_OUT) {
            out = c.arg;
        } else {
            fprintf(stderr, "ckpt-worker tokenize: unexpected argument '%s'\n%s", c.word,
                    tokenize_usage);
            return EXIT_USAGE;
        }
    }
    if (!tok_path || (in && text_arg)) {
        fprintf(stderr, "ckpt-worker tokenize: %s\n%s",
                tok_path ? "--in and --text exclude each other" : "--tokenizer FILE is required",
                tokenize_usage);
        return EXIT_USAGE;
    }
    if (out && !has_suffix(out, ".u16") && !has_suffix(out, ".u32") && !has_suffix(out, ".npy") &&
        !has_suffix(out, ".json")) {
        fprintf(stderr, "ckpt-worker tokenize: --out %s: the extension must be .u16, .u32, .npy or .json\n",
                out);
        return EXIT_USAGE;
    }
    struct err e;
    err_clear(&e);
    struct tokenizer *tok = NULL;
    char *text = NULL;
    size_t len = 0, n = 0;
    int *ids = NULL, status = EXIT_INPUT;
    if (tokenizer_load(&tok, tok_path, &e) < 0)
        goto fail;
    if (text_arg) {
        len = strlen(text_arg);
    } else if (read_input(in, &text, &len, &e) < 0)
        goto fail;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (tokenizer_encode(tok, text_arg ? text_arg : text, len, &ids, &n, &e) < 0) {
        snprintf(e.ctx, sizeof e.ctx, "%s", text_arg ? "--text" : in && strcmp(in, "-") ? in : "<stdin>");
        goto fail;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    log_debug("tokenized", "bytes=%zu ids=%zu seconds=%.3f ids_per_s=%.0f", len, n, s,
              s > 0 ? (double)n / s : 0.0);
    if (out) {
        if (tokens_write_file(out, ids, n, &e) < 0)
            goto fail;
    } else {
        for (size_t i = 0; i < n; i++)
            printf("%s%d", i ? " " : "", ids[i]);
        putchar('\n');
        if (fflush(stdout) != 0) {
            err_set(&e, ERR_IO, "<stdout>", "write failed: %s", strerror(errno));
            goto fail;
        }
    }
    status = 0;
    goto done;
fail:
    log_err("tokenize failed", &e);
done:
    free(ids);
    free(text);
    tokenizer_free(tok);
    return status;
}

/* Ids as decimal text separated by white space. */
static int parse_text_ids(const char *name, const char *s, int **ids, size_t *n, struct err *e)
{
    size_t cap = 1024, k = 0;
    int *v = malloc(cap * sizeof *v);
    *ids = NULL;
    if (!v)
        return err_set(e, ERR_NOMEM, name, "out of memory");
    for (const char *p = s;;) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
            p++;
        if (!*p)
            break;
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < 0 || x > INT32_MAX ||
            (*end && *end != ' ' && *end != '\t' && *end != '\n' && *end != '\r')) {
            free(v);
            return err_set(e, ERR_FORMAT, name, "id %zu: \"%.20s\" is not a token id", k, p);
        }
        if (k == cap) {
            int *nv = realloc(v, cap * 2 * sizeof *nv);
            if (!nv) {
                free(v);
                return err_set(e, ERR_NOMEM, name, "out of memory");
            }
            v = nv;
            cap *= 2;
        }
        v[k++] = (int)x;
        p = end;
    }
    *ids = v;
    *n = k;
    return 0;
}

/* A JSON list of ids, or of lists of ids, flattened. */
static int read_json_ids(const char *path, int **ids, size_t *n, struct err *e)
{
    json_error_t je;
    *ids = NULL;
    json_t *root = json_load_file(path, 0, &je);
    if (!root)
        return err_set(e, ERR_FORMAT, path, "not valid JSON: %s (line %d)", je.text, je.line);
    int rc = 0;
    size_t total = 0, k = 0;
    if (!json_is_array(root))
        rc = err_set(e, ERR_FORMAT, path, "expected a list of token ids (or of lists of them)");
    for (size_t i = 0; !rc && i < json_array_size(root); i++) {
        json_t *x = json_array_get(root, i);
        total += json_is_array(x) ? json_array_size(x) : 1;
    }
    int *v = rc ? NULL : malloc((total ? total : 1) * sizeof *v);
    if (!rc && !v)
        rc = err_set(e, ERR_NOMEM, path, "out of memory");
    for (size_t i = 0; !rc && i < json_array_size(root); i++) {
        json_t *x = json_array_get(root, i);
        size_t m = json_is_array(x) ? json_array_size(x) : 1;
        for (size_t j = 0; !rc && j < m; j++) {
            json_t *y = json_is_array(x) ? json_array_get(x, j) : x;
            if (!json_is_integer(y) || json_integer_value(y) < 0 || json_integer_value(y) > INT32_MAX)
                rc = err_set(e, ERR_FORMAT, path, "item %zu: not a token id", i);
            else
                v[k++] = (int)json_integer_value(y);
        }
    }
    json_decref(root);
    if (rc) {
        free(v);
        return rc;
    }
    *ids = v;
    *n = k;
    return 0;
}

static int read_ids_file(const char *in, int **ids, size_t *n, struct err *e)
{
    *ids = NULL;
    *n = 0;
    if (in && strcmp(in, "-") != 0) {
        if (has_suffix(in, ".json"))
            return read_json_ids(in, ids, n, e);
        if (has_suffix(in, ".u16") || has_suffix(in, ".u32") || has_suffix(in, ".bin") ||
            has_suffix(in, ".npy")) {
            struct stat st;
            if (stat(in, &st) == 0 && st.st_size == 0 && !has_suffix(in, ".npy")) {
                *ids = malloc(sizeof **ids);
                return *ids ? 0 : err_set(e, ERR_NOMEM, in, "out of memory");
            }
            /* one id per "sequence" keeps the stream whole; a 2-D .npy is (B,T) */
            int B = 0, T = 0;
            int rc = tokens_read_file(in, 1, ids, &B, &T, e);
            if (rc < 0)
                return rc;
            *n = (size_t)B * (size_t)T;
            return 0;
        }
    }
    char *text = NULL;
    size_t len = 0;
    int rc = read_input(in, &text, &len, e);
    if (rc == 0)
        rc = parse_text_ids(in && strcmp(in, "-") ? in : "<stdin>", text, ids, n, e);
    free(text);
    return rc;
}

int cmd_detokenize(int argc, char **argv)
{
    const char *tok_path = NULL, *in = NULL;
    enum { O_HELP = 256, O_TOKENIZER, O_IN };
    static const struct option opts[] = {
        {"help", no_argument, NULL, O_HELP},
        {"tokenizer", required_argument, NULL, O_TOKENIZER},
        {"in", required_argument, NULL, O_IN},
        {NULL, 0, NULL, 0},
    };
    struct args c;
    args_start(&c, argc, argv, "", opts);
    for (int k; (k = args_next(&c)) != ARGS_END;) {
        if (k == O_HELP) {
            fputs(detokenize_usage, stdout);
            return 0;
        } else if (k == O_TOKENIZER) {
            tok_path = c.arg;
        } else if (k == O_IN) {
            in = c.arg;
        } else {
            fprintf(stderr, "ckpt-worker detokenize: unexpected argument '%s'\n%s", c.word,
                    detokenize_usage);
            return EXIT_USAGE;
        }
    }
    if (!tok_path) {
        fprintf(stderr, "ckpt-worker detokenize: --tokenizer FILE is required\n%s", detokenize_usage);
        return EXIT_USAGE;
    }
    struct err e;
    err_clear(&e);
    struct tokenizer *tok = NULL;
    int *ids = NULL, status = EXIT_INPUT;
    size_t n = 0, len = 0;
    char *text = NULL;
    if (tokenizer_load(&tok, tok_path, &e) < 0 || read_ids_file(in, &ids, &n, &e) < 0)
        goto fail;
    if (tokenizer_decode(tok, ids, n, &text, &len, &e) < 0) {
        snprintf(e.ctx, sizeof e.ctx, "%s", in && strcmp(in, "-") ? in : "<stdin>");
        goto fail;
    }
    if (fwrite(text, 1, len, stdout) != len || fflush(stdout) != 0) {
        err_set(&e, ERR_IO, "<stdout>", "write failed: %s", strerror(errno));
        goto fail;
    }
    status = 0;
    goto done;
fail:
    log_err("detokenize failed", &e);
done:
    free(text);
    free(ids);
    tokenizer_free(tok);
    return status;
}
