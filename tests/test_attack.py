"""The attacks: protected pixels bit-for-bit unchanged, bounds respected, pgd really attacks."""

import pytest
import torch

from protobench.attacks.pgd import pgd
from protobench.core.attack import image_bounds
from protobench.core import rng
from protobench.core.protocol import EvalProtocol
from protobench.core.regions import attackable_pixels
from protobench.run.benchmark import evaluate_batch
from protobench.run.forward import frozen_eval


def _setup(adapter, n=6):
    size = adapter.info.input_size
    x = torch.randn(n, 3, size, size)
    with torch.no_grad():
        maps, _ = adapter(x)
    attackable = attackable_pixels(maps[:, :1].clamp(min=0), torch.ones(n, 1, dtype=torch.bool), size, margin=2)
    noise = rng.uniform(0, torch.arange(n), (3, size, size), -1.0, 1.0)
    return x, attackable, noise


@pytest.mark.parametrize("steps", [0, 5])  # 0 steps = the noise attack
def test_protected_pixels_are_bitwise_unchanged_and_bounds_hold(tiny_adapter, steps):
    x, attackable, noise = _setup(tiny_adapter)
    bounds = image_bounds(tiny_adapter.info.mean, tiny_adapter.info.std, "cpu")
    x = torch.maximum(torch.minimum(x, bounds[1]), bounds[0])  # a valid image
    with frozen_eval(tiny_adapter.model):
        x_adv, _ = pgd(lambda im: tiny_adapter(im)[0].amax(dim=(2, 3))[:, 0], x, attackable, noise,
                              eps=0.4, step=0.05, steps=steps, bounds=bounds)
    protected = ~attackable.expand_as(x)
    assert torch.equal(x_adv[protected], x[protected])
    assert (x_adv - x).abs().max() <= 0.4 + 1e-6
    assert (x_adv >= bounds[0] - 1e-6).all() and (x_adv <= bounds[1] + 1e-6).all()
    assert (x_adv != x)[attackable.expand_as(x)].float().mean() > 0.9  # the attackable pixels did move


def test_zero_gradient_is_counted_per_image():
    x = torch.randn(2, 3, 8, 8)
    attackable = torch.ones(2, 1, 8, 8, dtype=torch.bool)
    attackable[:, :, 0, 0] = False  # pixel (0, 0) is protected
    noise = torch.zeros_like(x)

    def objective(im):  # image 0 looks only at the protected pixel, image 1 at everything
        return torch.stack([im[0, :, 0, 0].sum(), im[1].sum()])

    _, zero = pgd(objective, x, attackable, noise, eps=0.4, step=0.01, steps=7)
    assert zero.tolist() == [7, 0]


def test_pgd_moves_downhill_on_a_linear_objective():
    # objective = sum of pixels: every step lowers each free pixel by `step` until -eps
    x = torch.zeros(1, 3, 4, 4)
    attackable = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    x_adv, _ = pgd(lambda im: im.flatten(1).sum(1), x, attackable, torch.zeros_like(x),
                          eps=0.05, step=0.01, steps=3)
    assert torch.allclose(x_adv, torch.full_like(x, -0.03))
    x_adv, _ = pgd(lambda im: im.flatten(1).sum(1), x, attackable, torch.zeros_like(x),
                          eps=0.05, step=0.01, steps=10)
    assert torch.allclose(x_adv, torch.full_like(x, -0.05))  # projected onto the ball


def test_pgd_lowers_the_activation_more_than_noise(tiny_adapter):
    size = tiny_adapter.info.input_size
    torch.manual_seed(5)
    x = torch.rand(16, 3, size, size) * 4 - 2
    y = torch.randint(0, 3, (16,))
    ids = torch.arange(16)
    with torch.no_grad():  # prototypes on real patches (as after push): high, sensitive activations
        z = tiny_adapter.model.conv_features(x[:6])  # (6, D, 4, 4); not exactly on a patch: relu(d) at 0 has no gradient
        tiny_adapter.model.prototype_vectors.copy_(z[:, :, 2, 2, None, None] + 0.1 * torch.randn(6, 8, 1, 1))
    with frozen_eval(tiny_adapter.model):
        pgd = evaluate_batch(tiny_adapter, x, y, ids, EvalProtocol.make(steps=20, margin=1))
        noise = evaluate_batch(tiny_adapter, x, y, ids, EvalProtocol.make(attack="noise", margin=1))
    assert pgd["PAC"].mean() > 0.05 and pgd["PAC"].mean() > 3 * noise["PAC"].mean()
    assert pgd["PLC"].mean() > noise["PLC"].mean()
    assert (pgd["act_after"] <= noise["act_after"] + 1e-6).float().mean() > 0.8


def test_counter_rng_depends_only_on_seed_and_index():
    a = rng.uniform(7, torch.tensor([0, 1, 2, 3]), (3, 5, 5))
    b = rng.uniform(7, torch.tensor([2, 9, 0]), (3, 5, 5))
    assert torch.equal(a[2], b[0]) and torch.equal(a[0], b[2])
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a[0], rng.uniform(8, torch.tensor([0]), (3, 5, 5))[0])


def test_counter_rng_is_uniform():
    u = rng.uniform(0, torch.arange(64), (3, 32, 32), -1.0, 1.0)
    assert u.min() >= -1.0 and u.max() < 1.0
    assert abs(u.mean().item()) < 0.01
    assert abs(u.std().item() - 1 / 3**0.5) < 0.01
    hist = torch.histc(u, bins=10, min=-1, max=1) / u.numel()
    assert (hist - 0.1).abs().max() < 0.005
    # neighbouring elements are not correlated
    flat = u.flatten()
    corr = torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1]
    assert abs(corr.item()) < 0.01
