/*
 * cli.h - the ckpt-worker commands.  Each command is a function taking its
 * own argv (argv[0] is the command name) and returning the process exit
 * status:
 *   0  success
 *   1  the input could not be processed (bad checkpoint, I/O, numbers)
 *   2  usage error (unknown option, missing argument)
 * Errors go to stderr as one logfmt line each; results go to stdout.
 */
#ifndef CKPTD_WORKER_CLI_H
#define CKPTD_WORKER_CLI_H

#define EXIT_INPUT 1
#define EXIT_USAGE 2

int cmd_inspect(int argc, char **argv);
int cmd_forward(int argc, char **argv);
int cmd_init(int argc, char **argv);
int cmd_battery(int argc, char **argv);
int cmd_analyze(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_sae(int argc, char **argv);

#endif
