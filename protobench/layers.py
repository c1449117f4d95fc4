"""Numerics shared by the prototype layers of several families."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def full_precision(t: torch.Tensor) -> Iterator[None]:
    """Autocast off for the block (cast its inputs with .float()).

    A prototype layer's squared distance |z|^2 - 2 z.p + |p|^2 is a small difference of large
    terms: in bf16 (8 significant bits) it cancels to noise, and so would every map and the
    attack's gradient. The backbone may run in half precision; this layer must not.
    """
    with torch.autocast(t.device.type, enabled=False):
        yield
