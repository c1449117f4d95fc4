"""--device: auto, cpu, cuda or cuda:N, and nothing else.

torch.device accepts many more names (mps, meta, xla, cpu:-1...), and a model moved to one of
them fails later with a traceback or computes nothing real (meta tensors have no values).
"""

from __future__ import annotations

import re

from protobench.errors import OptionError

DEVICE_NAMES = re.compile(r"auto|cpu|cuda(?::(0|[1-9][0-9]{0,3}))?")
USE = "use auto, cpu, cuda or cuda:N"


def check_device_name(name: str) -> None:
    """A one-line OptionError for anything but auto, cpu, cuda, cuda:N (no torch needed)."""
    if not isinstance(name, str) or not DEVICE_NAMES.fullmatch(name):
        raise OptionError(f"unknown --device {name!r}: {USE}")


def resolve_device(name: str, local_rank: int | None = None):
    """auto -> cuda if visible, else cpu; under torchrun each local rank takes its own GPU."""
    import torch

    check_device_name(name)
    if local_rank is not None and name in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError(f"--device {name} was asked for but no CUDA device is visible; use --device cpu")
    device = torch.device(name)
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and device.index is not None and device.index >= count:
        raise OptionError(f"--device {name}: no such GPU ({count} visible: cuda:0 to cuda:{count - 1})")
    return device
