"""The NCCL transport on build/anatomy-emu: the CUDA backend's data-parallel
path (device collectives on a second stream, gradient buckets reduced while
backward goes on, ZeRO's reduce-scatter and all-gather) over the emulator's
NCCL (kernels/cuda/emu/nccl_emu.cpp, shared memory between the ranks).

fp32 throughout (--precision fp32), so the tolerances are fp32's:
  - N emulated ranks vs 1 emulated rank with N x the accumulation: the same
    arithmetic up to summation order, losses to 1e-6 relative, parameters
    and AdamW moments to 1e-5 relative L2 (test_dist.compare_runs, as the CPU
    tests);
  - N emulated ranks vs N CPU ranks (MPI): different kernels, losses to 1e-5
    relative (design.md's fp32 tolerance; tests/cuda/test_emu_train.py's);
  - NCCL forced on for one process vs no transport: bit for bit.
The runs are tiny (d2, V=256, T=16, a few steps): the emulator is slow."""
import os
import re
import subprocess
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import REPO, clean_env
from test_dist import MODEL, compare_runs, losses, ok, seed

EMU = ["--device", "cuda", "--precision", "fp32"]
RUN = ["train", "--batch", "2", "--seq", "16", "--lr", "1e-3", "--warmup", "2"]
ASAN = "detect_leaks=0:detect_stack_use_after_return=0"
COMM = re.compile(r"^communication: .*\(([^)]*) over (\w+), (\d+) ranks\)", re.M)


@pytest.fixture(scope="session")
def emu():
    path = os.environ.get("ANATOMY_EMU_BIN") or os.path.join(REPO, "build", "anatomy-emu")
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run `make emu` first", pytrace=False)
    return os.path.abspath(path)


def emu_env(**extra):
    return clean_env(ASAN_OPTIONS=ASAN, **extra)


@pytest.fixture
def launch_emu(emu, mpi):
    """launch_emu(np, *args, env=...): `mpirun -np N anatomy-emu ARGS`, np 0:
    the binary alone."""
    def _launch(np_, *args, timeout=240, **env):
        cmd = [emu] + [str(a) for a in args]
        if np_:
            cmd = [mpi, "--oversubscribe", "-np", str(np_)] + cmd
        return subprocess.run(cmd, capture_output=True, text=True, env=emu_env(**env),
                              timeout=timeout)
    return _launch


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(emu, world, args, timeout=240, **env):
    """The ranks started as torchrun would: RANK/WORLD_SIZE/LOCAL_RANK and
    MASTER_ADDR/MASTER_PORT, no MPI variables. Returns [(rc, out, err)] by
    rank."""
    port = free_port()
    procs = [subprocess.Popen([emu] + [str(a) for a in args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=emu_env(RANK=r, WORLD_SIZE=world, LOCAL_RANK=r,
                                          MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **env))
             for r in range(world)]
    out = []
    for p in procs:
        try:
            o, e = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append((p.returncode, o, e))
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, emu):
    """One emulated rank with accumulation 4 (6 steps of 128 tokens), on
    fresh random shards: what every world size must reproduce."""
    from clihelpers import write_shard
    d = tmp_path_factory.mktemp("nccl")
    rng = np.random.default_rng()
    write_shard(d / "t_train_000000.bin", rng.integers(0, 256, 20000))
    write_shard(d / "t_val_000000.bin", rng.integers(0, 256, 4000))
    s = seed()
    print(f"seed {s}")
    common = RUN + MODEL + ["--data", d / "t_train_*.bin", "--val-data", d / "t_val_*.bin",
                            "--val-batches", "4", "--val-every", "3", "--total-batch", "128",
                            "--steps", "6", "--seed", s]
    p = subprocess.run([emu] + [str(a) for a in common + EMU + ["--out", d / "one"]],
                       capture_output=True, text=True, env=emu_env(), timeout=300)
    ok(p)
    assert "1 ranks x 4 accumulation" in p.stdout
    return {"common": common, "one": d / "one", "dir": d}


@pytest.mark.parametrize("np_,zero", [(2, 0), (4, 0), (2, 1), (4, 1)])
def test_nccl_ranks_match(launch_emu, launch, reference, tmp_path, np_, zero):
    """N ranks over NCCL == 1 rank with N x accumulation (emulated), and the
    same N ranks on the CPU over MPI, with and without ZeRO stage 1."""
    common = reference["common"] + ["--zero", zero]
    pn = ok(launch_emu(np_, *common, *EMU, "--out", tmp_path / "many"))
    m = COMM.search(pn.stdout)
    assert m and m[2] == "nccl" and int(m[3]) == np_, pn.stdout
    assert ("reduce-scatter" in m[1]) == bool(zero)
    assert pn.stdout.count("step     6/6") == 1  # only rank 0 prints
    compare_runs(reference["one"], tmp_path / "many", 6)
    # the CPU over MPI, same ranks: different kernels, fp32's tolerance
    ok(launch(np_, *common, "--device", "cpu", "--threads", "1", "--out", tmp_path / "cpu"))
    a, b = losses(tmp_path / "many"), losses(tmp_path / "cpu")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    worst = max(abs(a[s] - b[s]) / abs(b[s]) for s in a)
    print(f"emulated NCCL vs CPU MPI, {np_} ranks, zero {zero}: loss rel {worst:.3g}")
    assert np.isfinite(worst) and worst <= 1e-5, (a, b)


def test_nccl_unequal_shards(launch_emu, reference, tmp_path):
    """3 ranks with a 63-token context: 437,632 parameters do not split into
    equal ZeRO shards, so reduce-scatter and all-gather take the grouped
    ncclReduce / ncclBroadcast path. Compared with 1 rank x 3 accumulation."""
    d = reference["dir"]
    common = RUN + MODEL[:-1] + ["63", "--data", d / "t_train_*.bin", "--val-data",
                                 d / "t_val_*.bin", "--val-batches", "3", "--val-every", "4",
                                 "--total-batch", "96", "--steps", "4", "--seed", seed()]
    ok(launch_emu(0, *common, *EMU, "--out", tmp_path / "one"))
    ok(launch_emu(3, *common, *EMU, "--zero", "1", "--out", tmp_path / "many"))
    compare_runs(tmp_path / "one", tmp_path / "many", 4)


def test_nccl_bf16(launch_emu, reference, tmp_path):
    """bf16 gradients travel as ncclBfloat16: 2 ranks against 1 rank x 2
    accumulation, to design.md's whole-bf16-model loss tolerance (1e-2)."""
    d = reference["dir"]
    common = RUN + MODEL + ["--data", d / "t_train_*.bin", "--total-batch", "64", "--steps",
                            "4", "--seed", seed(), "--device", "cuda", "--precision", "bf16"]
    ok(launch_emu(0, *common, "--out", tmp_path / "one"))
    ok(launch_emu(2, *common, "--out", tmp_path / "many"))
    a, b = losses(tmp_path / "one"), losses(tmp_path / "many")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    worst = max(abs(a[s] - b[s]) / abs(a[s]) for s in a)
    assert np.isfinite(worst) and worst <= 1e-2, (a, b)


USED = re.compile(r"^memory in use per rank: params ([0-9,]+) B \| grads ([0-9,]+) B \| "
                  r"master ([0-9,]+) B \| moments ([0-9,]+) B", re.M)


def test_nccl_bf16_zero_shards_state_on_device(launch_emu, reference, tmp_path):
    """bf16 under ZeRO stage 1 on 2 emulated ranks: the device holds half of
    the fp32 master weights and of the AdamW moments (as the emulator's
    allocator counts them), and the losses and the checkpoint (the shards
    gathered) are the plain 2-rank run's, bit for bit."""
    d = reference["dir"]
    common = RUN + MODEL + ["--data", d / "t_train_*.bin", "--total-batch", "64", "--steps",
                            "3", "--seed", seed(), "--device", "cuda", "--precision", "bf16"]
    plain = ok(launch_emu(2, *common, "--zero", "0", "--out", tmp_path / "plain"))
    zero = ok(launch_emu(2, *common, "--zero", "1", "--out", tmp_path / "zero"))
    a, b = losses(tmp_path / "plain"), losses(tmp_path / "zero")
    assert sorted(a) == sorted(b) == [1, 2, 3]
    assert all(a[s] == b[s] for s in a), (a, b)
    ta = load_file(str(tmp_path / "plain" / "step_000003.safetensors"))
    tb = load_file(str(tmp_path / "zero" / "step_000003.safetensors"))
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert np.array_equal(ta[k], tb[k]), k
    used = lambda p: [int(x.replace(",", "")) for x in USED.search(p.stdout).groups()]
    (pp, pg, pm, pv), (zp, zg, zm, zv) = used(plain), used(zero)
    assert (zp, zg) == (pp, pg) and pm > 0 and pv > 0
    # rank 0's shard is ceil(n / 2) elements of fp32
    assert zm == (pm // 4 + 1) // 2 * 4 and zv == 2 * ((pv // 8 + 1) // 2 * 4), (pm, zm, pv, zv)


def test_nccl_bf16_zero_resume_is_exact(launch_emu, reference, tmp_path):
    """bf16 under ZeRO stage 1 on 2 emulated ranks resumes bit for bit: 4
    steps equal 2, save, resume, 2 more, in the losses and every tensor of
    the last checkpoint. Each rank rounds its bf16 params from the whole
    master copy as step 2 did, before its state shrinks to its shard."""
    d = reference["dir"]
    opts = RUN[1:] + ["--data", d / "t_train_*.bin", "--total-batch", "64", "--steps", "4",
                      "--seed", seed(), "--device", "cuda", "--precision", "bf16", "--zero", "1"]
    ok(launch_emu(2, "train", *MODEL, *opts, "--ckpt-every", "2", "--out", tmp_path / "full"))
    ok(launch_emu(2, "train", "--resume", tmp_path / "full" / "step_000002.safetensors", *opts,
                  "--out", tmp_path / "res"))
    a, b = losses(tmp_path / "full"), losses(tmp_path / "res")
    assert sorted(b) == [3, 4] and all(a[s] == b[s] for s in b), (a, b)
    ta = load_file(str(tmp_path / "full" / "step_000004.safetensors"))
    tb = load_file(str(tmp_path / "res" / "step_000004.safetensors"))
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert np.array_equal(ta[k], tb[k]), k


def test_nccl_forced_on_one_process_is_exact(emu, reference, tmp_path):
    """ANATOMY_DIST_NCCL=1 at world 1 sends the loss and the gradients through
    NCCL (what scripts/gpu-check.sh does on a real GPU): nothing changes, bit
    for bit."""
    d = reference["dir"]
    common = [str(a) for a in RUN + MODEL + EMU + ["--data", d / "t_train_*.bin",
                                                   "--total-batch", "64", "--steps", "4",
                                                   "--seed", seed()]]
    plain = ok(subprocess.run([emu] + common + ["--out", str(tmp_path / "plain")],
                              capture_output=True, text=True, env=emu_env(), timeout=120))
    forced = ok(subprocess.run([emu] + common + ["--out", str(tmp_path / "nccl")],
                               capture_output=True, text=True,
                               env=emu_env(ANATOMY_DIST_NCCL="1"), timeout=120))
    assert "NCCL" not in plain.stderr
    assert "NCCL transport forced on for one process" in forced.stderr, forced.stderr
    a, b = losses(tmp_path / "plain"), losses(tmp_path / "nccl")
    assert sorted(a) == [1, 2, 3, 4] and a == b, (a, b)
    ta = load_file(str(tmp_path / "plain" / "step_000004.safetensors"))
    tb = load_file(str(tmp_path / "nccl" / "step_000004.safetensors"))
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert np.array_equal(ta[k], tb[k]), k


def short(common, steps):
    """common with --steps replaced."""
    out = list(common)
    out[out.index("--steps") + 1] = str(steps)
    return out


def first_losses_match(one, many, steps, tol=1e-6):
    a, b = losses(one), losses(many)
    assert sorted(b) == list(range(1, steps + 1))
    worst = max(abs(a[s] - b[s]) / abs(a[s]) for s in b)
    assert np.isfinite(worst) and worst <= tol, (a, b)


@pytest.mark.parametrize("how", ["tcp", "file", "default"])
def test_nccl_torchrun_launch(emu, reference, tmp_path, how):
    """No MPI variables: RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT as torchrun
    sets them, NCCL's id through --dist-init tcp, file:PATH, or (none given)
    tcp. This build links MPI, but a torchrun-style launch never initialises
    it (the id does not need it), so this is the path of a build without MPI.
    2 ranks x 2 accumulation == 1 rank x 4 (the module's reference): the
    whole run for tcp, the first 3 steps' losses for the others."""
    init = {"tcp": ["--dist-init", "tcp"], "file": ["--dist-init", f"file:{tmp_path}/id"],
            "default": []}[how]
    steps = 6 if how == "tcp" else 3
    common = [str(a) for a in short(reference["common"], steps) + EMU]
    res = torchrun(emu, 2, common + init + ["--out", str(tmp_path / "many")])
    for r, (rc, out, err) in enumerate(res):
        assert rc == 0, f"rank {r}: rc {rc}\n{out}\n{err}"
    out0 = res[0][1]
    m = COMM.search(out0)
    assert m and m[2] == "nccl" and m[3] == "2", out0
    assert "step" not in res[1][1]  # only rank 0 prints
    if how == "file":
        assert os.path.exists(tmp_path / "id")
    if steps == 6:
        compare_runs(reference["one"], tmp_path / "many", 6)
    else:
        first_losses_match(reference["one"], tmp_path / "many", steps)


def test_nccl_mpirun_with_file_rendezvous(launch_emu, reference, tmp_path):
    """Under mpirun, --dist-init file:PATH takes the id through the file
    instead of MPI (MPI is then never initialised)."""
    p = ok(launch_emu(2, *short(reference["common"], 3), *EMU, "--dist-init",
                      f"file:{tmp_path}/id", "--out", tmp_path / "many"))
    assert os.path.exists(tmp_path / "id")
    assert COMM.search(p.stdout)[2] == "nccl"
    first_losses_match(reference["one"], tmp_path / "many", 3)


@pytest.mark.parametrize("kind", ["kill", "hang"])
def test_nccl_failed_rank_ends_job(emu, reference, kind):
    """torchrun-style (no mpirun to end the job): rank 1 is killed, or hangs
    outside communication, at the start of step 2. Rank 0 must not wait
    forever: its watchdog ends it within --dist-timeout + 1 s of its
    collective stalling (kill), or on NCCL's asynchronous error once rank 1's
    watchdog has aborted the communicator (hang), naming the rank."""
    d = reference["dir"]
    args = RUN + MODEL + EMU + ["--data", d / "t_train_*.bin", "--steps", "100000",
                                "--dist-timeout", "8"]
    t0 = time.monotonic()
    res = torchrun(emu, 2, args, timeout=90, ANATOMY_DIST_FAULT=f"{kind}:1:1")
    took = time.monotonic() - t0
    (rc0, out0, err0), (rc1, _, err1) = res
    assert rc0 != 0 and rc1 != 0 and took < 80, (took, err0, err1)
    assert "step     1/100000" in out0 and "step     3/100000" not in out0, (out0, err0)
    if kind == "kill":
        assert re.search(r"anatomy: error: rank 0: (collective [\w ]+ timed out after \d+ s|"
                         r"NCCL: )", err0), err0
    else:
        assert "anatomy: error: rank 1: reached no collective for" in err1, err1
        assert re.search(r"rank 0: (NCCL: remote process exited|[\w ]+: .*remote process|"
                         r"collective [\w ]+ timed out)", err0), err0


TRACE = re.compile(r"^nccl_emu: rank 0: (\w+) count (\d+) datatype (\d+) root (-?\d+)$", re.M)
NCCL_FLOAT32 = 7


def test_nccl_gradient_buckets(launch_emu, reference, tmp_path):
    """The last micro-batch's backward hands its gradients over layer by layer
    (dist_bucket_ready): the step's fp32 all-reduces (NCCL_DEBUG=INFO,
    NCCL_DEBUG_SUBSYS=COLL: the emulator logs each collective) are several
    buckets, whose sizes add up to the whole parameter buffer exactly: the
    end-of-step all-reduce covers only what no bucket did, and nothing twice."""
    d = reference["dir"]
    p = ok(launch_emu(2, *RUN, *MODEL, *EMU, "--data", d / "t_train_*.bin", "--total-batch", "64",
                      "--steps", "1", "--seed", seed(), NCCL_DEBUG="INFO",
                      NCCL_DEBUG_SUBSYS="COLL"))
    colls = [(m[1], int(m[2]), int(m[3])) for m in TRACE.finditer(p.stderr)]
    grads = [n for kind, n, t in colls if kind == "AllReduce" and t == NCCL_FLOAT32]
    assert len(grads) >= 3, colls  # d2: 2 layers, then embeddings and the rest
    out = subprocess.run([os.environ.get("ANATOMY_BIN") or os.path.join(REPO, "build", "anatomy"),
                          "info", *MODEL, "--views"], capture_output=True, text=True).stdout
    nparams = max(int(f[-3]) + int(f[-2]) for f in (ln.split() for ln in out.splitlines())
                  if f and f[-1] in ("yes", "no") and f[-2].isdigit())
    assert sum(grads) == nparams, (grads, nparams)
