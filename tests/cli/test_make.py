"""The README's two commands, `make demo` and `make`, in either order on a
fresh tree: what `make -n` plans for each from an empty build folder (nothing
is built or run)."""
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def plan(target, build):
    p = subprocess.run(["make", "-n", "-C", REPO, f"BUILD={build}", target],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def first(lines, needle):
    for i, line in enumerate(lines):
        if needle in line:
            return i
    return None


@pytest.mark.parametrize("target,last", [("demo", "scripts/demo.sh"), ("all", None)])
def test_fresh_tree_target_fetches_the_vocabulary(tmp_path, target, last):
    build = tmp_path / "build"  # empty: nothing built, no vocabulary cached
    lines = plan(target, build)
    vocab = first(lines, "data/recipes/gpt2_vocab.sh")
    assert vocab is not None, f"make {target} on a fresh tree never fetches the GPT-2 " \
        f"vocabulary:\n" + "\n".join(lines)
    assert f"{build}/.cache/gpt2" in lines[vocab]
    assert first(lines, f"-o {build}/anatomy") is not None  # and builds the binary
    if last:
        run = first(lines, last)
        assert run is not None and run > vocab, "\n".join(lines)
        assert run > first(lines, f"-o {build}/anatomy")
