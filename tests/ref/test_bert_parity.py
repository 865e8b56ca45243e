"""Reference parity of anatomy's BERT against Hugging Face transformers.

Same weights, same masked batch: build/anatomy (fp32) computes the loss and
the gradient of the first micro-batch (`anatomy eval --grads FILE`), and
transformers' BertForPreTraining (with --nsp) or BertForMaskedLM (without),
run in float64, computes them from the same weights. Our GELU is the tanh
approximation (hidden_act="gelu_new") and our layernorm uses eps 1e-5.

The batch is not read back from anatomy: this file rebuilds it from the
shard with its own implementation of data/mlm.c's rules (the generator, the
pairs, the masks), so the test also checks that the data pipeline does what
data/mlm.h says. Weights and tokens are fresh on every run from a seed
printed in every failure message; ANATOMY_TEST_SEED=N replays one.
"""
import os
import random
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

torch.set_num_threads(2)

SEED = int(os.environ.get("ANATOMY_TEST_SEED") or random.SystemRandom().randrange(1 << 31))
TOKVOCAB = 120            # tokenizer ids; the model vocabulary adds 4 specials
V = TOKVOCAB + 4          # padded to 128 inside anatomy
MAXT, L, NH, C = 32, 2, 4, 32
B, T = 3, 32
EVAL_SEED = 0x6265727465766131  # bert.c: BERT_EVAL_SEED, the masks of --split val/test
RTOL = 1e-5

# ---- data/rng.h and data/mlm.c, independently -------------------------------
# The generator (xoshiro256** through splitmix64), mix3 and the masking rule
# are the Python reference's, bench/mlm_ref.py (bench/bert_vs_hf.py's
# batches): one implementation of data/rng.h and mlm_mask outside C; the
# sentence pairs are below.

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "bench"))
import mlm_ref  # noqa: E402
from mlm_ref import Rng, mix3  # noqa: E402


CLS, SEP, PAD = V - 4, V - 3, V - 1  # [MASK] (V - 2): mlm_ref.Vocab


def mask_rows(tokens, seed, index):
    """mlm_mask: tokens [rows, T] int64 modified in place; returns targets."""
    return mlm_ref.mask_rows(tokens, mlm_ref.Vocab(V), seed, index)


def make_batch(stream, nsp, seed, g):
    """mlm_batch without shuffling: tokens, segments, targets [B,T], labels [B]."""
    n = T - (3 if nsp else 2)
    windows = len(stream) // n
    r = Rng(mix3(seed, g, 2))
    tokens = np.zeros((B, T), dtype=np.int64)
    segments = np.zeros((B, T), dtype=np.int64)
    labels = np.full(B, -1, dtype=np.int64)
    for b in range(B):
        p = ((g * B + b) % windows) * n
        if not nsp:
            tokens[b] = [CLS, *stream[p:p + n], SEP]
            continue
        la = 1 + r.below(n - 1)
        lb = n - la
        nxt = r.below(2) == 1
        q = p + la
        if not nxt:
            span = len(stream) - lb + 1
            while True:
                q = r.below(span)
                if not (q == p + la and span > 1):
                    break
            nxt = q == p + la
        tokens[b] = [CLS, *stream[p:p + la], SEP, *stream[q:q + lb], SEP]
        segments[b, 2 + la:] = 1
        labels[b] = int(nxt)
    targets = mask_rows(tokens, seed, g)
    return tokens, segments, targets, labels


# ---- weights ----------------------------------------------------------------

def our_views(nsp):
    """bert.c's views in buffer order: name -> shape (padded vocabulary)."""
    Vp = (V + 127) // 128 * 128
    v = {"bert.embeddings.word_embeddings.weight": (Vp, C),
         "bert.embeddings.position_embeddings.weight": (MAXT, C),
         "bert.embeddings.token_type_embeddings.weight": (2, C),
         "bert.embeddings.LayerNorm.weight": (C,), "bert.embeddings.LayerNorm.bias": (C,)}
    for l in range(L):
        p = f"bert.encoder.layer.{l}."
        v.update({p + "ln_1.weight": (C,), p + "ln_1.bias": (C,),
                  p + "attn.c_attn.weight": (3 * C, C), p + "attn.c_attn.bias": (3 * C,),
                  p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
                  p + "ln_2.weight": (C,), p + "ln_2.bias": (C,),
                  p + "mlp.c_fc.weight": (4 * C, C), p + "mlp.c_fc.bias": (4 * C,),
                  p + "mlp.c_proj.weight": (C, 4 * C), p + "mlp.c_proj.bias": (C,)})
    if nsp:
        v.update({"bert.pooler.dense.weight": (C, C), "bert.pooler.dense.bias": (C,)})
    v.update({"cls.predictions.transform.dense.weight": (C, C),
              "cls.predictions.transform.dense.bias": (C,),
              "cls.predictions.transform.LayerNorm.weight": (C,),
              "cls.predictions.transform.LayerNorm.bias": (C,),
              "cls.predictions.bias": (Vp,)})
    if nsp:
        v.update({"cls.seq_relationship.weight": (2, C), "cls.seq_relationship.bias": (2,)})
    return v


def random_weights(nsp, rng):
    """Far from init: every tensor random, layernorm gains around 1."""
    w = {}
    for name, shape in our_views(nsp).items():
        if "LayerNorm.weight" in name or "ln_" in name and name.endswith("weight"):
            a = 1 + 0.2 * rng.standard_normal(shape)
        elif len(shape) == 2:
            a = (0.5 / np.sqrt(shape[1])) * rng.standard_normal(shape)
            if "word_embeddings" in name or "position" in name or "token_type" in name:
                a = 0.5 * rng.standard_normal(shape)
        else:
            a = 0.1 * rng.standard_normal(shape)
        w[name] = a.astype(np.float32)
    # padded vocabulary rows are zero in anatomy and never read by the loss
    w["bert.embeddings.word_embeddings.weight"][V:] = 0
    w["cls.predictions.bias"][V:] = 0
    return w


def hf_state(ours):
    """Our views -> Hugging Face BERT names (c_attn split into query, key, value)."""
    sd = {}
    for name, a in ours.items():
        t = torch.from_numpy(a.astype(np.float64))
        if name in ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias"):
            t = t[:V]
        if not name.startswith("bert.encoder.layer."):
            sd[name] = t
            continue
        l, leaf = name[len("bert.encoder.layer."):].split(".", 1)
        p = f"bert.encoder.layer.{l}."
        kind, wb = leaf.rsplit(".", 1)
        if kind == "attn.c_attn":
            for i, qkv in enumerate(("query", "key", "value")):
                sd[p + f"attention.self.{qkv}.{wb}"] = t[i * C:(i + 1) * C]
            continue
        hf = {"attn.c_proj": "attention.output.dense", "ln_1": "attention.output.LayerNorm",
              "mlp.c_fc": "intermediate.dense", "mlp.c_proj": "output.dense",
              "ln_2": "output.LayerNorm"}[kind]
        sd[p + f"{hf}.{wb}"] = t
    return sd


def hf_model(nsp):
    from transformers import BertConfig, BertForMaskedLM, BertForPreTraining
    # pad_token_id: HF's embedding gives its row no gradient; ours is [PAD] (never emitted),
    # not token 0
    cfg = BertConfig(vocab_size=V, hidden_size=C, num_hidden_layers=L, num_attention_heads=NH,
                     intermediate_size=4 * C, hidden_act="gelu_new", max_position_embeddings=MAXT,
                     type_vocab_size=2, layer_norm_eps=1e-5, pad_token_id=PAD, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, attn_implementation="eager")
    m = BertForPreTraining(cfg) if nsp else BertForMaskedLM(cfg)
    return m.double().eval()


def hf_grads(model):
    """Gradients by our names (word embeddings: embedding + tied decoder)."""
    g = {}
    for name, p in model.named_parameters():
        g[name] = p.grad
    return g


def to_ours(hfg, name):
    """The HF gradient that corresponds to our view `name` (unpadded)."""
    if not name.startswith("bert.encoder.layer."):
        return hfg[name]
    l, leaf = name[len("bert.encoder.layer."):].split(".", 1)
    p = f"bert.encoder.layer.{l}."
    kind, wb = leaf.rsplit(".", 1)
    if kind == "attn.c_attn":
        return torch.cat([hfg[p + f"attention.self.{q}.{wb}"] for q in ("query", "key", "value")])
    hf = {"attn.c_proj": "attention.output.dense", "ln_1": "attention.output.LayerNorm",
          "mlp.c_fc": "intermediate.dense", "mlp.c_proj": "output.dense",
          "ln_2": "output.LayerNorm"}[kind]
    return hfg[p + f"{hf}.{wb}"]


def write_shard(path, tokens):
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [20240520, 1, len(tokens)]
    path.write_bytes(header.tobytes() + np.asarray(tokens, dtype=np.uint16).tobytes())


def rel_l2(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return float((a - b).norm() / max(float(b.norm()), 1e-30))


@pytest.mark.parametrize("nsp", [0, 1])
def test_loss_and_grads_match_transformers(anatomy, tmp_path, nsp):
    rng = np.random.default_rng(SEED + nsp)
    stream = rng.integers(0, TOKVOCAB, 2000)
    shard = tmp_path / "tok_val_000000.bin"
    write_shard(shard, stream)
    ours = random_weights(nsp, rng)
    ckpt = tmp_path / "w.safetensors"
    meta = {"format": "anatomy-ckpt", "version": "1", "family": "bert", "V": str(V),
            "maxT": str(MAXT), "L": str(L), "NH": str(NH), "C": str(C), "nsp": str(nsp)}
    save_file(ours, str(ckpt), metadata=meta)
    gfile = tmp_path / "g.safetensors"
    out = anatomy("eval", "--init", ckpt, "--data", shard, "--split", "val", "--batch", B,
                  "--seq", T, "--batches", 1, "--grads", gfile, "--device", "cpu")
    lines = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
    loss = float(lines["loss"])
    tag = f"(seed {SEED}, nsp {nsp})"

    tokens, segments, targets, labels = make_batch(stream, nsp, EVAL_SEED, 0)
    model = hf_model(nsp)
    missing, unexpected = model.load_state_dict(hf_state(ours), strict=False)
    # the decoder's weight and bias are tied to word_embeddings and cls.predictions.bias
    assert not unexpected, unexpected
    assert all("decoder" in k for k in missing), missing
    kw = dict(input_ids=torch.from_numpy(tokens), token_type_ids=torch.from_numpy(segments),
              labels=torch.from_numpy(np.where(targets < 0, -100, targets)))
    if nsp:
        kw["next_sentence_label"] = torch.from_numpy(labels)
    res = model(**kw)
    ref = float(res.loss.detach())
    assert abs(loss - ref) / ref < RTOL, f"loss anatomy {loss} transformers {ref} {tag}"
    res.loss.backward()

    # the metric: argmax at the masked positions
    logits = res.logits if not nsp else res.prediction_logits
    masked = targets >= 0
    acc = float((logits.argmax(-1).numpy()[masked] == targets[masked]).mean())
    assert abs(float(lines["mlm_accuracy"]) - acc) < 1e-6, f"mlm_accuracy {lines} vs {acc} {tag}"

    hfg = hf_grads(model)
    with safe_open(str(gfile), "np") as f:
        assert set(f.keys()) == set(ours), "gradient file holds other tensors"
        worst = 0.0
        for name in ours:
            g = torch.from_numpy(f.get_tensor(name))
            if name in ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias"):
                assert float(g[V:].abs().max()) == 0.0, f"{name}: padding has a gradient"
                g = g[:V]
            e = rel_l2(g, to_ours(hfg, name))
            worst = max(worst, e)
            assert e < RTOL, f"{name}: gradient rel L2 {e:.2e} {tag}"
    print(f"bert parity nsp={nsp}: loss {loss:.7f} vs {ref:.7f}, worst grad rel L2 {worst:.2e}")
