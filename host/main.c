/* main.c: `anatomy <command> [options]`: dispatches to host/cmd_*.c. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *what;
} commands[] = {
    { "train", cmd_train, "train a model (from a preset, initial weights or a checkpoint)" },
    { "eval", cmd_eval, "mean loss of a model on token shards" },
    { "sample", cmd_sample, "generate text from a model" },
    { "export", cmd_export, "write a model or a mean of models (HF directory or checkpoint)" },
    { "info", cmd_info, "print a model's configuration and parameter count" },
    { "prep", cmd_prep, "turn text into token shards" },
    { "tokenize", cmd_tokenize, "text to token ids, or ids back to text" },
    { "plot", cmd_plot, "draw runs' training curves into a PNG (with gnuplot)" },
};

static void usage(FILE *f)
{
    fprintf(f, "usage: anatomy <command> [options]   (anatomy <command> --help for its options)\n\n"
               "Trains the neural language models of \"Anatomy of Neural Language Models\".\n\n"
               "commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-9s %s\n", commands[i].name, commands[i].what);
    fprintf(f, "\nEvery command also reads options from --config FILE (key = value lines\n"
               "named like the long options); the command line wins.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    opterr = 0; /* bad options are reported by cli_bad_option, in one line */
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(argv[1], commands[i].name) == 0) {
            int n = argc - 1;
            char **args = cli_expand_config(&n, argv + 1);
            int rc = commands[i].run(n, args);
            cli_free_config(n, args, argv + 1);
            return rc;
        }
    }
    cli_die("unknown command '%s' (try 'anatomy --help')", argv[1]);
}
