/*
 * test_atomic_file - common/atomic_file.h, the one writer that replaces
 * files: the whole new file or the old one, never a part, and no
 * temporary left behind whatever happens.
 *
 *   write     one buffer replaces a file; its mode is 0666 less the umask
 *   stream    a file written piecewise (4 MiB) arrives whole at commit, not
 *             before: until then the old file is what a reader sees
 *   abort     an aborted write leaves the old file and no temporary
 *   failures  a missing directory, a directory where the file should go, a
 *             path too long: an error naming the path, nothing left behind
 *   unique    two writers of one target at once get different temporaries;
 *             the last commit wins
 *   place     a finished file moved into place; a failed move leaves it
 *   link      hard and symbolic links replace what is at a path
 */
#include <dirent.h>
#include <errno.h>
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

#include "common/atomic_file.h"
#include "tests/lib/test_files.h"

static int dir_setup(void **state)
{
    char *d = malloc(64);
    if (!d || scratch_make(d, 64, "ckptd_test_atomic_") < 0)
        return -1;
    *state = d;
    return 0;
}

static int dir_teardown(void **state)
{
    int rc = scratch_remove(*state);
    free(*state);
    return rc;
}

/* The names in dir, sorted, joined by spaces. */
static void listing(const char *dir, char *out, size_t n)
{
    struct dirent **v = NULL;
    int k = scandir(dir, &v, NULL, alphasort);
    size_t o = 0;
    out[0] = '\0';
    for (int i = 0; i < k; i++) {
        if (v[i]->d_name[0] != '.' && o < n)
            o += (size_t)snprintf(out + o, n - o, "%s%s", o ? " " : "", v[i]->d_name);
        free(v[i]);
    }
    free(v);
}

static void expect_file(const char *path, const char *want)
{
    size_t n = 0;
    char *got = (char *)slurp(path, &n);
    assert_non_null(got);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(got, want, n);
    free(got);
}

static void test_write(void **state)
{
    const char *dir = *state;
    char *p = xasprintf("%s/a.json", dir);
    struct err e;
    assert_int_equal(atomic_file_write(p, "{\"v\": 1}\n", 9, &e), 0);
    expect_file(p, "{\"v\": 1}\n");
    assert_int_equal(atomic_file_write(p, "{}", 2, &e), 0);
    expect_file(p, "{}");
    assert_int_equal(atomic_file_write(p, "", 0, &e), 0);
    expect_file(p, "");
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    mode_t mask = umask(0);
    umask(mask);
    assert_int_equal(st.st_mode & 0777, 0666 & ~mask);
    char names[256];
    listing(dir, names, sizeof names);
    assert_string_equal(names, "a.json");
    free(p);
}

static void test_stream(void **state)
{
    const char *dir = *state;
    char *p = xasprintf("%s/big.bin", dir);
    struct err e;
    assert_int_equal(atomic_file_write(p, "old", 3, &e), 0);
    struct atomic_file af;
    assert_int_equal(atomic_file_open(&af, p, &e), 0);
    assert_non_null(af.f);
    assert_true(strncmp(af.tmp, p, strlen(p)) == 0 && strcmp(af.tmp, p) != 0);
    static unsigned char block[1 << 16];
    for (int i = 0; i < 64; i++) { /* 4 MiB */
        memset(block, i, sizeof block);
        assert_int_equal(fwrite(block, 1, sizeof block, af.f), sizeof block);
        if (i == 32)
            expect_file(p, "old"); /* a reader still sees the old file */
    }
    assert_int_equal(atomic_file_commit(&af, &e), 0);
    assert_null(af.f);
    size_t n = 0;
    unsigned char *got = slurp(p, &n);
    assert_int_equal(n, 64u << 16);
    for (int i = 0; i < 64; i++)
        assert_int_equal(got[(size_t)i << 16], i);
    free(got);
    assert_int_equal(access(af.tmp, F_OK), -1);
    atomic_file_abort(&af); /* after a commit: nothing */
    assert_int_equal(access(p, F_OK), 0);
    free(p);
}

static void test_abort(void **state)
{
    const char *dir = *state;
    char *p = xasprintf("%s/keep.txt", dir);
    struct err e;
    assert_int_equal(atomic_file_write(p, "kept", 4, &e), 0);
    struct atomic_file af;
    assert_int_equal(atomic_file_open(&af, p, &e), 0);
    fputs("half of someth", af.f);
    atomic_file_abort(&af);
    atomic_file_abort(&af);
    expect_file(p, "kept");
    char names[256];
    listing(dir, names, sizeof names);
    assert_string_equal(names, "keep.txt");
    /* a zeroed struct is safe to abort, a commit without an open fails */
    struct atomic_file z;
    memset(&z, 0, sizeof z);
    atomic_file_abort(&z);
    assert_int_equal(atomic_file_commit(&z, &e), ERR_INVALID);
    free(p);
}

static void test_failures(void **state)
{
    const char *dir = *state;
    struct err e;
    char *nodir = xasprintf("%s/no/such/x.json", dir);
    err_clear(&e);
    assert_int_equal(atomic_file_write(nodir, "x", 1, &e), ERR_IO);
    assert_non_null(strstr(err_str(&e), "x.json"));
    /* the target is a directory: the rename fails, the directory stays */
    char *sub = xasprintf("%s/sub", dir);
    assert_int_equal(mkdir(sub, 0755), 0);
    err_clear(&e);
    assert_int_equal(atomic_file_write(sub, "x", 1, &e), ERR_IO);
    assert_non_null(strstr(e.msg, "rename"));
    struct stat st;
    assert_int_equal(stat(sub, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    char names[256];
    listing(dir, names, sizeof names);
    assert_string_equal(names, "sub");
    /* a path that does not fit */
    char *longp = malloc(ATOMIC_FILE_PATH_MAX + 16);
    memset(longp, 'a', ATOMIC_FILE_PATH_MAX + 15);
    longp[ATOMIC_FILE_PATH_MAX + 15] = '\0';
    assert_int_equal(atomic_file_write(longp, "x", 1, &e), ERR_INVALID);
    rmdir(sub);
    free(longp);
    free(sub);
    free(nodir);
}

static void test_unique(void **state)
{
    const char *dir = *state;
    char *p = xasprintf("%s/same.txt", dir);
    struct err e;
    struct atomic_file a, b;
    assert_int_equal(atomic_file_open(&a, p, &e), 0);
    assert_int_equal(atomic_file_open(&b, p, &e), 0);
    assert_string_not_equal(a.tmp, b.tmp);
    fputs("first", a.f);
    fputs("second", b.f);
    assert_int_equal(atomic_file_commit(&b, &e), 0);
    assert_int_equal(atomic_file_commit(&a, &e), 0);
    expect_file(p, "first");
    char names[256];
    listing(dir, names, sizeof names);
    assert_string_equal(names, "same.txt");
    free(p);
}

static void test_place(void **state)
{
    const char *dir = *state;
    char *src = xasprintf("%s/part", dir), *dst = xasprintf("%s/blob", dir);
    char *nodst = xasprintf("%s/no/blob", dir);
    struct err e;
    assert_int_equal(atomic_file_write(src, "payload", 7, &e), 0);
    assert_int_equal(atomic_file_place(src, nodst, &e), ERR_IO);
    expect_file(src, "payload"); /* still where it was */
    assert_int_equal(atomic_file_write(dst, "old", 3, &e), 0);
    assert_int_equal(atomic_file_place(src, dst, &e), 0);
    expect_file(dst, "payload");
    assert_int_equal(access(src, F_OK), -1);
    assert_int_equal(atomic_file_place(src, dst, &e), ERR_IO); /* src is gone */
    free(nodst);
    free(dst);
    free(src);
}

static void test_link(void **state)
{
    const char *dir = *state;
    char *t = xasprintf("%s/target", dir), *l = xasprintf("%s/link", dir);
    struct err e;
    assert_int_equal(atomic_file_write(t, "T", 1, &e), 0);
    assert_int_equal(atomic_file_write(l, "old", 3, &e), 0);
    assert_int_equal(atomic_file_link(t, l, 0, &e), 0); /* hard: replaces the file */
    struct stat a, b;
    assert_int_equal(stat(t, &a), 0);
    assert_int_equal(lstat(l, &b), 0);
    assert_int_equal(a.st_ino, b.st_ino);
    assert_int_equal(atomic_file_link("target", l, 1, &e), 0); /* symbolic, relative */
    char buf[64];
    ssize_t n = readlink(l, buf, sizeof buf - 1);
    assert_int_equal(n, 6);
    buf[n] = '\0';
    assert_string_equal(buf, "target");
    expect_file(l, "T");
    char *nol = xasprintf("%s/no/link", dir);
    assert_int_equal(atomic_file_link(t, nol, 1, &e), ERR_IO);
    char names[256];
    listing(dir, names, sizeof names);
    assert_string_equal(names, "link target");
    free(nol);
    free(l);
    free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_write, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_stream, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_abort, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_failures, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_unique, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_place, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_link, dir_setup, dir_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
