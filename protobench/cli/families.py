"""`protobench adapters`: one row per registered model family."""

from __future__ import annotations

from protobench.models.adapter import PrototypeAdapter
from protobench.models.families import FAMILIES


def describe() -> list[dict[str, str]]:
    """One row per registered family for `protobench adapters` (imports them all; a plugin that
    cannot be imported is listed with the reason)."""
    rows = []
    for name, source in FAMILIES.sources().items():
        row = {"name": name, "family": "", "paper": "", "license": "", "finetune": "", "source": source}
        try:
            cls = FAMILIES.get(name)
        except Exception as err:  # noqa: BLE001 - listing must show a broken plugin, not stop at it
            row["family"] = f"cannot be imported ({' '.join(str(err).split())[:120]})"
            rows.append(row)
            continue
        facts = cls.facts
        trains = all(getattr(cls, hook) is not getattr(PrototypeAdapter, hook)
                     for hook in ("training_loss", "parameter_groups")) and cls.training_schedule is not None
        row.update(family=cls.display_name(), paper=facts.paper if facts else "",
                   license=facts.license if facts else "", finetune="yes" if trains else "no")
        rows.append(row)
    return rows
