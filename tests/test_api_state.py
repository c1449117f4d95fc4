"""protobench.evaluate inside a training loop leaves the model and torch's process state as it found them."""

from __future__ import annotations

import gc

import pytest
import torch

import protobench
from protobench.api.state import flush_denormal


@pytest.fixture
def run(tiny_adapter, image_folder):
    """Evaluate the tiny model (protobench's own module: shared with the handle, not copied)."""
    net = tiny_adapter.model

    def evaluate(**kwargs):
        return protobench.evaluate(net, image_folder, steps=2, limit=4, progress=False, **kwargs)

    return net, evaluate


def test_train_and_eval_modes_of_every_submodule(run):
    net, evaluate = run
    net.train()
    net.features.eval()  # e.g. a frozen backbone with its batch-norm statistics kept
    modes = {name: m.training for name, m in net.named_modules()}
    evaluate()
    assert {name: m.training for name, m in net.named_modules()} == modes
    net.eval()
    evaluate()
    assert not any(m.training for m in net.modules())


def test_requires_grad_flags(run):
    net, evaluate = run
    for i, p in enumerate(net.parameters()):
        p.requires_grad_(i % 2 == 0)
    flags = [p.requires_grad for p in net.parameters()]
    evaluate()
    assert [p.requires_grad for p in net.parameters()] == flags


def test_parameters_and_buffers_bit_identical(run):
    net, evaluate = run
    net.train()  # batch norm in train mode would update its running statistics on any forward pass
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params = [id(p) for p in net.parameters()]
    evaluate()
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert [id(p) for p in net.parameters()] == params  # the optimizer's parameters are still the model's


def test_thread_count(run):
    _, evaluate = run
    torch.set_num_threads(2)
    try:
        evaluate()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_tf32_switches(run):
    _, evaluate = run
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    for state in ((True, False), (False, True), (True, True), (False, False)):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = state
        try:
            for runtime in ("tf32", "fp32"):  # the tf32 runtime switches both on and off itself
                evaluate(precision=runtime)
                assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == state
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_flush_denormal(run):
    _, evaluate = run
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    try:
        assert flush_denormal()
        evaluate()
        assert flush_denormal()
    finally:
        torch.set_flush_denormal(False)
    evaluate()
    assert not flush_denormal()


def test_deterministic_flags(run):
    _, evaluate = run
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, True
    try:
        evaluate()
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def test_grad_mode_and_inference_mode(run):
    """The attack needs the input's gradient: evaluate works under no_grad and inference_mode, with the
    same numbers, and leaves the mode as it was."""
    _, evaluate = run
    expected = evaluate().per_image
    with torch.no_grad():
        assert evaluate().per_image.equals(expected)
        assert not torch.is_grad_enabled()
    with torch.inference_mode():
        assert evaluate().per_image.equals(expected)
        assert torch.is_inference_mode_enabled()
    assert torch.is_grad_enabled()


def test_global_random_state(run):
    _, evaluate = run
    state = torch.get_rng_state()
    evaluate()
    assert torch.equal(torch.get_rng_state(), state)


def gpu_memory() -> tuple[int, int]:
    """(allocated, reserved) bytes on the GPU once everything unused is handed back (cuBLAS's workspaces,
    which empty_cache keeps, included)."""
    gc.collect()
    torch.cuda.synchronize()
    torch._C._cuda_clearCublasWorkspaces()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated(), torch.cuda.memory_reserved()


@pytest.mark.gpu
def test_device_and_gpu_memory(run, tiny_ckpt, image_folder):
    """A model on the CPU evaluated on the GPU is back on the CPU, bit for bit; the GPU memory the run used
    is all given back, while its Results (which keep the model for report()) are still alive, also for a
    checkpoint the run read itself; a model on the GPU stays there and nothing is held beside it."""
    net, evaluate = run
    before = {k: v.clone() for k, v in net.state_dict().items()}
    allocated, reserved = gpu_memory()
    torch.cuda.reset_peak_memory_stats()
    results = evaluate(device="cuda")
    assert results.meta["device"].startswith("cuda") and torch.cuda.max_memory_allocated() > allocated  # it ran there
    assert all(p.device.type == "cpu" for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert (torch.cuda.memory_allocated(), torch.cuda.memory_reserved()) == (allocated, reserved)
    from_file = protobench.evaluate(tiny_ckpt, image_folder, steps=2, limit=4, progress=False, device="cuda")
    assert from_file.meta["device"].startswith("cuda")
    assert (torch.cuda.memory_allocated(), torch.cuda.memory_reserved()) == (allocated, reserved)
    net.cuda()
    held = gpu_memory()
    results = evaluate()
    assert results.meta["device"].startswith("cuda")
    assert all(p.device.type == "cuda" for p in net.parameters())
    assert (torch.cuda.memory_allocated(), torch.cuda.memory_reserved()) == held
    net.cpu()
