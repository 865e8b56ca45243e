"""torch_gpt2_gpu.py: the PyTorch side of bench/bench_gpu.sh, and the card's ceilings.

A GPT-2 written here the way a PyTorch user makes it fast on one GPU: bf16
autocast, torch.compile, F.scaled_dot_product_attention (flash attention),
fused AdamW, the vocabulary padded to 50304 (the same padded classifier
anatomy uses), tied embeddings, GPT-2 initialisation. Times training steps
(forward, backward, clip at norm 1, AdamW) and prints the median.

    python3 bench/torch_gpt2_gpu.py --write-shard FILE --ntokens N
    python3 bench/torch_gpt2_gpu.py --ceilings
        peak: a large bf16 matmul through cuBLAS (torch.matmul), 8192^3, median of 20;
        copy: device-to-device bandwidth, bytes read + written, 2 GiB
    python3 bench/torch_gpt2_gpu.py --data FILE --batch B [--seq 1024] [--steps 30] [--compile 0|1]
        --compile 0: eager (autocast + SDPA flash + fused AdamW, no compilation);
        --device cpu --tiny: a 2-layer, width-64 model on the CPU in fp32, which
        rehearses the script's logic where there is no GPU (build/gpu/run.sh --rehearse)

Output lines are `key: value` so bench_gpu.sh can read them.
"""
import argparse
import math
import statistics
import time

import numpy as np

WARMUP = 5  # steps left out of the median (compilation, autotuning, allocator warm-up)
VOCAB, VOCAB_PADDED = 50257, 50304


def write_shard(path, ntokens, vocab=VOCAB, seed=1234):
    """Random token ids below vocab (GPT-2's by default) in llm.c's shard layout
    (256 int32 header words, uint16 tokens)."""
    toks = np.random.default_rng(seed).integers(0, vocab, ntokens, dtype=np.uint16)
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1], header[2] = 20240520, 1, ntokens
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(toks.tobytes())


def timed(torch, device, fn, reps, warm):
    """Median seconds of fn() over reps runs after warm runs (CUDA events on a GPU)."""
    times = []
    for i in range(warm + reps):
        if device == "cuda":
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            fn()
            e1.record()
            torch.cuda.synchronize()
            t = e0.elapsed_time(e1) / 1e3
        else:
            t0 = time.perf_counter()
            fn()
            t = time.perf_counter() - t0
        if i >= warm:
            times.append(t)
    return statistics.median(times)


def ceilings(torch, device="cuda"):
    """Measured bf16 matmul rate (TFLOP/s) and copy bandwidth (TB/s), medians
    (on the CPU, small sizes: only the script's logic is rehearsed there)."""
    n = 8192 if device == "cuda" else 512
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
    tflops = 2 * n**3 / timed(torch, device, lambda: torch.matmul(a, b), 20, 3) / 1e12
    x = torch.empty(1 << (30 if device == "cuda" else 22), device=device, dtype=torch.int16)  # 2 GiB on a GPU
    y = torch.empty_like(x)
    tbps = 2 * x.numel() * 2 / timed(torch, device, lambda: y.copy_(x), 10, 3) / 1e12
    return tflops, tbps


def build_model(torch, L=12, NH=12, C=768, maxT=1024):
    nn, F = torch.nn, torch.nn.functional

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.c_attn, self.attn_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.attn_proj(y.transpose(1, 2).reshape(B, T, C))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT2(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(VOCAB_PADDED, C), nn.Embedding(maxT, C)
            self.h = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(C)
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    std = 0.02 / math.sqrt(2 * L) if name.endswith("proj.weight") else 0.02
                    nn.init.normal_(p, 0.0, std)
                elif not name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                    nn.init.zeros_(p)

        def forward(self, idx, targets):
            T = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
            for blk in self.h:
                x = blk(x)
            logits = self.ln_f(x) @ self.wte.weight.t()  # tied classifier, padded columns
            logits = logits[..., :VOCAB]
            return F.cross_entropy(logits.float().reshape(-1, VOCAB), targets.reshape(-1))

    return GPT2()


def train(args):
    import torch

    dev = args.device
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    B, T = args.batch, args.seq
    tokens = np.fromfile(args.data, dtype=np.uint16, offset=1024)
    need = args.steps * B * T + 1
    if len(tokens) < need:
        raise SystemExit(f"torch_gpt2_gpu.py: {args.data}: {len(tokens)} tokens, need {need}")
    shape = dict(L=2, NH=2, C=64, maxT=max(T, 64)) if args.tiny else {}
    model = build_model(torch, **shape).to(dev)
    nparams = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=dev == "cuda")
    cmodel = torch.compile(model) if args.compile else model
    amp = torch.bfloat16 if dev == "cuda" else torch.float32
    times, loss = [], float("nan")
    for step in range(args.steps):
        chunk = torch.from_numpy(tokens[step * B * T: (step + 1) * B * T + 1].astype(np.int64))
        x = chunk[:-1].view(B, T).to(dev, non_blocking=True)
        y = chunk[1:].view(B, T).to(dev, non_blocking=True)
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device_type=dev, dtype=amp, enabled=dev == "cuda"):
            out = cmodel(x, y)
        out.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        loss = out.item()
    ms = statistics.median(times[WARMUP:] if len(times) > WARMUP else times) * 1e3
    print(f"pytorch_params: {nparams}")
    print(f"pytorch_ms_per_step: {ms:.2f}")
    print(f"pytorch_tokens_per_s: {B * T / ms * 1e3:.0f}")
    print(f"pytorch_final_loss: {loss:.4f}")
    print(f"pytorch_version: {torch.__version__}")
    print(f"pytorch_mode: {'torch.compile' if args.compile else 'eager'}, {dev}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write-shard")
    ap.add_argument("--ntokens", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=VOCAB)
    ap.add_argument("--ceilings", action="store_true")
    ap.add_argument("--data")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--compile", type=int, choices=(0, 1), default=1)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    if args.write_shard:
        write_shard(args.write_shard, args.ntokens, args.vocab)
    elif args.ceilings:
        import torch

        tflops, tbps = ceilings(torch, args.device)
        print(f"device: {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}")
        # four significant digits: a CPU's ceilings (the bundle's rehearsal)
        # are hundredths of a TFLOP/s, which ".1f" printed as 0.0
        print(f"peak_bf16_tflops: {tflops:.4g}")
        print(f"copy_tbps: {tbps:.4g}")
    elif args.data:
        train(args)
    else:
        ap.error("one of --write-shard, --ceilings, --data")


if __name__ == "__main__":
    main()
