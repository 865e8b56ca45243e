"""Bad input through the command line: every case must end with status 1 and a
single stderr line `anatomy: error: <file or option>: <what is wrong>` that
names the culprit; never a crash (signal), a hang or a Python-style trace.
Each case starts from a valid tiny model and shard and breaks one thing."""
import json
import os
import random
import shutil
import struct
import subprocess

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import anatomy_bin, parse_eval_loss
from gpt2_ref import GPT2Ref, Config, write_llmc_model, write_shard

SEED = int(os.environ.get("ANATOMY_TEST_SEED") or random.SystemRandom().randrange(1 << 31))
CFG = Config(V=300, maxT=64, L=1, NH=4, C=32)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(SEED)
    m = GPT2Ref(CFG).init_random(SEED)
    m.save_hf(str(d / "hf"))
    write_llmc_model(m, str(d / "model.bin"))
    write_shard(str(d / "tok.bin"), rng.integers(0, CFG.V, 4096))
    return d


def run_bad(*args):
    path = anatomy_bin()
    if not os.path.isfile(path):
        pytest.fail(f"anatomy binary not found at {path}: run `make build/anatomy` "
                    "first, or set ANATOMY_BIN", pytrace=False)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([path] + [str(a) for a in args], capture_output=True, text=True,
                       env=env, timeout=60)
    return p.returncode, p.stdout, p.stderr


def expect_error(names, *args):
    """Runs anatomy and checks the failure contract; `names` must appear in the message."""
    rc, out, err = run_bad(*args)
    cmd = " ".join(str(a) for a in args)
    assert rc == 1, f"`anatomy {cmd}`: exit {rc} (want 1)\nstderr: {err}\nstdout: {out[-500:]}"
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, f"`anatomy {cmd}`: want one stderr line, got:\n{err}"
    assert lines[0].startswith("anatomy: error: "), f"`anatomy {cmd}`: {lines[0]!r}"
    assert names in lines[0], f"`anatomy {cmd}`: message does not name {names!r}: {lines[0]!r}"
    return lines[0]


def eval_args(good, init=None, data=None, seq=32):
    return ["eval", "--init", init or good / "hf", "--data", data or good / "tok.bin",
            "--batch", 2, "--seq", seq, "--batches", 1]


def test_good_inputs_work(anatomy, good):
    """The unbroken files evaluate, HF dir and llm.c file alike (guards the cases below)."""
    a = parse_eval_loss(anatomy(*eval_args(good)))
    b = parse_eval_loss(anatomy(*eval_args(good, init=good / "model.bin")))
    assert abs(a - b) <= 1e-6 * abs(a), f"HF dir {a} vs llm.c file {b}"


def test_truncated_shard(good, tmp_path):
    p = tmp_path / "trunc.bin"
    data = (good / "tok.bin").read_bytes()
    p.write_bytes(data[:len(data) - 100])
    expect_error(str(p), *eval_args(good, data=p))


def test_foreign_shard(good, tmp_path):
    p = tmp_path / "foreign.bin"
    data = bytearray((good / "tok.bin").read_bytes())
    data[0:4] = struct.pack("<i", 12345678)
    p.write_bytes(bytes(data))
    expect_error(str(p), *eval_args(good, data=p))


def test_header_only_shard(good, tmp_path):
    p = tmp_path / "short.bin"
    p.write_bytes(b"\x00" * 100)
    expect_error(str(p), *eval_args(good, data=p))


def test_token_out_of_vocab(good, tmp_path):
    p = tmp_path / "oov.bin"
    toks = np.random.default_rng(SEED).integers(0, CFG.V, 4096)
    toks[17] = CFG.V + 5  # inside the first micro-batch
    write_shard(str(p), toks)
    expect_error(str(p), *eval_args(good, data=p))


def test_missing_data(good, tmp_path):
    expect_error(str(tmp_path / "nothing_*.bin"), *eval_args(good, data=tmp_path / "nothing_*.bin"))


def test_seq_longer_than_context(good):
    expect_error("--seq", *eval_args(good, seq=CFG.maxT * 2))


@pytest.mark.parametrize("opt,val", [("--batch", "0"), ("--batch", "abc"), ("--seq", "-3"),
                                     ("--batches", "1x")])
def test_bad_option_values(good, opt, val):
    args = eval_args(good)
    args[args.index(opt) + 1] = val
    expect_error(opt, *args)


def test_heads_do_not_divide_width(good, tmp_path):
    d = tmp_path / "hf"
    shutil.copytree(good / "hf", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["n_head"] = 5
    (d / "config.json").write_text(json.dumps(cfg))
    expect_error("config.json", *eval_args(good, init=d))


def test_malformed_config_json(good, tmp_path):
    d = tmp_path / "hf"
    shutil.copytree(good / "hf", d)
    (d / "config.json").write_text('{"n_embd": 32, "n_layer": ')
    expect_error("config.json", *eval_args(good, init=d))


def test_missing_tensor(good, tmp_path):
    d = tmp_path / "hf"
    shutil.copytree(good / "hf", d)
    sd = load_file(str(d / "model.safetensors"))
    del sd["h.0.mlp.c_fc.bias"]
    save_file(sd, str(d / "model.safetensors"))
    expect_error("h.0.mlp.c_fc.bias", *eval_args(good, init=d))


def test_wrong_tensor_shape(good, tmp_path):
    d = tmp_path / "hf"
    shutil.copytree(good / "hf", d)
    sd = load_file(str(d / "model.safetensors"))
    sd["h.0.attn.c_proj.weight"] = torch.zeros(CFG.C, CFG.C + 1)
    save_file(sd, str(d / "model.safetensors"))
    expect_error("h.0.attn.c_proj.weight", *eval_args(good, init=d))


def test_truncated_safetensors(good, tmp_path):
    d = tmp_path / "hf"
    shutil.copytree(good / "hf", d)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:len(data) // 2])
    expect_error("model.safetensors", *eval_args(good, init=d))


def test_truncated_llmc_file(good, tmp_path):
    p = tmp_path / "model.bin"
    data = (good / "model.bin").read_bytes()
    p.write_bytes(data[:len(data) - 4])
    expect_error(str(p), *eval_args(good, init=p))


def test_safetensors_that_is_not_a_checkpoint(good):
    """A bare HF model.safetensors (no anatomy metadata) is not a checkpoint."""
    p = good / "hf" / "model.safetensors"
    expect_error(str(p), *eval_args(good, init=p))


def train_args(good, tmp_path):
    return ["train", "--init", good / "hf", "--data", good / "tok.bin", "--batch", 2,
            "--seq", 16, "--steps", 2, "--lr", "1e-3", "--out", tmp_path / "run"]


@pytest.mark.parametrize("opt,val", [("--total-batch", "40"), ("--schedule", "linearish"),
                                     ("--lr", "nan"), ("--grad-clip", "-1")])
def test_bad_train_options(good, tmp_path, opt, val):
    """Bad training options are refused before any checkpoint is written."""
    expect_error(opt, *train_args(good, tmp_path), opt, val)
    run = tmp_path / "run"
    assert not (run.exists() and list(run.glob("*.safetensors"))), f"{opt} {val}: a checkpoint was written"
