"""Attacks restricted to the pixels outside the protected region (docs/metrics.md, The procedure):
their registry and their signature.

Every image in the batch has its own mask; pixels where `attackable` is False are copied from
the original bit for bit. Every attack is registered in ATTACKS under one signature, that of
`protobench.attacks.pgd.pgd` (the `Attack` protocol below); `--attack NAME` looks the name up
there. The built-ins are the modules of `protobench/attacks/`, one per attack, named after it.
This module imports no torch, so the CLI can list the attacks cheaply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Protocol

from protobench.registry import Registry

if TYPE_CHECKING:
    import torch

Objective = Callable[["torch.Tensor"], "torch.Tensor"]  # images (B, 3, S, S) -> (B,) to minimize
Bounds = Optional[tuple["torch.Tensor", "torch.Tensor"]]  # lowest and highest valid value, (1, 3, 1, 1) each


class Attack(Protocol):
    """The signature every registered attack has.

    Args:
        objective: images -> (B,) values the attack lowers (the attacked prototypes' mean activation).
        x: (B, 3, S, S) normalized images.
        attackable: (B, 1, S, S) bool, True where the attack may change pixels.
        noise: (B, 3, S, S) uniform in [-1, 1), drawn per image from (seed, image index).
        eps: L-inf radius; step, steps: the step size and count of iterative attacks.
        bounds: the valid image range to stay in, or None (--no-clip).
    Returns:
        the attacked images (equal to x bit for bit where not attackable), and per image the
        number of steps whose gradient was zero on every attackable pixel (zeros if it has none).
    """

    def __call__(self, objective: Objective, x: torch.Tensor, attackable: torch.Tensor, noise: torch.Tensor, *,
                 eps: float, step: float, steps: int, bounds: Bounds = None) -> tuple[torch.Tensor, torch.Tensor]: ...


ATTACKS: Registry[Attack] = Registry("attack", group="protobench.attacks", check=callable,
                                     expects="a function with the signature of protobench.attacks.pgd.pgd",
                                     package="protobench.attacks")


def image_bounds(mean, std, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalized values of pixel 0 and 1 per channel, shaped (1, 3, 1, 1).

    Worked out on the CPU and copied without blocking: a blocking copy to a GPU waits for
    everything queued before it (docs/performance.md, Host synchronisation)."""
    import torch

    mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    low, high = (0 - mean) / std, (1 - mean) / std
    return low.to(device, non_blocking=True), high.to(device, non_blocking=True)
