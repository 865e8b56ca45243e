"""The memory plan on the CPU build: `anatomy info --batch` prints it by
category (the sum is the total; --recompute shrinks the activations; ZeRO's
moments fall by the number of ranks); `train` prints the same figures at
start-up and, under --memory-limit, stops before allocating a run that does
not fit, naming the largest batch that does, which then trains. (The plan
against the device's real allocations: tests/cuda/test_emu_memplan.py.)"""
import re

from test_behaviour import TINY, fails, ok

CATS = ["params", "grads", "master", "moments", "activations", "workspace", "total"]


def info_plan(out):
    got = {m[0]: int(m[1]) for m in re.findall(r"^  (\w+)\s+([0-9]+) B", out, re.M)}
    assert sorted(got) == sorted(CATS), out
    return got


def test_info_prints_the_plan(run):
    base = ["info", "--preset", "gpt2-124m", "--batch", "8", "--seq", "256"]
    p = info_plan(ok(run(*base)))
    assert sum(p[c] for c in CATS[:-1]) == p["total"]
    n = 124_475_904  # the padded parameter buffer (vocabulary 50,304)
    assert p["params"] == p["grads"] == 4 * n and p["master"] == 0 and p["moments"] == 8 * n
    # the CPU backend's own scratch, for the one thread info plans with: attention's
    # score blocks, 2 x 64 query rows x T floats
    assert p["workspace"] == 2 * 64 * 256 * 4
    # and, where a sequence's q, k, v, out, dout and their gradients (8 T C floats)
    # fit 512 KiB, those rows copied per head: d2 (C 128) up to T 128, not at 129
    for T, copied in ((64, True), (128, True), (129, False)):
        w = info_plan(ok(run("info", "--preset", "d2", "--batch", "2", "--seq", T)))["workspace"]
        assert w == (2 * 64 * T + (8 * T * 128 if copied else 0)) * 4, (T, w)
    r = info_plan(ok(run(*base, "--recompute")))
    assert r["activations"] < p["activations"]
    assert {c: r[c] for c in CATS[:4]} == {c: p[c] for c in CATS[:4]}
    # the rows of a batch are independent: activations grow by the same step per
    # row, up to B 64 x T 1024, whose 3.3e9 logits pass 2^31 elements (a 32-bit
    # product anywhere in the planning would break the line)
    a = [info_plan(ok(run("info", "--preset", "gpt2-124m", "--batch", b, "--seq", "1024")))
         ["activations"] for b in (1, 2, 64)]
    assert a[2] == a[0] + 63 * (a[1] - a[0]) and a[1] > a[0]
    assert a[2] > 64 * 1024 * 50304 * 4 > 2 ** 31 * 4
    # ZeRO stage 1 over 4 ranks: a quarter of the moments (rank 0's shard, rounded up)
    z = info_plan(ok(run(*base, "--world", "4", "--zero", "1")))
    assert z["moments"] == 8 * -(-n // 4) and z["params"] == p["params"]
    assert info_plan(ok(run(*base, "--world", "4")))["moments"] == p["moments"]
    out = ok(run(*base, "--memory-limit", "3G"))
    m = re.search(r"does not fit in --memory-limit 3.00 GiB: the largest batch that fits is "
                  r"--batch ([0-9]+)", out)
    assert m, out
    fits = int(m.group(1))
    assert 1 <= fits < 8
    assert "fits in --memory-limit" in ok(run(*base[:-4], "--batch", fits, "--seq", "256",
                                              "--memory-limit", "3G"))


def test_train_stops_before_a_run_that_does_not_fit(run, shard):
    args = ["train", *TINY, "--data", shard, "--seq", "32", "--steps", "1"]
    out = ok(run(*args, "--batch", "2"))
    m = re.search(r"^memory plan per rank \(cpu fp32, batch 2 x seq 32\): params [0-9,]+ B .* "
                  r"total ([0-9,]+) B", out, re.M)
    assert m, out
    total2 = int(m.group(1).replace(",", ""))
    limit = total2 + 100  # batch 2 fits, and batch 3 cannot (a row is far more than 100 B)
    rc, out, err = run(*args, "--batch", "64", "--memory-limit", limit)
    fails((rc, out, err), "--batch 64", "--memory-limit", "the largest batch that fits is "
          "--batch 2")
    assert "step" not in out
    ok(run(*args, "--batch", "2", "--memory-limit", limit))
    fails(run(*args, "--batch", "3", "--memory-limit", limit), "is --batch 2")
    fails(run(*args, "--batch", "1", "--memory-limit", "1K"), "not even --batch 1 fits")


def test_bad_memory_options(run, shard):
    fails(run("train", *TINY, "--data", shard, "--memory-limit", "lots"), "--memory-limit",
          "lots")
    fails(run("train", *TINY, "--data", shard, "--memory-limit", "0"), "--memory-limit")
    fails(run("info", "--preset", "d2", "--seq", "64"), "--batch")
    fails(run("info", "--preset", "d2", "--batch", "2", "--seq", "4096"), "--seq", "4096")
    fails(run("info", "--preset", "d2", "--batch", "2", "--world", "0"), "--world")
