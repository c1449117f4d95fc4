"""Validating an architecture config read from a checkpoint: every field's type and range.

The values come from a file (protobench metadata or a pickle's attributes), so each is checked
before anything is built from it; the limits themselves are in protobench.checkpoints.limits.
"""

from __future__ import annotations

from typing import Any

from protobench.checkpoints.limits import (MEAN_RANGE, STD_RANGE, check_ints, int_problem, limit, number_problem, short,
                                        triple_problem)


def _size(value: Any) -> str | None:
    hi = limit("MAX_PROTOTYPE_SIZE")
    if isinstance(value, (list, tuple)):
        return check_ints(value, 1, hi, 2, 2)
    return int_problem(value, 1, hi)


_SIZES = {"num_classes": "MAX_CLASSES", "num_prototypes": "MAX_PROTOTYPES", "prototype_dim": "MAX_CHANNELS",
          "proto_depth": "MAX_CHANNELS", "num_features": "MAX_CHANNELS", "num_descriptive": "MAX_SLOTS",
          "num_parts": "MAX_SLOTS"}
_CHOICES = {"activation": ("log", "linear"), "add_on": ("bottleneck", "regular", "shallow", "upsample", "identity"),
            "variant": ("full", "cropped")}
_FLAGS = {"focal", "use_last_layer", "use_thresh", "add_on_conv", "bias", "inference", "log_probabilities",
          "kontschieder", "deform", "relu_on_cos", "upsample"}
_COUNTS = {  # small integers of a prototype layer: (lowest, limit or highest)
    "hidden_channels": (0, "MAX_CHANNELS"), "eps_channels": (0, 16), "dilation": (1, "MAX_PROTOTYPE_SIZE"),
    "padding": (0, "MAX_PROTOTYPE_SIZE"),
    "radius": (0, "MAX_IMG_SIZE")}  # how far apart, in tokens, consecutive matched parts may lie


def field_problem(name: str, value: Any) -> str | None:
    """What is wrong with one config value (None if nothing, or if protobench has no rule for `name`)."""
    if name == "img_size":
        return int_problem(value, limit("MIN_IMG_SIZE"), limit("MAX_IMG_SIZE"))
    if name in _SIZES:
        return int_problem(value, 1, limit(_SIZES[name]))
    if name in _CHOICES:
        return None if value in _CHOICES[name] else "one of " + ", ".join(_CHOICES[name])
    if name in _FLAGS:
        return None if isinstance(value, bool) else "true or false"
    if name in _COUNTS:
        lo, hi = _COUNTS[name]
        return int_problem(value, lo, hi if isinstance(hi, int) else limit(hi))
    if name == "epsilon":
        return number_problem(value, 0.0, 1.0, low_open=True)
    if name in ("vector_length", "temp"):  # temp: a sigmoid's sharpness (part slots)
        return number_problem(value, 0.0, 1e6, low_open=True)
    if name == "prototype_size":
        return _size(value)
    if name in ("mean", "std"):
        return triple_problem(value, *(MEAN_RANGE if name == "mean" else STD_RANGE))
    if name == "backbone":
        return _backbone(value)
    return None


def _backbone(value: Any) -> str | None:
    from protobench.models.backbones import BACKBONES  # torch: only when a config names a backbone

    return None if isinstance(value, str) and value in BACKBONES else "one of " + ", ".join(sorted(BACKBONES))


def config_problem(cfg: Any) -> str | None:
    """The first invalid field of an architecture config dataclass, as 'name value: should be ...'."""
    from dataclasses import fields

    from protobench.models.backbones import backbone_problem  # torch: only when a config is checked

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
