"""What a nanoGPT / llm.c user reaches for (issue 24): shape options on top of
a preset, no-bias models, rows at random offsets, a validation split from
the stream's end, and the counts eval and validation average over."""
import glob
import json
import os
import re
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file

from test_behaviour import fails, losses, ok, _same_checkpoints

BABY = ["--preset", "d2", "--vocab-size", "256", "--max-seq", "64",
        "--layers", "3", "--heads", "4", "--width", "32"]


def settings(out):
    m = re.search(r"^settings\s+(.*)$", out, re.M)
    assert m, out
    return m.group(1)


def params(out):
    return int(re.search(r"^parameters\s+([\d,]+)$", out, re.M).group(1).replace(",", ""))


def gpt_params(V, maxT, L, C, bias=True):
    """GPT-2's count, by hand: embeddings, then per block two layernorms,
    qkv, projection and the 4C MLP, then the final layernorm."""
    ln = C * (2 if bias else 1)
    block = 2 * ln + 3 * C * C + C * C + 4 * C * C + C * 4 * C
    if bias:
        block += 3 * C + C + 4 * C + C
    return V * C + maxT * C + L * block + ln


def st_metadata(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))["__metadata__"]


def test_shape_options_info_train_checkpoint(run, shard, tmp_path):
    """--layers/--heads/--width/--no-bias over a preset: info shows them and
    counts the parameters of that shape; a short training run builds that
    model, its checkpoint stores the shape (and no bias tensor), info and
    resume read it back, export to ckpt keeps it and to HF refuses."""
    out = ok(run("info", *BABY))
    assert settings(out) == "--vocab-size 256 --max-seq 64 --layers 3 --heads 4 --width 32"
    assert params(out) == gpt_params(256, 64, 3, 32)
    out = ok(run("info", *BABY, "--no-bias"))
    assert settings(out).endswith("--width 32 --no-bias")
    assert params(out) == gpt_params(256, 64, 3, 32, bias=False)
    assert re.search(r"^biases\s+none", out, re.M), out

    common = ["--data", shard, "--batch", "2", "--seq", "16", "--lr", "3e-3"]
    ok(run("train", *BABY, "--no-bias", *common, "--steps", "3", "--out", tmp_path / "r"))
    ck = tmp_path / "r" / "step_000003.safetensors"
    t = load_file(str(ck))
    assert not [k for k in t if k.endswith(".bias")], sorted(t)
    assert t["h.2.attn.c_attn.weight"].shape == (96, 32)  # the third of 3 layers, 3C x C
    md = st_metadata(ck)
    assert (md["L"], md["NH"], md["C"], md["nobias"]) == ("3", "4", "32", "1")
    assert settings(ok(run("info", "--init", ck))) == settings(out)
    ok(run("train", "--resume", ck, *common, "--steps", "4", "--out", tmp_path / "r2"))

    ok(run("export", "--init", ck, "--out", tmp_path / "w.safetensors", "--format", "ckpt"))
    assert settings(ok(run("info", "--init", tmp_path / "w.safetensors"))) == settings(out)
    fails(run("export", "--init", ck, "--out", tmp_path / "hf"), "--format hf", "no biases")


def test_shape_options_every_family(run):
    """One set of names across families; each family takes the dimensions it
    has, and the others are a clear error that lists what it does take."""
    for preset, extra, want in [
        ("bert-tiny", ["--layers", "3", "--heads", "2", "--width", "64"], "--layers 3 --heads 2 --width 64"),
        ("vit-mnist-tiny", ["--layers", "3", "--heads", "4", "--width", "16"], "--layers 3 --heads 4 --width 16"),
        ("patchts-tiny", ["--layers", "2", "--heads", "2", "--width", "12"], "--layers 2 --heads 2 --width 12"),
        ("tsgpt-tiny", ["--layers", "2", "--heads", "4", "--width", "8"], "--layers 2 --heads 4 --width 8"),
        ("lstm-tiny", ["--layers", "2", "--width", "24"], "--width 24 --layers 2"),
        ("rnn-tiny", ["--width", "20"], "--width 20"),
        ("ffnn-tiny", ["--width", "40"], "--width 40"),
    ]:
        assert want in settings(ok(run("info", "--preset", preset, *extra))), preset
    # --hidden is the older name of --width
    assert settings(ok(run("info", "--preset", "lstm-tiny", "--hidden", "24"))) == \
        settings(ok(run("info", "--preset", "lstm-tiny", "--width", "24")))
    fails(run("info", "--preset", "rnn-tiny", "--heads", "2"), "--heads", "rnn", "--width")
    fails(run("info", "--preset", "ffnn-tiny", "--layers", "2"), "--layers", "ffnn")
    for preset in ["lstm-tiny", "rnn-tiny", "ffnn-tiny"]:
        fails(run("info", "--preset", preset, "--no-bias"), "--no-bias", preset.split("-")[0])
    # every transformer family drops every bias vector, and counts fewer parameters
    for preset in ["d2", "bert-tiny", "vit-mnist-tiny", "patchts-tiny", "tsgpt-tiny"]:
        out = ok(run("info", "--preset", preset, "--no-bias", "--views"))
        assert "--no-bias" in settings(out).split(), preset
        assert not re.search(r"^\S*bias\s", out, re.M), out
        assert params(out) < params(ok(run("info", "--preset", preset))), preset
    for preset in ["d2", "bert-tiny", "vit-mnist-tiny", "patchts-tiny", "tsgpt-tiny"]:
        fails(run("info", "--preset", preset, "--heads", "3", "--width", "32"),
              "--heads 3", "--width 32")


def test_old_checkpoint_without_nobias_loads(run, shard, tmp_path):
    """A checkpoint written before --no-bias existed has no 'nobias' key: it
    loads as a model with biases."""
    ok(run("train", *BABY, "--data", shard, "--batch", "2", "--seq", "16", "--steps", "1",
           "--out", tmp_path / "r"))
    ck = tmp_path / "r" / "step_000001.safetensors"
    with open(ck, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        rest = f.read()
    del head["__metadata__"]["nobias"]
    h = json.dumps(head).encode()
    h += b" " * (-len(h) % 8)
    old = tmp_path / "old.safetensors"
    with open(old, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + rest)
    out = ok(run("info", "--init", old))
    assert "--no-bias" not in settings(out) and params(out) == gpt_params(256, 64, 3, 32)


@pytest.mark.parametrize("rows", ["random", "contiguous"])
def test_rows_resume_bit_exact(run, shard, tmp_path, rows):
    """12 steps equal 5 steps, resume, 7 more, in either row mode; and the
    two modes train on different batches."""
    common = ["--data", shard, "--batch", "4", "--seq", "32", "--lr", "3e-3", "--seed", "7",
              "--schedule", "constant", "--rows", rows]
    tiny = ["--preset", "d2", "--vocab-size", "256", "--max-seq", "64"]
    full = ok(run("train", *tiny, *common, "--steps", "12", "--out", tmp_path / "full"))
    ok(run("train", *tiny, *common, "--steps", "5", "--out", tmp_path / "half"))
    res = ok(run("train", "--resume", tmp_path / "half", *common, "--steps", "12",
                 "--out", tmp_path / "res"))
    assert losses(res) == losses(full)[5:], (losses(res), losses(full))
    _same_checkpoints(tmp_path / "full" / "step_000012.safetensors",
                      tmp_path / "res" / "step_000012.safetensors")
    other = "contiguous" if rows == "random" else "random"
    cmp = ok(run("train", *tiny, *common[:-1], other, "--steps", "2",
                 "--out", tmp_path / "other"))
    assert losses(cmp)[1] != losses(full)[1]
    # the mode is part of the batch layout a resume must keep
    fails(run("train", "--resume", tmp_path / "half", *common[:-1], other, "--steps", "12"),
          "--rows random", "batch layout")


def test_rows_random_errors(run, shard, tmp_path):
    common = ["--data", shard, "--batch", "2", "--seq", "16", "--steps", "1"]
    fails(run("train", "--preset", "d2", "--vocab-size", "256", "--max-seq", "64", *common,
              "--rows", "sideways"), "--rows", "sideways")
    fails(run("train", "--preset", "d2", "--vocab-size", "256", "--max-seq", "64", *common,
              "--rows", "random", "--shuffle"), "--rows random", "--shuffle")
    fails(run("train", "--preset", "lstm-tiny", "--vocab-size", "256", *common,
              "--rows", "random"), "--rows random", "lstm")


def _tokens(path):
    return np.fromfile(path, dtype=np.uint16, offset=1024)


def test_prep_split_from_end(run, tmp_path):
    """--val-from end holds out the stream's tail (a count or a fraction, as
    nanoGPT's data[int(n*0.9):]); the default keeps the head; --val-fraction 1
    is a validation-only prep that writes no *_train_* file."""
    rng = np.random.default_rng()
    text = bytes(rng.integers(32, 127, 5000 + int(rng.integers(0, 3000))).astype(np.uint8))
    n = len(text)
    src = tmp_path / "in.txt"
    src.write_bytes(text)
    data = np.frombuffer(text, dtype=np.uint8)

    def prep(prefix, *args):
        ok(run("prep", "--tokenizer", "bytes", "--input", src, "--out", tmp_path / prefix,
               "--shard-tokens", "2000", *args))
        tr = sorted(glob.glob(str(tmp_path / f"{prefix}_train_*.bin")))
        va = sorted(glob.glob(str(tmp_path / f"{prefix}_val_*.bin")))
        cat = lambda fs: np.concatenate([_tokens(f) for f in fs]) if fs else np.zeros(0)
        return cat(tr), cat(va), tr, va

    tr, va, _, _ = prep("end", "--val-from", "end", "--val-tokens", "700")
    assert np.array_equal(va, data[-700:]) and np.array_equal(tr, data[:-700])
    tr, va, _, _ = prep("frac", "--val-from", "end", "--val-fraction", "0.1")
    assert np.array_equal(tr, data[:int(n * 0.9)]) and np.array_equal(va, data[int(n * 0.9):])
    tr, va, _, _ = prep("head", "--val-fraction", "0.25")
    k = n - int(n * 0.75)
    assert np.array_equal(va, data[:k]) and np.array_equal(tr, data[k:])
    tr, va, trf, vaf = prep("valonly", "--val-fraction", "1")
    assert trf == [] and np.array_equal(va, data) and len(vaf) == (n + 1999) // 2000
    fails(run("prep", "--tokenizer", "bytes", "--input", src, "--out", tmp_path / "x",
              "--val-from", "middle"), "--val-from", "middle")
    fails(run("prep", "--tokenizer", "bytes", "--input", src, "--out", tmp_path / "x",
              "--val-fraction", "0.1", "--val-tokens", "5"), "--val-fraction", "--val-tokens")
    fails(run("prep", "--tokenizer", "bytes", "--input", src, "--out", tmp_path / "x",
              "--val-from", "end", "--val-tokens", str(n)), "--val-tokens", "none left")


def test_eval_and_validation_print_their_counts(run, shard, tmp_path):
    """Both say how many batches and tokens the loss averages; validation
    stops at the end of its data rather than counting wrapped batches."""
    rng = np.random.default_rng()
    from clihelpers import write_shard
    val = write_shard(tmp_path / "v_val_000000.bin", rng.integers(0, 256, 2 * 64 * 5 + 1))
    tiny = ["--preset", "d2", "--vocab-size", "256", "--max-seq", "64"]
    out = ok(run("train", *tiny, "--data", shard, "--val-data", val, "--batch", "2",
                 "--seq", "64", "--steps", "1", "--val-batches", "50", "--out", tmp_path / "r"))
    assert re.search(r"^val\s+1/1 \| loss \S+ \| 5 batches, 640 tokens$", out, re.M), out
    out = ok(run("eval", "--init", tmp_path / "r", "--data", val, "--batch", "2", "--seq", "64"))
    assert "averaged over 5 batches, 640 tokens (2 x 64 each)" in out, out
