"""What decides the numbers of a run: the attack, its budget, the prototype selection, the
protected region, the PLC definition, the seed.

The named protocols (docs/metrics.md, Protocols) are data: `reference` is the `noise` attack
without clipping, which is what the paper's code computes; the third preset is what a later
paper's copy of that code computes, and works on every family. Attack and region names are
looked up in protobench.core.attack.ATTACKS and protobench.core.regions.REGIONS, so a
registered one is a valid `--attack` / `--region` with no change here.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, replace
from typing import Any

from protobench import options
from protobench.errors import OptionError

# Upper bounds of the attack's options. Normalized images span about 5 units, so a radius of
# 100 already leaves nothing unreachable, while 1e30 (with --no-clip) overflows the model to NaN.
MAX_RADIUS, MAX_STEPS, MAX_MARGIN, MAX_RESTARTS = 100.0, 1_000_000, 100_000, 1000

PROTOCOLS: dict[str, dict[str, Any]] = {
    "default": {},  # pgd, clipped to the valid image range
    "reference": {"attack": "noise", "clip": False},  # docs/metrics.md, Why the reference code's "PGD" is noise
    # the benchmark copy published with that paper (spatial_alignment_test/run_adv_test.py): the same
    # zero-gradient "PGD" (so noise), 50 iterations, token boxes without margin, its token-level PLC
    "protovit": {"attack": "noise", "clip": False, "steps": 50, "region": "tokens", "plc": "tokens"},
}
SELECTIONS = ("top-proto", "gt-protos")
PLC_KINDS = ("pixels", "tokens")  # how PLC compares the two locations (formulas: protobench.metrics.PLC)
# what runs recorded before a field existed used instead (meta.json, run.json): they stay comparable
RECORDED_BEFORE = {"region": "box", "plc": "pixels", "restarts": 1, "seeds": [], "box_q": 0.95, "plc_q": 0.9}


@dataclass(frozen=True)
class EvalProtocol:
    """Everything that decides the numbers of a run."""

    name: str = "default"  # a key of PROTOCOLS
    attack: str = "pgd"  # a name in protobench.core.attack.ATTACKS
    select: str = "top-proto"  # 'top-proto' or 'gt-protos'
    eps: float = 0.4  # L-inf radius, normalized input units
    step: float = 0.01  # step size of iterative attacks
    steps: int = 40  # steps of iterative attacks
    clip: bool = True  # keep attacked images inside the valid pixel range
    margin: int | None = None  # px added around each box; None: the region's default (box: 10 px at 224, scaled)
    seed: int = 0  # seeds the per-image random start and the subset
    region: str = "box"  # a name in protobench.core.regions.REGIONS: which pixels are protected
    plc: str = "pixels"  # 'pixels' (the paper's PLC) or 'tokens' (on the model's grid, per part)
    box_q: float = 0.95  # the box region's map quantile: the box around the top 5% (regions that take `q`)
    plc_q: float = 0.9  # PLC compares the regions above this quantile (the top 10%; pixel PLC)
    seeds: tuple[int, ...] = ()  # --seeds: attack every image once per seed (seed is then the first)
    restarts: int = 1  # runs of an attack that takes restarts (apgd) from new random starts; the best is kept

    @classmethod
    def make(cls, name: str = "default", **overrides: Any) -> EvalProtocol:
        """A named protocol with the given fields overridden (None means: keep the protocol's)."""
        options.choice("protocol", name, tuple(PROTOCOLS))
        proto = replace(cls(name=name), **PROTOCOLS[name])
        proto = replace(proto, **{k: v for k, v in overrides.items() if v is not None})
        if proto.seeds:  # the first seed also picks --limit's subset
            proto = replace(proto, seeds=tuple(proto.seeds), seed=proto.seeds[0])
        proto.check()
        return proto

    def check(self) -> None:
        """OptionError unless every field is in its range (a NaN eps would make every PAC NaN)."""
        from protobench.core.attack import ATTACKS
        from protobench.core.regions import REGIONS

        options.choice("protocol", self.name, tuple(PROTOCOLS))
        if self.attack not in ATTACKS:
            raise OptionError(f"--attack: {ATTACKS.unknown(self.attack)}")
        if self.region not in REGIONS:
            raise OptionError(f"--region: {REGIONS.unknown(self.region)}")
        options.choice("--plc", self.plc, PLC_KINDS)
        options.choice("selection", self.select, SELECTIONS)
        options.number("--eps", self.eps, 0, MAX_RADIUS)
        options.number("--step", self.step, 0, MAX_RADIUS)
        options.integer("--steps", self.steps, 0, MAX_STEPS)
        options.optional_integer("--margin", self.margin, 0, MAX_MARGIN)
        options.integer("--seed", self.seed, 0, options.SEED_MAX)
        options.integer("--restarts", self.restarts, 1, MAX_RESTARTS)
        options.number("--box-quantile", self.box_q, 0, 1)
        options.number("--plc-quantile", self.plc_q, 0, 1)
        if self.box_q != 0.95 and "q" not in inspect.signature(REGIONS.get(self.region).attackable).parameters:
            raise OptionError(f"--box-quantile: the {self.region} region has no quantile; use --region box")
        for seed in self.seeds:
            options.integer("--seeds", seed, 0, options.SEED_MAX)
        if len(set(self.seeds)) != len(self.seeds) or len(self.seeds) == 1:
            raise OptionError(f"--seeds wants two or more different seeds, comma-separated (0,1,2); got {self.seeds}")
        if self.restarts != 1 and "restarts" not in inspect.signature(ATTACKS.get(self.attack)).parameters:
            raise OptionError(f"--restarts: the {self.attack} attack has no restarts; use --attack apgd")

    def region_options(self) -> dict[str, Any]:
        """Keyword arguments for the region beyond its signature: the box quantile, when not the paper's."""
        return {"q": self.box_q} if self.box_q != 0.95 else {}

    def attack_options(self) -> dict[str, Any]:
        """Keyword arguments beyond pgd's signature for the attack: restarts, when asked for."""
        return {"restarts": self.restarts} if self.restarts != 1 else {}

    def resolved(self, size: int) -> dict[str, Any]:
        """The protocol as recorded in meta.json, with the margin worked out for this image size."""
        from protobench.core.regions import REGIONS

        out = asdict(self)
        out["seeds"] = list(self.seeds)  # as meta.json reads back
        out["margin"] = self.margin if self.margin is not None else REGIONS.get(self.region).margin(size)
        return out


def parse_seeds(text: str | None) -> tuple[int, ...] | None:
    """--seeds 0,1,2 -> (0, 1, 2); OptionError for anything but comma-separated whole numbers."""
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise OptionError(f"--seeds wants comma-separated whole numbers such as 0,1,2; got {text!r}") from None


def as_recorded_now(record: Any) -> Any:
    """A protocol read from an older meta.json / run.json, with the fields added since then set to
    what that version did (RECORDED_BEFORE), so that it compares equal to the same protocol now."""
    if not isinstance(record, dict):
        return record
    return {**RECORDED_BEFORE, **record}
