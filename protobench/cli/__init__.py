"""The command line: each command builds a config and calls one library function.

torch is imported inside the commands, so `protobench --help` stays fast.
"""

from protobench.cli.app import app

__all__ = ["app"]
