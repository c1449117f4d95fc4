"""Telling a checkpoint's model family from what the registered families declare (`--adapter auto`),
and reading any checkpoint with the pickled classes they name allowed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protobench.errors import AdapterError, CheckpointError
from protobench.models.adapter import PrototypeAdapter
from protobench.models.families import display_name, pickled_classes, usable_families

if TYPE_CHECKING:
    from protobench.checkpoints.loading import Checkpoint


def read_family_checkpoint(path: str, family: type[PrototypeAdapter] | None = None) -> Checkpoint:
    """Read any checkpoint file safely (protobench.checkpoints.loading.read_checkpoint): a pickle may
    name the registered families' classes, and those of `family` (an adapter loaded by import path)."""
    from protobench.checkpoints.loading import read_checkpoint

    classes = pickled_classes()
    if family is not None and family.facts is not None:
        classes |= {*family.facts.root_classes, *family.facts.pickled_classes}
    return read_checkpoint(path, classes)


def _refines(name: str, cls: type[PrototypeAdapter]) -> tuple[str, ...]:
    declared = cls.facts.refines if cls.facts is not None else ()
    if not isinstance(declared, (tuple, list)) or not all(isinstance(n, str) for n in declared):
        raise AdapterError(f"model family {name!r} declares refines wrongly: it must be a tuple of family names")
    return tuple(declared)


def most_specific(found: dict[str, type[PrototypeAdapter]]) -> tuple[str, ...]:
    """The claimants no other claimant refines: a family whose narrower claim (a signature of its own
    on the same pickled class or keys) picked the file out wins over the family it refines."""
    refined = {general for name, cls in found.items() for general in _refines(name, cls) if general != name}
    return tuple(name for name in found if name not in refined)


def claimants(ckpt: Checkpoint) -> tuple[str, ...]:
    """The families that could read this checkpoint: the one its metadata names, or the most
    specific of the registered families whose `claims` accepts it (pickled model class and its
    attributes, or key signature)."""
    if ckpt.is_protobench:
        return (ckpt.adapter,)
    found = most_specific({name: cls for name, cls in usable_families() if cls.claims(ckpt)})
    if ckpt.root is not None and not found:
        raise CheckpointError(f"{ckpt.path} holds a pickled {ckpt.root_class}, which no registered model family "
                              "reads; write an adapter for it (see docs/adapters.md)")
    return found


def detect_family(ckpt: Checkpoint) -> str:
    """`--adapter auto`: the one family that claims the checkpoint, else a one-line error."""
    found = claimants(ckpt)
    if len(found) == 1:
        return found[0]
    if not found:
        sample = ", ".join(sorted(ckpt.tensors)[:3]) or "none"
        raise CheckpointError(f"cannot tell which model family {ckpt.path} belongs to (first keys: {sample}); "
                              "pass --adapter NAME (see `protobench adapters`)")
    labels = [display_name(f) for f in found]
    names = " and ".join(labels if len(set(labels)) == len(labels) else found)  # a subclass may keep its parent's
    options = " or ".join(f"--adapter {f}" for f in found)
    what = "a state dict" if ckpt.root is None else f"a pickled {ckpt.root_class}"
    why = " (identical keys)" if ckpt.root is None else " (each claims that class)"
    raise CheckpointError(f"{ckpt.path} is {what} that {names} share{why}; say which with {options}")


def check_family(ckpt: Checkpoint, family: type[PrototypeAdapter]) -> None:
    """Raise a one-line error when the checkpoint belongs to another family than `family`'s."""
    name = family.name
    if ckpt.is_protobench:
        found: tuple[str, ...] = (ckpt.adapter,)
    elif family.claims(ckpt):  # registered or not (an adapter loaded by import path)
        narrower = {n: cls for n, cls in usable_families()
                    if n != name and name in _refines(n, cls) and cls.claims(ckpt)}
        if not narrower:
            return
        found = tuple(narrower)  # e.g. a variant of the family, pickled under the same class name
    else:
        found = claimants(ckpt)
    if name in found:
        return
    if not found:
        sample = ", ".join(sorted(ckpt.tensors)[:3]) or "none"
        raise CheckpointError(f"{ckpt.path} does not look like a {family.display_name()} checkpoint "
                              f"(first keys: {sample}); see `protobench adapters` for the families protobench reads")
    holder = f"a {found[0]!r} model" if ckpt.is_protobench else f"a {display_name(found[0])} checkpoint"
    raise CheckpointError(f"{ckpt.path} holds {holder}, not {name!r}: run with --adapter {found[0]}")
