"""`anatomy eval --hellaswag`: completion-style scoring checked against an
independent PyTorch evaluation (tests/ref/gpt2_ref.py) of the same weights,
that only the endings' tokens are scored, and one-line errors for bad files."""
import functools
import json
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from clihelpers import write_shard

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "ref"))
import gpt2_ref  # noqa: E402

TINY_FILE = os.path.join(HERE, "hellaswag_tiny.jsonl")
WORDS = ("the a dog cat ran over under quickly house tree blue green river stone night "
         "morning sang opened closed table window bright slowly garden bread music").split()


def ok(res):
    rc, out, err = res
    assert rc == 0, f"exit {rc}\nstderr: {err}\nstdout: {out[-2000:]}"
    return out


@pytest.fixture
def gpt2_model(run, tmp_path):
    """A d2 model with the GPT-2 vocabulary after one step on random tokens:
    (checkpoint, Hugging Face export of it loaded in the float64 reference)."""
    shard = write_shard(tmp_path / "data_000000.bin",
                        np.random.default_rng().integers(0, 50257, 4000))
    ok(run("train", "--preset", "d2", "--max-seq", "64", "--data", shard, "--batch", "2",
           "--seq", "16", "--steps", "1", "--lr", "1e-3", "--seed", random.randrange(1 << 30),
           "--out", tmp_path / "run"))
    ck = tmp_path / "run" / "step_000001.safetensors"
    ok(run("export", "--init", ck, "--out", tmp_path / "hf"))
    ref = gpt2_ref.GPT2Ref.load_hf(str(tmp_path / "hf"), dtype=torch.float64)
    return ck, ref


@pytest.fixture
def tokenize(binary):
    """tokenize(text) -> GPT-2 ids through `anatomy tokenize` (no tiktoken)."""
    @functools.lru_cache(maxsize=None)
    def _tok(text):
        p = subprocess.run([binary, "tokenize"], input=text, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        return [int(t) for t in p.stdout.split()]
    return _tok


def ref_scores(tokenize, ref, ex, whole=False, maxT=64):
    """Mean cross-entropy of each ending's tokens given the context, of which
    the model sees the last maxT + 1 - len(ending) tokens (whole: of every
    predicted token, context included: the wrong scoring)."""
    out = []
    for e in ex["endings"]:
        end = tokenize(" " + e)
        ctx = tokenize(ex["ctx"])[-(maxT + 1 - len(end)):]
        toks = ctx + end
        idx = torch.tensor([toks[:-1]])
        tgt = torch.tensor([toks[1:]])
        if not whole:
            tgt[0, : len(ctx) - 1] = -1
        with torch.no_grad():
            _, loss = ref(idx, tgt)
        out.append(float(loss))
    return out


def margin(scores):
    s = sorted(scores)
    return s[1] - s[0]


def write_jsonl(path, examples):
    with open(path, "w") as f:
        for ex in examples:
            f.write(json.dumps(ex) + "\n")
    return path


def hellaswag_acc(run, ck, path, *extra):
    out = ok(run("eval", "--init", ck, "--hellaswag", path, *extra))
    words = out.split()
    assert words[:2] == ["hellaswag", "acc"] and words[3] == "count", out
    return float(words[2]), int(words[4])


def test_matches_reference(run, tokenize, gpt2_model, tmp_path):
    """Labels set to the reference's winner give accuracy 1, to its loser 0,
    whatever the batching; the tiny file's accuracy equals the reference's."""
    ck, ref = gpt2_model
    exs = [json.loads(l) for l in open(TINY_FILE)]
    scores = [ref_scores(tokenize, ref, ex) for ex in exs]
    want = sum(int(np.argmin(s)) == ex["label"] for s, ex in zip(scores, exs)) / len(exs)
    acc, n = hellaswag_acc(run, ck, TINY_FILE)
    assert n == len(exs) and abs(acc - want) < 1e-9, (acc, want, scores)
    # examples whose winner is clear of fp32 rounding
    clear = [(ex, s) for ex, s in zip(exs, scores) if margin(s) > 1e-4]
    assert len(clear) >= 2, scores
    best = write_jsonl(tmp_path / "best.jsonl",
                       [dict(ex, label=int(np.argmin(s))) for ex, s in clear])
    worst = write_jsonl(tmp_path / "worst.jsonl",
                        [dict(ex, label=int(np.argmax(s))) for ex, s in clear])
    for batch in ("1", "3"):
        assert hellaswag_acc(run, ck, best, "--batch", batch) == (1.0, len(clear))
        assert hellaswag_acc(run, ck, worst, "--batch", batch) == (0.0, len(clear))
    assert hellaswag_acc(run, ck, best, "--limit", "1") == (1.0, 1)


def test_only_endings_are_scored(run, tokenize, gpt2_model, tmp_path):
    """Examples where scoring the context's tokens too (the mean over the whole
    row) picks another ending than scoring the ending alone: labelled with the
    ending-only winner, anatomy must get every one right."""
    ck, ref = gpt2_model
    rng = random.Random()
    picked = []
    for _ in range(60):
        ctx = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 25)))
        ends = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8))) for _ in range(4)]
        ex = {"ctx": ctx.capitalize(), "endings": ends, "label": 0}
        good, whole = ref_scores(tokenize, ref, ex), ref_scores(tokenize, ref, ex, whole=True)
        if np.argmin(good) != np.argmin(whole) and margin(good) > 1e-4 and margin(whole) > 1e-4:
            picked.append(dict(ex, label=int(np.argmin(good))))
            if len(picked) == 4:
                break
    assert len(picked) >= 2, "no examples where the two scorings disagree"
    path = write_jsonl(tmp_path / "endings.jsonl", picked)
    assert hellaswag_acc(run, ck, path, "--batch", "2") == (1.0, len(picked))


def test_long_context_loses_its_start(run, tokenize, gpt2_model, tmp_path):
    """Rows longer than the model's 64 positions keep the context's end; an
    ending that alone overflows is an error naming its line."""
    ck, ref = gpt2_model
    rng = random.Random()
    picked = []
    for _ in range(20):
        ctx = " ".join(rng.choice(WORDS) for _ in range(rng.randint(70, 90)))  # >= 1 token per word: > 64 tokens
        ends = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for _ in range(4)]
        ex = {"ctx": ctx, "endings": ends, "label": 0}
        good = ref_scores(tokenize, ref, ex)
        if margin(good) > 1e-4:
            picked.append(dict(ex, label=int(np.argmin(good))))
            if len(picked) == 3:
                break
    assert len(tokenize(picked[0]["ctx"])) > 64
    path = write_jsonl(tmp_path / "long.jsonl", picked)
    assert hellaswag_acc(run, ck, path, "--batch", "2") == (1.0, len(picked))
    huge = dict(picked[0], endings=picked[0]["endings"][:3] + [" ".join(["tree"] * 70)])
    path = write_jsonl(tmp_path / "huge.jsonl", picked + [huge])
    rc, _, err = run("eval", "--init", ck, "--hellaswag", path)
    assert rc == 1 and f"{path}:{len(picked) + 1}: ending 3" in err, err


def test_bad_files(run, gpt2_model, tmp_path):
    ck, _ = gpt2_model
    good = open(TINY_FILE).read().splitlines()

    def bad(line, *needles):
        p = tmp_path / "bad.jsonl"
        p.write_text(good[0] + "\n" + line + "\n")
        rc, out, err = run("eval", "--init", ck, "--hellaswag", p)
        lines = [l for l in err.splitlines() if l.strip()]
        assert rc == 1 and len(lines) == 1, (rc, err)
        assert lines[0].startswith(f"anatomy: error: {p}:2: "), lines
        for n in needles:
            assert n in lines[0], lines

    ex = json.loads(good[1])
    bad("{not json")
    bad(json.dumps([ex]), "object")
    bad(json.dumps({k: v for k, v in ex.items() if k != "ctx"}), "ctx")
    bad(json.dumps({k: v for k, v in ex.items() if k != "label"}), "label")
    bad(json.dumps(dict(ex, label=4)), "label")
    bad(json.dumps(dict(ex, label=-1)), "label")
    bad(json.dumps(dict(ex, endings=ex["endings"][:3])), "endings", "3")
    bad(json.dumps(dict(ex, endings=ex["endings"] + ["x"])), "endings", "5")
    bad(json.dumps(dict(ex, endings=[1, 2, 3, 4])), "endings")
    bad(json.dumps(dict(ex, ctx="")), "ctx")
    rc, _, err = run("eval", "--init", ck, "--hellaswag", tmp_path / "none.jsonl")
    assert rc == 1 and "none.jsonl" in err


def test_training_scores_hellaswag(run, tokenize, tmp_path):
    """train --hellaswag: accuracy at every --hellaswag-every steps and at the
    end, in the log, equal to `eval --hellaswag` of the final checkpoint (the
    training batch of 8 rows scores 2 examples per forward, eval 1)."""
    shard = write_shard(tmp_path / "data_000000.bin",
                        np.random.default_rng().integers(0, 50257, 4000))
    rng = random.Random()
    picked = []
    for _ in range(6):
        ctx = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20)))
        ends = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) for _ in range(4)]
        picked.append({"ctx": ctx, "endings": ends, "label": rng.randrange(4)})
    path = write_jsonl(tmp_path / "hs.jsonl", picked)
    out = ok(run("train", "--preset", "d2", "--max-seq", "64", "--data", shard, "--batch", "8",
                 "--seq", "64", "--steps", "4", "--lr", "1e-3", "--hellaswag", path,
                 "--hellaswag-every", "2", "--out", tmp_path / "run"))
    accs = re.findall(r"^hella\s+\d+/4 \| acc (\S+)", out, re.M)
    assert len(accs) == 2, out  # steps 2 and 4
    logged = [json.loads(l) for l in open(tmp_path / "run" / "log.jsonl")]
    hs = [r for r in logged if "hellaswag_acc" in r]
    assert [r["step"] for r in hs] == [2, 4] and all(r["hellaswag_count"] == 6 for r in hs)
    acc, n = hellaswag_acc(run, tmp_path / "run" / "step_000004.safetensors", path)
    assert n == 6 and abs(acc - hs[-1]["hellaswag_acc"]) < 2e-6, (acc, hs)
    rc, _, err = run("train", "--preset", "d2", "--data", shard, "--batch", "2", "--seq", "16",
                     "--steps", "1", "--hellaswag", path)
    assert rc == 1 and "--batch 2 is below the 4 rows" in err, err
