/*
 * version.h - the release both binaries report (`ckptd --version`,
 * `ckpt-worker --version`, the ckptd_build_info metric, the nodes table).
 *
 *     printf("ckptd %s\n", CKPTD_VERSION);
 */
#ifndef CKPTD_VERSION_H
#define CKPTD_VERSION_H

#define CKPTD_VERSION "0.1.0"

#endif
