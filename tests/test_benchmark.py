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
    from protobench.run.convergence import RECORD_KEYS
    from protobench.run.results import per_image_columns

    df = _run(tiny_adapter, image_folder, EvalProtocol.make(steps=2), 4)
    assert sorted(df.columns) == sorted([*per_image_columns(), *RECORD_KEYS])  # the traces go to convergence.csv
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


def test_the_protovit_protocol_and_the_region_options():
    vit = EvalProtocol.make("protovit")
    assert (vit.attack, vit.clip, vit.steps, vit.eps, vit.step) == ("noise", False, 50, 0.4, 0.01)
    assert vit.select == "top-proto"
    assert (vit.region, vit.plc, vit.resolved(224)["margin"]) == ("tokens", "tokens", 0)
    default = EvalProtocol.make()
    assert (default.region, default.plc) == ("box", "pixels")
    assert EvalProtocol.make(region="tokens").resolved(224)["margin"] == 0  # each region has its default margin
    assert EvalProtocol.make("protovit", region="box").resolved(224)["margin"] == 10
    assert EvalProtocol.make("protovit", margin=3).resolved(224)["margin"] == 3
    with pytest.raises(ValueError, match="--region: unknown region 'token'. Did you mean 'tokens'"):
        EvalProtocol.make(region="token")
    with pytest.raises(ValueError, match="--plc 'grid': use pixels or tokens"):
        EvalProtocol.make(plc="grid")


class MeanActivation:
    """A family whose activation is the mean of its map, not its maximum, and whose prototypes
    have two parts that matched fixed cells (0 and 5 of a 4 x 4 map): the loop must follow them."""

    def __init__(self, adapter):
        self.inner, self.info, self.prototype_class_identity = adapter, adapter.info, adapter.prototype_class_identity
        self.model = adapter.model

    def evidence(self, x):
        from protobench.models.adapter import Evidence

        maps, logits = self.inner(x)
        maps = torch.nn.functional.adaptive_avg_pool2d(maps, 4)
        cells = torch.tensor([0, 5], device=x.device).expand(len(x), maps.shape[1], 2)
        parts = maps[:, :, None].expand(-1, -1, 2, -1, -1)
        return Evidence(maps, logits, activations=maps.mean(dim=(2, 3)), parts=parts, cells=cells)


def test_the_loop_follows_the_family_s_activations_and_cells(tiny_adapter):
    from protobench.core.attack import ATTACKS

    family = MeanActivation(tiny_adapter)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    y, ids = torch.arange(6) % 3, torch.arange(6)
    with torch.no_grad():
        act = family.evidence(x).activations
    seen = {}

    def probe(objective, images, attackable, noise, *, eps, step, steps, bounds=None):
        seen["objective"] = objective(images)
        return images, torch.zeros(len(images), dtype=torch.long)

    ATTACKS.add("probe", probe)
    try:
        with frozen_eval(family.model):
            out = evaluate_batch(family, x, y, ids, EvalProtocol.make(attack="probe", region="tokens"),
                                 model_forward(family, Runtime()))
    finally:
        ATTACKS.remove("probe")
    p_star = act.clamp(min=0).argmax(dim=1)  # the most active prototype by the family's activation
    assert torch.equal(out["proto"], p_star)
    assert torch.allclose(out["act_before"], act.clamp(min=0)[torch.arange(6), p_star])
    assert torch.allclose(seen["objective"], act[torch.arange(6), p_star])  # the attack lowers that activation
    # cells 0 and 5 of a 4 x 4 map on 32 px: two 8 px tokens, each protected as 7 x 7 pixels
    assert torch.allclose(out["protected_frac"], torch.full((6,), 2 * 49 / 1024))
    assert (out["PLC"] == 0).all()  # nothing moved: the parts matched the same cells after the attack


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
        "precision": "bf16", "chunk": 8, "channels_last": False, "compile": True, "threads": 1}}
    assert gpu.runtime.threads == 1  # side by side is for CPU chunks only


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
    assert meta["runtime"] == {"precision": "fp32", "chunk": 8, "channels_last": False, "compile": False,
                               "threads": 1}


def test_an_image_s_maps_do_not_depend_on_the_other_images_in_its_chunk():
    """The CPU's default runtime on the demo model: the same image among other neighbours, or
    alone in a zero-padded chunk, gives bit-identical maps. (Channels-last inputs broke this:
    oneDNN's NHWC convolutions differed by up to 7e-6, and a report's re-run of a few images
    then disagreed with the evaluation.)"""
    from protobench.demo import DEMO_DATA, demo_checkpoint
    from protobench.run.evaluate import load_adapter, load_dataset

    cpu = torch.device("cpu")
    adapter = load_adapter("auto", demo_checkpoint(), {}, cpu)
    data, _ = load_dataset(DEMO_DATA, adapter.info)
    x = torch.stack([data[i][0] for i in range(16)])
    forward = model_forward(adapter, Runtime.for_device(cpu, adapter.info.input_size))
    with frozen_eval(adapter.model), torch.no_grad():
        among = forward(x[8:16]).maps[3]
        others = forward(x[[11, 0, 1, 2, 3, 4, 5]]).maps[0]
        alone = forward(x[11:12]).maps[0]
    assert torch.equal(among, others) and torch.equal(among, alone)
