"""anatomy's BERT beside Hugging Face's BertForMaskedLM, trained the same way.

Both models start from the same weights (BertForMaskedLM's own
initialisation, seeded, handed to anatomy as a checkpoint), read the same
batches with the same masks (anatomy's data/mlm.c rules, rebuilt here by
bench/mlm_ref.py: sequences in order, no shuffling, masks drawn from the
run's seed and the step), and take the same AdamW steps (the same betas,
eps, decoupled weight decay on 2-D tensors only, gradient clipping by the
global norm, linear warmup then cosine: anatomy's train_lr). Then both are
scored on the same validation batches (the masks of anatomy's validation
split): masked-LM loss (mean cross-entropy over every masked token) and
accuracy (argmax equals the original token), printed side by side, with the
training losses of both at a few steps.

    python3 bench/bert_vs_hf.py --anatomy build/anatomy --train 'P_train_*.bin'
        --val 'P_val_*.bin' --vocab 260 --out DIR [--steps N ...]

bench/bert_vs_hf.sh prepares tinyshakespeare's byte shards and runs this.
"""
import argparse
import glob
import math
import os
import re
import subprocess
import sys
import time

import numpy as np
import torch
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mlm_ref  # noqa: E402


def read_stream(pattern):
    paths = sorted(glob.glob(pattern))
    if not paths:
        sys.exit(f"bert_vs_hf: {pattern}: no shard matches")
    return np.concatenate([mlm_ref.read_shard(p) for p in paths])


def hf_config(args):
    from transformers import BertConfig
    # pad_token_id: [PAD] (never emitted), so that no real token's row is special
    return BertConfig(vocab_size=args.vocab, hidden_size=args.width, num_hidden_layers=args.layers,
                      num_attention_heads=args.heads, intermediate_size=4 * args.width,
                      hidden_act="gelu_new", max_position_embeddings=args.seq, type_vocab_size=2,
                      layer_norm_eps=1e-5, pad_token_id=args.vocab - 1, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, attn_implementation="eager")


def to_anatomy(model, V, C, L):
    """BertForMaskedLM's weights under anatomy's view names (bert.c): q, k, v
    in one c_attn, vocabulary rows padded to a multiple of 128 with zeros."""
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    Vp = (V + 127) // 128 * 128
    out = {}

    def pad(a):
        z = np.zeros((Vp,) + a.shape[1:], dtype=np.float32)
        z[:V] = a
        return z
    out["bert.embeddings.word_embeddings.weight"] = pad(sd["bert.embeddings.word_embeddings.weight"])
    for k in ("position_embeddings.weight", "token_type_embeddings.weight", "LayerNorm.weight",
              "LayerNorm.bias"):
        out["bert.embeddings." + k] = sd["bert.embeddings." + k]
    for l in range(L):
        p = f"bert.encoder.layer.{l}."
        for wb in ("weight", "bias"):
            out[p + f"attn.c_attn.{wb}"] = np.concatenate(
                [sd[p + f"attention.self.{q}.{wb}"] for q in ("query", "key", "value")])
            for ours, hf in (("attn.c_proj", "attention.output.dense"),
                             ("ln_1", "attention.output.LayerNorm"), ("mlp.c_fc", "intermediate.dense"),
                             ("mlp.c_proj", "output.dense"), ("ln_2", "output.LayerNorm")):
                out[p + f"{ours}.{wb}"] = sd[p + f"{hf}.{wb}"]
    for k in ("dense.weight", "dense.bias", "LayerNorm.weight", "LayerNorm.bias"):
        out["cls.predictions.transform." + k] = sd["cls.predictions.transform." + k]
    out["cls.predictions.bias"] = pad(sd["cls.predictions.bias"])
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def lr_at(args, step):
    """host/train.c: train_lr (step 0-based)."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    if args.steps <= args.warmup:
        return args.lr
    progress = min((step - args.warmup) / (args.steps - args.warmup), 1.0)
    lo = args.lr * args.lr_min_frac
    return lo + 0.5 * (args.lr - lo) * (1.0 + math.cos(math.pi * progress))


def masked_figures(model, batches):
    """Masked-LM loss (mean over every masked token) and accuracy."""
    tot, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for tokens, targets in batches:
            logits = model(input_ids=torch.from_numpy(tokens),
                           token_type_ids=torch.zeros_like(torch.from_numpy(tokens))).logits
            tot += float(mlm_ref.masked_loss_sum(logits, targets))
            c, k = mlm_ref.masked_correct(logits, targets)
            correct += c
            n += k
    return tot / n, correct / n


def parse_losses(log):
    return {int(m.group(1)): float(m.group(2))
            for m in re.finditer(r"^step\s+(\d+)/\d+ \| loss (\S+)", log, re.M)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--anatomy", default="build/anatomy")
    ap.add_argument("--train", required=True, help="training shards (glob)")
    ap.add_argument("--val", required=True, help="validation shards (glob)")
    ap.add_argument("--vocab", type=int, required=True, help="model vocabulary (tokenizer ids + 4)")
    ap.add_argument("--out", required=True, help="directory for the checkpoint and logs")
    ap.add_argument("--layers", type=int, default=2)   # bert-tiny
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=15)
    ap.add_argument("--lr-min-frac", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--beta2", type=float, default=0.95)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--val-batch", type=int, default=16)
    ap.add_argument("--val-batches", type=int, default=0, help="0: every whole batch")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    for name in ("steps", "batch", "seq", "threads", "layers", "heads", "width"):
        if getattr(args, name) < 1:
            sys.exit(f"bert_vs_hf: --{name}: must be positive")
    if args.warmup < 0 or args.warmup > args.steps:
        sys.exit(f"bert_vs_hf: --warmup: {args.warmup} outside [0, --steps]")
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    voc = mlm_ref.Vocab(args.vocab)
    train_stream, val_stream = read_stream(args.train), read_stream(args.val)

    from transformers import BertForMaskedLM
    torch.manual_seed(args.seed)
    model = BertForMaskedLM(hf_config(args)).float()
    ckpt = os.path.join(args.out, "init.safetensors")
    meta = {"format": "anatomy-ckpt", "version": "1", "family": "bert", "V": str(args.vocab),
            "maxT": str(args.seq), "L": str(args.layers), "NH": str(args.heads),
            "C": str(args.width), "nsp": "0"}
    save_file(to_anatomy(model, args.vocab, args.width, args.layers), ckpt, metadata=meta)

    # ---- anatomy ----
    run = os.path.join(args.out, "anatomy")
    cmd = [args.anatomy, "train", "--init", ckpt, "--data", args.train, "--batch", str(args.batch),
           "--seq", str(args.seq), "--steps", str(args.steps), "--lr", str(args.lr),
           "--warmup", str(args.warmup), "--schedule", "cosine",
           "--lr-min-frac", str(args.lr_min_frac), "--weight-decay", str(args.weight_decay),
           "--beta1", "0.9", "--beta2", str(args.beta2), "--eps", "1e-8",
           "--grad-clip", str(args.grad_clip), "--seed", str(args.seed), "--device", "cpu",
           "--threads", str(args.threads), "--out", run]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    t_ours = time.time() - t0
    open(os.path.join(args.out, "anatomy_train.log"), "w").write(p.stdout + p.stderr)
    if p.returncode:
        sys.exit(f"bert_vs_hf: anatomy train failed:\n{p.stderr}")
    ours_loss = parse_losses(p.stdout)
    windows = len(val_stream) // (args.seq - 2)
    nvb = args.val_batches or windows // args.val_batch
    final = os.path.join(run, f"step_{args.steps:06d}.safetensors")
    cmd = [args.anatomy, "eval", "--init", final, "--data", args.val, "--split", "val",
           "--batch", str(args.val_batch), "--seq", str(args.seq), "--batches", str(nvb),
           "--device", "cpu", "--threads", str(args.threads)]
    print("$ " + " ".join(cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"bert_vs_hf: anatomy eval failed:\n{p.stderr}")
    figs = dict(l.split()[:2] for l in p.stdout.splitlines() if l.strip())
    ours_val = (float(figs["loss"]), float(figs["mlm_accuracy"]))

    # ---- Hugging Face, the same steps ----
    decay = [q for q in model.parameters() if q.dim() >= 2]
    rest = [q for q in model.parameters() if q.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=args.lr,
                            betas=(0.9, args.beta2), eps=1e-8)
    model.train()
    hf_loss = {}
    t0 = time.time()
    for step in range(args.steps):
        tokens, targets = mlm_ref.make_batch(train_stream, voc, args.seed, step, args.batch, args.seq)
        for g in opt.param_groups:
            g["lr"] = lr_at(args, step)
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=torch.from_numpy(tokens),
                       token_type_ids=torch.zeros_like(torch.from_numpy(tokens))).logits
        loss = mlm_ref.masked_loss_sum(logits, targets) / int((targets >= 0).sum())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        hf_loss[step + 1] = float(loss.detach())
    t_hf = time.time() - t0
    model.eval()
    val = [mlm_ref.make_batch(val_stream, voc, mlm_ref.BERT_EVAL_SEED, g, args.val_batch, args.seq)
           for g in range(nvb)]
    hf_val = masked_figures(model, val)

    # ---- side by side ----
    print(f"bert L{args.layers} H{args.heads} C{args.width}, vocabulary {args.vocab}, "
          f"{args.steps} steps of {args.batch} x {args.seq}, lr {args.lr}, seed {args.seed}, "
          f"{args.threads} thread(s)")
    print(f"{'step':>6} {'anatomy loss':>13} {'HF loss':>10}")
    marks = sorted({1, 2, 5, 10} | set(range(0, args.steps + 1, max(1, args.steps // 6))) - {0})
    for s in marks:
        if s in ours_loss and s in hf_loss:
            print(f"{s:>6} {ours_loss[s]:>13.6f} {hf_loss[s]:>10.6f}")
    common = [s for s in hf_loss if s in ours_loss]
    if len(common) != args.steps:
        sys.exit(f"bert_vs_hf: anatomy's log has {len(common)} of {args.steps} step losses")
    gap = max(abs(ours_loss[s] - hf_loss[s]) / hf_loss[s] for s in common)
    print(f"training losses: largest relative difference {gap:.2e} over {len(common)} steps")
    print(f"validation ({nvb} batches of {args.val_batch}, {sum(int((t >= 0).sum()) for _, t in val)} masked tokens):")
    print(f"anatomy mlm_loss {ours_val[0]:.4f} mlm_accuracy {ours_val[1]:.4f} train_s {t_ours:.0f}")
    print(f"hf      mlm_loss {hf_val[0]:.4f} mlm_accuracy {hf_val[1]:.4f} train_s {t_hf:.0f}")


if __name__ == "__main__":
    main()
