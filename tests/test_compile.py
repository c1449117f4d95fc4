"""--compile: torch.compile of the forward (and with it the input gradient), in any of its modes;
every model call at the batch shape, the last partial batch padded (no recompilation); per-image
results as eager fp32's within the tolerance of docs/metrics.md, Reproducibility."""

import pytest
import torch

from protobench.core.protocol import EvalProtocol
from protobench.errors import OptionError
from protobench.run import benchmark
from protobench.run.context import RunContext
from protobench.run.forward import Runtime


class Images(torch.utils.data.Dataset):
    def __init__(self, n, size, classes):
        g = torch.Generator().manual_seed(1)
        self.x = torch.rand(n, 3, size, size, generator=g) * 4 - 2
        self.classes = classes

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], i % self.classes, i


def _run(adapter, data, runtime, batch=4, steps=3):
    context = RunContext(torch.device("cpu"), runtime, batch, 0)
    records, skipped = benchmark.run(adapter, data, [str(i) for i in range(len(data))],
                                     EvalProtocol.make(steps=steps), context)
    assert not skipped
    return {key: torch.tensor([r[key] for r in records]) for key in records[0] if key != "path"}


def test_a_compiled_model_sees_the_batch_shape_only(tiny_adapter, monkeypatch):
    """10 images in batches of 4: the last batch (2 images) reaches the model padded to 4, and
    the 2 padding rows' results are dropped; the numbers are eager's with the same call size."""
    seen, modes = [], []
    forward = tiny_adapter.forward

    def fake_compile(fn, mode=None):
        modes.append(mode)
        return lambda x: (seen.append(tuple(x.shape)), fn(x))[1]

    monkeypatch.setattr(torch, "compile", fake_compile)
    data = Images(10, tiny_adapter.info.input_size, tiny_adapter.info.num_classes)
    compiled = _run(tiny_adapter, data, Runtime(compile="max-autotune"))
    assert modes == ["max-autotune"]
    assert {s[0] for s in seen} == {4} and len(seen) == 3 * (3 + 2)  # 3 batches x (2 passes + 3 steps)
    eager = _run(tiny_adapter, data, Runtime(chunk=4))  # same call size, zero padding, not compiled
    assert tiny_adapter.forward == forward
    assert compiled["index"].tolist() == list(range(10))
    for key, value in eager.items():
        assert torch.equal(compiled[key], value), key


def test_compile_true_is_the_default_mode():
    assert Runtime(compile=True).compile_mode == "default"
    assert Runtime().compile_mode is None
    assert Runtime(compile="reduce-overhead").compile_mode == "reduce-overhead"


def test_an_unknown_compile_mode_is_refused():
    with pytest.raises(OptionError, match="compile mode 'fastest'"):
        Runtime.for_device(torch.device("cpu"), compile="fastest")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_matches_eager_fp32(tiny_adapter, mode):
    """Inductor on the CPU (reduce-overhead's CUDA graphs do not apply there): the tolerance of
    docs/metrics.md, Reproducibility: clean activations within 1e-5, p* and predictions identical,
    means within 0.04 (few steps: the attack's sign steps do not compound yet)."""
    torch._dynamo.reset()
    data = Images(10, tiny_adapter.info.input_size, tiny_adapter.info.num_classes)
    eager = _run(tiny_adapter, data, Runtime(chunk=4))
    compiled = _run(tiny_adapter, data, Runtime(chunk=4, compile=mode))
    assert torch.allclose(compiled["act_before"], eager["act_before"], rtol=1e-5, atol=1e-5)
    for key in ("proto", "pred_before"):
        assert torch.equal(compiled[key], eager[key]), key
    for key in ("PAC", "PLC"):
        assert abs(compiled[key].float().mean() - eager[key].float().mean()) < 0.04, key
