"""A stop signal that reaches one rank stops every rank at the same step
(the flag rides on the loss all-reduce, host/train.c reduce_grads): rank 0
writes one consistent checkpoint, the job exits 75, and the 2-rank resume
equals the uninterrupted 2-rank run bit for bit, with and without ZeRO (a
constant rate: the stopped run's --steps differs from the resumed one's)."""
import os
import re
import select
import signal
import subprocess
import time

import pytest

from conftest import clean_env

MODEL = ["--preset", "d2", "--vocab-size", "256", "--max-seq", "64"]
RUN = ["train", "--batch", "2", "--seq", "16", "--threads", "1", "--lr", "1e-3", "--warmup", "2",
       "--total-batch", "64", "--shuffle", "--seed", "9", "--schedule", "constant"]
STOP_STATUS = 75


def rank_pid(root, rank, timeout=30):
    """The pid of the process of `rank` among root's descendants (its
    OMPI_COMM_WORLD_RANK), found through /proc."""
    end = time.time() + timeout
    while time.time() < end:
        kids = {}
        for p in os.listdir("/proc"):
            if not p.isdigit():
                continue
            try:
                with open(f"/proc/{p}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(p))
            except (OSError, IndexError, ValueError):
                pass
        todo, seen = [root], []
        while todo:
            q = todo.pop()
            seen.append(q)
            todo += kids.get(q, [])
        for q in seen[1:]:
            try:
                with open(f"/proc/{q}/environ", "rb") as f:
                    env = f.read().split(b"\0")
                with open(f"/proc/{q}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            if comm == "anatomy" and f"OMPI_COMM_WORLD_RANK={rank}".encode() in env:
                return q
        time.sleep(0.1)
    raise AssertionError(f"no rank {rank} under pid {root}")


@pytest.mark.parametrize("zero", [0, 1])
def test_signal_to_one_rank_stops_all_at_one_step(binary, mpi, shards, tmp_path, zero):
    train, _ = shards
    steps = 200
    common = RUN + ["--data", train, "--steps", str(steps), "--zero", str(zero)]
    d = tmp_path / "run"
    p = subprocess.Popen([mpi, "--oversubscribe", "-np", "2", binary, *common, *MODEL,
                          "--out", str(d)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=clean_env(), bufsize=1)
    lines, end = [], time.time() + 60
    while time.time() < end:
        if not select.select([p.stdout], [], [], end - time.time())[0]:
            break
        line = p.stdout.readline()
        lines.append(line)
        if not line or re.match(r"^step\s+3/", line):
            break
    assert lines and lines[-1].startswith("step"), "".join(lines)
    os.kill(rank_pid(p.pid, 1), signal.SIGUSR1)  # rank 1 only
    out, err = p.communicate(timeout=120)
    out = "".join(lines) + out
    assert p.returncode == STOP_STATUS, f"exit {p.returncode}\n{err[-2000:]}\n{out[-1000:]}"
    m = re.search(rf"^stopped by SIGUSR1 at step (\d+); resume with --resume {re.escape(str(d))}$",
                  out, re.M)
    assert m, out[-1000:]
    n = int(m.group(1))
    assert 3 <= n < steps
    assert sorted(os.listdir(d)) == ["lock", "log.jsonl", "step_%06d.safetensors" % n]
    # the rest, and the uninterrupted run: the same file
    res = subprocess.run([mpi, "--oversubscribe", "-np", "2", binary, *RUN, "--data", train,
                          "--steps", str(n + 4), "--zero", str(zero), "--resume", str(d),
                          "--out", str(d)], capture_output=True, text=True, env=clean_env(),
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    full = tmp_path / "full"
    res = subprocess.run([mpi, "--oversubscribe", "-np", "2", binary, *common[:-4],
                          "--steps", str(n + 4), "--zero", str(zero), *MODEL,
                          "--out", str(full)], capture_output=True, text=True, env=clean_env(),
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    name = "step_%06d.safetensors" % (n + 4)
    assert (d / name).read_bytes() == (full / name).read_bytes()
