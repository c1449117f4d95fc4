"""The parity-regression guard: every built-in family against a committed fixture (tests/parity/<family>/),
a tiny checkpoint in its original code's own file format with the maps and logits that the slow, obvious
implementation of its formula gives on a fixed input (written by tests/make_parity_fixtures.py, not by
protobench). Checked in both `--distance` modes, so a change that moves any family's numbers fails here."""

from pathlib import Path

import pytest
import torch

from protobench.models.families import FAMILIES
from protobench.models.lookup import get_adapter

PARITY = Path(__file__).resolve().parent / "parity"
BUILT_IN = sorted(name for name, source in FAMILIES.sources().items() if source == "built-in")


def test_every_built_in_family_has_a_fixture():
    # here, or beside the tests under tests/fixtures/<family> with outputs its original code computed itself
    here = {p.name for p in PARITY.iterdir() if p.is_dir()}
    assert here <= set(BUILT_IN)
    assert all(name in here or (PARITY.parent / "fixtures" / name).is_dir() for name in BUILT_IN)


@pytest.mark.parametrize("family", [name for name in BUILT_IN if (PARITY / name).is_dir()])
@pytest.mark.parametrize("distance", ["float64", "float32"])
def test_the_family_still_computes_its_original_formula(family, distance):
    expected = torch.load(PARITY / family / "expected.pt", weights_only=True)
    adapter = get_adapter("auto").load(str(PARITY / family / expected["file"]), **expected["options"])
    assert adapter.name == family  # the file is still told apart as this family's
    with torch.no_grad():
        maps, logits = adapter.set_distance(distance)(expected["x"])
    assert maps.shape == expected["maps"].shape and logits.shape == expected["logits"].shape
    assert torch.allclose(maps, expected["maps"], rtol=1e-5, atol=1e-5), (maps - expected["maps"]).abs().max()
    assert torch.allclose(logits, expected["logits"], rtol=1e-5, atol=1e-5), (logits - expected["logits"]).abs().max()
