#!/bin/sh
# Builds and runs the CUDA kernel tests (called by `make test-kernels`, see
# mk/emu.mk for the variables it passes). Every build step and every Check
# test counts once in the summary line:
#   kernel tests: N passed, N failed
# usage: run_kernel_tests.sh EMU_BUILD_DIR
dir=$1
passed=0
failed=0
mkdir -p "$dir"
log=$dir/build.log
start=$(date +%s)

pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL: $1"; }

# Build everything that can be built; a failure here shows up below as a
# target make still considers out of date.
$MAKE --no-print-directory -k $EMU_KERNEL_OBJS $EMU_TEST_BINS $EMU_NVCC_OBJS $EMU_NATIVE_BINS >"$log" 2>&1 ||
	grep -E "error|Error" "$log" | head -40

# A target is built if it exists and is newer than its source and every
# header (a failed compile leaves an older one behind, or none).
built() {
	[ -f "$1" ] || return 1
	src=$(echo "$1" | sed -e "s|^$dir/[a-z]*/||" -e 's|\.o$||')
	rt=
	case "$1" in
	"$dir"/tests/*) src=tests/emu/$(basename "$1"); rt=kernels/cuda/emu/emu.cpp ;;
	"$dir"/native/*) src=tests/emu/$(basename "$1") ;;
	esac
	[ -z "$(find "$src.cu" $EMU_HDRS $rt -newer "$1" 2>/dev/null)" ]
}

for o in $EMU_KERNEL_OBJS; do
	if built "$o"; then pass; else fail "emulated compile of $o (see $log)"; fi
done
if [ -n "$NVCC" ]; then
	for o in $EMU_NVCC_OBJS; do
		if built "$o"; then pass; else fail "nvcc sm_80+sm_90 compile of $o (see $log)"; fi
	done
	echo "nvcc compile checks (sm_80, sm_90): $(echo $EMU_NVCC_OBJS | wc -w) files"
else
	echo "nvcc not found: compile checks skipped"
fi

# Emulated and native runs share one seed so integer digests can be compared.
seed=${TEST_SEED:-$(date +%s)}
export TEST_SEED=$seed
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:detect_stack_use_after_return=0}

run_suite() {	# binary, output file
	out=$("$1" 2>&1)
	rc=$?
	printf '%s\n' "$out" >"$2"
	printf '%s\n' "$out" | grep -v '^$'
	p=$(printf '%s\n' "$out" | sed -n 's/^[0-9]*%: Checks: \([0-9]*\), Failures: \([0-9]*\), Errors: \([0-9]*\).*/\1 \2 \3/p' | tail -1)
	if [ -z "$p" ]; then
		fail "$1 crashed or printed no summary (exit $rc)"
		return
	fi
	set -- $p
	passed=$((passed + $1 - $2 - $3))
	failed=$((failed + $2 + $3))
}

for t in $EMU_TEST_BINS; do
	echo "== $t (emulated, ANATOMY_EMU_SEED=${ANATOMY_EMU_SEED:-1}, TEST_SEED=$seed)"
	if built "$t"; then run_suite "$t" "$t.out"; else fail "build of $t (see $log)"; fi
done

if [ -n "$EMU_NATIVE_BINS" ]; then
	for t in $EMU_NATIVE_BINS; do
		echo "== $t (native GPU, TEST_SEED=$seed)"
		if built "$t"; then run_suite "$t" "$t.out"; else fail "native build of $t (see $log)"; fi
		emu=$dir/tests/$(basename "$t").out
		# exact kernels print "digest:" lines; the GPU must agree bit for bit
		if [ -f "$t.out" ] && [ -f "$emu" ]; then
			if [ "$(grep 'digest:' "$t.out")" = "$(grep 'digest:' "$emu")" ]; then pass; else
				fail "$(basename "$t"): native digests differ from the emulator's"
			fi
		fi
	done
else
	echo "no GPU (nvidia-smi absent or failing): kernel tests ran on the emulator only"
fi

echo "kernel tests: $passed passed, $failed failed ($(($(date +%s) - start)) s)"
[ "$failed" -eq 0 ]
