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


def _int(value: Any, lo: int, hi: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        return f"an integer in {lo}..{hi}"
    return None


def _number(value: Any, lo: float, hi: float, low_open: bool = False) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (lo < value if low_open else lo <= value) or value > hi:
        return f"a number in {'(' if low_open else '['}{lo:g}, {hi:g}]"
    return None


def _triple(value: Any, lo: float, hi: float) -> str | None:
    if not isinstance(value, (list, tuple)) or len(value) != 3 or any(_number(v, lo, hi) for v in value):
        return f"3 numbers in [{lo:g}, {hi:g}], one per RGB channel"
    return None


def check_ints(value: Any, lo: int, hi: int, min_len: int = 1, max_len: int = 8) -> str | None:
    """None if `value` is a list of min_len..max_len integers in lo..hi, else what it should be."""
    if not isinstance(value, (list, tuple)) or not min_len <= len(value) <= max_len or any(_int(v, lo, hi)
                                                                                         for v in value):
        count = f"{min_len}" if min_len == max_len else f"{min_len} to {max_len}"
        return f"a list of {count} integers in {lo}..{hi}"
    return None


def _size(value: Any) -> str | None:
    hi = limit("MAX_PROTOTYPE_SIZE")
    if isinstance(value, (list, tuple)):
        return check_ints(value, 1, hi, 2, 2)
    return _int(value, 1, hi)


_SIZES = {"num_classes": "MAX_CLASSES", "num_prototypes": "MAX_PROTOTYPES", "prototype_dim": "MAX_CHANNELS",
          "proto_depth": "MAX_CHANNELS", "num_features": "MAX_CHANNELS", "num_descriptive": "MAX_SLOTS",
          "num_parts": "MAX_SLOTS"}
_CHOICES = {"activation": ("log", "linear"), "add_on": ("bottleneck", "regular", "shallow")}
_FLAGS = {"focal", "use_last_layer", "use_thresh", "add_on_conv", "bias", "inference", "log_probabilities",
          "kontschieder"}


def field_problem(name: str, value: Any) -> str | None:
    """What is wrong with one config value (None if nothing, or if protobench has no rule for `name`)."""
    if name == "img_size":
        return _int(value, limit("MIN_IMG_SIZE"), limit("MAX_IMG_SIZE"))
    if name in _SIZES:
        return _int(value, 1, limit(_SIZES[name]))
    if name in _CHOICES:
        return None if value in _CHOICES[name] else "one of " + ", ".join(_CHOICES[name])
    if name in _FLAGS:
        return None if isinstance(value, bool) else "true or false"
    if name == "epsilon":
        return _number(value, 0.0, 1.0, low_open=True)
    if name == "prototype_size":
        return _size(value)
    if name == "radius":  # ProtoViT: how far (in tokens) consecutive matched parts may lie
        return _int(value, 0, limit("MAX_IMG_SIZE"))
    if name == "temp":  # ProtoViT: the slots' sigmoid sharpness
        return _number(value, 0.0, 1e6, low_open=True)
    if name in ("mean", "std"):
        return _triple(value, *(MEAN_RANGE if name == "mean" else STD_RANGE))
    if name == "backbone":
        return _backbone(value)
    return None


def _backbone(value: Any) -> str | None:
    from protobench.models.backbones import BACKBONES

    return None if isinstance(value, str) and value in BACKBONES else "one of " + ", ".join(sorted(BACKBONES))


def config_problem(cfg: Any) -> str | None:
    """The first invalid field of an architecture config dataclass, as 'name value: should be ...'."""
    from dataclasses import fields

    from protobench.models.backbones import backbone_problem

    for f in fields(cfg):
        value = getattr(cfg, f.name)
        wrong = field_problem(f.name, value)
        if wrong:
            return f"{f.name} {short(value)} should be {wrong}"
    if hasattr(cfg, "backbone") and hasattr(cfg, "backbone_kwargs"):
        wrong = backbone_problem(cfg.backbone, cfg.backbone_kwargs)
        if wrong:
            return f"backbone_kwargs of {cfg.backbone}: {wrong}"
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
