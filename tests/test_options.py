"""Every numeric option is checked before any work starts or any file is written: one line,
exit 2, and the output directory untouched (usable afterwards without --overwrite)."""

import math

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from protobench.core.protocol import EvalProtocol
from protobench.cli.app import app
from protobench.run.devices import check_device_name, resolve_device
from protobench.errors import OptionError, ProtobenchError
from protobench.train.settings import TrainSettings
from test_cli import assert_one_line_error

runner = CliRunner()

BAD_EVALUATE = [
    (["--eps", "nan"], "--eps"), (["--eps", "inf"], "--eps"), (["--eps", "-1"], "--eps"), (["--eps", "1e30"], "--eps"),
    (["--step", "nan"], "--step"), (["--step", "-0.5"], "--step"), (["--steps", "-1"], "--steps"),
    (["--margin", "-1000"], "--margin"), (["--margin", str(10**30)], "--margin"),
    (["--batch-size", "0"], "--batch-size"), (["--batch-size", "-1"], "--batch-size"),
    (["--workers", "-1"], "--workers"), (["--workers", "100000"], "--workers"),
    (["--chunk-threads", "0"], "--chunk-threads"), (["--chunk-threads", "1000"], "--chunk-threads"),
    (["--limit", "0"], "--limit"), (["--limit", "-5"], "--limit"),
    (["--seed", "-1"], "--seed"), (["--seed", str(2**32)], "--seed"),
    (["--device", "mps"], "--device"), (["--device", "meta"], "--device"), (["--device", "cuda:x"], "--device"),
    (["--device", "cpu:-1"], "--device"), (["--device", "cuda:99"], "cuda:99"),
    (["--precision", "fp8"], "precision"), (["--attack", "fgsm"], "attack"),
]


def test_a_refused_run_leaves_the_directory_usable(tiny_ckpt, image_folder, tmp_path):
    base = ["evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", str(tmp_path / "o"), "--steps", "1"]
    for bad in (["--batch-size", "-1"], ["--workers", "-1"], ["--eps", "nan"]):
        assert runner.invoke(app, [*base, *bad]).exit_code == 2
    result = runner.invoke(app, base)  # no --overwrite needed
    assert result.exit_code == 0, result.output
    assert pd.read_csv(tmp_path / "o" / "per_image.csv")["PAC"].notna().all()


def test_several_models_refuse_before_touching_out(tiny_ckpt, image_folder, tmp_path):
    out = tmp_path / "o"
    result = runner.invoke(app, ["evaluate", "--ckpt", tiny_ckpt, "--ckpt", tiny_ckpt, "--data", image_folder,
                                 "--out", str(out), "--batch-size", "-1"])
    assert_one_line_error(result, "--batch-size")
    assert not out.exists()


BAD_FINETUNE = [
    (["--lr-features", "nan"], "--lr-features"), (["--lr-add-on", "inf"], "--lr-add-on"),
    (["--lr-prototypes", "-1"], "--lr-prototypes"), (["--lr-last", "nan"], "--lr-last"),
    (["--weight-decay", "nan"], "--weight-decay"), (["--lambda-align", "nan"], "--lambda-align"),
    (["--lambda-align", "-1"], "--lambda-align"), (["--aug-prob", "nan"], "--aug-prob"),
    (["--aug-prob", "1.5"], "--aug-prob"), (["--adv-eps", "nan"], "--adv-eps"), (["--adv-steps", "-1"], "--adv-steps"),
    (["--epochs", "-1"], "--epochs"), (["--last-epochs", "-2"], "--last-epochs"), (["--batch-size", "1"], "--batch-size"),
    (["--seed", "-3"], "--seed"), (["--device", "meta"], "--device"), (["--device", "cuda:99"], "cuda:99"),
]


BAD = [("evaluate", *case) for case in BAD_EVALUATE] + [("finetune", *case) for case in BAD_FINETUNE]


@pytest.mark.parametrize("command, args, needle", BAD, ids=[" ".join([c, *a]) for c, a, _ in BAD])
def test_refused_before_touching_out(tiny_ckpt, image_folder, tmp_path, command, args, needle):
    out = tmp_path / "o"
    result = runner.invoke(app, [command, "--ckpt", tiny_ckpt, "--data", image_folder, "--out", str(out), *args])
    assert_one_line_error(result, needle)
    assert result.exit_code == 2 and not out.exists()


def test_demo_export_needs_a_positive_count(tmp_path):
    result = runner.invoke(app, ["demo", "export", str(tmp_path / "d"), "--n", "0"])
    assert_one_line_error(result, "--n")
    assert not (tmp_path / "d").exists()


def test_library_checks_are_option_errors():
    """Bad options are ProtobenchErrors (CLI exit 2), and still ValueErrors for library callers."""
    for bad in ({"eps": math.nan}, {"step": math.inf}, {"steps": -1}, {"margin": -1}, {"seed": -1}):
        with pytest.raises(OptionError):
            EvalProtocol.make(**bad)
        with pytest.raises(ValueError):
            EvalProtocol(**bad).check()  # an EvalProtocol built directly is checked when evaluate starts
    with pytest.raises(ProtobenchError, match="--lr-last"):
        TrainSettings(lr_last=math.nan).check()
    for name in ("auto", "cpu", "cuda", "cuda:0", "cuda:12"):
        check_device_name(name)
    for name in ("mps", "meta", "cuda:x", "cpu:-1", "cuda:-1", "CPU", " cpu", "cuda:01", "xla", ""):
        with pytest.raises(OptionError, match="use auto, cpu, cuda or cuda:N"):
            check_device_name(name)


def test_devices_resolve_to_visible_ones():
    assert resolve_device("cpu") == torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(OptionError, match="cuda:" + str(count)):
        resolve_device(f"cuda:{count}")  # one past the last visible GPU (or none visible)


def test_the_largest_allowed_attack_still_gives_finite_numbers(tiny_ckpt, image_folder, tmp_path):
    out = tmp_path / "o"
    result = runner.invoke(app, ["evaluate", "--ckpt", tiny_ckpt, "--data", image_folder, "--out", str(out),
                                 "--eps", "100", "--step", "100", "--steps", "2", "--no-clip", "--limit", "4"])
    assert result.exit_code == 0, result.output
    per_image = pd.read_csv(out / "per_image.csv")
    assert per_image[["act_after", "PLC", "PRC"]].notna().all().all()
