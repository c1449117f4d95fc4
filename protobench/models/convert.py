"""`protobench convert` as a library call: any supported checkpoint -> protobench safetensors.

The written file never needs pickle again. Before returning, the copy is loaded back and
run on a seeded random batch: it must give the same maps and logits as the original.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from protobench.errors import OutputError, ProtobenchError


def _outputs_match(first, second, size: int) -> float:
    import torch

    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pairs = list(zip(first(x), second(x)))
    return max(float((a.float() - b.float()).abs().max()) for a, b in pairs)


def convert(src: str, dst: str, adapter: str = "auto", options: dict[str, Any] | None = None,
            overwrite: bool = False) -> dict[str, Any]:
    """Load `src` with `adapter` (default: detect the family) and write it to `dst` (*.safetensors)."""
    from protobench.models.lookup import get_adapter
    from protobench.checkpoints.formats import sha256
    from protobench.files import atomic_path, check_writable_dir

    out = Path(dst)
    if out.suffix != ".safetensors":
        raise OutputError(f"the output {dst} must end in .safetensors")
    if out.is_dir():
        raise OutputError(f"the output {dst} is a directory: give a file name ending in .safetensors")
    if out.exists() and not overwrite:
        raise OutputError(f"{dst} already exists: pass --overwrite to replace it")
    check_writable_dir(out.parent)  # before the (possibly slow) load
    model = get_adapter(adapter).load(src, **(options or {}))
    with atomic_path(out) as tmp:  # OUT (even when it is SRC) is replaced only by a checked copy
        try:
            model.save(tmp, extra={"source": Path(src).name, "source_sha256": sha256(src)})
        except OutputError as err:  # e.g. a full disk: name the file the user asked for, not the temporary one
            raise OutputError(str(err).replace(tmp, dst)) from None
        except NotImplementedError as err:
            raise ProtobenchError(f"adapter {model.name or adapter!r} cannot write protobench checkpoints "
                                  f"({err})") from None
        diff = _outputs_match(model, type(model).load(tmp), model.info.input_size)
        if diff > 1e-5:
            raise ProtobenchError(f"the converted model's outputs differ from the original's by {diff:.3g}; "
                                  f"nothing was written (please report this with the {model.name!r} checkpoint)")
    return {"out": str(out), "adapter": model.name, "num_classes": model.info.num_classes,
            "num_prototypes": model.info.num_prototypes, "max_abs_diff": diff}
