"""The compensation method (docs/compensation.md): spatial alignment loss, masking augmentation, and the
adversarial variant of the alignment loss. Batched; every draw from the given generator.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from protobench.attacks.pgd import pgd
from protobench.core.regions import quantile

MapsFn = Callable[[torch.Tensor], torch.Tensor]  # images (B, 3, S, S) -> similarity maps (B, P, h, w)


def pick_class_prototypes(identity: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One prototype per image, uniformly among the prototypes of its class: (B,) indices."""
    owned = (identity[:, y].t() > 0).float()  # (B, P)
    if not owned.any(dim=1).all():
        raise ValueError("some classes have no prototypes: the alignment loss needs one per class")
    return torch.multinomial(owned, 1, generator=generator).squeeze(1)


def activation_masks(maps: torch.Tensor, size: int, q: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, h, w) detached maps -> M_img (B, 1, S, S) float {0, 1}, above each map's q-quantile after
    bilinear upsampling, and M_act (B, h, w), M_img bilinearly downsampled back to the map grid."""
    up = F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)
    m_img = (up > quantile(up.flatten(1), q)[:, None, None, None]).float()
    m_act = F.interpolate(m_img, size=maps.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return m_img, m_act


def masked_distance(s: torch.Tensor, s_tilde: torch.Tensor, m_act: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """sum(|S - S~| * M_act) / sum(M_act), or with the difference squared ('l2')."""
    return weighted_differences(s, s_tilde, m_act, kind).sum() / m_act.sum().clamp(min=1e-12)


def masked_differences(s: torch.Tensor, s_tilde: torch.Tensor, m_act: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Each image's share (B,) of masked_distance: sum_hw(|S - S~| * M_act) / sum(M_act) over the batch."""
    return weighted_differences(s, s_tilde, m_act, kind).flatten(1).sum(dim=1) / m_act.sum().clamp(min=1e-12)


def weighted_differences(s: torch.Tensor, s_tilde: torch.Tensor, m_act: torch.Tensor, kind: str) -> torch.Tensor:
    """|S - S~| * M_act (B, h, w), or with the difference squared ('l2')."""
    diff = (s - s_tilde).abs()
    if kind == "l2":
        diff = diff**2
    elif kind != "l1":
        raise ValueError(f"unknown alignment loss {kind!r}: use l1 or l2")
    return diff * m_act


def adversarial_outside(maps_fn: MapsFn, x: torch.Tensor, m_img: torch.Tensor, protos: torch.Tensor,
                        s: torch.Tensor, m_act: torch.Tensor, *, eps: float, steps: int, generator: torch.Generator,
                        bounds: tuple[torch.Tensor, torch.Tensor] | None = None, kind: str = "l1") -> torch.Tensor:
    """x inside the mask, and outside it the benchmark's PGD (protobench.attacks.pgd.pgd: a uniform
    random start, then sign-gradient steps of eps / 2 in the L-inf ball of radius eps) *maximizing*
    the masked map difference: the worst outside the benchmark's attack could find."""
    batch = torch.arange(len(x), device=x.device)
    noise = torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1

    def objective(images: torch.Tensor) -> torch.Tensor:  # (B,) to minimize: the negated difference
        return -masked_differences(s, maps_fn(images)[batch, protos], m_act, kind)

    attackable = (m_img < 0.5).expand_as(x)  # pixels outside the activation mask may change
    x_adv, _ = pgd(objective, x, attackable, noise, eps=eps, step=eps / 2, steps=steps, bounds=bounds)
    return x_adv


def alignment_loss(maps_fn: MapsFn, x: torch.Tensor, y: torch.Tensor, identity: torch.Tensor,
                   generator: torch.Generator, *, kind: str = "l1", adversarial: dict | None = None,
                   maps: torch.Tensor | None = None) -> torch.Tensor:
    """The alignment loss (docs/compensation.md, step 3): the masked difference between a true-class prototype's map on x and on x with
    everything outside its activation region blanked (or adversarially perturbed).

    Args:
        maps_fn: images -> maps; the second pass goes through it with gradients.
        maps: the first pass's maps of x, if the caller already has them (detached here).
        adversarial: None for the paper's method (outside = 0, the mean colour), or
            {"eps", "steps", "bounds", "crafter"} for the adversarial variant, where
            `crafter` (default maps_fn) is the maps function used to craft the perturbation
            (e.g. the model in eval mode, so crafting leaves batch-norm statistics alone); a
            crafter other than maps_fn crafts against its own maps of x, not against `maps`.
    """
    size = x.shape[-1]
    protos = pick_class_prototypes(identity, y, generator)
    batch = torch.arange(len(x), device=x.device)
    with torch.no_grad():
        first = maps if maps is not None else maps_fn(x)
        s = first[batch, protos].detach().float()
    q = 0.5 + 0.48 * float(torch.rand((), generator=generator, device=generator.device))  # one per batch
    m_img, m_act = activation_masks(s, size, q)
    if adversarial is None:
        x_tilde = (x * m_img).detach()
    else:
        crafter = adversarial.get("crafter", maps_fn)
        reference = s
        if crafter is not maps_fn:  # e.g. the model in eval mode: compare it with itself, not with training mode
            with torch.no_grad():
                reference = crafter(x)[batch, protos].float()
        x_tilde = adversarial_outside(crafter, x, m_img, protos, reference, m_act, eps=adversarial["eps"],
                                      steps=adversarial["steps"], generator=generator,
                                      bounds=adversarial.get("bounds"), kind=kind)
    s_tilde = maps_fn(x_tilde)[batch, protos].float()
    return masked_distance(s, s_tilde, m_act, kind)


def masking_augmentation(x: torch.Tensor, generator: torch.Generator, prob: float = 0.5,
                         max_rects: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Masking augmentation (docs/compensation.md, step 1): with probability `prob` per image,
    1..max_rects rectangles (sides uniform in [S/8, S/2)) covering all channels x rows x columns
    (not the reference code's channels x rows slice), each filled with 0,
    U[0,1) noise, or the image plus U[0,1) noise (normalized units).

    Returns the augmented images and the rectangles (B, max_rects, 5): top, left, h, w, fill,
    with fill -1 for unused slots.
    """
    b, _, size, _ = x.shape
    dev = x.device

    def randint(low: int, high: torch.Tensor | int, shape) -> torch.Tensor:  # uniform in [low, high)
        u = torch.rand(shape, generator=generator, device=dev)
        return (low + u * (torch.as_tensor(high, device=dev) - low)).long()

    apply = torch.rand(b, generator=generator, device=dev) < prob
    count = randint(1, max_rects + 1, (b,))
    h = randint(size // 8, size // 2, (b, max_rects))
    w = randint(size // 8, size // 2, (b, max_rects))
    top = randint(0, size - h + 1, (b, max_rects))
    left = randint(0, size - w + 1, (b, max_rects))
    fill = randint(0, 3, (b, max_rects))
    used = apply[:, None] & (torch.arange(max_rects, device=dev)[None] < count[:, None])
    fill = torch.where(used, fill, -1)
    ar = torch.arange(size, device=dev)
    out = x.clone()
    for k in range(max_rects):  # a loop over the (at most 5) rectangle slots, never over images
        noise = torch.rand(x.shape, generator=generator, device=dev)  # fresh per rectangle, as if drawn one by one
        rows = (ar >= top[:, k, None]) & (ar < (top + h)[:, k, None])  # (B, S)
        cols = (ar >= left[:, k, None]) & (ar < (left + w)[:, k, None])
        inside = (rows[:, :, None] & cols[:, None, :] & used[:, k, None, None])[:, None]  # (B, 1, S, S)
        kind = fill[:, k].view(b, 1, 1, 1)
        value = torch.where(kind == 0, torch.zeros_like(out), torch.where(kind == 1, noise, out + noise))
        out = torch.where(inside, value, out)
    rects = torch.stack([top, left, h, w, fill], dim=-1)
    return out, rects
