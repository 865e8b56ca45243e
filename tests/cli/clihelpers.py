"""Helpers for the command-line tests."""
import numpy as np


def write_shard(path, tokens, magic=20240520, version=1, count=None):
    """A shard in llm.c's layout: 256 int32 header words, then uint16 tokens."""
    tokens = np.asarray(tokens, dtype=np.uint16)
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1] = magic, version
    header[2] = len(tokens) if count is None else count
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.tobytes())
    return str(path)
