"""PIP-Net's ConvNeXt variant (convnext_tiny_26 or _13) is not in the weights: protobench reads it from
the run's `<log_dir>/metadata/args.txt`, as the original's save_args writes it, and says which
variant it assumed when there is none."""

import argparse
import os
import warnings

import pytest
import torch

from originals import PIPNetW, pipnet_convnext
from protobench.errors import AdapterError, CheckpointError, ProtobenchWarning
from protobench.models.lookup import get_adapter
from test_originals import outputs, randomize_batch_norm, slow_pipnet
from test_originals_cnn import assert_parity

# tiny widths that put the downsample convs on either side of the variants' thresholds (100 and 300), which
# get stride 1 above them: at 64 px, convnext_tiny_26 gives 6x6 maps and convnext_tiny_13 3x3
WIDTHS, DEPTHS = [8, 128, 320, 8], [1, 1, 1, 1]
CUB_ARGS = dict(dataset="CUB-200-2011", validation_size=0.0, net="convnext_tiny_26", batch_size=64, epochs=60,
                optimizer="Adam", lr=0.05, weight_decay=0.0, disable_cuda=False, log_dir="./runs/pipnet_cub",
                num_features=0, image_size=224, state_dict_dir_net="", freeze_epochs=10, disable_pretrained=False,
                seed=1, gpu_ids="", num_workers=8, bias=False)


def save_args(args: argparse.Namespace, directory) -> None:
    """util/args.py's save_args: one 'key: value' line per argument, strings in single quotes."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "args.txt"), "w") as f:
        for key, value in vars(args).items():
            if isinstance(value, str):
                value = f"'{value}'"
            f.write(f"{key}: {value}\n")


def write_run(tmp_path, net="convnext_tiny_13", args=True, **changes):
    """A PIP-Net log directory: checkpoints/net_trained_last and, unless args=False, metadata/args.txt."""
    model = PIPNetW(pipnet_convnext(WIDTHS, DEPTHS, threshold={"convnext_tiny_26": 100}.get(net, 300)), 8, 3).eval()
    randomize_batch_norm(model)
    log_dir = tmp_path / "runs" / "pipnet_cub"
    (log_dir / "checkpoints").mkdir(parents=True)
    path = log_dir / "checkpoints" / "net_trained_last"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    if args:
        save_args(argparse.Namespace(**{**CUB_ARGS, "net": net, **changes}), log_dir / "metadata")
    return path, model


def load_quietly(path, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProtobenchWarning)  # a variant read from args.txt warns of nothing
        return get_adapter("auto").load(str(path), **options)


def test_the_variant_is_read_from_args_txt(tmp_path):
    path, model = write_run(tmp_path, image_size=64)
    adapter = load_quietly(path)
    assert adapter.model.cfg.backbone_kwargs["stride1_above"] == 300 and adapter.info.input_size == 64
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_parity(adapter, x, slow_pipnet(model, x), (2, 8, 3, 3))


def test_without_args_txt_the_assumed_variant_is_said(tmp_path):
    path, model = write_run(tmp_path, args=False)
    with pytest.warns(ProtobenchWarning, match="assumed convnext_tiny_26 .*--adapter-option net=convnext_tiny_13"):
        adapter = get_adapter("auto").load(str(path))
    assert outputs(adapter, torch.randn(1, 3, 64, 64))[0].shape[2:] == (6, 6)  # wrong for this _13 model, as said
    assert outputs(load_quietly(path, net="convnext_tiny_13"), torch.randn(1, 3, 64, 64))[0].shape[2:] == (3, 3)


def test_the_option_wins_over_args_txt(tmp_path):
    path, _ = write_run(tmp_path, net="convnext_tiny_13")
    assert load_quietly(path, net="convnext_tiny_26").model.cfg.backbone_kwargs["stride1_above"] == 100


def test_args_of_a_resnet_run_beside_a_convnext_checkpoint_are_refused(tmp_path):
    path, _ = write_run(tmp_path, net="convnext_tiny_13")
    save_args(argparse.Namespace(**{**CUB_ARGS, "net": "resnet50"}), path.parent.parent / "metadata")
    with pytest.raises(CheckpointError, match="args.txt says net 'resnet50', but .* has a convnext backbone"):
        get_adapter("auto").load(str(path))
    with pytest.raises(AdapterError, match="net must be one of convnext_tiny_26, convnext_tiny_13, not 'resnet50'"):
        get_adapter("auto").load(str(path), net="resnet50")


def test_an_args_txt_that_is_not_one_is_not_read(tmp_path, monkeypatch):
    path, _ = write_run(tmp_path, args=False)
    metadata = path.parent.parent / "metadata"
    metadata.mkdir()
    (metadata / "args.txt").write_bytes(b"net: 'convnext_tiny_13'\n" + b"x" * (1 << 20))
    with pytest.warns(ProtobenchWarning, match="over 64 KB, so not the original's args.txt"):
        assert get_adapter("auto").load(str(path)).model.cfg.backbone_kwargs["stride1_above"] == 100
    (metadata / "args.txt").unlink()
    os.mkfifo(metadata / "args.txt")  # reading a FIFO would block forever: it is never opened
    with pytest.warns(ProtobenchWarning, match="assumed convnext_tiny_26"):
        get_adapter("auto").load(str(path))
    (metadata / "args.txt").unlink()
    (metadata / "args.txt").write_text("net: 'convnext_tiny_13'\n")

    def denied(*args, **kwargs):  # as for a file without read permission (the tests may run as root)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("protobench.adapters.pipnet.open", denied, raising=False)
    with pytest.warns(ProtobenchWarning, match="cannot read .*args.txt \\(Permission denied\\): ignored"):
        get_adapter("auto").load(str(path))
    monkeypatch.undo()
    (metadata / "args.txt").unlink()
    save_args(argparse.Namespace(**{**CUB_ARGS, "net": "convnext_tiny_13", "image_size": "huge"}), metadata)
    with pytest.raises(CheckpointError, match="says image_size 'huge', which is not a size in pixels"):
        get_adapter("auto").load(str(path))
