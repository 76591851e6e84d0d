/*
 * fuzz_util.h - what the libFuzzer harnesses share: a scratch directory and
 * the input written to a file in it, for parsers that read only from paths.
 *
 * The scratch directory is made once per process under $TMPDIR (default
 * /dev/shm when it exists, so a write costs a few microseconds, else /tmp)
 * and removed with its files at exit.  Each harness writes the input to the
 * same name on every run, so nothing accumulates.
 *
 *     int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
 *     {
 *         const char *path = fuzz_write("config.json", data, size);
 *         struct gptneox_config cfg;
 *         if (path && gptneox_config_load(&cfg, path, NULL) == 0) ...
 *         return 0;
 *     }
 *
 * A harness's own check that fails (an invariant the parser promised)
 * calls fuzz_fail, which aborts: libFuzzer saves the input as a crash.
 */
#ifndef CKPTD_FUZZ_UTIL_H
#define CKPTD_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* The scratch directory (borrowed, lives until exit); aborts when none can
 * be made (the harness cannot run at all). */
const char *fuzz_dir(void);

/* Write data[0..size) to fuzz_dir()/name (name may hold one folder level,
 * made on demand) and return the full path, borrowed until the next call
 * with the same name; aborts when the file cannot be written. */
const char *fuzz_write(const char *name, const void *data, size_t size);

/* Read n bytes at p, so ASan sees a read out of bounds. */
void fuzz_touch(const void *p, size_t n);

/* The error contract of a failed call: rc is negative, e holds the same
 * code and a message; aborts (fuzz_fail) otherwise.  `what` names the call. */
void fuzz_check_err(const char *what, int rc, const struct err *e);

/* An invariant the code under test promised does not hold: print it and
 * abort, so libFuzzer keeps the input. */
void fuzz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
