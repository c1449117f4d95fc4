"""How the model is run: precision, memory format, fixed-size chunks, compilation, frozen eval mode.
None of it changes which numbers are asked for; on the CPU none of it changes the numbers.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import torch

from protobench import options
from protobench.core.precision import tf32
from protobench.models.adapter import Evidence, PrototypeAdapter

AUTOCAST_DTYPES = {"fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_MODES = ("default", "max-autotune", "reduce-overhead")  # torch.compile's modes; True means "default"
Forward = Callable[[torch.Tensor], Evidence]  # images -> maps, logits (and activations, parts, cells)


@contextmanager
def frozen_eval(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters (only the input gets gradients), both restored afterwards.

    It leaves torch.set_flush_denormal alone: the demo's whole attack produces no denormal
    float, and flushing them made no difference in time (docs/performance.md, Denormal floats).
    """
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def cpu_images(count: int, size: int) -> int:
    """`count` images of up to 224 px, scaled down with the pixel count for larger ones (at least
    1): a CPU batch's memory stays that of `count` 224 px images whatever size a model declares."""
    return max(1, min(count, count * 224 * 224 // (size * size)))


def auto_batch_size(device: torch.device, size: int = 224) -> int:
    """--batch-size auto: 32 images (of up to 224 px, see cpu_images) on the CPU; 256 on a GPU,
    halved until it fits (see benchmark.evaluate_fitting)."""
    return cpu_images(32, size) if device.type == "cpu" else 256


@dataclass(frozen=True)
class Runtime:
    """How the model is run: changes speed, never which numbers are asked for."""

    precision: str = "fp32"  # fp32 (true: no TF32) | tf32 | bf16 | fp16 (autocast); metrics always fp32
    chunk: int | None = None  # rows per model call; fixed on the CPU for reproducibility (see chunked_forward)
    channels_last: bool = False  # NHWC inputs: faster convolutions on GPUs (see for_device for CPUs)
    compile: bool | str = False  # torch.compile the adapter's forward (and so its backward): True or a mode
    threads: int = 1  # CPU chunks measured side by side, one thread each (protobench.run.chunks); 1: one at a time

    @classmethod
    def for_device(cls, device: torch.device, size: int = 224, **overrides: Any) -> Runtime:
        """Defaults per device: fixed chunks on the CPU (8 images up to 224 px, fewer for larger
        images: see cpu_images), one at a time on all of torch's threads unless `threads` says
        otherwise (protobench.run.chunks); whole batches and channels-last on GPUs. Not channels-last on the
        CPU: it is 11-29% faster there, but oneDNN's NHWC convolutions make an image's result
        depend on the other images in its chunk, so the numbers would depend on --batch-size and a
        report's re-run would not reproduce them (docs/performance.md, Demo)."""
        base = cls(chunk=cpu_images(8, size)) if device.type == "cpu" else cls(channels_last=True)
        runtime = replace(base, **{k: v for k, v in overrides.items() if v is not None})
        options.choice("precision", runtime.precision, tuple(AUTOCAST_DTYPES))
        if isinstance(runtime.compile, str):
            options.choice("compile mode", runtime.compile, COMPILE_MODES)
        return runtime

    @property
    def compile_mode(self) -> str | None:
        """torch.compile's mode, or None when not compiling."""
        if not self.compile:
            return None
        return self.compile if isinstance(self.compile, str) else "default"


def chunked_forward(fn: Forward, x: torch.Tensor, chunk: int | None) -> Evidence:
    """fn(x), computed `chunk` rows at a time with the last chunk zero-padded.

    CPU kernels pick their summation order by batch size, so the same image can get
    slightly different maps in batches of 1, 3 or 32 (and a sign-gradient attack then
    drifts apart). With every call at the same size each image's numbers depend only on
    the image: results are identical whatever --batch-size. None: one call for the batch.
    """
    if chunk is None or len(x) == chunk:
        return fn(x)
    pieces: list[dict[str, torch.Tensor]] = []
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk]
        n = len(part)
        if n < chunk:
            part = torch.cat([part, part.new_zeros(chunk - n, *part.shape[1:])])
        pieces.append({name: t[:n] for name, t in fn(part).tensors().items()})
    return Evidence(**{name: torch.cat([p[name] for p in pieces]) for name in pieces[0]})


def model_forward(adapter: PrototypeAdapter, runtime: Runtime) -> Forward:
    """The adapter's evidence (maps, logits, ...) with the runtime's precision, memory format,
    chunking and compilation; every floating-point tensor comes back in fp32.

    Compiling the forward compiles its backward too (AOTAutograd), so the attack's forward +
    input-gradient step runs compiled. The caller keeps shapes fixed (see benchmark.evaluate_fitting)
    so the last, partial batch does not recompile.
    """
    mode = runtime.compile_mode
    fn: Forward = torch.compile(adapter.evidence, mode=mode) if mode else adapter.evidence
    dtype = AUTOCAST_DTYPES[runtime.precision]
    graphs = mode == "reduce-overhead"  # CUDA graphs: each call's outputs live in memory the next call reuses

    def forward(x: torch.Tensor) -> Evidence:
        if runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None), \
                tf32(runtime.precision == "tf32"):
            found = chunked_forward(fn, x, runtime.chunk).tensors()
        if graphs:  # the clean evidence is read after 41 more calls: copy it out of the graph's memory
            found = {name: t.clone() for name, t in found.items()}
        return Evidence(**{name: t.float() if t.is_floating_point() else t for name, t in found.items()})

    return forward
