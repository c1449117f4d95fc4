"""`--attack pgd`: projected sign-gradient descent from a seeded random start, touching only the
attackable pixels (docs/metrics.md, The procedure). Pure and batched."""

from __future__ import annotations

import torch

from protobench.core.attack import ATTACKS, Bounds, Objective


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


@ATTACKS.register("pgd")
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
