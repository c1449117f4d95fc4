"""`evaluate --metrics`: which passes a run makes, the part pass of consistency and stability, and
the per_prototype.csv table (docs/metrics.md, Consistency and stability).

The attack pass runs when a selected metric reads the attack (a per-image or summary function); the
part pass when one reads part hits (a per-prototype function): it reuses the clean similarity maps
the attack starts from, so consistency costs no extra forward pass, and stability one more forward
pass of the noisy images. Nothing here is a loop over images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

from protobench import options
from protobench.core.metrics import MISALIGNMENT, per_prototype_specs, specs, suites
from protobench.errors import DataError, OptionError, ProtobenchWarning

if TYPE_CHECKING:
    import pandas as pd
    import torch

DEFAULT_METRICS = (MISALIGNMENT,)
IDENTITY_KEYS = ("metrics", "scorecard")  # what `identity` adds to a run's record, when it adds anything
PART_COLUMNS = ("part_hits", "part_hits_noisy")  # per_image.csv: clean and noisy part hits (core.partscores)


@dataclass(frozen=True)
class PartSettings:
    """The part pass's parameters; the defaults are the reference code's (docs/metrics.md)."""

    half_size: int | None = None  # box half-size, px; None: 36 at 224 px, scaled with the image side
    threshold: float = 0.8  # a prototype is consistent when one part is in its box in >= this share of images
    noise_std: float = 0.2  # stability noise, normalized input units
    noise_clip: float = 0.25  # each noise value clipped to [-noise_clip, noise_clip]

    def check(self) -> None:
        options.optional_integer("part box half-size", self.half_size, 0, 100_000)
        options.number("part threshold", self.threshold, 0, 1)
        options.number("stability noise std", self.noise_std, 0, 100)
        options.number("stability noise clip", self.noise_clip, 0, 100)

    def resolved(self, size: int) -> dict[str, Any]:
        from protobench.core.parts import default_half_size

        out = asdict(self)
        out["half_size"] = self.half_size if self.half_size is not None else default_half_size(size)
        return out


@dataclass(frozen=True)
class Passes:
    """What each batch computes: the attack, and the part pass when `parts` is given."""

    attack: bool = True
    parts: torch.Tensor | None = None  # (N, K, 3) keypoints of every dataset index in the input (part_hits)
    members: torch.Tensor | None = None  # (C, m) each class's prototypes (core.parts.class_members)
    half: int = 0  # box half-size, px
    noise: tuple[float, float] | None = None  # (std, clip) of the stability pass; None: no noisy pass
    seed: int = 0  # keys each image's noise, with its index


def check_metrics(names: Sequence[str]) -> tuple[str, ...]:
    """--metrics values: registered suite names (OptionError with a suggestion otherwise), in table order."""
    import difflib

    known = suites()
    chosen = [n.strip() for name in names for n in str(name).split(",") if n.strip()]
    if not chosen:
        raise OptionError(f"--metrics needs at least one of {', '.join(known)}")
    for name in chosen:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise OptionError(f"--metrics: unknown metric {name!r}: {hint}use {', '.join(known)} (comma-separated)")
    return tuple(s for s in known if s in chosen)


def needs_attack(chosen: Sequence[str]) -> bool:
    return any(s.per_image is not None or s.summary is not None for s in specs(chosen))


def needs_noise(chosen: Sequence[str]) -> bool:
    return any(s.needs_noise for s in per_prototype_specs(chosen))


def part_columns(chosen: Sequence[str]) -> list[str]:
    """per_image.csv's part columns for these suites."""
    if not per_prototype_specs(chosen):
        return []
    return list(PART_COLUMNS) if needs_noise(chosen) else [PART_COLUMNS[0]]


def recorded(meta: dict[str, Any]) -> tuple[str, ...]:
    """The suites a run recorded in meta.json / run.json (runs before --metrics: misalignment)."""
    value = meta.get("metrics", list(DEFAULT_METRICS))
    return tuple(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else DEFAULT_METRICS


def locations(dataset, indices: Sequence[int], chosen: Sequence[str]):
    """The dataset's part keypoints (protobench.data.parts.PartLocations), or None when no chosen metric
    needs them; DataError when one does and the dataset has none."""
    if not per_prototype_specs(chosen):
        return None
    found = dataset.part_locations(indices) if hasattr(dataset, "part_locations") else None
    if found is None:
        kind = getattr(dataset, "kind", type(dataset).__name__)
        raise DataError(f"--metrics {','.join(chosen)} needs part annotations, which this {kind} dataset lacks: "
                        "use CUB-200-2011 with its parts/ folder, an ImageFolder with a parts.csv "
                        "(docs/datasets.md, Part annotations), or protoshapes")
    return found


def plan(chosen: Sequence[str], settings: PartSettings, adapter, found, seed: int) -> Passes:
    """The passes for `chosen` suites on this model, the keypoints `found` (None: no part pass)."""
    import torch

    from protobench.core.parts import class_members

    if found is None:
        return Passes(attack=needs_attack(chosen))
    resolved = settings.resolved(adapter.info.input_size)
    return Passes(attack=needs_attack(chosen), parts=torch.from_numpy(found.table).to(adapter.device),
                  members=class_members(adapter.prototype_class_identity), half=resolved["half_size"],
                  noise=(settings.noise_std, settings.noise_clip) if needs_noise(chosen) else None, seed=seed)


def prepare(chosen: Sequence[str], settings: PartSettings, adapter, dataset, indices: Sequence[int], data: str,
            seed: int) -> tuple[Any, Passes, dict[str, Any]]:
    """(keypoints or None, the passes, what the run's identity gains) for a run of `chosen` suites."""
    import warnings

    from protobench.run.sanity import part_warning

    found = locations(dataset, indices, chosen)
    if part_warning(found, adapter.info.input_size):
        warnings.warn(part_warning(found, adapter.info.input_size), ProtobenchWarning, stacklevel=2)
    passes = plan(chosen, settings, adapter, found, seed)
    return found, passes, identity(chosen, settings, adapter.info.input_size, found, getattr(dataset, "root", data))


def model_table(per_image: pd.DataFrame, chosen: Sequence[str], adapter, found, threshold: float):
    """per_prototype.csv of this model's run (prototype_table), or None without a part pass."""
    if found is None:
        return None
    from protobench.run.sanity import part_warning

    classes = adapter.prototype_class_identity.argmax(dim=1).tolist()
    table = prototype_table(per_image, chosen, classes, found.names, threshold)
    if table is not None and part_warning(found, adapter.info.input_size):  # nothing measured: undefined
        table[table.columns[3:]] = float("nan")
    return table


def identity(chosen: Sequence[str], settings: PartSettings, size: int, found, root) -> dict[str, Any]:
    """What --resume and compare must find equal beyond the attack's protocol: nothing for the default."""
    from protobench.run.provenance import dataset_fingerprint

    if tuple(chosen) == DEFAULT_METRICS:
        return {}
    out: dict[str, Any] = {"metrics": list(chosen)}
    if found is not None:
        out["scorecard"] = {**settings.resolved(size), "parts": list(found.names),
                            "parts_fingerprint": dataset_fingerprint(found.files, root)}
    return out


def measure_parts(forward, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, maps: torch.Tensor, passes: Passes,
                  size: int) -> dict[str, torch.Tensor]:
    """The part pass of one batch: each own-class prototype's part codes on the clean images (from
    their `maps`, not clipped) and, for stability, on the noisy images."""
    import torch

    from protobench.core.parts import part_hits, perturb

    where = passes.parts[ids.to(passes.parts.device)]
    slots, codes = part_hits(maps, y, passes.members, where, size, passes.half)
    out = {"part_slots": slots, "part_codes": codes}
    if passes.noise is not None:
        with torch.no_grad():
            noisy = forward(perturb(x, passes.seed, ids, *passes.noise)).maps
        out["part_codes_noisy"] = part_hits(noisy, y, passes.members, where, size, passes.half)[1]
    return out


def part_cells(values: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Pops the part pass's tensors from a batch's values: its per_image.csv cells instead."""
    from protobench.core.partscores import encode

    if "part_slots" not in values:
        return {}
    slots = values.pop("part_slots").numpy()
    cells = {"part_hits": encode(slots, values.pop("part_codes").numpy())}
    if "part_codes_noisy" in values:
        cells["part_hits_noisy"] = encode(slots, values.pop("part_codes_noisy").numpy())
    return cells


def prototype_table(per_image: pd.DataFrame, chosen: Sequence[str], classes: Sequence[int],
                    part_names: Sequence[str], threshold: float) -> pd.DataFrame | None:
    """per_prototype.csv: prototype, class, images, then each chosen per-prototype metric's columns;
    None when no chosen metric is per-prototype."""
    import pandas as pd

    from protobench.core.partscores import PartRecords, decode

    chosen_specs = per_prototype_specs(chosen)
    if not chosen_specs:
        return None
    proto, image, codes = decode(per_image["part_hits"].tolist(), len(part_names))
    noisy = None
    if "part_hits_noisy" in per_image.columns and needs_noise(chosen):
        noisy_proto, _, noisy = decode(per_image["part_hits_noisy"].tolist(), len(part_names))
        if noisy_proto.tolist() != proto.tolist():
            raise ValueError("part_hits and part_hits_noisy name different prototypes")
    if len(proto) and proto.max() >= len(classes):
        raise ValueError(f"part_hits names prototype {proto.max()}, but the model has {len(classes)}")
    records = PartRecords(len(classes), tuple(part_names), proto, image, codes, noisy, threshold)
    table = {"prototype": list(range(len(classes))), "class": list(classes), "images": records.images}
    for spec in chosen_specs:
        columns = spec.per_prototype(records)
        if spec.name not in columns:
            raise TypeError(f"metric {spec.name!r}: its per_prototype function must return a {spec.name!r} column")
        table.update(columns)
    return pd.DataFrame(table)
