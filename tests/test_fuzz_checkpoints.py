"""Seeded mutation fuzzing of every checkpoint format protobench reads.

The seeds are each family's tiny model in protobench's format and the original formats
(tests/originals.py); each case mutates one seed (bytes, truncation, pickle integers and
names, safetensors metadata, header records and tensors) and loads it through the public
path. Whatever the input: only ProtobenchError comes out, peak memory stays bounded, and
no module is imported because a file named it (marker modules stand on sys.path under
every name the seeds' pickles use).
"""

from __future__ import annotations

import functools
import io
import json
import math
import pickletools
import random
import struct
import sys
import zipfile

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from hostile import peak_growth_mb
from protobench.models.lookup import get_adapter
from protobench.errors import ProtobenchError
from test_cli import invoke

FAMILIES = ("protopnet", "tesnet", "protopool", "pipnet", "prototree", "protovit")
PICKLED_MODULES = ("model", "models", "resnet_features", "vgg_features", "features", "prototree", "util", "pipnet",
                   "protopool", "timm", "pwn_marker")
HOSTILE_VALUES = [-1, 0, 1, 2**31 - 1, 10**12, -(10**12), 6.5, float("nan"), float("inf"), True, None, "abc", "",
                  [], {}, [1] * 50, {"a": 1}, "pwn_marker:Adapter", "auto", [[[[[]]]]]]
HOSTILE_NAMES = [b"pwn_marker", b"os", b"system", b"builtins", b"eval", b"bytearray", b"_parameters", b"_modules",
                 b"img_size", b"epsilon", b"prototype_class_identity", b"torch._utils", b"_rebuild_tensor_v2"]
MEMORY_BOUND_MB = 256


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> list[tuple[str, bytes]]:
    """(kind, bytes) of every valid seed file: 'safetensors', 'zip' or 'legacy'."""
    from test_originals import write_pipnet, write_ppnet, write_protopool, write_prototree
    from test_protovit import write_protovit

    root = tmp_path_factory.mktemp("seeds")
    files = []
    for family in FAMILIES:
        path = root / f"{family}.safetensors"
        get_adapter(family).tiny().save(str(path))
        files.append(path)
    for i, (write, kwargs) in enumerate([(write_ppnet, {}), (write_ppnet, {"backbone": "vgg", "legacy": True}),
                                         (write_ppnet, {"family": "tesnet"}), (write_protopool, {}),
                                         (write_pipnet, {}), (write_prototree, {})]):
        (root / str(i)).mkdir()
        path = write(root / str(i), **kwargs)[0]
        files.append(path / "model.pth" if write is write_prototree else path)
    (root / "vit").mkdir()  # ProtoViT's model.PPNet with timm's DeiT, and its state dict
    files += [write_protovit(root / "vit", prototypes=6)[0], root / "vit" / "state.pth"]
    kinds = {b"PK": "zip", b"\x80\x02": "legacy"}
    return [(kinds.get(p.read_bytes()[:2], "safetensors"), p.read_bytes()) for p in files]


# ---------------------------------------------------------------- mutators: (rng, bytes) -> bytes


def flip(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def truncate(rng, data):
    return data[: rng.randrange(len(data))]


def splice(rng, data):
    a, b, n = rng.randrange(len(data)), rng.randrange(len(data)), rng.randint(1, 256)
    return data[:b] + data[a:a + n] + data[b + n:]


def rename(rng, data):
    """Replace one name in the pickle by another (a module, a function, another attribute)."""
    found = [n for n in HOSTILE_NAMES + [b"PPNet", b"model", b"set", b"OrderedDict", b"FloatStorage"] if n in data]
    return data.replace(rng.choice(found), rng.choice(HOSTILE_NAMES), 1) if found else flip(rng, data)


@functools.lru_cache(maxsize=16)  # the seeds' pickles, parsed once
def _ops(pkl):
    ops = list(pickletools.genops(pkl))
    return [(op, arg, pos, ops[i + 1][2] if i + 1 < len(ops) else len(pkl)) for i, (op, arg, pos) in enumerate(ops)]


def pickle_ints(rng, pkl):
    """Set one pickled integer (a size, a stride, an element count, a memo index) to an extreme."""
    ints = [(pos, end) for op, _, pos, end in _ops(pkl) if op.name in ("BININT", "BININT1", "BININT2", "LONG1")]
    if not ints:
        return flip(rng, pkl)
    pos, end = rng.choice(ints)
    value = rng.choice([0, 1, -1, 2**31 - 1, -(2**31), 10**6, 255, 7])
    return pkl[:pos] + b"J" + struct.pack("<i", value) + pkl[end:]


def pickle_strings(rng, pkl):
    """Swap two pickled strings (attribute names, keys, values), or set one to a hostile name."""
    strings = [(pos, end, arg) for op, arg, pos, end in _ops(pkl) if op.name in ("BINUNICODE", "SHORT_BINUNICODE")]
    if len(strings) < 2:
        return flip(rng, pkl)
    (pos, end, _), (_, _, other) = rng.sample(strings, 2)
    text = other.encode() if rng.random() < 0.7 else rng.choice(HOSTILE_NAMES)
    return pkl[:pos] + b"X" + struct.pack("<I", len(text)) + text + pkl[end:]


def in_zip(inner):
    """Apply a pickle mutator to a zip checkpoint's data.pkl, keeping the archive valid."""
    def mutate(rng, data):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            members = {i.filename: z.read(i) for i in z.infolist()}
        name = next(n for n in members if n.endswith("data.pkl"))
        try:
            members[name] = inner(rng, members[name])
        except Exception:  # genops on a seed never fails; a mutator bug must not pass for a finding
            raise
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as z:
            for member, content in members.items():
                z.writestr(member, content)
        return out.getvalue()
    mutate.__name__ = f"zip_{inner.__name__}"
    return mutate


def _split_st(data):
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join_st(header, body):
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def st_metadata(rng, data):
    """Change one config value, the adapter name, or the config's type."""
    header, body = _split_st(data)
    meta = header["__metadata__"]
    config = json.loads(meta["config"])
    choice = rng.random()
    if choice < 0.6:
        config[rng.choice(sorted(config) + ["new_field"])] = rng.choice(HOSTILE_VALUES)
    elif choice < 0.75 and isinstance(config.get("backbone_kwargs"), dict):
        kwargs = config["backbone_kwargs"]
        kwargs[rng.choice(sorted(kwargs) + ["evil"])] = rng.choice(HOSTILE_VALUES)
    elif choice < 0.9:
        meta["adapter"] = rng.choice(["pwn_marker:Adapter", "auto", "", "x" * 100, "../evil", "tesnet", "pipnet"])
    else:
        config = rng.choice(HOSTILE_VALUES)
    meta["config"] = json.dumps(config)
    return _join_st(header, body)


def st_record(rng, data):
    """Change one tensor record of the safetensors header: dtype, shape or offsets."""
    header, body = _split_st(data)
    entry = header[rng.choice([k for k in header if k != "__metadata__"])]
    field = rng.choice(["dtype", "shape", "data_offsets"])
    entry[field] = {"dtype": lambda: rng.choice(["F16", "I64", "BOOL", "F64", "X9"]),
                    "shape": lambda: rng.choice([[], [10**9], [0], [-1], entry["shape"][::-1], [1] * 20]),
                    "data_offsets": lambda: rng.choice([[0, 0], [0, 10**9], [5, 3], [0, len(body)]])}[field]()
    return _join_st(header, body)


def st_tensor(rng, data):
    """Re-save with one tensor reshaped, retyped, cut or poisoned (a consistent file, wrong contents)."""
    header, _ = _split_st(data)
    tensors = st_load(data)
    name = rng.choice(sorted(tensors))
    t = tensors[name]
    tensors[name] = rng.choice([
        lambda: t.flatten(), lambda: t.t().contiguous() if t.dim() == 2 else t.unsqueeze(0),
        lambda: t.double(), lambda: t.long(), lambda: t.bool(), lambda: t.half(),
        lambda: t.flatten()[: max(0, t.numel() - 1)], lambda: torch.full_like(t.float(), float("nan")),
        lambda: torch.zeros(0), lambda: torch.cat([t.flatten(), t.flatten()]),
    ])()
    return st_save(tensors, metadata=header["__metadata__"])


MUTATORS = {
    "safetensors": [flip, truncate, splice, st_metadata, st_metadata, st_record, st_tensor, st_tensor],
    "zip": [flip, truncate, splice, rename, in_zip(pickle_ints), in_zip(pickle_ints), in_zip(pickle_strings),
            in_zip(pickle_strings), in_zip(flip), in_zip(truncate)],
    "legacy": [flip, truncate, splice, rename, rename],
}


# ---------------------------------------------------------------- the check


def _allowed_module(name: str) -> bool:
    top = name.partition(".")[0]
    return top in sys.stdlib_module_names or top in ("torch", "protobench", "safetensors", "numpy")


def run_cases(seeds, tmp_path, monkeypatch, count: int, seed: int, cli_every: int = 25):
    site = tmp_path / "site"
    site.mkdir()
    flag = tmp_path / "IMPORTED"
    for name in PICKLED_MODULES:
        (site / f"{name}.py").write_text(f"open({str(flag)!r}, 'a').write({name!r})\n")
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(site))
    warm = tmp_path / "warm.safetensors"  # the CLI imports its own modules (typer's, pydantic) on first use
    warm.write_bytes(seeds[0][1])
    invoke("convert", warm, tmp_path / "out.safetensors", "--overwrite")
    before = set(sys.modules)
    rng = random.Random(seed)
    worst = 0.0
    for case in range(count):
        kind, data = rng.choice(seeds)
        mutator = rng.choice(MUTATORS[kind])
        mutated = mutator(rng, data)
        path = tmp_path / f"case{case % 8}.{'safetensors' if kind == 'safetensors' else 'pth'}"
        path.write_bytes(mutated)
        raised, growth = peak_growth_mb(lambda: get_adapter("auto").load(str(path)), collect=case % 50 == 0)
        what = f"case {case} ({kind}, {mutator.__name__})"
        assert raised is None or isinstance(raised, ProtobenchError), f"{what}: {raised!r}"
        worst = max(worst, growth)
        assert growth < MEMORY_BOUND_MB, f"{what}: {growth:.0f} MB"
        if case % cli_every == 0:
            result = invoke("convert", path, tmp_path / "out.safetensors", "--overwrite")
            assert result.exception is None or isinstance(result.exception, SystemExit), f"{what}: {result.exception!r}"
            assert result.exit_code == 0 or result.stderr.strip().startswith("error:"), result.output
    assert not flag.exists(), f"imported: {flag.read_text()}"
    unexpected = sorted(n for n in set(sys.modules) - before if not _allowed_module(n))
    assert not unexpected and not any(name in sys.modules for name in PICKLED_MODULES), unexpected
    return worst


def test_fuzzed_checkpoints(seeds, tmp_path, monkeypatch):
    assert math.isfinite(run_cases(seeds, tmp_path, monkeypatch, count=300, seed=10))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10))
def test_fuzzed_checkpoints_at_length(seeds, tmp_path, monkeypatch, seed):
    run_cases(seeds, tmp_path, monkeypatch, count=1000, seed=100 + seed, cli_every=50)
