"""Run directories damaged at random (seeded), then reported and compared: never a bug (exit 3), never an
import of code a file names, never a file written outside --out (docs/security.md, Run directories).

Each case damages one file of a finished run: meta.json (a value replaced anywhere in its tree, a key
dropped, its bytes cut or flipped), per_image.csv, summary.csv or per_prototype.csv (a cell, a column,
a row, cut or flipped bytes) or examples.safetensors (its metadata rewritten, its bytes cut or flipped).
`pytest -m slow` runs many more cases, and re-runs from the checkpoint too.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import sys
import uuid
from pathlib import Path

import pytest

from report_fixtures import invoke, make_run

FILES = ("meta.json", "per_image.csv", "summary.csv", "per_prototype.csv", "examples.safetensors")
MARKER = f"pbfuzzmarker_{uuid.uuid4().hex[:8]}"
# values a careless or hostile hand puts into a run's files
VALUES = [None, True, -1, 0, 1e15, 1e308, -1e308, 2**70, float("nan"), "", "x", "nan", "inf", "-1", "1e300",
          [], {}, [1, 2], {"a": {"b": []}}, f"{MARKER}:X", f"{MARKER}.sub", MARKER, "this:X", "os:system",
          "../../../outside", "/dev/zero", "/proc/self/mem", "<script>alert(1)</script>", "[bold]x[/]", "a\x00b",
          "é\udcff", "x" * 5000, "| ** @everyone [l](http://e)"]
TOKENS = [v if isinstance(v, str) else json.dumps(v) if v is not None else "" for v in VALUES if not isinstance(v, float)]
TOKENS += ["nan", "inf", "1e15", "0.5", "3", '"', "1,2", "\n"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished run with part scores and saved examples (checkpoint and data beside it), and a marker
    module on sys.path that leaves a file behind if it is ever imported."""
    root = tmp_path_factory.mktemp("fuzzruns")
    data = root / "data"
    from conftest import write_image_folder

    write_image_folder(data)
    rows = ["image,part,x,y,visible"] + [f"class{c}/img{i}.png,{part},{5 + 9 * k},{30 - 7 * k},1"
                                         for c in range(3) for i in range(4) for k, part in enumerate(("a", "b"))]
    (data / "parts.csv").write_text("\n".join(rows) + "\n")
    run = make_run(root, "--metrics", "misalignment,consistency,stability")
    code = root / "code"
    code.mkdir()
    (code / f"{MARKER}.py").write_text(f"open({str(root / 'imported')!r}, 'w').write('imported')\n")
    sys.path.insert(0, str(code))
    yield run
    sys.path.remove(str(code))


def damage_json(path: Path, rng: random.Random) -> None:
    text = path.read_text(encoding="utf-8")
    kind = rng.random()
    if kind < 0.15:
        damage_bytes(path, rng)
        return
    tree = json.loads(text)
    slots = list(_slots(tree))
    holder, key = rng.choice(slots)
    if kind < 0.3 and isinstance(holder, dict):
        del holder[key]
    else:
        holder[key] = rng.choice(VALUES)
    path.write_text(json.dumps(tree), encoding="utf-8", errors="surrogatepass")


def _slots(node, depth=0):
    """(container, key) of every value in a JSON tree."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield node, key
        if depth < 6:
            yield from _slots(value, depth + 1)


def damage_csv(path: Path, rng: random.Random) -> None:
    kind = rng.random()
    if kind < 0.2:
        damage_bytes(path, rng)
        return
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    if kind < 0.3:
        column = rng.randrange(len(rows[0]))
        rows = [r[:column] + r[column + 1:] for r in rows]
    elif kind < 0.4 and len(rows) > 1:
        rows.append(list(rng.choice(rows[1:])))
    else:
        for _ in range(rng.choice((1, 1, 2, 5))):
            row = rng.randrange(len(rows))
            rows[row][rng.randrange(len(rows[row]))] = rng.choice(TOKENS)
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    path.write_text(out.getvalue(), encoding="utf-8", errors="surrogatepass")


def damage_examples(path: Path, rng: random.Random) -> None:
    if rng.random() < 0.5:
        damage_bytes(path, rng)
        return
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    key = rng.choice(sorted(metadata))
    value = rng.choice(VALUES)
    metadata[key] = value if isinstance(value, str) and "\udcff" not in value else json.dumps(value)
    save_file(tensors, str(path), metadata=metadata)


def damage_bytes(path: Path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    if rng.random() < 0.5:
        path.write_bytes(bytes(data[:rng.randrange(len(data))]))
        return
    for _ in range(rng.choice((1, 4, 16))):
        i = rng.randrange(min(len(data), 4096))  # the headers and first rows, where the structure is
        data[i] = rng.randrange(256)
    path.write_bytes(bytes(data))


DAMAGE = {".json": damage_json, ".csv": damage_csv, ".safetensors": damage_examples}


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` but those under `skip`: (size, mtime)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        if Path(folder) == skip or skip in Path(folder).parents:
            dirs.clear()
            continue
        for name in files:
            stat = os.lstat(os.path.join(folder, name))
            found[os.path.join(folder, name)] = (stat.st_size, stat.st_mtime_ns)
    return found


def fuzz_case(runs: Path, tmp_path: Path, seed: int, examples: tuple[str, ...]) -> None:
    rng = random.Random(seed)
    work = tmp_path / f"case{seed}"
    run = work / "run"
    shutil.copytree(runs, run)
    damaged = rng.choice(FILES)
    DAMAGE[Path(damaged).suffix](run / damaged, rng)
    out = work / "report"
    before = {**snapshot(runs.parent, out), **snapshot(work, out)}
    commands = [["report", run, "--out", out, "--examples", rng.choice(examples), "--worst", 1, "--best", 1],
                ["compare", runs, run, "--format", rng.choice(("table", "markdown"))],
                ["compare", run, runs, "--force"]]
    for command in commands:
        result = invoke(*command)
        where = f"seed {seed}, {damaged}, {' '.join(map(str, command[:1] + command[3:]))}: {result.output[-600:]}"
        assert result.exit_code in (0, 1, 2), where
        assert "Traceback" not in result.output and "bug in protobench" not in result.output, where
        assert not (runs.parent / "imported").exists() and MARKER not in sys.modules, where
        assert {**snapshot(runs.parent, out), **snapshot(work, out)} == before, where  # nothing written outside --out, the run untouched
    shutil.rmtree(work)


@pytest.mark.parametrize("seed", range(5))
def test_damaged_run_directories(runs, tmp_path, seed):
    fuzz_case(runs, tmp_path, seed, ("none", "saved"))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5, 400))
def test_damaged_run_directories_many(runs, tmp_path, seed):
    fuzz_case(runs, tmp_path, seed, ("none", "saved", "rerun"))
