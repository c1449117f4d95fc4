"""The minimal protocol a custom architecture follows to be evaluated without writing an adapter.

- `module(x)`, x the normalized images (B, 3, S, S), returns `(maps, logits)`: the prototypes'
  similarity maps (B, P, h, w), higher meaning more similar, and the class logits (B, C);
- `module.prototype_class_identity` (or the option of that name): a (P, C) tensor, 1 where
  prototype p belongs to class c;
- the input: `module.img_size` or the option `input_size` (S), and `mean` / `std` (default ImageNet's).

An architecture with activations other than its maps' maxima, or with parts, writes an adapter
instead (docs/adapters.md).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from protobench.errors import AdapterError
from protobench.models.adapter import IMAGENET_MEAN, IMAGENET_STD, ModelInfo, PrototypeAdapter

PROTOCOL = ("forward(x) -> (maps (B, P, h, w), logits (B, C)) and a prototype_class_identity (P, C) tensor; "
            "see docs/python.md, Your own architecture")


class ModuleAdapter(PrototypeAdapter):
    """A module following the protocol, used as it is (the adapter shares it: no copy)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(x)


def keeping_modes(module: torch.nn.Module, build: Callable[[], Any]) -> Any:
    """build(), with every submodule's train / eval mode put back afterwards (an adapter puts its model
    in eval mode; a wrapped module is the user's and keeps its modes)."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        return build()
    finally:
        for m, mode in modes:
            m.training = mode


def protocol_adapter(module: torch.nn.Module, *, input_size: int | None = None,
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     prototype_class_identity: Any = None, name: str | None = None) -> ModuleAdapter:
    """The adapter of a module following the protocol; AdapterError (one line) when it does not."""
    dotted = f"{type(module).__module__}.{type(module).__qualname__}"
    identity = prototype_class_identity if prototype_class_identity is not None else \
        getattr(module, "prototype_class_identity", None)
    if not isinstance(identity, torch.Tensor) or identity.dim() != 2:
        raise AdapterError(f"cannot wrap a {dotted}: it is no supported model family's model (`protobench "
                           f"adapters` lists them) and does not follow the protocol: {PROTOCOL}")
    size = input_size if input_size is not None else getattr(module, "img_size", None)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise AdapterError(f"cannot wrap a {dotted}: give its input size, protobench.wrap(module, input_size=S) "
                           "(or give the module an img_size attribute)")
    maps, logits = _probe(module, dotted, size)
    protos, classes = identity.shape
    if maps.dim() != 4 or maps.shape[1] != protos or tuple(logits.shape) != (1, classes):
        raise AdapterError(f"cannot wrap a {dotted}: on one {size} px image it gives maps of shape "
                           f"{tuple(maps.shape)} and logits of shape {tuple(logits.shape)}, but its "
                           f"prototype_class_identity says {protos} prototypes and {classes} classes: {PROTOCOL}")
    info = ModelInfo(input_size=size, mean=_triple(mean, "mean"), std=_triple(std, "std"), num_classes=classes,
                     num_prototypes=protos, similarity="custom")
    device = next(module.parameters(), identity).device
    return keeping_modes(module, lambda: ModuleAdapter(module, info, identity.detach().to(device)))


def _probe(module: torch.nn.Module, dotted: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass on a blank image, in eval mode (the module's modes are put back)."""
    device = next(module.parameters(), torch.empty(0)).device
    def forward():
        with torch.no_grad():
            return module.eval()(torch.zeros(1, 3, size, size, device=device))

    try:
        out = keeping_modes(module, forward)
    except Exception as err:  # noqa: BLE001 - any failure of the user's forward means: not the protocol
        raise AdapterError(f"cannot wrap a {dotted}: its forward fails on one {size} px image "
                           f"({type(err).__name__}: {' '.join(str(err).split())[:120]}): {PROTOCOL}") from None
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
        raise AdapterError(f"cannot wrap a {dotted}: its forward returns {type(out).__name__}, not the pair "
                           f"(maps, logits): {PROTOCOL}")
    return out[0], out[1]


def _triple(values: Sequence[float], what: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3:
        raise AdapterError(f"protobench.wrap: {what} must be three numbers (R, G, B), got {values!r}")
    return out  # type: ignore[return-value]
