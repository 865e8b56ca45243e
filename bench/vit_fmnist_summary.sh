#!/bin/sh
# vit_fmnist_summary.sh: the figures of runs of bench/vit_fmnist_recipe.sh
# (one per seed, say), one line each, then the mean and sample standard
# deviation of their test top-1 over the runs that have one. Each run's line
# gives what its directory holds: the test top-1 and loss of the last
# checkpoint (test.txt, the recipe's `anatomy eval`), the median step time
# and the sum of the step times over every part of the run (train.log's step
# lines, resumed parts included: validation and checkpoints are not in it),
# and the validation top-1 after each epoch (its val lines). The GPU bundle's
# `run.sh --vit` prints its summary with this script.
#
# usage: bench/vit_fmnist_summary.sh OUT_DIR...
# A run with no test.txt yet (still training, or stopped) is listed with
# '?' and left out of the mean; a directory with no train.log is an error
# (status 2), as is no directory at all.
set -eu
[ $# -gt 0 ] || { echo "usage: bench/vit_fmnist_summary.sh OUT_DIR... (runs of bench/vit_fmnist_recipe.sh)" >&2; exit 2; }
for d in "$@"; do
    [ -f "$d/train.log" ] || {
        echo "vit_fmnist_summary.sh: $d: no train.log here (not a run of bench/vit_fmnist_recipe.sh)" >&2; exit 2; }
done
accs=""
for d in "$@"; do
    acc=$(sed -n 's/^accuracy //p' "$d/test.txt" 2>/dev/null | tail -n 1)
    loss=$(sed -n 's/^loss //p' "$d/test.txt" 2>/dev/null | tail -n 1)
    test=$(awk -v a="$acc" -v l="$loss" 'BEGIN { if (a == "") print "? (no eval)"; else printf "%.2f%%, loss %.4f", 100 * a, l }')
    steps=$(awk '/^step +[0-9]+\// { for (i = 1; i < NF; i++) if ($(i+1) == "ms") print $i }' "$d/train.log" |
        sort -g | awk '{ v[NR] = $1; s += $1 }
            END { if (!NR) { print "no steps"; exit }
                  m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
                  printf "median step %.1f ms, %.0f s in %d steps", m, s / 1000, NR }')
    curve=$(awk '/^val / { for (i = 1; i < NF; i++) if ($i == "accuracy") printf "%s%.2f", n++ ? " " : "", 100 * $(i+1) }' "$d/train.log")
    printf '  %s: test top-1 %s; %s; validation by epoch: %s\n' "$(basename "$d")" "$test" "$steps" "${curve:-none}"
    [ -n "$acc" ] && accs="$accs $acc"
done
echo "$accs" | awk '{ for (i = 1; i <= NF; i++) { a[i] = 100 * $i; m += a[i] } n = NF
    if (n < 2) exit; m /= n; for (i = 1; i <= n; i++) v += (a[i] - m) ^ 2
    printf "  mean test top-1 %.2f%%, sample standard deviation %.2f, over %d runs\n", m, sqrt(v / (n - 1)), n }'
