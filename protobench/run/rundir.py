"""A command's output directory, as `protobench evaluate` and `protobench finetune` both keep it.

It is in one of three states:
- empty: none of the command's files in it;
- partial: its record (what the run is: options, checkpoint, data) is there, the run is not finished:
  `--resume` continues it;
- complete: the file written last is there.

Runs are never mixed: files of another run need `--overwrite` (start again) or `--resume` (continue it);
both at once is an error.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from protobench.errors import Notice, ProtobenchError


@dataclass(frozen=True)
class RunDirectory:
    """What a command keeps in its directory (`files`): `record` is written first, `done` last."""

    path: Path
    record: str
    done: str
    files: tuple[str, ...]
    noun: str  # what the command's files are, in an error message ("results", "a fine-tuning run")

    def state(self) -> str:
        """'complete', 'partial' or 'empty'."""
        if (self.path / self.done).exists():
            return "complete"
        if (self.path / self.record).is_file():
            return "partial"
        return "empty"

    def present(self) -> list[str]:
        return [name for name in self.files if (self.path / name).exists()]

    def check(self, overwrite: bool, resume: bool) -> str:
        """The state the run starts from ('empty' when it starts afresh); a one-line error for a run it would
        mix with another."""
        if overwrite and resume:
            raise ProtobenchError("--overwrite and --resume contradict each other: choose one")
        if self.path.exists() and not self.path.is_dir():
            raise ProtobenchError(f"--out {self.path} is a file, not a directory")
        current, present = self.state(), self.present()
        if resume and current != "empty":
            return current
        if overwrite or not present:
            return "empty"
        if current == "partial":
            raise ProtobenchError(f"{self.path} holds an interrupted run: add --resume to continue it "
                                  "or --overwrite to start again")
        if resume:  # files of ours without the record: not a run this version wrote, nor one it can continue
            raise ProtobenchError(f"nothing to resume in {self.path} (no {self.record}, but {', '.join(present)}): "
                                  "pass --overwrite to start again or choose another --out")
        raise ProtobenchError(f"{self.path} already holds {self.noun} ({', '.join(present)}): pass --overwrite to "
                              "replace them, --resume to continue or reuse them, or choose another --out")

    def note_fresh(self, resume: bool, state: str) -> None:
        """A note when --resume found nothing to resume (e.g. a CI job that always passes it)."""
        if resume and state == "empty":
            warnings.warn(f"nothing to resume in {self.path}: starting a fresh run", Notice, stacklevel=3)


def run_identity(adapter, adapter_spec: str, options: dict, ckpt: str, dataset, split: str | None,
                 device_type: str) -> dict:
    """What evaluate and finetune both record of a run, for --resume to refuse another: the family `auto`
    chose, its options, the checkpoint's sha256, the dataset's kind and split, the device type. Each
    command adds what else decides its results."""
    from protobench.checkpoints.formats import sha256

    return {
        "adapter": adapter.name or adapter_spec,
        "adapter_options": options,
        "checkpoint_sha256": sha256(ckpt) if Path(ckpt).is_file() else None,
        "dataset_kind": getattr(dataset, "kind", None),  # datasets from other loaders may lack these
        "split": split,
        "device_type": device_type,
    }
