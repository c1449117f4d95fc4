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


def normal(seed: int, ids: torch.Tensor, shape: tuple[int, ...], stream: int = 1) -> torch.Tensor:
    """Float32 tensor (len(ids), *shape) of standard normal draws (Box-Muller); row i depends only on
    (seed, ids[i], stream). `stream` keeps it apart from `uniform`'s draws of the same image (stream 0)."""
    n = 1
    for s in shape:
        n *= s
    pairs = uniform(_stream_seed(seed, stream), ids, (2, n))  # two independent uniforms per element
    radius = torch.sqrt(-2.0 * torch.log1p(-pairs[:, 0]))  # 1 - u in (0, 1]: log never sees 0
    return (radius * torch.cos(2.0 * torch.pi * pairs[:, 1])).view(len(ids), *shape)


def _stream_seed(seed: int, stream: int) -> int:
    """A seed for stream `stream` of `seed` (stream 0 is the seed itself)."""
    if stream == 0:
        return seed
    return int(hash32(torch.tensor((seed ^ (stream * 0x85EBCA6B)) & _MASK32, dtype=torch.int64)))
