"""Numerics shared by the prototype layers of several families."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def tf32(allowed: bool) -> Iterator[None]:
    """Allow or forbid TF32 (10-bit mantissa) in CUDA convolutions and matmuls for the block.

    PyTorch allows it in cuDNN convolutions by default, so "fp32" on an Ampere-or-newer
    GPU is not fp32 unless this says so.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@contextmanager
def full_precision(t: torch.Tensor) -> Iterator[None]:
    """True fp32 for the block: autocast off and no TF32 (cast its inputs with .float()).

    A prototype layer's squared distance |z|^2 - 2 z.p + |p|^2 is a small difference of large
    terms: in bf16 (8 significant bits) or TF32 (11) it cancels to noise, and so would every
    map and the attack's gradient. The backbone may run in lower precision; this layer must not.
    """
    if not torch.amp.is_autocast_available(t.device.type):  # e.g. 'meta', where loading checks shapes
        with tf32(False):
            yield
        return
    with torch.autocast(t.device.type, enabled=False), tf32(False):
        yield
