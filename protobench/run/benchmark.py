"""The benchmark loop: data -> maps -> protected region -> attack -> metrics -> records."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterator

import torch

from protobench import options
from protobench.core import attack
from protobench.core import metrics
from protobench.core import rng
from protobench.models.adapter import PrototypeAdapter
from protobench.core.precision import tf32
from protobench.core.regions import default_margin, protected_mask

# Upper bounds of the attack's options. Normalized images span about 5 units, so a radius of
# 100 already leaves nothing unreachable, while 1e30 (with --no-clip) overflows the model to NaN.
MAX_RADIUS, MAX_STEPS, MAX_MARGIN = 100.0, 1_000_000, 100_000

PROTOCOLS = {
    "default": {},  # pgd, clipped to the valid image range
    "reference": {"attack": "noise", "clip": False},  # what the reference code effectively does (SPEC 6.1)
}


@dataclass(frozen=True)
class Protocol:
    """Everything that decides the numbers of a run."""

    name: str = "default"  # 'default' or 'reference'
    attack: str = "pgd"  # 'pgd' or 'noise'
    select: str = "top-proto"  # 'top-proto' or 'gt-protos'
    eps: float = 0.4  # L-inf radius, normalized input units
    step: float = 0.01  # pgd step size
    steps: int = 40  # pgd steps
    clip: bool = True  # keep attacked images inside the valid pixel range
    margin: int | None = None  # px added around each box; None: 10 px at 224, scaled with size
    seed: int = 0  # seeds the per-image random start and the subset

    @classmethod
    def make(cls, name: str = "default", **overrides: Any) -> Protocol:
        """A named protocol with the given fields overridden (None means: keep the protocol's)."""
        options.choice("protocol", name, tuple(PROTOCOLS))
        proto = replace(cls(name=name), **PROTOCOLS[name])
        proto = replace(proto, **{k: v for k, v in overrides.items() if v is not None})
        proto.check()
        return proto

    def check(self) -> None:
        """OptionError unless every field is in its range (a NaN eps would make every PAC NaN)."""
        options.choice("protocol", self.name, tuple(PROTOCOLS))
        options.choice("attack", self.attack, ("pgd", "noise"))
        options.choice("selection", self.select, ("top-proto", "gt-protos"))
        options.number("--eps", self.eps, 0, MAX_RADIUS)
        options.number("--step", self.step, 0, MAX_RADIUS)
        options.integer("--steps", self.steps, 0, MAX_STEPS)
        options.optional_integer("--margin", self.margin, 0, MAX_MARGIN)
        options.integer("--seed", self.seed, 0, options.SEED_MAX)

    def resolved(self, size: int) -> dict[str, Any]:
        """The protocol as recorded in meta.json, with the margin worked out for this image size."""
        out = asdict(self)
        out["margin"] = self.margin if self.margin is not None else default_margin(size)
        return out


@contextmanager
def inference_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients (only the input's), restored afterwards.

    Also flushes denormal floats to zero on the CPU: gradients that underflow into the
    denormal range can slow CPU kernels several times, for no change a metric can show.
    """
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    flushing = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flushing:
            torch.set_flush_denormal(False)
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


@dataclass(frozen=True)
class Runtime:
    """How the model is run: changes speed, never which numbers are asked for."""

    precision: str = "fp32"  # fp32 (true: no TF32) | tf32 | bf16 | fp16 (autocast); metrics always fp32
    chunk: int | None = None  # rows per model call; fixed on the CPU for reproducibility (see chunked_forward)
    channels_last: bool = False  # NHWC inputs, faster convolutions on GPUs
    compile: bool = False  # torch.compile the adapter's forward

    @classmethod
    def for_device(cls, device: torch.device, size: int = 224, **overrides: Any) -> Runtime:
        """Defaults per device: fixed chunks on the CPU (8 images up to 224 px, fewer for larger
        images: see cpu_images); whole batches, channels-last on GPUs."""
        base = cls(chunk=cpu_images(8, size)) if device.type == "cpu" else cls(channels_last=True)
        runtime = replace(base, **{k: v for k, v in overrides.items() if v is not None})
        options.choice("precision", runtime.precision, tuple(AUTOCAST_DTYPES))
        return runtime


AUTOCAST_DTYPES = {"fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def chunked_forward(fn: Forward, x: torch.Tensor, chunk: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """fn(x), computed `chunk` rows at a time with the last chunk zero-padded.

    CPU kernels pick their summation order by batch size, so the same image can get
    slightly different maps in batches of 1, 3 or 32 (and a sign-gradient attack then
    drifts apart). With every call at the same size each image's numbers depend only on
    the image: results are identical whatever --batch-size. None: one call for the batch.
    """
    if chunk is None or len(x) == chunk:
        return fn(x)
    maps, logits = [], []
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk]
        n = len(part)
        if n < chunk:
            part = torch.cat([part, part.new_zeros(chunk - n, *part.shape[1:])])
        m, lg = fn(part)
        maps.append(m[:n])
        logits.append(lg[:n])
    return torch.cat(maps), torch.cat(logits)


def model_forward(adapter: PrototypeAdapter, runtime: Runtime) -> Forward:
    """The adapter's forward with the runtime's precision, memory format, chunking and compilation;
    maps and logits come back in fp32."""
    fn: Forward = torch.compile(adapter.forward) if runtime.compile else adapter.forward
    dtype = AUTOCAST_DTYPES[runtime.precision]

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None), \
                tf32(runtime.precision == "tf32"):
            maps, logits = chunked_forward(fn, x, runtime.chunk)
        return maps.float(), logits.float()

    return forward


def _attacked_slots(attacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P) bool -> prototype indices (B, K) and validity (B, K), K = most attacked in one image."""
    k = int(attacked.sum(dim=1).max())
    order = attacked.float().topk(k, dim=1)
    return order.indices, order.values > 0


def protect(adapter: PrototypeAdapter, maps: torch.Tensor, y: torch.Tensor, protocol: Protocol):
    """Which prototypes to attack, p*, and the pixels the attack may change (SPEC 3.1, 3.2).

    Returns attacked (B, P) bool, p_star (B,), in_class (B, P) bool, keep (B, 1, S, S) bool.
    """
    size = adapter.info.input_size
    in_class = adapter.prototype_class_identity[:, y].t() > 0  # (B, P)
    attacked, p_star = metrics.select_prototypes(maps.amax(dim=(2, 3)), in_class, protocol.select)
    slots, valid = _attacked_slots(attacked)
    slot_maps = maps.gather(1, slots[..., None, None].expand(-1, -1, *maps.shape[2:]))
    keep = protected_mask(slot_maps, valid, size, protocol.resolved(size)["margin"])
    return attacked, p_star, in_class, keep


def evaluate_batch(adapter: PrototypeAdapter, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
                   protocol: Protocol, forward: Forward | None = None) -> dict[str, torch.Tensor]:
    """Attack one batch and measure it; returns per-image tensors (B,) on the CPU.

    `forward` (default: the adapter's, in fp32) runs the model: see model_forward.
    """
    forward = forward or model_forward(adapter, Runtime())
    with torch.no_grad():
        maps, logits = forward(x)
    maps = maps.clamp(min=0)  # SPEC 2: metrics see maps clipped at 0
    attacked, p_star, in_class, keep = protect(adapter, maps, y, protocol)
    weights = attacked.float() / attacked.sum(dim=1, keepdim=True)

    def objective(images: torch.Tensor) -> torch.Tensor:  # mean max-activation of the attacked prototypes
        return (forward(images)[0].amax(dim=(2, 3)) * weights).sum(dim=1)

    noise = rng.uniform(protocol.seed, ids.to(x.device), tuple(x.shape[1:]), -1.0, 1.0)
    bounds = attack.image_bounds(adapter.info.mean, adapter.info.std, x.device) if protocol.clip else None
    steps = protocol.steps if protocol.attack == "pgd" else 0
    x_adv, zero_steps = attack.pgd(objective, x, keep, noise, eps=protocol.eps, step=protocol.step,
                                   steps=steps, bounds=bounds)
    with torch.no_grad():
        maps_adv, logits_adv = forward(x_adv)
    out = measure(adapter, (maps, logits), (maps_adv.clamp(min=0), logits_adv), p_star, in_class)
    out.update(zero_grad_steps=zero_steps, zero_grad=zero_steps > 0,
               protected_frac=1 - keep.float().mean(dim=(1, 2, 3)))
    return {k: v.detach().cpu() for k, v in out.items()}


def measure(adapter: PrototypeAdapter, before: tuple[torch.Tensor, torch.Tensor],
            after: tuple[torch.Tensor, torch.Tensor], p_star: torch.Tensor,
            in_class: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image predictions, activations and PAC / PRC / PLC from the clipped maps and logits
    before and after the attack (SPEC 3.4)."""
    (maps, logits), (maps_adv, logits_adv) = before, after
    act, act_adv = maps.amax(dim=(2, 3)), maps_adv.amax(dim=(2, 3))  # (B, P)
    batch = torch.arange(len(p_star), device=p_star.device)
    return {
        "pred_before": logits.argmax(dim=1),
        "pred_after": logits_adv.argmax(dim=1),
        "proto": p_star,
        "proto_class": adapter.prototype_class_identity[p_star].argmax(dim=1),
        "act_before": act[batch, p_star],
        "act_after": act_adv[batch, p_star],
        "PAC": metrics.pac(act[batch, p_star], act_adv[batch, p_star]),
        "PRC": metrics.prc(act, act_adv, p_star, in_class),
        "PLC": metrics.plc(maps[batch, p_star], maps_adv[batch, p_star], adapter.info.input_size),
    }


def batch_records(values: dict[str, torch.Tensor], labels: torch.Tensor, ids: torch.Tensor,
                  paths: list[str]) -> list[dict[str, Any]]:
    """Per-image tensors -> one flat dict per image (the rows of per_image.csv)."""
    columns = {k: v.tolist() for k, v in values.items()}
    rows = []
    for i, (index, label) in enumerate(zip(ids.tolist(), labels.tolist())):
        row = {"index": index, "path": paths[index], "label": label}
        row.update({k: col[i] for k, col in columns.items()})
        rows.append(row)
    return rows


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and ("out of memory" in str(err) or "can't allocate memory" in str(err)))


class Fit:
    """The largest number of images known to fit in one evaluate_batch call."""

    def __init__(self, limit: int):
        self.limit = limit


def evaluate_fitting(adapter: PrototypeAdapter, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
                     protocol: Protocol, forward: Forward, fit: Fit) -> dict[str, torch.Tensor]:
    """evaluate_batch in pieces of at most fit.limit images, halving the piece on out-of-memory
    (never a crash, unless a single image does not fit). Images are independent, so pieces
    give the same per-image numbers as one call."""
    import warnings

    from protobench.errors import MemoryWarning

    pieces, start = [], 0
    while start < len(x):
        n = min(fit.limit, len(x) - start)
        try:
            pieces.append(evaluate_batch(adapter, x[start:start + n], y[start:start + n], ids[start:start + n],
                                         protocol, forward))
            start += n
        except RuntimeError as err:
            if not is_out_of_memory(err) or n == 1:
                raise
            fit.limit = n // 2
            if x.device.type == "cuda":
                torch.cuda.empty_cache()
            warnings.warn(f"{n} images did not fit in memory; continuing with {fit.limit} per step "
                          f"(pass --batch-size {fit.limit} to skip this search)", MemoryWarning, stacklevel=2)
    return {k: torch.cat([p[k] for p in pieces]) for k in pieces[0]}


def cpu_images(count: int, size: int) -> int:
    """`count` images of up to 224 px, scaled down with the pixel count for larger ones (at least
    1): a CPU batch's memory stays that of `count` 224 px images whatever size a model declares."""
    return max(1, min(count, count * 224 * 224 // (size * size)))


def auto_batch_size(device: torch.device, size: int = 224) -> int:
    """--batch-size auto: 32 images (of up to 224 px, see cpu_images) on the CPU; 256 on a GPU,
    halved until it fits (see evaluate_fitting)."""
    return cpu_images(32, size) if device.type == "cpu" else 256


def run(adapter: PrototypeAdapter, dataset: torch.utils.data.Dataset, paths: list[str], protocol: Protocol, *,
        batch_size: int | None = None, workers: int = 0, runtime: Runtime | None = None,
        on_batch: Callable[[list[dict[str, Any]], list[int]], None] | None = None) -> tuple[list[dict], list[int]]:
    """Evaluate every item of `dataset`; returns (records, indices of undecodable images).

    `on_batch(records, skipped)` is called after each batch (progress, incremental writes).
    `batch_size` None: auto_batch_size. `runtime`: how the model is run (default:
    Runtime.for_device of the adapter's device).
    """
    from protobench.data.imagelist import collate

    batch_size = batch_size or auto_batch_size(adapter.device, adapter.info.input_size)
    cuda = adapter.device.type == "cuda"
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=collate, pin_memory=cuda, persistent_workers=False,
                                         prefetch_factor=4 if workers > 0 else None)
    forward = model_forward(adapter, runtime or Runtime.for_device(adapter.device, adapter.info.input_size))
    fit = Fit(batch_size)
    records: list[dict] = []
    skipped: list[int] = []
    with inference_mode(adapter.model):
        for x, y, ids, bad in loader:
            rows = []
            if x is not None:
                x, y = x.to(adapter.device, non_blocking=True), y.to(adapter.device, non_blocking=True)
                values = evaluate_fitting(adapter, x, y, ids, protocol, forward, fit)
                rows = batch_records(values, y.cpu(), ids, paths)
            records.extend(rows)
            skipped.extend(bad)
            if on_batch is not None:
                on_batch(rows, bad)
    return records, skipped
