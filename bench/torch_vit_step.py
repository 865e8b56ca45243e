"""torch_vit_step.py: the PyTorch side of bench/vit_step_cpu.sh.

Times training steps of the Fashion-MNIST ViT recipe's model (anatomy's
vit-mnist-p4 family: 4 x 4 patches of 28 x 28 grey images, [CLS] plus 49
patch positions, pre-LN blocks, GELU tanh, the head on [CLS]) written here in
plain PyTorch the way a PyTorch user would (nn.Linear, F.layer_norm,
F.scaled_dot_product_attention, F.cross_entropy with label smoothing,
torch.optim.AdamW with fused=False), on the CPU, fp32 or with --autocast bf16
(the forward under torch.autocast's bf16). Each step does what anatomy's
step does for the recipe: a random crop of the image padded by --crop-pad
pixels and a mirror with probability 1/2 per image, forward, backward,
gradient-norm clip at 1, AdamW. Images are random (timing needs no data).
Prints the median step time of steps 3.. and the first loss.

    python3 bench/torch_vit_step.py [--width 128 --layers 6 --heads 4 --batch 128 ...]
    python3 bench/torch_vit_step.py --count-params [--width W --layers L]
"""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

# the block (here without the causal mask), the optimizer and the timed step loop
from torch_gpt2_step import Block, add_step_options, adamw, timed_steps

IMAGE, PATCH, CLASSES = 28, 4, 10


class ViT(nn.Module):
    def __init__(self, C, L, NH):
        super().__init__()
        n = (IMAGE // PATCH) ** 2
        self.patch_embed = nn.Linear(PATCH * PATCH, C)
        self.cls_token = nn.Parameter(torch.zeros(C))
        self.pos_embed = nn.Parameter(torch.randn(n + 1, C) * 0.02)
        self.h = nn.ModuleList(Block(C, NH, causal=False) for _ in range(L))
        self.ln_f = nn.LayerNorm(C, eps=1e-5)
        self.head = nn.Linear(C, CLASSES)

    def forward(self, img):  # img [B, 28, 28]
        B = img.shape[0]
        p = img.unfold(1, PATCH, PATCH).unfold(2, PATCH, PATCH).reshape(B, -1, PATCH * PATCH)
        x = torch.cat([self.cls_token.expand(B, 1, -1), self.patch_embed(p)], dim=1)
        x = x + self.pos_embed
        for blk in self.h:
            x = blk(x)
        return self.head(self.ln_f(x[:, 0]))


def augment(img, pad, gen):
    """Per image: a random crop of the image padded by `pad` zeros, then a
    mirror with probability 1/2."""
    B = img.shape[0]
    if pad:
        padded = F.pad(img, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (B,), generator=gen).tolist()
        dx = torch.randint(0, 2 * pad + 1, (B,), generator=gen).tolist()
        img = torch.stack([padded[i, y:y + IMAGE, x:x + IMAGE] for i, (y, x) in enumerate(zip(dy, dx))])
    flip = torch.rand(B, generator=gen) < 0.5
    return torch.where(flip[:, None, None], img.flip(2), img)


def bench(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = ViT(args.width, args.layers, args.heads)
    opt = adamw(model, 2e-3, 0.05, (0.9, 0.999))
    images = torch.rand(args.batch * 4, IMAGE, IMAGE, generator=gen)
    labels = torch.randint(0, CLASSES, (args.batch * 4,), generator=gen)

    def loss_at(step):
        s = (step % 4) * args.batch
        x = augment(images[s:s + args.batch], args.crop_pad, gen)
        return F.cross_entropy(model(x).float(), labels[s:s + args.batch], label_smoothing=0.1)
    return timed_steps(model, opt, args.steps, args.autocast, loss_at)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--crop-pad", type=int, default=2)
    add_step_options(ap)
    ap.add_argument("--count-params", action="store_true",
                    help="print the model's parameter count and exit")
    args = ap.parse_args()
    if args.width % args.heads:
        ap.error(f"--width {args.width} is not a multiple of --heads {args.heads}")
    if args.count_params:
        print(sum(p.numel() for p in ViT(args.width, args.layers, args.heads).parameters()))
        return
    t_ms, losses = bench(args)
    prec = "bf16 autocast" if args.autocast == "bf16" else "fp32"
    print(f"pytorch {t_ms:.1f} ms/step (ViT width {args.width}, {args.layers} blocks, {args.heads} heads, "
          f"batch {args.batch}, {prec}, {args.threads} threads, torch {torch.__version__}, "
          f"first loss {losses[0]:.3f})")


if __name__ == "__main__":
    main()
