"""Help texts and defaults of `protobench evaluate`'s options, written out here rather than read
from the modules they describe: those import torch (or every plugin's entry points), and
`protobench --help` must stay fast."""

MAX_PIXELS = 50_000_000  # protobench.data.imagelist.MAX_IMAGE_PIXELS
MAX_PIXELS_HELP = "Skip images with more pixels than this (read from the header, before decoding); 0: no limit."
# The built-in layouts: an unknown name still gets the registry's full list and a did-you-mean.
DATASET_HELP = ("Dataset layout: protoshapes, cub, cars, imagefolder or a plugin's (protobench.data.layouts; "
                "default: detected from --data).")

# The protocol's options (protobench.core.protocol; docs/metrics.md, The procedure and Protocols)
PROTOCOL_HELP = ("default (pgd, clipped), reference (the paper's code: noise, no clip) or protovit (ProtoViT's "
                 "copy: noise, no clip, token region, token PLC).")
MARGIN_HELP = "Pixels around each protected box [box: 10 at 224 px, scaled; tokens: 0]."
REGION_HELP = ("Protected region: box (the paper's: the upsampled map's top-5% box plus --margin) or tokens "
               "(the boxes of the tokens the prototype matched) [from --protocol].")
PLC_HELP = ("PLC on pixels (the paper's: upsampled map, top 10%) or tokens (ProtoViT's: per part on the model's "
            "grid, 0 unless a matched token moved) [from --protocol].")
