"""protobench finetune on tiny models: push, bit-identical --resume, the sanity case, the log, errors."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import tiny_config
from protobench.adapters import _protopnet_training as train
from protobench.adapters.protopnet import ProtoPNetAdapter
from protobench.cli.app import app
from protobench.errors import Interrupted, ProtobenchError
from protobench.run.evaluate import load_dataset
from protobench.train.finetune import FinetuneConfig, finetune, side_by_side
from protobench.train.data import in_memory
from protobench.train.data import epoch_order
from protobench.train.settings import TrainSettings
from protobench.train.trainer import NonFinite
from test_cli import assert_one_line_error
from test_train import assert_prototypes_are_patches

FAST = TrainSettings(epochs=2, last_epochs=1, batch_size=4, adv_steps=2)


def config(ckpt, data, out, **settings):
    return FinetuneConfig(ckpt=ckpt, data=data, out=str(out), settings=replace(FAST, **settings))


def weights(out) -> dict[str, torch.Tensor]:
    return load_file(str(Path(out) / "model.safetensors"))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def training_set(data, adapter):
    return in_memory(load_dataset(data, adapter.info)[0])


def test_after_push_every_prototype_is_a_training_patch_of_its_class(tiny_ckpt, image_folder, tmp_path):
    result = finetune(config(tiny_ckpt, image_folder, tmp_path / "o"))
    adapter = ProtoPNetAdapter.load(result["model"])
    assert not torch.equal(adapter.model.prototype_vectors, ProtoPNetAdapter.load(tiny_ckpt).model.prototype_vectors)
    # the last-layer epoch after push keeps batch-norm statistics: the patches are still exact
    assert_prototypes_are_patches(adapter.model, training_set(image_folder, adapter))
    assert [row["phase"] for row in result["log"]] == ["joint", "joint", "push", "last"]
    assert result["log"][2]["pushed"] == 6


def test_without_push_prototypes_are_not_patches(tiny_ckpt, image_folder, tmp_path):
    result = finetune(config(tiny_ckpt, image_folder, tmp_path / "o", push=False))
    adapter = ProtoPNetAdapter.load(result["model"])
    with pytest.raises(AssertionError, match="away from its nearest patch"):
        assert_prototypes_are_patches(adapter.model, training_set(image_folder, adapter))


class StopAt:
    """A progress that interrupts like Ctrl-C: after the plan step `step` ends, or at batch `batch` of it."""

    def __init__(self, step, batch=None):
        self.step, self.batch, self.ended = step, batch, 0

    def start(self, total, description): ...

    def update(self, done, terms):
        if self.batch is not None and self.ended == self.step and done == self.batch:
            raise KeyboardInterrupt

    def end(self, row):
        self.ended += 1
        if self.batch is None and self.ended == self.step:
            raise KeyboardInterrupt

    def stop(self): ...


# the adversarial variant with augmentation and a learning rate that decays every epoch: every random
# draw and every piece of optimizer state must come back after an interruption
RESUMED = dict(adversarial=True, step_size=1, gamma=0.5, epochs=3, last_epochs=2)


@pytest.mark.parametrize("stop", [StopAt(1), StopAt(2, batch=2), StopAt(4), StopAt(5, batch=1)],
                         ids=["after-joint-1", "inside-joint-3", "after-push", "inside-last-2"])
def test_resume_after_an_interruption_gives_the_same_weights(tiny_ckpt, image_folder, tmp_path, stop):
    finetune(config(tiny_ckpt, image_folder, tmp_path / "whole", **RESUMED))
    cut = config(tiny_ckpt, image_folder, tmp_path / "cut", **RESUMED)
    with pytest.raises(Interrupted, match="--resume"):
        finetune(cut, progress=stop)
    assert (tmp_path / "cut" / "checkpoint.pt").is_file() and not (tmp_path / "cut" / "model.safetensors").exists()
    result = finetune(replace(cut, resume=True))
    assert_same_weights(weights(tmp_path / "whole"), weights(tmp_path / "cut"))
    assert [row["phase"] for row in result["log"]] == ["joint"] * 3 + ["push"] + ["last"] * 2
    assert not (tmp_path / "cut" / "checkpoint.pt").exists()


def test_resume_after_the_process_is_killed(tiny_ckpt, image_folder, tmp_path):
    args = ["--ckpt", tiny_ckpt, "--data", image_folder, "--no-eval", "--epochs", "30", "--last-epochs", "0",
            "--batch-size", "4", "--seed", "3"]
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same arithmetic as this process (conftest: one thread)
    child = subprocess.Popen([sys.executable, "-m", "protobench", "finetune", *args, "--out", str(out)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert (out / "checkpoint.pt").exists() and not (out / "model.safetensors").exists(), "not killed in time"
    assert 1 <= torch.load(out / "checkpoint.pt", weights_only=True)["done"] < 31
    settings = replace(TrainSettings(), epochs=30, last_epochs=0, batch_size=4, seed=3)
    resumed = finetune(FinetuneConfig(ckpt=tiny_ckpt, data=image_folder, out=str(out), settings=settings, resume=True))
    assert len(resumed["log"]) == 31  # 30 joint epochs and push
    finetune(FinetuneConfig(ckpt=tiny_ckpt, data=image_folder, out=str(tmp_path / "whole"), settings=settings))
    assert_same_weights(weights(tmp_path / "whole"), weights(out))


def test_lambda_zero_without_augmentation_is_plain_protopnet_finetuning(tiny_ckpt, image_folder, tmp_path):
    s = replace(FAST, lambda_align=0, mask_aug=False, epochs=2, last_epochs=2, step_size=1, seed=7)
    finetune(FinetuneConfig(ckpt=tiny_ckpt, data=image_folder, out=str(tmp_path / "o"), settings=s))
    # the same by hand: ProtoPNet's loss and push, Adam and StepLR written out, no protobench loop
    model = ProtoPNetAdapter.load(tiny_ckpt).model
    x, y, ids = training_set(image_folder, ProtoPNetAdapter.load(tiny_ckpt)).tensors

    def adam(*groups):  # (module, lr, weight decay): those train, the rest is frozen
        for param in model.parameters():
            param.requires_grad_(False)
        for module, _, _ in groups:
            for param in module.parameters():
                param.requires_grad_(True)
        return torch.optim.Adam([{"params": list(m.parameters()), "lr": lr, "weight_decay": wd} for m, lr, wd in groups])

    def epoch(optimizer, step):
        for idx in epoch_order(s.seed, step, len(x), s.batch_size):
            loss = train.training_loss(model, x[idx], y[idx])["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    prototypes = torch.nn.ParameterList([model.prototype_vectors])
    model.train()
    joint = adam((model.features, s.lr_features, s.weight_decay), (model.add_on_layers, s.lr_add_on, s.weight_decay),
                 (prototypes, s.lr_prototypes, 0.0))
    schedule = torch.optim.lr_scheduler.StepLR(joint, 1, s.gamma)
    for step in (0, 1):
        epoch(joint, step)
        schedule.step()
    train.push(model, [(x[i], y[i], ids[i]) for i in torch.arange(len(x)).split(s.batch_size)])
    model.eval()  # the last layer alone: batch-norm statistics stay put
    last = adam((model.last_layer, s.lr_last, 0.0))
    for step in (3, 4):  # plan steps: joint 0, joint 1, push 2, last 3, last 4
        epoch(last, step)
    assert_same_weights(weights(tmp_path / "o"), model.state_dict())


def test_alignment_term_is_logged_positive_and_weighted(tiny_ckpt, image_folder, tmp_path):
    finetune(config(tiny_ckpt, image_folder, tmp_path / "o", lambda_align=3.0))
    log = pd.read_csv(tmp_path / "o" / "train_log.csv")
    joint = log[log.phase == "joint"]
    assert (joint["align"] > 0).all()
    # the total is the family's loss + lambda * alignment, batch by batch, so also in the means
    assert joint["loss"].tolist() == pytest.approx((joint["family"] + 3.0 * joint["align"]).tolist(), rel=1e-5)
    assert log[log.phase == "last"]["align"].isna().all()  # no alignment term once only the last layer trains
    assert {"ce", "cluster", "separation", "l1", "acc", "seconds"} <= set(log.columns)


def test_lambda_zero_logs_no_alignment_term(tiny_ckpt, image_folder, tmp_path):
    log = finetune(config(tiny_ckpt, image_folder, tmp_path / "o", lambda_align=0, epochs=1))["log"]
    assert "align" not in log[0] and log[0]["loss"] == pytest.approx(log[0]["family"])


@pytest.mark.parametrize("adversarial", [False, True])
def test_alignment_passes_leave_batch_norm_statistics_alone(adversarial):
    adapter = ProtoPNetAdapter.from_config(tiny_config(), seed=1)
    adapter.model.train()
    buffers = {k: v.clone() for k, v in adapter.model.state_dict().items() if "running" in k or "tracked" in k}
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])
    objective = replace(FAST, adversarial=adversarial).objective(adapter)
    loss = objective.alignment(adapter, x, y, torch.Generator().manual_seed(0), None)
    state = adapter.model.state_dict()
    for name, value in buffers.items():
        assert torch.equal(state[name], value), name
    assert all(p.grad is None for p in adapter.model.parameters())  # crafting leaked no gradient
    assert adapter.model.training and all(p.requires_grad for p in adapter.model.parameters())
    loss.backward()
    assert adapter.model.features.features[0].weight.grad.abs().sum() > 0


def invoke(*args):
    return CliRunner().invoke(app, ["finetune", *[str(a) for a in args]])


def test_cli_runs_and_prints_before_and_after(tiny_ckpt, image_folder, tmp_path):
    out = tmp_path / "o"
    result = invoke("--ckpt", tiny_ckpt, "--data", image_folder, "--eval-data", image_folder, "--out", out,
                    "--epochs", 1, "--last-epochs", 1, "--batch-size", 4)
    assert result.exit_code == 0, result.output
    for needle in ("before", "after", "change", "PLC (location change, %)", "accuracy, clean images (%)"):
        assert needle in result.stdout
    before = pd.read_csv(out / "before" / "summary.csv").iloc[0]
    after = pd.read_csv(out / "after" / "summary.csv").iloc[0]
    row = next(line for line in result.stdout.splitlines() if "PAC (activation change" in line)
    assert f"{before.PAC_mean:.2f}" in row and f"{after.PAC_mean:.2f}" in row
    assert f"{after.PAC_mean - before.PAC_mean:+.2f}" in row
    assert "pushed" in pd.read_csv(out / "train_log.csv").columns


def test_adversarial_variant_has_its_own_default_lambda(tiny_ckpt, image_folder, tmp_path):
    assert TrainSettings().as_dict()["lambda_align"] == 10.0
    assert TrainSettings(adversarial=True).as_dict()["lambda_align"] == 3.0
    assert TrainSettings(adversarial=True, lambda_align=0.0).as_dict()["lambda_align"] == 0.0
    result = invoke("--ckpt", tiny_ckpt, "--data", image_folder, "--out", tmp_path / "o", "--align-adversarial",
                    "--epochs", 1, "--last-epochs", 0, "--no-push", "--batch-size", 4)
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "o" / "finetune.json").read_text())["identity"]["settings"]
    assert settings["lambda_align"] == 3.0 and settings["adversarial"] is True and settings["push"] is False


def test_the_default_lambda_follows_the_variant_after_replace(tiny_ckpt, image_folder, tmp_path):
    # the default is resolved where it is used: replace() of a default TrainSettings once carried lambda 10 over
    settings = replace(TrainSettings(), adversarial=True)
    assert settings.as_dict()["lambda_align"] == 3.0
    assert replace(TrainSettings(adversarial=True), adversarial=False).as_dict()["lambda_align"] == 10.0
    finetune(config(tiny_ckpt, image_folder, tmp_path / "o", adversarial=True, epochs=1, last_epochs=0, push=False))
    recorded = json.loads((tmp_path / "o" / "finetune.json").read_text())["identity"]["settings"]
    assert recorded["lambda_align"] == 3.0  # FAST leaves lambda at its default


def test_before_and_after_measure_the_model_as_configured_for_training(tiny_ckpt, image_folder, tmp_path):
    # --adapter auto (the default) with an option: the "before" evaluation once dropped the option and
    # measured the checkpoint's own 'log' similarity while training (and "after") used 'linear' = -d <= 0
    cfg = replace(config(tiny_ckpt, image_folder, tmp_path / "o", epochs=1, last_epochs=0, push=False),
                  adapter_options={"activation": "linear"}, eval_data=image_folder)
    finetune(cfg)
    for side in ("before", "after"):
        activations = pd.read_csv(tmp_path / "o" / side / "per_image.csv")["act_before"]
        assert (activations <= 0).all(), side


def test_side_by_side_rows():
    before = {"PLC_mean": 40.0, "PAC_mean": 35.0, "PRC_mean": 1.25, "acc_before": 100.0, "acc_after": 82.0, "AC": 18.0}
    after = {"PLC_mean": 10.0, "PAC_mean": 5.5, "PRC_mean": 0.25, "acc_before": 99.0, "acc_after": 97.0, "AC": 2.0}
    rows = side_by_side(before, after)
    assert [r[0] for r in rows][:3] == ["PLC (location change, %)", "PAC (activation change, %)", "PRC (rank change)"]
    assert [r[3] for r in rows] == [-30.0, -29.5, -1.0, -1.0, 15.0, -16.0]


def test_cli_errors(tiny_ckpt, image_folder, tmp_path):
    base = ["--ckpt", tiny_ckpt, "--data", image_folder, "--epochs", 1, "--last-epochs", 0, "--batch-size", 4]
    assert_one_line_error(invoke(*base, "--adapter", "protopnt", "--out", tmp_path / "a"), "Did you mean 'protopnet'")
    fresh = invoke(*base, "--out", tmp_path / "a", "--resume")  # nothing to resume: a fresh run, and a note
    assert fresh.exit_code == 0 and f"note: nothing to resume in {tmp_path / 'a'}" in fresh.stderr, fresh.output
    assert_one_line_error(invoke(*base, "--align-loss", "l3", "--out", tmp_path / "a"), "l1 or l2")
    assert_one_line_error(invoke("--ckpt", tiny_ckpt, "--out", tmp_path / "a"), "give --data")
    assert invoke(*base, "--out", tmp_path / "o").exit_code == 0
    assert_one_line_error(invoke(*base, "--out", tmp_path / "o"), "already holds", "--resume", "--overwrite")
    assert_one_line_error(invoke(*base, "--out", tmp_path / "o", "--resume", "--lambda-align", 1),
                          "different fine-tuning run", "settings.lambda_align: recorded 10.0, now 1.0")
    assert invoke(*base, "--out", tmp_path / "o", "--resume").exit_code == 0  # complete: nothing left to do
    assert invoke(*base, "--out", tmp_path / "o", "--overwrite", "--seed", 1).exit_code == 0


def untrainable_families() -> list[str]:
    """The registered families whose file declares no training schedule."""
    from protobench.models.families import FAMILIES

    return [name for name in FAMILIES.names() if FAMILIES.get(name).training_schedule is None]


@pytest.mark.parametrize("family", untrainable_families())
def test_family_without_training_support(tmp_path, image_folder, family):
    from protobench.models.lookup import get_adapter

    path = tmp_path / f"{family}.safetensors"
    get_adapter(family).tiny().save(str(path))
    result = invoke("--ckpt", path, "--data", image_folder, "--out", tmp_path / "o")
    assert_one_line_error(result, f"adapter {family!r} cannot be fine-tuned: its family declares no",
                          "training_schedule in its file", "`protobench adapters` lists")
    assert not (tmp_path / "o").exists()


def test_a_family_with_a_loss_but_no_schedule_is_refused(tiny_adapter):
    from protobench.errors import AdapterError
    from protobench.train.finetune import check_trainable

    class Unscheduled(type(tiny_adapter)):
        training_schedule = None

    unscheduled = Unscheduled(tiny_adapter.model)
    with pytest.raises(AdapterError, match="declares no training_schedule in its file"):
        check_trainable(unscheduled, TrainSettings())
    check_trainable(tiny_adapter, TrainSettings())  # ProtoPNet declares all of it


def test_every_command_in_the_compensation_doc_exists():
    import importlib.util
    import re

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("finetune_ablation", root / "scripts" / "finetune_ablation.py")
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    text = ((root / "docs" / "compensation.md").read_text() + (root / "README.md").read_text()).replace("\\\n", " ")
    found = re.findall(r"protobench (finetune|evaluate)([^\n`]*)", text)
    assert {name for name, _ in found} == {"finetune", "evaluate"}
    for name in ("finetune", "evaluate"):
        help_text = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "300"}).stdout
        for option in {o for n, args in found if n == name for o in re.findall(r"(--[a-z][a-z-]*)", args)}:
            assert option in help_text, f"the docs use protobench {name} {option}, which does not exist"
    for run in re.findall(r"--runs ([a-z0-9 -]+?)\s+--", text)[0].split():
        assert run in driver.RUNS


def test_progress_bar_shows_each_loss_term(tiny_ckpt, image_folder, tmp_path):
    import io

    from rich.console import Console

    from protobench.cli.progress import TrainProgress

    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=200)
    finetune(config(tiny_ckpt, image_folder, tmp_path / "o", epochs=1), progress=TrainProgress(console))
    text = stream.getvalue()
    for needle in ("joint epoch 1/1", "ce ", "cluster ", "separation ", "align ", "loss ", "push: pushed 6",
                   "last epoch 1/1"):
        assert needle in text, needle


def poison_loss(monkeypatch, at_call):
    """The family's loss turns NaN at its `at_call`-th evaluation (as a diverging run's would)."""
    real, calls = ProtoPNetAdapter.training_loss, []

    def poisoned(self, x, y):
        terms = real(self, x, y)
        calls.append(1)
        return {**terms, "loss": terms["loss"] * float("nan")} if len(calls) == at_call else terms

    monkeypatch.setattr(ProtoPNetAdapter, "training_loss", poisoned)


def test_a_non_finite_loss_stops_keeping_the_last_good_epoch(tiny_ckpt, image_folder, tmp_path, monkeypatch):
    finetune(config(tiny_ckpt, image_folder, tmp_path / "whole"))
    cut = config(tiny_ckpt, image_folder, tmp_path / "cut")
    poison_loss(monkeypatch, at_call=4)  # 12 images in batches of 4: the first batch of joint epoch 2
    with pytest.raises(NonFinite, match="after 1 finished epochs.*loss became nan at batch 1 of joint epoch 2/2.*"
                                        "--lr-prototypes.*--resume"):
        finetune(cut)
    monkeypatch.undo()
    out = tmp_path / "cut"
    assert not (out / "model.safetensors").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["done"] == 1
    assert json.loads((out / "finetune.json").read_text())["status"] == "stopped"
    finetune(replace(cut, resume=True))  # the same settings continue from the kept epoch
    assert_same_weights(weights(tmp_path / "whole"), weights(out))


def test_a_stopped_run_may_resume_with_lower_learning_rates(tiny_ckpt, image_folder, tmp_path):
    base = ["--ckpt", tiny_ckpt, "--data", image_folder, "--out", tmp_path / "o", "--epochs", 2, "--last-epochs", 1,
            "--batch-size", 4]
    result = invoke(*base, "--lr-prototypes", "1e30", "--lr-add-on", "1e30")
    assert_one_line_error(result, "fine-tuning stopped", "no model was written", "--resume")
    assert result.exit_code == 2 and not (tmp_path / "o" / "model.safetensors").exists()
    assert_one_line_error(invoke(*base, "--resume", "--seed", 5), "different fine-tuning run", "settings.seed")
    assert invoke(*base, "--resume").exit_code == 0
    record = json.loads((tmp_path / "o" / "finetune.json").read_text())
    assert record["status"] == "complete" and record["identity"]["settings"]["lr_prototypes"] == 3e-3
    assert record["retuned"][0]["settings"] == {"lr_add_on": 3e-3, "lr_prototypes": 3e-3}
    model = ProtoPNetAdapter.load(str(tmp_path / "o" / "model.safetensors"))
    assert all(torch.isfinite(p).all() for p in model.model.parameters())


def test_lowered_rates_replace_the_saved_ones_and_only_those(tiny_adapter):
    from protobench.train.state import phase_optimizer

    s = TrainSettings(step_size=1, gamma=0.5)
    joint = next(phase for phase in s.plan(tiny_adapter).phases if phase.name == "joint")
    optimizer, scheduler = phase_optimizer(tiny_adapter, joint, None)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    saved = {"phase": "joint", "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    lowered = next(phase for phase in replace(s, lr_prototypes=1e-5).plan(tiny_adapter).phases if phase.name == "joint")
    optimizer, scheduler = phase_optimizer(tiny_adapter, lowered, saved)
    lrs = [group["lr"] for group in optimizer.param_groups]  # features, add_on, prototypes
    assert lrs == [s.lr_features * 0.5 * 0.5, s.lr_add_on * 0.5 * 0.5, 1e-5 * 0.25]
    scheduler.step()
    assert optimizer.param_groups[2]["lr"] == 1e-5 * 0.125


def test_a_weight_that_becomes_non_finite_is_named(tiny_adapter):
    from protobench.train.trainer import check_finite

    check_finite(tiny_adapter, "joint epoch 1")
    with torch.no_grad():
        tiny_adapter.model.prototype_vectors[0, 0] = float("inf")
    with pytest.raises(NonFinite, match="prototype_vectors became non-finite in joint epoch 1"):
        check_finite(tiny_adapter, "joint epoch 1")


def test_overwrite_removes_the_earlier_run_only_once_the_new_one_is_accepted(tiny_ckpt, image_folder, tmp_path):
    base = ["--data", image_folder, "--out", tmp_path / "o", "--epochs", 1, "--last-epochs", 0, "--batch-size", 4]
    assert invoke("--ckpt", tiny_ckpt, *base).exit_code == 0
    assert_one_line_error(invoke("--ckpt", tmp_path / "missing.pt", *base, "--overwrite"), "not found")
    assert (tmp_path / "o" / "model.safetensors").is_file()


def test_a_hostile_epoch_checkpoint_is_refused_on_resume(tiny_ckpt, image_folder, tmp_path):
    """checkpoint.pt is read like any checkpoint: a pickle that asks for a call is refused, nothing runs."""
    from hostile import Call, dumps, torch_zip

    finetune(config(tiny_ckpt, image_folder, tmp_path / "run", epochs=2))
    out = tmp_path / "run"
    (out / "model.safetensors").unlink()  # as if interrupted after the joint epochs
    marker = tmp_path / "ran"
    torch_zip(out / "checkpoint.pt", dumps({"model": Call(os.system, f"touch {marker}"), "done": 1}))
    with pytest.raises(ProtobenchError, match=r"cannot read .*checkpoint\.pt .*refusing.*use --overwrite"):
        finetune(replace(config(tiny_ckpt, image_folder, tmp_path / "run", epochs=2), resume=True))
    assert not marker.exists()
