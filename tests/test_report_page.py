"""The report page in words: numbers in the text, collapse and protection said, links, class names, and the
tensors evaluate keeps for its own report."""

import json
import re

import pandas as pd
import pytest
import torch

from report_fixtures import Page, finished, invoke  # noqa: F401 - finished is a fixture
from protobench.report.kept import Keeper
from protobench.report.story import alt_text, strip_facts, summary_sentences
from protobench.report.strips import attacked_title
from protobench.report.runs import Run, load_runs

ROW = {"index": 3, "label": 0, "proto": 5, "proto_class": 1, "act_before": 7.5, "act_after": 1.25, "PAC": 83.3,
       "PLC": 40.0, "PRC": 2, "pred_before": 0, "pred_after": 1, "collapsed": True, "top_outside": 35.0}


def test_a_collapsed_map_is_said_collapsed_not_moved():
    assert attacked_title(ROW) == "heatmap, attacked: COLLAPSED, PLC 40%"
    assert attacked_title({**ROW, "collapsed": False}) == "heatmap, attacked: PLC 40%"
    assert attacked_title({**ROW, "collapsed": "False"}) == "heatmap, attacked: PLC 40%"  # as read from a CSV
    assert "collapsed (went flat)" in alt_text(ROW, [])
    assert "changed by 40% (PLC)" in alt_text({**ROW, "collapsed": False}, [])


def test_a_strip_s_numbers_are_text_beside_it():
    facts = dict(strip_facts(ROW, ["a" * 80, "b"]))
    assert facts["image"] == "3, class 0 (" + "a" * 80 + ")"  # whole: the page wraps it, nothing is cut
    assert facts["prototype p*"].startswith("5, class 1 (b) (another class than the image's")
    assert facts["activation"] == "7.5 -> 1.25 (PAC 83.3%)" and facts["PLC"] == "40.0%" and facts["PRC"] == "+2"
    assert facts["map collapsed"].startswith("yes") and facts["top-10% region outside the box"] == "35% (attacked)"
    assert facts["prediction"] == "0 (" + "a" * 80 + ") -> 1 (b)"
    assert "another class" not in dict(strip_facts({**ROW, "proto_class": 0}, []))["prototype p*"]


def test_the_summary_counts_moves_collapses_and_other_class_prototypes():
    per_image = pd.DataFrame({"index": [0, 1, 2, 3], "label": [0, 0, 1, 1], "proto_class": [0, 1, 1, 1],
                              "PAC": [80.0, 10.0, 60.0, 20.0], "PLC": [90.0, 60.0, 10.0, 0.0],
                              "collapsed": [True, False, False, False], "top_outside": [0.0, 60.0, 10.0, 30.0],
                              "protected_frac": [0.2, 0.2, 0.3, 0.3], "pred_before": [0, 0, 1, 1],
                              "pred_after": [0, 1, 1, 1]})
    run = Run(dir=None, model="m", meta={"protocol": {"name": "default", "attack": "pgd", "select": "top-proto"}},
              summary={"acc_before": 100.0, "acc_after": 75.0}, per_image=per_image)
    text = " ".join(summary_sentences(run))
    assert "25% of the image on average" in text
    assert "fell by 42.5% on average (PAC; median 40.0%, 2 of 4 (50%) images lost half of it or more)" in text
    # PLC >= 50 on images 0 and 1; image 0 collapsed: one move, one collapse
    assert "on 1 of 4 (25%) images it moved" in text and "on 1 of 4 (25%) the map collapsed" in text
    assert "on average 25% of that region lay outside" in text and "more than half of it on 1 of 4 (25%)" in text
    assert "On 1 of 4 (25%) images the explained prototype belongs to another class" in text
    assert "from 100.0% on the clean images to 75.0% on the attacked ones (25.0 points)" in text


def test_every_link_lands_and_no_number_is_only_in_a_picture(finished, tmp_path):
    out = tmp_path / "r"
    assert invoke("report", finished, "--out", out, "--worst", 1, "--best", 1).exit_code == 0
    page = Page((out / "report.html").read_text(encoding="utf-8"))
    anchors = [link[1:] for link in page.links if link.startswith("#")]
    assert anchors and set(anchors) <= set(page.ids)
    assert {"contents", "run1-tiny-summary", "run1-tiny-gallery", "run1-tiny-images"} <= set(page.ids)
    text = " ".join(" ".join(page.text).split())
    per_image = pd.read_csv(finished / "per_image.csv").set_index("index")
    drawn = [int(m.group(1)) for i in page.ids if (m := re.fullmatch(r"run1-tiny-image(\d+)", i))]
    assert drawn
    for index in drawn:
        row = per_image.loc[index]
        assert f"{row.act_before:.3g} -> {row.act_after:.3g} (PAC {row.PAC:.1f}%)" in text
        assert f"{row.PLC:.1f}%" in text and f"{row.top_outside:.0f}% (attacked)" in text
    for img in page.images:
        assert len(img["alt"]) > 60  # a sentence that says what the picture shows
    assert "Class-connection weight" in text and "prototype gallery" in text.lower()


def test_class_names_are_kept_in_meta_json_and_shown_without_pixels(finished, tmp_path):
    assert json.loads((finished / "meta.json").read_text())["classes"] == ["class0", "class1", "class2"]
    out = tmp_path / "r"
    assert invoke("report", finished, "--out", out, "--examples", "none").exit_code == 0
    page = Page((out / "report.html").read_text(encoding="utf-8"))
    assert any(row[:1] == ["0 (class0)"] for row in page.rows)  # the per-class table


def test_the_keeper_keeps_what_can_still_be_drawn_within_its_budget():
    class Outcome:
        def __init__(self, ids):
            n = len(ids)
            self.images = self.images_adv = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 3, 2, 2)
            self.attackable = torch.ones(n, 1, 2, 2, dtype=torch.bool)
            self.map_star = self.map_star_adv = torch.zeros(n, 1, 1)

    keeper = Keeper(k=1, budget=0)  # over budget at once: only the current worst and best stay
    values = {0: 5.0, 1: 9.0, 2: 1.0, 3: 7.0, 4: 0.5}
    for ids in ([0, 1], [2, 3], [4]):
        keeper.on_outcome(Outcome(ids), torch.tensor(ids))
        keeper.on_batch([{"index": i, "PAC": values[i], "PLC": values[i]} for i in ids], [])
    assert sorted(keeper.tensors) == [1, 4]  # PAC and PLC: worst 1 (9.0), best 4 (0.5)
    roomy = Keeper(k=1)
    roomy.on_outcome(Outcome([0, 1]), torch.tensor([0, 1]))
    roomy.on_batch([{"index": 0, "PAC": 1.0, "PLC": 1.0}, {"index": 1, "PAC": 2.0, "PLC": 2.0}], [])
    assert sorted(roomy.tensors) == [0, 1]


def test_evaluate_s_own_report_draws_the_run_s_tensors_which_equal_a_rerun(tmp_path):
    from conftest import tiny_config, write_image_folder
    from protobench.adapters.protopnet import ProtoPNetAdapter
    from protobench.report.pixels import rerun
    from protobench.run.evaluate import EvaluateConfig, evaluate

    ckpt = tmp_path / "tiny.safetensors"
    ProtoPNetAdapter.from_config(tiny_config(), seed=0).save(str(ckpt))
    data = write_image_folder(tmp_path / "data")
    keeper = Keeper(k=3)
    from protobench.core.protocol import EvalProtocol

    cfg = EvaluateConfig(ckpt=str(ckpt), data=data, out=str(tmp_path / "run"), batch_size=5,
                         protocol=EvalProtocol(steps=3, seed=2))
    evaluate(cfg, keeper)
    run = load_runs([str(tmp_path / "run")])[0][0]
    kept = keeper.pixels(run.meta["model_info"]["mean"], run.meta["model_info"]["std"], run.meta["classes"])
    assert kept.indices == list(range(12))
    again, _ = rerun(run, [0, 7, 11])
    for name in ("images", "images_adv", "attackable", "map_star", "map_star_adv"):
        assert torch.equal(getattr(kept, name)[[0, 7, 11]], getattr(again, name)), name


def test_a_damaged_prototype_id_in_per_prototype_csv_is_one_line(tmp_path):
    """A per_prototype.csv whose prototype column holds something other than a whole number >= 0 is a
    ReportError naming the file, row and value (the report then exits 2), not a crash."""
    from types import SimpleNamespace

    from protobench.report.gallery import per_prototype_extra
    from protobench.report.runs import ReportError

    run = SimpleNamespace(dir=tmp_path)
    (tmp_path / "per_prototype.csv").write_text("prototype,consistency,stability\n0,50.0,90.0\n3,25.5,80.0\n")
    assert per_prototype_extra(run) == {0: {"consistency": "50.0", "stability": "90.0"},
                                        3: {"consistency": "25.5", "stability": "80.0"}}
    for damaged in ("[]", "1.5", "-2", "1e15x"):
        (tmp_path / "per_prototype.csv").write_text(f"prototype,consistency,stability\n0,50.0,90.0\n{damaged},1,2\n")
        with pytest.raises(ReportError, match=r"per_prototype.csv:3: prototype is .*not a whole number"):
            per_prototype_extra(run)


def test_the_summary_averages_the_protected_share_over_the_rows_that_hold_a_number(finished):
    run = load_runs([str(finished)])[0][0]
    frame = run.per_image
    shares = pd.to_numeric(frame["protected_frac"])
    frame["protected_frac"] = frame["protected_frac"].astype(object)
    frame.loc[0, "protected_frac"] = "[1, 2]"  # a damaged cell: left out, not a crash
    expected = 100 * shares.iloc[1:].mean()
    assert f", {expected:.0f}% of the image on average, on {run.n} images." in summary_sentences(run)[0]


def test_a_recorded_checkpoint_path_no_file_can_have_is_reported_as_moved(finished):
    from protobench.report.pixels import checkpoint_path
    from protobench.report.runs import ReportError

    run = load_runs([str(finished)])[0][0]
    for impossible in ("x" * 5000, "a\0b"):
        run.meta["checkpoint"] = impossible
        with pytest.raises(ReportError, match="moved or deleted"):
            checkpoint_path(run, None)
