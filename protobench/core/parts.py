"""Which annotated object parts each prototype lands on: the per-batch half of consistency and
stability (docs/metrics.md, Consistency and stability). Batched, device-agnostic.

Reimplemented from the definitions of Huang et al., ICCV 2023 (their reference code's repository,
file and commit: docs/metrics.md, Consistency and stability): for each image and each prototype
of its true class, upsample the prototype's similarity map to the image size (bicubic), take its
first maximum in row-major order, put a box of half-size h around it (clipped to the image), and
mark the visible parts whose keypoints fall inside the box, borders included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from protobench.core import rng

REFERENCE_HALF_SIZE = 36  # px at 224 px: the reference code's default (docs/metrics.md)
NOISE_STREAM = 1  # rng stream of the stability noise; stream 0 is the attack's random start
PEAK_PIXELS = 1 << 24  # upsampled pixels held at once (64 MiB in fp32): bounds memory for many prototypes


def default_half_size(size: int) -> int:
    """36 px at 224 px (the reference), scaled with the image side (10 px at 64 px)."""
    return max(1, round(REFERENCE_HALF_SIZE * size / 224))


def class_members(identity: torch.Tensor) -> torch.Tensor:
    """(P, C) prototype-class identity -> (C, m) each class's prototypes in ascending order,
    padded with -1; m is the most prototypes any class has (at least 1)."""
    member = identity.t() > 0  # (C, P)
    count = int(member.sum(dim=1).max()) if member.numel() else 0
    key = torch.where(member, torch.arange(member.shape[1], device=member.device), member.shape[1])
    ranked = key.sort(dim=1).values[:, :max(count, 1)]
    return ranked.masked_fill(ranked == member.shape[1], -1)


def peaks(maps: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, h, w) maps -> (N,) row and column of each one's first maximum (row-major) after bicubic
    upsampling to size x size, as cv2.resize(INTER_CUBIC) then np.where(...)[0] in the reference."""
    flat = []
    step = max(1, PEAK_PIXELS // (size * size))
    for start in range(0, len(maps), step):  # a handful of chunks, not a loop over images
        up = F.interpolate(maps[start:start + step, None].float(), size=(size, size), mode="bicubic",
                           align_corners=False)
        flat.append(up.flatten(1).argmax(dim=1))  # argmax returns the first of equal maxima
    index = torch.cat(flat) if flat else maps.new_zeros(0, dtype=torch.long)
    return index // size, index % size


def part_hits(maps: torch.Tensor, labels: torch.Tensor, members: torch.Tensor, parts: torch.Tensor, size: int,
              half: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which parts the box of each of an image's own-class prototypes holds.

    Args:
        maps: (B, P, h, w) similarity maps (not clipped: the peak of a map below 0 still counts).
        labels: (B,) true classes.
        members: (C, m) class_members of the model.
        parts: (B, K, 3) long: keypoint column u, row v in the size x size input, visible (0 or 1).
        half: box half-size h in px.
    Returns:
        slots (B, m) the prototypes (-1: padding), codes (B, m, K) int8: 1 visible and inside the box,
        0 visible and outside, -1 not visible.
    """
    slots = members[labels]  # (B, m)
    own = maps.gather(1, slots.clamp(min=0)[..., None, None].expand(-1, -1, *maps.shape[2:]))  # (B, m, h, w)
    rows, cols = peaks(own.flatten(0, 1), size)
    rows, cols = rows.view(slots.shape)[..., None], cols.view(slots.shape)[..., None]  # (B, m, 1)
    u, v, visible = parts[:, None, :, 0], parts[:, None, :, 1], parts[:, None, :, 2] > 0  # (B, 1, K)
    inside = ((v >= (rows - half).clamp(min=0)) & (v <= (rows + half).clamp(max=size))
              & (u >= (cols - half).clamp(min=0)) & (u <= (cols + half).clamp(max=size)))  # (B, m, K)
    codes = torch.where(visible, inside.to(torch.int8), torch.tensor(-1, dtype=torch.int8, device=maps.device))
    return slots, codes


def perturb(x: torch.Tensor, seed: int, ids: torch.Tensor, std: float, clip: float) -> torch.Tensor:
    """x + Gaussian noise of std `std` clipped to [-clip, clip], added to the normalized images and not
    clipped to the pixel range (as the reference's perturb_img); each image's noise is keyed by
    (seed, image index), so it does not depend on the batch it lands in."""
    noise = rng.normal(seed, ids.to(x.device), tuple(x.shape[1:]), stream=NOISE_STREAM)
    return x + (std * noise).clamp(-clip, clip)
