"""Numerics shared by the prototype layers of several families."""

from __future__ import annotations

import os
import platform
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F


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


DISTANCES = ("float64", "float32")  # --distance: protobench's stable default, or the originals' own arithmetic


def original_squared_distances(z: torch.Tensor, prototypes: torch.Tensor, ones: torch.Tensor,
                               tree: bool = False) -> torch.Tensor:
    """`--distance float32`: the original code's squared distance, operation for operation, in float32:
    conv(z^2, ones) with the (P, D, k, k) `ones`, plus (-2 conv(z, p) + |p|^2), the order most originals
    share; with `tree`, the other order an original uses, (conv(z^2, ones) + |p|^2) - 2 conv(z, p). Same
    bits as the original on the same machine, and the same float32 cancellation near d = 0 (not clamped
    here: each family clamps as its original does; its file says which order it takes)."""
    with full_precision(z):
        z, p = z.float(), prototypes.float()
        x2_patch_sum = F.conv2d(z**2, ones.float())
        p2 = (p**2).sum(dim=(1, 2, 3)).view(-1, 1, 1)
        if tree:
            return x2_patch_sum + p2 - 2 * F.conv2d(z, p)
        return x2_patch_sum + (-2 * F.conv2d(z, p) + p2)


def squared_distances(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance of every k x k patch of z (B, D, h, w) to every prototype (P, D, k, k):
    (B, P, h - k + 1, w - k + 1) in float64, as |z|^2 - 2 z.p + |p|^2 (the families' formula).

    Why float64: near d = 0, where a trained prototype meets its own part, the three terms are
    large and cancel, so float32 leaves noise of about 1e-7 |z|^2 that depends on the summation
    order (thread count, AVX2 or AVX-512 kernels, torch.compile); a log similarity, slope
    1 / epsilon = 1e4 there, makes that noise visible in every metric. In float64 it is 1e-9 of
    that, below what casting the similarity back to float32 keeps. Callers compute their
    similarity on this float64 result and cast it to float32 after (docs/metrics.md,
    Reproducibility). Rounding may leave a value slightly below 0 (about 1e-16 |z|^2): each
    family clamps as its original code does. Runs outside autocast, with inputs cast up: a
    bf16 or TF32 distance would be noise (docs/performance.md, Precision).
    """
    with full_precision(z):
        z64, p64 = z.double(), prototypes.double()
        ones = torch.ones((1, *p64.shape[1:]), dtype=torch.float64, device=z.device)
        patch_sums = F.conv2d(z64**2, ones)  # (B, 1, h', w'): the families' conv(z^2, ones), one row of it
        return patch_sums - 2 * F.conv2d(z64, p64) + (p64**2).sum(dim=(1, 2, 3)).view(-1, 1, 1)


def machine() -> dict[str, Any]:
    """What decides the last bits of float arithmetic on this CPU: its model, its vector extensions,
    the kernels torch chose (ATEN_CPU_CAPABILITY can lower them) and the thread count. Docs give
    every time and every pinned number with these."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    lines = info.splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor())
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    return {"cpu": model, "logical_cpus": os.cpu_count(),
            "vector_extensions": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__}
