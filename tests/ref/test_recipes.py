"""The download recipes of data/recipes/, run on local files.

This machine cannot reach the real sources, so each recipe is pointed at a
file:// mirror built here (its *_URL variable) holding small files of the
right shape, then at damaged ones: a recipe must keep good files and refuse,
without leaving a finished-looking file, bad ones. tinyshakespeare runs for
real (its text is in ../shared/data), including its GPT-2 shards.
"""
import hashlib
import os
import random
import struct
import subprocess

import pytest

from conftest import REPO, anatomy_bin

SEED = int(os.environ.get("ANATOMY_TEST_SEED") or random.SystemRandom().randrange(1 << 31))
RECIPES = os.path.join(REPO, "data", "recipes")


def shard_bytes(tokens, magic=20240520, version=1, count=None):
    header = [magic, version, len(tokens) if count is None else count] + [0] * 253
    return struct.pack("<256i", *header) + struct.pack(f"<{len(tokens)}H", *tokens)


def recipe(name, *args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(["sh", os.path.join(RECIPES, name)] + [str(a) for a in args],
                          capture_output=True, text=True, env=e, cwd=REPO, timeout=300)


def test_fineweb_from_a_mirror(tmp_path):
    rng = random.Random(SEED)
    mirror, out = tmp_path / "mirror", tmp_path / "out"
    mirror.mkdir()
    names = ["fineweb_val_000000.bin"] + [f"fineweb_train_{i:06d}.bin" for i in (1, 2, 3)]
    for name in names:
        toks = [rng.randrange(50257) for _ in range(rng.randrange(1, 5000))]
        (mirror / name).write_bytes(shard_bytes(toks))
    env = {"FINEWEB_URL": f"file://{mirror}"}
    p = recipe("fineweb10B.sh", 2, out, env=env)
    assert p.returncode == 0, p.stderr
    for name in names[:3]:
        assert (out / name).read_bytes() == (mirror / name).read_bytes()
    assert not (out / names[3]).exists()
    assert not list(out.glob("*.part"))
    # again: everything is there, nothing is fetched
    p = recipe("fineweb10B.sh", 2, out, env={"FINEWEB_URL": "file:///nonexistent"})
    assert p.returncode == 0 and p.stdout.count("already here") == 3, p.stdout + p.stderr
    # a truncated download is resumed
    full = (mirror / names[3]).read_bytes()
    (out / (names[3] + ".part")).write_bytes(full[:len(full) // 2])
    p = recipe("fineweb10B.sh", 3, out, env=env)
    assert p.returncode == 0, p.stderr
    assert (out / names[3]).read_bytes() == full


@pytest.mark.parametrize("damage,message", [
    ("magic", "not an llm.c token shard"),
    ("version", "version 2"),
    ("count", "its header says"),
    ("short", "shorter than a shard header"),
])
def test_fineweb_refuses_bad_shards(tmp_path, damage, message):
    mirror, out = tmp_path / "mirror", tmp_path / "out"
    mirror.mkdir()
    good = shard_bytes(list(range(100)))
    bad = {"magic": shard_bytes(list(range(100)), magic=20240521),
           "version": shard_bytes(list(range(100)), version=2),
           "count": shard_bytes(list(range(100)), count=101),
           "short": good[:10]}[damage]
    (mirror / "fineweb_val_000000.bin").write_bytes(good)
    (mirror / "fineweb_train_000001.bin").write_bytes(bad)
    p = recipe("fineweb10B.sh", 1, out, env={"FINEWEB_URL": f"file://{mirror}"})
    assert p.returncode != 0
    assert message in p.stderr, p.stderr
    assert (out / "fineweb_val_000000.bin").exists()
    assert not (out / "fineweb_train_000001.bin").exists()
    assert not (out / "fineweb_train_000001.bin.part").exists()


def test_fineweb_argument_checked(tmp_path):
    for bad in ("0", "104", "x"):
        p = recipe("fineweb10B.sh", bad, tmp_path)
        assert p.returncode != 0 and "TRAIN_SHARDS" in p.stderr


def hellaswag_line(rng, i):
    return ('{"ind": %d, "activity_label": "a", "ctx_a": "x", "ctx_b": "y", "ctx": "x y", '
            '"split": "val", "split_type": "indomain", "label": %d, '
            '"endings": ["a", "b", "c", "d"], "source_id": "s"}' % (i, rng.randrange(4)))


@pytest.mark.parametrize("damage", [None, "short", "field"])
def test_hellaswag_from_a_mirror(tmp_path, damage):
    rng = random.Random(SEED + 1)
    lines = [hellaswag_line(rng, i) for i in range(10042)]
    if damage == "short":
        lines = lines[:-1]
    if damage == "field":
        k = rng.randrange(len(lines))
        lines[k] = lines[k].replace('"endings"', '"ending"')
    src = tmp_path / "hellaswag_val.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    p = recipe("hellaswag.sh", out, env={"HELLASWAG_URL": f"file://{src}"})
    if damage is None:
        assert p.returncode == 0, p.stderr
        assert (out / "hellaswag_val.jsonl").read_bytes() == src.read_bytes()
        assert hashlib.sha256(src.read_bytes()).hexdigest() in p.stdout
    else:
        assert p.returncode != 0
        assert not (out / "hellaswag_val.jsonl").exists()
        assert not (out / "hellaswag_val.jsonl.part").exists()


def test_tinyshakespeare(tmp_path):
    path = anatomy_bin()
    if not os.path.isfile(path):
        pytest.fail(f"anatomy binary not found at {path}: run `make`", pytrace=False)
    p = recipe("tinyshakespeare.sh", tmp_path, env={"ANATOMY": path})
    assert p.returncode == 0, p.stderr
    text = (tmp_path / "tinyshakespeare.txt").read_bytes()
    assert len(text) == 1115394
    total = 0
    for part in ("val", "train"):
        raw = (tmp_path / f"tinyshakespeare_{part}_000000.bin").read_bytes()
        magic, version, count = struct.unpack("<3i", raw[:12])
        assert (magic, version) == (20240520, 1) and len(raw) == 1024 + 2 * count
        total += count
    assert total > 300000
