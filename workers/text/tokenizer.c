#include "workers/text/tokenizer.h"

#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json_err.h"
#include "workers/model/config.h"
#include "workers/text/unicode.h"

/* ---- a byte-string -> int hash map (open addressing, keys in one arena) */

struct smap_ent {
    uint64_t h;
    size_t off;
    uint32_t len;
    int val;
};

struct smap {
    uint32_t *slot; /* entry index + 1; 0 is empty */
    size_t cap;     /* power of two */
    struct smap_ent *ent;
    size_t n, ecap;
    char *keys;
    size_t klen, kcap;
};

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a, then a final mix */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    h ^= h >> 32;
    h *= 0xd6e8feb86659fd93ull;
    return h ^ (h >> 32);
}

static void smap_free(struct smap *m)
{
    free(m->slot);
    free(m->ent);
    free(m->keys);
    memset(m, 0, sizeof *m);
}

static int *smap_get(const struct smap *m, const char *k, size_t n)
{
    if (!m->cap)
        return NULL;
    uint64_t h = hash_bytes(k, n);
    for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        uint32_t s = m->slot[i];
        if (!s)
            return NULL;
        struct smap_ent *en = &m->ent[s - 1];
        if (en->h == h && en->len == n && (n == 0 || memcmp(m->keys + en->off, k, n) == 0))
            return &en->val;
    }
}

static int smap_grow(struct smap *m)
{
    size_t cap = m->cap ? m->cap * 2 : 1024;
    uint32_t *slot = calloc(cap, sizeof *slot);
    if (!slot)
        return -1;
    for (size_t j = 0; j < m->n; j++) {
        size_t i = m->ent[j].h & (cap - 1);
        while (slot[i])
            i = (i + 1) & (cap - 1);
        slot[i] = (uint32_t)j + 1;
    }
    free(m->slot);
    m->slot = slot;
    m->cap = cap;
    return 0;
}

/* Insert a key known to be absent; 0 or -1 (out of memory). */
static int smap_put(struct smap *m, const char *k, size_t n, int val)
{
    if ((m->n + 1) * 2 > m->cap && smap_grow(m) < 0)
        return -1;
    if (m->n == m->ecap) {
        size_t c = m->ecap ? m->ecap * 2 : 1024;
        struct smap_ent *e = realloc(m->ent, c * sizeof *e);
        if (!e)
            return -1;
        m->ent = e;
        m->ecap = c;
    }
    if (m->klen + n > m->kcap) {
        size_t c = m->kcap ? m->kcap : 4096;
        while (c < m->klen + n)
            c *= 2;
        char *ks = realloc(m->keys, c);
        if (!ks)
            return -1;
        m->keys = ks;
        m->kcap = c;
    }
    uint64_t h = hash_bytes(k, n);
    if (n) /* an empty first key: no key storage yet */
        memcpy(m->keys + m->klen, k, n);
    m->ent[m->n] = (struct smap_ent){h, m->klen, (uint32_t)n, val};
    m->klen += n;
    size_t i = h & (m->cap - 1);
    while (m->slot[i])
        i = (i + 1) & (m->cap - 1);
    m->slot[i] = (uint32_t)++m->n;
    return 0;
}

/* ---- merges: (left id, right id) -> (rank, merged id) */

struct merge_ent {
    uint64_t key; /* left << 32 | right; UINT64_MAX is empty */
    int rank, id;
};

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

static const struct merge_ent *merge_find(const struct merge_ent *t, size_t cap, int a, int b)
{
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (size_t i = mix64(k) & (cap - 1);; i = (i + 1) & (cap - 1)) {
        if (t[i].key == k)
            return &t[i];
        if (t[i].key == UINT64_MAX)
            return NULL;
    }
}

/* ---- added tokens: a byte trie for leftmost-longest matching */

struct trie_node {
    int child, sibling; /* node indexes, -1 none */
    int token;          /* added-token id ending here, or -1 */
    unsigned char byte;
};

struct trie {
    struct trie_node *node; /* node[0] is the root */
    int n, cap;
    unsigned char first[256]; /* bytes that start some token */
};

static int trie_add(struct trie *t, const char *s, size_t len, int id)
{
    if (!t->node) {
        t->node = malloc(64 * sizeof *t->node);
        if (!t->node)
            return -1;
        t->cap = 64;
        t->n = 1;
        t->node[0] = (struct trie_node){-1, -1, -1, 0};
    }
    t->first[(unsigned char)s[0]] = 1;
    int cur = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char b = (unsigned char)s[i];
        int c = t->node[cur].child;
        while (c >= 0 && t->node[c].byte != b)
            c = t->node[c].sibling;
        if (c < 0) {
            if (t->n == t->cap) {
                struct trie_node *nn = realloc(t->node, (size_t)t->cap * 2 * sizeof *nn);
                if (!nn)
                    return -1;
                t->node = nn;
                t->cap *= 2;
            }
            c = t->n++;
            t->node[c] = (struct trie_node){-1, t->node[cur].child, -1, b};
            t->node[cur].child = c;
        }
        cur = c;
    }
    t->node[cur].token = id;
    return 0;
}

/* Length of the longest token starting at s[0..n), its id in *id; 0 if none. */
static size_t trie_match(const struct trie *t, const char *s, size_t n, int *id)
{
    if (!t->node || !t->first[(unsigned char)s[0]])
        return 0;
    size_t best = 0;
    int cur = 0;
    for (size_t i = 0; i < n; i++) {
        int c = t->node[cur].child;
        while (c >= 0 && t->node[c].byte != (unsigned char)s[i])
            c = t->node[c].sibling;
        if (c < 0)
            break;
        cur = c;
        if (t->node[c].token >= 0) {
            best = i + 1;
            *id = t->node[c].token;
        }
    }
    return best;
}

/* ---- the tokenizer */

enum { NORM_NONE, NORM_NFC };

struct tok_entry {
    char *bytes; /* what the token decodes to; NULL: no token with this id */
    uint32_t len;
    unsigned char added;
};

struct tokenizer {
    int size;                /* max id + 1 */
    struct tok_entry *tokens; /* [size] */
    struct smap vocab;       /* byte-level string (the file's key) -> id */
    struct smap added;       /* added-token content -> id */
    int byte_id[256];        /* id of each single-byte token, -1 */
    struct merge_ent *merges;
    size_t merges_cap;
    struct trie raw_trie, norm_trie;
    int normalizer, add_prefix_space, use_regex, ignore_merges, has_decoder;
    int unk_id;
    /* BPE cache: word bytes -> offset into cache_ids ([count, ids...]) */
    struct smap cache;
    int *cache_ids;
    size_t cache_n, cache_cap;
    /* scratch of the BPE merge loop */
    struct bpe_sym { int id, prev, next; } *sym;
    struct bpe_cand { int rank, pos, id; } *heap;
    size_t scratch_cap;
};

/* GPT-2's byte-level alphabet: printable bytes stand for themselves, the
 * other 68 (controls, space, DEL, NBSP, soft hyphen...) for U+0100 on. */
static void byte_alphabet(uint32_t cp_of_byte[256])
{
    uint32_t next = 256;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
        cp_of_byte[b] = printable ? (uint32_t)b : next++;
    }
}

void tokenizer_free(struct tokenizer *tok)
{
    if (!tok)
        return;
    if (tok->tokens)
        for (int i = 0; i < tok->size; i++)
            free(tok->tokens[i].bytes);
    free(tok->tokens);
    smap_free(&tok->vocab);
    smap_free(&tok->added);
    smap_free(&tok->cache);
    free(tok->cache_ids);
    free(tok->merges);
    free(tok->raw_trie.node);
    free(tok->norm_trie.node);
    free(tok->sym);
    free(tok->heap);
    free(tok);
}

int tokenizer_vocab_size(const struct tokenizer *tok)
{
    return tok->size;
}

/* A string field of `obj` or NULL (absent or null); *bad set when it is
 * present with another type. */
static const char *opt_string(json_t *obj, const char *key, int *bad)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return NULL;
    if (!json_is_string(v)) {
        *bad = 1;
        return NULL;
    }
    return json_string_value(v);
}

/* Boolean field with a default; -1 when present and not a boolean. */
static int opt_bool(json_t *obj, const char *key, int dflt)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return dflt;
    return json_is_boolean(v) ? json_is_true(v) : -1;
}

/* The type of a component object: NULL when the component is null/absent;
 * "" when it is not an object with a string "type". */
static const char *component_type(json_t *root, const char *key)
{
    json_t *c = json_object_get(root, key);
    if (!c || json_is_null(c))
        return NULL;
    json_t *t = json_is_object(c) ? json_object_get(c, "type") : NULL;
    return json_is_string(t) ? json_string_value(t) : "";
}

static int load_components(struct tokenizer *tok, json_t *root, const char *path, struct err *e)
{
    const char *t;
    if ((t = component_type(root, "normalizer"))) {
        if (strcmp(t, "NFC") != 0)
            return err_set(e, ERR_UNSUPPORTED, path,
                           "normalizer type \"%s\" is not supported (only NFC or none)", t);
        tok->normalizer = NORM_NFC;
    }
    t = component_type(root, "pre_tokenizer");
    if (!t || strcmp(t, "ByteLevel") != 0)
        return err_set(e, ERR_UNSUPPORTED, path,
                       "pre_tokenizer type \"%s\" is not supported (only ByteLevel)", t ? t : "null");
    json_t *pt = json_object_get(root, "pre_tokenizer");
    tok->add_prefix_space = opt_bool(pt, "add_prefix_space", 1);
    tok->use_regex = opt_bool(pt, "use_regex", 1);
    if (tok->add_prefix_space < 0 || tok->use_regex < 0 || opt_bool(pt, "trim_offsets", 1) < 0)
        return err_set(e, ERR_FORMAT, path, "pre_tokenizer: add_prefix_space, use_regex and "
                                            "trim_offsets must be booleans");
    if ((t = component_type(root, "decoder"))) {
        if (strcmp(t, "ByteLevel") != 0)
            return err_set(e, ERR_UNSUPPORTED, path,
                           "decoder type \"%s\" is not supported (only ByteLevel or none)", t);
        tok->has_decoder = 1;
    }
    if ((t = component_type(root, "post_processor")) && strcmp(t, "ByteLevel") != 0)
        return err_set(e, ERR_UNSUPPORTED, path,
                       "post_processor type \"%s\" is not supported (only ByteLevel or none)", t);
    static const char *const off[] = {"truncation", "padding"};
    for (size_t i = 0; i < 2; i++) {
        json_t *v = json_object_get(root, off[i]);
        if (v && !json_is_null(v))
            return err_set(e, ERR_UNSUPPORTED, path, "\"%s\" is set; only null is supported", off[i]);
    }
    return 0;
}

/* Turn a byte-level vocabulary key into the bytes it stands for.  A key
 * with a character outside the alphabet decodes to its own UTF-8 (as the
 * library's decoder does); *pure is cleared then. */
static int key_bytes(const char *key, size_t klen, const int byte_of_cp[324], char **out,
                     uint32_t *olen, int *pure)
{
    char *b = malloc(klen + 1);
    if (!b)
        return -1;
    size_t n = 0;
    *pure = 1;
    for (size_t i = 0; i < klen;) {
        uint32_t cp;
        int k = uni_utf8_next((const unsigned char *)key + i, klen - i, &cp);
        if (k == 0 || cp >= 324 || byte_of_cp[cp] < 0) {
            *pure = 0;
            break;
        }
        b[n++] = (char)byte_of_cp[cp];
        i += (size_t)k;
    }
    if (!*pure) {
        memcpy(b, key, klen);
        n = klen;
    }
    b[n] = '\0';
    *out = b;
    *olen = (uint32_t)n;
    return 0;
}

static int load_vocab(struct tokenizer *tok, json_t *model, json_t *added, const char *path,
                      struct err *e)
{
    json_t *vocab = json_object_get(model, "vocab");
    if (!json_is_object(vocab) || json_object_size(vocab) == 0)
        return err_set(e, ERR_FORMAT, path, "model.vocab: expected a non-empty object of token -> id");
    long long maxid = -1;
    const char *key, *maxkey = "";
    json_t *v;
    /* ids index the token table: beyond a model's largest vocabulary they
     * cannot be model inputs, and a table mostly empty would be memory
     * taken for nothing (a 20-token file with an id of 4 million) */
    json_object_foreach(vocab, key, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= CONFIG_MAX_VOCAB)
            return err_set(e, ERR_FORMAT, path,
                           "model.vocab: id of \"%s\" is not an integer in [0, %d) (the largest vocabulary a "
                           "model may have)", key, CONFIG_MAX_VOCAB);
        if (json_integer_value(v) > maxid) {
            maxid = json_integer_value(v);
            maxkey = key;
        }
    }
    size_t na = json_array_size(added);
    for (size_t i = 0; i < na; i++) {
        json_t *id = json_object_get(json_array_get(added, i), "id");
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= CONFIG_MAX_VOCAB)
            return err_set(e, ERR_FORMAT, path,
                           "added_tokens[%zu]: \"id\" is not an integer in [0, %d) (the largest vocabulary "
                           "a model may have)", i, CONFIG_MAX_VOCAB);
        if (json_integer_value(id) > maxid) {
            maxid = json_integer_value(id);
            maxkey = json_string_value(json_object_get(json_array_get(added, i), "content"));
        }
    }
    long long ntok = (long long)json_object_size(vocab) + (long long)na;
    if (maxid >= 2 * ntok + 1024)
        return err_set(e, ERR_FORMAT, path,
                       "id %lld (of \"%.64s\") in a vocabulary of %lld tokens: ids must be nearly dense "
                       "(below 2 x tokens + 1024)", maxid, maxkey ? maxkey : "?", ntok);
    tok->size = (int)maxid + 1;
    tok->tokens = calloc((size_t)tok->size, sizeof *tok->tokens);
    if (!tok->tokens)
        return err_set(e, ERR_NOMEM, path, "out of memory for %d tokens", tok->size);

    uint32_t cp_of_byte[256];
    int byte_of_cp[324];
    byte_alphabet(cp_of_byte);
    for (int i = 0; i < 324; i++)
        byte_of_cp[i] = -1;
    for (int b = 0; b < 256; b++)
        byte_of_cp[cp_of_byte[b]] = b;
    json_object_foreach(vocab, key, v) {
        int id = (int)json_integer_value(v);
        size_t klen = strlen(key);
        struct tok_entry *te = &tok->tokens[id];
        if (te->bytes)
            return err_set(e, ERR_FORMAT, path, "model.vocab: id %d is given to two tokens (one is \"%s\")",
                           id, key);
        int pure;
        if (key_bytes(key, klen, byte_of_cp, &te->bytes, &te->len, &pure) < 0 ||
            smap_put(&tok->vocab, key, klen, id) < 0)
            return err_set(e, ERR_NOMEM, path, "out of memory for the vocabulary");
    }
    for (int b = 0; b < 256; b++) {
        char s[4];
        int k = uni_utf8_put(cp_of_byte[b], s);
        int *id = smap_get(&tok->vocab, s, (size_t)k);
        tok->byte_id[b] = id ? *id : -1;
    }

    for (size_t i = 0; i < na; i++) {
        json_t *a = json_array_get(added, i);
        int bad = 0;
        const char *content = opt_string(a, "content", &bad);
        int id = (int)json_integer_value(json_object_get(a, "id"));
        if (!content || !content[0])
            return err_set(e, ERR_FORMAT, path, "added_tokens[%zu]: \"content\" must be a non-empty string", i);
        int special = opt_bool(a, "special", 0);
        int normalized = opt_bool(a, "normalized", !special);
        if (special < 0 || normalized < 0)
            return err_set(e, ERR_FORMAT, path, "added_tokens[%zu]: special/normalized must be booleans", i);
        static const char *const flags[] = {"single_word", "lstrip", "rstrip"};
        for (size_t f = 0; f < 3; f++) {
            int fv = opt_bool(a, flags[f], 0);
            if (fv != 0)
                return err_set(e, ERR_UNSUPPORTED, path,
                               "added_tokens[%zu] (\"%s\"): \"%s\" %s", i, content, flags[f],
                               fv < 0 ? "must be a boolean" : "is not supported");
        }
        size_t clen = strlen(content);
        if (uni_utf8_check(content, clen) != clen)
            return err_set(e, ERR_FORMAT, path, "added_tokens[%zu]: content is not valid UTF-8", i);
        struct tok_entry *te = &tok->tokens[id];
        if (te->added)
            return err_set(e, ERR_FORMAT, path, "added_tokens[%zu]: id %d is given to two added tokens",
                           i, id);
        if (te->bytes && (te->len != clen || memcmp(te->bytes, content, clen) != 0))
            return err_set(e, ERR_FORMAT, path,
                           "added_tokens[%zu] (\"%s\"): id %d is a different vocabulary token", i, content,
                           id);
        if (smap_get(&tok->added, content, clen))
            return err_set(e, ERR_FORMAT, path, "added_tokens[%zu]: \"%s\" is added twice", i, content);
        free(te->bytes);
        te->bytes = strdup(content);
        te->len = (uint32_t)clen;
        te->added = 1;
        if (!te->bytes || smap_put(&tok->added, content, clen, id) < 0)
            return err_set(e, ERR_NOMEM, path, "out of memory for added tokens");
        /* tokens matched after normalisation are matched in normal form */
        char *norm = NULL;
        size_t nlen = clen;
        if (normalized && tok->normalizer == NORM_NFC &&
            uni_nfc(content, clen, &norm, &nlen, e) < 0)
            return err_wrap(e, "%s: added_tokens[%zu]", path, i);
        int rc = trie_add(normalized ? &tok->norm_trie : &tok->raw_trie, norm ? norm : content, nlen, id);
        free(norm);
        if (rc < 0)
            return err_set(e, ERR_NOMEM, path, "out of memory for added tokens");
    }
    return 0;
}

static int load_merges(struct tokenizer *tok, json_t *model, const char *path, struct err *e)
{
    json_t *merges = json_object_get(model, "merges");
    if (!json_is_array(merges))
        return err_set(e, ERR_FORMAT, path, "model.merges: expected a list");
    size_t n = json_array_size(merges), cap = 16;
    while (cap < 2 * n + 2)
        cap *= 2;
    tok->merges = malloc(cap * sizeof *tok->merges);
    if (!tok->merges)
        return err_set(e, ERR_NOMEM, path, "out of memory for %zu merges", n);
    for (size_t i = 0; i < cap; i++)
        tok->merges[i].key = UINT64_MAX;
    tok->merges_cap = cap;
    char *buf = NULL;
    size_t bufcap = 0;
    int rc = 0;
    for (size_t r = 0; r < n; r++) {
        json_t *m = json_array_get(merges, r);
        const char *a = NULL, *b = NULL;
        size_t alen = 0, blen = 0;
        if (json_is_string(m)) {
            /* "left right": exactly one space between two non-empty parts */
            const char *s = json_string_value(m), *sp = strchr(s, ' ');
            if (sp && sp > s && sp[1] && !strchr(sp + 1, ' ')) {
                a = s;
                alen = (size_t)(sp - s);
                b = sp + 1;
                blen = strlen(b);
            }
        } else if (json_is_array(m) && json_array_size(m) == 2 &&
                   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            alen = strlen(a);
            blen = strlen(b);
        }
        if (!a || !alen || !blen) {
            rc = err_set(e, ERR_FORMAT, path,
                         "model.merges[%zu]: expected \"left right\" or [\"left\", \"right\"]", r);
            break;
        }
        if (alen + blen + 1 > bufcap) {
            bufcap = (alen + blen + 1) * 2;
            char *nb = realloc(buf, bufcap);
            if (!nb) {
                rc = err_set(e, ERR_NOMEM, path, "out of memory for merges");
                break;
            }
            buf = nb;
        }
        int *ia = smap_get(&tok->vocab, a, alen), *ib = smap_get(&tok->vocab, b, blen);
        memcpy(buf, a, alen);
        memcpy(buf + alen, b, blen);
        int *im = smap_get(&tok->vocab, buf, alen + blen);
        if (!ia || !ib || !im) {
            rc = err_set(e, ERR_FORMAT, path, "model.merges[%zu]: \"%.*s\" is not in the vocabulary", r,
                         (int)(!ia ? alen : !ib ? blen : alen + blen), !ia ? a : !ib ? b : buf);
            break;
        }
        uint64_t k = (uint64_t)(uint32_t)*ia << 32 | (uint32_t)*ib;
        size_t i = mix64(k) & (cap - 1);
        while (tok->merges[i].key != UINT64_MAX && tok->merges[i].key != k)
            i = (i + 1) & (cap - 1);
        if (tok->merges[i].key == k)
            continue; /* a repeated pair keeps its first (lowest) rank */
        tok->merges[i] = (struct merge_ent){k, (int)r, *im};
    }
    free(buf);
    return rc;
}

int tokenizer_load(struct tokenizer **out, const char *path, struct err *e)
{
    *out = NULL;
    /* read whole, then parse: json_load_file reads a character at a time */
    FILE *f = fopen(path, "rb");
    if (!f)
        return err_set(e, errno == ENOENT ? ERR_NOTFOUND : ERR_IO, path, "cannot open: %s",
                       strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            char *nb = realloc(buf, cap = cap ? cap * 2 : 1 << 20);
            if (!nb) {
                free(buf);
                fclose(f);
                return err_set(e, ERR_NOMEM, path, "out of memory reading the file");
            }
            buf = nb;
        }
        size_t k = fread(buf + len, 1, cap - len, f);
        len += k;
        if (k == 0)
            break;
    }
    int rerr = ferror(f);
    fclose(f);
    json_error_t je;
    errno = 0;
    json_t *root = rerr ? NULL : json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
    free(buf);
    if (rerr)
        return err_set(e, ERR_IO, path, "read failed");
    if (!root)
        return json_err_nomem(&je) ? err_set(e, ERR_NOMEM, path, "out of memory reading the JSON")
                                   : err_set(e, ERR_FORMAT, path, "not valid JSON: %s (line %d)",
                                             je.text, je.line);
    int rc = 0;
    struct tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) {
        rc = err_set(e, ERR_NOMEM, path, "out of memory");
        goto out;
    }
    tok->unk_id = -1;
    json_t *model = json_object_get(root, "model");
    if (!json_is_object(root) || !json_is_object(model)) {
        rc = err_set(e, ERR_FORMAT, path, "no \"model\" object: not a tokenizer.json");
        goto out;
    }
    json_t *type = json_object_get(model, "type");
    if (type && !(json_is_string(type) && strcmp(json_string_value(type), "BPE") == 0)) {
        rc = err_set(e, ERR_UNSUPPORTED, path, "model type \"%s\" is not supported (only BPE)",
                     json_is_string(type) ? json_string_value(type) : "?");
        goto out;
    }
    json_t *dropout = json_object_get(model, "dropout");
    int bad = 0;
    if ((dropout && !json_is_null(dropout) && json_number_value(dropout) != 0) ||
        opt_string(model, "continuing_subword_prefix", &bad) || opt_string(model, "end_of_word_suffix", &bad) ||
        opt_bool(model, "byte_fallback", 0) != 0 || bad) {
        rc = err_set(e, ERR_UNSUPPORTED, path, "model: dropout, continuing_subword_prefix, "
                                               "end_of_word_suffix and byte_fallback are not supported");
        goto out;
    }
    tok->ignore_merges = opt_bool(model, "ignore_merges", 0);
    if (tok->ignore_merges < 0) {
        rc = err_set(e, ERR_FORMAT, path, "model.ignore_merges must be a boolean");
        goto out;
    }
    json_t *added = json_object_get(root, "added_tokens");
    if (added && !json_is_null(added) && !json_is_array(added)) {
        rc = err_set(e, ERR_FORMAT, path, "added_tokens: expected a list");
        goto out;
    }
    if ((rc = load_components(tok, root, path, e)) < 0 ||
        (rc = load_vocab(tok, model, added, path, e)) < 0 ||
        (rc = load_merges(tok, model, path, e)) < 0)
        goto out;
    const char *unk = opt_string(model, "unk_token", &bad);
    if (bad) {
        rc = err_set(e, ERR_FORMAT, path, "model.unk_token must be a string or null");
        goto out;
    }
    if (unk) {
        int *id = smap_get(&tok->vocab, unk, strlen(unk));
        if (!id) {
            rc = err_set(e, ERR_FORMAT, path, "model.unk_token \"%s\" is not in the vocabulary", unk);
            goto out;
        }
        tok->unk_id = *id;
    }
out:
    json_decref(root);
    if (rc < 0) {
        tokenizer_free(tok);
        return rc;
    }
    *out = tok;
    return 0;
}

int tokenizer_token_id(const struct tokenizer *tok, const char *text)
{
    size_t n = strlen(text);
    int *id = smap_get(&tok->added, text, n);
    if (id)
        return *id;
    /* the vocabulary is keyed by the byte-level spelling */
    uint32_t cp_of_byte[256];
    byte_alphabet(cp_of_byte);
    char *s = malloc(n * 2 + 1);
    if (!s)
        return -1;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += (size_t)uni_utf8_put(cp_of_byte[(unsigned char)text[i]], s + k);
    id = smap_get(&tok->vocab, s, k);
    free(s);
    return id ? *id : -1;
}

const char *tokenizer_token_bytes(const struct tokenizer *tok, int id, size_t *len)
{
    if (id < 0 || id >= tok->size || !tok->tokens[id].bytes)
        return NULL;
    *len = tok->tokens[id].len;
    return tok->tokens[id].bytes;
}

/* ---- encoding */

struct idbuf {
    int *v;
    size_t n, cap;
};

static int idbuf_push(struct idbuf *b, const int *ids, size_t n)
{
    if (b->n + n > b->cap) {
        size_t c = b->cap ? b->cap : 1024;
        while (c < b->n + n)
            c *= 2;
        int *v = realloc(b->v, c * sizeof *v);
        if (!v)
            return -1;
        b->v = v;
        b->cap = c;
    }
    memcpy(b->v + b->n, ids, n * sizeof *ids);
    b->n += n;
    return 0;
}

/* heap of merge candidates: lowest rank, then leftmost position, on top */
static int cand_less(const struct bpe_cand *a, const struct bpe_cand *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(struct bpe_cand *h, size_t *n, struct bpe_cand c)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static struct bpe_cand heap_pop(struct bpe_cand *h, size_t *n)
{
    struct bpe_cand top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && cand_less(&h[c + 1], &h[c]))
            c++;
        if (!cand_less(&h[c], &last))
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n)
        h[i] = last;
    return top;
}

static void cand_add(const struct tokenizer *tok, struct bpe_cand *h, size_t *nh, int pos)
{
    const struct bpe_sym *s = tok->sym;
    int nx = s[pos].next;
    if (nx < 0)
        return;
    const struct merge_ent *m = merge_find(tok->merges, tok->merges_cap, s[pos].id, s[nx].id);
    if (m)
        heap_push(h, nh, (struct bpe_cand){m->rank, pos, m->id});
}

/* BPE of one pre-token w[0..n), appended to out. */
static int bpe_word(struct tokenizer *tok, const char *w, size_t n, struct idbuf *out, struct err *e)
{
    int *hit = smap_get(&tok->cache, w, n);
    if (hit)
        return idbuf_push(out, tok->cache_ids + *hit + 1, (size_t)tok->cache_ids[*hit]) < 0
                   ? err_set(e, ERR_NOMEM, NULL, "out of memory encoding")
                   : 0;
    if (n > tok->scratch_cap) {
        size_t c = n < 256 ? 256 : n * 2;
        struct bpe_sym *s = realloc(tok->sym, c * sizeof *s);
        if (s)
            tok->sym = s;
        struct bpe_cand *h = realloc(tok->heap, c * 3 * sizeof *h); /* n-1 + 2 per merge */
        if (h)
            tok->heap = h;
        if (!s || !h)
            return err_set(e, ERR_NOMEM, NULL, "out of memory encoding a %zu-byte word", n);
        tok->scratch_cap = c;
    }
    struct bpe_sym *s = tok->sym;
    size_t nh = 0, nout = 0;
    int done = 0;
    if (tok->ignore_merges) {
        /* the whole word, if it is a token, is not split */
        uint32_t cp_of_byte[256];
        byte_alphabet(cp_of_byte);
        char buf[1024];
        size_t k = 0;
        for (size_t i = 0; i < n && k + 4 < sizeof buf; i++)
            k += (size_t)uni_utf8_put(cp_of_byte[(unsigned char)w[i]], buf + k);
        int *id = k + 4 < sizeof buf ? smap_get(&tok->vocab, buf, k) : NULL;
        if (id) {
            s[0] = (struct bpe_sym){*id, -1, -1};
            nout = 1;
            done = 1;
        }
    }
    if (!done) {
        for (size_t i = 0; i < n; i++) {
            int id = tok->byte_id[(unsigned char)w[i]];
            if (id < 0) {
                if (tok->unk_id < 0)
                    return err_set(e, ERR_UNSUPPORTED, NULL,
                                   "byte 0x%02x has no token in the vocabulary and there is no unk_token",
                                   (unsigned char)w[i]);
                id = tok->unk_id;
            }
            s[i] = (struct bpe_sym){id, (int)i - 1, i + 1 < n ? (int)i + 1 : -1};
        }
        for (size_t i = 0; i + 1 < n; i++)
            cand_add(tok, tok->heap, &nh, (int)i);
        while (nh) {
            struct bpe_cand c = heap_pop(tok->heap, &nh);
            int nx = s[c.pos].next;
            /* stale: the left symbol was absorbed, or either side changed */
            if (s[c.pos].id < 0 || nx < 0)
                continue;
            const struct merge_ent *m = merge_find(tok->merges, tok->merges_cap, s[c.pos].id, s[nx].id);
            if (!m || m->id != c.id || m->rank != c.rank)
                continue;
            s[c.pos].id = c.id;
            s[c.pos].next = s[nx].next;
            if (s[nx].next >= 0)
                s[s[nx].next].prev = c.pos;
            s[nx].id = -1;
            if (s[c.pos].prev >= 0)
                cand_add(tok, tok->heap, &nh, s[c.pos].prev);
            cand_add(tok, tok->heap, &nh, c.pos);
        }
        /* compact the surviving symbols into s[0..nout) (in order, left to right) */
        for (int i = 0; i >= 0; i = s[i].next)
            s[nout++].id = s[i].id;
    }
    /* cache words up to 256 bytes, while the cache is under 8M ids */
    if (n <= 256 && tok->cache_n + nout + 1 <= (size_t)8 << 20) {
        if (tok->cache_n + nout + 1 > tok->cache_cap) {
            size_t c = tok->cache_cap ? tok->cache_cap * 2 : 65536;
            int *v = realloc(tok->cache_ids, c * sizeof *v);
            if (!v)
                return err_set(e, ERR_NOMEM, NULL, "out of memory encoding");
            tok->cache_ids = v;
            tok->cache_cap = c;
        }
        size_t at = tok->cache_n;
        tok->cache_ids[at] = (int)nout;
        for (size_t i = 0; i < nout; i++)
            tok->cache_ids[at + 1 + i] = s[i].id;
        if (smap_put(&tok->cache, w, n, (int)at) < 0)
            return err_set(e, ERR_NOMEM, NULL, "out of memory encoding");
        tok->cache_n += nout + 1;
        return idbuf_push(out, tok->cache_ids + at + 1, nout) < 0
                   ? err_set(e, ERR_NOMEM, NULL, "out of memory encoding")
                   : 0;
    }
    for (size_t i = 0; i < nout; i++)
        if (idbuf_push(out, &s[i].id, 1) < 0)
            return err_set(e, ERR_NOMEM, NULL, "out of memory encoding");
    return 0;
}

/* Length in bytes of the GPT-2 pattern's match at p[0..n) (n > 0):
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * The alternatives are tried in order, as a backtracking engine does;
 * every character belongs to one of them, so the matches tile the text. */
static size_t split_match(const char *p, size_t n)
{
    const unsigned char *u = (const unsigned char *)p;
    uint32_t c;
    if (u[0] == '\'' && n >= 2) {
        unsigned char a = u[1], b = n >= 3 ? u[2] : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd')
            return 2;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
            return 3;
    }
    size_t i = 0;
    int k = uni_utf8_next(u, n, &c);
    enum uni_class cls = uni_class_of(c);
    if (c == ' ' && n > 1) {
        uint32_t c2;
        int k2 = uni_utf8_next(u + 1, n - 1, &c2);
        enum uni_class cls2 = uni_class_of(c2);
        if (cls2 != UNI_SPACE) {
            i = 1;
            k = k2;
            cls = cls2;
        }
    }
    if (cls != UNI_SPACE) {
        /* [ ]? then a run of the class of its first character */
        enum uni_class want = cls;
        i += (size_t)k;
        while (i < n) {
            k = uni_utf8_next(u + i, n - i, &c);
            if (uni_class_of(c) != want)
                break;
            i += (size_t)k;
        }
        return i;
    }
    /* white space: \s+(?!\S) keeps the last space for the next token when a
     * non-space follows and the run is longer than one; else \s+ */
    size_t last = 0;
    i = 0;
    while (i < n) {
        k = uni_utf8_next(u + i, n - i, &c);
        if (uni_class_of(c) != UNI_SPACE)
            break;
        last = i;
        i += (size_t)k;
    }
    if (i < n && last > 0)
        return last;
    return i;
}

/* Pre-tokenize and BPE one piece of normalised text. */
static int encode_piece(struct tokenizer *tok, const char *p, size_t n, struct idbuf *out,
                        struct err *e)
{
    char *tmp = NULL;
    if (tok->add_prefix_space && p[0] != ' ') {
        tmp = malloc(n + 1);
        if (!tmp)
            return err_set(e, ERR_NOMEM, NULL, "out of memory encoding");
        tmp[0] = ' ';
        memcpy(tmp + 1, p, n);
        p = tmp;
        n++;
    }
    int rc = 0;
    for (size_t i = 0; i < n;) {
        size_t k = tok->use_regex ? split_match(p + i, n - i) : n;
        if ((rc = bpe_word(tok, p + i, k, out, e)) < 0)
            break;
        i += k;
    }
    free(tmp);
    return rc;
}

/* Cut the added tokens of trie t out of s[0..n), leftmost-longest; the
 * text between them goes to `rest` (normalised first when norm). */
static int split_added(struct tokenizer *tok, const struct trie *t, int norm, const char *s,
                       size_t n, struct idbuf *out, struct err *e)
{
    size_t start = 0, i = 0;
    while (i <= n) {
        int id = -1;
        size_t k = i < n ? trie_match(t, s + i, n - i, &id) : 0;
        if (k == 0 && i < n) {
            i++;
            continue;
        }
        if (i > start) {
            int rc;
            if (norm) {
                char *nf = NULL;
                size_t nn = i - start;
                if (tok->normalizer == NORM_NFC) {
                    if ((rc = uni_nfc(s + start, i - start, &nf, &nn, e)) < 0)
                        return rc;
                }
                rc = split_added(tok, &tok->norm_trie, 0, nf ? nf : s + start, nn, out, e);
                free(nf);
            } else
                rc = encode_piece(tok, s + start, i - start, out, e);
            if (rc < 0)
                return rc;
        }
        if (k == 0)
            break;
        if (idbuf_push(out, &id, 1) < 0)
            return err_set(e, ERR_NOMEM, NULL, "out of memory encoding");
        i += k;
        start = i;
    }
    return 0;
}

int tokenizer_encode(struct tokenizer *tok, const char *text, size_t len, int **ids, size_t *n,
                     struct err *e)
{
    *ids = NULL;
    *n = 0;
    size_t bad = uni_utf8_check(text, len);
    if (bad < len)
        return err_set(e, ERR_FORMAT, NULL, "text is not valid UTF-8 (byte offset %zu)", bad);
    struct idbuf out = {0};
    int rc = split_added(tok, &tok->raw_trie, 1, text, len, &out, e);
    if (rc == 0 && !out.v && !(out.v = malloc(sizeof *out.v)))
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory encoding");
    if (rc < 0) {
        free(out.v);
        return rc;
    }
    *ids = out.v;
    *n = out.n;
    return 0;
}

int tokenizer_decode(const struct tokenizer *tok, const int *ids, size_t n, char **text, size_t *len,
                     struct err *e)
{
    *text = NULL;
    if (!tok->has_decoder)
        return err_set(e, ERR_UNSUPPORTED, NULL, "the tokenizer file has no decoder");
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= tok->size || !tok->tokens[ids[i]].bytes)
            return err_set(e, ERR_INVALID, NULL, "token id %d at position %zu is not in the vocabulary "
                                                 "(%d ids)", ids[i], i, tok->size);
        total += tok->tokens[ids[i]].len;
    }
    char *raw = malloc(total + 1);
    if (!raw)
        return err_set(e, ERR_NOMEM, NULL, "out of memory decoding %zu ids", n);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(raw + o, tok->tokens[ids[i]].bytes, tok->tokens[ids[i]].len);
        o += tok->tokens[ids[i]].len;
    }
    int rc = uni_utf8_lossy(raw, o, text, len, e);
    free(raw);
    return rc;
}
