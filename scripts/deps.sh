#!/bin/sh
# Installs anatomy's dependencies. As root: apt-get and pip do it. Otherwise
# prints the commands to run. Safe to run again: installed packages are skipped.
set -e
APT_PKGS="build-essential pkg-config check libsubunit-dev libopenblas-dev libopenmpi-dev openmpi-bin libpcre2-dev clang libclang-rt-14-dev curl gnuplot-nox dataset-fashion-mnist"
# scipy-openblas32: a current OpenBLAS that picks its kernel by CPU features
# (mk/blas.mk links it; Debian's 0.3.21 falls back to SSE3 on newer CPUs).
PIP_PKGS="numpy torch transformers safetensors tiktoken tokenizers pytest scipy-openblas32"
PYTHON=${PYTHON:-python3}

missing_apt=""
for p in $APT_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing_apt="$missing_apt $p"
done
missing_pip=""
for p in $PIP_PKGS; do
    mod=$(echo "$p" | tr - _)  # the module a package installs: scipy-openblas32 -> scipy_openblas32
    $PYTHON -c "import importlib.util,sys; sys.exit(0 if importlib.util.find_spec('$mod') else 1)" 2>/dev/null \
        || missing_pip="$missing_pip $p"
done

if [ -z "$missing_apt" ] && [ -z "$missing_pip" ]; then
    echo "deps: everything is installed"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "deps: missing packages; run as root:"
    [ -n "$missing_apt" ] && echo "  apt-get update && apt-get install -y$missing_apt"
    [ -n "$missing_pip" ] && echo "  $PYTHON -m pip install$missing_pip"
    exit 1
fi
if [ -n "$missing_apt" ]; then
    echo "deps: apt-get install$missing_apt"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing_apt
fi
if [ -n "$missing_pip" ]; then
    echo "deps: pip install$missing_pip"
    $PYTHON -m pip install -q $missing_pip
fi
