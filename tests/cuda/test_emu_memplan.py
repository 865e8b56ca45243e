"""The memory plan against the allocator: build/anatomy-emu (the CUDA backend
on the device emulator, whose cudaMemGetInfo counts every cudaMalloc byte)
prints the plan before it allocates anything and, before step 1, what each
category then holds on the device; the two must agree to the byte, and the
total must be what the emulated device reports in use. Then the fit check
against a small emulated device (ANATOMY_EMU_DEVICE_MB)."""
import os
import re
import subprocess

import pytest

from test_emu_train import binary, shard  # noqa: F401 (a fixture)

CATS = ["params", "grads", "master", "moments", "activations", "workspace", "total"]
LINE = (r"{}: " + r" \| ".join(rf"{c} ([0-9,]+) B" for c in CATS))
PLAN = re.compile(LINE.format(r"^memory plan per rank \([^)]*\)"), re.M)
USED = re.compile(LINE.format("^memory in use per rank"), re.M)
DEVICE = re.compile(r"the device reports ([0-9]+) B in use")
ASAN = "detect_leaks=0:detect_stack_use_after_return=0"


def emu(*args, **env):
    e = dict(os.environ, OMP_NUM_THREADS="2", ASAN_OPTIONS=ASAN, **env)
    return subprocess.run([binary("anatomy-emu")] + [str(a) for a in args],
                          capture_output=True, text=True, env=e, timeout=600)


def figures(regex, out):
    m = regex.search(out)
    assert m, out
    return dict(zip(CATS, (int(g.replace(",", "")) for g in m.groups())))


GPT2 = ["--preset", "d2", "--vocab-size", "256", "--max-seq", "64"]


@pytest.mark.parametrize("model,precision,extra", [
    (GPT2, "fp32", []), (GPT2, "bf16", []), (GPT2, "fp32", ["--recompute"]),
    (GPT2, "bf16", ["--recompute"]),
    (["--model", "ffnn", "--vocab-size", "256"], "bf16", []),
    (["--model", "lstm", "--vocab-size", "256"], "fp32", [])])
def test_plan_is_what_the_device_allocates(shard, model, precision, extra):
    p = emu("train", *model, "--data", shard, "--batch", "3", "--seq", "16", "--steps", "1",
            "--device", "cuda", "--precision", precision, *extra)
    assert p.returncode == 0, p.stderr
    plan, used = figures(PLAN, p.stdout), figures(USED, p.stdout)
    assert plan == used, (plan, used)
    assert sum(plan[c] for c in CATS[:-1]) == plan["total"]
    assert int(DEVICE.search(p.stdout).group(1)) == plan["total"]
    assert (plan["master"] > 0) == (precision == "bf16")
    assert plan["activations"] > 0 and plan["moments"] == 2 * plan["params"] * (
        2 if precision == "bf16" else 1)


def test_run_that_does_not_fit_the_device_stops_before_allocating(shard):
    """On a 16 MiB emulated device, batch 64 does not fit: the run stops with
    the largest batch that does, which then trains."""
    args = ["train", *GPT2, "--data", shard, "--seq", "32", "--steps", "1", "--device", "cuda",
            "--precision", "bf16"]
    p = emu(*args, "--batch", "64", ANATOMY_EMU_DEVICE_MB="16")
    assert p.returncode == 1
    m = re.search(r"--batch 64: the memory plan needs [0-9.]+ MiB per rank, more than the "
                  r"16.0 MiB of free device memory; the largest batch that fits is "
                  r"--batch ([0-9]+)", p.stderr)
    assert m, p.stderr
    assert "step" not in p.stdout and "memory in use" not in p.stdout
    fits = int(m.group(1))
    assert 1 <= fits < 64
    ok = emu(*args, "--batch", fits, ANATOMY_EMU_DEVICE_MB="16")
    assert ok.returncode == 0, ok.stderr
    assert figures(USED, ok.stdout)["total"] <= 16 << 20
    over = emu(*args, "--batch", fits + 1, ANATOMY_EMU_DEVICE_MB="16")
    assert over.returncode == 1 and f"is --batch {fits}" in over.stderr


def test_gpt2_124m_at_batch_64_fits_80_gib():
    """GPT-2 124M at B 64, T 1024 in bf16 plans to fit 80 GiB, with and
    without --recompute (which saves activations); at a 20 GiB limit train
    stops before allocating and names the largest batch that fits."""
    base = ["info", "--preset", "gpt2-124m", "--batch", "64", "--seq", "1024", "--device",
            "cuda", "--precision", "bf16", "--memory-limit", "80G"]
    plans = []
    for extra in ([], ["--recompute"]):
        p = emu(*base, *extra)
        assert p.returncode == 0, p.stderr
        assert "fits in --memory-limit 80.00 GiB" in p.stdout, p.stdout
        got = dict(re.findall(r"^  (\w+)\s+([0-9]+) B", p.stdout, re.M))
        plans.append({k: int(v) for k, v in got.items()})
    full, rec = plans
    assert rec["activations"] < full["activations"] and rec["total"] < full["total"] < 80 << 30
    # the logits alone: 64 x 1024 x 50,304 bf16, more than 2^31 elements
    assert full["activations"] > 64 * 1024 * 50304 * 2
    p = emu("train", "--preset", "gpt2-124m", "--data", "/nonexistent_*.bin", "--batch", "64",
            "--seq", "1024", "--device", "cuda", "--precision", "bf16", "--memory-limit", "20G")
    assert p.returncode == 1
    m = re.search(r"--batch 64: the memory plan needs [0-9.]+ GiB per rank, more than the "
                  r"20.00 GiB of --memory-limit; the largest batch that fits is --batch ([0-9]+)",
                  p.stderr)
    assert m, p.stderr
    assert 40 <= int(m.group(1)) < 64
