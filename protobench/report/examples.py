"""examples.safetensors: the tensors of a run's worst and best images, kept in its directory by
`protobench evaluate --save-examples K`, so a report can be drawn where the checkpoint is gone.

The file (safetensors: tensors and text, never a pickle) holds, for the K worst and K best images by
PAC and by PLC (each image once): `index`, `images`, `images_adv`, `attackable`, `map_star`,
`map_star_adv` (see pixels.Pixels), and in its metadata the run it belongs to (checkpoint sha256,
dataset fingerprint, protocol, limit), the normalization and the class names. About 2 x 3 x S x S x 4
bytes per image: 1.2 MB at 224 px.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from protobench.report.runs import ReportError, Run

FILE = "examples.safetensors"
FORMAT = "protobench-examples/1"
TENSORS = ("index", "images", "images_adv", "attackable", "map_star", "map_star_adv")
IDENTITY = ("checkpoint_sha256", "dataset_fingerprint", "protocol", "limit")  # meta.json fields it must match
MAX_EXAMPLES = 1000  # --save-examples: more is a typo (4 x 1000 images of 224 px would be 5 GB)


def identity(meta: dict[str, Any]) -> str:
    return json.dumps({key: meta.get(key) for key in IDENTITY}, sort_keys=True)


def save_examples(run_dir: str | Path, k: int, device: str = "auto", trusted: tuple[str, ...] = ()) -> dict[str, Any]:
    """Re-run the K worst and K best images of a finished run (checked against its CSV) and keep their
    tensors in RUN_DIR/examples.safetensors; K larger than the run's images keeps them all. `trusted`:
    the import paths the user named (protobench.report.pixels.adapter_of)."""
    import torch

    from protobench.report.pixels import verified_rerun
    from protobench.report.runs import load_run, read_meta
    from protobench.report.tables import picks

    check_count(k)
    run = load_run(Path(run_dir), read_meta(Path(run_dir)))
    run.label = run.model
    k = min(k, run.n)
    indices = sorted({pick.index for pick in picks(run.per_image, k, k)})
    pixels, _ = verified_rerun(run, indices, device=device, trusted=trusted)
    tensors = {name: getattr(pixels, name) for name in TENSORS if name != "index"}
    tensors["index"] = torch.tensor(pixels.indices, dtype=torch.long)
    path = Path(run_dir) / FILE
    save_tensors(path, run.meta, tensors, pixels.mean, pixels.std, pixels.classes)
    return {"path": str(path), "images": len(indices), "k": k}


def save_tensors(path: Path, meta: dict[str, Any], tensors: dict[str, Any], mean: Any, std: Any,
                 classes: list[str]) -> None:
    """Write the examples file of the run `meta` describes (atomically: never half a file)."""
    from protobench.files import write_safetensors

    metadata = {"format": FORMAT, "run": identity(meta), "mean": json.dumps(list(mean)), "std": json.dumps(list(std)),
                "classes": json.dumps(list(classes))}
    write_safetensors(path, {name: t.contiguous() for name, t in tensors.items()}, metadata)


def check_count(k: Any) -> None:
    from protobench.errors import OptionError

    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_EXAMPLES:
        raise OptionError(f"--save-examples must be a whole number from 1 to {MAX_EXAMPLES}, got {k}")


def load_examples(run: Run) -> Any:
    """The saved tensors of `run`, checked to belong to it; one line when missing, damaged or another run's."""
    from protobench.report.pixels import Pixels

    path = run.dir / FILE
    if not path.is_file():
        raise ReportError(f"{run.dir} has no {FILE}: evaluate it with --save-examples K to keep the drawn images' "
                          "tensors, or report with --examples rerun (needs its checkpoint and data) or none")
    tensors, metadata = _read(path)
    if metadata.get("run") != identity(run.meta):
        raise ReportError(f"{path} was saved from another run than {run.dir / 'meta.json'} (checkpoint, data or "
                          "protocol differ): save it again with --save-examples, or use --examples rerun / none")
    return Pixels(indices=[int(i) for i in tensors.pop("index")], mean=tuple(metadata["mean"]),
                  std=tuple(metadata["std"]), classes=list(metadata["classes"]),
                  source=f"saved by evaluate --save-examples in {path}", **tensors)


def _read(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
        tensors = load_file(str(path))
        meta = {key: json.loads(raw[key]) for key in ("mean", "std", "classes")}
        meta["run"] = raw.get("run")
        ok = (raw.get("format") == FORMAT and set(tensors) == set(TENSORS) and _consistent(tensors)
              and _numbers(meta["mean"]) and _numbers(meta["std"])
              and isinstance(meta["classes"], list) and all(isinstance(c, str) for c in meta["classes"]))
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        raise ReportError(f"{path} is damaged ({type(err).__name__}): save it again with evaluate "
                          "--save-examples K") from None
    if not ok:
        raise ReportError(f"{path} is not a {FORMAT} file (wrong tensors, shapes or metadata): save it again with "
                          "evaluate --save-examples K")
    return tensors, meta


def _numbers(values: Any) -> bool:
    """A normalization (mean or std) as the examples file records it: three finite numbers."""
    import math

    return (isinstance(values, list) and len(values) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values))


def _consistent(t: dict[str, Any]) -> bool:
    n = len(t["index"])
    image = tuple(t["images"].shape)
    return (len(image) == 4 and image[0] == n and image[1] == 3 and tuple(t["images_adv"].shape) == image
            and tuple(t["attackable"].shape) == (n, 1, *image[2:]) and t["map_star"].dim() == 3
            and tuple(t["map_star_adv"].shape) == tuple(t["map_star"].shape) and len(t["map_star"]) == n)
