#!/bin/sh
# Runs every Check suite binary given, then prints one summary line.
# usage: run_c_tests.sh BUILD_DIR TEST_BIN...
build=$1; shift
fail=0; passed=0; failed=0
for t in "$@"; do
    echo "== $t"
    out=$("$t" 2>&1); rc=$?
    echo "$out" | grep -v '^$'
    p=$(echo "$out" | sed -n 's/^[0-9]*%: Checks: \([0-9]*\), Failures: \([0-9]*\), Errors: \([0-9]*\).*/\1 \2 \3/p' | tail -1)
    if [ -n "$p" ]; then
        set -- $p "$@"
        passed=$((passed + $1 - $2 - $3)); failed=$((failed + $2 + $3)); shift 3
    fi
    [ $rc -ne 0 ] && fail=1
done
echo "C suites: $passed passed, $failed failed"
exit $fail
