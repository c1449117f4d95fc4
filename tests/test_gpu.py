"""On a CUDA device: the same numbers as the CPU (to float precision), bf16 close to fp32,
compile and the CLI. Skipped without CUDA (see conftest.py)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from protobench.benchmark import Protocol, Runtime, evaluate_batch, inference_mode, model_forward
from protobench.cli import app

pytestmark = pytest.mark.gpu


@pytest.fixture
def exact_cuda():
    """Full fp32 on the GPU (no TF32), so CPU and GPU differ only by summation order."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _batch(adapter, n=16):
    size = adapter.info.input_size
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=g) * 4 - 2
    return x, torch.arange(n) % adapter.info.num_classes, torch.arange(n)


def _evaluate(adapter, x, y, ids, device, protocol, **runtime):
    adapter.to(device)
    forward = model_forward(adapter, Runtime.for_device(torch.device(device), **runtime))
    with inference_mode(adapter.model):
        return evaluate_batch(adapter, x.to(device), y.to(device), ids, protocol, forward)


def test_cuda_matches_cpu(tiny_adapter, exact_cuda):
    x, y, ids = _batch(tiny_adapter)
    protocol = Protocol.make(steps=5)
    cpu = _evaluate(tiny_adapter, x, y, ids, "cpu", protocol)
    gpu = _evaluate(tiny_adapter, x, y, ids, "cuda", protocol)
    assert torch.equal(cpu["proto"], gpu["proto"]) and torch.equal(cpu["pred_before"], gpu["pred_before"])
    assert torch.allclose(cpu["act_before"], gpu["act_before"], rtol=1e-4, atol=1e-5)
    assert torch.allclose(cpu["protected_frac"], gpu["protected_frac"])
    assert abs(cpu["PAC"].mean() - gpu["PAC"].mean()) < 0.5


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_stays_close_to_fp32(tiny_adapter, precision):
    x, y, ids = _batch(tiny_adapter, 32)
    protocol = Protocol.make(steps=5)
    full = _evaluate(tiny_adapter, x, y, ids, "cuda", protocol)
    half = _evaluate(tiny_adapter, x, y, ids, "cuda", protocol, precision=precision)
    assert all(torch.isfinite(half[k]).all() for k in ("PAC", "PLC", "act_after"))
    assert (full["proto"] == half["proto"]).float().mean() > 0.8
    assert abs(full["PAC"].mean() - half["PAC"].mean()) < 5


def test_compiled_forward_matches_eager(tiny_adapter):
    x, y, ids = _batch(tiny_adapter)
    protocol = Protocol.make(steps=3)
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
