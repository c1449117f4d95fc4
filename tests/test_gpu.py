"""On a CUDA device: the same numbers as the CPU (to float precision), bf16 close to fp32,
compile and the CLI. Skipped without CUDA (see conftest.py)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from protobench.core.protocol import EvalProtocol
from protobench.run.benchmark import evaluate_batch
from protobench.run.forward import Runtime, frozen_eval, model_forward
from protobench.cli.app import app

pytestmark = pytest.mark.gpu


def _batch(adapter, n=16):
    size = adapter.info.input_size
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=g) * 4 - 2
    return x, torch.arange(n) % adapter.info.num_classes, torch.arange(n)


def _evaluate(adapter, x, y, ids, device, protocol, **runtime):
    adapter.to(device)
    forward = model_forward(adapter, Runtime.for_device(torch.device(device), **runtime))
    with frozen_eval(adapter.model):
        return evaluate_batch(adapter, x.to(device), y.to(device), ids, protocol, forward)


def test_cuda_matches_cpu(tiny_adapter):  # precision fp32 is true fp32 (no TF32) on the GPU too
    x, y, ids = _batch(tiny_adapter)
    protocol = EvalProtocol.make(steps=5)
    cpu = _evaluate(tiny_adapter, x, y, ids, "cpu", protocol)
    gpu = _evaluate(tiny_adapter, x, y, ids, "cuda", protocol)
    assert torch.equal(cpu["proto"], gpu["proto"]) and torch.equal(cpu["pred_before"], gpu["pred_before"])
    assert torch.allclose(cpu["act_before"], gpu["act_before"], rtol=1e-4, atol=1e-5)
    # a pixel exactly at the 95th percentile may round to the other side: a box can differ by a row
    assert (cpu["protected_frac"] == gpu["protected_frac"]).float().mean() >= 0.85
    assert abs(cpu["PAC"].mean() - gpu["PAC"].mean()) < 0.5


def test_fp32_is_not_tf32(tiny_adapter):
    """Default PyTorch runs cuDNN convolutions in TF32; protobench's fp32 must not."""
    seen = []
    hook = tiny_adapter.model.features.register_forward_hook(
        lambda *_: seen.append(torch.backends.cudnn.allow_tf32))
    x, y, ids = _batch(tiny_adapter, 2)
    _evaluate(tiny_adapter, x, y, ids, "cuda", EvalProtocol.make(steps=1))
    hook.remove()
    assert seen and not any(seen)
    assert torch.backends.cudnn.allow_tf32  # restored afterwards


def test_demo_gpu_matches_cpu_accuracy():
    """The demo model classifies the demo test images as on the CPU (TF32 in the prototype
    layer once cost it 1.3 points and halved its PAC)."""
    from protobench.adapters.protopnet import ProtoPNetAdapter
    from protobench.demo import demo_checkpoint
    from protobench.demo.shapes import ProtoShapes

    adapter = ProtoPNetAdapter.load(demo_checkpoint())
    data = ProtoShapes("test", adapter.info.mean, adapter.info.std)
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor(data.labels)
    forward = {}
    for device in ("cpu", "cuda"):
        adapter.to(device)
        fn = model_forward(adapter, Runtime.for_device(torch.device(device)))
        with frozen_eval(adapter.model), torch.no_grad():
            forward[device] = fn(x.to(device)).logits.argmax(dim=1).cpu()
    assert torch.equal(forward["cpu"], forward["cuda"])
    assert (forward["cuda"] == y).float().mean() == 1.0


@pytest.mark.parametrize("precision", ["tf32", "bf16", "fp16"])
def test_half_precision_stays_close_to_fp32(tiny_adapter, precision):
    x, y, ids = _batch(tiny_adapter, 32)
    protocol = EvalProtocol.make(steps=5)
    full = _evaluate(tiny_adapter, x, y, ids, "cuda", protocol)
    half = _evaluate(tiny_adapter, x, y, ids, "cuda", protocol, precision=precision)
    assert all(torch.isfinite(half[k]).all() for k in ("PAC", "PLC", "act_after"))
    assert (full["proto"] == half["proto"]).float().mean() > 0.8
    assert abs(full["PAC"].mean() - half["PAC"].mean()) < 5


def test_compiled_forward_matches_eager(tiny_adapter):
    x, y, ids = _batch(tiny_adapter)
    protocol = EvalProtocol.make(steps=3)
    eager = _evaluate(tiny_adapter, x, y, ids, "cuda", protocol)
    compiled = _evaluate(tiny_adapter, x, y, ids, "cuda", protocol, compile=True)
    assert torch.allclose(eager["act_before"], compiled["act_before"], rtol=1e-3, atol=1e-4)


def test_cli_on_cuda(tiny_ckpt, image_folder, tmp_path):
    out = tmp_path / "o"
    result = CliRunner().invoke(app, ["evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", str(out),
                                      "--device", "cuda", "--steps", "3", "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["device"].startswith("cuda") and meta["runtime"]["channels_last"] is True


def test_the_part_pass_on_cuda_matches_the_cpu():
    """Consistency and stability of the demo model on the GPU: the CPU's part codes, up to the rare
    peak that float rounding moves by a pixel across a box border."""
    import pandas as pd

    from protobench.adapters.protopnet import ProtoPNetAdapter
    from protobench.demo import demo_checkpoint
    from protobench.demo.shapes import ProtoShapes
    from protobench.run import benchmark, partpass
    from protobench.run.context import RunContext

    suites = ("consistency", "stability")
    tables = {}
    for device in ("cpu", "cuda"):
        adapter = ProtoPNetAdapter.load(demo_checkpoint()).to(device)
        data = ProtoShapes("test", adapter.info.mean, adapter.info.std)
        found = partpass.locations(data, range(len(data)), suites)
        passes = partpass.plan(suites, partpass.PartSettings(), adapter, found, 0)
        context = RunContext.resolve(adapter.device, adapter.info.input_size)
        records, _ = benchmark.run(adapter, data, data.paths, EvalProtocol(), context, passes=passes)
        tables[device] = pd.DataFrame(records)
    for column in ("part_hits", "part_hits_noisy"):
        same = (tables["cpu"][column] == tables["cuda"][column]).mean()
        assert same >= 0.95, column
