"""The benchmark loop: data -> maps -> protected region -> attack -> metrics -> records, and the
part pass of consistency and stability on the same maps (protobench.run.partpass).

The attack is looked up by name in protobench.core.attack.ATTACKS, the protected region in
protobench.core.regions.REGIONS and the per-image metrics come from
protobench.core.metrics.METRICS: nothing here names any of them. What the model gives is an
Evidence (protobench.models.adapter): maps and logits, and where the family has them its own
activations and the cells its prototypes' parts matched.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import torch

from protobench.core import metrics, rng
from protobench.core.attack import ATTACKS, image_bounds
from protobench.core.protocol import EvalProtocol
from protobench.core.regions import REGIONS, select_prototypes
from protobench.models.adapter import Evidence, PrototypeAdapter, map_argmax_cells, map_maxima
from protobench.run import chunks, convergence, diagnostics, partpass, seeds
from protobench.run.context import RunContext
from protobench.run.forward import Forward, Runtime, frozen_eval, model_forward
from protobench.run.partpass import Passes


def attack_slots(identity: torch.Tensor, select: str) -> int:
    """K, the most prototypes one image can have attacked: 1 for top-proto, the largest class's
    prototype count for gt-protos. Worked out once per run: reading it from each batch's
    selection would make the host wait for the GPU's first forward pass every batch."""
    return 1 if select == "top-proto" else int((identity > 0).sum(dim=0).max())


def _attacked_slots(attacked: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P) bool -> prototype indices (B, K) and validity (B, K); k >= the most attacked in one
    image (slots beyond an image's own count are padding, marked invalid)."""
    order = attacked.float().topk(min(k, attacked.shape[1]), dim=1)
    return order.indices, order.values > 0


def protect(adapter: PrototypeAdapter, maps: torch.Tensor, y: torch.Tensor, protocol: EvalProtocol,
            act: torch.Tensor | None = None, cells: torch.Tensor | None = None, slots: int | None = None):
    """Which prototypes to attack, p*, and the pixels the attack may change (docs/metrics.md,
    The procedure, steps 2-3), from the clipped maps (B, P, h, w), activations (B, P; default:
    the maps' maxima) and the cells the prototypes' parts matched (B, P, J; default: the maps' argmax).
    `slots`: attack_slots(...), when the caller has it already.

    Returns attacked (B, P) bool, p_star (B,), in_class (B, P) bool, attackable (B, 1, S, S) bool.
    """
    act = map_maxima(maps) if act is None else act
    cells = map_argmax_cells(maps) if cells is None else cells
    size = adapter.info.input_size
    identity = adapter.prototype_class_identity
    in_class = identity[:, y].t() > 0  # (B, P)
    attacked, p_star = select_prototypes(act, in_class, protocol.select)
    slots, valid = _attacked_slots(attacked, slots or attack_slots(identity, protocol.select))
    slot_maps = maps.gather(1, slots[..., None, None].expand(-1, -1, *maps.shape[2:]))
    slot_cells = cells.gather(1, slots[..., None].expand(-1, -1, cells.shape[2]))
    region = REGIONS.get(protocol.region)
    attackable = region.attackable(slot_maps, slot_cells, valid, size=size, margin=protocol.resolved(size)["margin"],
                                   **protocol.region_options())
    return attacked, p_star, in_class, attackable


OnOutcome = Callable[[metrics.Outcome, torch.Tensor], None]  # (a batch's Outcome, its dataset indices)


def evaluate_batch(adapter: PrototypeAdapter, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
                   protocol: EvalProtocol, forward: Forward | None = None,
                   on_outcome: OnOutcome | None = None, passes: Passes | None = None,
                   slots: int | None = None) -> dict[str, torch.Tensor]:
    """Measure one batch: the attack and, when `passes` asks, the part pass (partpass.Passes;
    default: the attack alone). Returns per-image tensors on the CPU.

    `forward` (default: the adapter's, in fp32) runs the model: see forward.model_forward.
    `on_outcome(outcome, ids)` sees the batch's tensors (images, maps, ...) before they are dropped
    (protobench report keeps those of the images it draws).
    From the clean forward pass to the copy of the results to the CPU nothing waits for the
    device (no .item(), int() or branch on a device tensor; tests/test_sync.py) when `slots`
    is given (see attack_slots) and the selection is top-proto (gt-protos checks the labels).
    """
    forward = forward or model_forward(adapter, Runtime())
    passes = passes or Passes()
    with torch.no_grad():
        clean = forward(x)
    out = attack_seeds(adapter, x, y, ids, protocol, forward, clean, on_outcome, slots) if passes.attack else {
        "pred_before": clean.logits.argmax(dim=1)}
    if passes.parts is not None:
        out.update(partpass.measure_parts(forward, x, y, ids, clean.maps, passes, adapter.info.input_size))
    return {k: v.detach().cpu() for k, v in out.items()}


def attack_seeds(adapter: PrototypeAdapter, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
                 protocol: EvalProtocol, forward: Forward, clean: Evidence,
                 on_outcome: OnOutcome | None = None, slots: int | None = None) -> dict[str, torch.Tensor]:
    """attack_batch once, or once per seed of protocol.seeds (protobench.run.seeds): then each per-image
    metric is the mean over the seeds, its per-seed values kept as seeds_<name> (B, S); predictions,
    diagnostics and the convergence trace are the first seed's."""
    if not protocol.seeds:
        return attack_batch(adapter, x, y, ids, protocol, forward, clean, on_outcome, slots)
    outs = [attack_batch(adapter, x, y, ids, replace(protocol, seed=s, seeds=()), forward, clean,
                         on_outcome if i == 0 else None, slots) for i, s in enumerate(protocol.seeds)]
    out = dict(outs[0])
    for spec in metrics.per_image_specs():
        stacked = torch.stack([o[spec.name].float() for o in outs], dim=1)
        out.update({spec.name: stacked.nanmean(dim=1), f"{seeds.PREFIX}{spec.name}": stacked})
    out[f"{seeds.PREFIX}{seeds.CORRECT_AFTER}"] = torch.stack([(o["pred_after"] == y).float() for o in outs], dim=1)
    return out


def attack_objective(forward: Forward, weights: torch.Tensor,
                     record: Callable[[torch.Tensor, torch.Tensor], None] | None = None
                     ) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the attack minimises: per image, the weighted sum of the prototypes' activations
    (weights (B, P): 1 / the count on the attacked prototypes, 0 elsewhere, so their mean).
    `record(value, act)` sees every evaluation (the convergence trace), on the device."""

    def objective(images: torch.Tensor) -> torch.Tensor:  # (B,)
        act = forward(images).act
        value = (act * weights).sum(dim=1)
        if record is not None:
            record(value, act)
        return value

    return objective


def attack_batch(adapter: PrototypeAdapter, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
                 protocol: EvalProtocol, forward: Forward, clean: Evidence,
                 on_outcome: OnOutcome | None = None, slots: int | None = None) -> dict[str, torch.Tensor]:
    """Attack one batch whose clean evidence (maps, logits, ...) is known, and measure it."""
    maps = clean.maps.clamp(min=0)  # docs/metrics.md, The procedure: metrics see maps clipped at 0
    act = clean.act.clamp(min=0)
    attacked, p_star, in_class, attackable = protect(adapter, maps, y, protocol, act, clean.part_cells, slots)
    weights = attacked.float() / attacked.sum(dim=1, keepdim=True)
    trace = convergence.Trace(p_star)  # every evaluation, kept on the device (convergence.csv)
    objective = attack_objective(forward, weights, trace.record)
    noise = rng.uniform(protocol.seed, ids.to(x.device, non_blocking=True), tuple(x.shape[1:]), -1.0, 1.0)
    bounds = image_bounds(adapter.info.mean, adapter.info.std, x.device) if protocol.clip else None
    x_adv, zero_steps = ATTACKS.get(protocol.attack)(objective, x, attackable, noise, eps=protocol.eps,
                                                     step=protocol.step, steps=protocol.steps, bounds=bounds,
                                                     **protocol.attack_options())
    with torch.no_grad():
        adv = forward(x_adv)
    outcome = metrics.Outcome(images=x, images_adv=x_adv, attackable=attackable, maps=maps,
                              maps_adv=adv.maps.clamp(min=0), logits=clean.logits, logits_adv=adv.logits, labels=y,
                              p_star=p_star, attacked=attacked, in_class=in_class,
                              identity=adapter.prototype_class_identity, size=adapter.info.input_size,
                              act=act, act_adv=adv.act.clamp(min=0), parts=clean.part_maps, parts_adv=adv.part_maps,
                              cells=clean.part_cells, cells_adv=adv.part_cells, plc=protocol.plc,
                              plc_q=protocol.plc_q)
    out = measure(outcome)
    if on_outcome is not None:
        on_outcome(outcome, ids)
    out.update(zero_grad_steps=zero_steps, zero_grad=zero_steps > 0,
               protected_frac=1 - attackable.float().mean(dim=(1, 2, 3)),
               collapsed=diagnostics.collapsed(outcome.map_star, outcome.map_star_adv),
               top_outside=diagnostics.top_outside(outcome.map_star, attackable, outcome.size))
    out.update(trace.tensors((adv.act * weights).sum(dim=1), adv.act, (clean.act * weights).sum(dim=1),
                             outcome.act_star))
    return out


def measure(outcome: metrics.Outcome) -> dict[str, torch.Tensor]:
    """Per-image predictions, p* and its activations, and every registered per-image metric
    (docs/metrics.md, The metrics)."""
    values = {
        "pred_before": outcome.logits.argmax(dim=1),
        "pred_after": outcome.logits_adv.argmax(dim=1),
        "proto": outcome.p_star,
        "proto_class": outcome.identity[outcome.p_star].argmax(dim=1),
        "act_before": outcome.act_star,
        "act_after": outcome.act_star_adv,
    }
    for spec in metrics.per_image_specs():
        value = spec.per_image(outcome)
        if not isinstance(value, torch.Tensor) or value.shape != outcome.p_star.shape:
            raise TypeError(f"metric {spec.name!r} must return one value per image, a tensor of shape "
                            f"{tuple(outcome.p_star.shape)}; got {getattr(value, 'shape', type(value).__name__)}")
        values[spec.name] = value
    return values


def batch_records(values: dict[str, torch.Tensor], labels: torch.Tensor, ids: torch.Tensor,
                  paths: list[str]) -> list[dict[str, Any]]:
    """Per-image tensors -> one flat dict per image (the rows of per_image.csv)."""
    values = dict(values)
    cells = partpass.part_cells(values)  # the part pass's tensors, as text cells
    columns = {k: v.tolist() for k, v in values.items()}
    columns.update(cells)
    rows = []
    for i, (index, label) in enumerate(zip(ids.tolist(), labels.tolist())):
        row = {"index": index, "path": paths[index], "label": label}
        row.update({k: col[i] for k, col in columns.items()})
        rows.append(row)
    return rows


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and ("out of memory" in str(err) or "can't allocate memory" in str(err)))


class BatchLimit:
    """The largest number of images known to fit in one evaluate_batch call."""

    def __init__(self, limit: int):
        self.limit = limit


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """t with its last row repeated up to `rows` rows."""
    return torch.cat([t, t[-1:].expand(rows - len(t), *t.shape[1:])]) if len(t) < rows else t


def evaluate_fitting(adapter: PrototypeAdapter, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
                     protocol: EvalProtocol, forward: Forward, fit: BatchLimit, on_outcome: OnOutcome | None = None,
                     passes: Passes | None = None, slots: int | None = None, pad: bool = False,
                     pool: chunks.ThreadPoolExecutor | None = None, chunk: int | None = None) -> dict[str, torch.Tensor]:
    """evaluate_batch in pieces of at most fit.limit images, halving the piece on out-of-memory
    (never a crash, unless a single image does not fit). Images are independent, so pieces
    give the same per-image numbers as one call. `pad`: a short piece (the last batch) is
    filled up to fit.limit images with copies of its last one, whose results are dropped, so
    that a compiled model always sees the same shapes and never recompiles (on_outcome sees those
    copies too: the same image, so the same values, under the last image's index). With a `pool`,
    each piece's chunks of `chunk` images are measured side by side (protobench.run.chunks)."""
    import warnings

    from protobench.errors import MemoryWarning

    def measure(x_part, y_part, ids_part, seen):
        return evaluate_batch(adapter, x_part, y_part, ids_part, protocol, forward, on_outcome=seen, passes=passes,
                              slots=slots)

    pieces, start = [], 0
    while start < len(x):
        n = min(fit.limit, len(x) - start)
        rows = fit.limit if pad else n
        part = [_pad_rows(t[start:start + n], rows) for t in (x, y, ids)]
        try:
            values = chunks.measure_chunks(pool, chunk, measure, *part, on_outcome)
            pieces.append({k: v[:n] for k, v in values.items()})
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


def run(adapter: PrototypeAdapter, dataset: torch.utils.data.Dataset, paths: list[str], protocol: EvalProtocol,
        context: RunContext | None = None,
        on_batch: Callable[[list[dict[str, Any]], list[int]], None] | None = None,
        on_outcome: OnOutcome | None = None, passes: Passes | None = None) -> tuple[list[dict], list[int]]:
    """Evaluate every item of `dataset`; returns (records, indices of undecodable images).

    `context`: device, runtime, batch size, workers (default: RunContext.resolve for the
    adapter's device and input size). `on_batch(records, skipped)` is called after each batch
    (progress, incremental writes); `on_outcome`: see evaluate_batch. `passes`: what to measure
    (default: the attack alone).
    """
    from protobench.data.imagelist import collate

    ctx = context or RunContext.resolve(adapter.device, adapter.info.input_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=ctx.batch_size, shuffle=False, num_workers=ctx.workers,
                                         collate_fn=collate, pin_memory=ctx.device.type == "cuda",
                                         persistent_workers=False, prefetch_factor=4 if ctx.workers > 0 else None)
    forward = model_forward(adapter, ctx.runtime)
    fit = BatchLimit(ctx.batch_size)
    slots = attack_slots(adapter.prototype_class_identity, protocol.select)
    pad = bool(ctx.runtime.compile) and ctx.runtime.chunk is None  # a CPU's fixed chunks pad already
    threads = chunks.side_by_side(ctx.runtime.threads, ctx.runtime.chunk, adapter.concurrent, bool(ctx.runtime.compile))
    records: list[dict] = []
    skipped: list[int] = []
    with frozen_eval(adapter.model), chunks.chunk_workers(threads) as pool:
        for x, y, ids, bad in loader:
            rows = []
            if x is not None:
                labels = y  # the loader's, on the CPU: the rows need no copy back from the device
                x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
                values = evaluate_fitting(adapter, x, y, ids, protocol, forward, fit, on_outcome, passes, slots, pad,
                                          pool, ctx.runtime.chunk)
                rows = batch_records(values, labels, ids, paths)
            records.extend(rows)
            skipped.extend(bad)
            if on_batch is not None:
                on_batch(rows, bad)
    return records, skipped
