"""ProtoViT's pickles name classes (model.PPNet, timm.models.*) that protobench never imports: a
payload in one is refused before it runs, modules planted under those names stay unimported, and
files it cannot read (timm >= 0.9's class names, a distilled DeiT) are one-line errors naming the file."""

import os
import sys

import pytest
import torch
from torch import nn

from hostile import Call
from originals_vit import VIT_LAYOUT
from protobench.errors import CheckpointError, OptionError
from protobench.models.lookup import get_adapter
from test_protovit import write_protovit


def test_a_payload_in_a_protovit_pickle_is_refused_and_never_runs(tmp_path):
    flag = tmp_path / "RAN"
    path, _ = write_protovit(tmp_path, edit=lambda net: setattr(net, "payload", Call(os.system, f"touch {flag}")))
    for name in ("auto", "protovit"):
        with pytest.raises(CheckpointError, match=r"refusing to load .*system"):
            get_adapter(name).load(str(path))
    assert not flag.exists()


def test_modules_planted_under_the_original_names_are_never_imported(tmp_path, monkeypatch):
    path, _ = write_protovit(tmp_path / "file")
    site, flag = tmp_path / "site", tmp_path / "IMPORTED"
    for module in ("model", "timm/__init__", "timm/models/__init__", "timm/models/vision_transformer",
                   "timm/models/layers/__init__", "timm/models/layers/mlp"):
        (site / module).parent.mkdir(parents=True, exist_ok=True)
        (site / f"{module}.py").write_text(f"open({str(flag)!r}, 'w').write('imported')\n")
    monkeypatch.syspath_prepend(str(site))
    assert get_adapter("auto").load(str(path)).name == "protovit"
    assert not flag.exists() and "model" not in sys.modules and "timm" not in sys.modules


def test_timm_0_9_class_names_are_refused_by_name(tmp_path):
    """timm >= 0.9 moved Mlp, PatchEmbed and DropPath to timm.layers; ProtoViT pins 0.4.12."""
    newer = {name.replace("timm.models.layers", "timm.layers"): classes for name, classes in VIT_LAYOUT.items()}
    path, _ = write_protovit(tmp_path, layout=newer)
    with pytest.raises(CheckpointError, match=r"refusing to load .*timm\.layers\.(mlp\.Mlp|patch_embed\.PatchEmbed)"):
        get_adapter("auto").load(str(path))


def test_a_distilled_deit_is_a_one_line_error_naming_the_file(tmp_path):
    def distill(net):  # DeiT's distillation token: a second prefix token, and a position embedding for it
        dim = net.features.embed_dim
        net.features.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        net.features.num_tokens = 2
        net.features.pos_embed = nn.Parameter(torch.zeros(1, 14 * 14 + 2, dim))

    path, _ = write_protovit(tmp_path, edit=distill)
    with pytest.raises(CheckpointError) as err:
        get_adapter("protovit").load(str(path))
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "dist_token" in message


def test_an_img_size_other_than_the_transformer_s_own_says_so(tmp_path):
    path, _ = write_protovit(tmp_path)  # 56 px: 14 x 14 tokens of 4 px, fixed by the position embeddings
    with pytest.raises(OptionError, match=r"img_size=28: .*10finetuned0\.8530\.pth is a transformer for 56 px images "
                                          r"\(its 14 x 14 position embeddings\); leave img_size out"):
        get_adapter("protovit").load(str(path), img_size=28)
    assert get_adapter("protovit").load(str(path), img_size=56).info.input_size == 56
