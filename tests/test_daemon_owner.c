/*
 * test_daemon_owner - owners of a shared directory (daemon/base/owner.h):
 * the tag of a node and pid; a lock held by a live process (a child, by
 * flock) keeps its files, the same lock after that process is killed with
 * SIGKILL gets them removed; a lock file nobody holds whose pid is alive
 * (ours) is still dead; a predecessor with our own tag is swept before we
 * take it; each live owner's text is read; close removes the lock; and
 * the spool sweep (supervise_spool_open) and the cache's partials
 * (cache_open_as) use it; reservations are shared between processes; a
 * snapshot whose stager died or gave it up unanalysed becomes evictable.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "daemon/base/owner.h"
#include "daemon/fetch/cache.h"
#include "daemon/work/supervise.h"

static char dir[256];

static void touch(const char *name)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    close(fd);
}

static int exists(const char *name)
{
    char p[512];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return stat(p, &st) == 0;
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/ckptd-owner-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static int ndead;

static void on_dead(const char *d, const char *tag, void *arg)
{
    (void)arg;
    ndead++;
    owner_remove_tagged(d, tag);
}

static void test_tag(void **state)
{
    (void)state;
    char t[OWNER_TAG_MAX];
    owner_make_tag(t, sizeof t, "vm:1234", 99);
    assert_string_equal(t, "vm_1234.99");
    owner_make_tag(t, sizeof t, "a.b/c d-e_f", 7);
    assert_string_equal(t, "a_b_c_d-e_f.7");
    owner_make_tag(t, sizeof t, "", 5);
    assert_string_equal(t, "node.5");
}

/* A child becomes owner "kid" and waits; returns its pid once its lock
 * and a file of its are there. */
static pid_t start_child(int *to_child)
{
    int up[2], down[2];
    assert_int_equal(pipe(up), 0);
    assert_int_equal(pipe(down), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(up[0]);
        close(down[1]);
        struct owner *o = owner_open(dir, "kid", NULL, NULL, NULL);
        char p[512];
        snprintf(p, sizeof p, "%s/%s.work", dir, o ? owner_tag(o) : "x");
        close(open(p, O_WRONLY | O_CREAT, 0644));
        if (!o || owner_write(o, "reserved 42\n", NULL) < 0)
            _exit(1);
        char b = 1;
        if (write(up[1], &b, 1) != 1)
            _exit(1);
        if (read(down[0], &b, 1) < 0) /* until the parent says or kills */
            _exit(1);
        owner_close(o);
        _exit(0);
    }
    close(up[1]);
    close(down[0]);
    char b;
    assert_int_equal(read(up[0], &b, 1), 1);
    close(up[0]);
    *to_child = down[1];
    return pid;
}

static void add_text(const char *tag, const char *text, void *arg)
{
    char *out = arg;
    size_t n = strlen(out);
    snprintf(out + n, 256 - n, "%s=%s", tag, text);
}

static void test_live_and_dead(void **state)
{
    (void)state;
    struct err e;
    int to_child;
    pid_t kid = start_child(&to_child);
    char kid_tag[OWNER_TAG_MAX], kid_file[OWNER_TAG_MAX + 8], ghost[64];
    owner_make_tag(kid_tag, sizeof kid_tag, "kid", kid);
    snprintf(kid_file, sizeof kid_file, "%s.work", kid_tag);
    assert_true(exists(kid_file));

    /* a ghost: our own pid, alive, but nobody holds its lock */
    char glock[80], gfile[80], other[80];
    snprintf(ghost, sizeof ghost, "ghost.%d", (int)getpid());
    snprintf(glock, sizeof glock, ".owners/%s.lock", ghost);
    touch(glock);
    snprintf(gfile, sizeof gfile, "%s.ck1.rows", ghost);
    snprintf(other, sizeof other, "ghostly.%d.ck1.rows", (int)getpid()); /* another tag */
    touch(gfile);
    touch(other);

    ndead = 0;
    struct owner *me = owner_open(dir, "me", on_dead, NULL, &e);
    if (!me)
        fail_msg("owner_open: %s", err_str(&e));
    assert_int_equal(ndead, 1); /* the ghost, not the live child */
    assert_false(exists(gfile));
    assert_true(exists(other));
    assert_true(exists(kid_file));
    char text[256] = "";
    assert_int_equal(owner_each_live(me, add_text, text, on_dead, NULL, &e), 1);
    char want[256];
    snprintf(want, sizeof want, "%s=reserved 42\n", kid_tag);
    assert_string_equal(text, want);

    /* the child killed outright: its lock is free, its files go */
    kill(kid, SIGKILL);
    waitpid(kid, NULL, 0);
    close(to_child);
    ndead = 0;
    assert_int_equal(owner_sweep(me, on_dead, NULL, &e), 1);
    assert_false(exists(kid_file));
    char lock[OWNER_TAG_MAX + 16];
    snprintf(lock, sizeof lock, ".owners/%s.lock", kid_tag);
    assert_false(exists(lock));
    text[0] = '\0';
    assert_int_equal(owner_each_live(me, add_text, text, on_dead, NULL, &e), 0);

    /* a predecessor with our very tag (a restart reusing the pid) is
     * swept before the lock is taken, and close removes ours */
    char mine[OWNER_TAG_MAX + 16], myfile[OWNER_TAG_MAX + 16];
    snprintf(mine, sizeof mine, ".owners/%s.lock", owner_tag(me));
    snprintf(myfile, sizeof myfile, "%s.ck2.rows", owner_tag(me));
    assert_true(exists(mine));
    owner_close(me);
    assert_false(exists(mine));
    touch(mine);
    touch(myfile);
    ndead = 0;
    me = owner_open(dir, "me", on_dead, NULL, &e);
    assert_non_null(me);
    assert_int_equal(ndead, 1);
    assert_false(exists(myfile));
    assert_true(exists(mine));
    owner_close(me);
}

/* The spool and the cache: a dead daemon's spool files and partials go
 * when the next one opens them, its own stay while it lives. */
static void test_spool_and_cache(void **state)
{
    (void)state;
    struct err e;
    char spool[300], cache[300], p[600];
    snprintf(spool, sizeof spool, "%s/spool", dir);
    snprintf(cache, sizeof cache, "%s/cache", dir);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) { /* a daemon that leaves files and is killed */
        struct owner *o = supervise_spool_open(spool, "node1", NULL);
        struct cache *c = cache_open_as(cache, 0, "node1", NULL);
        if (!o || !c || cache_partial_path(c, "abc", p, sizeof p, NULL) < 0)
            _exit(1);
        close(open(p, O_WRONLY | O_CREAT, 0644));
        snprintf(p, sizeof p, "%s/%s.ck5.rows", spool, owner_tag(o));
        close(open(p, O_WRONLY | O_CREAT, 0644));
        raise(SIGKILL);
    }
    int st;
    waitpid(pid, &st, 0);
    assert_true(WIFSIGNALED(st));
    snprintf(p, sizeof p, "%s/node1.%d.ck5.rows", spool, (int)pid);
    assert_int_equal(access(p, F_OK), 0);
    snprintf(p, sizeof p, "%s/partial/node1.%d.abc.part", cache, (int)pid);
    assert_int_equal(access(p, F_OK), 0);

    struct owner *o = supervise_spool_open(spool, "node1", &e);
    struct cache *c = cache_open_as(cache, 0, "node1", &e);
    assert_non_null(o);
    assert_non_null(c);
    snprintf(p, sizeof p, "%s/node1.%d.ck5.rows", spool, (int)pid);
    assert_int_equal(access(p, F_OK), -1);
    snprintf(p, sizeof p, "%s/partial/node1.%d.abc.part", cache, (int)pid);
    assert_int_equal(access(p, F_OK), -1);
    /* our partial path carries our tag; close removes it */
    assert_int_equal(cache_partial_path(c, "abc", p, sizeof p, &e), 0);
    char want[600];
    snprintf(want, sizeof want, "%s/partial/node1.%d.abc.part", cache_root(c), (int)getpid());
    assert_string_equal(p, want);
    close(open(p, O_WRONLY | O_CREAT, 0644));
    cache_close(c);
    assert_int_equal(access(p, F_OK), -1);
    owner_close(o);
}

/* Reservations are shared: a second cache handle (another owner) sees
 * the first one's, and the budget counts both. */
static void test_shared_reservations(void **state)
{
    (void)state;
    struct err e;
    struct cache_room room;
    char root[300];
    snprintf(root, sizeof root, "%s/shared", dir);
    int up[2], down[2];
    assert_int_equal(pipe(up), 0);
    assert_int_equal(pipe(down), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) { /* holds 600 of 1000 bytes */
        struct cache *c = cache_open_as(root, 1000, "a", NULL);
        char b = 1;
        if (!c || cache_reserve(c, 600, NULL, NULL) < 0 || write(up[1], &b, 1) != 1)
            _exit(1);
        if (read(down[0], &b, 1) < 0)
            _exit(1);
        cache_release(c, 600);
        if (write(up[1], &b, 1) != 1)
            _exit(1);
        if (read(down[0], &b, 1) < 0)
            _exit(1);
        _exit(0); /* dies holding nothing... */
    }
    char b;
    assert_int_equal(read(up[0], &b, 1), 1);
    struct cache *c = cache_open_as(root, 1000, "b", &e);
    assert_non_null(c);
    assert_int_equal(cache_reserve(c, 500, &room, &e), ERR_INVALID);
    assert_int_equal(room.reserved, 600);
    assert_non_null(strstr(e.msg, "600 bytes promised to other downloads"));
    assert_int_equal(cache_reserve(c, 400, &room, &e), 0);
    assert_int_equal(cache_reserved(c), 400);
    assert_int_equal(write(down[1], &b, 1), 1); /* the other releases */
    assert_int_equal(read(up[0], &b, 1), 1);
    assert_int_equal(cache_reserve(c, 500, &room, &e), 0);
    assert_int_equal(room.reserved, 400);
    cache_release(c, 900);
    /* a reservation of a process killed outright does not count */
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    pid = fork();
    if (pid == 0) {
        struct cache *k = cache_open_as(root, 1000, "k", NULL);
        if (!k || cache_reserve(k, 900, NULL, NULL) < 0)
            _exit(1);
        raise(SIGKILL);
    }
    waitpid(pid, NULL, 0);
    assert_int_equal(cache_reserve(c, 1000, &room, &e), 0);
    assert_int_equal(room.reserved, 0);
    cache_close(c);
    close(up[0]);
    close(down[1]);
}

/* A snapshot staged but never analysed is kept while the process that
 * staged it lives, and evictable once it is dead (killed before its
 * worker ran: nobody will analyse it) or has unpinned it. */
static void test_dead_stager_evictable(void **state)
{
    (void)state;
    struct err e;
    char root[300], key[CACHE_KEY_MAX];
    snprintf(root, sizeof root, "%s/evict", dir);
    assert_int_equal(cache_key("file:///x/step{step}", "step1", key, sizeof key, &e), 0);
    /* sha256("hello") */
    const char *sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    int up[2];
    assert_int_equal(pipe(up), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char p[600];
        struct cache *c = cache_open_as(root, 0, "stager", NULL);
        if (!c || cache_partial_path(c, "h", p, sizeof p, NULL) < 0)
            _exit(1);
        FILE *f = fopen(p, "w");
        if (!f || fputs("hello", f) < 0 || fclose(f) != 0 || cache_put_blob(c, p, sha, NULL) < 0 ||
            cache_snapshot_add(c, key, "f", 5, sha, NULL) < 0 ||
            cache_snapshot_complete(c, key, NULL) < 0)
            _exit(1);
        char b = 1;
        if (write(up[1], &b, 1) != 1)
            _exit(1);
        pause();
        _exit(0);
    }
    char b;
    assert_int_equal(read(up[0], &b, 1), 1);
    struct cache *c = cache_open_as(root, 1, "evictor", &e); /* a budget of one byte */
    assert_non_null(c);
    assert_int_equal(cache_evict(c, NULL, &e), 0);
    assert_true(cache_has_blob(c, sha)); /* its stager lives */
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    long long freed = 0;
    assert_int_equal(cache_evict(c, &freed, &e), 0);
    assert_int_equal(freed, 5);
    assert_false(cache_has_blob(c, sha));

    /* our own snapshot: kept while pinned, released (evictable) by the
     * last unpin when it was not analysed, though we live */
    char p[600];
    assert_int_equal(cache_pin(c, key, &e), 0);
    assert_int_equal(cache_partial_path(c, "h", p, sizeof p, &e), 0);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs("hello", f);
    fclose(f);
    assert_int_equal(cache_put_blob(c, p, sha, &e), 0);
    assert_int_equal(cache_snapshot_add(c, key, "f", 5, sha, &e), 0);
    assert_int_equal(cache_snapshot_complete(c, key, &e), 0);
    assert_int_equal(cache_evict(c, NULL, &e), 0);
    assert_true(cache_has_blob(c, sha)); /* pinned */
    cache_unpin(c, key);
    assert_int_equal(cache_evict(c, &freed, &e), 0);
    assert_int_equal(freed, 5);
    assert_false(cache_has_blob(c, sha));
    cache_close(c);
    close(up[0]);
    close(up[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tag),
        cmocka_unit_test_setup_teardown(test_live_and_dead, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spool_and_cache, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shared_reservations, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_stager_evictable, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
