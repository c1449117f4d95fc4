"""Help texts of `protobench evaluate`'s options. The built-in names come from the registries' folders
(listed, not imported: `protobench --help` stays fast and imports no torch); plugins' names are
left to the error message of an unknown name, which lists them all."""

from protobench.data.layouts import MAX_IMAGE_PIXELS as MAX_PIXELS
from protobench.registry import builtin_modules


def _either(names: list[str]) -> str:
    return ", ".join(names)


MAX_PIXELS_HELP = "Skip images with more pixels than this (read from the header, before decoding); 0: no limit."
DATASET_HELP = (f"Dataset layout: {_either(builtin_modules('protobench.layouts'))} or a plugin's "
                "(docs/datasets.md; default: detected from --data).")
ATTACK_HELP = f"{_either(builtin_modules('protobench.attacks'))}, or an attack a plugin registered [default: from --protocol]."
METRIC_NAMES = " ".join(builtin_modules("protobench.metrics"))

# The protocol's options (protobench.core.protocol; docs/metrics.md, The procedure and Protocols)
PROTOCOL_HELP = ("default (pgd, clipped), reference (the paper's code: noise, no clip) or protovit (ProtoViT's "
                 "copy: noise, no clip, token region, token PLC).")
MARGIN_HELP = "Pixels around each protected box [box: 10 at 224 px, scaled; tokens: 0]."
REGION_HELP = (f"Protected region: {_either(builtin_modules('protobench.regions'))} or a plugin's (docs/metrics.md: "
               "box is the paper's, the upsampled map's top-5% box plus --margin; tokens the boxes of the tokens "
               "the prototype matched) [from --protocol].")
PLC_HELP = ("PLC on pixels (the paper's: upsampled map, top 10%) or tokens (ProtoViT's: per part on the model's "
            "grid, 0 unless a matched token moved) [from --protocol].")
