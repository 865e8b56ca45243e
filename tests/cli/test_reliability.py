"""Fault injection: runs that survive kill -9, stop signals, operator mistakes
and full disks (the run directory as a journal, host/rundir.c), and inputs
that cannot block or lie.

Faults are injected three ways: kill -9 at a random byte of the run's
checkpoint and log writes (tests/faults/faultshim.c, an LD_PRELOAD library
that counts the bytes written under one directory) or at a random time; a
small tmpfs where mount is allowed; the same shim failing write() and fsync()
with ENOSPC where it is not. Every trial's outcome is counted, and the last
test prints `faults: T trials, C clean, L lost` (README, reliability). A trial
is clean when the run, resumed after the fault, ends bit for bit where the
uninterrupted run ends, with its log exactly the run's history and no orphan
file; lost otherwise."""
import glob
import json
import os
import re
import select
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from clihelpers import write_shard

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--preset", "d2", "--vocab-size", "256", "--max-seq", "64"]
BATCH = ["--batch", "4", "--seq", "32", "--lr", "3e-3", "--warmup", "2", "--shuffle",
         "--seed", "11"]
STOP_STATUS = 75  # EX_TEMPFAIL: stopped by a signal, checkpoint written
TALLY = {"trials": 0, "clean": 0, "lost": 0}
REF_SECONDS = [1.0]  # how long the reference run took


def tally(clean):
    TALLY["trials"] += 1
    TALLY["clean" if clean else "lost"] += 1


def env_for(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def anatomy(binary, *args, env=None, timeout=120, stdin=None, input=None):
    p = subprocess.run([binary] + [str(a) for a in args], capture_output=True, text=True,
                       env=env or env_for(), timeout=timeout, stdin=stdin, input=input)
    return p.returncode, p.stdout, p.stderr


def one_error(res, *needles, status=1):
    rc, out, err = res
    assert rc == status, f"expected exit {status}, got {rc}\nstderr: {err}\nstdout: {out[-1500:]}"
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("anatomy: error: "), f"stderr: {err!r}"
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    """The fault library, built here from tests/faults/faultshim.c."""
    out = tmp_path_factory.mktemp("shim") / "faultshim.so"
    src = os.path.join(REPO, "tests", "faults", "faultshim.c")
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", src, "-o", str(out), "-ldl"], check=True)
    return str(out)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(7)
    return write_shard(d / "r_train_000000.bin", rng.integers(0, 256, 20000))


def ckpts(d):
    return sorted(glob.glob(os.path.join(str(d), "step_*.safetensors")))


def orphans(d):
    return [p for p in os.listdir(d) if ".tmp." in p]


def log_steps(d):
    """(step, loss) of every training line of d/log.jsonl, in order."""
    out = []
    with open(os.path.join(str(d), "log.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "loss" in r:
                out.append((r["step"], r["loss"]))
    return out


def fresh_or_resume(d, steps, extra=()):
    """What a wrapper script runs after a fault: resume when there is a checkpoint."""
    if ckpts(d):
        return ["train", "--resume", d, "--data"] + list(extra) + ["--steps", steps, "--out", d]
    return ["train", *TINY, "--data"] + list(extra) + ["--steps", steps, "--out", d]


@pytest.fixture(scope="module")
def reference(binary, data, tmp_path_factory):
    """The uninterrupted run the faulted ones must end equal to."""
    d = tmp_path_factory.mktemp("ref") / "run"
    t0 = time.time()
    rc, out, err = anatomy(binary, "train", *TINY, "--data", data, *BATCH, "--steps", 4,
                           "--ckpt-every", 1, "--out", d)
    assert rc == 0, err
    REF_SECONDS[0] = time.time() - t0
    return d


def finish_and_compare(binary, data, d, ref, steps=4):
    final = os.path.join(str(d), "step_%06d.safetensors" % steps)
    if not os.path.exists(final):  # else the kill came after the run's end
        rc, out, err = anatomy(binary, *fresh_or_resume(d, steps, [data, *BATCH]))
        assert rc == 0, err
    same = open(final, "rb").read() == open(os.path.join(str(ref), os.path.basename(final)),
                                            "rb").read()
    return same and not orphans(d) and log_steps(d) == log_steps(ref)


# ---- 1. kill -9 ----

def test_kill9_at_random_bytes_of_checkpoint_writes(binary, data, shim, reference, tmp_path):
    """20 trials: SIGKILL at a random byte of everything the run writes
    (4 checkpoints, the log); the resumed run equals the uninterrupted one."""
    total = sum(os.path.getsize(p) for p in ckpts(reference))
    total += os.path.getsize(os.path.join(str(reference), "log.jsonl"))
    rng = np.random.default_rng()
    bad = []
    for t in range(20):
        d = (tmp_path / f"t{t}").resolve()
        d.mkdir()
        k = int(rng.integers(1, total))
        rc, _, err = anatomy(binary, "train", *TINY, "--data", data, *BATCH, "--steps", 4,
                             "--ckpt-every", 1, "--out", d,
                             env=env_for(LD_PRELOAD=shim, FAULT_DIR=d, FAULT_KILL_AFTER=k))
        assert rc == -signal.SIGKILL, f"kill at byte {k}: exit {rc}: {err}"
        clean = finish_and_compare(binary, data, d, reference)
        tally(clean)
        if not clean:
            bad.append(k)
    assert not bad, f"kills at bytes {bad} of {total} lost the run"


def test_kill9_at_random_times(binary, data, reference, tmp_path):
    rng = np.random.default_rng()
    bad = []
    for t in range(4):
        d = tmp_path / f"t{t}"
        p = subprocess.Popen([binary, "train", *TINY, "--data", data, *BATCH, "--steps", "4",
                              "--ckpt-every", "1", "--out", str(d)], env=env_for(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        delay = float(rng.uniform(0.02, REF_SECONDS[0]))  # start-up included
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        clean = finish_and_compare(binary, data, d, reference)
        tally(clean)
        if not clean:
            bad.append(delay)
    assert not bad, f"kills after {bad} s lost the run"


# ---- 2. graceful stop ----

def start(binary, *args):
    return subprocess.Popen([binary] + [str(a) for a in args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env_for(), bufsize=1)


def wait_line(p, pattern, timeout=60):
    """Reads p's stdout until a line matches; returns the lines read."""
    lines, end = [], time.time() + timeout
    while time.time() < end:
        r, _, _ = select.select([p.stdout], [], [], end - time.time())
        if not r:
            break
        line = p.stdout.readline()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            return lines
    raise AssertionError(f"no line like {pattern!r} in {''.join(lines)[-1500:]}")


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1", "SIGINT"])
def test_stop_signal_checkpoints_and_resumes_bit_exact(binary, data, tmp_path, sig):
    steps = 60
    ref = tmp_path / "ref"
    rc, _, err = anatomy(binary, "train", *TINY, "--data", data, *BATCH, "--steps", steps,
                         "--out", ref)
    assert rc == 0, err
    d = tmp_path / "run"
    p = start(binary, "train", *TINY, "--data", data, *BATCH, "--steps", steps, "--out", d)
    wait_line(p, r"^step\s+3/")
    p.send_signal(getattr(signal, sig))
    out, err = p.communicate(timeout=60)
    assert p.returncode == STOP_STATUS, f"exit {p.returncode}: {err}"
    m = re.search(rf"^stopped by {sig} at step (\d+); resume with --resume {re.escape(str(d))}$",
                  out, re.M)
    assert m, out[-800:]
    n = int(m.group(1))
    assert 3 <= n < steps and ckpts(d) == [str(d / ("step_%06d.safetensors" % n))]
    assert [s for s, _ in log_steps(d)] == list(range(1, n + 1))
    rc, _, err = anatomy(binary, "train", "--resume", d, "--data", data, *BATCH,
                         "--steps", steps, "--out", d)
    assert rc == 0, err
    name = "step_%06d.safetensors" % steps
    clean = (open(d / name, "rb").read() == open(ref / name, "rb").read()
             and log_steps(d) == log_steps(ref) and not orphans(d))
    tally(clean)
    assert clean, f"stopped at {n}: the resumed run differs from the uninterrupted one"


def test_second_sigint_aborts_at_once(binary, data, tmp_path):
    d = tmp_path / "run"
    # long steps (B 64 x T 64), so that both signals land inside one
    p = start(binary, "train", *TINY, "--data", data, *BATCH, "--batch", "64", "--seq", "64",
              "--steps", 500, "--out", d)
    wait_line(p, r"^step\s+2/")
    p.send_signal(signal.SIGINT)
    time.sleep(0.02)  # two pending SIGINTs would merge into one
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, f"exit {p.returncode}: {err}"
    assert "second SIGINT" in err and not ckpts(d)
    tally(True)


# ---- 3. one run per directory ----

def test_two_trainers_one_directory(binary, data, tmp_path):
    d = tmp_path / "run"
    a = start(binary, "train", *TINY, "--data", data, *BATCH, "--steps", 100000, "--out", d)
    try:
        wait_line(a, r"^step\s+1/")
        one_error(anatomy(binary, "train", *TINY, "--data", data, *BATCH, "--steps", 2,
                          "--out", d), str(d), "another trainer", f"pid {a.pid}",
                  os.uname().nodename)
        one_error(anatomy(binary, "train", *TINY, "--data", data, *BATCH, "--steps", 2,
                          "--out", d, "--overwrite"), "another trainer", f"pid {a.pid}")
    finally:
        a.send_signal(signal.SIGTERM)
        out, err = a.communicate(timeout=60)
    assert a.returncode == STOP_STATUS, err
    tally(True)
    # a fresh run into a directory that holds checkpoints
    held = ckpts(d)
    assert len(held) == 1
    one_error(anatomy(binary, "train", *TINY, "--data", data, *BATCH, "--steps", 2, "--out", d),
              os.path.basename(held[0]), "--overwrite", "--resume")
    assert ckpts(d) == held
    rc, _, err = anatomy(binary, "train", *TINY, "--data", data, *BATCH, "--steps", 2,
                         "--out", d, "--overwrite")
    assert rc == 0, err
    assert ckpts(d) == [str(d / "step_000002.safetensors")]  # the old run is gone
    assert [s for s, _ in log_steps(d)] == [1, 2]
    tally(True)


def test_resume_cuts_the_log_to_the_checkpoint(binary, data, tmp_path):
    """A run killed after logging steps past its last checkpoint: the resumed
    log holds every step once."""
    d = tmp_path / "run"
    rc, _, err = anatomy(binary, "train", *TINY, "--data", data, *BATCH, "--steps", 8,
                         "--ckpt-every", 4, "--val-every", 2, "--val-data", data,
                         "--val-batches", 2, "--out", d)
    assert rc == 0, err
    full = open(d / "log.jsonl").read()
    os.remove(d / "step_000008.safetensors")  # as if killed before its checkpoint
    with open(d / "log.jsonl", "a") as f:
        f.write('{"step": 9, "loss": 1.')  # and mid-line
    rc, _, err = anatomy(binary, "train", "--resume", d, "--data", data, *BATCH, "--steps", 8,
                         "--ckpt-every", 4, "--val-every", 2, "--val-data", data,
                         "--val-batches", 2, "--out", d)
    assert rc == 0, err
    strip = lambda s: [re.sub(r', "ms": .*', "", l) for l in s.splitlines()]  # noqa: E731
    assert strip(open(d / "log.jsonl").read()) == strip(full)
    # resuming from an earlier checkpoint than the directory's latest
    rc, _, err = anatomy(binary, "train", "--resume", d / "step_000004.safetensors",
                         "--data", data, *BATCH, "--steps", 8, "--out", d)
    one_error((rc, _, err), "step_000008.safetensors", "--overwrite")
    tally(True)


def test_stale_temporaries_of_dead_writers_are_removed(binary, data, tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = d / f"step_000001.safetensors.tmp.{dead.pid}.0"
    live = d / f"step_000001.safetensors.tmp.{os.getpid()}.3"
    stale.write_bytes(b"x" * 100)
    live.write_bytes(b"y" * 100)
    rc, out, err = anatomy(binary, "train", *TINY, "--data", data, *BATCH, "--steps", 1,
                           "--out", d)
    assert rc == 0, err
    assert not stale.exists() and live.exists(), os.listdir(d)
    assert "removed 1 temporary file" in out
    tally(True)


# ---- 4. full disks ----

def tmpfs(path, size):
    """Mounts a tmpfs of size bytes at path; False where mount is not allowed."""
    path.mkdir()
    if not shutil.which("mount"):
        return False
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True)
    return p.returncode == 0


def umount(path):
    subprocess.run(["umount", str(path)], capture_output=True)


def fill(path):
    """Fills the filesystem of path up to its last byte."""
    with open(path / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
        try:
            while True:
                f.write(b"\0")
        except OSError:
            pass


@pytest.mark.parametrize("how", ["tmpfs", "shim"])
def test_full_disk_during_log_write_is_an_error(binary, data, shim, tmp_path, how):
    d = (tmp_path / "disk").resolve()
    env = None
    if how == "tmpfs":
        if not tmpfs(d, 1 << 20):
            pytest.skip("mount -t tmpfs is not allowed here (the shim case covers it)")
    else:
        d.mkdir()
        env = env_for(LD_PRELOAD=shim, FAULT_DIR=d, FAULT_ENOSPC_AFTER=300)
    try:
        (d / "run").mkdir()
        if how == "tmpfs":
            fill(d)
        res = anatomy(binary, "train", *TINY, "--data", data, *BATCH, "--steps", 20,
                      "--out", d / "run", env=env)
        one_error(res, "log.jsonl", "write failed at step", "No space left on device")
    finally:
        if how == "tmpfs":
            umount(d)
    tally(True)


@pytest.mark.parametrize("how", ["tmpfs", "shim"])
def test_full_disk_during_checkpoint_keeps_earlier_ones(binary, data, shim, reference, tmp_path,
                                                        how):
    size = os.path.getsize(ckpts(reference)[0])
    d = (tmp_path / "disk").resolve()
    env = None
    if how == "tmpfs":
        if not tmpfs(d, int(size * 1.5)):
            pytest.skip("mount -t tmpfs is not allowed here (the shim case covers it)")
    else:
        d.mkdir()
        env = env_for(LD_PRELOAD=shim, FAULT_DIR=d, FAULT_ENOSPC_AFTER=int(size * 1.5))
    try:
        run = d / "run"
        res = anatomy(binary, "train", *TINY, "--data", data, *BATCH, "--steps", 4,
                      "--ckpt-every", 1, "--out", run, env=env)
        one_error(res, "step_000002.safetensors", "No space left on device")
        first = run / "step_000001.safetensors"
        intact = (ckpts(run) == [str(first)] and not orphans(run) and
                  first.read_bytes() == open(ckpts(reference)[0], "rb").read())
    finally:
        if how == "tmpfs":
            umount(d)
    tally(intact)
    assert intact


# ---- 5. inputs that cannot block or lie ----

def test_fifos_and_directories_as_inputs(binary, data, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cfg_dir = tmp_path / "conf.d"
    cfg_dir.mkdir()
    cases = [
        (["train", *TINY, "--data", fifo, "--steps", 1], "is a FIFO"),
        (["train", "--init", fifo, "--data", data, "--steps", 1], "is a FIFO"),
        (["train", "--resume", fifo, "--data", data, "--steps", 1], "is a FIFO"),
        (["eval", "--init", fifo, "--data", data], "is a FIFO"),
        (["train", "--config", fifo], "is a FIFO"),
        (["train", "--config", cfg_dir], "is a directory"),
        (["prep", "--tokenizer", "bytes", "--input", fifo, "--out", tmp_path / "x"],
         "is a FIFO"),
        (["prep", "--tokenizer", "bytes", "--input", cfg_dir, "--out", tmp_path / "x"],
         "is a directory"),
    ]
    for args, why in cases:
        one_error(anatomy(binary, *args, timeout=20), str(fifo if "FIFO" in why else cfg_dir),
                  why)
        tally(True)
    # with a writer, prep still refuses the FIFO (it would open it twice) ...
    w = subprocess.Popen(["sh", "-c", f"exec cat > {fifo}"], stdin=subprocess.PIPE)
    try:
        one_error(anatomy(binary, "prep", "--tokenizer", "bytes", "--input", fifo,
                          "--out", tmp_path / "x", timeout=20), "--input -")
    finally:
        w.kill()
        w.wait()
    # ... and reads the stream once from stdin
    text = "the quick brown fox jumps over the lazy dog. " * 400
    rc, out, err = anatomy(binary, "prep", "--tokenizer", "bytes", "--input", "-",
                           "--out", tmp_path / "s", input=text, timeout=20)
    assert rc == 0, err
    got = sum(os.path.getsize(p) - 1024 for p in glob.glob(str(tmp_path / "s_*.bin"))) // 2
    assert got == len(text), (got, len(text))
    one_error(anatomy(binary, "prep", "--tokenizer", "bytes", "--input", "-", "-",
                      "--out", tmp_path / "s2", input=text, timeout=20), "stdin")
    tally(True)


def test_eval_batches_beyond_the_data(binary, data, reference):
    ck = ckpts(reference)[-1]
    res = anatomy(binary, "eval", "--init", ck, "--data", data, "--batch", 4, "--seq", 32,
                  "--batches", 100000)
    one_error(res, "--batches", "100000", "156")  # 20000 tokens hold 156 of 4 x 32
    rc, out, err = anatomy(binary, "eval", "--init", ck, "--data", data, "--batch", 4,
                           "--seq", 32, "--batches", 156)
    assert rc == 0, err
    tally(True)


def test_non_finite_weights_are_named_and_refused(binary, data, reference, tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file
    ck = ckpts(reference)[-1]
    t = load_file(ck)
    with safe_open(ck, "np") as f:
        meta = dict(f.metadata())
    meta.pop("crc32c")
    t["h.1.mlp.c_fc.weight"][7, 3] = np.nan
    bad = tmp_path / "nan.safetensors"
    save_file(t, str(bad), metadata=meta)
    for args in (["eval", "--init", bad, "--data", data, "--batch", 4, "--seq", 32,
                  "--batches", 2],
                 ["sample", "--init", bad, "--tokens", 4],
                 ["train", "--init", bad, "--data", data, *BATCH, "--steps", 1],
                 ["train", "--resume", bad, "--data", data, *BATCH, "--steps", 8]):
        one_error(anatomy(binary, *args), "nan.safetensors", "'h.1.mlp.c_fc.weight'", "NaN",
                  "[7, 3]")
    t["h.1.mlp.c_fc.weight"][7, 3] = np.inf
    save_file(t, str(bad), metadata=meta)
    one_error(anatomy(binary, "sample", "--init", bad, "--tokens", 4), "+inf")
    tally(True)


def test_flipped_bit_in_a_checkpoint_is_named(binary, data, reference, tmp_path):
    from safetensors import safe_open
    ck = ckpts(reference)[-1]
    raw = bytearray(open(ck, "rb").read())
    hl = int.from_bytes(raw[:8], "little")
    with safe_open(ck, "np") as f:
        names = list(f.keys())
    header = json.loads(raw[8:8 + hl])
    rng = np.random.default_rng()
    name = names[int(rng.integers(len(names)))]
    lo, hi = header[name]["data_offsets"]
    at = 8 + hl + int(rng.integers(lo, hi))
    raw[at] ^= 1 << int(rng.integers(8))
    bad = tmp_path / "flip.safetensors"
    bad.write_bytes(bytes(raw))
    for args in (["eval", "--init", bad, "--data", data, "--batch", 4, "--seq", 32,
                  "--batches", 2],
                 ["train", "--resume", bad, "--data", data, *BATCH, "--steps", 8]):
        one_error(anatomy(binary, *args), "flip.safetensors", f"'{name}'", "checksum")
    tally(True)


def test_slurm_script_requeues_a_stopped_run(tmp_path):
    """scripts/slurm_gpt2_124m.sbatch asks for SIGUSR1 90 s before the limit,
    requeues when train exits 75 and only then, and resumes when $OUT holds a
    checkpoint (srun, scontrol and the trainer are stand-ins that log)."""
    script = os.path.join(REPO, "scripts", "slurm_gpt2_124m.sbatch")
    text = open(script).read()
    assert "#SBATCH --signal=USR1@90" in text and "#SBATCH --requeue" in text
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "srun").write_text("#!/bin/sh\nwhile [ \"${1#--}\" != \"$1\" ]; do shift; done\n"
                                  'exec "$@"\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "scontrol $*" >> {calls}\n')
    (bin_dir / "trainer").write_text(f'#!/bin/sh\necho "train $*" >> {calls}\n'
                                     'exit "$FAKE_RC"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    for rc, has_ckpt, requeued, status in [(75, False, True, 0), (0, True, False, 0),
                                           (1, True, False, 1)]:
        if has_ckpt:
            (out / "step_000100.safetensors").write_bytes(b"")
        if calls.exists():
            calls.unlink()
        env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_RC=str(rc),
                   ANATOMY=str(bin_dir / "trainer"), OUT=str(out), SLURM_JOB_ID="4242")
        p = subprocess.run(["bash", script], env=env, capture_output=True, text=True,
                           timeout=30)
        log = calls.read_text()
        assert p.returncode == status, (rc, p.returncode, p.stderr)
        assert ("--resume " + str(out) in log) == has_ckpt, log
        assert ("scontrol requeue 4242" in log) == requeued, log
    tally(True)


def test_zz_fault_summary(capsys):
    """The suite's figures in one line (README, reliability)."""
    line = "faults: {trials} trials, {clean} clean, {lost} lost".format(**TALLY)
    with capsys.disabled():
        print("\n" + line)
    assert TALLY["lost"] == 0, line
