"""The ImageFolder layout, DIR/<class>/<image>: the fallback that claims any directory (docs/datasets.md)."""

from __future__ import annotations

from pathlib import Path

from protobench.data.layouts import LAYOUTS, Layout


class ImageFolderLayout(Layout):
    title = "ImageFolder"
    expects = "DIR/<class>/<image>"
    order = 100  # last: any directory is an ImageFolder to it, so every other layout is tried first
    class_noun = "class folders"

    def detect(self, data: str) -> Path | None:
        # any existing path: protobench.data.imagelist.ImageFolder says what is wrong with one that is no folder
        return Path(data) if Path(data).exists() else None

    def open(self, root: Path, split: None, info, max_pixels: int):
        from protobench.data.imagelist import ImageFolder

        return ImageFolder(root, info.input_size, info.mean, info.std, max_pixels=max_pixels)


LAYOUT = ImageFolderLayout()
LAYOUTS.add("imagefolder", LAYOUT)
