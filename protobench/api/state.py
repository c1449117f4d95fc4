"""`evaluate` inside a training loop: the model and the process's torch state are left as they were found.

The model: every submodule's train / eval mode, every parameter's requires_grad, its device.
The process: thread count, TF32 switches, flush-denormal, the
deterministic-algorithm and cuDNN switches, grad mode, and torch's global random state; and
no GPU memory is held afterwards (the allocator's cache and cuBLAS's workspaces are emptied; a model the
run read from a file is left on the CPU).
The benchmark itself runs with gradients enabled (the attack needs the input's gradient), also
when `evaluate` is called under `torch.no_grad()` or `torch.inference_mode()`.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch


def flush_denormal() -> bool:
    """Whether denormal floats are flushed to zero now (torch has a setter but no getter)."""
    return float(torch.tensor([2.0 ** -140], dtype=torch.float32) * 1.0) == 0.0


def torch_state() -> dict[str, Any]:
    cuda = torch.backends.cuda.matmul
    return {
        "threads": torch.get_num_threads(),
        "matmul_tf32": cuda.allow_tf32,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "flush_denormal": flush_denormal(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "grad": torch.is_grad_enabled(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
    }


def restore_torch_state(saved: dict[str, Any]) -> None:
    if torch.get_num_threads() != saved["threads"]:
        torch.set_num_threads(saved["threads"])
    torch.backends.cuda.matmul.allow_tf32 = saved["matmul_tf32"]
    torch.backends.cudnn.allow_tf32 = saved["cudnn_tf32"]
    if flush_denormal() != saved["flush_denormal"]:
        torch.set_flush_denormal(saved["flush_denormal"])
    deterministic = (saved["deterministic"], saved["deterministic_warn_only"])
    if (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) \
            != deterministic:  # the setter imports torch's compiler configuration (about 2 s) on first use
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
    torch.backends.cudnn.deterministic = saved["cudnn_deterministic"]
    torch.backends.cudnn.benchmark = saved["cudnn_benchmark"]
    torch.set_grad_enabled(saved["grad"])
    torch.set_rng_state(saved["rng"])
    if saved["cuda_rng"] is not None:
        torch.cuda.set_rng_state_all(saved["cuda_rng"])


def module_state(module: Any) -> dict[str, Any] | None:
    if not isinstance(module, torch.nn.Module):
        return None
    first = next(module.parameters(), None)
    return {"modes": [(m, m.training) for m in module.modules()],
            "flags": [(p, p.requires_grad) for p in module.parameters()],
            "device": first.device if first is not None else None}


def restore_module_state(module: Any, saved: dict[str, Any] | None) -> None:
    if saved is None:
        return
    first = next(module.parameters(), None)
    if saved["device"] is not None and first is not None and first.device != saved["device"]:
        module.to(saved["device"])
    for m, mode in saved["modes"]:
        m.training = mode
    for p, flag in saved["flags"]:
        p.requires_grad_(flag)


@contextmanager
def preserved(module: Any = None, release: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Run the body with gradients on; afterwards put `module` and torch's process state back, and
    `release()` what the run kept on a GPU, before the allocator's cache is emptied."""
    saved, kept = torch_state(), module_state(module)
    used_cuda = torch.cuda.is_initialized()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        restore_module_state(module, kept)
        restore_torch_state(saved)
        release()
        gc.collect()  # the run's tensors are garbage now: give their GPU memory back
        if used_cuda or torch.cuda.is_initialized():
            release_gpu_memory()


def release_gpu_memory() -> None:
    """Hand the allocator's unused blocks back to the GPU, cuBLAS's workspaces included: torch keeps those
    allocated (and counted by torch.cuda.memory_allocated) until they are cleared; it makes new ones when
    next needed."""
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)  # no public API for it yet
    if clear is not None:
        torch.cuda.synchronize()
        clear()
    torch.cuda.empty_cache()
