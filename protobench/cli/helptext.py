"""Help texts and defaults of the commands' options.

The lists of registered names in them ({attacks}, {layouts}, {regions}, {tolerances}) are filled in from the
registries when a command's help is shown (RegistryHelp), so a plugin's names appear and none is copied
here by hand; `protobench --help` itself reads no registry and imports no torch.
"""

from __future__ import annotations

from typing import Any, Callable

import typer.core

from protobench.data.layouts import MAX_IMAGE_PIXELS as MAX_PIXELS  # noqa: E402 - torch-free, kept once there
from protobench.demo import DEMO_LIMIT  # noqa: E402 - torch-free

LIMIT_HELP = f"Evaluate a fixed-seed random subset of N images. [default: all; the demo: {DEMO_LIMIT}]"
MAX_PIXELS_HELP = "Skip images with more pixels than this (read from the header, before decoding); 0: no limit."
DATASET_HELP = "Dataset layout: {layouts}. [default: detected from --data]"
ADAPTER_OPTION_HELP = "An option of the adapter, key=value; repeat it for several (docs/adapters.md)."
METRICS_HELP = ("What to measure, comma-separated: misalignment (the attack: PLC, PAC, PRC, accuracy), "
                "consistency, stability (these two need part annotations: docs/datasets.md), or a plugin's suite.")
TOL_HELP = ("An absolute tolerance, METRIC=VALUE, METRIC one of {tolerances}; repeat it for several. "
            "[default: each metric's own, docs/ci.md]")

# The protocol's options (protobench.core.protocol; docs/metrics.md, The procedure and Protocols)
PROTOCOL_HELP = ("default (pgd, clipped), reference (the paper's code: noise, no clip) or protovit (ProtoViT's "
                 "copy: noise, no clip, token region, token PLC).")
ATTACK_HELP = "The attack: {attacks}. [default: from --protocol]"
SELECT_HELP = ("Which prototypes are attacked: top-proto (the image's most active prototype, of any class) or "
               "gt-protos (all the prototypes of the image's true class, together; p* is the most active of "
               "them). [default: top-proto]")
MARGIN_HELP = "Pixels around each protected box. [default: box: 10 at 224 px, scaled; tokens: 0]"
REGION_HELP = ("Protected region: {regions}; box is the paper's (the upsampled map's top-5% box plus --margin), "
               "tokens the boxes of the tokens the prototype matched. [default: from --protocol]")
PLC_HELP = ("PLC on pixels (the paper's: upsampled map, top 10%) or tokens (ProtoViT's: per part on the model's "
            "grid, 0 unless a matched token moved). [default: from --protocol]")


def _names(module: str, registry: str) -> Callable[[], str]:
    def names() -> str:
        import importlib

        found = getattr(importlib.import_module(module), registry).names()
        return ", ".join(found) if found else "none registered"

    return names


def _tolerances() -> str:
    from protobench.run.compare import tolerance_names

    return " ".join(tolerance_names())


LISTS: dict[str, Callable[[], str]] = {
    "{attacks}": _names("protobench.core.attack", "ATTACKS"),
    "{layouts}": _names("protobench.data.layouts", "LAYOUTS"),
    "{regions}": _names("protobench.core.regions", "REGIONS"),
    "{tolerances}": _tolerances,
}


def fill(text: str) -> str:
    """`text` with each list of registered names written out, and its default set off as typer sets off
    the defaults it shows itself (two spaces, then [default: ...])."""
    import re

    for token, names in LISTS.items():
        if token in text:
            text = text.replace(token, names())
    return re.sub(r"\s*\[default: ", "  [default: ", text)


class RegistryHelp(typer.core.TyperCommand):
    """A command whose option help is completed from the registries when the help is shown."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        for param in self.params:
            if isinstance(getattr(param, "help", None), str):
                param.help = fill(param.help)
        super().format_help(ctx, formatter)
