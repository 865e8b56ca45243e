"""Fixtures for the command-line behaviour tests: the binary, a runner that
returns (returncode, stdout, stderr), and small token shards."""
import os
import subprocess

import numpy as np
import pytest

from clihelpers import write_shard

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def binary():
    path = os.environ.get("ANATOMY_BIN") or os.path.join(REPO, "build", "anatomy")
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run `make` first", pytrace=False)
    return path


@pytest.fixture
def run(binary):
    """run(*args) -> (returncode, stdout, stderr), never raising."""
    env = dict(os.environ, OMP_NUM_THREADS="2")

    def _run(*args, timeout=300, cwd=None, text=True):
        p = subprocess.run([binary] + [str(a) for a in args], capture_output=True, text=text,
                           env=env, timeout=timeout, cwd=cwd)
        return p.returncode, p.stdout, p.stderr
    return _run


@pytest.fixture
def shard(tmp_path):
    """A shard of 20,000 random byte-level tokens (V = 256), fresh per test."""
    rng = np.random.default_rng()
    return write_shard(tmp_path / "data_train_000000.bin", rng.integers(0, 256, 20000))
