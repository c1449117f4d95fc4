"""What a checkpoint may declare: every limit protobench enforces while loading, in one place.

A checkpoint's architecture comes from its metadata or its pickled attributes. Each value
is checked for type and range before anything is built from it, so a malformed or hostile
file gets a one-line error instead of a traceback, a huge allocation or a model that
silently computes nonsense. The limits are far above what published prototype networks
use; a model beyond one raises it with the environment variable of the same name prefixed
by PROTOBENCH_, e.g. `PROTOBENCH_MAX_PROTOTYPES=200000`.
"""

from __future__ import annotations

import math
import os
import reprlib
from typing import Any

from protobench.errors import ProtobenchError

DEFAULTS = {
    "MIN_IMG_SIZE": 8,  # px; smaller inputs leave no feature map
    "MAX_IMG_SIZE": 2048,  # px; published models use 224 to 448
    "MAX_CLASSES": 100_000,
    "MAX_PROTOTYPES": 100_000,  # published CUB models: up to 2000
    "MAX_CHANNELS": 16_384,  # any layer's width (ResNet-152: 2048)
    "MAX_BLOCKS": 128,  # blocks in one backbone stage, layers in a VGG (DenseNet-201: 48)
    "MAX_PROTOTYPE_SIZE": 32,  # a prototype's spatial side (the papers use 1)
    "MAX_SLOTS": 1_000,  # prototype slots per class, where a family has them (published: 10)
    "MAX_TREE_BRANCHES": 4_095,  # decision nodes of a prototype tree: depth 12 (published: depth 9 to 11)
    "MAX_MODULES": 100_000,  # module objects in a pickled model (ResNet-152: about 500)
    "MAX_NESTING": 100,  # depth of the pickled module tree
    "MAX_TENSORS": 100_000,  # tensors in one checkpoint
    "MAX_KEY_LENGTH": 1_024,  # characters in one state-dict key
    "MAX_UNPICKLE_MB": 128,  # memory the objects of a checkpoint's pickle may take, roughly
}
MEAN_RANGE = (0.0, 1.0)  # a channel mean on the 0..1 pixel scale
STD_RANGE = (1e-3, 10.0)  # a channel std: zero would divide by zero


def limit(name: str) -> int:
    """A limit's value: PROTOBENCH_<name> from the environment, else the default."""
    raw = os.environ.get(f"PROTOBENCH_{name}")
    if raw is None:
        return DEFAULTS[name]
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 1:
        raise ProtobenchError(f"environment variable PROTOBENCH_{name}={raw!r} must be a positive integer "
                              f"(the default is {DEFAULTS[name]})")
    return value


def int_problem(value: Any, lo: int, hi: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        return f"an integer in {lo}..{hi}"
    return None


def number_problem(value: Any, lo: float, hi: float, low_open: bool = False) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (lo < value if low_open else lo <= value) or value > hi:
        return f"a number in {'(' if low_open else '['}{lo:g}, {hi:g}]"
    return None


def triple_problem(value: Any, lo: float, hi: float) -> str | None:
    if not isinstance(value, (list, tuple)) or len(value) != 3 or any(number_problem(v, lo, hi) for v in value):
        return f"3 numbers in [{lo:g}, {hi:g}], one per RGB channel"
    return None


def check_ints(value: Any, lo: int, hi: int, min_len: int = 1, max_len: int = 8) -> str | None:
    """None if `value` is a list of min_len..max_len integers in lo..hi, else what it should be."""
    if not isinstance(value, (list, tuple)) or not min_len <= len(value) <= max_len or any(int_problem(v, lo, hi)
                                                                                         for v in value):
        count = f"{min_len}" if min_len == max_len else f"{min_len} to {max_len}"
        return f"a list of {count} integers in {lo}..{hi}"
    return None


def short(value: Any) -> str:
    """A short repr of a value read from an untrusted file (long, deep or huge values are cut)."""
    try:
        return _REPR.repr(value)
    except Exception:  # e.g. an integer too long for str(): the value is already bad, its type says enough
        return f"<{type(value).__name__}>"


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 40
_REPR.maxlevel = 3
