"""gpt2_ref.py: an independent GPT-2 in PyTorch, written from the math, used as
the float64 oracle for anatomy's GPT-2 (tests/ref/test_gpt2_parity.py).

It deliberately uses no fused PyTorch layers (no nn.LayerNorm, no
scaled_dot_product_attention, no nn.functional.gelu): every formula is spelled
out, so that a bug shared by anatomy and a library cannot hide.

    x_0   = wte[idx] + wpe[pos]
    x_l+1 = x_l + attn(ln_1(x_l));  x_l+1 += mlp(ln_2(x_l+1))      (pre-LN block)
    ln(x) = (x - mean) / sqrt(var + 1e-5) * g + b                 (biased variance)
    attn  = causal softmax(q k^T / sqrt(hs)) v per head, then c_proj
    mlp   = c_proj(gelu_tanh(c_fc(x))),  hidden 4C
    logits = ln_f(x_L) wte^T                                      (tied lm_head)
    loss  = mean over targets != -1 of -log softmax(logits)[target]

Parameters carry Hugging Face names (wte.weight, h.0.attn.c_attn.weight, ...).
Matmul weights are held [out, in] like torch.nn.Linear; a Hugging Face
directory stores them [in, out] (Conv1D), so load/save transpose them.
"""
import json
import math
import os

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

# Hugging Face Conv1D weights (stored [in, out] on disk).
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class Config:
    def __init__(self, V, maxT, L, NH, C):
        assert C % NH == 0, "heads must divide the width"
        self.V, self.maxT, self.L, self.NH, self.C = V, maxT, L, NH, C

    def hf_json(self):
        """config.json content that transformers' GPT2LMHeadModel reads."""
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.V,
            "n_positions": self.maxT,
            "n_ctx": self.maxT,
            "n_embd": self.C,
            "n_layer": self.L,
            "n_head": self.NH,
            "n_inner": None,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-5,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "scale_attn_weights": True,
            "tie_word_embeddings": True,
            "bos_token_id": self.V - 1,
            "eos_token_id": self.V - 1,
        }


def _param(*shape):
    return nn.Parameter(torch.zeros(*shape, dtype=torch.float64))


def layernorm(x, g, b, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased, as GPT-2
    return (x - mean) / torch.sqrt(var + eps) * g + b


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def linear(x, w, b):
    """y = x w^T + b with w [out, in]."""
    return x @ w.transpose(0, 1) + b


class LN(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.weight, self.bias = _param(C), _param(C)

    def forward(self, x):
        return layernorm(x, self.weight, self.bias)


class Lin(nn.Module):
    def __init__(self, nin, nout):
        super().__init__()
        self.weight, self.bias = _param(nout, nin), _param(nout)

    def forward(self, x):
        return linear(x, self.weight, self.bias)


class Attn(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.NH = cfg.NH
        self.c_attn = Lin(cfg.C, 3 * cfg.C)
        self.c_proj = Lin(cfg.C, cfg.C)

    def forward(self, x):
        B, T, C = x.shape
        hs = C // self.NH
        q, k, v = self.c_attn(x).split(C, dim=-1)
        # [B, T, C] -> [B, NH, T, hs]
        q, k, v = (t.view(B, T, self.NH, hs).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        att = att.masked_fill(future, float("-inf"))
        att = att - att.amax(dim=-1, keepdim=True)
        att = torch.exp(att)
        att = att / att.sum(dim=-1, keepdim=True)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = Lin(cfg.C, 4 * cfg.C)
        self.c_proj = Lin(4 * cfg.C, cfg.C)

    def forward(self, x):
        return self.c_proj(gelu_tanh(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1, self.attn = LN(cfg.C), Attn(cfg)
        self.ln_2, self.mlp = LN(cfg.C), MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Emb(nn.Module):
    def __init__(self, n, C):
        super().__init__()
        self.weight = _param(n, C)


class GPT2Ref(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.wte, self.wpe = Emb(cfg.V, cfg.C), Emb(cfg.maxT, cfg.C)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.L))
        self.ln_f = LN(cfg.C)

    def forward(self, idx, targets=None):
        """idx, targets: int64 [B, T]. Returns (logits [B, T, V], mean loss or None)."""
        B, T = idx.shape
        assert T <= self.cfg.maxT
        x = self.wte.weight[idx] + self.wpe.weight[torch.arange(T)]
        for blk in self.h:
            x = blk(x)
        x = self.ln_f(x)
        logits = x @ self.wte.weight.transpose(0, 1)
        if targets is None:
            return logits, None
        return logits, cross_entropy(logits, targets)

    # ---- weights in and out -------------------------------------------------

    def init_random(self, seed, std=0.02):
        """N(0, std) for matrices and embeddings, plus random nonzero biases and
        LN gains/biases near (1, 0), so that no term of the math is trivially
        zero or one."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                r = torch.randn(p.shape, generator=g, dtype=torch.float64)
                if p.dim() >= 2:
                    p.copy_(r * std)
                elif ".ln_" in name or name.startswith("ln_f"):
                    p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * r)
                else:
                    p.copy_(0.02 * r)
        return self

    def hf_state(self, dtype=torch.float32, prefix=""):
        """State dict in Hugging Face layout (Conv1D weights [in, out])."""
        out = {}
        for name, p in self.named_parameters():
            t = p.detach()
            if name.endswith(CONV1D):
                t = t.transpose(0, 1)
            out[prefix + name] = t.to(dtype).contiguous()
        return out

    def save_hf(self, d, dtype=torch.float32, prefix=""):
        """Writes config.json + model.safetensors (HF GPT-2 layout) into d."""
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(self.cfg.hf_json(), f, indent=2)
        save_file(self.hf_state(dtype, prefix), os.path.join(d, "model.safetensors"),
                  metadata={"format": "pt"})

    @classmethod
    def load_hf(cls, d, dtype=torch.float64):
        """Reads an HF GPT-2 directory (names with or without "transformer.")."""
        with open(os.path.join(d, "config.json")) as f:
            j = json.load(f)
        cfg = Config(j["vocab_size"], j["n_positions"], j["n_layer"], j["n_head"], j["n_embd"])
        m = cls(cfg)
        sd = load_file(os.path.join(d, "model.safetensors"))
        sd = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in sd.items()}
        with torch.no_grad():
            for name, p in m.named_parameters():
                t = sd[name]
                if name.endswith(CONV1D):
                    t = t.transpose(0, 1)
                assert tuple(t.shape) == tuple(p.shape), (name, t.shape, p.shape)
                p.copy_(t.to(torch.float64))
        return m.to(dtype)

    def load_anatomy_ckpt(self, path):
        """Loads parameters from an anatomy checkpoint (.safetensors with our
        [out, in] weights and Vp padded vocabulary rows)."""
        sd = load_file(path)
        with torch.no_grad():
            for name, p in self.named_parameters():
                t = sd[name]
                if name == "wte.weight":
                    t = t[: self.cfg.V]
                assert tuple(t.shape) == tuple(p.shape), (name, t.shape, p.shape)
                p.copy_(t.to(p.dtype))
        return self

    def decay_groups(self, weight_decay):
        """AdamW parameter groups: decay on 2+ dimensional tensors only."""
        dec = [p for p in self.parameters() if p.dim() >= 2]
        nodec = [p for p in self.parameters() if p.dim() < 2]
        return [{"params": dec, "weight_decay": weight_decay},
                {"params": nodec, "weight_decay": 0.0}]


def cross_entropy(logits, targets):
    """Mean of -log softmax(logits)[target] over positions whose target != -1."""
    V = logits.shape[-1]
    z = logits.reshape(-1, V)
    t = targets.reshape(-1)
    keep = t != -1
    z, t = z[keep], t[keep]
    zmax = z.amax(dim=-1, keepdim=True)
    lse = zmax.squeeze(-1) + torch.log(torch.exp(z - zmax).sum(dim=-1))
    return (lse - z.gather(1, t.unsqueeze(1)).squeeze(1)).mean()


# ---- data files --------------------------------------------------------------

SHARD_MAGIC, MODEL_MAGIC = 20240520, 20240326


def write_shard(path, tokens):
    """llm.c token shard: 256 int32 header (magic, version 1, count), uint16 tokens."""
    import numpy as np
    tokens = np.asarray(tokens)
    assert tokens.min() >= 0 and tokens.max() < 65536
    hdr = np.zeros(256, dtype="<i4")
    hdr[0], hdr[1], hdr[2] = SHARD_MAGIC, 1, len(tokens)
    with open(path, "wb") as f:
        f.write(hdr.tobytes())
        f.write(tokens.astype("<u2").tobytes())


def micro_batch(tokens, k, B, T):
    """Micro-batch k of a stream without shuffling: tokens [k*B*T, k*B*T + B*T]."""
    s = k * B * T
    buf = torch.as_tensor(tokens[s:s + B * T + 1].astype("int64"))
    assert buf.numel() == B * T + 1, "stream too short for this micro-batch"
    return buf[:-1].view(B, T), buf[1:].view(B, T)


def write_llmc_model(model, path):
    """llm.c model file (version 3, fp32): 256 int32 header (magic, version, maxT,
    V, L, NH, C, Vp), then tensors grouped by kind across layers, matmul weights
    [out, in], wte padded with zero rows to Vp = V rounded up to 128."""
    import numpy as np
    cfg = model.cfg
    Vp = (cfg.V + 127) // 128 * 128
    hdr = np.zeros(256, dtype="<i4")
    hdr[:8] = [MODEL_MAGIC, 3, cfg.maxT, cfg.V, cfg.L, cfg.NH, cfg.C, Vp]
    sd = {n: p.detach().to(torch.float32) for n, p in model.named_parameters()}
    wte = torch.zeros(Vp, cfg.C, dtype=torch.float32)
    wte[: cfg.V] = sd["wte.weight"]
    order = [wte, sd["wpe.weight"]]
    kinds = ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
             "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
             "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"]
    for kind in kinds:
        order += [sd[f"h.{i}.{kind}"] for i in range(cfg.L)]
    order += [sd["ln_f.weight"], sd["ln_f.bias"]]
    with open(path, "wb") as f:
        f.write(hdr.tobytes())
        for t in order:
            f.write(t.contiguous().numpy().astype("<f4").tobytes())
