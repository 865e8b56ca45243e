"""A resumed recurrent run (Elman RNN, LSTM) continues its streams from the
carried state the checkpoint holds: N steps equal k steps, save, resume, N - k
more, losses and every tensor bit for bit, validation included."""
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from test_behaviour import _same_checkpoints, losses, ok

VAL = r"^val\s+(\d+)/\d+ \| loss (\S+)"


@pytest.mark.parametrize("preset,layers", [("rnn-tiny", "1"), ("lstm-tiny", "2")])
def test_recurrent_resume_is_bit_exact(run, shard, tmp_path, preset, layers):
    import re
    model = ["--preset", preset, "--vocab-size", "256", "--layers", layers]
    # 20,000 tokens in 4 streams of 16-token chunks: ~312 micro-batches per
    # epoch, so every step below continues its streams (no epoch reset)
    common = ["--data", shard, "--val-data", shard, "--val-batches", "3", "--val-every", "4",
              "--batch", "4", "--seq", "16", "--lr", "3e-3", "--schedule", "constant",
              "--total-batch", "128", "--seed", "3"]
    full = ok(run("train", *model, *common, "--steps", "12", "--ckpt-every", "6",
                  "--out", tmp_path / "full"))
    ck = tmp_path / "full" / "step_000006.safetensors"
    with safe_open(str(ck), "np") as f:
        carried = f.get_tensor("train.carried")
    h = 4 * 32 * int(layers) * (2 if preset.startswith("lstm") else 1)
    assert carried.shape == (1, h) and np.abs(carried).max() > 0
    resumed = ok(run("train", "--resume", ck, *common, "--steps", "12",
                     "--out", tmp_path / "resumed"))
    full_l, res_l = losses(full), losses(resumed)
    assert len(full_l) == 12 and res_l == full_l[6:], (res_l, full_l[6:])
    assert re.findall(VAL, resumed, re.M) == re.findall(VAL, full, re.M)[1:]
    _same_checkpoints(tmp_path / "full" / "step_000012.safetensors",
                      tmp_path / "resumed" / "step_000012.safetensors")

    # without the state (a checkpoint from before it was saved) the streams
    # restart from zero: the first resumed step differs, and the run goes on
    t = load_file(str(ck))
    with safe_open(str(ck), "np") as f:
        meta = dict(f.metadata())
    del t["train.carried"]
    meta.pop("crc32c", None)  # nor the checksums, which came later too
    old = tmp_path / "old.safetensors"
    save_file(t, str(old), metadata=meta)
    fresh = ok(run("train", "--resume", old, *common, "--steps", "8"))
    assert losses(fresh)[0] != full_l[6]
