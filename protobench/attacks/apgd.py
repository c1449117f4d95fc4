"""APGD: auto-PGD with AutoAttack's step-size schedule (Croce & Hein, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks", ICML 2020, Algorithm 1),
reimplemented from the paper for the L-inf ball, restricted to the attackable pixels like pgd
(docs/metrics.md, Attack strength).

The attack maximises f = -objective. It starts at the seeded random start x0 with step size
eta = 2 eps, takes a sign-gradient step to x1, then for k >= 1:
    z = P(x_k + eta sign(grad f(x_k)))
    x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha) (x_k - x_{k-1}))          alpha = 0.75 (momentum)
and keeps each image's best point. At the checkpoints w_j = ceil(p_j N) (p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)) it halves eta and goes back to the best point
when either
    (1) the objective improved in fewer than rho = 0.75 of the steps since the last checkpoint, or
    (2) eta was not halved at the last checkpoint and the best value has not changed since.
Everything is per image and batched: no host read in the loop. `--step` is not used (the schedule
sets the step size). `restarts` repeats the attack from new seeded random starts and keeps each
image's best result.
"""

from __future__ import annotations


import torch

from protobench.core import rng
from protobench.attacks.pgd import _project, random_start
from protobench.core.attack import ATTACKS, Bounds, Objective

ALPHA = 0.75  # weight of the new step against the last one (momentum 0.25)
RHO = 0.75  # condition 1: share of improving steps below which the step size is halved


def checkpoints(n_iter: int) -> list[int]:
    """The iterations w_j at which the step size may be halved: ceil(p_j n_iter), p_j as in the paper,
    worked out in hundredths so that no rounding error moves a checkpoint (p = 0.70 gives 7 of 10, not 8)."""
    p = [0, 22]
    while p[-1] < 100:
        p.append(p[-1] + max(p[-1] - p[-2] - 3, 6))
    return sorted({-(-q * n_iter // 100) for q in p if q <= 100})


def restart_noise(noise: torch.Tensor, restart: int) -> torch.Tensor:
    """The random start of restart `restart` (0: `noise` itself): each value is a 24-bit uniform,
    re-hashed with the restart's number, so it depends only on the image's own draw."""
    if restart == 0:
        return noise
    bits = ((noise + 1) * (1 << 23)).round().long()  # noise = -1 + 2 k / 2^24: k exactly
    key = int(rng.hash32(restart * 0x9E3779B9 & 0xFFFFFFFF))
    mixed = rng.hash32(rng.hash32(bits ^ key) ^ key)
    return (mixed >> 8).to(torch.float32) * (2.0 / (1 << 24)) - 1.0


@ATTACKS.register("apgd")
def apgd(objective: Objective, x: torch.Tensor, attackable: torch.Tensor, noise: torch.Tensor, *, eps: float,
         step: float, steps: int, bounds: Bounds = None, restarts: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """APGD on `objective` (lowered), touching only pixels where `attackable`; `steps` iterations per
    restart. Returns each image's best point over all restarts, and its count of zero-gradient steps."""
    x = x.detach()
    best_x, best_f, zero_steps = x, None, torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for restart in range(restarts):
        found_x, found_f, zeros = _run(objective, x, attackable, restart_noise(noise, restart), eps, steps, bounds)
        zero_steps += zeros
        if best_f is None:
            best_x, best_f = found_x, found_f
        else:
            better = found_f > best_f
            best_x = torch.where(better[:, None, None, None], found_x, best_x)
            best_f = torch.maximum(best_f, found_f)
    return best_x, zero_steps


def halving(improved: torch.Tensor, span: int, eta_kept: torch.Tensor, best_kept: torch.Tensor) -> torch.Tensor:
    """(B,) bool: halve the step size at a checkpoint. `improved`: steps since the last checkpoint (`span`
    of them) whose objective beat the step before; `eta_kept`, `best_kept`: the step size and the best
    value are what they were at the last checkpoint. Condition 1 or condition 2 of the paper."""
    return (improved < RHO * span) | (eta_kept & best_kept)


def _value_and_grad(objective: Objective, x_adv: torch.Tensor, attackable: torch.Tensor):
    """f = -objective at x_adv, and its gradient on the attackable pixels."""
    x_adv = x_adv.detach().requires_grad_(True)
    value = -objective(x_adv)
    (grad,) = torch.autograd.grad(value.sum(), x_adv)
    return value.detach(), torch.where(attackable, grad, 0.0)


def _run(objective: Objective, x: torch.Tensor, attackable: torch.Tensor, noise: torch.Tensor, eps: float,
         n_iter: int, bounds: Bounds):
    """One APGD run from the random start given by `noise`: (best point, its f, zero-gradient steps)."""
    def project(point: torch.Tensor) -> torch.Tensor:
        return torch.where(attackable, _project(point, x, eps, bounds), x)

    shape = (-1, 1, 1, 1)
    x_k = random_start(x, attackable, noise, eps, bounds)
    f_k, grad = _value_and_grad(objective, x_k, attackable)
    best_x, best_f, best_grad = x_k, f_k, grad
    zero_steps = (grad == 0).flatten(1).all(dim=1).long()
    if n_iter == 0:
        return best_x, best_f, torch.zeros_like(zero_steps)
    eta = torch.full((x.shape[0],), 2.0 * eps, device=x.device)
    marks = set(checkpoints(n_iter)[1:])
    last_mark, eta_at_mark, best_at_mark = 0, eta.clone(), best_f.clone()
    improved = torch.zeros_like(zero_steps)
    x_prev = x_k
    for k in range(n_iter):
        with torch.no_grad():
            z = project(x_k + eta.view(shape) * grad.sign())
            x_next = z if k == 0 else project(x_k + ALPHA * (z - x_k) + (1 - ALPHA) * (x_k - x_prev))
        f_next, grad_next = _value_and_grad(objective, x_next, attackable)
        with torch.no_grad():
            improved += f_next > f_k
            better = f_next > best_f
            best_x = torch.where(better.view(shape), x_next, best_x)
            best_f = torch.where(better, f_next, best_f)
            best_grad = torch.where(better.view(shape), grad_next, best_grad)
            x_prev, x_k, f_k, grad = x_k, x_next, f_next, grad_next
            if k + 1 < n_iter:
                zero_steps += (grad == 0).flatten(1).all(dim=1)
            if k + 1 in marks:
                halve = halving(improved, k + 1 - last_mark, eta_at_mark == eta, best_at_mark == best_f)
                eta = torch.where(halve, eta / 2, eta)
                back = halve.view(shape)  # go back to the best point (and its gradient), without momentum
                x_k, x_prev = torch.where(back, best_x, x_k), torch.where(back, best_x, x_prev)
                f_k, grad = torch.where(halve, best_f, f_k), torch.where(back, best_grad, grad)
                last_mark, eta_at_mark, best_at_mark = k + 1, eta.clone(), best_f.clone()
                improved = torch.zeros_like(improved)
    return best_x, best_f, zero_steps
