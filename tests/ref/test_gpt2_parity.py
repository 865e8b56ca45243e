"""Reference parity of anatomy's GPT-2 against PyTorch and Hugging Face.

Same weights, same tokens, three implementations: build/anatomy (fp32), our
independent float64 GPT-2 (gpt2_ref.py) and transformers' GPT2LMHeadModel.
Checks the loss, ten AdamW steps (plain, and with gradient accumulation and
active clipping), the trained parameters and moments in the checkpoint, the
Hugging Face export read back by transformers, and llm.c model files.

Weights and tokens are fresh on every run from a seed that is printed in every
failure message; ANATOMY_TEST_SEED=N replays one.
"""
import glob
import os
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from safetensors import safe_open

from conftest import parse_eval_loss, parse_steps
from gpt2_ref import (GPT2Ref, Config, cross_entropy, micro_batch, write_llmc_model,
                      write_shard)

torch.set_num_threads(2)

SEED = int(os.environ.get("ANATOMY_TEST_SEED") or random.SystemRandom().randrange(1 << 31))
CFG = Config(V=300, maxT=64, L=2, NH=4, C=64)  # V=300 is padded to 384 inside anatomy
EB, ET, ENB = 4, 64, 3                           # eval: B, T (= maxT), micro-batches
B, T, STEPS, LR = 4, 32, 10, 3e-3                # training

# Tolerances, relative, fp32 (anatomy) against fp64 (reference). Observed
# while writing these tests over ~70 random seeds of anatomy (and ~100 of
# torch fp32 against the same fp64 reference, which behaves alike):
#   eval loss                     <= 6e-8
#   10-step losses                median 1e-7, worst 1.3e-6 (one chaotic seed)
#   printed grad norm             <= 8e-5, i.e. its 4-decimal print rounding;
#                                 worst 2.5e-4 on the chaotic seed
#   parameters and moments after  median 1e-5, heavy tail to 2.3e-4: elements
#   10 steps (per-tensor rel L2)  with near-zero gradients, whose Adam step
#                                 direction is set by fp32 rounding; since,
#                                 one seed in some hundreds of CI runs went
#                                 further (1231503139, "plain": 1.5e-3 and
#                                 9.4e-4 on two builds, every tensor 3e-4 to
#                                 1e-3, its losses 1.9e-6 off: a chaotic seed)
# Optimizer bugs planted in a stand-in trainer were all caught: decay on 1-D
# tensors, beta2 0.999, eps 1e-6, no clipping each move the 10-step losses by
# 2e-5..1e-4 and some tensor by 2e-3..6e-2; summed instead of averaged
# accumulation (hidden from the parameters by active clipping) doubles the norm.
# So the brief's 1e-4 on losses would be too loose; 1e-5 holds.
EVAL_RTOL = 1e-5
TRAIN_RTOL = 1e-5
NORM_RTOL = 1e-3     # plus 6e-5 absolute for the 4-decimal print
# 3e-3 leaves room above that seed; the optimizer bugs above are caught by the
# losses at 1e-5, and what only the checkpoint can show (a missing, stale or
# swapped tensor, moments of the wrong step) is off by far more: moments one
# step stale are off by at least 27% (m) and 4.7% (v) in every tensor (the
# fp64 reference after 9 steps against 10, seeds 3 and 1231503139).
PARAM_RTOL = 3e-3
SAME_RTOL = 1e-6     # two anatomy evals of the same fp32 weights


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def rel_l2(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / max(b.norm().item(), 1e-30)).item()


def seedmsg():
    return f"(ANATOMY_TEST_SEED={SEED})"


def markov_tokens(rng, n, V):
    """A token stream with learnable structure (4 random successors per token),
    so that ten AdamW steps move the loss by more than noise."""
    succ = rng.integers(0, V, (V, 4))
    choice = rng.integers(0, 4, n)
    out = np.empty(n, dtype=np.int64)
    out[0] = rng.integers(0, V)
    for i in range(1, n):
        out[i] = succ[out[i - 1], choice[i]]
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Random tiny GPT-2 saved as an HF directory, and a random token shard."""
    d = tmp_path_factory.mktemp("world")
    rng = np.random.default_rng(SEED)
    model = GPT2Ref(CFG).init_random(SEED)
    hf_dir = str(d / "hf")
    model.save_hf(hf_dir)
    tokens = markov_tokens(rng, 3 * STEPS * B * T + EB * ET * ENB + 1, CFG.V)
    shard = str(d / "tokens.bin")
    write_shard(shard, tokens)
    # The reference sees exactly the fp32 weights anatomy reads.
    return {"dir": d, "hf": hf_dir, "tokens": tokens, "shard": shard,
            "ref": GPT2Ref.load_hf(hf_dir, torch.float64)}


def ref_eval(model, tokens, nb=ENB, b=EB, t=ET):
    with torch.no_grad():
        return float(np.mean([model(*micro_batch(tokens, k, b, t))[1].item() for k in range(nb)]))


def hf_model(d):
    """transformers' GPT2LMHeadModel from directory d in float64, eval mode;
    fails if any weight was missing from the files (transformers would
    otherwise initialise it randomly and only warn)."""
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    m, info = GPT2LMHeadModel.from_pretrained(d, dtype=torch.float64, attn_implementation="eager",
                                              output_loading_info=True)
    missing = [k for k in info["missing_keys"] if k != "lm_head.weight"]
    assert not missing, f"{d}: weights missing for transformers: {missing}"
    return m.eval()


def hf_eval(m, tokens, nb=ENB, b=EB, t=ET):
    losses = []
    with torch.no_grad():
        for k in range(nb):
            x, y = micro_batch(tokens, k, b, t)
            losses.append(cross_entropy(m(x).logits, y).item())
    return float(np.mean(losses))


def anatomy_eval(anatomy, init, shard, nb=ENB, b=EB, t=ET):
    return parse_eval_loss(anatomy("eval", "--init", init, "--data", shard, "--batch", b,
                                   "--seq", t, "--batches", nb))


# ---- (a), (b): the loss of the same weights ---------------------------------

def test_eval_matches_reference(anatomy, world):
    ours = anatomy_eval(anatomy, world["hf"], world["shard"])
    ref = ref_eval(world["ref"], world["tokens"])
    print(f"eval: anatomy {ours:.6f} ref {ref:.9f} rel {rel(ours, ref):.2e}")
    assert rel(ours, ref) < EVAL_RTOL, f"anatomy {ours} vs fp64 reference {ref} {seedmsg()}"


def test_transformers_agrees(anatomy, world):
    """GPT2LMHeadModel on the same directory gives the reference's loss (float64
    both: to rounding) and anatomy's (to 1e-5)."""
    hf = hf_eval(hf_model(world["hf"]), world["tokens"])
    ref = ref_eval(world["ref"], world["tokens"])
    assert rel(hf, ref) < 1e-12, f"transformers {hf} vs gpt2_ref {ref} {seedmsg()}"
    ours = anatomy_eval(anatomy, world["hf"], world["shard"])
    assert rel(ours, hf) < EVAL_RTOL, f"anatomy {ours} vs transformers {hf} {seedmsg()}"


@pytest.mark.parametrize("prefix,dtype", [("transformer.", torch.float32),
                                          ("", torch.bfloat16),
                                          ("transformer.", torch.float16)])
def test_hf_dir_variants(anatomy, world, prefix, dtype):
    """Name prefix and fp16/bf16 tensors on import: the loss equals the reference
    evaluated on the same rounded weights."""
    d = str(world["dir"] / f"hf_{prefix or 'bare'}_{str(dtype)[6:]}")
    world["ref"].save_hf(d, dtype=dtype, prefix=prefix)
    ref = ref_eval(GPT2Ref.load_hf(d, torch.float64), world["tokens"])
    ours = anatomy_eval(anatomy, d, world["shard"])
    assert rel(ours, ref) < EVAL_RTOL, f"{prefix!r} {dtype}: anatomy {ours} vs {ref} {seedmsg()}"


def test_transformers_saved_dir(anatomy, world):
    """A directory written by transformers' own save_pretrained (its names,
    its buffers, its config.json) evaluates to the same loss."""
    m = hf_model(world["hf"]).to(torch.float32)
    d = str(world["dir"] / "hf_saved")
    m.save_pretrained(d)
    ours = anatomy_eval(anatomy, d, world["shard"])
    ref = ref_eval(world["ref"], world["tokens"])
    assert rel(ours, ref) < EVAL_RTOL, f"anatomy {ours} vs {ref} {seedmsg()}"


# ---- (c): ten AdamW steps ---------------------------------------------------

RUNS = {
    # name: (clip, weight decay, accumulation micro-batches)
    "plain": (1.0, 0.1, 1),
    "accum": (0.1, 0.3, 2),   # clip 0.1 is active on every step
}


def ref_train(world, clip, wd, accum):
    """The float64 reference trained like `anatomy train` (constant lr, no
    warmup): returns losses and pre-clip norms per step, model and optimizer."""
    m = GPT2Ref.load_hf(world["hf"], torch.float64)
    opt = torch.optim.AdamW(m.decay_groups(wd), lr=LR, betas=(0.9, 0.95), eps=1e-8)
    losses, norms = [], []
    for s in range(STEPS):
        opt.zero_grad(set_to_none=False)
        total = 0.0
        for a in range(accum):
            _, loss = m(*micro_batch(world["tokens"], s * accum + a, B, T))
            (loss / accum).backward()
            total += loss.item() / accum
        norms.append(torch.nn.utils.clip_grad_norm_(m.parameters(), clip).item())
        opt.step()
        losses.append(total)
    return {"losses": losses, "norms": norms, "model": m, "opt": opt}


@pytest.fixture(scope="module")
def runs(anatomy, world):
    """Each RUNS entry trained by anatomy (with --out) and by the reference."""
    out = {}
    for name, (clip, wd, accum) in RUNS.items():
        run_dir = str(world["dir"] / f"run_{name}")
        args = ["train", "--init", world["hf"], "--data", world["shard"], "--batch", B,
                "--seq", T, "--steps", STEPS, "--lr", LR, "--schedule", "constant",
                "--warmup", 0, "--seed", SEED % 1000 + 1, "--grad-clip", clip,
                "--weight-decay", wd, "--out", run_dir]
        if accum > 1:
            args += ["--total-batch", accum * B * T]
        stdout = anatomy(*args)
        losses, norms = parse_steps(stdout, STEPS)
        out[name] = {"losses": losses, "norms": norms, "run_dir": run_dir,
                     "ref": ref_train(world, clip, wd, accum), "clip": clip}
    return out


@pytest.mark.parametrize("name", list(RUNS))
def test_train_losses(runs, name):
    r = runs[name]
    ref = r["ref"]
    if name == "accum":
        assert min(ref["norms"]) > r["clip"], "test setup: clipping should be active"
    errs = [rel(a, b) for a, b in zip(r["losses"], ref["losses"])]
    print(f"{name}: max rel loss err {max(errs):.2e}; ref losses {np.round(ref['losses'], 4)}")
    bad = [(k, a, b) for k, (a, b) in enumerate(zip(r["losses"], ref["losses"]))
           if rel(a, b) >= TRAIN_RTOL]
    assert not bad, f"{name}: steps (k, anatomy, ref) off by >= {TRAIN_RTOL}: {bad} {seedmsg()}"
    # The printed grad norm is the pre-clip global norm (4 decimals printed).
    for k, (a, b) in enumerate(zip(r["norms"], ref["norms"])):
        assert a is not None, f"{name}: step line without '| norm <value>'"
        assert abs(a - b) <= NORM_RTOL * abs(b) + 6e-5, \
            f"{name}: step {k} grad norm anatomy {a} vs ref {b} (pre-clip) {seedmsg()}"


def final_ckpt(run_dir):
    files = sorted(glob.glob(os.path.join(run_dir, "step_*.safetensors")))
    assert files, f"no step_*.safetensors checkpoint under {run_dir}"
    return files[-1]


@pytest.mark.parametrize("name", list(RUNS))
def test_checkpoint_matches_reference(runs, name):
    """The final checkpoint holds the parameters and AdamW moments the reference
    reached after the same steps; padded vocabulary rows stay zero."""
    r = runs[name]
    path = final_ckpt(r["run_dir"])
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    assert meta.get("format") == "anatomy-ckpt", f"{path}: metadata {meta}"
    sd = load_file(path)
    m, opt = r["ref"]["model"], r["ref"]["opt"]
    V = CFG.V
    worst = (0.0, "")
    for pname, p in m.named_parameters():
        st = opt.state[p]
        for key, ref_t in ((pname, p.detach()), ("adamw.m." + pname, st["exp_avg"]),
                           ("adamw.v." + pname, st["exp_avg_sq"])):
            assert key in sd, f"{path}: tensor {key} missing"
            t = sd[key]
            if pname == "wte.weight":
                assert t.shape[0] == (V + 127) // 128 * 128, f"{key}: {tuple(t.shape)}"
                assert torch.all(t[V:] == 0), f"{key}: padded vocabulary rows are not zero"
                t = t[:V]
            assert tuple(t.shape) == tuple(ref_t.shape), f"{key}: {tuple(t.shape)} vs {tuple(ref_t.shape)}"
            if pname.endswith("attn.c_attn.bias"):
                # The key bias adds q.b_k to every score of a row, which softmax
                # cancels: its true gradient is 0, so in fp32 it is rounding
                # noise that Adam normalises to steps of size ~lr. Compare the
                # query and value parts only.
                C = CFG.C
                t, ref_t = torch.cat([t[:C], t[2 * C:]]), torch.cat([ref_t[:C], ref_t[2 * C:]])
            e = rel_l2(t, ref_t)
            worst = max(worst, (e, key))
            assert e < PARAM_RTOL, f"{name}: {key} rel L2 {e:.2e} vs reference {seedmsg()}"
    print(f"{name}: worst checkpoint tensor rel L2 {worst[0]:.2e} ({worst[1]})")


# ---- (d): export to Hugging Face and back -----------------------------------

def test_export_interchange(anatomy, world, runs):
    ckpt = final_ckpt(runs["plain"]["run_dir"])
    out = str(world["dir"] / "exported")
    anatomy("export", "--init", ckpt, "--out", out)
    for f in ("config.json", "model.safetensors"):
        assert os.path.isfile(os.path.join(out, f)), f"export wrote no {f}"
    # The exported tensors are exactly the checkpoint's (Conv1D ones transposed).
    m = GPT2Ref(CFG).load_anatomy_ckpt(ckpt)
    exported = GPT2Ref.load_hf(out, torch.float64)
    for (n, a), (_, b) in zip(m.named_parameters(), exported.named_parameters()):
        assert torch.equal(a.float(), b.float()), f"export changed {n}"
    hf = hf_eval(hf_model(out), world["tokens"])
    ours_hf = anatomy_eval(anatomy, out, world["shard"])
    ours_ckpt = anatomy_eval(anatomy, ckpt, world["shard"])
    print(f"export: transformers {hf:.9f} anatomy(exported) {ours_hf:.6f} anatomy(ckpt) {ours_ckpt:.6f}")
    assert rel(ours_hf, hf) < EVAL_RTOL, f"anatomy {ours_hf} vs transformers {hf} {seedmsg()}"
    assert rel(ours_ckpt, ours_hf) < SAME_RTOL, f"eval ckpt {ours_ckpt} vs exported {ours_hf}"


# ---- (e): llm.c model files -------------------------------------------------

def test_llmc_model_file(anatomy, world):
    path = str(world["dir"] / "model_llmc.bin")
    write_llmc_model(world["ref"], path)
    ours_bin = anatomy_eval(anatomy, path, world["shard"])
    ours_hf = anatomy_eval(anatomy, world["hf"], world["shard"])
    ref = ref_eval(world["ref"], world["tokens"])
    assert rel(ours_bin, ours_hf) < SAME_RTOL, f"llm.c file {ours_bin} vs HF dir {ours_hf}"
    assert rel(ours_bin, ref) < EVAL_RTOL, f"llm.c file {ours_bin} vs reference {ref} {seedmsg()}"
