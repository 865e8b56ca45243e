"""`anatomy export` with several --init: a weights-only checkpoint (or, for
GPT-2, a Hugging Face directory) holding the element-wise mean of the inputs'
parameters and non-trained state (batchnorm running statistics), summed in
double in the order given and rounded once to fp32; inputs of another family
or config, a missing file and --format hf on a non-GPT-2 model are one-line
errors that write nothing."""
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

from clihelpers import write_shard
from test_series_cli import good_csv, one_error

BN = ["--model", "patchts", "--preset", "patchts-tiny", "--channels", 2, "--post-ln", 1,
      "--norm", "batch"]
STATS = [f"h.0.bn_{k}.running_{s}" for k in (1, 2) for s in ("mean", "var")]
GPT2 = ["--model", "gpt2", "--preset", "d2", "--vocab-size", 256, "--max-seq", 16,
        "--heads", 2, "--device", "cpu", "--threads", 1]


def ok(result):
    rc, out, err = result
    assert rc == 0, err
    return out


def mean_of(paths, names):
    """The reference: float64 sum in the given order, one division, fp32."""
    tensors = [load_file(str(p)) for p in paths]
    want = {}
    for name in names:
        total = np.zeros(tensors[0][name].shape, np.float64)
        for t in tensors:
            total += t[name].astype(np.float64)
        want[name] = (total / len(tensors)).astype(np.float32)
    return want


def metadata(path):
    """The checkpoint's metadata less the tensors' checksums."""
    with safe_open(str(path), "np") as f:
        return {k: v for k, v in f.metadata().items() if k != "crc32c"}


def patchts_run(run, tmp_path):
    path = good_csv(tmp_path / "good.csv", rows=400, seed=1)
    ok(run("train", *BN, "--data", path, "--batch", 8, "--lr", "3e-3", "--shuffle", "--seed", 5,
           "--steps", 6, "--ckpt-every", 2, "--threads", 1, "--out", tmp_path / "run"))
    return path, [tmp_path / "run" / f"step_00000{k}.safetensors" for k in (2, 4, 6)]


def gpt2_run(run, tmp_path, name="g", width=32, steps=3):
    data = write_shard(tmp_path / "tok.bin", np.random.default_rng(0).integers(0, 256, 5000))
    ok(run("train", *GPT2, "--width", width, "--data", data, "--batch", 2, "--seq", 16,
           "--lr", "1e-2", "--steps", steps, "--ckpt-every", 1, "--out", tmp_path / name))
    return data, [tmp_path / name / f"step_{k:06d}.safetensors" for k in range(1, steps + 1)]


def test_average_with_running_statistics(run, tmp_path):
    """patchts --norm batch: parameters and running statistics are the mean
    of the three checkpoints', exactly; the metadata is theirs; the
    optimizer moments are not carried; eval reads the result."""
    csv, cks = patchts_run(run, tmp_path)
    avg = tmp_path / "avg.safetensors"
    out = ok(run("export", "--format", "ckpt", "--out", avg,
                 *[a for c in cks for a in ("--init", c)]))
    assert out.strip() == f"wrote {avg}"
    got = load_file(str(avg))
    one = tmp_path / "one.safetensors"
    ok(run("export", "--format", "ckpt", "--init", cks[0], "--out", one))
    assert sorted(got) == sorted(load_file(str(one))), sorted(got)  # what one export writes
    assert all(s in got for s in STATS) and not any(k.startswith("adamw") for k in got), sorted(got)
    want = mean_of(cks, got)
    for name in got:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # every input differs from the mean: the test would see a copy of one of them
    inputs = [load_file(str(c)) for c in cks]
    for name in STATS + ["h.0.bn_1.weight"]:
        assert all(np.any(t[name] != got[name]) for t in inputs), name
    assert metadata(avg) == metadata(one), (metadata(avg), metadata(one))
    # the paths of a shell glob after the options; a run directory is its latest checkpoint
    glob = tmp_path / "glob.safetensors"
    ok(run("export", "--format", "ckpt", "--out", glob, "--init", *cks[:2], tmp_path / "run"))
    assert glob.read_bytes() == avg.read_bytes()
    out = ok(run("eval", "--init", avg, "--data", csv, "--split", "val", "--batch", 8))
    mse = [float(l.split()[1]) for l in out.splitlines() if l.startswith("mse ")]
    assert len(mse) == 1 and 0 < mse[0] < 10, out


def test_average_without_state_and_hf(run, tmp_path):
    """GPT-2 (no state): the ckpt average is the exact mean; --format hf of
    the same inputs is the mean of their single Hugging Face exports."""
    data, cks = gpt2_run(run, tmp_path)
    avg = tmp_path / "avg.safetensors"
    ok(run("export", "--format", "ckpt", "--out", avg, "--init", cks[0], "--init", cks[2]))
    got = load_file(str(avg))
    assert "wte.weight" in got and not any(k.startswith("adamw") for k in got), sorted(got)
    want = mean_of([cks[0], cks[2]], got)
    for name in got:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert np.any(got["wte.weight"] != load_file(str(cks[0]))["wte.weight"])
    for i, c in enumerate(cks[:2]):
        ok(run("export", "--init", c, "--out", tmp_path / f"hf{i}"))
    ok(run("export", "--init", cks[0], cks[1], "--out", tmp_path / "hfavg"))
    hf = load_file(str(tmp_path / "hfavg" / "model.safetensors"))
    want = mean_of([tmp_path / f"hf{i}" / "model.safetensors" for i in range(2)], hf)
    for name in hf:
        np.testing.assert_array_equal(hf[name], want[name], err_msg=name)
    assert ((tmp_path / "hfavg" / "config.json").read_text()
            == (tmp_path / "hf0" / "config.json").read_text())
    out = ok(run("eval", "--init", avg, "--data", data, "--batch", 2, "--seq", 16,
                 "--batches", 2, "--device", "cpu"))
    assert "loss" in out, out


def test_one_input_is_the_plain_export(run, tmp_path):
    """One --init writes the input's parameters and state bit for bit (the
    export without averaging), and the mean of a checkpoint with itself is
    the same file, byte for byte."""
    _, cks = patchts_run(run, tmp_path)
    one, twice = tmp_path / "one.safetensors", tmp_path / "twice.safetensors"
    ok(run("export", "--format", "ckpt", "--init", cks[1], "--out", one))
    ok(run("export", "--format", "ckpt", "--init", cks[1], "--init", cks[1], "--out", twice))
    src, got = load_file(str(cks[1])), load_file(str(one))
    for name in got:
        np.testing.assert_array_equal(got[name], src[name], err_msg=name)
    assert twice.read_bytes() == one.read_bytes()


def test_average_errors(run, tmp_path):
    """Another config (width), another family, a missing file, a directory
    without checkpoints and --format hf on patchts: one line naming the file
    (a run directory's checkpoint) and the problem, status 1, nothing written."""
    _, narrow = gpt2_run(run, tmp_path, "narrow", 32, 1)
    _, wide = gpt2_run(run, tmp_path, "wide", 64, 1)
    _, series = patchts_run(run, tmp_path)
    out = tmp_path / "out.safetensors"
    cases = [
        ([narrow[0], narrow[0], wide[0]], "ckpt",
         [f"--init {wide[0]}:", "'C' (--width) is 64, but 32", str(narrow[0])]),
        ([series[0], narrow[0]], "ckpt", [f"--init {narrow[0]}:", "gpt2", "patchts"]),
        ([narrow[0], tmp_path / "missing.safetensors"], "ckpt", ["missing.safetensors"]),
        ([series[0], series[1]], "hf", ["--format hf", "patchts"]),
        # a run directory is its latest checkpoint, which the error names
        ([narrow[0], tmp_path / "wide"], "ckpt",
         [f"--init {wide[0]}:", "'C' (--width) is 64, but 32"]),
        ([narrow[0], tmp_path], "ckpt", [f"--init: {tmp_path}: no step_NNNNNN"]),
    ]
    for inits, fmt, words in cases:
        rc, _, err = run("export", "--format", fmt, "--out", out,
                         *[a for c in inits for a in ("--init", c)])
        line = one_error(rc, err)
        for w in words:
            assert w in line, (w, line)
        assert not out.exists(), line
