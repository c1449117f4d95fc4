"""A training plan as data: phases (which parameter groups train, how, for how long; or push),
the batch size and the seed. protobench.train.trainer runs it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from protobench.errors import OptionError


@dataclass(frozen=True)
class Phase:
    """One phase of a plan. The groups named in `lr` train (Adam), all others are frozen."""

    name: str  # unique in a plan: a checkpoint records the phase its optimizer belongs to
    epochs: int = 1
    lr: Mapping[str, float] = field(default_factory=dict)  # parameter group -> learning rate
    weight_decay: Mapping[str, float] = field(default_factory=dict)  # parameter group -> decay (default 0)
    step_size: int | None = None  # StepLR over the phase's epochs; None: constant rates
    gamma: float = 0.1
    push: bool = False  # project the prototypes onto training patches instead (nothing trains)
    extras: tuple[str, ...] = ()  # terms the objective adds in this phase (finetune: "align")
    train_mode: bool | None = None  # None: train mode iff the backbone ("features") trains

    @property
    def batch_statistics(self) -> bool:
        """Whether the model runs in train mode. A frozen backbone stays in eval mode: its batch-norm
        statistics do not move, so pushed prototypes stay exact training patches."""
        return "features" in self.lr if self.train_mode is None else self.train_mode


@dataclass(frozen=True)
class Plan:
    phases: tuple[Phase, ...]
    batch_size: int = 32
    seed: int = 0

    def steps(self) -> list[tuple[Phase, int]]:
        """The run as (phase, epoch) steps; checkpoints fall between steps."""
        return [(phase, epoch) for phase in self.phases for epoch in range(phase.epochs)]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self, groups: Mapping[str, Any]) -> None:
        """OptionError for a plan the model cannot run (before anything is trained)."""
        names = [phase.name for phase in self.phases]
        if len(set(names)) != len(names):
            raise OptionError(f"the training plan names a phase twice ({', '.join(names)}): give each its own name")
        for phase in (p for p in self.phases if p.epochs):
            unknown = sorted(set(phase.lr) - set(groups))
            if unknown:
                raise OptionError(f"phase {phase.name!r} trains {unknown[0]!r}, which the model does not have "
                                  f"(its parameter groups: {', '.join(groups) or 'none'})")
