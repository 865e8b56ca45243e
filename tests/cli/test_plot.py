"""`anatomy plot`: runs' log.jsonl drawn into a PNG through gnuplot, and one
clear line for each kind of bad input."""
import os
import random
import subprocess

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["--preset", "d2", "--vocab-size", "256", "--max-seq", "64"]


def ok(res):
    rc, out, err = res
    assert rc == 0, f"exit {rc}\nstderr: {err}\nstdout: {out[-2000:]}"
    return out


def fails(res, *needles):
    rc, out, err = res
    lines = [l for l in err.splitlines() if l.strip()]
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("anatomy: error: "), (rc, err)
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


def train_run(run, shard, d):
    ok(run("train", *TINY, "--data", shard, "--val-data", shard, "--val-every", "2",
           "--val-batches", "2", "--batch", "2", "--seq", "16", "--steps", "3",
           "--seed", random.randrange(1 << 30), "--out", d))
    return d


def is_png(path):
    data = open(path, "rb").read()
    return len(data) > len(PNG_MAGIC) + 100 and data.startswith(PNG_MAGIC)


def test_plot_two_runs(run, shard, tmp_path):
    a = train_run(run, shard, tmp_path / "run_a")
    b = train_run(run, shard, tmp_path / "it's b")  # a quote in a legend title
    out = tmp_path / "figs" / "curves.png"
    os.makedirs(out.parent)
    assert ok(run("plot", a, b, "--out", out)).strip() == str(out)
    assert is_png(out)
    for metric in ("loss", "val", "lr", "tokens"):
        one = tmp_path / "figs" / f"{metric}.png"
        ok(run("plot", a, b, "--metric", metric, "--out", one))
        assert is_png(one) and os.path.getsize(one) < os.path.getsize(out), metric
    assert sorted(os.listdir(out.parent)) == sorted(
        ["curves.png", "loss.png", "val.png", "lr.png", "tokens.png"])


def test_plot_errors(run, binary, shard, tmp_path):
    a = train_run(run, shard, tmp_path / "a")
    out = tmp_path / "x.png"
    fails(run("plot", tmp_path / "nowhere", "--out", out), "nowhere", "log.jsonl")
    fails(run("plot", "--out", out), "run directory")
    fails(run("plot", a, "--metric", "speed", "--out", out), "--metric", "speed")
    log = a / "log.jsonl"
    good = log.read_text()
    n = good.count("\n")
    log.write_text(good + "{\"step\": 4, \"loss\": 1.5,\n")
    fails(run("plot", a, "--out", out), f"{log}:{n + 1}:")
    log.write_text(good + "{\"step\": 4, \"loss\": 1.5, \"tokens_per_s\": 9}\n" + good)
    fails(run("plot", a, "--out", out), f"{log}:{n + 1}:", "lr")
    log.write_text(good + "[1, 2]\n")
    fails(run("plot", a, "--out", out), f"{log}:{n + 1}:", "object")
    log.write_text("\n")
    fails(run("plot", a, "--out", out), str(log))
    # only training records: no validation panel to draw
    log.write_text("".join(l + "\n" for l in good.splitlines() if "val_loss" not in l))
    fails(run("plot", a, "--metric", "val", "--out", out), "--metric val")
    ok(run("plot", a, "--metric", "loss", "--out", out))
    assert is_png(out)
    fails(run("plot", a, "--out", tmp_path / "no" / "z.png"), "z.png", "gnuplot failed")
    # no gnuplot on the PATH
    p = subprocess.run([binary, "plot", a, "--out", tmp_path / "y.png"], capture_output=True,
                       text=True, env=dict(os.environ, PATH=str(tmp_path)))
    fails((p.returncode, p.stdout, p.stderr), "gnuplot-nox")
    assert not os.path.exists(tmp_path / "y.png")


def png_size(path):
    data = open(path, "rb").read(24)
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_hellaswag_panel(run, shard, tmp_path):
    """HellaSwag records (train --hellaswag writes them) get their own panel,
    by default only when a run has them."""
    a = train_run(run, shard, tmp_path / "a")
    plain = tmp_path / "plain.png"
    ok(run("plot", a, "--out", plain))
    fails(run("plot", a, "--metric", "hellaswag", "--out", tmp_path / "x.png"),
          "--metric hellaswag", "no run has such records")
    with open(a / "log.jsonl", "a") as f:
        for step, acc in ((1, 0.25), (3, 0.27)):
            f.write(f'{{"step": {step}, "hellaswag_acc": {acc}, "hellaswag_count": 100}}\n')
    full = tmp_path / "full.png"
    ok(run("plot", a, "--out", full))
    (w0, h0), (w1, h1) = png_size(plain), png_size(full)
    assert w0 == w1 and h1 == h0 * 4 // 3, ((w0, h0), (w1, h1))
    one = tmp_path / "hs.png"
    ok(run("plot", a, "--metric", "hellaswag", "--out", one))
    assert is_png(one)
