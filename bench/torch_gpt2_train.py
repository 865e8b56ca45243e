"""torch_gpt2_train.py: the PyTorch side of bench/gpt2_parity.sh, a GPT-2 trainer
that does what `anatomy train` does, step for step, so that the two loss
curves can be laid on one another.

Same as anatomy's trainer (host/train.c, data/shard.c, kernels/cpu AdamW):
  - initial weights: a Hugging Face GPT-2 directory (`anatomy export` writes it);
  - batches: the loader of data/shard.c re-implemented below. Shards sorted by
    name form one stream; without --shuffle micro-batch g reads the B*T+1
    tokens from g*B*T (mod the stream's length, wrapping); with --shuffle the
    chunks at multiples of B*T are visited per epoch in the permutation that
    shard.c draws (Fisher-Yates with xoshiro256** seeded through splitmix64
    from (seed, epoch)), so --shuffle --seed S here reads exactly the batches
    of `anatomy train --shuffle --seed S`;
  - loss: mean cross-entropy per micro-batch, gradients accumulated over
    total_batch / (B*T) micro-batches, each scaled by 1/accum;
  - global gradient norm (before clipping) clipped with coefficient
    clip / (norm + 1e-6) when that is below 1;
  - AdamW (beta 0.9, 0.95, eps 1e-8) with decoupled weight decay on the
    parameters of two or more dimensions only: torch.optim.AdamW's formula is
    the one anatomy implements;
  - learning rate: linear warmup lr*(step+1)/warmup, then cosine from lr to
    lr*lr_min_frac over the remaining steps (train_lr in host/train.c);
  - validation: the mean loss of the first --val-batches micro-batches of the
    validation stream every --val-every steps and at the last step.
The model is GPT-2 written the way a PyTorch user writes it (nn.functional
layer_norm, tanh GELU, scaled_dot_product_attention, tied classifier),
independently of anatomy. On CUDA it runs in bf16 autocast with fp32 weights
(optionally torch.compile), as bench/torch_gpt2_gpu.py does; on the CPU in fp32.

It writes OUT/log.jsonl with the lines anatomy's run directories hold
({"step", "loss", "norm", "lr", "ms", "tokens_per_s"} and {"step", "val_loss"}),
so `anatomy plot` draws both runs on one chart.

    python3 bench/torch_gpt2_train.py --init HF_DIR --data GLOB [--val-data GLOB]
        --batch B --seq T [--total-batch N] --steps N --lr X --warmup N
        [--lr-min-frac F] [--schedule cosine|constant] [--weight-decay X]
        [--grad-clip X] [--shuffle --seed S] [--val-every N] [--val-batches N]
        [--device cpu|cuda] [--compile] --out DIR
    python3 bench/torch_gpt2_train.py --summary OURS TORCH_A TORCH_B [OURS_B] [--tol X]
        the parity table (markdown) of the runs' log.jsonl; --tol fails when a
        step's loss of OURS differs from TORCH_A's by more than X relative
    python3 bench/torch_gpt2_train.py --make-data DIR --vocab V --tokens N [--seed S]
        writes DIR/tiny_train_000001.bin, tiny_train_000002.bin (N tokens in all)
        and tiny_val_000000.bin: a learnable random token stream (each token
        has 4 possible successors), for the CPU mode of the harness.
"""
import argparse
import glob
import json
import math
import os
import sys
import time

import numpy as np

SHARD_MAGIC, SHARD_VERSION, HEADER_INTS = 20240520, 1, 256
M64 = (1 << 64) - 1


# ---- data: data/shard.c's loader -----------------------------------------------

def splitmix64(state):
    """One step of splitmix64 (data/rng.h rng_splitmix): returns (value, new state)."""
    state = (state + 0x9E3779B97F4A7C15) & M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31), state


class Xoshiro256ss:
    """xoshiro256** seeded through splitmix64, as data/rng.h."""

    def __init__(self, seed):
        self.s = []
        for _ in range(4):
            v, seed = splitmix64(seed)
            self.s.append(v)

    def next(self):
        s = self.s
        x = (s[1] * 5) & M64
        result = ((((x << 7) | (x >> 57)) & M64) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = ((s[3] << 45) | (s[3] >> 19)) & M64
        return result

    def below(self, n):
        """Uniform integer in [0, n) by rejection (rng_below)."""
        lim = ((1 << 64) - n) % n
        while True:
            x = self.next()
            if x >= lim:
                return x % n


def epoch_permutation(seed, epoch, nchunks):
    """The chunk order of one epoch (loader_permute in data/shard.c)."""
    h, _ = splitmix64(seed & M64)
    h ^= epoch
    s, _ = splitmix64(h)
    r = Xoshiro256ss(s)
    perm = list(range(nchunks))
    for i in range(nchunks - 1, 0, -1):
        k = r.below(i + 1)
        perm[i], perm[k] = perm[k], perm[i]
    return perm


def read_shard(path):
    """The tokens of one llm.c shard (memory-mapped), header checked against the size."""
    hdr = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if len(hdr) < HEADER_INTS:
        raise SystemExit(f"{path}: truncated header")
    if hdr[0] != SHARD_MAGIC or hdr[1] != SHARD_VERSION:
        raise SystemExit(f"{path}: not a token shard (magic {hdr[0]}, version {hdr[1]})")
    count = int(hdr[2])
    if os.path.getsize(path) != 4 * HEADER_INTS + 2 * count:
        raise SystemExit(f"{path}: size does not match the header's {count} tokens")
    return np.memmap(path, dtype="<u2", mode="r", offset=4 * HEADER_INTS, shape=(count,))


class Loader:
    """Micro-batches of a glob of shards in anatomy's order (one rank)."""

    def __init__(self, pattern, B, T, shuffle=False, seed=0, vocab=65536):
        # shard.c sorts the glob bytewise (strcmp); sorting the UTF-8 bytes is the same
        paths = sorted(glob.glob(pattern), key=lambda p: p.encode())
        if not paths:
            raise SystemExit(f"{pattern}: no file matches")
        self.files = [read_shard(p) for p in paths]
        self.starts = np.cumsum([0] + [len(f) for f in self.files])
        self.total = int(self.starts[-1])
        self.bt = B * T
        self.B, self.T = B, T
        self.shuffle, self.seed, self.vocab = shuffle, seed, vocab
        if self.total < self.bt + 1:
            raise SystemExit(f"{pattern}: {self.total} tokens, fewer than B*T+1")
        self.nchunks = (self.total - 1) // self.bt
        self.perm, self.perm_epoch = None, -1
        self.pos = 0

    def start(self, g):
        if not self.shuffle:
            return (g % self.total) * (self.bt % self.total) % self.total
        epoch = g // self.nchunks
        if epoch != self.perm_epoch:
            self.perm = epoch_permutation(self.seed, epoch, self.nchunks)
            self.perm_epoch = epoch
        return self.perm[g % self.nchunks] * self.bt

    def read(self, start, n):
        out = np.empty(n, dtype=np.int64)
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        off, done = start - int(self.starts[i]), 0
        while done < n:
            f = self.files[i]
            m = min(len(f) - off, n - done)
            out[done:done + m] = f[off:off + m]
            done += m
            off = 0
            i = (i + 1) % len(self.files)
        if out.max() >= self.vocab:
            raise SystemExit(f"token {out.max()} >= vocab {self.vocab}")
        return out

    def next(self):
        buf = self.read(self.start(self.pos), self.bt + 1)
        self.pos += 1
        return buf[:-1].reshape(self.B, self.T), buf[1:].reshape(self.B, self.T)


def write_shard(path, tokens):
    hdr = np.zeros(HEADER_INTS, dtype="<i4")
    hdr[0], hdr[1], hdr[2] = SHARD_MAGIC, SHARD_VERSION, len(tokens)
    with open(path, "wb") as f:
        f.write(hdr.tobytes())
        f.write(np.asarray(tokens, dtype="<u2").tobytes())


def make_data(d, vocab, ntokens, seed):
    """A learnable stream: every token has 4 random successors. The training
    tokens go to two shards of unequal length (so batches cross files)."""
    rng = np.random.default_rng(seed)
    succ = rng.integers(0, vocab, (vocab, 4))
    n = ntokens + 4096
    choice = rng.integers(0, 4, n)
    toks = np.empty(n, dtype=np.int64)
    toks[0] = rng.integers(0, vocab)
    for i in range(1, n):
        toks[i] = succ[toks[i - 1], choice[i]]
    os.makedirs(d, exist_ok=True)
    cut = ntokens * 2 // 5 + 17
    write_shard(os.path.join(d, "tiny_train_000001.bin"), toks[:cut])
    write_shard(os.path.join(d, "tiny_train_000002.bin"), toks[cut:ntokens])
    write_shard(os.path.join(d, "tiny_val_000000.bin"), toks[ntokens:])


# ---- the model ----------------------------------------------------------------

def build(torch, cfg):
    nn, F = torch.nn, torch.nn.functional
    V, maxT, L, NH, C = cfg

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.attn = nn.Module()
            self.attn.c_attn, self.attn.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.mlp = nn.Module()
            self.mlp.c_fc, self.mlp.c_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.attn.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.attn.c_proj(y.transpose(1, 2).reshape(B, T, C))
            return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT2(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(maxT, C)
            self.h = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(C)

        def forward(self, idx, targets):
            T = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
            for blk in self.h:
                x = blk(x)
            logits = self.ln_f(x) @ self.wte.weight.t()  # tied classifier
            return F.cross_entropy(logits.float().reshape(-1, V), targets.reshape(-1))

    return GPT2()


CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def load_hf(torch, d):
    """The model of a Hugging Face GPT-2 directory, fp32 (Conv1D weights transposed)."""
    from safetensors.torch import load_file

    with open(os.path.join(d, "config.json")) as f:
        j = json.load(f)
    cfg = (j["vocab_size"], j["n_positions"], j["n_layer"], j["n_head"], j["n_embd"])
    model = build(torch, cfg)
    sd = load_file(os.path.join(d, "model.safetensors"))
    sd = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in sd.items()}
    with torch.no_grad():
        for name, p in model.named_parameters():
            t = sd[name].float()
            if name.endswith(CONV1D):
                t = t.t()
            if tuple(t.shape) != tuple(p.shape):
                raise SystemExit(f"{d}: {name}: shape {tuple(t.shape)}, expected {tuple(p.shape)}")
            p.copy_(t)
    return model, cfg


# ---- the loop -----------------------------------------------------------------

def train_lr(a, step):
    """host/train.c train_lr."""
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    if a.schedule == "constant" or a.steps <= a.warmup:
        return a.lr
    progress = min(1.0, (step - a.warmup) / (a.steps - a.warmup))
    lo = a.lr * a.lr_min_frac
    return lo + 0.5 * (a.lr - lo) * (1.0 + math.cos(math.pi * progress))


def train(a):
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda:
        # as bench/torch_gpt2_gpu.py: under bf16 autocast the matmuls run in
        # bf16 anyway; this only lets any fp32 matmul left use tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model, cfg = load_hf(torch, a.init)
    model.to(dev)
    V = cfg[0]
    T = a.seq or min(cfg[1], 1024)
    B = a.batch
    total = a.total_batch or B * T
    if total % (B * T):
        raise SystemExit(f"--total-batch {total} is not a multiple of B*T = {B * T}")
    accum = total // (B * T)
    ld = Loader(a.data, B, T, a.shuffle, a.seed, V)
    vld = Loader(a.val_data, B, T, False, 0, V) if a.val_data else None
    decay = [p for p in model.parameters() if p.dim() >= 2]
    nodecay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": nodecay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8, **({"fused": True} if cuda else {}))
    fwd = torch.compile(model) if a.compile else model
    amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if cuda and a.precision == "bf16" \
        else torch.autocast(device_type="cpu", enabled=False)

    def to_dev(x):
        return torch.from_numpy(x).to(dev, non_blocking=True)

    def val_loss():
        vld.pos = 0
        s = 0.0
        with torch.no_grad(), amp:
            for _ in range(a.val_batches):
                x, y = vld.next()
                s += fwd(to_dev(x), to_dev(y)).item()
        return s / a.val_batches

    os.makedirs(a.out, exist_ok=True)
    log = open(os.path.join(a.out, "log.jsonl"), "w")
    print(f"torch {torch.__version__} on {dev} ({a.precision}): {sum(p.numel() for p in model.parameters())} "
          f"parameters, {a.steps} steps of {total} tokens ({B} x {T} x {accum} accumulation)"
          f"{', shuffled with seed %d' % a.seed if a.shuffle else ''}", flush=True)
    for step in range(a.steps):
        t0 = time.perf_counter()
        lr = train_lr(a, step)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
        for _ in range(accum):
            x, y = ld.next()
            with amp:
                loss = fwd(to_dev(x), to_dev(y))
            loss_sum += loss.detach().double() / accum
            (loss / accum).backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                              a.grad_clip if a.grad_clip > 0 else float("inf"))
        opt.step()
        lossv, normv = loss_sum.item(), float(norm)  # syncs the device
        ms = (time.perf_counter() - t0) * 1e3
        tps = total / (ms / 1e3)
        n = step + 1
        print(f"step {n:5d}/{a.steps} | loss {lossv:.6f} | norm {normv:.4f} | lr {lr:.2e} | "
              f"{ms:.1f} ms | {tps:.0f} tok/s", flush=True)
        log.write(json.dumps({"step": n, "loss": float(f"{lossv:.9g}"), "norm": round(normv, 6),
                              "lr": float(f"{lr:.6e}"), "ms": round(ms, 3),
                              "tokens_per_s": round(tps, 1)}) + "\n")
        if vld and ((a.val_every > 0 and n % a.val_every == 0) or n == a.steps):
            vl = val_loss()
            print(f"val   {n:5d}/{a.steps} | loss {vl:.6f}", flush=True)
            log.write(json.dumps({"step": n, "val_loss": float(f"{vl:.9g}")}) + "\n")
        log.flush()
    log.close()


# ---- the comparison -----------------------------------------------------------

def read_log(d):
    """{step: loss} and {step: val_loss} of a run directory's log.jsonl."""
    train, val = {}, {}
    with open(os.path.join(d, "log.jsonl")) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            if "loss" in r:
                train[r["step"]] = r["loss"]
            if "val_loss" in r:
                val[r["step"]] = r["val_loss"]
    return train, val


def summary(a):
    """Prints the parity table of OURS against torch runs A (same batches) and B
    (another data order); with --tol, fails when any step's loss of OURS differs
    from A's by more than tol relative (and OURS_B from B's, when given)."""
    names = ["ours", "torch A", "torch B"]
    runs = [read_log(d) for d in a.summary]
    (o, ov), (ta, tav), (tb, tbv) = runs[:3]
    steps = sorted(set(o) & set(ta) & set(tb))
    if not steps:
        raise SystemExit("summary: the logs share no step")
    last = steps[-1]
    show = sorted({s for s in [1, 10, 100] + [round(last * k / 4) for k in range(1, 5)] if s in o})
    out = []
    out.append(f"| step | {' | '.join(names)} | abs(ours - A) | abs(A - B) |")
    out.append("| --- | --- | --- | --- | --- | --- |")
    for s in show:
        out.append(f"| {s} | {o[s]:.4f} | {ta[s]:.4f} | {tb[s]:.4f} | {abs(o[s] - ta[s]):.4f} | "
                   f"{abs(ta[s] - tb[s]):.4f} |")
    tail = steps[-min(100, len(steps)):]
    mean = [sum(r[s] for s in tail) / len(tail) for r in (o, ta, tb)]
    d_oa = sum(abs(o[s] - ta[s]) for s in tail) / len(tail)
    d_ab = sum(abs(ta[s] - tb[s]) for s in tail) / len(tail)
    out.append(f"| mean of steps {tail[0]}-{tail[-1]} | {mean[0]:.4f} | {mean[1]:.4f} | {mean[2]:.4f} | "
               f"{abs(mean[0] - mean[1]):.4f} (per step {d_oa:.4f}) | "
               f"{abs(mean[1] - mean[2]):.4f} (per step {d_ab:.4f}) |")
    for s in sorted(set(ov) & set(tav) & set(tbv)):
        out.append(f"| val {s} | {ov[s]:.4f} | {tav[s]:.4f} | {tbv[s]:.4f} | {abs(ov[s] - tav[s]):.4f} | "
                   f"{abs(tav[s] - tbv[s]):.4f} |")
    rel = max(abs(o[s] - ta[s]) / abs(ta[s]) for s in steps)
    out.append("")
    out.append(f"max over all {len(steps)} steps of abs(ours - A) / A: {rel:.2e}")
    bad = []
    if a.tol and rel > a.tol:
        bad.append(f"ours vs torch A: {rel:.2e} > {a.tol:g}")
    if len(runs) > 3:
        ob = runs[3][0]
        relb = max(abs(ob[s] - tb[s]) / abs(tb[s]) for s in steps)
        out.append(f"max over all steps of abs(ours shuffled as B - B) / B: {relb:.2e}")
        if a.tol and relb > a.tol:
            bad.append(f"ours (shuffled) vs torch B: {relb:.2e} > {a.tol:g}")
    verdict = "within" if abs(mean[0] - mean[1]) <= abs(mean[1] - mean[2]) else "OUTSIDE"
    out.append(f"last-{len(tail)}-step mean loss: ours - A = {mean[0] - mean[1]:+.4f}, "
               f"A - B = {mean[1] - mean[2]:+.4f}: ours is {verdict} torch's run-to-run difference")
    text = "\n".join(out)
    print(text)
    if a.summary_out:
        with open(a.summary_out, "w") as f:
            f.write(text + "\n")
    if bad:
        raise SystemExit("parity FAILED: " + "; ".join(bad))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--make-data")
    ap.add_argument("--summary", nargs="+", metavar="RUN_DIR",
                    help="OURS TORCH_A TORCH_B [OURS_B]: print the parity table")
    ap.add_argument("--summary-out")
    ap.add_argument("--tol", type=float, default=0.0)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=10000)
    ap.add_argument("--init")
    ap.add_argument("--data")
    ap.add_argument("--val-data")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=0)
    ap.add_argument("--total-batch", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    ap.add_argument("--lr-min-frac", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--shuffle", action="store_true")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--val-every", type=int, default=0)
    ap.add_argument("--val-batches", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default=None)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.make_data:
        make_data(a.make_data, a.vocab, a.tokens, a.seed)
        return
    if a.summary:
        if len(a.summary) not in (3, 4):
            ap.error("--summary takes OURS TORCH_A TORCH_B [OURS_B]")
        summary(a)
        return
    if not (a.init and a.data and a.out):
        ap.error("--init, --data and --out are required (or --make-data)")
    if a.precision is None:
        a.precision = "bf16" if a.device.startswith("cuda") else "fp32"
    train(a)


if __name__ == "__main__":
    sys.exit(main())
