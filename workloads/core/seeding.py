"""One place that makes a run repeatable: every random choice derives from one seed."""
from __future__ import annotations

import random
import zlib

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(seed: int, *names: object) -> int:
    """A stable sub-seed for one named use (an arm, a layer, a subset), independent of
    Python's per-process string hashing, so the same name gets the same seed everywhere."""
    key = "/".join(str(n) for n in names).encode()
    return (seed * 1_000_003 + zlib.crc32(key)) % 2**31
