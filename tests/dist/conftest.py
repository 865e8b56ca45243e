"""Fixtures for the multi-rank tests: the binary, mpirun (as root it needs
OMPI_ALLOW_RUN_AS_ROOT*; --oversubscribe lets 4 ranks share 2 cores), and
small token shards. Every test keeps its models tiny (d2, V=256, T=16)."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "cli"))
from clihelpers import write_shard  # noqa: E402

# Launcher variables a test must not inherit from the shell that runs it.
LAUNCH_VARS = [v for v in os.environ if v.startswith(("OMPI_COMM_WORLD", "SLURM_", "PMIX_"))] + [
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ANATOMY_DIST_FAULT"]


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture(scope="session")
def binary():
    path = os.environ.get("ANATOMY_BIN") or os.path.join(REPO, "build", "anatomy")
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run `make` first", pytrace=False)
    return os.path.abspath(path)


@pytest.fixture(scope="session")
def mpi(binary):
    """mpirun and an MPI-enabled binary, or the tests that need them fail."""
    if not shutil.which("mpirun"):
        pytest.fail("mpirun not found (apt-get install openmpi-bin)", pytrace=False)
    out = subprocess.run([binary, "train", "--dist-info"], capture_output=True, text=True,
                         env=clean_env()).stdout
    if "mpi yes" not in out:
        pytest.fail(f"{binary} was built without MPI (mk/dist.mk found no mpicc)", pytrace=False)
    return shutil.which("mpirun")


@pytest.fixture
def launch(binary, mpi):
    """launch(np, *args, env=...) -> CompletedProcess of `mpirun -np N anatomy ARGS`
    (np 0: the binary alone, no launcher)."""
    def _launch(np_, *args, timeout=120, **env):
        cmd = [binary] + [str(a) for a in args]
        if np_:
            cmd = [mpi, "--oversubscribe", "-np", str(np_)] + cmd
        return subprocess.run(cmd, capture_output=True, text=True, env=clean_env(**env),
                              timeout=timeout)
    return _launch


@pytest.fixture
def shards(tmp_path):
    """Fresh random byte-level train and validation shards (V = 256)."""
    rng = np.random.default_rng()
    d = tmp_path / "data"
    d.mkdir()
    write_shard(d / "t_train_000000.bin", rng.integers(0, 256, 20000))
    write_shard(d / "t_val_000000.bin", rng.integers(0, 256, 4000))
    return str(d / "t_train_*.bin"), str(d / "t_val_*.bin")
