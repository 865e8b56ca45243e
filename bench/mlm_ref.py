"""data/mlm.c's batches and the masked-LM figures, in Python, for references
that must see exactly what anatomy's BERT sees (bench/bert_vs_hf.py).

Sequences without next-sentence pairs and without shuffling: micro-batch g
holds windows g*B .. g*B+B-1 of the token stream (wrapping), each as
[CLS] window [SEP], masked by BERT's rules from (seed, g) alone: of the n
tokenizer ids of a row, floor(0.15 n + u) are chosen (Knuth's selection
sampling), each replaced by [MASK] (80%), a random id (10%) or kept (10%).
The generator is data/rng.h's xoshiro256** seeded through splitmix64.
"""
import numpy as np
import torch

M64 = (1 << 64) - 1
BERT_EVAL_SEED = 0x6265727465766131  # bert.c: the masks of --split val/test
SHARD_MAGIC, SHARD_VERSION = 20240520, 1


def splitmix(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return x, z ^ (z >> 31)


def rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & M64


class Rng:
    """xoshiro256** seeded through splitmix64 (data/rng.h)."""

    def __init__(self, seed):
        self.s = []
        x = seed & M64
        for _ in range(4):
            x, z = splitmix(x)
            self.s.append(z)

    def next(self):
        s = self.s
        result = (rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result

    def uniform(self):
        return (self.next() >> 11) * (1.0 / 9007199254740992.0)

    def below(self, n):
        lim = ((1 << 64) - n) % n
        while True:
            x = self.next()
            if x >= lim:
                return x % n


def mix3(seed, index, tag):
    _, z = splitmix(seed & M64)
    _, z = splitmix(z ^ index)
    _, z = splitmix(z ^ ((tag * 0x632BE59BD9B4E019) & M64))
    return z


class Vocab:
    """A model vocabulary of V ids: the tokenizer's V-4, then [CLS] [SEP] [MASK] [PAD]."""

    def __init__(self, V):
        self.V, self.tok = V, V - 4
        self.cls, self.sep, self.mask, self.pad = V - 4, V - 3, V - 2, V - 1


def mask_rows(tokens, voc, seed, index):
    """mlm_mask: tokens [rows, T] int64, masked in place; returns the targets
    (the original token at chosen positions, -1 elsewhere)."""
    r = Rng(mix3(seed, index, 1))
    targets = np.full(tokens.shape, -1, dtype=np.int64)
    for row, tg in zip(tokens, targets):
        maskable = [t for t in range(len(row)) if row[t] < voc.tok]
        n = len(maskable)
        k = min(int(0.15 * n + r.uniform()), n)
        seen = chosen = 0
        for t in maskable:
            if chosen == k:
                break
            if r.below(n - seen) < k - chosen:
                u = r.uniform()
                tg[t] = row[t]
                if u < 0.8:
                    row[t] = voc.mask
                elif u < 0.9:
                    row[t] = r.below(voc.tok)
                chosen += 1
            seen += 1
    return targets


def make_batch(stream, voc, seed, g, B, T):
    """mlm_batch of micro-batch g (no pairs, no shuffling): tokens, targets [B, T]."""
    n = T - 2
    windows = len(stream) // n
    tokens = np.zeros((B, T), dtype=np.int64)
    for b in range(B):
        p = ((g * B + b) % windows) * n
        tokens[b] = [voc.cls, *stream[p:p + n], voc.sep]
    return tokens, mask_rows(tokens, voc, seed, g)


def read_shard(path):
    """A token shard (data/shard.h): 256 int32 header words, then uint16 tokens."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size < 1024:
        raise ValueError(f"{path}: truncated header")
    h = raw[:1024].view(np.int32)
    if h[0] != SHARD_MAGIC or h[1] != SHARD_VERSION or raw.size != 1024 + 2 * int(h[2]):
        raise ValueError(f"{path}: not a version-{SHARD_VERSION} token shard of its header's size")
    return raw[1024:].view(np.uint16).astype(np.int64)


def masked_loss_sum(logits, targets):
    """Sum of the cross-entropy over the masked positions (targets >= 0)."""
    t = torch.from_numpy(targets).reshape(-1)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), t,
                                             ignore_index=-1, reduction="sum")


def masked_correct(logits, targets):
    """(masked positions whose argmax is the original token, masked positions)."""
    keep = targets >= 0
    pred = logits.detach().argmax(-1).numpy()
    return int((pred[keep] == targets[keep]).sum()), int(keep.sum())
