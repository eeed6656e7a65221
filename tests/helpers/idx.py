"""MNIST's IDX files as numpy arrays, with no side effects on import (conftest sets torch's
thread count, and `scripts/gpu_check.py` reads MNIST through this module, not conftest)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)
