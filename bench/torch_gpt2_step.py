"""torch_gpt2_step.py: the PyTorch side of bench/bench_cpu.sh.

Times training steps (forward + backward + AdamW) of a GPT-2 written here in
plain PyTorch, fp32 (or with --autocast bf16, the forward under
torch.autocast's bf16), on the CPU, the way a PyTorch user would write it
(nn.Linear, F.layer_norm, F.scaled_dot_product_attention, F.gelu tanh,
F.cross_entropy, torch.optim.AdamW with fused=False), and prints the median
step time. With --ours-log it also reads anatomy's log.jsonl and prints both
side by side with their ratio.

    python3 bench/torch_gpt2_step.py --write-shard FILE --ntokens N
    python3 bench/torch_gpt2_step.py --data FILE [--ours-log RUN/log.jsonl]
"""
import argparse
import json
import math
import os
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {"d12": dict(L=12, NH=12, C=768), "d4": dict(L=4, NH=4, C=256),
           "d2": dict(L=2, NH=2, C=128)}
WARMUP = 2  # steps left out of the median on both sides


class Block(nn.Module):
    """A pre-LN transformer block; causal attention unless told (the ViT of
    bench/torch_vit_step.py uses it with causal=False)."""

    def __init__(self, C, NH, causal=True):
        super().__init__()
        self.NH, self.causal = NH, causal
        self.ln_1, self.ln_2 = nn.LayerNorm(C, eps=1e-5), nn.LayerNorm(C, eps=1e-5)
        self.c_attn, self.attn_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.NH, C // self.NH).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT2(nn.Module):
    def __init__(self, V, maxT, L, NH, C):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(maxT, C)
        self.h = nn.ModuleList(Block(C, NH) for _ in range(L))
        self.ln_f = nn.LayerNorm(C, eps=1e-5)
        # GPT-2 initialisation: N(0, 0.02), residual projections / sqrt(2L).
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * L) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif not name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T))
        for blk in self.h:
            x = blk(x)
        logits = self.ln_f(x) @ self.wte.weight.t()  # tied output weights
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def write_shard(path, ntokens, V, seed):
    """Random tokens in llm.c's shard layout (256 int32 header, uint16 tokens)."""
    tok = np.random.default_rng(seed).integers(0, V, ntokens).astype("<u2")
    hdr = np.zeros(256, dtype="<i4")
    hdr[0], hdr[1], hdr[2] = 20240520, 1, ntokens
    with open(path, "wb") as f:
        f.write(hdr.tobytes())
        f.write(tok.tobytes())


def read_shard(path):
    hdr = np.fromfile(path, dtype="<i4", count=256)
    assert hdr[0] == 20240520 and hdr[1] == 1, f"{path}: not a token shard"
    return np.fromfile(path, dtype="<u2", offset=1024, count=int(hdr[2])).astype(np.int64)


def adamw(model, lr, weight_decay, betas):
    """torch.optim.AdamW (fused=False) with weight decay on the matrices only."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    nodecay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": nodecay, "weight_decay": 0.0}],
                             lr=lr, betas=betas, eps=1e-8, fused=False)


def timed_steps(model, opt, steps, autocast, loss_at):
    """Median ms of steps WARMUP.. of a training step (loss_at(step): the
    batch and the forward to the loss, under bf16 autocast if asked;
    backward, gradient-norm clip at 1, the optimizer), and the losses."""
    times, losses = [], []
    for step in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast == "bf16"):
            loss = loss_at(step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times[WARMUP:] or times), losses


def torch_bench(args):
    """Median ms of steps WARMUP.. of a PyTorch training step."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = PRESETS[args.preset]
    model = GPT2(args.vocab, args.maxT, **cfg)
    opt = adamw(model, 3e-4, 0.1, (0.9, 0.95))
    tokens = torch.from_numpy(read_shard(args.data))
    B, T = args.batch, args.seq

    def loss_at(step):
        s = (step * B * T) % (len(tokens) - B * T - 1)
        buf = tokens[s:s + B * T + 1]
        return model(buf[:-1].view(B, T), buf[1:].view(B, T))
    return timed_steps(model, opt, args.steps, args.autocast, loss_at)


def ours_from_log(path):
    """Median ms of anatomy's steps after the first WARMUP, from log.jsonl."""
    recs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            if "step" in r and "ms" in r:
                recs.append(r)
    if not recs:
        raise SystemExit(f"{path}: no step records with 'ms'")
    recs.sort(key=lambda r: r["step"])
    kept = recs[WARMUP:] or recs
    return statistics.median(r["ms"] for r in kept), len(recs)


def add_step_options(ap):
    """The options every PyTorch step timer here shares (bench/torch_vit_step.py too)."""
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count()))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--autocast", choices=["none", "bf16"], default="none",
                    help="bf16: the forward under torch.autocast('cpu', bfloat16) (its matmuls and "
                         "attention in bf16; weights, gradients and AdamW fp32)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write-shard", metavar="FILE")
    ap.add_argument("--ntokens", type=int, default=1 << 20)
    ap.add_argument("--data", metavar="FILE")
    ap.add_argument("--ours-log", metavar="FILE")
    ap.add_argument("--preset", default="d4", choices=sorted(PRESETS))
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--maxT", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    add_step_options(ap)
    args = ap.parse_args()

    if args.write_shard:
        write_shard(args.write_shard, args.ntokens, args.vocab, args.seed)
        return
    if not args.data:
        ap.error("--data FILE is required")
    tok = args.batch * args.seq
    ours = ours_from_log(args.ours_log) if args.ours_log else None
    t_ms, losses = torch_bench(args)
    prec = "bf16 autocast" if args.autocast == "bf16" else "fp32"
    print(f"GPT-2 {args.preset} (V {args.vocab}), B {args.batch}, T {args.seq}, {prec}, "
          f"{args.threads} threads, median of steps {WARMUP + 1}..{args.steps}")
    print(f"{'':10s} {'ms/step':>10s} {'tokens/s':>10s}")
    if ours:
        print(f"{'anatomy':10s} {ours[0]:10.1f} {tok / ours[0] * 1e3:10.0f}")
    print(f"{'pytorch':10s} {t_ms:10.1f} {tok / t_ms * 1e3:10.0f}   (torch {torch.__version__}, "
          f"first loss {losses[0]:.3f})")
    if ours:
        print(f"ratio (pytorch time / anatomy time): {t_ms / ours[0]:.2f}")


if __name__ == "__main__":
    main()
