/* cli.h: helpers shared by the subcommands (host/cmd_*.c). */
#ifndef ANATOMY_CLI_H
#define ANATOMY_CLI_H

#include <stddef.h>
#include <stdint.h>

/* Prints "anatomy: error: <msg>" on one line to stderr and exits with status 1. */
_Noreturn void cli_die(const char *fmt, ...);
/* Strict numeric parsing of option values: the whole string must parse and
 * lie in [lo, hi]; otherwise cli_die naming the option. */
long long cli_int(const char *opt, const char *s, long long lo, long long hi);
double cli_float(const char *opt, const char *s, double lo, double hi);

/* Ends the program for getopt_long's '?' (unknown option) or ':' (missing
 * value) result; subcommands parse with optstring ":" and opterr = 0. */
_Noreturn void cli_bad_option(const char *cmd, int c, char **argv);

/* --config FILE support: reads "key = value" lines (# comments, blank lines)
 * and returns a new argv with "--key=value" entries inserted before the
 * command-line arguments, so the command line wins. Keys must be long options
 * of the command (checked by getopt later). argv[0] is kept first. */
char **cli_expand_config(int *argc, char **argv);
/* Frees what cli_expand_config made (orig: the argv it was given). */
void cli_free_config(int argc, char **args, char **orig);

/* Subcommands: each parses its own options with getopt_long. */
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_prep(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_plot(int argc, char **argv);

#endif
