"""torch_sdpa.py: PyTorch's scaled_dot_product_attention timed as a reference
for bench/bench_attention.sh, with one SDPA backend at a time (the flash
backend and the cuDNN backend by default), bf16, on the GPU.

Prints one line per (backend, pass, hs, T, mask) in the format of
build/bench_attention:
    <backend> <fwd|bwd|fwdbwd> hs=<hs> T=<T> causal=<0|1> ms=<ms> tflops=<TFLOP/s>
and 'device: <name>' first. FLOPs are counted as bench_attention.c counts
them: forward 4 * BH * T^2 * hs, backward 2.5x, halved when causal. Tensors
are [B, NH, T, hs] (SDPA's layout), B * NH = --bh with NH = 12 where it
divides. A backend that cannot run a shape prints 'unsupported' for it.
"""
import argparse
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="PyTorch SDPA (flash / cuDNN backends) attention timings, bf16")
    p.add_argument("--bh", type=int, default=192, help="batch x heads (default 192)")
    p.add_argument("--T", type=int, nargs="+", default=[1024, 4096], help="sequence lengths")
    p.add_argument("--hs", type=int, nargs="+", default=[64, 128], help="head sizes")
    p.add_argument("--iters", type=int, default=20, help="timed runs after 3 warm-ups (default 20)")
    p.add_argument("--backends", nargs="+", default=["flash", "cudnn"], choices=["flash", "cudnn", "efficient", "math"],
                   help="SDPA backends to time (default: flash cudnn)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cpu (with --backends math) rehearses the script where there is no GPU")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.bh <= 0 or args.iters <= 0:
        print("anatomy: error: --bh/--iters: need positive values", file=sys.stderr)
        return 2
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        print("anatomy: error: torch_sdpa.py: no CUDA device (--device cpu rehearses on the CPU)", file=sys.stderr)
        return 1
    kinds = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    print("device: %s" % (torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"), flush=True)
    nh = 12 if args.bh % 12 == 0 else 1
    b = args.bh // nh
    torch.manual_seed(0)
    for hs in args.hs:
        for T in args.T:
            q, k, v = (torch.randn(b, nh, T, hs, device=dev, dtype=torch.bfloat16, requires_grad=True)
                       for _ in range(3))
            dout = torch.randn(b, nh, T, hs, device=dev, dtype=torch.bfloat16)
            for causal in (0, 1):
                fl = 4.0 * args.bh * T * T * hs * (0.5 if causal else 1.0)
                for name in args.backends:
                    try:
                        with sdpa_kernel([kinds[name]]):
                            res = time_passes(torch, F, q, k, v, dout, bool(causal), args.iters, dev)
                    except RuntimeError as e:  # no kernel of this backend for the shape
                        print("%s fwd hs=%d T=%d causal=%d unsupported (%s)"
                              % (name, hs, T, causal, str(e).splitlines()[0][:80]), flush=True)
                        continue
                    for pass_, mult in (("fwd", 1.0), ("bwd", 2.5), ("fwdbwd", 3.5)):
                        ms = res[pass_]
                        print("%s %s hs=%d T=%d causal=%d ms=%.4f tflops=%.1f"
                              % (name, pass_, hs, T, causal, ms, fl * mult / (ms * 1e-3) / 1e12), flush=True)
            del q, k, v, dout
            if dev == "cuda":
                torch.cuda.empty_cache()
    return 0


def time_passes(torch, F, q, k, v, dout, causal, iters, dev):
    """Mean milliseconds of forward, backward (from a kept forward graph) and both."""
    res = {}

    def fwd():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def fwdbwd():
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        torch.autograd.grad(o, (q, k, v), dout)

    res["fwd"] = timed(torch, fwd, iters, dev)
    res["fwdbwd"] = timed(torch, fwdbwd, iters, dev)
    # backward alone: the graph of one forward, kept and replayed
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    res["bwd"] = timed(torch, lambda: torch.autograd.grad(o, (q, k, v), dout, retain_graph=True), iters, dev)
    return res


def timed(torch, fn, iters, dev):
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t0) * 1e3 / iters


if __name__ == "__main__":
    sys.exit(main())
