"""`evaluate --metrics misalignment,consistency,stability`: one table, the same result files, compare,
resume, and the default run left as it was."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from datasets_fixtures import write_cub
from protobench.cli.app import app

runner = CliRunner()
ALL = "misalignment,consistency,stability"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def demo(out, *extra):
    result = invoke("evaluate", "--out", out, "--limit", 24, "--steps", 2, *extra)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def scorecard_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "all"
    return out, demo(out, "--metrics", ALL)


def test_the_demo_prints_every_metric_in_one_table(scorecard_run):
    out, result = scorecard_run
    shown = " ".join(result.stdout.split())
    summary = pd.read_csv(out / "summary.csv").iloc[0]
    for label in ("PLC (location change, %)", "AC (accuracy change, points)"):
        assert label in shown
    assert (f"consistency (prototypes on one part, %) │ {summary['consistency_mean']:.2f} │ "
            f"{summary['consistency_std']:.2f} │") in shown
    assert f"stability (part hits kept under noise, %) │ {summary['stability_mean']:.2f} │" in shown
    assert "(per_image.csv, per_prototype.csv, summary.csv, meta.json)" in shown


def test_the_scorecard_files(scorecard_run):
    out, _ = scorecard_run
    per_image = pd.read_csv(out / "per_image.csv")
    assert list(per_image.columns)[-7:] == ["zero_grad", "zero_grad_steps", "protected_frac", "collapsed",
                                            "top_outside", "part_hits", "part_hits_noisy"]
    # each image: its class's 2 prototypes, 5 part codes each (demo classes own prototypes 2c, 2c + 1)
    for label, cell in zip(per_image["label"], per_image["part_hits"]):
        assert [token.split(":")[0] for token in cell.split()] == [str(2 * label), str(2 * label + 1)]
        assert all(len(token.split(":")[1]) == 5 for token in cell.split())
    prototypes = pd.read_csv(out / "per_prototype.csv")
    assert list(prototypes.columns) == ["prototype", "class", "images", "part", "part_frac", "consistency",
                                        "stability"]
    assert prototypes["prototype"].tolist() == list(range(12)) and prototypes["class"].tolist() == [
        c // 2 for c in range(12)]
    assert prototypes["images"].sum() == 2 * 24  # every image counts for its class's 2 prototypes
    assert set(prototypes["consistency"]) <= {0.0, 100.0}
    assert prototypes["consistency"].tolist() == [100.0 if f >= 80 else 0.0 for f in prototypes["part_frac"]]
    summary = pd.read_csv(out / "summary.csv").iloc[0]
    assert summary["consistency_mean"] == pytest.approx(prototypes["consistency"].mean())
    assert summary["stability_mean"] == pytest.approx(prototypes["stability"].mean())
    assert summary["consistency_n"] == 12
    meta = json.loads((out / "meta.json").read_text())
    assert meta["metrics"] == ["misalignment", "consistency", "stability"]
    assert meta["scorecard"]["half_size"] == 10 and meta["scorecard"]["threshold"] == 0.8
    assert meta["scorecard"]["parts"] == ["square", "frame-top", "frame-right", "frame-bottom", "frame-left"]


def test_misalignment_alone_is_the_run_it_always_was(scorecard_run, tmp_path):
    out, _ = scorecard_run
    demo(tmp_path / "default")
    demo(tmp_path / "explicit", "--metrics", "misalignment")
    for name in ("per_image.csv", "summary.csv"):
        assert (tmp_path / "default" / name).read_bytes() == (tmp_path / "explicit" / name).read_bytes()
    assert not (tmp_path / "default" / "per_prototype.csv").exists()
    meta = json.loads((tmp_path / "default" / "meta.json").read_text())
    assert "metrics" not in meta and "scorecard" not in meta  # what the record of a default run holds is unchanged
    default = pd.read_csv(tmp_path / "default" / "per_image.csv")
    together = pd.read_csv(out / "per_image.csv")
    pd.testing.assert_frame_equal(default, together[default.columns])  # the part pass changes no attack number
    summary = pd.read_csv(tmp_path / "default" / "summary.csv")
    assert list(summary.columns)[-3:] == ["AC", "zero_grad_images", "collapsed_images"]


def test_the_part_metrics_alone_skip_the_attack(scorecard_run, tmp_path):
    out, _ = scorecard_run
    result = demo(tmp_path / "parts", "--metrics", "consistency,stability", "--batch-size", 5)
    per_image = pd.read_csv(tmp_path / "parts" / "per_image.csv")
    assert list(per_image.columns) == ["index", "path", "label", "pred_before", "part_hits", "part_hits_noisy"]
    summary = pd.read_csv(tmp_path / "parts" / "summary.csv")
    assert list(summary.columns) == ["model", "images", *(f"{m}_{s}" for m in ("consistency", "stability")
                                                           for s in ("mean", "std", "n", "ci_low", "ci_high"))]
    assert "PLC" not in result.stdout and "zero" not in result.stdout
    together = pd.read_csv(out / "per_image.csv")
    pd.testing.assert_frame_equal(per_image, together[per_image.columns])  # batch size 5 or 32: the same cells
    assert (tmp_path / "parts" / "per_prototype.csv").read_bytes() == (out / "per_prototype.csv").read_bytes()


def test_compare_judges_the_scorecard_overall_and_lists_prototypes(scorecard_run, tmp_path):
    out, _ = scorecard_run
    new = tmp_path / "new"
    demo(new, "--metrics", ALL)
    same = invoke("compare", out, new, "--format", "markdown")
    assert same.exit_code == 0, same.output
    assert "| consistency | " in same.stdout and "| stability | " in same.stdout and "| +0.00 | 2.00 | pass |" \
        in same.stdout
    assert "consistency per prototype: 0 of 12 worse by more than 2.00, 0 better" in same.stdout
    prototypes = pd.read_csv(new / "per_prototype.csv")
    prototypes.loc[3, "stability"] -= 10  # one prototype less stable; the summary's overall value unchanged
    prototypes.to_csv(new / "per_prototype.csv", index=False)
    moved = invoke("compare", out, new)
    assert moved.exit_code == 0  # the gate is the overall value
    assert "stability per prototype: 1 of 12 worse by more than 2.00 (3), 0 better" in " ".join(moved.stdout.split())
    summary = pd.read_csv(new / "summary.csv")
    summary.loc[0, "consistency_mean"] -= 8.33
    summary.to_csv(new / "summary.csv", index=False)
    worse = invoke("compare", out, new, "--format", "markdown")
    assert worse.exit_code == 1 and "| consistency |" in worse.stdout and "| -8.33 | 2.00 | **FAIL** |" in worse.stdout


def test_compare_with_a_run_without_the_scorecard(scorecard_run, tmp_path):
    out, _ = scorecard_run
    demo(tmp_path / "default")
    older = invoke("compare", tmp_path / "default", out, "--format", "markdown")  # the baseline lacks them: n/a
    assert older.exit_code == 0 and "| consistency | - |" in older.stdout and "| n/a |" in older.stdout
    both = invoke("compare", tmp_path / "default", tmp_path / "default", "--format", "markdown")
    assert "consistency" not in both.stdout and "stability" not in both.stdout  # neither run measured them


def test_resume_and_a_rebuilt_summary_give_the_same_files(scorecard_run, tmp_path):
    out, _ = scorecard_run
    again = tmp_path / "again"
    demo(again, "--metrics", ALL)
    (again / "summary.csv").unlink()
    result = invoke("evaluate", "--out", again, "--limit", 24, "--steps", 2, "--metrics", ALL, "--resume")
    assert result.exit_code == 0, result.output
    assert (again / "summary.csv").read_bytes() == (out / "summary.csv").read_bytes()
    other = invoke("evaluate", "--out", again, "--limit", 24, "--steps", 2, "--resume")  # not the same run
    assert other.exit_code == 2 and "metrics" in other.stderr


def test_unknown_metrics_and_data_without_parts_are_one_line(tmp_path, tiny_ckpt, image_folder):
    typo = invoke("evaluate", "--out", tmp_path / "a", "--metrics", "misalignment,stabilty")
    assert typo.exit_code == 2 and "did you mean 'stability'" in typo.stderr and not (tmp_path / "a").exists()
    none = invoke("evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", tmp_path / "b", "--metrics",
                  "consistency")
    assert none.exit_code == 2 and "needs part annotations" in none.stderr and "parts.csv" in none.stderr
    assert "Traceback" not in none.output and not (tmp_path / "b" / "run.json").exists()


def test_cub_scorecard_end_to_end(tmp_path):
    """The CUB fixture through evaluate: its 3 test images, a 2-class model of 4 prototypes at 16 px."""
    from protobench.adapters.protopnet import ProtoPNetAdapter

    from conftest import tiny_config

    cub = write_cub(tmp_path / "CUB_200_2011", parts=True)
    ckpt = tmp_path / "m.safetensors"
    ProtoPNetAdapter.from_config(tiny_config(num_classes=2, num_prototypes=4, img_size=16), seed=0).save(str(ckpt))
    result = invoke("evaluate", "--ckpt", ckpt, "--data", cub, "--out", tmp_path / "o", "--metrics", "consistency")
    assert result.exit_code == 0, result.output
    prototypes = pd.read_csv(tmp_path / "o" / "per_prototype.csv")
    assert prototypes["images"].tolist() == [1, 1, 2, 2]  # class 1 has test image 1, class 2 images 3 and 5
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert meta["scorecard"]["parts"] == ["beak", "left eye", "tail", "crown"]
    assert meta["scorecard"]["parts_fingerprint"]["files"] == 2


def _every_family():
    from test_originals import write_pipnet, write_ppnet, write_protopool, write_prototree
    from test_originals_cnn import write_deformable, write_protopshare, write_st

    return [(lambda tmp: write_ppnet(tmp)[0], "protopnet"), (lambda tmp: write_ppnet(tmp, family="tesnet")[0], "tesnet"),
            (lambda tmp: write_protopool(tmp)[0], "protopool"), (lambda tmp: write_pipnet(tmp)[0], "pipnet"),
            (lambda tmp: write_prototree(tmp)[0] / "model.pth", "prototree"), (lambda tmp: write_deformable(tmp)[0], "deformable"),
            (lambda tmp: write_st(tmp, "full", "vgg")[0], "stprotopnet"),
            (lambda tmp: write_protopshare(tmp)[0], "protopshare")]


@pytest.mark.parametrize("family", [name for _, name in _every_family()])
def test_every_family_gets_a_scorecard_from_its_original_file(tmp_path, family):
    """Consistency and stability need nothing but the similarity maps and the class identity, so each
    family's original checkpoint gets them, from an ImageFolder with a parts.csv (one part per image,
    in its centre)."""
    from conftest import write_image_folder

    write = dict((name, w) for w, name in _every_family())[family]
    path = write(tmp_path)
    data = tmp_path / "data"
    write_image_folder(data, classes=3, per_class=2, size=32)
    (data / "parts.csv").write_text("image,part,x,y,visible\n" + "".join(
        f"class{c}/img{i}.png,middle,16,16,1\n" for c in range(3) for i in range(2)))
    result = invoke("evaluate", "--ckpt", path, "--data", data, "--out", tmp_path / "out", "--metrics",
                    "consistency,stability", "--adapter-option", "img_size=32")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "out" / "per_prototype.csv")
    scored = table[table["images"] > 0]
    assert len(scored) and scored["consistency"].isin([0.0, 100.0]).all()
    assert scored["stability"].between(0, 100).all() and (scored["part"] == "middle").all()
    assert table.loc[table["images"] == 0, "consistency"].isna().all()  # a prototype of no class: not scored
