"""Counter-based random numbers: a pure function of (seed, sample index, element position).

Each image's noise depends only on the run seed and the image's index in the dataset,
never on the batch it lands in, the device, or the number of processes. It is computed
with integer tensor ops, so it is batched and identical on CPU and GPU.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


def _mul32(x, c: int):
    """(x * c) mod 2^32 for 0 <= x < 2^32 without int64 overflow: split c into 16-bit halves."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def hash32(x):
    """A 32-bit avalanche hash (the 'lowbias32' mixer) on int64 tensors holding uint32 values (or an int)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def sample_keys(seed: int, ids: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per sample from (seed, sample index)."""
    base = hash32(seed & _MASK32)  # a Python int: the same arithmetic, and nothing copied to the device
    return hash32((base + _mul32(ids.long() & _MASK32, 0x9E3779B9)) & _MASK32)


def uniform(seed: int, ids: torch.Tensor, shape: tuple[int, ...], low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Float32 tensor (len(ids), *shape) uniform in [low, high); row i depends only on (seed, ids[i])."""
    n = 1
    for s in shape:
        n *= s
    counter = torch.arange(n, dtype=torch.int64, device=ids.device)
    keys = sample_keys(seed, ids).view(-1, 1)
    bits = hash32(hash32(keys ^ counter) ^ keys)  # (B, n); double mix decorrelates neighbouring counters
    u = (bits >> 8).to(torch.float32) * (1.0 / (1 << 24))  # 24 random bits: exact in float32, in [0, 1)
    return (low + (high - low) * u).view(len(ids), *shape)
