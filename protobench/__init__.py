"""protobench: how faithful are a prototype network's explanations?

Measures the spatial misalignment of prototypical-part explanations (PLC / PAC / PRC)
with a batched adversarial attack restricted to pixels outside each prototype's
activation region. See docs/metrics.md; the Python API: docs/python.md.

    import protobench
    model = protobench.load("model.pth")                # or protobench.wrap(module)
    results = protobench.evaluate(model, "CUB_200_2011/", limit=100)
    results.summary, results.per_image                  # pandas DataFrames
    results.save("results/"); results.report("results/report")

The functions are imported the first time they are used: `import protobench` imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first use)
_LAZY = {
    "load": "protobench.api.model",
    "wrap": "protobench.api.model",
    "Model": "protobench.api.model",
    "evaluate": "protobench.api.evaluate",
    "Results": "protobench.api.results",
    "open_images": "protobench.api.data",
    "compare": "protobench.api.tools",
    "Comparison": "protobench.api.tools",
    "finetune": "protobench.api.finetune",
    "Finetuned": "protobench.api.finetune",
    **{name: "protobench.errors" for name in ("ProtobenchError", "AdapterError", "CheckpointError", "DataError",
                                               "OptionError", "OutputError", "Interrupted", "ProtobenchWarning")},
}

__all__ = ["load", "wrap", "evaluate", "open_images", "compare", "finetune", "Model", "Results", "Comparison",
           "Finetuned", "ProtobenchError", "AdapterError", "CheckpointError", "DataError", "OptionError",
           "OutputError", "Interrupted", "ProtobenchWarning", "__version__"]

if TYPE_CHECKING:
    from protobench.errors import (AdapterError, CheckpointError, DataError, Interrupted, OptionError, OutputError,
                                   ProtobenchError, ProtobenchWarning)
    from protobench.api.data import open_images
    from protobench.api.evaluate import evaluate
    from protobench.api.model import Model, load, wrap
    from protobench.api.results import Results
    from protobench.api.finetune import Finetuned, finetune
    from protobench.api.tools import Comparison, compare


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'protobench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
