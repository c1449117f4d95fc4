"""Shared fixtures: tiny models whose behaviour is easy to check, tiny image folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from protobench.adapters.protopnet import ProtoPNetAdapter, ProtoPNetConfig


# One thread: tiny models gain nothing from two, and a shared machine's cores are not ours.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def tiny_config(**overrides) -> ProtoPNetConfig:
    base = dict(backbone="tinycnn", backbone_kwargs={"channels": [8, 16, 32]}, num_classes=3, num_prototypes=6,
                prototype_dim=8, img_size=32)
    base.update(overrides)
    return ProtoPNetConfig(**base)


@pytest.fixture
def tiny_adapter() -> ProtoPNetAdapter:
    return ProtoPNetAdapter.from_config(tiny_config(), seed=0)


@pytest.fixture
def tiny_ckpt(tmp_path, tiny_adapter) -> str:
    path = tmp_path / "tiny.safetensors"
    tiny_adapter.save(str(path))
    return str(path)


def write_image_folder(root, classes=3, per_class=4, size=40, seed=0) -> str:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"img{i}.png")
    return str(root)


@pytest.fixture
def image_folder(tmp_path) -> str:
    return write_image_folder(tmp_path / "data")
