"""The built-in demo: the ProtoShapes dataset and a small ProtoPNet trained on it.

The weights ship inside the package (protoshapes.safetensors, with protoshapes.json
recording how they were trained: scripts/train_demo.py), and so do their prototypes' source
patches in the train split (protoshapes-sources.json, which the report reads instead of
searching). No torch import here, so the CLI can name the defaults cheaply.
"""

from __future__ import annotations

from pathlib import Path

from protobench.errors import CheckpointError

DEMO_DATA = "protoshapes"  # the reserved --data name (the ProtoShapes layout: protobench.demo.shapes)
DEMO_TRAIN, DEMO_TEST = f"{DEMO_DATA}:train", f"{DEMO_DATA}:test"  # finetune's defaults on the demo
# `protobench evaluate` with no arguments evaluates this many of the demo's test images (a fixed-seed subset,
# as --limit), so that the demo and its report take under 25 s on two CPU cores; --limit 150 takes them all
DEMO_LIMIT = 72
DEMO_CKPT = Path(__file__).with_name("protoshapes.safetensors")
DEMO_RECORD = Path(__file__).with_name("protoshapes.json")
DEMO_SOURCES = Path(__file__).with_name("protoshapes-sources.json")  # its prototypes' source patches (report.sources)


def is_demo_data(data) -> bool:
    """Whether a --data value names the demo data: protoshapes or protoshapes:<split>."""
    return str(data).partition(":")[0] == DEMO_DATA


def is_demo_checkpoint(path) -> bool:
    """Whether a checkpoint path is the shipped demo model's file (False for a path that cannot be resolved,
    e.g. a symbolic link loop: the loader says what is wrong with it)."""
    try:
        return Path(path).resolve() == DEMO_CKPT.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symbolic link loop, before Python 3.13
        return False


def demo_checkpoint() -> str:
    """Path of the shipped demo model; a clear error if this installation lacks it."""
    if not DEMO_CKPT.is_file():
        raise CheckpointError(f"the demo model is missing from this installation ({DEMO_CKPT}): "
                              "reinstall protobench, or train it with `python scripts/train_demo.py`")
    return str(DEMO_CKPT)
