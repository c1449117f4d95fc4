"""`--distance float32` on CaBRNet model directories: CaBRNet's own float32 operations, in its order.

Against CaBRNet's formulas written out in plain torch (tests/cabrnet_reference.py) bit for bit, and against the
logits and maps CaBRNet itself computed for the fixtures (tests/fixtures/cabrnet/*/expected.safetensors).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from cabrnet_reference import cabrnet_reference
from safetensors.torch import load_file

from protobench.models.lookup import get_adapter

pytest.importorskip("yaml")
FIXTURES = Path(__file__).parent / "fixtures" / "cabrnet"
NAMES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
FIXTURE_THREADS = 2  # the thread count CaBRNet computed the fixtures' outputs with
ANY_KERNELS = 2e-5  # agreement whatever the CPU kernels and threads (the fixtures' float32 rounding)


def has_distance(adapter) -> bool:
    return any(isinstance(getattr(type(m), "distance", None), str) for m in adapter.model.modules())


def load(name: str, mode: str = "float64"):
    return get_adapter("cabrnet").load(str(FIXTURES / name)).set_distance(mode)


DISTANCE_HEADS = [n for n in NAMES if has_distance(load(n))]


@contextmanager
def threads(count: int):
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def gaps(name: str, mode: str) -> tuple[float, float]:
    """Largest |protobench - CaBRNet| in the logits and in the maps of a fixture."""
    adapter = load(name, mode)
    expected = load_file(str(FIXTURES / name / "expected.safetensors"))
    with torch.no_grad():
        maps, logits = adapter(expected["x"])
    theirs = expected["maps"]
    if adapter.model.cfg.head == "prototree":  # pruned prototypes left out; log similarities shown as exp
        theirs = theirs[:, adapter.model.classifier.live]
        theirs = theirs.exp() if adapter.model.cfg.similarity_log else theirs
    return (logits - expected["logits"]).abs().max().item(), (maps - theirs).abs().max().item()


def test_every_head_but_pipnet_has_a_distance_and_the_fixtures_cover_both_layer_kinds():
    heads = {load(n).model.cfg.head for n in DISTANCE_HEADS}
    assert heads == {"protopnet", "prototree", "protopool"}
    kinds = {(load(n).model.cfg.head, load(n).model.cfg.cdist) for n in DISTANCE_HEADS}
    assert {(h, c) for h in heads for c in (False, True)} <= kinds  # Legacy* and cdist layers, every head


@pytest.mark.parametrize("name", DISTANCE_HEADS)
def test_float32_mode_is_cabrnets_formula_bit_for_bit(name):
    adapter = load(name, "float32")
    x = load_file(str(FIXTURES / name / "expected.safetensors"))["x"]
    x = torch.cat([x, torch.randn(3, *x.shape[1:], generator=torch.Generator().manual_seed(0))])
    with torch.no_grad():
        maps, logits = adapter(x)
        ref_maps, ref_logits = cabrnet_reference(adapter.model, x, torch.float32)
        ref_maps64, ref_logits64 = cabrnet_reference(adapter.model, x, torch.float64)
        maps64, logits64 = adapter.set_distance("float64")(x)
    assert maps.dtype == logits.dtype == torch.float32
    assert torch.equal(maps, ref_maps) and torch.equal(logits, ref_logits)
    assert (maps64 - ref_maps64).abs().max() < 1e-6 and (logits64 - ref_logits64).abs().max() < 1e-6


@pytest.mark.parametrize("name", DISTANCE_HEADS)
def test_float32_mode_gives_cabrnets_own_outputs(name):
    # measured on an AMD EPYC (AVX2), torch 2.14.1: float32 mode 0 (bit for bit) at the fixtures' 2 threads for
    # every fixture; float64 mode up to 1.4e-6 (logits) and 4.3e-6 (maps). With 1 thread, or other kernels
    # (ATEN_CPU_CAPABILITY=default), the backbone itself sums its float32 in another order: float32 mode then
    # within 1.7e-6 (logits) and 2.6e-6 (maps), float64 mode within 1.7e-6 and 4.3e-6
    with threads(FIXTURE_THREADS):
        (logits32, maps32), (logits64, maps64) = gaps(name, "float32"), gaps(name, "float64")
    assert max(logits32, maps32, logits64, maps64) < ANY_KERNELS


@pytest.mark.slow
@pytest.mark.parametrize("name", DISTANCE_HEADS)
def test_float32_mode_gives_cabrnets_own_outputs_bit_for_bit_on_the_fixtures_kernels(name):
    """Exact only where the backbone sums in the fixtures' order: the AVX2 kernels of the 2-core AMD EPYC
    that made them, at 2 threads (another CPU's kernels may block the same sums differently)."""
    if torch.backends.cpu.get_cpu_capability() != "AVX2":
        pytest.skip("the fixtures were computed with AVX2 kernels")
    with threads(FIXTURE_THREADS):
        (logits32, maps32), (logits64, maps64) = gaps(name, "float32"), gaps(name, "float64")
    assert logits32 == maps32 == 0.0
    assert max(logits64, maps64) > 0  # float64 is not CaBRNet's arithmetic: the modes do differ


def test_pipnet_has_no_distance_and_computes_the_same_in_both_modes():
    assert not has_distance(load("pipnet"))
    x = load_file(str(FIXTURES / "pipnet" / "expected.safetensors"))["x"]
    with torch.no_grad():
        out64, out32 = load("pipnet", "float64")(x), load("pipnet", "float32")(x)
    assert all(torch.equal(a, b) for a, b in zip(out64, out32))


def test_the_default_mode_comes_back_unchanged():
    adapter = load("prototree_log")
    x = load_file(str(FIXTURES / "prototree_log" / "expected.safetensors"))["x"]
    with torch.no_grad():
        before = adapter(x)
        adapter.set_distance("float32")(x)
        after = adapter.set_distance("float64")(x)
    assert all(torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("name", ["protopnet", "protopool", "protopool_legacy"])
def test_an_exp_similarity_with_its_own_log_probabilities_scores_with_minus_sqrt(tmp_path, name):
    """CaBRNet's ExpDistance returns -sqrt(|d| + eps) when its own params set log_probabilities, and ProtoPNet's and
    ProtoPool's classifiers weigh what it returns: the fixture with its similarity layer swapped for such a layer."""
    import re
    import shutil

    model = tmp_path / name
    shutil.copytree(FIXTURES / name, model)
    arch = model / "model_arch.yml"
    swapped = re.sub(r"similarity:\n  name: \w+\n(  params:\n(    .*\n)*)?",
                     "similarity:\n  name: ProtoTreeSimilarity\n  params:\n    log_probabilities: true\n",
                     arch.read_text())
    arch.write_text(swapped)
    adapter = get_adapter("cabrnet").load(str(model))
    cfg = adapter.model.cfg
    assert (cfg.similarity, cfg.similarity_log, cfg.cdist) == ("exp", True, True)
    x = torch.randn(4, 3, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        maps, logits = adapter.set_distance("float32")(x)
        ref_maps, ref_logits = cabrnet_reference(adapter.model, x, torch.float32)
        maps64, logits64 = adapter.set_distance("float64")(x)
        ref_maps64, ref_logits64 = cabrnet_reference(adapter.model, x, torch.float64)
        cfg.similarity_log = False  # the same layer without log_probabilities: exp(-sqrt(...)), other logits
        plain = adapter(x)[1]
    assert torch.equal(maps, ref_maps) and torch.equal(logits, ref_logits)
    assert (maps64 - ref_maps64).abs().max() < 1e-6 and (logits64 - ref_logits64).abs().max() < 1e-6
    assert maps.min() >= 0  # the maps show the probability exp(-sqrt(...)), as for a ProtoTree
    assert (plain - logits64).abs().max() > 1e-2
