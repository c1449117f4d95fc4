"""protobench report: the page and its pictures, the per-prototype table, the re-run, saved examples."""

import json
import math
import socket
import struct

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from report_fixtures import Page, copy, decode, finished, invoke  # noqa: F401 - finished is a fixture
from protobench.report.examples import FILE
from protobench.report.runs import load_runs
from protobench.report.tables import picks, prototype_table

STRIP, HISTOGRAMS, CARD = (840, 610), (1200, 365), (440, 245)  # figure inches x 100 dpi (strips, figures, gallery)


def drawn(per_image, worst, best):
    """The images a report draws: the highest, the median (the lower middle by value, then index) and the
    lowest PAC and PLC (pandas keeps the first of ties)."""
    found = set()
    for metric in ("PAC", "PLC"):
        ordered = per_image.dropna(subset=[metric]).sort_values([metric, "index"])["index"].tolist()
        found |= {*per_image.nlargest(worst, metric)["index"], *per_image.nsmallest(best, metric)["index"]}
        if worst or best:
            found.add(ordered[(len(ordered) - 1) // 2])
    return found


def test_page_parses_and_every_image_decodes_at_its_size(finished, tmp_path):
    out = tmp_path / "report"
    result = invoke("report", finished, "--out", out, "--worst", 2, "--best", 1)
    assert result.exit_code == 0, result.output
    assert f"report written to {out / 'report.html'}" in result.stdout
    page = Page((out / "report.html").read_text(encoding="utf-8"))
    images = drawn(pd.read_csv(finished / "per_image.csv"), 2, 1)
    sizes = []
    for img in page.images:
        image = decode(img["src"])
        assert image.size == (int(img["width"]), int(img["height"]))
        sizes.append(image.size)
    per_image = pd.read_csv(finished / "per_image.csv").set_index("index")
    prototypes = {int(per_image.loc[i, "proto"]) for i in images}
    assert sizes.count(HISTOGRAMS) == 1 and sizes.count(STRIP) == len(images) and sizes.count(CARD) == len(prototypes)
    assert len(sizes) == 2 + len(images) + len(prototypes)  # and the attack's convergence (convergence.csv)
    assert any("How the attack converged" in t for t in page.text) and (out / "convergence.png").is_file()
    written = sorted(p.name for p in out.glob("*.png"))
    assert len(written) == len(page.images)  # every picture also beside the page
    assert {Image.open(out / name).size for name in written} == set(sizes)


def test_page_needs_nothing_from_elsewhere(finished, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the report tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    result = invoke("report", finished, "--out", tmp_path / "r", "--worst", 1, "--best", 0)
    assert result.exit_code == 0, result.output
    html = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    page = Page(html)
    assert not {"script", "link", "iframe", "object", "embed"} & set(page.tags)
    assert all(link.startswith(("data:image/png;base64,", "#")) for link in page.links)
    assert "http://" not in html and "https://" not in html and "url(" not in html  # no CSS fetch either


def test_prototype_table_equals_a_group_by_of_per_image_csv(finished, tmp_path):
    assert invoke("report", finished, "--out", tmp_path / "r", "--examples", "none").exit_code == 0
    per_image = pd.read_csv(finished / "per_image.csv")
    written = pd.read_csv(tmp_path / "r" / "run1-tiny-prototypes.csv")
    expected = {}
    for proto, rows in per_image.groupby("proto"):
        pac = rows["PAC"].dropna()
        expected[proto] = (rows["proto_class"].iloc[0], len(rows), pac.mean() if len(pac) else math.nan,
                           rows["PLC"].mean(), rows["PRC"].mean())
    assert sorted(written["proto"]) == sorted(expected)
    for row in written.itertuples():
        assert (row.proto_class, row.chosen) == expected[row.proto][:2]
        assert np.allclose([row.PAC_mean, row.PLC_mean, row.PRC_mean], expected[row.proto][2:], equal_nan=True)
    assert list(written["PAC_mean"]) == sorted(written["PAC_mean"], reverse=True)  # most fragile first
    page = Page((tmp_path / "r" / "report.html").read_text(encoding="utf-8"))
    shown = [r for r in page.rows if len(r) == 6 and r[0].isdigit()]
    assert [int(r[0]) for r in shown] == list(written["proto"])


def test_prototype_table_by_hand():
    frame = pd.DataFrame({"proto": [4, 4, 7, 2, 2, 2], "proto_class": [1, 1, 0, 3, 3, 3],
                          "PAC": [10.0, math.nan, 50.0, 20.0, 20.0, 50.0], "PLC": [1.0, 3.0, 5.0, 0.0, 0.0, 9.0],
                          "PRC": [0, 2, 1, 1, 1, 4]})
    table = prototype_table(frame)
    assert list(table["proto"]) == [7, 2, 4]  # mean PAC 50, 30, 10 (the NaN PAC left out)
    assert list(table["chosen"]) == [1, 3, 2] and list(table["proto_class"]) == [0, 3, 1]
    assert list(table["PLC_mean"]) == [5.0, 3.0, 2.0] and list(table["PRC_mean"]) == [1.0, 2.0, 1.0]


def test_picks_are_the_worst_and_best_with_ties_by_index_and_no_nan():
    frame = pd.DataFrame({"index": [10, 11, 12, 13], "PAC": [5.0, math.nan, 5.0, -1.0], "PLC": [0.0, 9.0, 1.0, 2.0]})
    chosen = [(p.metric, p.kind, p.rank, p.index) for p in picks(frame, 2, 1)]
    # PAC ascending: 13 (-1), 10 (5), 12 (5): the median is the middle one, 10; PLC: 10, 12, 13, 11: the lower middle, 12
    assert chosen == [("PAC", "worst", 1, 10), ("PAC", "worst", 2, 12), ("PAC", "median", 1, 10),
                      ("PAC", "best", 1, 13), ("PLC", "worst", 1, 11), ("PLC", "worst", 2, 13),
                      ("PLC", "median", 1, 12), ("PLC", "best", 1, 10)]
    assert [p.kind for p in picks(frame, 0, 0)] == []  # no images asked for: no median either


def test_rerun_reproduces_per_image_csv(finished):
    from protobench.report.pixels import rerun

    run = load_runs([str(finished)])[0][0]
    indices = [0, 5, 11]
    pixels, again = rerun(run, indices)
    recorded = run.per_image.set_index("index").loc[indices]
    again = again.set_index("index").loc[indices]
    for column in ("proto", "proto_class", "pred_before", "pred_after", "PRC"):
        assert list(again[column]) == list(recorded[column]), column
    for column in ("PAC", "PLC", "act_before", "act_after"):
        assert np.allclose(again[column], recorded[column], rtol=0, atol=1e-5), column
    assert pixels.indices == indices
    # the drawn maps are p*'s: their maxima are the activations per_image.csv recorded
    assert np.allclose(pixels.map_star.amax(dim=(1, 2)).numpy(), recorded["act_before"], atol=1e-5)
    assert np.allclose(pixels.map_star_adv.amax(dim=(1, 2)).numpy(), recorded["act_after"], atol=1e-5)
    assert bool((pixels.images_adv == pixels.images)[~pixels.attackable.expand_as(pixels.images)].all())


def test_the_rerun_runs_as_the_run_did_with_the_float32_distance(tmp_path, monkeypatch):
    """The float32 distance makes the CPU call the model one image at a time: the re-run resolves its run
    settings from the same recorded options as the run did, so it calls the model the same way and
    reproduces per_image.csv bit for bit."""
    from dataclasses import asdict

    from report_fixtures import make_run
    from protobench.report.pixels import rerun
    from protobench.run import benchmark

    finished = make_run(tmp_path, "--distance", "float32")
    run = load_runs([str(finished)])[0][0]
    assert run.meta["runtime"]["chunk"] == 1
    handed, real_run = [], benchmark.run
    monkeypatch.setattr(benchmark, "run", lambda *args, **kw: handed.append(args[4]) or real_run(*args, **kw))
    indices = [0, 5, 11]
    _, again = rerun(run, indices)
    assert [asdict(context.runtime) for context in handed] == [run.meta["runtime"]]
    recorded = run.per_image.set_index("index").loc[indices]
    again = again.set_index("index").loc[indices]
    for column in ("proto", "pred_before", "pred_after", "PRC", "PAC", "PLC", "act_before", "act_after"):
        assert np.array_equal(again[column].to_numpy(float), recorded[column].to_numpy(float), equal_nan=True), column


def test_saved_examples_are_safetensors_of_the_worst_and_best(finished):
    data = (finished / FILE).read_bytes()
    header_length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + header_length])  # safetensors: a JSON header, then raw tensors; no pickle
    assert header["__metadata__"]["format"] == "protobench-examples/1"
    expected = drawn(pd.read_csv(finished / "per_image.csv"), 2, 2)
    assert header["index"]["shape"] == [len(expected)]
    assert header["images"]["shape"] == [len(expected), 3, 32, 32] and header["attackable"]["dtype"] == "BOOL"


def test_report_from_saved_examples_without_the_checkpoint(finished, tmp_path):
    run = copy(finished, tmp_path)
    (run.parent / "tiny.safetensors").unlink()
    refused = invoke("report", run, "--worst", 1, "--best", 0)
    assert refused.exit_code == 2 and "moved or deleted" in refused.stderr
    result = invoke("report", run, "--worst", 2, "--best", 1, "--examples", "saved")
    assert result.exit_code == 0, result.output
    page = Page((run / "report" / "report.html").read_text(encoding="utf-8"))
    assert len(page.images) == 2 + len(drawn(pd.read_csv(run / "per_image.csv"), 2, 1))  # histograms, convergence
    assert "saved by evaluate --save-examples" in "".join(page.text)
    more = invoke("report", run, "--worst", 3, "--examples", "saved")
    assert more.exit_code == 2 and "kept the tensors of" in more.stderr


def test_several_runs_compare_and_overlay_one_models_protocols(finished, tmp_path):
    reference = tmp_path / "reference"
    meta = json.loads((finished / "meta.json").read_text())
    result = invoke("evaluate", "--ckpt", meta["checkpoint"], "--data", meta["dataset"], "--out", reference,
                    "--protocol", "reference", "--seed", 2)
    assert result.exit_code == 0, result.output
    out = tmp_path / "both"
    result = invoke("report", finished, reference, "--out", out, "--examples", "none")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["comparison.png", "convergence.png",
                                                         "run1-tiny_default_pgd-histograms.png"]
    text = " ".join(" ".join(Page((out / "report.html").read_text(encoding="utf-8")).text).split())
    assert "tiny [default, pgd]" in text and "tiny [reference, noise]" in text
    assert "protobench compare: tiny [default, pgd] (base) against tiny [reference, noise] (new)" in text
    assert 'protocol.attack: base "pgd", new "noise"' in text  # compare's note: what differs between the runs
    assert "Overlaid with the other runs of the same checkpoint" in text


def test_every_run_string_is_escaped(tmp_path):
    from conftest import tiny_config, write_image_folder
    from protobench.adapters.protopnet import ProtoPNetAdapter

    ckpt = tmp_path / "<b>bold</b> & 'q'.safetensors"
    ProtoPNetAdapter.from_config(tiny_config(), seed=0).save(str(ckpt))
    data = write_image_folder(tmp_path / "<i>data</i>", per_class=1)
    out = tmp_path / "o"
    assert invoke("evaluate", "--ckpt", ckpt, "--data", data, "--out", out, "--steps", 1).exit_code == 0
    assert invoke("report", out, "--worst", 1, "--best", 0).exit_code == 0
    html = (out / "report" / "report.html").read_text(encoding="utf-8")
    assert "<b>" not in html and "<i>" not in html
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &#39;q&#39;" in html and "&lt;i&gt;data&lt;/i&gt;" in html
