"""Hostile checkpoints: none may choose code to import, and none under 1 MB may cost much memory.

The files are made here, byte by byte where it matters (tests/hostile.py). Memory is the
process's peak resident size during the load, read from the kernel (VmHWM after resetting
it), not what the code believes it allocated.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from conftest import write_image_folder
from hostile import (Call, Storage, Tensor, binget, binput, dumps, global_op, peak_growth_mb, raw, torch_legacy,
                     torch_zip)
from protobench.models.lookup import get_adapter
from protobench.adapters.protopnet import ProtoPNetAdapter
from protobench.errors import AdapterError, CheckpointError, ProtobenchError
from test_cli import assert_one_line_error, invoke
from test_originals import write_ppnet

MARKER = "pwn_marker"  # a module that leaves a file behind if anything imports it
MEMORY_BOUND_MB = 256  # peak growth allowed while refusing any file below (the budgets are 128 MB)


def marker_module(directory, flag):
    (directory / f"{MARKER}.py").write_text(
        f"open({str(flag)!r}, 'w').write('imported')\nclass Adapter: pass\nclass PPNet: pass\n")


@pytest.fixture
def marker(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    flag = tmp_path / "IMPORTED"
    marker_module(site, flag)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, MARKER, raising=False)
    yield site, flag
    assert MARKER not in sys.modules and not flag.exists()


def protobench_file(tmp_path, name="tiny.safetensors", **meta):
    """A tiny ProtoPNet in protobench's format, its metadata changed by `meta` (None deletes a key)."""
    path = tmp_path / name
    ProtoPNetAdapter.tiny().save(str(path))
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    for key, value in meta.items():
        if value is None:
            metadata.pop(key)
        else:
            metadata[key] = value if isinstance(value, str) else json.dumps(value)
    save_file(load_file(str(path)), str(path), metadata=metadata)
    return path


def with_config(tmp_path, **changes):
    path = protobench_file(tmp_path)
    with safe_open(str(path), "pt") as f:
        config = json.loads(f.metadata()["config"])
    return protobench_file(tmp_path, config={**config, **changes})


# ---------------------------------------------------------------- no code chosen by a file


def test_metadata_naming_an_import_path_imports_nothing(tmp_path, marker):
    path = protobench_file(tmp_path, adapter=f"{MARKER}:Adapter")
    with pytest.raises(CheckpointError, match="never imports code a checkpoint names"):
        get_adapter("auto").load(str(path))
    with pytest.raises(CheckpointError, match="never imports code"):
        get_adapter("protopnet").load(str(path))
    result = invoke("evaluate", "--ckpt", path, "--data", write_image_folder(tmp_path / "d"), "--out", tmp_path / "o")
    assert_one_line_error(result, "never imports code")


def test_metadata_naming_an_unregistered_family_asks_for_the_plugin(tmp_path, marker):
    path = protobench_file(tmp_path, adapter=MARKER)
    with pytest.raises(AdapterError, match=f"'{MARKER}', which is not installed here.*--adapter package.module:Class"):
        get_adapter("auto").load(str(path))


def test_metadata_naming_auto_is_no_family(tmp_path):
    path = protobench_file(tmp_path, adapter="auto")  # used to recurse until RecursionError
    with pytest.raises(CheckpointError, match="'auto', which is not a model family"):
        get_adapter("auto").load(str(path))


@pytest.mark.parametrize("legacy", [False, True])
def test_pickle_naming_a_module_imports_nothing(tmp_path, marker, legacy):
    pkl = raw(global_op(MARKER, "PPNet"), b")R")  # GLOBAL pwn_marker.PPNet, EMPTY_TUPLE, REDUCE
    path = (torch_legacy if legacy else torch_zip)(tmp_path / "model.pth", pkl)
    with pytest.raises(CheckpointError, match=f"refusing to load .*{MARKER}.PPNet"):
        get_adapter("auto").load(str(path))


def test_original_class_names_are_never_imported(tmp_path, marker, monkeypatch):
    path, _ = write_ppnet(tmp_path)  # names model.PPNet and resnet_features.*
    site, flag = marker
    for name in ("model", "resnet_features"):
        (site / f"{name}.py").write_text(f"open({str(flag)!r}, 'w').write('imported')\n")
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert get_adapter("auto").load(str(path)).name == "protopnet"
    assert not flag.exists() and "model" not in sys.modules and "resnet_features" not in sys.modules


def test_python_m_protobench_ignores_modules_in_the_current_directory(tmp_path):
    """`python -m protobench` run where a checkpoint was downloaded, beside modules named as
    the ones it imports (rich, typer), as the pickle's classes (model, resnet_features), and as
    an adapter its metadata names: none of them runs."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    ckpt, _ = write_ppnet(downloads)
    flag = tmp_path / "IMPORTED"
    for name in ("rich", "typer", "model", "resnet_features", MARKER):
        (downloads / f"{name}.py").write_text(f"open({str(flag)!r}, 'a').write({name!r})\n")
    named = protobench_file(downloads, "named.safetensors", adapter=MARKER)
    data = write_image_folder(tmp_path / "data", classes=3, per_class=1, size=32)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "protobench", *map(str, args)], cwd=downloads, env=env,
                              capture_output=True, text=True, timeout=600)

    ok = run("evaluate", "--ckpt", ckpt.name, "--data", data, "--out", tmp_path / "out", "--steps", 1)
    assert ok.returncode == 0, ok.stderr
    refused = run("evaluate", "--ckpt", named.name, "--data", data, "--out", tmp_path / "out2")
    assert refused.returncode != 0 and "not installed here" in refused.stderr
    assert not flag.exists(), flag.read_text()


# ---------------------------------------------------------------- no memory blow-up from a small file


def bytearray_call(tmp_path, legacy=False):
    pkl = dumps({"model_state_dict": {}, "x": Call(bytearray, 600_000_000)}, legacy)  # 600 MB if called
    return (torch_legacy if legacy else torch_zip)(tmp_path / "m.pth", pkl), "builtins.bytearray"


def memo_index(tmp_path):  # CPython's C unpickler sizes its memo array by the largest index (800 MB here)
    return torch_legacy(tmp_path / "m.pth", raw(b"N", binput(100_000_000))), "not a model"


def zip_bomb(tmp_path):
    n = 50_000_000  # 200 MB of zeros, deflated to about 200 KB
    pkl = dumps({"w": Tensor(Storage("0", n), (n,), (1,))})
    return torch_zip(tmp_path / "m.pth", pkl, {"0": bytes(4 * n)}, compress=True), "compressed member"


def member_beyond_the_file(tmp_path):
    path = torch_zip(tmp_path / "m.pth", dumps({"w": Tensor(Storage("0", 4), (4,), (1,))}), {"0": bytes(16)})
    data = bytearray(path.read_bytes())
    entry = data.rindex(b"archive/data/0") - 46  # its central directory record
    assert data[entry:entry + 4] == b"PK\x01\x02"
    data[entry + 20:entry + 28] = (0x7FFFFFF0).to_bytes(4, "little") * 2  # compressed and full size: 2 GB
    path.write_bytes(bytes(data))
    return path, "does not fit"


def stride_zero(tmp_path, legacy=False):
    """A ProtoPNet state dict whose prototypes, ones and last layer claim 10^7 - 1 prototypes over one float."""
    _, net = write_ppnet(tmp_path, backbone="vgg")
    state = net.state_dict()
    n = 9_999_999
    state["prototype_vectors"] = torch.zeros(1, 1, 1, 1).expand(n, 4, 1, 1)
    state["ones"] = torch.ones(1, 1, 1, 1).expand(n, 4, 1, 1)
    state["last_layer.weight"] = torch.zeros(1, 1).expand(3, n)
    path = tmp_path / "stride0.pth"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return path, "reaches past its storage"


def zero_size_add_on(tmp_path):
    """An empty tensor may claim any width: an add-on conv of 2*10^7 input channels (320 MB and up if built)."""
    _, net = write_ppnet(tmp_path, backbone="vgg")
    state = net.state_dict()
    state["add_on_layers.0.weight"] = torch.zeros(0, 20_000_000, 1, 1)
    path = tmp_path / "m.pth"
    torch.save(state, path)
    return path, "neither ProtoPNet's 'regular' nor its 'bottleneck'"


def legacy_storage_larger_than_the_file(tmp_path):
    path = tmp_path / "m.pth"
    torch.save({"w": torch.zeros(123457)}, path, _use_new_zipfile_serialization=False)
    declared = b"J" + (123457).to_bytes(4, "little")  # BININT 123457: the storage's element count
    path.write_bytes(path.read_bytes().replace(declared, b"J" + (2**31 - 1).to_bytes(4, "little")))
    return path, "bytes of storages in a file of"


def shared_module_tree(tmp_path):
    """Each level holds the level below twice: 2^20 paths through 21 distinct modules."""
    tree = nn.Linear(1, 1)
    for _ in range(20):
        tree = nn.Sequential(tree, tree)
    path = tmp_path / "m.pth"
    torch.save(tree, path)
    return path, "more than 100000"


def shared_state(tmp_path):
    """One 40,000-entry dict, memoized once, set as the state of 400 objects (1 GB if copied each time)."""
    items = b"".join(b"X" + len(k).to_bytes(4, "little") + k + b"N" for k in (f"k{i}".encode() for i in range(40_000)))
    build = binget(1) + b")\x81" + binget(0) + b"b0"  # NEWOBJ Sequential, BUILD with the dict, POP
    pkl = raw(b"}(", items, b"u", binput(0), b"0", global_op("torch.nn.modules.container", "Sequential"), binput(1),
              b"0", build * 400, b"N")
    return torch_zip(tmp_path / "m.pth", pkl), "MB of objects"


def set_of_a_tensor(tmp_path):  # iterating a tensor makes one Python object per element
    pkl = dumps({"w": [Call(set, Tensor(Storage("0", 100_000), (100_000,), (1,))) for _ in range(20)]})
    return torch_zip(tmp_path / "m.pth", pkl, {"0": bytes(400_000)}), "passes a Tensor"


def safetensors_header_beyond_the_file(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes((50_000_000).to_bytes(8, "little") + b"{}" + bytes(100))
    return path, "header declares 50000000 bytes"


def safetensors_overlapping_tensors(tmp_path):
    header = {f"t{i}": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]} for i in range(1000)}
    text = json.dumps(header).encode()
    path = tmp_path / "m.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text + bytes(4000))
    return path, "overlapping tensors"


def safetensors_wide_backbone(tmp_path):  # two convs of 3072 x 3072 x 3 x 3 floats if built: 680 MB
    return with_config(tmp_path, backbone_kwargs={"channels": [3072, 3072, 3072]}), "weights do not fit"


def safetensors_many_prototypes(tmp_path):  # 100,000 x 1024 prototypes and ones if built: 800 MB
    return with_config(tmp_path, num_prototypes=100_000, prototype_dim=1024), "weights do not fit"


@pytest.mark.parametrize("make", [
    bytearray_call, lambda p: bytearray_call(p, legacy=True), memo_index, zip_bomb, member_beyond_the_file,
    stride_zero, lambda p: stride_zero(p, legacy=True), zero_size_add_on, legacy_storage_larger_than_the_file,
    shared_module_tree,
    shared_state, set_of_a_tensor, safetensors_header_beyond_the_file, safetensors_overlapping_tensors,
    safetensors_wide_backbone, safetensors_many_prototypes,
])
def test_small_file_cannot_exhaust_memory(tmp_path, make):
    path, needle = make(tmp_path)
    assert path.stat().st_size < 1_000_000
    # protopnet, not auto: the stride-0 state dict would otherwise stop at "ProtoPNet or TesNet?"
    raised, growth = peak_growth_mb(lambda: get_adapter("protopnet").load(str(path)))
    assert isinstance(raised, ProtobenchError), repr(raised)
    assert needle in str(raised), str(raised)
    assert growth < MEMORY_BOUND_MB, f"{growth:.0f} MB"
