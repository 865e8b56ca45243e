"""Multi-rank behaviour of `anatomy train` on the CPU over MPI: data-parallel
equivalence with gradient accumulation, exact resume, resume on another world
size, a dead or hung rank ending the job, launcher environment detection, and
a build without MPI refusing several ranks."""
import json
import os
import re
import subprocess
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import REPO, clean_env

# B*T = 32 tokens per micro-batch; --total-batch 128 = 4 micro-batches per step.
MODEL = ["--preset", "d2", "--vocab-size", "256", "--max-seq", "64"]
RUN = ["train", "--batch", "2", "--seq", "16", "--threads", "1", "--lr", "1e-3", "--warmup", "2"]
TINY = RUN + MODEL


def seed():
    return int(np.random.default_rng().integers(1, 1 << 30))


def losses(out_dir, key="loss"):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r[key] for r in rows if key in r}


def ok(p):
    assert p.returncode == 0, f"rc {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def rel_l2(a, b):
    return np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(b.astype(np.float64)),
                                                           1e-30)


def comparable(name, a, b):
    """The key third of c_attn.bias has a gradient that is zero in exact
    arithmetic (softmax ignores a constant added to every score of a row), so
    it holds rounding noise (~1e-11) that AdamW normalises into full-size
    steps: it differs between any two summation orders. Compare the rest."""
    if name.endswith("attn.c_attn.bias"):
        c = a.shape[0] // 3
        return np.concatenate([a[:c], a[2 * c:]]), np.concatenate([b[:c], b[2 * c:]])
    return a, b


def compare_runs(one, many, steps, tol_loss=1e-6, tol_params=1e-5):
    la, lb = losses(one), losses(many)
    assert sorted(la) == sorted(lb) == list(range(1, steps + 1))
    worst = max(abs(la[s] - lb[s]) / abs(la[s]) for s in la)
    assert np.isfinite(worst) and worst <= tol_loss, f"loss relative difference {worst:g}"
    va, vb = losses(one, "val_loss"), losses(many, "val_loss")
    assert va and sorted(va) == sorted(vb)
    vworst = max(abs(va[s] - vb[s]) / abs(va[s]) for s in va)
    assert vworst <= tol_loss, f"validation loss relative difference {vworst:g}"
    ta = load_file(os.path.join(one, f"step_{steps:06d}.safetensors"))
    tb = load_file(os.path.join(many, f"step_{steps:06d}.safetensors"))
    assert sorted(ta) == sorted(tb)
    # All of it at fp32's tolerance; single tensors looser, since AdamW turns
    # last-bit differences in tiny gradients into visible ones in small tensors.
    pairs = [comparable(k, tb[k], ta[k]) for k in sorted(ta)]
    pall = rel_l2(np.concatenate([p[0].ravel() for p in pairs]),
                  np.concatenate([p[1].ravel() for p in pairs]))
    pworst = max(rel_l2(*p) for p in pairs)
    assert np.isfinite(pall) and pall <= tol_params, f"parameters+moments rel. L2 {pall:g}"
    assert pworst <= 100 * tol_params, f"worst tensor rel. L2 {pworst:g}"
    print(f"observed: loss rel {worst:.3g}, val rel {vworst:.3g}, state rel L2 {pall:.3g}, "
          f"worst tensor {pworst:.3g}")
    return worst


@pytest.mark.parametrize("np_,shuffle,zero", [(2, False, 0), (4, True, 0), (2, True, 1),
                                              (4, False, 1), (3, True, 1)])
def test_ranks_equal_accumulation(launch, shards, tmp_path, np_, shuffle, zero):
    """N ranks x accumulation a == 1 rank x accumulation N*a, 20 steps, with
    and without ZeRO stage 1. With 3 ranks the model has a 63-token context,
    so that its 437,632 parameters split into unequal ZeRO shards."""
    train, val = shards
    s = seed()
    total = 128 if 4 % np_ == 0 else 32 * np_
    model = MODEL if np_ != 3 else MODEL[:-1] + ["63"]
    common = RUN + model + ["--data", train, "--val-data", val, "--val-batches", "5",
                            "--val-every", "10", "--total-batch", total, "--steps", "20",
                            "--seed", s]
    common += ["--shuffle"] if shuffle else []
    p1 = ok(launch(0, *common, "--out", tmp_path / "one"))
    pn = ok(launch(np_, *common, "--zero", zero, "--out", tmp_path / "many"))
    assert ("ZeRO stage 1" in pn.stdout) == bool(zero)
    assert f"1 ranks x {total // 32} accumulation" in p1.stdout
    assert f"{np_} ranks x {total // 32 // np_} accumulation" in pn.stdout
    # only rank 0 prints
    assert pn.stdout.count("training gpt2") == 1 and pn.stdout.count("step    20/20") == 1
    compare_runs(tmp_path / "one", tmp_path / "many", 20)


@pytest.mark.parametrize("zero", [0, 1])
def test_resume_two_ranks_is_exact(launch, shards, tmp_path, zero):
    train, _ = shards
    common = RUN + ["--data", train, "--total-batch", "128", "--steps", "12", "--shuffle",
                    "--seed", seed(), "--zero", zero]
    ok(launch(2, *common, *MODEL, "--ckpt-every", "6", "--out", tmp_path / "full"))
    ok(launch(2, *common, "--resume", tmp_path / "full" / "step_000006.safetensors",
              "--out", tmp_path / "res"))
    full, res = losses(tmp_path / "full"), losses(tmp_path / "res")
    assert sorted(res) == list(range(7, 13))
    assert all(full[s] == res[s] for s in res), (full, res)
    a = load_file(str(tmp_path / "full" / "step_000012.safetensors"))
    b = load_file(str(tmp_path / "res" / "step_000012.safetensors"))
    assert sorted(a) == sorted(b) and any(k.startswith("adamw.m.") for k in a)
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_recurrent_resume_two_ranks_is_exact(launch, shards, tmp_path):
    """An LSTM's carried state: every rank's streams gathered into the one
    checkpoint (train.carried [2, state]), each rank's handed back on resume,
    so a 2-rank resume continues the streams bit for bit; on 1 rank the
    streams differ and restart from zero."""
    train, val = shards
    common = RUN + ["--data", train, "--val-data", val, "--val-batches", "2", "--val-every",
                    "4", "--total-batch", "128", "--steps", "8", "--seed", seed()]
    model = ["--preset", "lstm-tiny", "--vocab-size", "256"]
    ok(launch(2, *common, *model, "--ckpt-every", "4", "--out", tmp_path / "full"))
    ck = tmp_path / "full" / "step_000004.safetensors"
    c = load_file(str(ck))["train.carried"]
    assert c.shape == (2, 2 * 2 * 32) and (c[0] != c[1]).any() and (c != 0).all(axis=1).any()
    ok(launch(2, *common, "--resume", ck, "--out", tmp_path / "res"))
    full, res = losses(tmp_path / "full"), losses(tmp_path / "res")
    assert sorted(res) == list(range(5, 9))
    assert all(full[s] == res[s] for s in res), (full, res)
    assert losses(tmp_path / "full", "val_loss")[8] == losses(tmp_path / "res", "val_loss")[8]
    a = load_file(str(tmp_path / "full" / "step_000008.safetensors"))
    b = load_file(str(tmp_path / "res" / "step_000008.safetensors"))
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    p = ok(launch(0, *common, "--resume", ck, "--out", tmp_path / "one"))
    assert "the streams start again from zero" in p.stdout


@pytest.mark.parametrize("zero", [0, 1])
def test_resume_on_another_world_size(launch, shards, tmp_path, zero):
    """A 2-rank checkpoint (ZeRO's gathered into the same single file)
    resumes on 1 rank: same data order, so the losses match the
    uninterrupted 2-rank run to summation order."""
    train, _ = shards
    common = RUN + ["--data", train, "--total-batch", "128", "--steps", "10", "--seed", seed()]
    ok(launch(2, *common, *MODEL, "--zero", zero, "--ckpt-every", "5",
              "--out", tmp_path / "full"))
    p = ok(launch(0, *common, "--resume", tmp_path / "full" / "step_000005.safetensors",
                  "--out", tmp_path / "one"))
    assert "data position 10 -> 20 micro-batches per rank" in p.stdout
    full, one = losses(tmp_path / "full"), losses(tmp_path / "one")
    assert sorted(one) == list(range(6, 11))
    worst = max(abs(full[s] - one[s]) / abs(full[s]) for s in one)
    assert worst <= 1e-6, worst
    # a world size that cannot split the global batch is refused by name
    p = launch(0, *RUN, "--data", train, "--total-batch", "96", "--steps", "10",
               "--resume", tmp_path / "full" / "step_000005.safetensors")
    assert p.returncode == 1 and "--total-batch" in p.stderr


def test_zero_matches_plain_bit_for_bit(launch, shards, tmp_path):
    """ZeRO stage 1 on 2 ranks: each rank keeps half of the AdamW moments
    (the start-up memory plan says so) and updates only its half, yet the
    losses and the checkpoint (the shards gathered into one file) are those
    of the plain 2-rank run, bit for bit."""
    train, _ = shards
    common = RUN + MODEL + ["--data", train, "--total-batch", "128", "--steps", "6",
                            "--seed", seed(), "--ckpt-every", "3"]
    plain = ok(launch(2, *common, "--zero", "0", "--out", tmp_path / "plain"))
    zero = ok(launch(2, *common, "--zero", "1", "--out", tmp_path / "zero"))
    a, b = losses(tmp_path / "plain"), losses(tmp_path / "zero")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert all(a[s] == b[s] for s in a), (a, b)
    for step in (3, 6):
        ta = load_file(str(tmp_path / "plain" / f"step_{step:06d}.safetensors"))
        tb = load_file(str(tmp_path / "zero" / f"step_{step:06d}.safetensors"))
        assert sorted(ta) == sorted(tb) and any(k.startswith("adamw.v.") for k in ta)
        for k in ta:
            assert np.array_equal(ta[k], tb[k]), (step, k)
    def plan(p):
        m = re.search(r"memory plan per rank .*\| moments ([0-9,]+) B", p.stdout)
        assert m, p.stdout
        return int(m.group(1).replace(",", ""))
    assert plan(plain) == 2 * plan(zero)


def test_zero_resumes_on_another_world_size_with_zero(launch, shards, tmp_path):
    """A 2-rank ZeRO checkpoint resumes on 4 ranks under ZeRO (every rank
    takes its new, smaller shard of the one file): the losses follow the
    uninterrupted 2-rank run to summation order."""
    train, _ = shards
    common = RUN + ["--data", train, "--total-batch", "128", "--steps", "10", "--seed", seed(),
                    "--zero", "1"]
    ok(launch(2, *common, *MODEL, "--ckpt-every", "5", "--out", tmp_path / "full"))
    ok(launch(4, *common, "--resume", tmp_path / "full" / "step_000005.safetensors",
              "--out", tmp_path / "four"))
    full, four = losses(tmp_path / "full"), losses(tmp_path / "four")
    assert sorted(four) == list(range(6, 11))
    worst = max(abs(full[s] - four[s]) / abs(full[s]) for s in four)
    assert worst <= 1e-6, worst
    a = load_file(str(tmp_path / "full" / "step_000010.safetensors"))
    b = load_file(str(tmp_path / "four" / "step_000010.safetensors"))
    assert sorted(a) == sorted(b)
    state = lambda t: np.concatenate([t[k].ravel().astype(np.float64) for k in sorted(t)])
    assert rel_l2(state(b), state(a)) <= 1e-5


@pytest.mark.parametrize("kind", ["exit", "kill", "hang"])
def test_failed_rank_ends_job(launch, shards, kind):
    """Rank 1 exits, is killed (SIGKILL) or hangs outside communication at
    step 3: the job ends within 60 s and the output names rank 1."""
    train, _ = shards
    t0 = time.monotonic()
    p = launch(2, *TINY, "--data", train, "--steps", "100000", "--dist-timeout", "5",
               timeout=60, ANATOMY_DIST_FAULT=f"{kind}:1:3")
    took = time.monotonic() - t0
    text = p.stdout + p.stderr
    assert p.returncode != 0 and took < 60
    assert "step     3/100000" in p.stdout and "step   100/100000" not in p.stdout
    named = {"exit": "anatomy: error: rank 1: injected fault",
             "kill": "process rank 1 with PID",
             "hang": "anatomy: error: rank 1: reached no collective for"}[kind]
    assert named in text, text


def test_frozen_peer_times_out_in_collective(launch, shards):
    """Rank 1 freezes whole (SIGSTOP: its watchdog cannot speak): rank 0's
    watchdog ends the job from inside the gradient all-reduce, naming itself
    and the collective, after --dist-timeout + 1 s."""
    train, _ = shards
    t0 = time.monotonic()
    p = launch(2, *TINY, "--data", train, "--steps", "100000", "--dist-timeout", "3",
               timeout=60, ANATOMY_DIST_FAULT="stop:1:2")
    took = time.monotonic() - t0
    assert p.returncode != 0 and 4 <= took < 30, took
    assert re.search(r"anatomy: error: rank 0: collective (loss|gradients) timed out after "
                     r"\d+ s", p.stderr), p.stderr


def test_dead_peer_times_out_in_collective(launch, shards):
    """Rank 0 hangs at step 2: rank 1 waits in the gradient all-reduce. Both
    watchdogs run (the hung rank reports first, the waiting one a second
    later); the job must end within the bound with one of the two reports."""
    train, _ = shards
    t0 = time.monotonic()
    p = launch(2, *TINY, "--data", train, "--steps", "100000", "--dist-timeout", "3",
               timeout=60, ANATOMY_DIST_FAULT="hang:0:2")
    assert p.returncode != 0 and time.monotonic() - t0 < 30
    assert re.search(r"rank [01]: (reached no collective|collective \w+ timed out)", p.stderr)


ENV_CASES = [
    ({}, (0, 1, 0, "none")),
    ({"RANK": 5, "WORLD_SIZE": 16, "LOCAL_RANK": 5, "LOCAL_WORLD_SIZE": 8},
     (5, 16, 5, "torchrun", 8)),
    ({"SLURM_PROCID": 9, "SLURM_NTASKS": 16, "SLURM_LOCALID": 1,
      "SLURM_STEP_TASKS_PER_NODE": "8(x2)"}, (9, 16, 1, "slurm", 8)),
    ({"RANK": 3, "WORLD_SIZE": 8, "LOCAL_RANK": 1}, (3, 8, 1, "torchrun")),
    ({"RANK": 2, "WORLD_SIZE": 4}, (2, 4, 2, "torchrun")),
    ({"SLURM_PROCID": 13, "SLURM_NTASKS": 16, "SLURM_LOCALID": 5}, (13, 16, 5, "slurm")),
    ({"SLURM_PROCID": 3, "SLURM_NTASKS": 16, "SLURM_STEP_NUM_TASKS": 4, "SLURM_LOCALID": 3},
     (3, 4, 3, "slurm")),
    ({"OMPI_COMM_WORLD_RANK": 1, "OMPI_COMM_WORLD_SIZE": 2, "OMPI_COMM_WORLD_LOCAL_RANK": 1,
      "RANK": 7, "WORLD_SIZE": 9, "SLURM_PROCID": 0, "SLURM_NTASKS": 1}, (1, 2, 1, "mpirun")),
    ({"SLURM_PROCID": 6, "SLURM_NTASKS": 7, "RANK": 0, "WORLD_SIZE": 1}, (6, 7, 6, "slurm")),
]


@pytest.mark.parametrize("env,want", ENV_CASES)
def test_env_detection(binary, env, want):
    p = subprocess.run([binary, "train", "--dist-info"], capture_output=True, text=True,
                       env=clean_env(**env))
    assert p.returncode == 0, p.stderr
    m = re.match(r"rank (\d+) world (\d+) local_rank (\d+) source (\w+) mpi (yes|no) "
                 r"local_world (\d+)$", p.stdout.strip())
    assert m, p.stdout
    got = (int(m[1]), int(m[2]), int(m[3]), m[4], int(m[6]))
    assert got[:len(want)] == want


def test_env_detection_random(binary):
    rng = np.random.default_rng()
    for _ in range(5):
        w = int(rng.integers(1, 4096))
        r, lr = int(rng.integers(0, w)), int(rng.integers(0, 8))
        p = subprocess.run([binary, "train", "--dist-info"], capture_output=True, text=True,
                           env=clean_env(RANK=r, WORLD_SIZE=w, LOCAL_RANK=lr))
        assert p.stdout.startswith(f"rank {r} world {w} local_rank {lr} source torchrun"), p


@pytest.mark.parametrize("env,msg", [
    ({"RANK": 4, "WORLD_SIZE": 4}, "RANK: rank 4 is not below the world size 4"),
    ({"RANK": "x1", "WORLD_SIZE": 4}, "RANK: 'x1' is not an integer"),
    ({"RANK": 1}, "RANK: set without WORLD_SIZE"),
    ({"WORLD_SIZE": 2}, "WORLD_SIZE: set without RANK"),
    ({"SLURM_PROCID": 0, "SLURM_NTASKS": 0}, "SLURM_NTASKS: '0' is not an integer in [1,"),
    ({"OMPI_COMM_WORLD_RANK": -1, "OMPI_COMM_WORLD_SIZE": 2}, "OMPI_COMM_WORLD_RANK"),
])
def test_env_detection_errors(binary, env, msg):
    p = subprocess.run([binary, "train", "--dist-info"], capture_output=True, text=True,
                       env=clean_env(**env))
    assert p.returncode == 1 and msg in p.stderr, p.stderr


def test_mpirun_env_seen_by_each_rank(launch):
    p = ok(launch(2, "train", "--dist-info"))
    lines = sorted(p.stdout.split("\n"))
    assert [ln for ln in lines if ln] == [
        "rank 0 world 2 local_rank 0 source mpirun mpi yes local_world 2",
        "rank 1 world 2 local_rank 1 source mpirun mpi yes local_world 2"]


def test_torchrun_env_without_launcher_is_refused(binary, shards):
    """world 2 from RANK/WORLD_SIZE, but no MPI launcher: MPI sees 1 process."""
    train, _ = shards
    p = subprocess.run([binary] + TINY + ["--data", train, "--steps", "2"], capture_output=True,
                       text=True, env=clean_env(RANK=0, WORLD_SIZE=2), timeout=60)
    assert p.returncode == 1
    assert "says rank 0 of 2 but MPI says rank 0 of 1" in p.stderr, p.stderr


@pytest.fixture(scope="module")
def nompi_binary(tmp_path_factory):
    """build/anatomy relinked with host/dist.c compiled without MPI."""
    build = os.path.dirname(os.environ.get("ANATOMY_BIN") or
                            os.path.join(REPO, "build", "anatomy"))
    lib, main = os.path.join(build, "libanatomy.a"), os.path.join(build, "obj/host/main.o")
    if not (os.path.exists(lib) and os.path.exists(main)):
        pytest.fail(f"{lib} or {main} missing: run `make` first", pytrace=False)
    d = tmp_path_factory.mktemp("nompi")
    obj, exe = str(d / "dist.o"), str(d / "anatomy")
    cc = ["gcc", "-std=c11", "-D_GNU_SOURCE", "-O1", "-fopenmp"]
    # a sanitizer build (make asan) links with its runtime
    syms = subprocess.run(["nm", main], capture_output=True, text=True).stdout
    if "__asan_init" in syms:
        cc.append("-fsanitize=address,undefined")
    subprocess.run(cc + ["-c", os.path.join(REPO, "host/dist.c"), "-o", obj], check=True)
    # the BLAS the build links (mk/blas.mk): its flags as `make blas-info` prints them
    info = subprocess.run(["make", "-s", "--no-print-directory", "blas-info"], cwd=REPO,
                          capture_output=True, text=True).stdout
    blas = next((l.split(":", 1)[1].split() for l in info.splitlines()
                 if l.strip().startswith("LIBS:")), ["-lopenblas"])
    subprocess.run(cc + [main, obj, lib, "-o", exe] + blas + ["-lm", "-lpthread"], check=True)
    return exe


def test_build_without_mpi(nompi_binary, shards, tmp_path):
    train, _ = shards
    p = subprocess.run([nompi_binary, "train", "--dist-info"], capture_output=True, text=True,
                       env=clean_env(SLURM_PROCID=1, SLURM_NTASKS=2))
    assert p.stdout.strip() == "rank 1 world 2 local_rank 1 source slurm mpi no local_world 0"
    p = subprocess.run([nompi_binary] + TINY + ["--data", train, "--steps", "2"],
                       capture_output=True, text=True, timeout=60,
                       env=clean_env(OMPI_COMM_WORLD_RANK=0, OMPI_COMM_WORLD_SIZE=2))
    assert p.returncode == 1
    assert "asks for 2 ranks but this anatomy was built without MPI" in p.stderr, p.stderr
    # one process needs no MPI at all
    p = subprocess.run([nompi_binary] + TINY + ["--data", train, "--steps", "2"],
                       capture_output=True, text=True, timeout=60, env=clean_env())
    assert p.returncode == 0 and "step     2/2" in p.stdout, p.stderr


# ---- rendezvous: how NCCL's unique id will travel without MPI ----

@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    exe = str(tmp_path_factory.mktemp("rdv") / "rendezvous_probe")
    subprocess.run(["gcc", "-std=c11", "-D_GNU_SOURCE", "-O1", "-Wall", "-Wextra",
                    os.path.join(REPO, "tests/dist/rendezvous_probe.c"),
                    os.path.join(REPO, "host/dist.c"), "-o", exe, "-lpthread"], check=True)
    return exe


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(probe, world, spec, seed_, timeout_s, ranks=None, **env):
    procs = [subprocess.Popen([probe, spec, str(seed_), str(timeout_s)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=clean_env(RANK=r, WORLD_SIZE=world, **env))
             for r in (ranks if ranks is not None else range(world))]
    return [(p.wait(timeout=60), p.stdout.read(), p.stderr.read()) for p in procs]


@pytest.mark.parametrize("how", ["tcp", "file"])
def test_rendezvous_delivers_rank0_blob(probe, tmp_path, how):
    world, s = 4, seed()
    spec = "tcp" if how == "tcp" else f"file:{tmp_path}/id"
    # the other ranks start first: they must wait for rank 0, not fail
    res = run_ranks(probe, world, spec, s, 20, ranks=[3, 1, 2, 0], MASTER_ADDR="localhost",
                    MASTER_PORT=free_port())
    blobs = {}
    for rc, out, errt in res:
        assert rc == 0, errt
        r, hexs = out.strip().split(":")
        blobs[r] = hexs
    assert sorted(blobs) == [f"rank {r}" for r in range(world)]
    assert len(set(blobs.values())) == 1 and len(blobs["rank 0"]) == 256
    assert blobs["rank 0"] != "00" * 128


def test_rendezvous_times_out_by_name(probe, tmp_path):
    port = free_port()
    t0 = time.monotonic()
    (rc, _, errt), = run_ranks(probe, 2, "tcp", 1, 2, ranks=[1], MASTER_ADDR="127.0.0.1",
                               MASTER_PORT=port)
    assert rc == 1 and f"rank 1: no rendezvous with rank 0 at 127.0.0.1:{port}" in errt
    (rc, _, errt), = run_ranks(probe, 3, "tcp", 1, 2, ranks=[0], MASTER_PORT=port)
    assert rc == 1 and "rank 0: only 0 of 2 ranks connected" in errt
    (rc, _, errt), = run_ranks(probe, 2, f"file:{tmp_path}/none", 1, 1, ranks=[1])
    assert rc == 1 and "rank 0 did not write it in time" in errt
    assert time.monotonic() - t0 < 20


@pytest.mark.parametrize("spec,env,msg", [
    ("udp", {}, "'udp' is not tcp or file:PATH"),
    ("tcp", {"MASTER_PORT": "70000"}, "MASTER_PORT: '70000' is not a port number"),
    ("tcp", {"MASTER_PORT": "29500"}, "MASTER_ADDR: not set"),
])
def test_rendezvous_bad_setup(probe, spec, env, msg):
    (rc, _, errt), = run_ranks(probe, 2, spec, 1, 2, ranks=[1], **env)
    assert rc == 1 and msg in errt, errt
