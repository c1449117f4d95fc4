"""The adapter protocol, and the facts a model family declares beside its adapter.

An adapter wraps one loaded prototype model and exposes what the benchmark needs:
similarity maps (differentiable w.r.t. the input), logits, the prototype-to-class
identity and the input spec; and, for families whose activation is not the maximum of a
map, the activations and the parts each prototype matched (`Evidence`). The core never
looks past this interface.

A family's adapter class also says what the family is and which original files are its
(`facts`, `claims`); the registry of families, `protobench.models.families`, builds
`--adapter auto` and the safe unpickler's allow-list from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from protobench.errors import AdapterError

if TYPE_CHECKING:  # torch is imported lazily: `protobench --help` must stay fast
    import torch

    from protobench.checkpoints.loading import Checkpoint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FamilyFacts:
    """What a model family is and which of its original files protobench reads (docs/adapters.md,
    Supported models). `protobench adapters` shows them; the class lists feed safe unpickling."""

    display_name: str  # the family's own spelling, as its paper writes it
    paper: str  # "Authors et al., VENUE YEAR"
    origin: str = ""  # the original code's repository (URL)
    commit: str = ""  # the commit of it whose checkpoints protobench was checked against
    license: str = ""  # the original code's license, as its repository states it
    files: str = ""  # which of the original code's files protobench reads, in words
    # dotted class names (module.qualname) as the original code pickles them; protobench never imports
    # them, each becomes an inert stand-in (protobench.checkpoints.pickles)
    root_classes: tuple[str, ...] = ()  # the model classes of whole-model pickles this family reads
    pickled_classes: tuple[str, ...] = ()  # every other class those pickles hold (submodules, blocks)
    # registered families whose files this family's narrower claim picks out (same pickled class or same
    # keys plus a signature of its own): where both claim a file, this family's claim wins
    refines: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelInfo:
    """What the benchmark needs to know about a model's inputs and outputs."""

    input_size: int  # square side S the model takes, in pixels
    mean: tuple[float, float, float]  # per-channel normalization mean (RGB, 0..1 scale)
    std: tuple[float, float, float]  # per-channel normalization std
    num_classes: int  # C, width of the logits
    num_prototypes: int  # P, number of similarity maps
    similarity: str  # how maps are computed, for the record (e.g. "log", "linear")
    classes: tuple[str, ...] | None = None  # class names in logit order, where the checkpoint records them


@dataclass(frozen=True)
class Evidence:
    """What the benchmark reads from one forward pass (docs/adapters.md, What an adapter gives).

    Only maps and logits are required. A family whose prototype activation is not the maximum
    of its map (e.g. a weighted sum over parts matched to several tokens) gives its
    `activations`; a family whose prototypes are made of parts gives each part's map (`parts`)
    and the map cell each part matched (`cells`). Left out, they are derived from the maps:
    the activation is the map's maximum, and a prototype is one part, its map, at its argmax.
    """

    maps: torch.Tensor  # (B, P, h, w) similarity maps, as the family shows them
    logits: torch.Tensor  # (B, C)
    activations: torch.Tensor | None = None  # (B, P) each prototype's activation; None: max of its map
    parts: torch.Tensor | None = None  # (B, P, J, h, w) the maps of each prototype's J parts; None: the map
    cells: torch.Tensor | None = None  # (B, P, J) long: the cell (row * w + col) each part matched; None: argmax

    @property
    def act(self) -> torch.Tensor:
        return map_maxima(self.maps) if self.activations is None else self.activations

    @property
    def part_maps(self) -> torch.Tensor:
        return self.maps[:, :, None] if self.parts is None else self.parts

    @property
    def part_cells(self) -> torch.Tensor:
        return map_argmax_cells(self.maps) if self.cells is None else self.cells

    def tensors(self) -> dict[str, torch.Tensor]:
        """The fields that are given, by name."""
        fields = ("maps", "logits", "activations", "parts", "cells")
        return {name: getattr(self, name) for name in fields if getattr(self, name) is not None}


def map_maxima(maps: torch.Tensor) -> torch.Tensor:
    """(B, P, h, w) -> (B, P): each map's maximum, the activation of a family that gives no other."""
    return maps.amax(dim=(2, 3))


def map_argmax_cells(maps: torch.Tensor) -> torch.Tensor:
    """(B, P, h, w) -> (B, P, 1): the cell (row * w + col) of each map's maximum, its one part's match."""
    return maps.flatten(2).argmax(dim=2, keepdim=True)


class PrototypeAdapter:
    """Base class of every adapter: a model plus the facts the benchmark needs.

    Subclasses implement `load` and `forward`; `name` is the registry name.
    """

    name: ClassVar[str] = ""  # the name it is registered under (set by FAMILIES.add / .register)
    facts: ClassVar[FamilyFacts | None] = None  # None: nothing to list, and no pickled class is its own
    # How the family trains, declared in its own file beside `training_loss`, `parameter_groups` and
    # `push`: a function of finetune's rates and epochs (joint, push, last, lr_features, lr_add_on,
    # lr_prototypes, lr_last, weight_decay, step_size, gamma, joint_extras) returning the phases
    # (protobench.models.plan.Phase). None: the family declares no training; finetune refuses it.
    training_schedule: ClassVar[Callable[..., tuple] | None] = None
    # True when `evidence` is a pure function of its input (it keeps no state between calls), so
    # that the CPU may run it on several threads at once, each on its own images (protobench.run.chunks)
    concurrent: ClassVar[bool] = False

    def __init__(self, model: torch.nn.Module, info: ModelInfo, prototype_class_identity: torch.Tensor):
        self.model = model.eval()
        self.info = info
        self.prototype_class_identity = prototype_class_identity.float()  # (P, C), 1 where p belongs to c

    @classmethod
    def load(cls, path: str, **options: Any) -> PrototypeAdapter:
        """Build the adapter from a checkpoint file; raise CheckpointError if it cannot."""
        raise NotImplementedError

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, **options: Any) -> PrototypeAdapter:
        """Build the adapter from a checkpoint `--adapter auto` has read and found to be this family's."""
        return cls.load(ckpt.path, **options)

    @classmethod
    def claims(cls, ckpt: Checkpoint) -> bool:
        """Whether `--adapter auto` may read this original checkpoint as this family: a whole-model
        pickle of one of `facts.root_classes` that `claims_pickle` accepts, or a state dict whose keys
        `claims_keys` accepts. (protobench's own files name their family; they never come here.)"""
        keys = frozenset(ckpt.tensors)
        if ckpt.root is not None:
            return (cls.facts is not None and ckpt.root_class in cls.facts.root_classes
                    and bool(cls.claims_pickle(ckpt.root.__dict__, keys)))
        return cls.claims_keys(keys)

    @classmethod
    def claims_pickle(cls, attributes: dict[str, Any], keys: frozenset[str]) -> bool:
        """Whether a whole-model pickle of one of `facts.root_classes` is this family's, from the pickled
        model's attributes (its `__dict__`: plain values and `_modules`, `_parameters`, `_buffers`, all
        read from an untrusted file) and its state-dict keys. Yes by default: the class name is enough
        unless several families pickle the same class (declare `facts.refines` then)."""
        return True

    @classmethod
    def claims_keys(cls, keys: frozenset[str]) -> bool:
        """Whether a state dict with these keys is this family's (its key signature); no by default."""
        return False

    @classmethod
    def companion_files(cls, filename: str) -> tuple[str, ...]:
        """Files beside a checkpoint of this name that the family also reads (fetched with it from a hub)."""
        return ()

    @classmethod
    def claims_path(cls, path: str) -> bool:
        """Whether `--adapter auto` should hand this path to the family before reading it as one file
        (a family whose models are saved as a directory of files); no by default."""
        return False

    @classmethod
    def display_name(cls) -> str:
        return cls.facts.display_name if cls.facts is not None else cls.name

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized images (B, 3, S, S) -> (similarity maps (B, P, h, w), logits (B, C))."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward(x)

    def evidence(self, x: torch.Tensor) -> Evidence:
        """Everything the benchmark reads from one pass: forward's maps and logits, plus the
        activations, parts and cells of families that have them (override it then)."""
        maps, logits = self.forward(x)
        return Evidence(maps, logits)

    def set_distance(self, mode: str) -> PrototypeAdapter:
        """`--distance`: 'float64' (protobench's default) or 'float32', the original's own arithmetic for a
        family whose original takes its squared distance (|z|^2 - 2 z.p + |p|^2, or CaBRNet's cdist) in float32
        (its model has a `distance` attribute).
        Families without that formula compute as their original in both modes."""
        if mode not in ("float64", "float32"):
            raise AdapterError(f"unknown distance {mode!r}: use float64 or float32")
        for module in self.model.modules():
            if isinstance(getattr(type(module), "distance", None), str):
                module.distance = mode
        return self

    def to(self, device: Any) -> PrototypeAdapter:
        self.model.to(device)
        self.prototype_class_identity = self.prototype_class_identity.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.prototype_class_identity.device

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The family's own training loss on normalized images and labels: its scalar terms and the
        total 'loss'; optionally the same forward pass's 'maps' (B, P, h, w) and 'logits' (B, C),
        which `protobench finetune` reuses (first pass of the alignment loss, training accuracy)."""
        raise AdapterError(f"adapter {self.name!r} has no training loss: it cannot be trained or fine-tuned "
                           "(`protobench adapters` lists the families protobench finetune supports)")

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """The trainable parameters by part, 'features', 'add_on', 'prototypes' and 'last_layer'
        (each part gets its own learning rate when fine-tuning)."""
        raise AdapterError(f"adapter {self.name!r} does not say which parameters are its backbone, prototypes "
                           "and last layer: it cannot be fine-tuned (`protobench adapters` lists the families "
                           "protobench finetune supports)")

    def push(self, loader: Any) -> list:
        """Project prototypes onto training patches of their class; loader yields (x, y, index)."""
        raise AdapterError(f"adapter {self.name!r} cannot push prototypes onto training patches")

    def save(self, path: str, extra: dict[str, str] | None = None) -> None:
        """Write the model in protobench's safetensors format (adapters that can rebuild from it)."""
        raise NotImplementedError(f"adapter {self.name!r} cannot write protobench checkpoints")
