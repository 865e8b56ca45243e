"""The GPT-2 tokenizer of build/anatomy against tiktoken, given the same files.

tiktoken's Encoding is built here from the local encoder.json (the folder that
`make` fills, build/.cache/gpt2, or $ANATOMY_GPT2_DIR) with the GPT-2 pattern;
`anatomy tokenize` runs as a subprocess. Texts: tests/ref/tokenizer_corpus.txt
(every branch of the pattern: contractions in both cases, letters and numbers
of many scripts, combining marks, CJK, emoji and ZWJ sequences, whitespace
runs, <|endoftext|> in text), its lines one by one, and fresh random strings
drawn around every boundary of the character classes. Invalid UTF-8, which
tiktoken cannot take, is checked for the round trip only.

Random inputs come from a seed printed in failures; ANATOMY_TEST_SEED=N
replays one. Nothing is skipped: a missing binary or vocabulary fails.
"""
import hashlib
import json
import os
import random
import re
import shutil
import subprocess

import pytest
import tiktoken

from conftest import REPO, anatomy_bin

SEED = int(os.environ.get("ANATOMY_TEST_SEED") or random.SystemRandom().randrange(1 << 31))
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
CORPUS = os.path.join(REPO, "tests", "ref", "tokenizer_corpus.txt")
SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}


def byte_to_unicode():
    """GPT-2's table: printable Latin-1 bytes stand for themselves, the other
    68 bytes for U+0100.. in order."""
    printable = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or b >= 0xAE]
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


@pytest.fixture(scope="module")
def vocab_dir():
    d = os.environ.get("ANATOMY_GPT2_DIR") or os.path.join(REPO, "build", ".cache", "gpt2")
    for f, want in SHA256.items():
        p = os.path.join(d, f)
        if not os.path.isfile(p):
            pytest.fail(f"{p} missing: run `make` (it fills build/.cache/gpt2) or set "
                        "ANATOMY_GPT2_DIR", pytrace=False)
        got = hashlib.sha256(open(p, "rb").read()).hexdigest()
        assert got == want, f"{p}: sha256 {got}, expected {want}"
    return d


@pytest.fixture(scope="module")
def enc(vocab_dir):
    """tiktoken's GPT-2, from the local files. The ranks are built from
    vocab.bpe (bytes first, then each merge's result) and must equal the ids
    of encoder.json, as tiktoken's own loader requires."""
    unbyte = {c: b for b, c in byte_to_unicode().items()}
    to_bytes = lambda tok: bytes(unbyte[c] for c in tok)
    order = sorted(range(256), key=lambda b: (byte_to_unicode()[b] != chr(b), b))
    ranks = {bytes([b]): i for i, b in enumerate(order)}
    lines = open(os.path.join(vocab_dir, "vocab.bpe"), encoding="utf-8").read().split("\n")
    for line in lines[1:]:
        if line:
            a, b = line.split(" ")
            ranks[to_bytes(a) + to_bytes(b)] = len(ranks)
    encoder = json.load(open(os.path.join(vocab_dir, "encoder.json"), encoding="utf-8"))
    assert {to_bytes(k): v for k, v in encoder.items() if k != EOT} == ranks
    return tiktoken.Encoding("gpt2-local", pat_str=PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: encoder[EOT]})


def run(args, data, check=True):
    """`anatomy tokenize args` with data (bytes) on stdin -> CompletedProcess."""
    path = anatomy_bin()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"anatomy binary not found at {path}: run `make`", pytrace=False)
    p = subprocess.run([path, "tokenize"] + args, input=data, capture_output=True, timeout=120)
    if check and p.returncode != 0:
        pytest.fail(f"anatomy tokenize {' '.join(args)} exited {p.returncode}: "
                    f"{p.stderr.decode(errors='replace')}", pytrace=False)
    return p


def ours(data, *args):
    out = run(list(args), data).stdout.decode()
    assert out.endswith("\n"), "output must end with a newline"
    return [int(x) for x in out.split()]


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def assert_same(got, want, text, what):
    if got != want:
        i = first_difference(got, want)
        pytest.fail(f"{what} (seed {SEED}): ids differ at {i}: ours {got[max(0, i - 3):i + 5]} "
                    f"tiktoken {want[max(0, i - 3):i + 5]}; text near there: "
                    f"{text[:200]!r}", pytrace=False)


def corpus():
    return open(CORPUS, encoding="utf-8", newline="").read()


def test_corpus_whole(enc):
    text = corpus()
    assert_same(ours(text.encode()), enc.encode_ordinary(text), text, "corpus")


def test_corpus_lines_and_variants(enc):
    """Each line alone and with whitespace around it, all in one run: pieces
    never cross <|endoftext|> when it is allowed, so joining texts with it
    encodes each text as if alone."""
    texts = []
    for line in corpus().replace(EOT, "<|eot|>").split("\n"):
        texts += [line, line + "\n", " " + line, "\t" + line + "  ", line + "\n\n ", line.upper()]
    joined = EOT.join(texts)
    want = []
    for i, t in enumerate(texts):
        want += enc.encode_ordinary(t) + ([enc.eot_token] if i + 1 < len(texts) else [])
    assert_same(ours(joined.encode(), "--allow-special"), want, joined, "corpus lines")
    assert_same(want, enc.encode(joined, allowed_special={EOT}), joined, "tiktoken itself")


def test_special_token_only_when_allowed(enc):
    text = corpus()
    assert EOT in text
    allowed = ours(text.encode(), "--allow-special")
    assert_same(allowed, enc.encode(text, allowed_special="all"), text, "allowed")
    assert allowed.count(50256) == text.count(EOT)
    plain = ours(text.encode())
    assert_same(plain, enc.encode(text, disallowed_special=()), text, "as text")
    assert 50256 not in plain


def class_boundaries():
    """Code points on both sides of every range edge of data/bpe_unicode.h."""
    src = open(os.path.join(REPO, "data", "bpe_unicode.h")).read()
    cps = set()
    for lo, hi in re.findall(r"\{0x([0-9A-F]+), 0x([0-9A-F]+), BPE_[LNS]\}", src):
        for c in (int(lo, 16) - 1, int(lo, 16), int(hi, 16), int(hi, 16) + 1):
            if 0 <= c < 0x110000 and not 0xD800 <= c < 0xE000:
                cps.add(c)
    assert len(cps) > 2000
    return sorted(cps)


def random_texts(rng, n, cps):
    pieces = ["'s", "'S", "'ll", "'LL", "'re", "'ve", "'m", "'d", "'t", "'", " ", "  ", "   ",
              "\t", "\n", "\n\n", "\r\n", "\u00a0", "\u3000", "\u200d", "\ufe0f", "\u0301",
              "word", "Word", "123", "4", "!", "?!", "...", "\U0001F600", "\U0001F468\u200d\U0001F469",
              "中文", "ä", "ß", "é", "\u0660", "½", EOT[:5], "|>"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randrange(1, 40)):
            k = rng.random()
            if k < 0.45:
                parts.append(rng.choice(pieces))
            elif k < 0.8:
                parts.append(chr(rng.choice(cps)))
            else:
                c = rng.randrange(0x110000)
                parts.append(chr(c) if not 0xD800 <= c < 0xE000 else "x")
        out.append("".join(parts))
    return out


def test_random_strings(enc):
    """Fresh random strings built around the class boundaries, where a wrong
    table entry would show."""
    rng = random.Random(SEED)
    texts = random_texts(rng, 3000, class_boundaries())
    joined = EOT.join(texts)
    want = enc.encode(joined, allowed_special={EOT})
    assert_same(ours(joined.encode("utf-8"), "--allow-special"), want, joined, "random strings")


def test_code_points_in_context(enc):
    """Code points in the contexts that show their class (after a letter, a
    digit, a symbol and a space, before a space): every class boundary and a
    fresh random tenth of the rest. (The classes themselves are compared with
    PCRE2 for every code point in tests/test_bpe.c.)"""
    rng = random.Random(SEED + 4)
    cps = set(class_boundaries())
    cps.update(c for c in range(0x110000) if rng.random() < 0.1 and not 0xD800 <= c < 0xE000)
    joined = "\n".join(f"a{ch}1{ch}!{ch} {ch}x{ch} " for ch in map(chr, sorted(cps)))
    assert_same(ours(joined.encode("utf-8")), enc.encode_ordinary(joined), joined,
                "code points in context")


def test_invalid_utf8_round_trip():
    rng = random.Random(SEED + 1)
    bad = [b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xed\xa0\x80",
           b"\xed\xbf\xbf", b"\xf0\x80\x80\x80", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80",
           b"\xff", b"\xfe", b"\xe4\xb8", b"\xf0\x9f\x98", b"\xc3"]
    good = [b"hello", b" world", b"'s", b"\n\n", b"  ", b"\xe4\xb8\xad", b"\xf0\x9f\x98\x80",
            b"123", b"<|endoftext|>"]
    data = b"".join(rng.choice(bad if rng.random() < 0.4 else good) for _ in range(4000))
    data += bytes(rng.randrange(256) for _ in range(20000))
    for args in ([], ["--allow-special"]):
        ids = ours(data, *args)
        assert all(0 <= i < 50257 for i in ids)
        back = run(["--decode"], " ".join(map(str, ids)).encode()).stdout
        assert back == data, f"round trip failed (seed {SEED}) with {args}"


def test_decode_matches_tiktoken(enc):
    rng = random.Random(SEED + 2)
    ids = [rng.randrange(50257) for _ in range(5000)]
    got = run(["--decode"], ("\n".join(map(str, ids)) + "\n").encode()).stdout
    assert got == enc.decode_bytes(ids)


def test_bytes_tokenizer():
    rng = random.Random(SEED + 3)
    data = bytes(rng.randrange(256) for _ in range(3000))
    assert ours(data, "--tokenizer", "bytes") == list(data)
    back = run(["--tokenizer", "bytes", "--decode"], " ".join(map(str, data)).encode()).stdout
    assert back == data


@pytest.mark.parametrize("args,stdin,message", [
    (["--decode"], b"15496 x 995", "'x' is not a token id"),
    (["--decode"], b"50257", "out of range"),
    (["--decode"], b"-1", "not a token id"),
    (["--tokenizer", "bytes", "--decode"], b"256", "out of range"),
    (["--tokenizer", "gpt3"], b"", "--tokenizer"),
    (["--vocab", "/nonexistent/dir"], b"x", "/nonexistent/dir"),
    (["--frobnicate"], b"", "unknown option"),
    (["--tokenizer", "bytes", "--allow-special"], b"", "no special tokens"),
])
def test_errors(args, stdin, message):
    p = run(args, stdin, check=False)
    err = p.stderr.decode()
    assert p.returncode != 0
    assert p.stdout == b"", "an error must not leave partial output"
    assert err.startswith("anatomy: error: ") and err.count("\n") == 1, err
    assert message in err, err


def test_vocab_recipe_checks_sha256(vocab_dir, tmp_path):
    """data/recipes/gpt2_vocab.sh (what `make` runs) refuses a damaged file and
    installs good ones."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    for f in SHA256:
        shutil.copy(os.path.join(vocab_dir, f), src / f)
    raw = bytearray((src / "vocab.bpe").read_bytes())
    raw[1000] ^= 1
    (src / "vocab.bpe").write_bytes(bytes(raw))
    script = os.path.join(REPO, "data", "recipes", "gpt2_vocab.sh")
    p = subprocess.run(["sh", script, str(dest), str(src)], capture_output=True, timeout=120)
    assert p.returncode != 0 and b"sha256" in p.stderr
    assert not (dest / "vocab.bpe").exists()
    shutil.copy(os.path.join(vocab_dir, "vocab.bpe"), src / "vocab.bpe")
    p = subprocess.run(["sh", script, str(dest), str(src)], capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    for f, want in SHA256.items():
        assert hashlib.sha256((dest / f).read_bytes()).hexdigest() == want
    text = corpus().encode()
    assert ours(text, "--vocab", str(dest)) == ours(text)
