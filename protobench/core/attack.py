"""Attacks restricted to the pixels outside the protected region (docs/metrics.md, The procedure).
Pure and batched.

Every image in the batch has its own mask; pixels where `attackable` is False are copied from
the original bit for bit. Every attack is registered in ATTACKS under one signature, that of
`pgd` (the `Attack` protocol below); `--attack NAME` looks the name up there. `noise` is PGD's
random start alone, which is what the reference implementation effectively computes
(docs/metrics.md, Why the reference code's "PGD" is noise).
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol

import torch

from protobench.registry import Registry

Objective = Callable[[torch.Tensor], torch.Tensor]  # images (B, 3, S, S) -> (B,) to minimize
Bounds = Optional[tuple[torch.Tensor, torch.Tensor]]  # lowest and highest valid value, (1, 3, 1, 1) each


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
                                     expects="a function with the signature of protobench.core.attack.pgd")


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, bounds: Bounds) -> torch.Tensor:
    """Back into the L-inf ball of radius eps around x, then into the valid image range."""
    x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps)
    if bounds is not None:
        x_adv = torch.minimum(torch.maximum(x_adv, bounds[0]), bounds[1])
    return x_adv


def random_start(x: torch.Tensor, attackable: torch.Tensor, noise: torch.Tensor, eps: float,
                 bounds: Bounds) -> torch.Tensor:
    """x + eps * noise where attackable (noise in [-1, 1)), x elsewhere."""
    return torch.where(attackable, _project(x + eps * noise, x, eps, bounds), x)


@ATTACKS.register("pgd", source="built-in")
def pgd(objective: Objective, x: torch.Tensor, attackable: torch.Tensor, noise: torch.Tensor, *, eps: float,
        step: float, steps: int, bounds: Bounds = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected sign-gradient descent on `objective`, touching only pixels where `attackable`.

    Returns the attacked images and, per image, the number of steps whose gradient was
    exactly zero on every pixel the attack may change (an attack that cannot move).
    """
    x = x.detach()
    x_adv = random_start(x, attackable, noise, eps, bounds)
    zero_steps = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(x_adv).sum(), x_adv)
        with torch.no_grad():
            grad = torch.where(attackable, grad, 0.0)
            zero_steps += (grad == 0).flatten(1).all(dim=1)
            x_adv = _project(x_adv - step * grad.sign(), x, eps, bounds)
            x_adv = torch.where(attackable, x_adv, x)
    return x_adv.detach(), zero_steps


@ATTACKS.register("noise", source="built-in")
def noise_only(objective: Objective, x: torch.Tensor, attackable: torch.Tensor, noise: torch.Tensor, *,
               eps: float, step: float, steps: int, bounds: Bounds = None) -> tuple[torch.Tensor, torch.Tensor]:
    """pgd's random start alone: uniform noise in [-eps, eps] on the attackable pixels (no steps)."""
    return pgd(objective, x, attackable, noise, eps=eps, step=step, steps=0, bounds=bounds)


ATTACKS.add("apgd", "protobench.core.apgd:apgd", source="built-in")  # its own module: AutoAttack's schedule


def image_bounds(mean, std, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalized values of pixel 0 and 1 per channel, shaped (1, 3, 1, 1).

    Worked out on the CPU and copied without blocking: a blocking copy to a GPU waits for
    everything queued before it (docs/performance.md, Host synchronisation)."""
    mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    low, high = (0 - mean) / std, (1 - mean) / std
    return low.to(device, non_blocking=True), high.to(device, non_blocking=True)
