"""The GPT-2 reproduction recipe: configs/gpt2-{124m,350m}.conf and
scripts/gpt2_124m.sh.

The configs are fed to the real `anatomy train` (every key must be one of its
options, and the values must parse), with a tiny model and data overriding
them on the command line, and their values are checked against the
reference hyperparameters. The script runs with --dry-run, which prints the
commands it would run: which steps it skips depends on what exists (data,
binary, checkpoints), and those decisions are checked here.
"""
import os
import re
import subprocess

import numpy as np
import pytest

from clihelpers import write_shard

# not imported from conftest: tests/cli and tests/ref both have one, and which
# "conftest" module an import finds depends on the order pytest loaded them
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = os.path.join(REPO, "scripts", "gpt2_124m.sh")

REFERENCE = {  # the published GPT-2 124M reproductions' settings
    "total-batch": "524288", "seq": "1024", "steps": "19073", "warmup": "700",
    "schedule": "cosine", "lr-min-frac": "0.0", "weight-decay": "0.1", "grad-clip": "1.0",
    "val-every": "250", "ckpt-every": "5000",
}


def read_conf(name):
    kv = {}
    with open(os.path.join(REPO, "configs", name)) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                k, v = (s.strip() for s in line.split("=", 1))
                assert k not in kv, f"{name}: {k} twice"
                kv[k] = v
    return kv


@pytest.mark.parametrize("name,lr", [("gpt2-124m.conf", "6e-4"), ("gpt2-350m.conf", "3e-4")])
def test_config_values(name, lr):
    kv = read_conf(name)
    for k, v in REFERENCE.items():
        assert kv.get(k) == v, f"{name}: {k} = {kv.get(k)}, expected {v}"
    assert kv["lr"] == lr
    assert kv["data"].endswith("fineweb10B/fineweb_train_*.bin")
    assert kv["val-data"].endswith("fineweb10B/fineweb_val_*.bin")
    # the global batch is a whole number of micro-batches on 1 and on 8 GPUs
    per = int(kv["batch"]) * int(kv["seq"])
    assert int(kv["total-batch"]) % (per * 8) == 0
    # train takes exactly one model source: a config holding one could not resume
    assert not {"preset", "init", "resume"} & set(kv)


@pytest.mark.parametrize("name", ["gpt2-124m.conf", "gpt2-350m.conf"])
def test_config_is_accepted_by_train(run, tmp_path, name):
    """Every key is an option of `anatomy train`: one step of d2 on random
    tokens, everything the tiny run needs overriding the file."""
    rng = np.random.default_rng()
    data = write_shard(tmp_path / "t_train_000000.bin", rng.integers(0, 50257, 4096))
    rc, out, err = run("train", "--config", os.path.join(REPO, "configs", name), "--preset", "d2",
                       "--data", data, "--val-data", data, "--device", "cpu", "--precision", "fp32",
                       "--batch", "4", "--seq", "32", "--total-batch", "128", "--steps", "1",
                       "--hellaswag", os.path.join(REPO, "tests", "cli", "hellaswag_tiny.jsonl"),
                       "--val-batches", "1", "--sample-every", "0", "--out", tmp_path / "run")
    assert rc == 0, err
    assert "accumulation" in out and os.path.exists(tmp_path / "run" / "step_000001.safetensors")
    # an unknown key in a copy of the file must be refused: the check above can fail
    bad = tmp_path / "bad.conf"
    bad.write_text(open(os.path.join(REPO, "configs", name)).read() + "no-such-option = 500\n")
    rc, _, err = run("train", "--config", bad, "--preset", "d2", "--data", data, "--steps", "1")
    assert rc == 1 and "unknown option" in err, err


def dry(tmp_path, extra_env=None, args=()):
    env = dict(os.environ, DATA_DIR=str(tmp_path / "fw"), OUT=str(tmp_path / "run"),
               HELLASWAG=str(tmp_path / "hs" / "hellaswag_val.jsonl"),
               ANATOMY=str(tmp_path / "bin" / "anatomy-cuda"), NGPU="1")
    env.update(extra_env or {})
    p = subprocess.run(["sh", SCRIPT, "--dry-run", *args], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def commands(out):
    return [line[2:] for line in out.splitlines() if line.startswith("+ ")]


def test_syntax():
    subprocess.run(["sh", "-n", SCRIPT], check=True)


def test_dry_run_from_nothing(tmp_path):
    """Nothing exists: fetch both data sets, build, train a fresh run, evaluate."""
    cmds = commands(dry(tmp_path))
    assert cmds[0] == f"sh data/recipes/fineweb10B.sh 103 {tmp_path}/fw"
    assert cmds[1] == f"sh data/recipes/hellaswag.sh {tmp_path}/hs"
    assert cmds[2].startswith("make ") and cmds[2].endswith(f"{tmp_path}/bin/anatomy-cuda")
    train = cmds[3]
    assert train.startswith(f"{tmp_path}/bin/anatomy-cuda train --config configs/gpt2-124m.conf "
                            "--preset gpt2-124m ")
    assert f"--data '{tmp_path}/fw/fineweb_train_*.bin'" in train  # quoted: not expanded
    assert f"--out {tmp_path}/run --steps 19073" in train
    final = f"{tmp_path}/run/step_019073.safetensors"
    assert re.search(rf"eval --init {final} --data {tmp_path}/fw/fineweb_val_000000.bin", cmds[4])
    assert f"eval --init {final} --hellaswag {tmp_path}/hs/hellaswag_val.jsonl" in cmds[5]
    assert len(cmds) == 6


def test_dry_run_with_everything_present_resumes(tmp_path):
    """Data, binary and a checkpoint exist: no fetch, no build, --resume; extra
    options after -- go to train; 8 GPUs go through mpirun."""
    (tmp_path / "fw").mkdir()
    for f in ("fineweb_val_000000.bin", "fineweb_train_000103.bin"):
        (tmp_path / "fw" / f).write_bytes(b"")
    (tmp_path / "hs").mkdir()
    (tmp_path / "hs" / "hellaswag_val.jsonl").write_text("")
    (tmp_path / "bin").mkdir()
    exe = tmp_path / "bin" / "anatomy-cuda"
    exe.write_text("#!/bin/sh\nexit 3\n")
    exe.chmod(0o755)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "step_005000.safetensors").write_bytes(b"")
    cmds = commands(dry(tmp_path, {"NGPU": "8"}, ["--", "--batch", "64"]))
    assert len(cmds) == 3, cmds
    assert cmds[0].startswith("mpirun -np 8 ")
    assert f"train --config configs/gpt2-124m.conf --resume {tmp_path}/run " in cmds[0]
    assert cmds[0].endswith("--batch 64")


def test_dry_run_env_launcher_and_finished_run(tmp_path):
    """LAUNCHER=env starts one rank per GPU with torchrun-style variables; a
    run whose final checkpoint exists is only evaluated."""
    cmds = commands(dry(tmp_path, {"NGPU": "2", "LAUNCHER": "env"}))
    ranks = [c for c in cmds if c.startswith("env RANK=")]
    assert [c.split()[1:3] for c in ranks] == [["RANK=0", "WORLD_SIZE=2"], ["RANK=1", "WORLD_SIZE=2"]]
    assert all("LOCAL_RANK=" in c and "MASTER_ADDR=" in c for c in ranks)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "step_000010.safetensors").write_bytes(b"")
    out = dry(tmp_path, {"STEPS": "10"})
    assert "training is done" in out
    assert not [c for c in commands(out) if " train " in c]
