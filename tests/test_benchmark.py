"""The benchmark loop: batching and seeds never change an image's numbers."""

import pandas as pd
import pytest
import torch

from protobench.run import benchmark
from protobench.core.protocol import EvalProtocol
from protobench.run.benchmark import evaluate_batch
from protobench.run.context import RunContext
from protobench.run.forward import Runtime, frozen_eval, model_forward
from protobench.data.imagelist import ImageFolder


def _run(adapter, folder, protocol, batch_size):
    info = adapter.info
    ds = ImageFolder(folder, info.input_size, info.mean, info.std)
    context = RunContext.resolve(adapter.device, info.input_size, batch_size=batch_size)
    records, skipped = benchmark.run(adapter, ds, ds.paths, protocol, context)
    assert skipped == []
    return pd.DataFrame(records)


def test_batched_equals_one_image_at_a_time(tiny_adapter):
    size = tiny_adapter.info.input_size
    x, y, ids = torch.randn(7, 3, size, size), torch.tensor([0, 1, 2, 0, 1, 2, 0]), torch.arange(7)
    protocol = EvalProtocol.make(steps=10)
    with frozen_eval(tiny_adapter.model):
        forward = model_forward(tiny_adapter, Runtime.for_device(torch.device("cpu")))
        batched = evaluate_batch(tiny_adapter, x, y, ids, protocol, forward)
        single = [evaluate_batch(tiny_adapter, x[i:i + 1], y[i:i + 1], ids[i:i + 1], protocol, forward)
                  for i in range(7)]
    for key, value in batched.items():
        assert torch.equal(value, torch.cat([s[key] for s in single])), key


@pytest.mark.parametrize("select", ["top-proto", "gt-protos"])
def test_same_seed_same_results_whatever_the_batch_size(tiny_adapter, image_folder, select):
    protocol = EvalProtocol.make(steps=8, select=select, seed=3)
    runs = [_run(tiny_adapter, image_folder, protocol, bs) for bs in (1, 5, 12)]
    for other in runs[1:]:
        pd.testing.assert_frame_equal(runs[0], other)


def test_seed_changes_the_random_start(tiny_adapter, image_folder):
    a = _run(tiny_adapter, image_folder, EvalProtocol.make(attack="noise", seed=1), 4)
    b = _run(tiny_adapter, image_folder, EvalProtocol.make(attack="noise", seed=2), 4)
    assert not a["act_after"].equals(b["act_after"])
    assert a["act_before"].equals(b["act_before"])


def test_gt_protos_attacks_the_true_class_prototypes(tiny_adapter, image_folder):
    df = _run(tiny_adapter, image_folder, EvalProtocol.make(steps=2, select="gt-protos"), 4)
    assert (df["proto_class"] == df["label"]).all()  # p* is one of the true class's prototypes


def test_records_have_every_column(tiny_adapter, image_folder):
    from protobench.run.results import per_image_columns

    df = _run(tiny_adapter, image_folder, EvalProtocol.make(steps=2), 4)
    assert sorted(df.columns) == sorted(per_image_columns())
    assert len(df) == 12 and df["index"].tolist() == list(range(12))
    assert df["path"].str.endswith(".png").all()


def test_protocols():
    ref = EvalProtocol.make("reference")
    assert (ref.attack, ref.clip, ref.eps) == ("noise", False, 0.4)
    assert EvalProtocol.make("reference", attack="pgd").attack == "pgd"
    default = EvalProtocol.make()
    assert (default.attack, default.clip, default.steps, default.step) == ("pgd", True, 40, 0.01)
    assert default.resolved(224)["margin"] == 10
    with pytest.raises(ValueError, match="protocol"):
        EvalProtocol.make("paper")
    with pytest.raises(ValueError, match="attack"):
        EvalProtocol.make(attack="fgsm")


def test_out_of_memory_halves_the_batch_and_keeps_the_numbers(tiny_adapter, image_folder, monkeypatch):
    from protobench.errors import MemoryWarning

    expected = _run(tiny_adapter, image_folder, EvalProtocol.make(steps=3), 12)
    real = benchmark.evaluate_batch
    sizes = []

    def small_memory(adapter, x, *args, **kwargs):  # pretend only 3 images fit at once
        sizes.append(len(x))
        if len(x) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(adapter, x, *args, **kwargs)

    monkeypatch.setattr(benchmark, "evaluate_batch", small_memory)
    with pytest.warns(MemoryWarning, match="did not fit"):
        got = _run(tiny_adapter, image_folder, EvalProtocol.make(steps=3), 12)
    pd.testing.assert_frame_equal(expected, got)
    assert sizes[:3] == [12, 6, 3] and max(sizes[3:]) == 3


def test_a_single_image_that_does_not_fit_is_an_error(tiny_adapter, image_folder, monkeypatch):
    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    from protobench.errors import MemoryWarning

    monkeypatch.setattr(benchmark, "evaluate_batch", no_memory)
    with pytest.raises(torch.OutOfMemoryError), pytest.warns(MemoryWarning):
        _run(tiny_adapter, image_folder, EvalProtocol.make(steps=1), 4)


def test_other_errors_are_not_mistaken_for_memory(tiny_adapter, image_folder, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(benchmark, "evaluate_batch", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        _run(tiny_adapter, image_folder, EvalProtocol.make(steps=1), 4)


def test_tf32_switch_is_scoped():
    from protobench.core.precision import tf32

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with tf32(False):
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    with tf32(True):
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before
    assert Runtime.for_device(torch.device("cuda"), precision="tf32").precision == "tf32"
    with pytest.raises(ValueError, match="tf32"):
        Runtime.for_device(torch.device("cpu"), precision="fp64")


def test_cpu_batches_shrink_with_the_image_side():
    """A model declaring large images gets proportionally fewer images per CPU batch and chunk."""
    from protobench.run.forward import auto_batch_size, cpu_images

    cpu = torch.device("cpu")
    assert [auto_batch_size(cpu, s) for s in (32, 64, 224, 448, 2048)] == [32, 32, 32, 8, 1]
    assert [Runtime.for_device(cpu, s).chunk for s in (64, 224, 300, 448, 2048)] == [8, 8, 4, 2, 1]
    assert cpu_images(8, 225) == 7  # 8 * 224^2 // 225^2 = 7.93 -> 7
    assert auto_batch_size(torch.device("cuda"), 2048) == 256  # GPUs halve on out-of-memory instead


def flushing() -> bool:
    """Whether denormals are flushed now: a subnormal float32 (below 1.2e-38) doubled is 0 only then."""
    return bool((torch.tensor([1e-40]) * 2)[0] == 0)


@pytest.mark.parametrize("before", [False, True])
def test_frozen_eval_leaves_the_callers_denormal_setting_alone(tiny_adapter, before):
    """It used to turn flushing on, and off afterwards even for a caller that had it on; flushing
    made no difference to the demo (docs/performance.md, Denormal floats), so it is left alone."""
    if not torch.set_flush_denormal(before) and before:
        pytest.skip("this CPU cannot flush denormals")
    try:
        assert flushing() == before
        with frozen_eval(tiny_adapter.model):
            assert flushing() == before
        assert flushing() == before
    finally:
        torch.set_flush_denormal(False)


def test_run_context_defaults_follow_the_device_and_the_image_size():
    cpu = torch.device("cpu")
    big = RunContext.resolve(cpu, 448)  # 4x the pixels of 224 px: a quarter of the images
    assert (big.batch_size, big.runtime.chunk, big.workers, big.world.size) == (8, 2, 0, 1)
    gpu = RunContext.resolve(torch.device("cuda"), 448)  # resolving never touches the device
    assert (gpu.batch_size, gpu.runtime.chunk, gpu.runtime.channels_last) == (256, None, True) and gpu.workers >= 1
    mine = RunContext.resolve(cpu, 64, batch_size=5, workers=2, precision="bf16", compile=True)
    assert mine.record() == {"device": "cpu", "batch_size": 5, "workers": 2, "processes": 1, "runtime": {
        "precision": "bf16", "chunk": 8, "channels_last": True, "compile": True}}


def test_the_loop_batches_as_its_context_says(tiny_adapter, image_folder):
    info = tiny_adapter.info
    ds = ImageFolder(image_folder, info.input_size, info.mean, info.std)
    sizes = []
    context = RunContext(torch.device("cpu"), Runtime(chunk=4), batch_size=5, workers=0)
    benchmark.run(tiny_adapter, ds, ds.paths, EvalProtocol.make(steps=1), context,
                  on_batch=lambda rows, bad: sizes.append(len(rows)))
    assert sizes == [5, 5, 2]


def test_evaluate_resolves_the_context_once_records_it_and_hands_it_down(tiny_ckpt, image_folder, tmp_path,
                                                                         monkeypatch):
    import json

    from protobench.run.evaluate import EvaluateConfig, evaluate

    resolved, handed = [], []
    real_resolve, real_run = RunContext.resolve.__func__, benchmark.run
    monkeypatch.setattr(RunContext, "resolve", classmethod(
        lambda cls, *args, **kw: resolved.append(args) or real_resolve(cls, *args, **kw)))
    monkeypatch.setattr(benchmark, "run", lambda *args, **kw: handed.append(args[4]) or real_run(*args, **kw))
    evaluate(EvaluateConfig(ckpt=tiny_ckpt, data=image_folder, out=str(tmp_path / "o"), batch_size=5, limit=6,
                            protocol=EvalProtocol.make(steps=1)))
    assert len(resolved) == 1 and resolved[0] == (torch.device("cpu"), 32)
    assert [c.batch_size for c in handed] == [5] and handed[0].runtime.chunk == 8
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert {k: meta[k] for k in ("device", "batch_size", "workers", "processes")} == {
        "device": "cpu", "batch_size": 5, "workers": 0, "processes": 1}
    assert meta["runtime"] == {"precision": "fp32", "chunk": 8, "channels_last": True, "compile": False}
