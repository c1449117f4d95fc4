"""What decides the numbers of a run: the attack, its budget, the prototype selection, the
protected region, the PLC definition, the seed.

The named protocols (docs/metrics.md, Protocols) are data: `reference` is the `noise` attack
without clipping, which is what the paper's code computes; the third preset is what a later
paper's copy of that code computes, and works on every family. Attack and region names are
looked up in protobench.core.attack.ATTACKS and protobench.core.regions.REGIONS, so a
registered one is a valid `--attack` / `--region` with no change here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from protobench import options
from protobench.errors import OptionError

# Upper bounds of the attack's options. Normalized images span about 5 units, so a radius of
# 100 already leaves nothing unreachable, while 1e30 (with --no-clip) overflows the model to NaN.
MAX_RADIUS, MAX_STEPS, MAX_MARGIN = 100.0, 1_000_000, 100_000

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
RECORDED_BEFORE = {"region": "box", "plc": "pixels"}


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

    @classmethod
    def make(cls, name: str = "default", **overrides: Any) -> EvalProtocol:
        """A named protocol with the given fields overridden (None means: keep the protocol's)."""
        options.choice("protocol", name, tuple(PROTOCOLS))
        proto = replace(cls(name=name), **PROTOCOLS[name])
        proto = replace(proto, **{k: v for k, v in overrides.items() if v is not None})
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

    def resolved(self, size: int) -> dict[str, Any]:
        """The protocol as recorded in meta.json, with the margin worked out for this image size."""
        from protobench.core.regions import REGIONS

        out = asdict(self)
        out["margin"] = self.margin if self.margin is not None else REGIONS.get(self.region).margin(size)
        return out


def as_recorded_now(record: Any) -> Any:
    """A protocol read from an older meta.json / run.json, with the fields added since then set to
    what that version did (RECORDED_BEFORE), so that it compares equal to the same protocol now."""
    if not isinstance(record, dict):
        return record
    return {**RECORDED_BEFORE, **record}
