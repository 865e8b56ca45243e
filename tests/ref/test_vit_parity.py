"""Reference parity of anatomy's Vision Transformer against Hugging Face
transformers' ViTForImageClassification.

Same weights (random, written by this test as an anatomy checkpoint), same
images and labels (a random IDX file pair): the loss and every parameter's
gradient from `anatomy eval --grads` (CPU, fp32) against transformers run in
float64, to 1e-5 relative (design.md's fp32 tolerance).

The HF config matches ours where the two differ by default: GELU with the tanh
approximation (gelu_pytorch_tanh), layernorm eps 1e-5, biases on q, k, v, no
dropout. The names map as: patch_embed.weight [C, ch*P*P] <-> the patch
Conv2d's weight [C, ch, P, P] (our patch vectors are in (c, py, px) order),
h.N.attn.c_attn (rows q, k, v) <-> query/key/value, c_proj <-> attention.output.dense,
ln_1/ln_2 <-> layernorm_before/after, mlp.c_fc/c_proj <-> intermediate/output.dense,
ln_f <-> vit.layernorm, head <-> classifier.

--pool mean (the head on the mean of the patch rows, positions 1..N, of the
final layernorm's output) has no transformers class: its reference is
transformers' ViT encoder (ViTModel, whose output is after that layernorm)
with the same classifier on that mean, and PyTorch's cross-entropy.

Weights, images and labels are fresh on every run from a seed printed in every
failure message; ANATOMY_TEST_SEED=N replays one.
"""
import os
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import parse_eval_loss

torch.set_num_threads(2)

SEED = int(os.environ.get("ANATOMY_TEST_SEED") or random.SystemRandom().randrange(1 << 31))
RTOL = 1e-5

# our config fields, in vit_family's order (host/models/vit.c)
CONFIGS = {
    # CIFAR-10 file, RGB: 4 x 4 patches of 8 x 8 x 3, exercising the (c, py, px)
    # patch order; 7 classes to read labels below 7
    "cifar": dict(image=32, channels=3, patch=8, classes=7, L=2, NH=4, C=32),
    # IDX file, grey, non-square-friendly patch: 2 x 2 patches of 7 x 7
    "idx": dict(image=14, channels=1, patch=7, classes=10, L=3, NH=2, C=16),
}
B = 6


def rel_l2(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return float((a - b).norm() / max(float(b.norm()), 1e-300))


def our_views(cfg):
    """Our parameter names and shapes, in buffer order."""
    C, K = cfg["C"], cfg["classes"]
    D = cfg["channels"] * cfg["patch"] ** 2
    N = (cfg["image"] // cfg["patch"]) ** 2
    v = [("patch_embed.weight", (C, D)), ("patch_embed.bias", (C,)), ("cls_token", (C,)),
         ("pos_embed", (N + 1, C))]
    for l in range(cfg["L"]):
        p = f"h.{l}."
        v += [(p + "ln_1.weight", (C,)), (p + "ln_1.bias", (C,)),
              (p + "attn.c_attn.weight", (3 * C, C)), (p + "attn.c_attn.bias", (3 * C,)),
              (p + "attn.c_proj.weight", (C, C)), (p + "attn.c_proj.bias", (C,)),
              (p + "ln_2.weight", (C,)), (p + "ln_2.bias", (C,)),
              (p + "mlp.c_fc.weight", (4 * C, C)), (p + "mlp.c_fc.bias", (4 * C,)),
              (p + "mlp.c_proj.weight", (C, 4 * C)), (p + "mlp.c_proj.bias", (C,))]
    v += [("ln_f.weight", (C,)), ("ln_f.bias", (C,)), ("head.weight", (K, C)),
          ("head.bias", (K,))]
    return v


def random_weights(cfg, gen):
    """Every tensor random and away from its init (the head too: a zero head
    would leave every other gradient zero)."""
    w = {}
    for name, shape in our_views(cfg):
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
            t = 1 + 0.2 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:
            t = 0.1 * torch.randn(shape, generator=gen)
        else:
            t = torch.randn(shape, generator=gen) / shape[-1] ** 0.5
        w[name] = t.float().contiguous()
    w["pos_embed"] = 0.3 * torch.randn(w["pos_embed"].shape, generator=gen)
    w["cls_token"] = 0.5 * torch.randn(w["cls_token"].shape, generator=gen)
    return w


def write_checkpoint(path, cfg, w, pool=None):
    """pool None: no "pool" key, as checkpoints from before --pool (read as cls)."""
    meta = {"format": "anatomy-ckpt", "version": "1", "family": "vit"}
    meta.update({k: str(v) for k, v in cfg.items()})
    if pool is not None:
        meta["pool"] = pool
    save_file(w, str(path), metadata=meta)


def write_idx(dirpath, images, labels):
    """images: uint8 [n, ch, H, W] (ch = 1 for IDX); standard names."""
    n, _, h, wd = images.shape
    img = dirpath / "t10k-images-idx3-ubyte"
    lab = dirpath / "t10k-labels-idx1-ubyte"
    img.write_bytes(np.array([0x803, n, h, wd], ">u4").tobytes() + images.tobytes())
    lab.write_bytes(np.array([0x801, n], ">u4").tobytes() + labels.astype(np.uint8).tobytes())
    return img


def write_cifar(path, images, labels):
    """images: uint8 [n, 3, 32, 32] -> CIFAR-10 records (label, then pixels)."""
    rec = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(labels), -1)], 1)
    path.write_bytes(rec.tobytes())
    return path


# Block parameter names in transformers 5 and in transformers 4, ours -> theirs.
HF_BLOCK = {
    5: dict(prefix="vit.layers.{l}.", q="attention.q_proj", k="attention.k_proj",
            v="attention.v_proj", ln_1="layernorm_before", ln_2="layernorm_after",
            proj="attention.o_proj", fc="mlp.fc1", fcproj="mlp.fc2"),
    4: dict(prefix="vit.encoder.layer.{l}.", q="attention.attention.query",
            k="attention.attention.key", v="attention.attention.value",
            ln_1="layernorm_before", ln_2="layernorm_after", proj="attention.output.dense",
            fc="intermediate.dense", fcproj="output.dense"),
}


def hf_names(m):
    names = {n for n, _ in m.named_parameters()}
    for ver, t in HF_BLOCK.items():
        if t["prefix"].format(l=0) + t["q"] + ".weight" in names:
            return t
    raise AssertionError(f"unknown ViT parameter names: {sorted(names)[:8]}")


def name_map(cfg, t):
    """(ours, theirs, how) for every HF parameter: how is None for a
    one-to-one copy, or ('qkv', i) for the i-th third of our c_attn."""
    e = "vit.embeddings."
    out = [("patch_embed.weight", e + "patch_embeddings.projection.weight", "conv"),
           ("patch_embed.bias", e + "patch_embeddings.projection.bias", None),
           ("cls_token", e + "cls_token", "cls"),
           ("pos_embed", e + "position_embeddings", "pos")]
    for l in range(cfg["L"]):
        o, h = f"h.{l}.", t["prefix"].format(l=l)
        for leaf in ("weight", "bias"):
            for i, part in enumerate(("q", "k", "v")):
                out.append((o + "attn.c_attn." + leaf, h + t[part] + "." + leaf, ("qkv", i)))
            for ours, key in (("ln_1", "ln_1"), ("attn.c_proj", "proj"), ("ln_2", "ln_2"),
                              ("mlp.c_fc", "fc"), ("mlp.c_proj", "fcproj")):
                out.append((o + ours + "." + leaf, h + t[key] + "." + leaf, None))
    out += [("ln_f.weight", "vit.layernorm.weight", None), ("ln_f.bias", "vit.layernorm.bias", None),
            ("head.weight", "classifier.weight", None), ("head.bias", "classifier.bias", None)]
    return out


def hf_model(cfg, w):
    from transformers import ViTConfig, ViTForImageClassification
    C = cfg["C"]
    hc = ViTConfig(image_size=cfg["image"], patch_size=cfg["patch"],
                   num_channels=cfg["channels"], hidden_size=C,
                   num_hidden_layers=cfg["L"], num_attention_heads=cfg["NH"],
                   intermediate_size=4 * C, hidden_act="gelu_pytorch_tanh",
                   layer_norm_eps=1e-5, qkv_bias=True, hidden_dropout_prob=0.0,
                   attention_probs_dropout_prob=0.0, num_labels=cfg["classes"])
    m = ViTForImageClassification(hc).double().eval()
    params = dict(m.named_parameters())
    sd = {}
    for ours, theirs, how in name_map(cfg, hf_names(m)):
        t = w[ours]
        if isinstance(how, tuple):
            t = t.split(C)[how[1]]
        sd[theirs] = t.reshape(params[theirs].shape).double()
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert not [k for k in missing if "pooler" not in k], missing
    assert set(sd) == set(params), sorted(set(params) - set(sd))
    return m


def hf_grads(cfg, m):
    """HF's gradients under our names and shapes."""
    g = {n: p.grad for n, p in m.named_parameters()}
    parts, out = {}, {}
    for ours, theirs, how in name_map(cfg, hf_names(m)):
        if isinstance(how, tuple):
            parts.setdefault(ours, [None] * 3)[how[1]] = g[theirs]
        else:
            out[ours] = g[theirs].reshape(-1)
    for ours, p in parts.items():
        out[ours] = torch.cat(p)
    return out


def hf_logits(m, x, pool):
    """Class scores of images x: transformers' own head on [CLS] (cls), or its
    classifier on the mean of the patch rows of the encoder's output (mean)."""
    if pool == "cls":
        return m(pixel_values=x).logits
    h = m.vit(pixel_values=x).last_hidden_state
    return m.classifier(h[:, 1:, :].mean(1))


def pixels(images):
    """Our sources' scaling, in fp32 as they compute it: x/127.5 - 1."""
    return torch.from_numpy(images.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1))


def check_parity(anatomy, tmp_path, cfg, data_path, images, labels, seed, pool):
    gen = torch.Generator().manual_seed(seed)
    w = random_weights(cfg, gen)
    ck = tmp_path / "ours.safetensors"
    write_checkpoint(ck, cfg, w, None if pool == "cls" else pool)
    grads_path = tmp_path / "grads.safetensors"
    out = anatomy("eval", "--init", ck, "--data", data_path, "--split", "test", "--batch", B,
                  "--batches", 1, "--device", "cpu", "--grads", grads_path)
    loss = parse_eval_loss(out)
    ours = load_file(str(grads_path))

    m = hf_model(cfg, w)
    x = pixels(images[:B]).double()
    y = torch.from_numpy(labels[:B].astype(np.int64))
    logits = hf_logits(m, x, pool)
    ref_loss = torch.nn.functional.cross_entropy(logits, y)
    ref_loss.backward()
    theirs = hf_grads(cfg, m)

    msg = f"(pool {pool}, ANATOMY_TEST_SEED={SEED})"
    ref = ref_loss.item()
    assert abs(loss - ref) / abs(ref) < RTOL, f"loss {loss} vs HF {ref} {msg}"
    assert set(ours) == set(theirs), f"grads file views {sorted(ours)} {msg}"
    worst = max((rel_l2(ours[n].flatten(), theirs[n].flatten()), n) for n in theirs)
    print(f"loss rel {abs(loss - ref) / abs(ref):.1e}, worst gradient {worst[1]} rel L2 "
          f"{worst[0]:.1e} {msg}")
    assert worst[0] < RTOL, f"gradient of {worst[1]}: rel L2 {worst[0]:.2e} {msg}"
    # the metric eval prints: top-1 of HF's logits on the same batch
    acc = float((logits.argmax(-1) == y).double().mean())
    line = [l for l in out.splitlines() if l.startswith("accuracy ")]
    assert line and abs(float(line[0].split()[1]) - acc) < 1e-6, f"{out} vs {acc} {msg}"
    # the whole set in batches of B, the last one partial: the mean over every
    # example, as PyTorch's cross-entropy over the set (not the mean of the
    # two batches' means)
    n = len(labels)
    assert n % B, "the set must end with a partial batch"
    out = anatomy("eval", "--init", ck, "--data", data_path, "--split", "test", "--batch", B,
                  "--batches", (n + B - 1) // B, "--device", "cpu")
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(
            hf_logits(m, pixels(images).double(), pool),
            torch.from_numpy(labels.astype(np.int64))).item()
    loss = parse_eval_loss(out)
    assert abs(loss - ref) / abs(ref) < RTOL, f"whole-set loss {loss} vs HF {ref} {msg}"


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_vit_matches_hf(anatomy, tmp_path, name, pool):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(SEED + len(name))
    n = B + 3
    shape = (n, cfg["channels"], cfg["image"], cfg["image"])
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    labels = rng.integers(0, cfg["classes"], n)
    if name == "idx":
        path = write_idx(tmp_path, images, labels)
    else:
        path = write_cifar(tmp_path / "test_batch.bin", images, labels)
    check_parity(anatomy, tmp_path, cfg, path, images, labels, SEED + len(name), pool)


def test_label_smoothing_matches_torch(anatomy, tmp_path):
    """--label-smoothing E: the first training step's loss (the first B
    images in file order: no --shuffle, grey images unaugmented) against
    PyTorch's cross_entropy(label_smoothing=E) of the same logits; and 0
    against the plain loss. The gradient term is checked by test_vit.c's
    finite differences."""
    from conftest import STEP_RE
    cfg = CONFIGS["idx"]
    rng = np.random.default_rng(SEED + 7)
    images = rng.integers(0, 256, (B, 1, cfg["image"], cfg["image"]), dtype=np.uint8)
    labels = rng.integers(0, cfg["classes"], B)
    n, _, h, wd = images.shape
    (tmp_path / "train-images-idx3-ubyte").write_bytes(
        np.array([0x803, n, h, wd], ">u4").tobytes() + images.tobytes())
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(
        np.array([0x801, n], ">u4").tobytes() + labels.astype(np.uint8).tobytes())
    w = random_weights(cfg, torch.Generator().manual_seed(SEED + 7))
    ck = tmp_path / "ours.safetensors"
    write_checkpoint(ck, cfg, w)
    with torch.no_grad():
        logits = hf_model(cfg, w)(pixel_values=pixels(images).double()).logits
    y = torch.from_numpy(labels.astype(np.int64))
    msg = f"(ANATOMY_TEST_SEED={SEED})"
    for e in (0.0, 0.1, 0.3):
        out = anatomy("train", "--init", ck, "--data", tmp_path, "--batch", B, "--steps", 1,
                      "--label-smoothing", e, "--device", "cpu", "--out", tmp_path / f"run{e}")
        loss = float(next(STEP_RE.match(l) for l in out.splitlines() if STEP_RE.match(l)).group(3))
        ref = torch.nn.functional.cross_entropy(logits, y, label_smoothing=e).item()
        assert abs(loss - ref) / ref < RTOL, f"label smoothing {e}: loss {loss} vs torch {ref} {msg}"
