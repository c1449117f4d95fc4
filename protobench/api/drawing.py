"""`Results.report`: the HTML page of a run evaluated from Python, its pictures re-run from the model and
data still in memory, and checked against the run's per_image.csv as `protobench report` checks its re-runs."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from protobench.report.runs import ReportError


def draw_report(results: Any, out: Path, worst: int, best: int) -> Path:
    from protobench.report.build import Options, build_report

    if results.source is None:
        raise ReportError("these results were read from disk, without their model: draw their report with "
                          f"`protobench report {results.dir}`")
    with tempfile.TemporaryDirectory(prefix="protobench-report-") as tmp:
        run_dir, named = results.dir, None
        if run_dir is None:
            named = "not saved (Results.save writes the result files)"
            run_dir = Path(tmp) / str(results.scores.get("model") or "run")
            results.write_files(run_dir)
        done = build_report([str(run_dir)], Options(out=str(out), worst=worst, best=best, up_to=True, directory=named,
                                                    rerun=lambda run, indices: rerun(results, run, indices)))
    return Path(done["html"])


def rerun(results: Any, run: Any, indices: list[int]) -> Any:
    """The drawn images' tensors from the model and data the results came from; a ReportError when
    their numbers are no longer the run's (the model was trained further since)."""
    import pandas as pd

    from protobench.api.state import preserved
    from protobench.report.pixels import _stack, mismatches, protocol_of, run_again
    from protobench.run.evaluate import load_dataset

    handle, src = results.source
    meta = run.meta
    with preserved(handle.module, handle.release):
        adapter = handle.adapter
        dataset = src.open(adapter.info)
        if dataset is None:  # a directory: opened as the run opened it
            dataset = load_dataset(src.data, adapter.info, src.layout, src.split, meta.get("max_image_pixels"))[0]
        records, _, kept = run_again(run, adapter, dataset, indices, protocol_of(run))
    found = mismatches(run, pd.DataFrame(records), meta.get("device_type") == "cpu" and adapter.device.type == "cpu")
    if found:
        raise ReportError(f"the model no longer gives the numbers it was evaluated with ({len(found)} differences; "
                          f"first: {found[0]}): it changed since; evaluate it again and draw that report")
    pixels = _stack(kept, adapter.info, getattr(dataset, "classes", []), f"re-run from {handle.identity} in memory")
    pixels.device_type = adapter.device.type
    return pixels
