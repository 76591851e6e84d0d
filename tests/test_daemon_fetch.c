/*
 * test_daemon_fetch - the pure parts of downloading, no network: header
 * lines, Retry-After (seconds and HTTP-dates), sha256 ETags, Content-Range,
 * backoff with jitter, URL origins (where the token may go), the hub's tree
 * and refs answers, file choice and shard indexes, SHA-256 against known
 * vectors (FIPS 180-2), the cache (keys, blobs, snapshots, pins, LRU
 * eviction within a budget, room reserved before a download), settings
 * changed on a live fetcher (retries against a closed local port) and the HuggingFace cache lookup on a fake
 * tree in a temporary directory; ETags as huggingface_hub names blobs by them, the hub environment
 * variables with huggingface_hub's precedence, and the HuggingFace cache written (layout, relative
 * links, refs, git blob ids against `git hash-object`).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/sha256.h"
#include "daemon/fetch/cache.h"
#include "daemon/fetch/fetch.h"
#include "daemon/fetch/hfcache.h"
#include "daemon/fetch/hub.h"

static void test_sha256_vectors(void **state)
{
    (void)state;
    struct sha256 h;
    char hex[SHA256_HEX];
    assert_int_equal(sha256_init(&h, NULL), 0);
    sha256_update(&h, "abc", 3);
    sha256_final(&h, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_int_equal(sha256_init(&h, NULL), 0);
    sha256_final(&h, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    /* streamed in pieces = at once */
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    assert_int_equal(sha256_init(&h, NULL), 0);
    size_t len = strlen(m);
    for (size_t o = 0; o < len; o += 5)
        sha256_update(&h, m + o, len - o < 5 ? len - o : 5);
    sha256_final(&h, hex);
    assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    assert_true(sha256_is_hex(hex));
    assert_false(sha256_is_hex("abc"));
    hex[3] = 'g';
    assert_false(sha256_is_hex(hex));
}

static void test_header_split(void **state)
{
    (void)state;
    char n[64], v[256];
    const char *l = "X-Linked-Size:  665472 \r\n";
    assert_int_equal(fetch_header_split(l, strlen(l), n, sizeof n, v, sizeof v), 0);
    assert_string_equal(n, "x-linked-size");
    assert_string_equal(v, "665472");
    l = "HTTP/1.1 302 Found\r\n";
    assert_int_equal(fetch_header_split(l, strlen(l), n, sizeof n, v, sizeof v), -1);
    l = "\r\n";
    assert_int_equal(fetch_header_split(l, strlen(l), n, sizeof n, v, sizeof v), -1);
    l = "Location: http://a:1/b?c=d:e\r\n";
    assert_int_equal(fetch_header_split(l, strlen(l), n, sizeof n, v, sizeof v), 0);
    assert_string_equal(v, "http://a:1/b?c=d:e");
}

static void test_retry_after(void **state)
{
    (void)state;
    time_t now = 1700000000; /* Tue, 14 Nov 2023 22:13:20 GMT */
    assert_true(fetch_parse_retry_after("2", now) == 2.0);
    assert_true(fetch_parse_retry_after(" 120 ", now) == 120.0);
    assert_true(fetch_parse_retry_after("Tue, 14 Nov 2023 22:13:50 GMT", now) == 30.0);
    assert_true(fetch_parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now) == 0.0);
    assert_true(fetch_parse_retry_after("soon", now) < 0);
    assert_true(fetch_parse_retry_after("", now) < 0);
    assert_true(fetch_parse_retry_after("5x", now) < 0);
}

static void test_etag_sha(void **state)
{
    (void)state;
    char out[SHA256_HEX];
    const char *s = "BD923E4DBE4EE6EC009682D97AE941E1E046310D6781C3186A62F367E03B0570";
    char q[80];
    snprintf(q, sizeof q, "\"%s\"", s);
    assert_int_equal(fetch_etag_sha256(q, out), 0);
    assert_string_equal(out, "bd923e4dbe4ee6ec009682d97ae941e1e046310d6781c3186a62f367e03b0570");
    snprintf(q, sizeof q, "W/\"%s\"", s);
    assert_int_equal(fetch_etag_sha256(q, out), 0);
    assert_int_equal(fetch_etag_sha256("\"406a53a0bc85db50505bdbab63e7f84af53a7663\"", out), -1); /* git sha1 */
    assert_int_equal(fetch_etag_sha256("\"d41d8cd98f00b204e9800998ecf8427e-3\"", out), -1);
    snprintf(q, sizeof q, "\"%sxx\"", s);
    assert_int_equal(fetch_etag_sha256(q, out), -1);
}

static void test_etag_normalize(void **state)
{
    (void)state;
    char out[FETCH_ETAG_MAX];
    assert_int_equal(fetch_etag_normalize("\"406a53a0bc85db50505bdbab63e7f84af53a7663\"", out, sizeof out), 0);
    assert_string_equal(out, "406a53a0bc85db50505bdbab63e7f84af53a7663");
    assert_int_equal(fetch_etag_normalize("W/\"abc-1\"", out, sizeof out), 0);
    assert_string_equal(out, "abc-1");
    assert_int_equal(fetch_etag_normalize(" plain ", out, sizeof out), 0);
    assert_string_equal(out, "plain");
    assert_int_equal(fetch_etag_normalize("\"\"", out, sizeof out), -1);
    assert_int_equal(fetch_etag_normalize("W/", out, sizeof out), -1);
    assert_int_equal(fetch_etag_normalize("\"0123456789\"", out, 5), -1); /* does not fit */
    assert_true(hub_etag_ok("406a53a0bc85db50505bdbab63e7f84af53a7663"));
    assert_true(hub_etag_ok("bd923e4dbe4ee6ec009682d97ae941e1e046310d6781c3186a62f367e03b0570"));
    assert_false(hub_etag_ok("406A53A0BC85DB50505BDBAB63E7F84AF53A7663")); /* the hub's are lowercase */
    assert_false(hub_etag_ok("abc-1"));
    assert_true(hub_commit_ok("0123456789abcdef0123456789abcdef01234567"));
    assert_false(hub_commit_ok("bd923e4dbe4ee6ec009682d97ae941e1e046310d6781c3186a62f367e03b0570"));
}

static void test_content_range(void **state)
{
    (void)state;
    long long a, b, t;
    assert_int_equal(fetch_parse_content_range("bytes 200000-665471/665472", &a, &b, &t), 0);
    assert_true(a == 200000 && b == 665471 && t == 665472);
    assert_int_equal(fetch_parse_content_range("bytes 0-9/*", &a, &b, &t), 0);
    assert_true(t == -1);
    assert_int_equal(fetch_parse_content_range("bytes 9-0/10", &a, &b, &t), -1);
    assert_int_equal(fetch_parse_content_range("bytes 0-9/5", &a, &b, &t), -1);
    assert_int_equal(fetch_parse_content_range("items 0-9/10", &a, &b, &t), -1);
}

static void test_backoff(void **state)
{
    (void)state;
    /* base * 2^(k-1), capped, jitter in [0.5, 1.0) */
    assert_true(fetch_backoff(1, 1, 60, 0.0) == 0.5);
    assert_true(fetch_backoff(1, 1, 60, 0.999) < 1.0);
    assert_true(fetch_backoff(3, 1, 60, 0.0) == 2.0);
    assert_true(fetch_backoff(10, 1, 60, 0.0) == 30.0);
    assert_true(fetch_backoff(1000, 1, 60, 0.5) == 45.0);
    for (int k = 1; k < 8; k++)
        assert_true(fetch_backoff(k + 1, 1, 1000, 0.3) > fetch_backoff(k, 1, 1000, 0.3));
}

static void test_origin(void **state)
{
    (void)state;
    char o[256];
    assert_int_equal(hub_url_origin("https://huggingface.co/a/b", o, sizeof o, NULL), 0);
    assert_string_equal(o, "https://huggingface.co:443");
    assert_int_equal(hub_url_origin("HTTP://Example.COM:8080/x", o, sizeof o, NULL), 0);
    assert_string_equal(o, "http://example.com:8080");
    assert_int_equal(hub_url_origin("http://user@cdn.host/x", o, sizeof o, NULL), 0);
    assert_string_equal(o, "http://cdn.host:80");
    assert_int_equal(hub_url_origin("http://[::1]/x", o, sizeof o, NULL), 0);
    assert_string_equal(o, "http://[::1]:80");
    assert_true(hub_url_origin("nohost", o, sizeof o, NULL) < 0);
}

static void test_source_urls(void **state)
{
    (void)state;
    struct hub_source s;
    char u[HUB_URL_MAX];
    setenv("HF_ENDPOINT", "http://127.0.0.1:9/", 1);
    assert_int_equal(hub_source_parse(&s, "hf://EleutherAI/pythia-160m-deduped", NULL), 0);
    assert_int_equal(s.kind, HUB_HF);
    assert_string_equal(s.endpoint, "http://127.0.0.1:9");
    assert_int_equal(hub_file_url(&s, "step1000", 1000, "model.safetensors", u, sizeof u, NULL), 0);
    assert_string_equal(u, "http://127.0.0.1:9/EleutherAI/pythia-160m-deduped/resolve/step1000/model.safetensors");
    assert_int_equal(hub_tree_url(&s, "step1000", u, sizeof u, NULL), 0);
    assert_string_equal(u, "http://127.0.0.1:9/api/models/EleutherAI/pythia-160m-deduped/tree/step1000");
    assert_int_equal(hub_refs_url(&s, u, sizeof u, NULL), 0);
    assert_string_equal(u, "http://127.0.0.1:9/api/models/EleutherAI/pythia-160m-deduped/refs");
    unsetenv("HF_ENDPOINT");
    assert_int_equal(hub_source_parse(&s, "hf://org/name", NULL), 0);
    assert_string_equal(s.endpoint, "https://huggingface.co");
    struct err e;
    assert_int_equal(hub_source_parse(&s, "hf://noslash", &e), ERR_INVALID);
    assert_int_equal(hub_source_parse(&s, "hf://a/../b", &e), ERR_INVALID);
    assert_int_equal(hub_source_parse(&s, "https://host/ckpts/step{step}/", NULL), 0);
    assert_int_equal(s.kind, HUB_HTTP);
    assert_int_equal(hub_file_url(&s, "step7", 7, "config.json", u, sizeof u, NULL), 0);
    assert_string_equal(u, "https://host/ckpts/step7/config.json");
    assert_int_equal(hub_source_parse(&s, "file:///runs/a", NULL), 0);
    assert_int_equal(hub_file_url(&s, "step7", 7, "config.json", u, sizeof u, NULL), 0);
    assert_string_equal(u, "/runs/a/step7/config.json");
}

static const char tree_json[] =
    "[{\"type\":\"directory\",\"path\":\"sub\",\"oid\":\"x\",\"size\":0},"
    " {\"type\":\"file\",\"path\":\"config.json\",\"oid\":\"406a53a0bc85db50505bdbab63e7f84af53a7663\",\"size\":478},"
    " {\"type\":\"file\",\"path\":\"pytorch_model.bin\",\"size\":134,\"oid\":\"abc\","
    "  \"lfs\":{\"oid\":\"bd923e4dbe4ee6ec009682d97ae941e1e046310d6781c3186a62f367e03b0570\",\"size\":665472}},"
    " {\"type\":\"file\",\"path\":\"model.safetensors.index.json\",\"size\":2433,\"oid\":\"def\"}]";

static void test_tree_and_select(void **state)
{
    (void)state;
    struct hub_files all = {0}, pick = {0};
    struct err e;
    assert_int_equal(hub_parse_tree(tree_json, &all, &e), 0);
    assert_int_equal(all.n, 3);
    const struct hub_file *w = hub_files_find(&all, "pytorch_model.bin");
    assert_non_null(w);
    assert_true(w->size == 665472); /* lfs size, not the pointer's */
    assert_string_equal(w->sha256, "bd923e4dbe4ee6ec009682d97ae941e1e046310d6781c3186a62f367e03b0570");
    assert_string_equal(hub_files_find(&all, "config.json")->sha256, ""); /* a git sha1 is not a sha256 */
    /* the ETag resolve will send: the git oid, or for LFS files the sha256 */
    assert_string_equal(hub_files_find(&all, "config.json")->etag, "406a53a0bc85db50505bdbab63e7f84af53a7663");
    assert_string_equal(w->etag, w->sha256);
    assert_string_equal(hub_files_find(&all, "model.safetensors.index.json")->etag, ""); /* "def": no ETag */
    /* the safetensors index comes before pytorch_model.bin */
    assert_int_equal(hub_select(&all, &pick, &e), 0);
    assert_int_equal(pick.n, 2);
    assert_string_equal(pick.f[1].name, "model.safetensors.index.json");
    assert_string_equal(pick.index, "model.safetensors.index.json");
    assert_string_equal(pick.f[0].etag, "406a53a0bc85db50505bdbab63e7f84af53a7663"); /* chosen with its ETag */
    hub_files_free(&pick);
    /* without config.json */
    struct hub_files bad = {0};
    assert_int_equal(hub_files_add(&bad, "pytorch_model.bin", 1, "", &e), 0);
    assert_int_equal(hub_select(&bad, &pick, &e), ERR_NOTFOUND);
    assert_non_null(strstr(e.msg, "config.json"));
    /* a toy run's task.json comes along when the revision has one */
    struct hub_files toy = {0};
    assert_int_equal(hub_files_add(&toy, "config.json", 10, "", &e), 0);
    assert_int_equal(hub_files_add(&toy, "model.safetensors", 100, "", &e), 0);
    assert_int_equal(hub_files_add(&toy, "train_log.jsonl", 5, "", &e), 0);
    assert_int_equal(hub_files_add(&toy, "task.json", 7, "", &e), 0);
    struct hub_files tpick = {0};
    assert_int_equal(hub_select(&toy, &tpick, &e), 0);
    assert_int_equal(tpick.n, 3);
    assert_string_equal(tpick.f[2].name, "task.json");
    hub_files_free(&tpick);
    hub_files_free(&toy);
    hub_files_free(&bad);
    hub_files_free(&pick);
    hub_files_free(&all);
    assert_int_equal(hub_parse_tree("{\"not\":\"a list\"}", &all, &e), ERR_FORMAT);
    assert_int_equal(hub_parse_tree("[{\"type\":\"file\",\"path\":\"../etc/passwd\",\"size\":1}]", &all, &e),
                     ERR_FORMAT);
    hub_files_free(&all);
    /* a negative size is no size (found by fuzz/fuzz_hub.c: it was kept) */
    assert_int_equal(hub_parse_tree("[{\"type\":\"file\",\"path\":\"config.json\",\"size\":-2}]", &all, &e),
                     ERR_FORMAT);
    assert_non_null(strstr(e.msg, "entry 0 (config.json) has a negative size"));
    hub_files_free(&all);
    assert_int_equal(hub_parse_tree("[{\"type\":\"file\",\"path\":\"m.bin\",\"lfs\":{\"size\":-5}}]", &all, &e),
                     ERR_FORMAT);
    hub_files_free(&all);
    assert_int_equal(hub_parse_tree("not json", &all, &e), ERR_FORMAT);
}

static void test_refs(void **state)
{
    (void)state;
    long long *steps;
    int n;
    struct err e;
    const char *j = "{\"branches\":[{\"name\":\"main\"},{\"name\":\"step1000\"},{\"name\":\"step0\"},"
                    "{\"name\":\"step512-old\"},{\"name\":\"step1000\"},{\"name\":\"step\"},{\"name\":\"step143000\"}],"
                    "\"tags\":[],\"converts\":[]}";
    assert_int_equal(hub_parse_refs(j, &steps, &n, &e), 0);
    assert_int_equal(n, 3);
    assert_true(steps[0] == 0 && steps[1] == 1000 && steps[2] == 143000);
    free(steps);
    assert_int_equal(hub_parse_refs("{\"branches\":[{\"name\":\"main\"}]}", &steps, &n, &e), ERR_NOTFOUND);
    assert_int_equal(hub_parse_refs("{\"tags\":[]}", &steps, &n, &e), ERR_FORMAT);
}

static char tmpdir[256];

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* sha256_file_memo: an unchanged file is answered without reading it;
 * another size or another inode is read again; a file changed within
 * settled_s of its hashing is not remembered. */
static void test_sha256_memo(void **state)
{
    (void)state;
    char p[512], q[512], hex[SHA256_HEX], again[SHA256_HEX];
    long long size = 0;
    struct err e;
    snprintf(p, sizeof p, "%s/memo.bin", tmpdir);
    snprintf(q, sizeof q, "%s/memo.new", tmpdir);
    write_file(p, "abc");
    long h0 = sha256_memo_hits();
    assert_int_equal(sha256_file_memo(p, hex, &size, 0.0, &e), 0);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_int_equal(size, 3);
    assert_int_equal(sha256_memo_hits(), h0);
    size = 0;
    assert_int_equal(sha256_file_memo(p, again, &size, 0.0, &e), 0);
    assert_string_equal(again, hex);
    assert_int_equal(size, 3);
    assert_int_equal(sha256_memo_hits(), h0 + 1);
    /* longer: read again */
    write_file(p, "abcd");
    assert_int_equal(sha256_file_memo(p, hex, &size, 0.0, &e), 0);
    assert_string_equal(hex, "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589");
    assert_int_equal(size, 4);
    assert_int_equal(sha256_memo_hits(), h0 + 1);
    /* the same size under the same name, another file (rename): read again */
    write_file(q, "abce");
    assert_int_equal(rename(q, p), 0);
    assert_int_equal(sha256_file_memo(p, hex, &size, 0.0, &e), 0);
    assert_string_not_equal(hex, "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589");
    assert_int_equal(sha256_memo_hits(), h0 + 1);
    /* changed just now, not settled: never remembered */
    write_file(q, "settling");
    for (int i = 0; i < 2; i++)
        assert_int_equal(sha256_file_memo(q, hex, &size, 3600.0, &e), 0);
    assert_int_equal(sha256_memo_hits(), h0 + 1);
    assert_int_equal(size, 8);
    snprintf(q, sizeof q, "%s/memo.missing", tmpdir);
    assert_int_equal(sha256_file_memo(q, hex, &size, 0.0, &e), ERR_IO);
}

static void test_shards(void **state)
{
    (void)state;
    char p[512];
    snprintf(p, sizeof p, "%s/index.json", tmpdir);
    write_file(p, "{\"metadata\":{},\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\","
                  "\"b\":\"model-00002-of-00002.safetensors\",\"c\":\"model-00001-of-00002.safetensors\"}}");
    struct hub_files all = {0}, pick = {0};
    struct err e;
    assert_int_equal(hub_files_add(&all, "model-00001-of-00002.safetensors", 10,
                                   "bd923e4dbe4ee6ec009682d97ae941e1e046310d6781c3186a62f367e03b0570", &e), 0);
    assert_int_equal(hub_files_add(&all, "model-00002-of-00002.safetensors", 20, "", &e), 0);
    snprintf(pick.index, sizeof pick.index, "model.safetensors.index.json");
    assert_int_equal(hub_add_shards(&pick, p, &all, &e), 0);
    assert_int_equal(pick.n, 2); /* each shard once */
    assert_true(pick.f[0].size == 10 && pick.f[1].size == 20);
    assert_string_equal(pick.index, "");
    hub_files_free(&pick);
    write_file(p, "{\"weight_map\":{\"a\":\"missing.safetensors\"}}");
    assert_int_equal(hub_add_shards(&pick, p, &all, &e), ERR_NOTFOUND);
    hub_files_free(&pick);
    write_file(p, "{\"weight_map\":{\"a\":\"/abs.safetensors\"}}");
    assert_int_equal(hub_add_shards(&pick, p, NULL, &e), ERR_FORMAT);
    hub_files_free(&pick);
    hub_files_free(&all);
    assert_true(hub_is_weights("model-00001-of-00002.safetensors"));
    assert_true(hub_is_weights("pytorch_model.bin"));
    assert_false(hub_is_weights("model.safetensors.index.json"));
}

/* Put `text` into the cache as a blob; its sha256 into sha. */
static void add_blob(struct cache *c, const char *text, char *sha)
{
    char p[512];
    struct sha256 h;
    assert_int_equal(sha256_init(&h, NULL), 0);
    sha256_update(&h, text, strlen(text));
    sha256_final(&h, sha);
    snprintf(p, sizeof p, "%s/partial/t.part", cache_root(c));
    write_file(p, text);
    assert_int_equal(cache_put_blob(c, p, sha, NULL), 0);
    assert_true(cache_has_blob(c, sha));
}

static void test_cache_lru(void **state)
{
    (void)state;
    char root[512], key[3][CACHE_KEY_MAX], sha[3][SHA256_HEX], big[3][1100];
    struct err e;
    snprintf(root, sizeof root, "%s/cache", tmpdir);
    /* three snapshots of ~1 KB each; a budget of 2.5 KB */
    struct cache *c = cache_open(root, 2500, &e);
    assert_non_null(c);
    for (int i = 0; i < 3; i++) {
        char rev[16];
        snprintf(rev, sizeof rev, "step%d", i);
        assert_int_equal(cache_key("hf://org/name", rev, key[i], sizeof key[i], &e), 0);
        memset(big[i], 'a' + i, 1099);
        big[i][1099] = '\0';
        add_blob(c, big[i], sha[i]);
        assert_int_equal(cache_snapshot_add(c, key[i], "model.safetensors", 1099, sha[i], &e), 0);
        assert_int_equal(cache_lookup(c, key[i], NULL, &e), 0); /* not complete yet */
        assert_int_equal(cache_snapshot_complete(c, key[i], &e), 0);
        assert_int_equal(cache_lookup(c, key[i], NULL, &e), 1);
    }
    assert_non_null(strstr(key[0], "hf-org-name-"));
    char snap[1024], lnk[1100];
    assert_int_equal(cache_snapshot_dir(c, key[1], snap, sizeof snap, &e), 0);
    snprintf(lnk, sizeof lnk, "%s/model.safetensors", snap);
    struct stat st;
    assert_int_equal(stat(lnk, &st), 0);
    assert_true(st.st_size == 1099);
    /* nothing analysed: nothing evictable */
    long long freed = -1;
    assert_int_equal(cache_evict(c, &freed, &e), 0);
    assert_true(freed == 0);
    /* all analysed, step0 pinned: step1 is the least recently used unpinned */
    for (int i = 0; i < 3; i++)
        assert_int_equal(cache_mark_analysed(c, key[i], &e), 0);
    assert_int_equal(cache_pin(c, key[0], &e), 0);
    /* make the order of use explicit: step1 oldest, step2 newest */
    char mp[1024];
    for (int i = 0; i < 3; i++) {
        snprintf(mp, sizeof mp, "%s/manifests/%s.json", cache_root(c), key[i]);
        {
            FILE *f = fopen(mp, "r");
            char buf[4096];
            size_t n = fread(buf, 1, sizeof buf - 1, f);
            fclose(f);
            buf[n] = '\0';
            char *lu = strstr(buf, "\"last_used\": ");
            assert_non_null(lu);
            char out[4096];
            size_t pre = (size_t)(lu - buf);
            char *end = strpbrk(lu + 13, ",\n}");
            snprintf(out, sizeof out, "%.*s\"last_used\": %d%s", (int)pre, buf, i == 1 ? 100 : 200 + i, end);
            write_file(mp, out);
        }
    }
    assert_int_equal(cache_evict(c, &freed, &e), 0);
    assert_true(freed == 1099);
    assert_false(cache_has_blob(c, sha[1]));
    assert_true(cache_has_blob(c, sha[0]) && cache_has_blob(c, sha[2]));
    assert_int_equal(cache_lookup(c, key[1], NULL, &e), 0);
    assert_true(stat(snap, &st) != 0); /* its snapshot is gone */
    /* under budget now: nothing more goes, even the pinned one is safe */
    c = (cache_close(c), cache_open(root, 1000, &e)); /* pins dropped with the handle */
    assert_non_null(c);
    assert_int_equal(cache_pin(c, key[0], &e), 0);
    assert_int_equal(cache_evict(c, &freed, &e), 0);
    assert_true(cache_has_blob(c, sha[0])); /* pinned */
    assert_false(cache_has_blob(c, sha[2]));
    cache_unpin(c, key[0]);
    assert_int_equal(cache_evict(c, &freed, &e), 0);
    assert_false(cache_has_blob(c, sha[0]));
    cache_close(c);
}

static void test_cache_shared_blob(void **state)
{
    (void)state;
    /* two snapshots of one blob: evicting one keeps the blob */
    char root[512], k1[CACHE_KEY_MAX], k2[CACHE_KEY_MAX], sha[SHA256_HEX];
    struct err e;
    snprintf(root, sizeof root, "%s/cache2", tmpdir);
    struct cache *c = cache_open(root, 1, &e);
    assert_non_null(c);
    assert_int_equal(cache_key("https://h/x/step{step}", "step1", k1, sizeof k1, &e), 0);
    assert_int_equal(cache_key("https://h/x/step{step}", "step2", k2, sizeof k2, &e), 0);
    add_blob(c, "same weights", sha);
    assert_int_equal(cache_snapshot_add(c, k1, "model.safetensors", 12, sha, &e), 0);
    assert_int_equal(cache_snapshot_add(c, k2, "model.safetensors", 12, sha, &e), 0);
    assert_int_equal(cache_snapshot_complete(c, k1, &e), 0);
    assert_int_equal(cache_snapshot_complete(c, k2, &e), 0);
    assert_int_equal(cache_mark_analysed(c, k1, &e), 0);
    long long freed;
    assert_int_equal(cache_evict(c, &freed, &e), 0);
    assert_true(cache_has_blob(c, sha)); /* k2, not analysed, still uses it */
    assert_int_equal(cache_lookup(c, k2, NULL, &e), 1);
    assert_int_equal(cache_snapshot_add(c, k1, "../x", 12, sha, &e), ERR_FORMAT);
    assert_int_equal(cache_snapshot_add(c, k1, "b", 1, "0000000000000000000000000000000000000000000000000000000000000000", &e),
                     ERR_NOTFOUND);
    cache_close(c);
}

/* Rewrite a snapshot manifest's last_used (seconds resolution otherwise
 * leaves the LRU order to chance within one test). */
static void set_last_used(struct cache *c, const char *key, int when)
{
    char mp[1024], buf[4096], out[4200];
    snprintf(mp, sizeof mp, "%s/manifests/%s.json", cache_root(c), key);
    FILE *f = fopen(mp, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *lu = strstr(buf, "\"last_used\": ");
    assert_non_null(lu);
    char *end = strpbrk(lu + 13, ",\n}");
    snprintf(out, sizeof out, "%.*s\"last_used\": %d%s", (int)(lu - buf), buf, when, end);
    write_file(mp, out);
}

static void test_cache_reserve(void **state)
{
    (void)state;
    char root[512], key[3][CACHE_KEY_MAX], sha[3][SHA256_HEX], big[3][1100];
    struct err e;
    struct cache_room room;
    snprintf(root, sizeof root, "%s/cache-reserve", tmpdir);
    struct cache *c = cache_open(root, 3500, &e);
    assert_non_null(c);
    for (int i = 0; i < 3; i++) {
        char rev[16];
        snprintf(rev, sizeof rev, "step%d", i);
        assert_int_equal(cache_key("hf://org/budget", rev, key[i], sizeof key[i], &e), 0);
        memset(big[i], 'k' + i, 1099);
        big[i][1099] = '\0';
        add_blob(c, big[i], sha[i]);
        assert_int_equal(cache_snapshot_add(c, key[i], "model.safetensors", 1099, sha[i], &e), 0);
        assert_int_equal(cache_snapshot_complete(c, key[i], &e), 0);
    }
    assert_true(cache_usage(c) == 3297);
    /* nothing analysed: nothing can go, nothing is reserved */
    assert_int_equal(cache_reserve(c, 500, &room, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "cache budget 3500 bytes cannot hold 500 more"));
    assert_non_null(strstr(e.msg, "3297 bytes in the cache (3297 of them pinned or not analysed yet)"));
    assert_true(room.held == 3297 && room.freed == 0 && cache_reserved(c) == 0);
    /* analysed, step0 pinned (and the oldest): step1 goes first, then step2 */
    for (int i = 0; i < 3; i++)
        assert_int_equal(cache_mark_analysed(c, key[i], &e), 0);
    set_last_used(c, key[0], 50);
    set_last_used(c, key[1], 100);
    set_last_used(c, key[2], 300);
    assert_int_equal(cache_pin(c, key[0], &e), 0);
    assert_int_equal(cache_reserve(c, 500, &room, &e), 0);
    assert_true(room.freed == 1099 && room.usage == 2198 && cache_reserved(c) == 500);
    assert_false(cache_has_blob(c, sha[1]));
    assert_true(cache_has_blob(c, sha[2]));
    /* the first reservation counts against the second */
    assert_int_equal(cache_reserve(c, 900, &room, &e), 0);
    assert_true(room.freed == 1099 && room.usage == 1099 && room.reserved == 500 && cache_reserved(c) == 1400);
    assert_false(cache_has_blob(c, sha[2]));
    /* 1400 promised + 2200 > 3500 even with an empty cache */
    assert_int_equal(cache_reserve(c, 2200, &room, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "1400 bytes promised to other downloads"));
    assert_true(cache_reserved(c) == 1400 && cache_has_blob(c, sha[0]));
    cache_release(c, 1400);
    assert_true(cache_reserved(c) == 0);
    /* exactly full is allowed; one byte more needs the pinned snapshot's room */
    assert_int_equal(cache_reserve(c, 2401, &room, &e), 0);
    cache_release(c, 2401);
    assert_int_equal(cache_reserve(c, 2402, &room, &e), ERR_INVALID);
    assert_true(room.held == 1099 && cache_has_blob(c, sha[0]));
    assert_non_null(strstr(e.msg, "(1099 of them pinned or not analysed yet)"));
    /* larger than the whole budget: refused without evicting anything */
    cache_unpin(c, key[0]);
    cache_set_budget(c, 1000);
    assert_true(cache_budget(c) == 1000);
    assert_int_equal(cache_reserve(c, 2000, &room, &e), ERR_INVALID);
    assert_true(cache_has_blob(c, sha[0]) && room.freed == 0);
    /* no budget: reservations only count */
    cache_set_budget(c, 0);
    assert_int_equal(cache_reserve(c, 1LL << 40, &room, &e), 0);
    assert_true(cache_reserved(c) == 1LL << 40 && cache_has_blob(c, sha[0]));
    cache_release(c, 1LL << 40);
    assert_int_equal(cache_pins_held(c), 0);
    cache_close(c);
}

/* New settings reach a live fetcher: retries counted against a port
 * nothing listens on (connection refused: retryable), before and after
 * fetcher_set_opts. */
static void test_fetcher_set_opts(void **state)
{
    (void)state;
    struct fetch_opts o;
    struct err e;
    fetch_opts_defaults(&o);
    o.retries = 0;
    o.backoff_base_s = o.backoff_max_s = 0.01;
    o.connect_timeout_s = 2;
    struct fetcher *f = fetcher_new(&o, &e);
    assert_non_null(f);
    struct fetch_req r;
    memset(&r, 0, sizeof r);
    r.kind = FETCH_MEMORY;
    r.want_size = -1;
    snprintf(r.url, sizeof r.url, "http://127.0.0.1:18309/api/models/a/b/refs");
    assert_int_equal(fetcher_add(f, &r, &e), 0);
    while (!r.done)
        fetcher_run(f, NULL, 0, 200);
    assert_false(r.ok);
    assert_int_equal(r.attempts, 1);
    assert_non_null(strstr(r.error, "GET http://127.0.0.1:18309/api/models/a/b/refs: "));
    fetch_req_clear(&r);
    o.retries = 2;
    o.parallel = 1;
    fetcher_set_opts(f, &o);
    assert_int_equal(fetcher_opts(f)->retries, 2);
    assert_int_equal(fetcher_opts(f)->parallel, 1);
    assert_int_equal(fetcher_add(f, &r, &e), 0);
    while (!r.done)
        fetcher_run(f, NULL, 0, 200);
    assert_false(r.ok);
    assert_int_equal(r.attempts, 3);
    assert_non_null(strstr(r.error, "gave up after 3 attempts"));
    fetch_req_clear(&r);
    o.parallel = 0; /* clamped */
    fetcher_set_opts(f, &o);
    assert_int_equal(fetcher_opts(f)->parallel, 1);
    fetcher_free(f);
}

static void test_hf_cache(void **state)
{
    (void)state;
    char hub[300], p[2048], q[1024];
    const char *sha = "bd923e4dbe4ee6ec009682d97ae941e1e046310d6781c3186a62f367e03b0570";
    const char *commit = "0123456789abcdef0123456789abcdef01234567";
    snprintf(hub, sizeof hub, "%s/hfhome/hub", tmpdir);
    snprintf(p, sizeof p, "mkdir -p %s/models--Org--Name/refs %s/models--Org--Name/blobs "
                          "%s/models--Org--Name/snapshots/%s", hub, hub, hub, commit);
    assert_int_equal(system(p), 0);
    snprintf(p, sizeof p, "%s/models--Org--Name/refs/step8", hub);
    write_file(p, commit);
    snprintf(p, sizeof p, "%s/models--Org--Name/blobs/%s", hub, sha);
    write_file(p, "weights");
    snprintf(q, sizeof q, "%s/models--Org--Name/snapshots/%s/model.safetensors", hub, commit);
    assert_int_equal(symlink(p, q), 0);
    snprintf(p, sizeof p, "%s/models--Org--Name/blobs/406a53a0bc85db50505bdbab63e7f84af53a7663", hub);
    write_file(p, "{}");
    snprintf(q, sizeof q, "%s/models--Org--Name/snapshots/%s/config.json", hub, commit);
    assert_int_equal(symlink(p, q), 0);
    char out[1024];
    assert_int_equal(cache_hf_find(hub, "Org/Name", "step8", "model.safetensors", out, sizeof out), 1);
    assert_non_null(strstr(out, sha));
    assert_int_equal(cache_hf_find(hub, "Org/Name", "step9", "model.safetensors", out, sizeof out), 0);
    assert_int_equal(cache_hf_find(hub, "Org/Name", "step8", "pytorch_model.bin", out, sizeof out), 0);
    assert_int_equal(cache_hf_find(hub, "Org/Name", commit, "config.json", out, sizeof out), 1);
    struct hub_files all = {0}, pick = {0};
    struct err e;
    assert_int_equal(cache_hf_list(hub, "Org/Name", "step8", &all, &e), 2);
    const struct hub_file *w = hub_files_find(&all, "model.safetensors");
    assert_non_null(w);
    assert_string_equal(w->sha256, sha); /* the blob's name */
    assert_true(w->size == 7);
    assert_string_equal(hub_files_find(&all, "config.json")->sha256, "");
    assert_int_equal(hub_select(&all, &pick, &e), 0);
    hub_files_free(&all);
    hub_files_free(&pick);
    /* the environment decides where the hub cache is */
    setenv("HF_HOME", "/x/hfh", 1);
    unsetenv("HF_HUB_CACHE");
    cache_hf_dir(out, sizeof out);
    assert_string_equal(out, "/x/hfh/hub");
    setenv("HF_HUB_CACHE", "/y/hub", 1);
    cache_hf_dir(out, sizeof out);
    assert_string_equal(out, "/y/hub");
    unsetenv("HF_HUB_CACHE");
    unsetenv("HF_HOME");
}

static void unset_hf_env(void)
{
    const char *v[] = {"HF_HOME", "XDG_CACHE_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE",
                       "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"};
    for (size_t i = 0; i < sizeof v / sizeof *v; i++)
        unsetenv(v[i]);
}

static void test_hf_env(void **state)
{
    (void)state;
    char out[1024], from[1024], tok[128];
    const char *home = getenv("HOME");
    char saved_home[1024];
    snprintf(saved_home, sizeof saved_home, "%s", home ? home : "");
    unset_hf_env();
    setenv("HOME", "/h", 1);
    hfcache_dir(out, sizeof out);
    assert_string_equal(out, "/h/.cache/huggingface/hub");
    setenv("XDG_CACHE_HOME", "/xdg", 1);
    hfcache_dir(out, sizeof out);
    assert_string_equal(out, "/xdg/huggingface/hub");
    setenv("HF_HOME", "~/hfh", 1); /* ~ expanded */
    hfcache_home(out, sizeof out);
    assert_string_equal(out, "/h/hfh");
    hfcache_dir(out, sizeof out);
    assert_string_equal(out, "/h/hfh/hub");
    setenv("HUGGINGFACE_HUB_CACHE", "/legacy/${HF_SUB}/$NOPE_UNSET_VAR", 1);
    setenv("HF_SUB", "s", 1);
    hfcache_dir(out, sizeof out); /* over HF_HOME; $VARS expanded, unknown ones kept */
    assert_string_equal(out, "/legacy/s/$NOPE_UNSET_VAR");
    setenv("HF_HUB_CACHE", "/new", 1);
    hfcache_dir(out, sizeof out);
    assert_string_equal(out, "/new");
    unsetenv("HF_SUB");
    /* offline: HF_HUB_OFFLINE decides when set, else TRANSFORMERS_OFFLINE */
    assert_false(hfcache_offline());
    setenv("TRANSFORMERS_OFFLINE", "1", 1);
    assert_true(hfcache_offline());
    setenv("HF_HUB_OFFLINE", "0", 1);
    assert_false(hfcache_offline());
    setenv("HF_HUB_OFFLINE", "On", 1);
    assert_true(hfcache_offline());
    setenv("HF_HUB_OFFLINE", "", 1); /* empty: as if unset */
    assert_true(hfcache_offline());
    setenv("TRANSFORMERS_OFFLINE", "nah", 1);
    assert_false(hfcache_offline());
    /* the token: HF_TOKEN, HUGGING_FACE_HUB_TOKEN, HF_TOKEN_PATH, $HF_HOME/token */
    char dir[600], p[700];
    snprintf(dir, sizeof dir, "%s/hfhome", tmpdir);
    mkdir(dir, 0700);
    setenv("HF_HOME", dir, 1);
    assert_int_equal(hfcache_token(tok, sizeof tok, from, sizeof from), 0);
    snprintf(p, sizeof p, "%s/token", dir);
    write_file(p, "\r\n  hf_file_token \n");
    assert_int_equal(hfcache_token(tok, sizeof tok, from, sizeof from), 1);
    assert_string_equal(tok, "hf_file_token");
    assert_string_equal(from, p);
    snprintf(p, sizeof p, "%s/other-token", tmpdir);
    write_file(p, "hf_path_token");
    setenv("HF_TOKEN_PATH", p, 1);
    assert_int_equal(hfcache_token(tok, sizeof tok, from, sizeof from), 1);
    assert_string_equal(tok, "hf_path_token");
    setenv("HUGGING_FACE_HUB_TOKEN", "hf_legacy", 1);
    assert_int_equal(hfcache_token(tok, sizeof tok, from, sizeof from), 1);
    assert_string_equal(from, "HUGGING_FACE_HUB_TOKEN");
    setenv("HF_TOKEN", " \n", 1); /* blank: none, the next source counts */
    assert_int_equal(hfcache_token(tok, sizeof tok, from, sizeof from), 1);
    assert_string_equal(tok, "hf_legacy");
    setenv("HF_TOKEN", "hf_env", 1);
    assert_int_equal(hfcache_token(tok, sizeof tok, from, sizeof from), 1);
    assert_string_equal(tok, "hf_env");
    assert_string_equal(from, "HF_TOKEN");
    unset_hf_env();
    if (saved_home[0])
        setenv("HOME", saved_home, 1);
    else
        unsetenv("HOME");
}

static void test_hf_write(void **state)
{
    (void)state;
    char hub[600], src[700], p[2048], target[256];
    struct err e;
    const char *commit = "0123456789abcdef0123456789abcdef01234567";
    snprintf(hub, sizeof hub, "%s/hfw/hub", tmpdir);
    snprintf(src, sizeof src, "%s/hfw-src", tmpdir);
    write_file(src, "{}");
    char sha1[41];
    assert_int_equal(hfcache_git_sha1(src, sha1, &e), 0);
    assert_string_equal(sha1, "9e26dfeeb6e641a33dae4961196235bdb965b21b"); /* printf '{}' | git hash-object --stdin */
    assert_int_equal(hfcache_put(hub, "Org/Name", commit, "config.json", sha1, src, &e), 0);
    assert_int_equal(hfcache_put(hub, "Org/Name", commit, "sub/dir/f.json", sha1, src, &e), 0);
    assert_int_equal(hfcache_put(hub, "Org/Name", commit, "config.json", sha1, src, &e), 0); /* again: no change */
    snprintf(p, sizeof p, "%s/models--Org--Name/snapshots/%s/config.json", hub, commit);
    ssize_t n = readlink(p, target, sizeof target - 1);
    assert_true(n > 0);
    target[n] = '\0';
    assert_string_equal(target, "../../blobs/9e26dfeeb6e641a33dae4961196235bdb965b21b");
    snprintf(p, sizeof p, "%s/models--Org--Name/snapshots/%s/sub/dir/f.json", hub, commit);
    n = readlink(p, target, sizeof target - 1);
    assert_true(n > 0);
    target[n] = '\0';
    assert_string_equal(target, "../../../../blobs/9e26dfeeb6e641a33dae4961196235bdb965b21b");
    struct stat a, b;
    snprintf(p, sizeof p, "%s/models--Org--Name/blobs/%s", hub, sha1);
    assert_int_equal(stat(p, &a), 0);
    assert_int_equal(stat(src, &b), 0);
    assert_true(a.st_ino == b.st_ino); /* a hard link, not a copy */
    snprintf(p, sizeof p, "%s/.locks/models--Org--Name/%s.lock", hub, sha1);
    assert_int_equal(stat(p, &a), 0);
    /* the ref, then found by the reader */
    assert_int_equal(hfcache_set_ref(hub, "Org/Name", "step8", commit, &e), 0);
    char c[64];
    assert_int_equal(hfcache_ref(hub, "Org/Name", "step8", c, sizeof c), 1);
    assert_string_equal(c, commit);
    assert_int_equal(hfcache_ref(hub, "Org/Name", "step9", c, sizeof c), 0);
    char out[1024];
    assert_int_equal(cache_hf_find(hub, "Org/Name", "step8", "config.json", out, sizeof out), 1);
    assert_non_null(strstr(out, sha1));
    struct hub_files all = {0};
    assert_int_equal(cache_hf_list(hub, "Org/Name", "step8", &all, &e), 2);
    assert_string_equal(all.commit, commit);
    assert_string_equal(hub_files_find(&all, "config.json")->etag, sha1);
    hub_files_free(&all);
    /* a commit is never written as a ref; bad names are refused */
    assert_int_equal(hfcache_set_ref(hub, "Org/Name", commit, commit, &e), 0);
    snprintf(p, sizeof p, "%s/models--Org--Name/refs/%s", hub, commit);
    assert_int_not_equal(stat(p, &a), 0);
    assert_int_equal(hfcache_put(hub, "Org/Name", commit, "../x", sha1, src, &e), ERR_INVALID);
    assert_int_equal(hfcache_put(hub, "Org/Name", "main", "config.json", sha1, src, &e), ERR_INVALID);
    assert_int_equal(hfcache_put(hub, "Org/Name", commit, "config.json", "W/abc", src, &e), ERR_INVALID);
    assert_int_equal(hfcache_put(hub, "OrgName", commit, "config.json", sha1, src, &e), ERR_INVALID);
    assert_int_equal(hfcache_set_ref(hub, "Org/Name", "../up", commit, &e), ERR_INVALID);
}

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ckft-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_vectors),
        cmocka_unit_test(test_sha256_memo),
        cmocka_unit_test(test_header_split),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_etag_sha),
        cmocka_unit_test(test_etag_normalize),
        cmocka_unit_test(test_content_range),
        cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_origin),
        cmocka_unit_test(test_source_urls),
        cmocka_unit_test(test_tree_and_select),
        cmocka_unit_test(test_refs),
        cmocka_unit_test(test_shards),
        cmocka_unit_test(test_cache_lru),
        cmocka_unit_test(test_cache_shared_blob),
        cmocka_unit_test(test_hf_cache),
        cmocka_unit_test(test_hf_env),
        cmocka_unit_test(test_hf_write),
        cmocka_unit_test(test_cache_reserve),
        cmocka_unit_test(test_fetcher_set_opts),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
