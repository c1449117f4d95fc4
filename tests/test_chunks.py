"""CPU chunks measured side by side (protobench.run.chunks): the same numbers as one thread, in order."""

import threading

import pandas as pd
import pytest
import torch

from protobench.core.protocol import EvalProtocol
from protobench.data.imagelist import ImageFolder
from protobench.run import benchmark, chunks
from protobench.run.context import RunContext
from protobench.run.forward import Runtime


@pytest.fixture
def two_threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


def test_chunks_are_concatenated_and_shown_in_image_order():
    x = torch.arange(10.0)
    seen = []

    def measure(xs, ys, ids, keep):
        keep(xs.clone(), ids.clone())
        return {"twice": xs * 2, "id": ids}

    with chunks.chunk_workers(3) as pool:
        out = chunks.measure_chunks(pool, 3, measure, x, x, torch.arange(10), lambda o, ids: seen.append(ids.tolist()))
    assert out["twice"].tolist() == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert out["id"].tolist() == list(range(10))
    assert seen == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]  # every chunk, in order, on the calling thread


def test_the_pool_sets_torch_to_one_thread_and_restores_it_even_after_an_error(two_threads):
    inside = []
    with pytest.raises(ValueError):
        with chunks.chunk_workers(2) as pool:
            inside.append(torch.get_num_threads())
            inside.append(pool.submit(torch.get_num_threads).result())
            raise ValueError
    assert inside == [1, 1] and torch.get_num_threads() == 2
    with chunks.chunk_workers(1) as pool:  # one thread: no pool, nothing changed
        assert pool is None and torch.get_num_threads() == 2


@pytest.mark.parametrize("threads, chunk, concurrent, compiled, expected", [
    (2, 8, True, False, 2), (4, 2, True, False, 4), (1, 8, True, False, 1),
    (2, None, True, False, 1),  # a GPU: whole batches
    (2, 8, False, False, 1),  # an adapter that does not say its evidence is pure
    (2, 8, True, True, 1),  # compiled
])
def test_side_by_side_only_for_fixed_chunks_of_a_concurrent_uncompiled_model(threads, chunk, concurrent, compiled,
                                                                             expected):
    assert chunks.side_by_side(threads, chunk, concurrent, compiled) == expected


def _run(adapter, data, threads, monkeypatch=None, calls=None, kept=None):
    """benchmark.run on chunks of 3 in batches of 7; `calls` records (thread name, images) per evaluate_batch call."""
    context = RunContext(torch.device("cpu"), Runtime(chunk=3, threads=threads), batch_size=7, workers=0)
    if calls is not None:
        real = benchmark.evaluate_batch
        monkeypatch.setattr(benchmark, "evaluate_batch", lambda *args, **kwargs: calls.append(
            (threading.current_thread().name, len(args[1]))) or real(*args, **kwargs))
    records, _ = benchmark.run(adapter, data, data.paths, EvalProtocol.make(steps=3), context,
                               on_outcome=(lambda o, ids: kept.extend(ids.tolist())) if kept is not None else None)
    return pd.DataFrame(records)


def test_side_by_side_gives_the_one_thread_numbers_bit_for_bit(tiny_adapter, image_folder, two_threads, monkeypatch):
    info = tiny_adapter.info
    data = ImageFolder(image_folder, info.input_size, info.mean, info.std)
    calls, kept = [], []
    side = _run(tiny_adapter, data, 2, monkeypatch, calls, kept)
    assert torch.get_num_threads() == 2  # restored after the loop
    # 12 images in batches of 7: chunks of 3, 3, 1 and 3, 2, each on a pool thread
    assert sorted(n for _, n in calls) == [1, 2, 3, 3, 3] and all(name.startswith("protobench-chunk") for name, _ in calls)
    assert kept == list(range(12))
    torch.set_num_threads(1)
    one = _run(tiny_adapter, data, 1)
    pd.testing.assert_frame_equal(side, one, check_exact=True)
    assert side["index"].tolist() == list(range(12))


def test_an_adapter_that_is_not_concurrent_runs_one_chunk_at_a_time(tiny_adapter, image_folder, two_threads,
                                                                  monkeypatch):
    monkeypatch.setattr(type(tiny_adapter), "concurrent", False)
    info = tiny_adapter.info
    data = ImageFolder(image_folder, info.input_size, info.mean, info.std)
    calls = []
    _run(tiny_adapter, data, 2, monkeypatch, calls)
    assert [n for _, n in calls] == [7, 5] and {name for name, _ in calls} == {threading.current_thread().name}


def test_chunk_threads_from_the_command_line_give_one_thread_numbers_and_the_report_reruns_them(tmp_path,
                                                                                                two_threads):
    """`evaluate --chunk-threads 2` on a 2-thread process gives a 1-thread run's per_image.csv bit for bit,
    records the setting, and the report's re-run (which reads it from meta.json) reproduces the rows."""
    import json

    import numpy as np
    from report_fixtures import make_run

    from protobench.report.pixels import rerun
    from protobench.report.runs import load_runs

    side = make_run(tmp_path / "side", "--chunk-threads", 2)
    assert json.loads((side / "meta.json").read_text())["runtime"]["threads"] == 2
    torch.set_num_threads(1)
    one = make_run(tmp_path / "one")
    side_rows, one_rows = pd.read_csv(side / "per_image.csv"), pd.read_csv(one / "per_image.csv")
    pd.testing.assert_frame_equal(side_rows.drop(columns="path"), one_rows.drop(columns="path"), check_exact=True)
    torch.set_num_threads(2)
    run = load_runs([str(side)])[0][0]
    indices = [0, 4, 5, 11]
    _, again = rerun(run, indices)
    recorded, again = run.per_image.set_index("index").loc[indices], again.set_index("index").loc[indices]
    for column in ("proto", "pred_after", "PRC", "PAC", "PLC", "act_before", "act_after"):
        assert np.array_equal(again[column].to_numpy(float), recorded[column].to_numpy(float), equal_nan=True), column


def test_chunk_threads_out_of_range_is_one_line(tmp_path):
    from report_fixtures import invoke

    result = invoke("evaluate", "--chunk-threads", 0, "--out", tmp_path / "x")
    assert result.exit_code == 2 and "--chunk-threads" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_api_takes_chunk_threads_and_leaves_torch_s_thread_count_as_it_was(tiny_ckpt, image_folder, tmp_path,
                                                                               two_threads):
    import protobench

    side = protobench.evaluate(tiny_ckpt, image_folder, steps=2, chunk_threads=2, progress=False)
    assert torch.get_num_threads() == 2 and side.meta["runtime"]["threads"] == 2
    torch.set_num_threads(1)
    one = protobench.evaluate(tiny_ckpt, image_folder, steps=2, progress=False)
    pd.testing.assert_frame_equal(side.per_image, one.per_image, check_exact=True)


@pytest.mark.parametrize("recorded, expected", [(None, 1), (1, 1), (0, 1), (-3, 1), (True, 1), ("4", 1), (2.5, 1),
                                                (2, 2), (10**9, "cores")])
def test_the_report_reruns_with_the_recorded_chunk_threads_up_to_the_cores(recorded, expected):
    import os
    from types import SimpleNamespace

    from protobench.report.pixels import chunk_threads_of

    run = SimpleNamespace(meta={"runtime": {"threads": recorded}})
    assert chunk_threads_of(run) == (max(2, os.cpu_count() or 2) if expected == "cores" else expected)
