"""The GPU loss-curve parity harness (bench/gpt2_parity.sh), checked at tiny
scale on the CPU, where both sides are exact enough to agree at every step.

`gpt2_parity.sh --tiny` trains a d2 GPT-2 (vocabulary 512, T 64, B 4, two
micro-batches per step, 30 steps, fp32) from one exported initialisation in
anatomy (CPU backend) and in bench/torch_gpt2_train.py (torch fp32), on a
fresh random token stream in two shards: torch A in the loader's plain order,
torch B and a second anatomy run in the shuffled order of seed SEED_B. Equal
losses, gradient norms and learning rates at every step prove that the torch
script reads anatomy's micro-batches in anatomy's order (both orders, across
shard boundaries and the stream's wrap-around) and implements the same
AdamW, decay groups, clipping and schedule. So on the GPU the harness's
difference between ours and torch A is the arithmetic's, nothing else.

The token stream is fresh on every run (its seed is printed in failures;
ANATOMY_TEST_SEED=N replays one).
"""
import json
import os
import random
import shutil
import subprocess
import sys

import pytest

# not imported from conftest: tests/cli and tests/ref both have one, and which
# "conftest" module an import finds depends on the order pytest loaded them
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def anatomy_bin():
    """build/anatomy of this checkout; ANATOMY_BIN overrides (as tests/ref/conftest.py)."""
    return os.environ.get("ANATOMY_BIN") or os.path.join(REPO, "build", "anatomy")

SEED = int(os.environ.get("ANATOMY_TEST_SEED") or random.SystemRandom().randrange(1 << 31))
STEPS = 30
# fp32 on both sides; observed while writing this: at most ~3e-7 over 30
# steps; the brief's bound is 1e-4 relative.
RTOL = 1e-4
NORM_RTOL = 1e-3   # anatomy writes the norm with 6 decimals


def seedmsg():
    return f"(ANATOMY_TEST_SEED={SEED})"


def read_log(path):
    train, val = {}, {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if "loss" in r:
                train[r["step"]] = r
            if "val_loss" in r:
                val[r["step"]] = r["val_loss"]
    return train, val


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    if not os.access(anatomy_bin(), os.X_OK):
        pytest.fail(f"{anatomy_bin()} not found: make build/anatomy", pytrace=False)
    work = tmp_path_factory.mktemp("parity")
    env = dict(os.environ, WORK=str(work), DATA_SEED=str(SEED), SEED_B=str(SEED % 1000 + 1),
               PYTHON=sys.executable,
               ANATOMY=anatomy_bin(), ANATOMY_CPU=anatomy_bin())
    p = subprocess.run(["sh", os.path.join(REPO, "bench", "gpt2_parity.sh"), "--tiny"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    if p.returncode != 0:
        pytest.fail(f"gpt2_parity.sh --tiny exited {p.returncode} {seedmsg()}\n"
                    f"stdout: {p.stdout[-3000:]}\nstderr: {p.stderr[-2000:]}", pytrace=False)
    return work, p.stdout


def test_same_batches_same_curve(harness):
    """ours and torch A: the same loss, norm and lr at every step, and the same
    validation losses."""
    work, _ = harness
    ours, ours_val = read_log(work / "anatomy" / "log.jsonl")
    ta, ta_val = read_log(work / "torch-A" / "log.jsonl")
    assert sorted(ours) == list(range(1, STEPS + 1)) == sorted(ta), seedmsg()
    for s in range(1, STEPS + 1):
        o, t = ours[s], ta[s]
        for key, tol in (("loss", RTOL), ("norm", NORM_RTOL), ("lr", 1e-5)):
            assert o[key] == o[key] and t[key] == t[key], f"NaN at step {s} {seedmsg()}"
            rel = abs(o[key] - t[key]) / abs(t[key])
            assert rel <= tol, f"step {s} {key}: ours {o[key]} torch {t[key]} (rel {rel:.2e}) {seedmsg()}"
    assert sorted(ours_val) == sorted(ta_val) == [10, 20, 30], seedmsg()
    for s in ours_val:
        assert abs(ours_val[s] - ta_val[s]) / ta_val[s] <= RTOL, f"val {s} {seedmsg()}"
    # the comparison means something only if training moved the loss
    assert ours[STEPS]["loss"] < ours[1]["loss"] - 0.5, seedmsg()


def test_shuffled_order_is_the_same(harness):
    """anatomy --shuffle --seed S and torch B (the Python re-implementation of
    shard.c's permutation) see the same batches; and that order really differs
    from the plain one (A and B differ)."""
    work, _ = harness
    ob, _ = read_log(work / "anatomy-B" / "log.jsonl")
    tb, _ = read_log(work / "torch-B" / "log.jsonl")
    ta, _ = read_log(work / "torch-A" / "log.jsonl")
    for s in range(1, STEPS + 1):
        rel = abs(ob[s]["loss"] - tb[s]["loss"]) / tb[s]["loss"]
        assert rel <= RTOL, f"step {s}: ours {ob[s]['loss']} torch B {tb[s]['loss']} {seedmsg()}"
    differ = sum(abs(ta[s]["loss"] - tb[s]["loss"]) > 1e-3 for s in range(1, STEPS + 1))
    assert differ >= STEPS // 2, f"orders A and B look alike ({differ} steps differ) {seedmsg()}"


def test_summary_table(harness):
    """The printed table has the requested columns and the tail mean."""
    _, out = harness
    assert "| step | ours | torch A | torch B | abs(ours - A) | abs(A - B) |" in out
    assert "| mean of steps 1-30 |" in out
    assert "max over all 30 steps of abs(ours - A) / A:" in out


def test_summary_catches_a_difference(harness, tmp_path):
    """The harness's own check can fail: one step's loss moved by 3e-4
    relative in a copy of torch A's log must be reported."""
    work, _ = harness
    bad = tmp_path / "torch-A"
    shutil.copytree(work / "torch-A", bad)
    lines = (bad / "log.jsonl").read_text().splitlines()
    k = random.Random(SEED).randrange(len(lines))
    while "val_loss" in lines[k]:
        k = (k + 1) % len(lines)
    r = json.loads(lines[k])
    r["loss"] *= 1 + 3e-4
    lines[k] = json.dumps(r)
    (bad / "log.jsonl").write_text("\n".join(lines) + "\n")
    p = subprocess.run([sys.executable, os.path.join(REPO, "bench", "torch_gpt2_train.py"), "--summary",
                        str(work / "anatomy"), str(bad), str(work / "torch-B"), "--tol", str(RTOL)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "parity FAILED" in p.stderr, (p.stdout, p.stderr, seedmsg())
