"""Shared fixtures for the reference tests: where build/anatomy is, how to run
it, and the parsing of its output lines."""
import os
import re
import subprocess
import sys

import pytest

REF_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(REF_DIR))
sys.path.insert(0, REF_DIR)

STEP_RE = re.compile(r"^step\s+(\d+)/(\d+)\s+\|\s+loss\s+(\S+)")
NORM_RE = re.compile(r"\|\s+norm\s+(\S+)")
LOSS_RE = re.compile(r"^loss\s+(\S+)\s*$")


def anatomy_bin():
    """build/anatomy of this checkout; the ANATOMY_BIN environment variable overrides."""
    return os.environ.get("ANATOMY_BIN") or os.path.join(REPO, "build", "anatomy")


@pytest.fixture(scope="session")
def anatomy():
    """Returns run(*args) -> stdout of `anatomy args...`; a non-zero exit fails
    the test with the command and its stderr. A missing binary fails every test
    that needs it (never a silent skip)."""
    path = anatomy_bin()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"anatomy binary not found at {path}: run `make build/anatomy` "
                    "first, or set ANATOMY_BIN", pytrace=False)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    # Tiny shapes: spinning OpenMP workers only steal the 2 shared cores.
    env.setdefault("OMP_WAIT_POLICY", "passive")

    def run(*args, timeout=120):
        cmd = [path] + [str(a) for a in args]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        if p.returncode != 0:
            pytest.fail(f"`{' '.join(cmd)}` exited {p.returncode}\n"
                        f"stderr: {p.stderr.strip()}\nstdout tail: {p.stdout[-2000:]}",
                        pytrace=False)
        return p.stdout

    return run


def parse_eval_loss(out):
    """The value of the `loss <value>` line printed by `anatomy eval`."""
    vals = [float(m.group(1)) for m in map(LOSS_RE.match, out.splitlines()) if m]
    assert len(vals) == 1, f"expected one 'loss <value>' line, got:\n{out}"
    return vals[0]


def parse_steps(out, nsteps):
    """Losses (and norms where printed) of the `step k/N | loss ...` lines, in order."""
    losses, norms, idx = [], [], []
    for line in out.splitlines():
        m = STEP_RE.match(line)
        if not m:
            continue
        idx.append(int(m.group(1)))
        assert int(m.group(2)) == nsteps, f"step total is not {nsteps}: {line!r}"
        losses.append(float(m.group(3)))
        n = NORM_RE.search(line)
        norms.append(float(n.group(1)) if n else None)
    assert len(losses) == nsteps, f"expected {nsteps} step lines, got {len(losses)}:\n{out}"
    assert idx == list(range(idx[0], idx[0] + nsteps)), f"step numbers not consecutive: {idx}"
    return losses, norms
