"""Tokenizer throughput: build/anatomy's GPT-2 BPE beside tiktoken and Hugging
Face tokenizers, on one corpus, in one run.

Single thread, vocabulary load included, best of --runs:
  ours      `anatomy tokenize < corpus > /dev/null` (process start, load,
            encode, writing the ids as text: the whole command)
  tiktoken  Encoding built from the local encoder.json + vocab.bpe, then
            encode_ordinary (in process)
  hf        tokenizers' BPE from the same two files with the ByteLevel
            pre-tokenizer, then encode_batch over the corpus cut into lines
            (its encode is much slower on one long string; the cuts are after
            a lone '\n' between non-space characters, which the pattern makes a
            piece of its own, so they change no token), in process, with
            TOKENIZERS_PARALLELISM=false and RAYON_NUM_THREADS=1
Then `anatomy prep` on the corpus repeated --prep-repeat times with --threads
1, 2, ... up to the cores present (every count up to 8, then powers of two),
best wall time of --runs each: MB/s, speedup over one thread, CPU use, and
whether the shards are byte-identical to the one-thread shards. On Linux it
also prints the CPU seconds other processes took during the best run: on a
shared machine a run that others slowed shows there, not as poor scaling.

usage: python3 bench/bench_tokenizer.py --bin build/anatomy --vocab build/.cache/gpt2
           [--corpus FILE] [--repeat 1] [--runs 3] [--prep-repeat 32] [--only encode|prep]
"""
import argparse
import glob
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"


def byte_to_unicode():
    printable = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or b >= 0xAE]
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


def load_tiktoken(vocab):
    import tiktoken
    unbyte = {c: b for b, c in byte_to_unicode().items()}
    encoder = json.load(open(os.path.join(vocab, "encoder.json"), encoding="utf-8"))
    ranks = {bytes(unbyte[c] for c in k): v for k, v in encoder.items() if k != EOT}
    return tiktoken.Encoding("gpt2-local", pat_str=PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: encoder[EOT]})


def load_hf(vocab):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    tok = Tokenizer(models.BPE.from_file(os.path.join(vocab, "encoder.json"),
                                         os.path.join(vocab, "vocab.bpe")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def best(fn, runs):
    """Runs fn runs times; returns (least wall seconds, least CPU seconds, last result).
    CPU time is this process's plus its children's (the `anatomy` runs): on a
    shared machine it is the steadier measure of single-thread work."""
    walls, cpus, out = [], [], None
    for _ in range(runs):
        r0, c0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time(), \
            time.perf_counter()
        out = fn()
        t1, c1, r1 = time.perf_counter(), time.process_time(), \
            resource.getrusage(resource.RUSAGE_CHILDREN)
        walls.append(t1 - t0)
        cpus.append(c1 - c0 + (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime))
    return min(walls), min(cpus), out


def ours_ids(binary, path):
    with open(path, "rb") as f:
        out = subprocess.run([binary, "tokenize"], stdin=f, capture_output=True, check=True).stdout
    return [int(x) for x in out.split()]


def ours_time(binary, path):
    with open(path, "rb") as f:
        subprocess.run([binary, "tokenize"], stdin=f, stdout=subprocess.DEVNULL, check=True)


def system_cpu_seconds():
    """(busy, idle) CPU seconds of the whole machine so far, or None off Linux."""
    try:
        f = open("/proc/stat").readline().split()[1:]
    except OSError:
        return None
    v = [int(x) / os.sysconf("SC_CLK_TCK") for x in f]
    idle = v[3] + v[4]
    return sum(v[:8]) - idle, idle


def shards_digest(prefix):
    """sha256 over the names (less the prefix) and bytes of prefix's shards."""
    h = hashlib.sha256()
    for path in sorted(glob.glob(prefix + "_*.bin")):
        h.update(path[len(prefix):].encode())
        h.update(open(path, "rb").read())
    return h.hexdigest()


def prep_once(binary, vocab, corpus, out, threads):
    """One `anatomy prep` run: (wall s, CPU s, CPU s of other processes or None, digest)."""
    for old in glob.glob(out + "_*.bin"):
        os.unlink(old)
    cmd = [binary, "prep", "--tokenizer", "gpt2", "--vocab", vocab, "--input", corpus,
           "--out", out, "--threads", str(threads)]
    s0, r0, t0 = system_cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN), \
        time.perf_counter()
    p = subprocess.run(cmd, capture_output=True)
    t1, r1, s1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN), \
        system_cpu_seconds()
    if p.returncode != 0:
        sys.exit(f"prep failed: {p.stderr.decode(errors='replace').strip()}")
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    others = max(0.0, s1[0] - s0[0] - cpu) if s0 and s1 else None
    return t1 - t0, cpu, others, shards_digest(out)


def prep_scaling(binary, corpus, repeat, vocab, runs):
    tmp = tempfile.mkdtemp(prefix="anatomy_bench_prep_")
    try:
        big = os.path.join(tmp, "corpus.txt")
        data = open(corpus, "rb").read()
        with open(big, "wb") as f:
            for _ in range(repeat):
                f.write(data)
        mb = len(data) * repeat / 1e6
        cores = os.cpu_count() or 1
        threads = sorted({t for t in range(1, cores + 1) if t <= 8 or t & (t - 1) == 0 or
                          t == cores})
        print(f"\nprep: {mb:.1f} MB ({repeat} x corpus), gpt2, {cores} cores, "
              f"best wall of {runs}")
        print(f"{'threads':>8} {'wall s':>8} {'cpu s':>8} {'cpu %':>6} {'MB/s':>8} "
              f"{'speedup':>8} {'others':>7}  output")
        base = ref = None
        for t in threads:
            out = os.path.join(tmp, f"t{t}")
            best_run = min((prep_once(binary, vocab, big, out, t) for _ in range(runs)),
                           key=lambda r: r[0])
            wall, cpu, others, digest = best_run
            base, ref = base or wall, ref or digest
            same = "identical to 1 thread" if digest == ref else "DIFFERS from 1 thread"
            oth = "" if others is None else f"{others:.2f}"
            print(f"{t:>8} {wall:>8.2f} {cpu:>8.2f} {100 * cpu / wall:>6.0f} {mb / wall:>8.2f} "
                  f"{base / wall:>8.2f} {oth:>7}  {same}")
            if digest != ref:
                sys.exit(f"prep --threads {t} wrote other shards than --threads 1")
        print("(others: CPU seconds other processes used during the run; cpu %: of one core)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--vocab", required=True)
    ap.add_argument("--corpus", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                     "shared", "data", "tinyshakespeare.txt"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1, help="encode the corpus repeated N times")
    ap.add_argument("--prep-repeat", type=int, default=32)
    ap.add_argument("--only", choices=("encode", "prep"), help="run one part only")
    a = ap.parse_args()
    if a.only == "prep":
        prep_part(a)
        return
    data = open(a.corpus, "rb").read() * a.repeat
    text = data.decode("utf-8")
    mb = len(data) / 1e6
    tmp = None
    if a.repeat > 1:
        fd, tmp = tempfile.mkstemp(prefix="anatomy_bench_", suffix=".txt")
        os.write(fd, data)
        os.close(fd)
        a.corpus, name = tmp, f"{a.corpus} x {a.repeat}"
    else:
        name = a.corpus
    print(f"corpus: {name} ({mb:.2f} MB); single thread, vocabulary load included, "
          f"best of {a.runs}")
    try:
        encode_bench(a, text, mb)
        if a.only != "encode":
            prep_part(a)
    finally:
        if tmp:
            os.unlink(tmp)


def prep_part(a):
    help_text = subprocess.run([a.bin, "prep", "--help"], capture_output=True).stdout.decode()
    if "--threads" in help_text:
        prep_scaling(a.bin, a.corpus, a.prep_repeat, a.vocab, a.runs)
    else:
        print("\nprep: `anatomy prep --threads` not available in this build; scaling not measured")


def encode_bench(a, text, mb):

    rows = []
    wall, cpu, _ = best(lambda: ours_time(a.bin, a.corpus), a.runs)
    rows.append(("ours (anatomy tokenize)", wall, cpu))
    wall, cpu, tk_ids = best(lambda: load_tiktoken(a.vocab).encode_ordinary(text), a.runs)
    rows.append(("tiktoken " + __import__("tiktoken").__version__, wall, cpu))
    lines = re.split(r"(?<=\S\n)(?=\S)", text)
    assert "".join(lines) == text

    def hf():
        return [i for e in load_hf(a.vocab).encode_batch(lines) for i in e.ids]
    wall, cpu, hf_ids = best(hf, a.runs)
    rows.append(("HF tokenizers " + __import__("tokenizers").__version__, wall, cpu))

    ours = rows[0][2]
    print(f"{'':28} {'wall s':>8} {'cpu s':>8} {'MB/s':>8} {'ours is':>10}")
    for name, wall, cpu in rows:
        ratio = "" if cpu is ours else f"{cpu / ours:.2f}x"
        print(f"{name:28} {wall:>8.3f} {cpu:>8.3f} {mb / cpu:>8.2f} {ratio:>10}")
    print("(MB/s and ratios from CPU seconds)")
    ids = ours_ids(a.bin, a.corpus)
    print(f"ids: ours {len(ids)}, tiktoken {len(tk_ids)}, identical: {ids == tk_ids}; "
          f"HF identical to tiktoken: {hf_ids == tk_ids}")
    if ids != tk_ids:
        sys.exit("ours and tiktoken disagree on this corpus")


if __name__ == "__main__":
    main()
