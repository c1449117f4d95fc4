"""Consistency and stability per prototype, from the part hits every image recorded
(docs/metrics.md, Consistency and stability). numpy only: compare and the CLI read them without torch.

per_image.csv holds, for each image, one token per prototype of its class: `<prototype>:<codes>`,
one character per part in the order of the part names: `1` visible and inside the prototype's box,
`0` visible and outside, `-` not visible. E.g. `4:1-0 5:0-0` (parts 0 and 2 visible; prototype 4's
box holds part 0). `part_hits` is the clean image, `part_hits_noisy` the image with stability noise.

Formulas reimplemented from Huang et al., ICCV 2023 (the reference code's repository, file and
commit: docs/metrics.md, Consistency and stability).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

CHARS = np.array([b"-", b"0", b"1"])  # code + 1 -> character
CODE = {"-": -1, "0": 0, "1": 1}


class DamagedHits(ValueError):
    """A part_hits cell that is not in the format above (the caller names the file)."""


@dataclass(frozen=True)
class PartRecords:
    """Every (image, prototype) pair the part pass saw: the input of a per-prototype metric."""

    prototypes: int  # P: the model's prototype count (a prototype of no evaluated image gets NaN)
    parts: tuple[str, ...]  # K part names, the order of the codes
    proto: np.ndarray  # (T,) prototype of each pair
    image: np.ndarray  # (T,) row of the pair's image in per_image.csv
    codes: np.ndarray  # (T, K) int8: 1 inside the box, 0 visible elsewhere, -1 not visible
    codes_noisy: np.ndarray | None  # (T, K) the same on the noisy image; None without a stability pass
    threshold: float = 0.8  # consistency's part threshold mu

    @property
    def images(self) -> np.ndarray:
        """(P,) how many images each prototype was evaluated on."""
        return np.bincount(self.proto, minlength=self.prototypes)[:self.prototypes]


def encode(slots: np.ndarray, codes: np.ndarray) -> list[str]:
    """(B, m) prototypes (-1: none) and (B, m, K >= 1) codes -> one per_image.csv cell per image."""
    chars = CHARS[codes.astype(np.int64) + 1].view(f"S{codes.shape[-1]}")[..., 0]  # (B, m) one string each
    return [" ".join(f"{p}:{chars[b, j].decode()}" for j, p in enumerate(slots[b].tolist()) if p >= 0)
            for b in range(len(slots))]


def decode(cells: Sequence, parts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """per_image.csv cells -> proto (T,), image (T,), codes (T, K); DamagedHits for a bad cell."""
    proto, image, rows = [], [], []
    for i, cell in enumerate(cells):
        text = "" if cell is None or (isinstance(cell, float) and np.isnan(cell)) else str(cell)
        for token in text.split():
            p, sep, chars = token.partition(":")
            if not sep or not (p.isascii() and p.isdigit()) or len(chars) != parts or set(chars) - set(CODE):
                raise DamagedHits(f"row {i + 1}: {token[:40]!r} is not <prototype>:<{parts} of 1 0 ->")
            proto.append(int(p))
            image.append(i)
            rows.append([CODE[c] for c in chars])
    codes = np.array(rows, dtype=np.int8).reshape(len(rows), parts)
    return np.array(proto, dtype=np.int64), np.array(image, dtype=np.int64), codes


def consistency(records: PartRecords) -> dict[str, np.ndarray]:
    """Per prototype p, over the images I_p of its class: a_p[k] = #(images whose box holds part k) /
    #(images where part k is visible), a denominator of 0 read as 1. p is consistent (100) when
    max_k a_p[k] >= threshold, else 0; NaN when p saw no image. Also the part of that maximum (the
    first one on ties) and the maximum itself, in %."""
    hit = per_prototype_sum(records, records.codes == 1)  # (P, K)
    seen = per_prototype_sum(records, records.codes >= 0)
    frac = hit / np.maximum(seen, 1)
    none = records.images == 0
    best, top = frac.argmax(axis=1), frac.max(axis=1)  # K >= 1: every dataset with parts has one
    return {"part": np.where(none, "", np.array(records.parts, dtype=object)[best]),
            "part_frac": np.where(none, np.nan, 100.0 * top),
            "consistency": np.where(none, np.nan, np.where(top >= records.threshold, 100.0, 0.0))}


def stability(records: PartRecords) -> dict[str, np.ndarray]:
    """Per prototype: % of its images whose part codes are the same with and without noise (the whole
    vector: an image whose box holds no part either time counts as stable); NaN when it saw no image."""
    if records.codes_noisy is None:
        raise ValueError("stability needs the noisy pass (part_hits_noisy)")
    same = (records.codes == records.codes_noisy).all(axis=1)
    kept = per_prototype_sum(records, same[:, None])[:, 0]
    images = records.images
    return {"stability": np.where(images == 0, np.nan, 100.0 * kept / np.maximum(images, 1))}


def per_prototype_sum(records: PartRecords, values: np.ndarray) -> np.ndarray:
    """(T, K) values of the pairs -> (P, K) summed per prototype."""
    out = np.zeros((records.prototypes, values.shape[1]))
    np.add.at(out, records.proto, values.astype(np.float64))
    return out
