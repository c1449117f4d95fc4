"""Validating an architecture config read from a checkpoint: every field's type and range.

The values come from a file (protobench metadata or a pickle's attributes), so each is checked
before anything is built from it; the limits themselves are in protobench.checkpoints.limits.
The rules here are those of the fields many families share; a family declares the rules of its
own fields in its file (`FamilyAdapter.config_rules`, built from `flag`, `choice`, `count`,
`sizes` and `positive`).
"""

from __future__ import annotations

from typing import Any, Callable

Rule = Callable[[Any], "str | None"]  # a value -> what is wrong with it ('should be ...'), or None

from protobench.checkpoints.limits import (MEAN_RANGE, STD_RANGE, check_ints, int_problem, limit, number_problem, short,
                                        triple_problem)


def _size(value: Any) -> str | None:
    hi = limit("MAX_PROTOTYPE_SIZE")
    if isinstance(value, (list, tuple)):
        return check_ints(value, 1, hi, 2, 2)
    return int_problem(value, 1, hi)


def flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def choice(*values: Any) -> Rule:
    return lambda value: None if value in values else "one of " + ", ".join(values)


def count(lo: int, hi: int | str) -> Rule:
    """A small integer in [lo, hi]; hi a number or the name of a limit (protobench.checkpoints.limits)."""
    return lambda value: int_problem(value, lo, hi if isinstance(hi, int) else limit(hi))


def sizes(limit_name: str) -> Rule:
    """A count of things, 1 up to a limit."""
    return count(1, limit_name)


def positive(hi: float = 1e6) -> Rule:
    return lambda value: number_problem(value, 0.0, hi, low_open=True)


_SIZES = {"num_classes": "MAX_CLASSES", "num_prototypes": "MAX_PROTOTYPES", "prototype_dim": "MAX_CHANNELS"}
_CHOICES = {"activation": ("log", "linear"), "add_on": ("bottleneck", "regular", "shallow", "upsample", "identity")}


def field_problem(name: str, value: Any, rules: dict[str, Rule] | None = None) -> str | None:
    """What is wrong with one config value (None if nothing, or if neither the family's `rules`
    nor the shared ones have a rule for `name`)."""
    if rules and name in rules:
        return rules[name](value)
    if name == "img_size":
        return int_problem(value, limit("MIN_IMG_SIZE"), limit("MAX_IMG_SIZE"))
    if name in _SIZES:
        return int_problem(value, 1, limit(_SIZES[name]))
    if name in _CHOICES:
        return choice(*_CHOICES[name])(value)
    if name == "epsilon":
        return number_problem(value, 0.0, 1.0, low_open=True)
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


def config_problem(cfg: Any, rules: dict[str, Rule] | None = None) -> str | None:
    """The first invalid field of an architecture config dataclass, as 'name value: should be ...';
    `rules`: the family's own fields' rules."""
    from dataclasses import fields

    from protobench.models.backbones import backbone_problem  # torch: only when a config is checked

    for f in fields(cfg):
        value = getattr(cfg, f.name)
        wrong = field_problem(f.name, value, rules)
        if wrong:
            return f"{f.name} {short(value)} should be {wrong}"
    if hasattr(cfg, "backbone") and hasattr(cfg, "backbone_kwargs"):
        wrong = backbone_problem(cfg.backbone, cfg.backbone_kwargs)
        if wrong:
            return f"backbone_kwargs of {cfg.backbone}: {wrong}"
    return None
