"""The package layout stays what docs/architecture.md describes: small modules, no import cycles,
and each package importing only what the table's "may import" column allows."""

from __future__ import annotations

import ast
from pathlib import Path

import protobench

ROOT = Path(protobench.__file__).parent
ADAPTERS = ROOT.parent / "adapters"
MAX_LINES = 300  # "about 300": a module past it is doing two jobs


def modules() -> dict[str, Path]:
    """protobench.* module name -> file, including the families under adapters/ (protobench.adapters)."""
    found = {}
    for base, package in ((ROOT, "protobench"), (ADAPTERS, "protobench.adapters")):
        for path in base.rglob("*.py"):
            parts = path.relative_to(base).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The protobench modules a file imports, at module level or inside functions (not the ones
    under `if TYPE_CHECKING:`, which never run)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target != "protobench":
                out.add(target)
    return out


def test_no_module_is_over_300_lines():
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_import_graph_has_no_cycles():
    found = modules()
    graph = {name: imports(path, name, set(found)) for name, path in found.items()}
    cycles = []

    def visit(node, stack, on_stack, done):
        on_stack.add(node)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt in on_stack:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, stack, on_stack, done)
        stack.pop()
        on_stack.discard(node)
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [], set(), done)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


DOC = ROOT.parent / "docs" / "architecture.md"


def layering() -> list[tuple[str, set[str]]]:
    """docs/architecture.md's package table: (unit, the units it may import), in the table's order.
    A unit is a subpackage (`core`), a top-level module (`errors`) or the families (`adapters`)."""
    import re

    table = DOC.read_text(encoding="utf-8").split("## Packages")[1].split("\n\n")
    rows = next(block for block in table if block.startswith("| package |")).splitlines()[2:]
    found: list[tuple[str, set[str]]] = []
    for row in rows:
        package, _, may = [cell.strip() for cell in row.strip("|").split(" | ")]
        path = re.match(r"`([^`]+)`", package).group(1)
        unit = "adapters" if path == "adapters/" else path.removeprefix("protobench/").removesuffix("/").removesuffix(".py")
        if may.startswith("everything above"):
            allowed = {name for name, _ in found}
        else:
            allowed = set(re.findall(r"`([^`]+)`", may)) if may != "nothing" else set()
        found.append((unit, allowed))
    return found


def unit(module: str) -> str:
    """The table's unit of a module: 'protobench.core.attack' -> 'core', 'protobench.errors' -> 'errors'."""
    return module.split(".")[1] if module != "protobench" else "protobench"


def test_the_layering_table_is_enforced():
    table = layering()
    allowed = dict(table)
    assert len(allowed) == len(table), "a package is listed twice in docs/architecture.md"
    found = modules()
    unlisted = sorted({unit(name) for name in found} - set(allowed) - {"protobench"})
    assert not unlisted, f"packages missing from docs/architecture.md's table: {unlisted}"
    unknown = sorted({name for names in allowed.values() for name in names} - set(allowed))
    assert not unknown, f"the table allows imports of packages it does not list: {unknown}"
    broken = []
    for name, path in sorted(found.items()):
        for target in sorted(imports(path, name, set(found))):
            if unit(target) not in (unit(name), "protobench") and unit(target) not in allowed.get(unit(name), ()):
                broken.append(f"{name} imports {target}")
    assert not broken, "imports docs/architecture.md does not allow:\n" + "\n".join(broken)


def test_the_layering_check_sees_a_forbidden_import(tmp_path):
    """The check above reads imports inside functions too, and not those under TYPE_CHECKING."""
    path = tmp_path / "bad.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from protobench.run import evaluate\n"
                    "def f():\n    from protobench.models.families import FAMILIES\n")
    known = set(modules())
    assert imports(path, "protobench.core.bad", known) == {"protobench.models.families"}
    assert "models" not in dict(layering())["core"] and "models" in dict(layering())["run"]


FAMILY_WORDS = ("protopnet", "tesnet", "protopool", "pipnet", "pip-net", "prototree", "deformable", "protopshare",
                "stprotopnet", "st-protopnet", "protovit", "ppnet")


# A protocol preset is named after the paper whose benchmark code it reproduces and runs on every
# family (docs/metrics.md, Protocols): its name, as a quoted key, is the one mention core may make.
PROTOCOL_NAMES = {"core/protocol.py": ('"protovit"',)}


def test_no_model_family_is_named_outside_its_own_file():
    """The core, the loaders, the data and the run code know families only through FAMILIES."""
    named = []
    for package in ("core", "models", "checkpoints", "data", "run"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8").lower()
            for name in PROTOCOL_NAMES.get(str(path.relative_to(ROOT)), ()):
                text = text.replace(name, "")
            named += [f"{path.relative_to(ROOT)}: {word}" for word in FAMILY_WORDS if word in text]
    assert not named, named


def test_the_loop_names_no_attack():
    """Attacks are looked up in ATTACKS by the protocol's name, never switched on in the loop."""
    for name in ("benchmark.py", "evaluate.py", "forward.py"):
        text = (ROOT / "run" / name).read_text(encoding="utf-8")
        assert not any(f"{q}{attack}{q}" in text for attack in ("pgd", "noise") for q in "'\""), name


def test_nothing_cites_a_document_that_does_not_ship():
    """Sources and docs cite docs/ sections: the specification the project was written from is not
    part of the package, so a section number of it in a comment or a page points at nothing a reader has."""
    import re

    repo = ROOT.parent
    files = [p for folder in ("protobench", "adapters", "benchmarks", "scripts", "tests", "docs")
             for p in (repo / folder).rglob("*") if p.suffix in (".py", ".md", ".sh", ".html") and p.is_file()]
    files.append(repo / "README.md")
    cites = re.compile(r"\bSPEC\s+\d")
    found = [f"{p.relative_to(repo)}:{n}" for p in files
             for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if cites.search(line)]
    assert not found, found
