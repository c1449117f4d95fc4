"""APGD (protobench.attacks.apgd) on objectives whose optimum is known by hand."""

import pytest
import torch

from protobench.attacks import apgd as A
from protobench.core.attack import ATTACKS
from protobench.core.protocol import EvalProtocol
from protobench.errors import OptionError


def test_checkpoints_follow_the_papers_formula():
    """p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (then 1.05 > 1): ceil(100 p), ceil(10 p)."""
    assert A.checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    assert A.checkpoints(10) == [0, 3, 5, 6, 7, 8, 9, 10]  # ceil of 2.2, 4.1, 5.7, 7.0, 8.0, 8.7, 9.3, 9.9


def test_halving_conditions():
    """span 8: condition 1 holds below 0.75 * 8 = 6 improving steps; condition 2 when neither the step
    size nor the best value moved since the last checkpoint."""
    improved = torch.tensor([5, 6, 8, 7])
    eta_kept = torch.tensor([False, False, True, True])
    best_kept = torch.tensor([False, True, True, False])
    assert A.halving(improved, 8, eta_kept, best_kept).tolist() == [True, False, True, False]


def _inputs(n=3, size=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    attackable = torch.rand(n, 1, size, size, generator=g) > 0.4
    noise = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    return x, attackable, noise


def test_a_linear_objective_ends_in_its_best_corner():
    """objective = sum(w x): its minimum over the ball is x - eps sign(w) on the attackable pixels (inside
    the image range here); the first step of size 2 eps reaches it from any start."""
    x, attackable, noise = _inputs()
    w = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(1))
    out, zero = A.apgd(lambda im: (im * w).flatten(1).sum(1), x, attackable, noise, eps=0.1, step=0.01, steps=10,
                       bounds=(torch.full((1, 3, 1, 1), -2.0), torch.full((1, 3, 1, 1), 2.0)))
    expected = torch.where(attackable, x - 0.1 * w.sign(), x)
    assert torch.allclose(out, expected, atol=1e-6) and zero.tolist() == [0, 0, 0]
    assert torch.equal(out[~attackable.expand_as(out)], x[~attackable.expand_as(x)])  # outside: bit for bit


def test_a_nonconvex_objective_stays_in_the_ball_and_improves_on_its_start():
    x, attackable, noise = _inputs(4)
    objective = lambda im: torch.cos(5 * im).flatten(1).sum(1) + (im ** 2).flatten(1).sum(1)  # noqa: E731
    bounds = (torch.full((1, 3, 1, 1), -1.0), torch.full((1, 3, 1, 1), 1.0))
    one, _ = A.apgd(objective, x, attackable, noise, eps=0.3, step=0.01, steps=20, bounds=bounds)
    three, _ = A.apgd(objective, x, attackable, noise, eps=0.3, step=0.01, steps=20, bounds=bounds, restarts=3)
    start = A.random_start(x, attackable, noise, 0.3, bounds)
    assert ((one - x).abs() <= 0.3 + 1e-6).all() and (one >= -1).all() and (one <= 1).all()
    assert (objective(one) <= objective(start)).all()
    assert (objective(three) <= objective(one)).all()  # restart 0 is the single run; the best is kept
    alone, _ = A.apgd(objective, x[2:3], attackable[2:3], noise[2:3], eps=0.3, step=0.01, steps=20, bounds=bounds,
                      restarts=3)
    assert torch.equal(alone[0], three[2])  # an image's result does not depend on its batch


def test_restart_noise_is_a_fresh_uniform_draw_per_value():
    _, _, noise = _inputs()
    noise = (torch.floor((noise + 1) * (1 << 23)) / (1 << 23)) - 1  # on the 24-bit grid of protobench.core.rng
    assert torch.equal(A.restart_noise(noise, 0), noise)
    again = A.restart_noise(noise, 1)
    assert (again >= -1).all() and (again < 1).all() and not torch.equal(again, noise)
    assert torch.equal(A.restart_noise(noise[1:2], 1), again[1:2])
    assert not torch.equal(A.restart_noise(noise, 2), again)
    assert abs(float(again.mean())) < 0.15  # 324 values, centred


def test_apgd_is_registered_and_restarts_are_checked():
    assert "apgd" in ATTACKS and "restarts" not in EvalProtocol.make().attack_options()
    assert EvalProtocol.make(attack="apgd", restarts=3).attack_options() == {"restarts": 3}
    with pytest.raises(OptionError, match="--attack apgd"):
        EvalProtocol.make(restarts=2)  # pgd has no restarts
    with pytest.raises(OptionError, match="--restarts"):
        EvalProtocol.make(attack="apgd", restarts=0)
