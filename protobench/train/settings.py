"""`protobench finetune`'s settings: the options that decide the fine-tuned weights, and the
plan and objective they make for protobench.train.trainer (docs/compensation.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from protobench import options
from protobench.core.protocol import MAX_RADIUS
from protobench.train.objective import Compensation
from protobench.models.plan import Plan

DEFAULT_LAMBDA = {False: 10.0, True: 3.0}  # the paper's 10; 3 for the adversarial variant (docs/compensation.md)
MAX_EPOCHS, MAX_BATCH = 100_000, 65536
# what a run stopped by non-finite values may change on --resume: the step sizes that made it diverge
TUNABLE = ("lr_features", "lr_add_on", "lr_prototypes", "lr_last", "weight_decay", "lambda_align")


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides the fine-tuned weights (with the checkpoint, data and device type)."""

    lambda_align: float | None = None  # weight of the alignment loss (0: the family's loss alone); None: DEFAULT_LAMBDA
    align_loss: str = "l1"  # 'l1' or 'l2'
    adversarial: bool = False  # outside of the mask: sign-gradient perturbation instead of the mean colour
    adv_steps: int = 3  # crafting steps of eps / 2 after a random start
    adv_eps: float = 0.4  # L-inf radius, normalized units (the benchmark's)
    mask_aug: bool = True  # docs/compensation.md's masking augmentation
    aug_prob: float = 0.5  # probability per image
    epochs: int = 3  # joint epochs
    last_epochs: int = 5  # last-layer epochs (after push)
    push: bool = True
    lr_features: float = 1e-4
    lr_add_on: float = 3e-3
    lr_prototypes: float = 3e-3
    lr_last: float = 1e-3  # ProtoPNet's CUB recipe: 1e-4, with 4x more steps (docs/compensation.md)
    weight_decay: float = 1e-3  # backbone and add-on, as ProtoPNet
    step_size: int = 5  # StepLR over the joint epochs
    gamma: float = 0.1
    batch_size: int = 32
    seed: int = 0

    @property
    def align_weight(self) -> float:
        """lambda: as given, else the default of the variant chosen. Resolved here, when used, so
        that dataclasses.replace(settings, adversarial=True) gets the adversarial default."""
        return DEFAULT_LAMBDA[self.adversarial] if self.lambda_align is None else self.lambda_align

    def check(self) -> None:
        """OptionError for any setting out of its range, before anything is loaded or written."""
        options.choice("--align-loss", self.align_loss, ("l1", "l2"))
        options.number("--lambda-align", self.align_weight, 0)
        options.integer("--adv-steps", self.adv_steps, 0, 1000)
        options.number("--adv-eps", self.adv_eps, 0, MAX_RADIUS)
        options.number("--aug-prob", self.aug_prob, 0, 1)
        options.integer("--epochs", self.epochs, 0, MAX_EPOCHS)
        options.integer("--last-epochs", self.last_epochs, 0, MAX_EPOCHS)
        for name in ("lr_features", "lr_add_on", "lr_prototypes", "lr_last", "weight_decay"):
            options.number(f"--{name.replace('_', '-')}", getattr(self, name), 0)
        options.integer("step_size", self.step_size, 1)
        options.number("gamma", self.gamma, 0)
        options.integer("--batch-size", self.batch_size, 2, MAX_BATCH)  # batch norm cannot train on 1 image
        options.integer("--seed", self.seed, 0, options.SEED_MAX)

    def as_dict(self) -> dict[str, Any]:
        """The settings as recorded (finetune.json, the model's metadata): lambda resolved."""
        return {**asdict(self), "lambda_align": self.align_weight}

    def plan(self, adapter) -> Plan:
        """The family's own schedule (its `training_schedule`) without warm-up: joint epochs (with
        the alignment term), push, last-layer epochs."""
        phases = type(adapter).training_schedule(joint=self.epochs, push=self.push, last=self.last_epochs, lr_features=self.lr_features,
                          lr_add_on=self.lr_add_on, lr_prototypes=self.lr_prototypes, lr_last=self.lr_last,
                          weight_decay=self.weight_decay, step_size=self.step_size, gamma=self.gamma,
                          joint_extras=("align",))
        return Plan(phases, batch_size=self.batch_size, seed=self.seed)

    def objective(self, adapter) -> Compensation:
        """Masking augmentation + the family's loss + lambda * alignment (protobench.train.objective)."""
        adversarial = {"eps": self.adv_eps, "steps": self.adv_steps} if self.adversarial else None
        return Compensation(adapter, weight=self.align_weight, kind=self.align_loss, mask_aug=self.mask_aug,
                            aug_prob=self.aug_prob, adversarial=adversarial)
