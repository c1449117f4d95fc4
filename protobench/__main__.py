"""`python -m protobench` (and `torchrun -m protobench`).

For -m, Python puts the current directory first on sys.path, so a `model.py`, `rich.py` or
`evil_adapter.py` lying beside a downloaded checkpoint would be imported in place of the
real module. Drop that entry, as `python -P` does; the package itself was found before this
runs (its __init__ imports nothing), and its submodules come from its own directory.
"""

import os
import sys

if not getattr(sys.flags, "safe_path", False) and sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from protobench.cli.app import app  # noqa: E402  (after the sys.path fix, on purpose)

app(prog_name="protobench")
