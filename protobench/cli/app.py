"""The command line: each command builds a config and calls one library function.

torch is imported inside the commands, so `protobench --help` and `protobench adapters` stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from protobench.cli.console import (err_console, fail, line, out_console, parse_options, run_library, say,
                                    warnings_to_console)
from protobench.cli.helptext import (ADAPTER_OPTION_HELP, ATTACK_HELP, DATASET_HELP, LIMIT_HELP, MARGIN_HELP,
                                     MAX_PIXELS, MAX_PIXELS_HELP, METRICS_HELP, PLC_HELP, PROTOCOL_HELP, REGION_HELP, SELECT_HELP,
                                     RegistryHelp)
from protobench.cli.report import (REPORT_HELP, SAVE_EXAMPLES_HELP, after_evaluate, check_examples, keeper,
                                   report_command)
from protobench.cli.compare import compare_command
from protobench.cli.sensitivity import sensitivity_command
from protobench.cli.root import app
from protobench.cli.zoo import DOWNLOAD_HELP, MODEL_HELP, ZOO_DIR_HELP, zoo_app, zoo_model


def layout_name(name: Optional[str]) -> Optional[str]:
    """--dataset, checked against the registry before anything is loaded or written."""
    if name is not None:
        from protobench.data.layouts import check_name

        run_library(check_name, name)
    return name


@app.command(cls=RegistryHelp)
def evaluate(
    adapter: list[str] = typer.Option([], metavar="NAME", help="Model family (`protobench adapters` lists them), "
                                      "pkg.module:Class, or auto, told from the checkpoint; once for all --ckpt, or "
                                      "once per --ckpt in order. [default: auto]"),
    ckpt: list[Path] = typer.Option([], metavar="FILE", help="Checkpoint file; repeat it to evaluate several models "
                                    "in one run. [default: the built-in demo model]"),
    data: Optional[Path] = typer.Option(None, metavar="DIR", help="Dataset directory, of any layout --dataset names, "
                                        "or protoshapes[:train], the demo data. [default: protoshapes, with the demo "
                                        "model]"),
    dataset: Optional[str] = typer.Option(None, metavar="LAYOUT", help=DATASET_HELP, callback=layout_name),
    split: Optional[str] = typer.Option(None, metavar="SPLIT", help="The layout's split: test or train (CUB also "
                                        "all); an ImageFolder has none. [default: the layout's test split]"),
    out: Optional[Path] = typer.Option(None, metavar="DIR", help="Result directory. [default: "
                                       "protobench-results/<ckpt name>, or protobench-results/models for several]"),
    protocol: str = typer.Option("default", metavar="NAME", help=PROTOCOL_HELP),
    attack: Optional[str] = typer.Option(None, metavar="NAME", help=ATTACK_HELP),
    eps: Optional[float] = typer.Option(None, metavar="X", help="L-inf radius in normalized units. [default: 0.4]"),
    step: Optional[float] = typer.Option(None, metavar="X", help="pgd step size. [default: 0.01]"),
    steps: Optional[int] = typer.Option(None, metavar="N", help="pgd steps. [default: 40]"),
    select: Optional[str] = typer.Option(None, metavar="WHICH", help=SELECT_HELP),
    margin: Optional[int] = typer.Option(None, metavar="PIXELS", help=MARGIN_HELP),
    region: Optional[str] = typer.Option(None, metavar="NAME", help=REGION_HELP),
    plc: Optional[str] = typer.Option(None, metavar="KIND", help=PLC_HELP),
    restarts: Optional[int] = typer.Option(None, metavar="N", help="apgd: runs from new random starts, best kept. "
                                           "[default: 1]"),
    box_quantile: Optional[float] = typer.Option(None, metavar="Q", help="The box region's map quantile. [default: "
                                                 "0.95, the top 5%]"),
    plc_quantile: Optional[float] = typer.Option(None, metavar="Q", help="Pixel PLC's map quantile. [default: 0.9, "
                                                 "the top 10%]"),
    seeds: Optional[str] = typer.Option(None, metavar="LIST", help="Attack every image once per seed, e.g. 0,1,2: "
                                        "per-image means, an interval over images and seeds (overrides --seed)."),
    clip: Optional[bool] = typer.Option(None, "--clip/--no-clip", help="Keep attacked images in the valid range. "
                                        "[default: from --protocol]"),
    batch_size: Optional[int] = typer.Option(None, metavar="N", help="Images per batch. [default: 32 on a CPU; 256 on "
                                             "a GPU, halved automatically until it fits]"),
    device: str = typer.Option("auto", metavar="DEVICE", help="auto, cpu or cuda[:N]."),
    workers: Optional[int] = typer.Option(None, metavar="N", help="Image-decoding processes. [default: 0 on a CPU, up "
                                          "to 8 on a GPU]"),
    precision: str = typer.Option("fp32", metavar="NAME", help="fp32 (true fp32), tf32 (faster on GPUs), bf16 or fp16 "
                                  "(autocast); prototype layers and metrics always run in fp32."),
    distance: str = typer.Option("float64", metavar="NAME", show_default=False, help="The prototype distance of ProtoPNet, ProtoPShare, "
                                 "ProtoPool, ProtoTree and CaBRNet's heads: float64 (stable across threads and kernels) or float32 (the "
                                 "original code's arithmetic, bit for bit; docs/adapters.md). [default: float64]"),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model (GPU runs; first batch slower)."),
    chunk_threads: int = typer.Option(1, metavar="N", show_default=False, help="CPU: measure N chunks of 8 images side by side, one "
                                      "thread each: much faster on a busy machine, and the numbers are a one-thread "
                                      "run's whatever the thread count (docs/performance.md). [default: 1, one chunk at a time "
                                      "on all threads]"),
    seed: int = typer.Option(0, metavar="N", help="Seeds the random start of each image, the stability noise and "
                             "--limit's subset."),
    metrics: str = typer.Option("misalignment", metavar="LIST", help=METRICS_HELP),
    limit: Optional[int] = typer.Option(None, metavar="N", help=LIMIT_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace results already in --out."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out (same options, same "
                                "results)."),
    strict: bool = typer.Option(False, "--strict", help="Stop at an image that does not decode instead of skipping it."),
    max_image_pixels: int = typer.Option(MAX_PIXELS, metavar="N", help=MAX_PIXELS_HELP),
    adapter_option: list[str] = typer.Option([], "--adapter-option", metavar="KEY=VALUE", help=ADAPTER_OPTION_HELP),
    report: Optional[bool] = typer.Option(None, "--report/--no-report", help=REPORT_HELP),
    save_examples: Optional[int] = typer.Option(None, "--save-examples", metavar="K", help=SAVE_EXAMPLES_HELP),
    model: Optional[str] = typer.Option(None, metavar="NAME", help=MODEL_HELP),
    zoo_dir: Optional[Path] = typer.Option(None, metavar="DIR", help=ZOO_DIR_HELP),
    download: bool = typer.Option(False, "--download", help=DOWNLOAD_HELP),
) -> None:
    """Attack pixels outside each prototype's region and measure how far the explanation moves."""
    from protobench.api.evaluate import make_protocol, run_evaluation
    from protobench.api.progress import RichProgress
    from protobench.cli.tables import summary_table
    from protobench.core.protocol import parse_seeds
    from protobench.run.defaults import evaluate_defaults
    from protobench.run.sweep import pair_adapters

    proto = run_library(make_protocol, protocol, seed, dict(
        attack=attack, eps=eps, step=step, steps=steps, select=select, margin=margin, clip=clip, region=region,
        plc=plc, restarts=restarts, seeds=run_library(parse_seeds, seeds), box_q=box_quantile, plc_q=plc_quantile))
    source = {"download": download}
    if model is not None:  # a released model from the catalogue
        if ckpt:
            fail("give --ckpt or --model, not both")
        checkpoint, adapter, source = zoo_model(model, zoo_dir, download, adapter)
        ckpt, out = [checkpoint], out or Path("protobench-results") / model
    found = run_library(evaluate_defaults, [str(c) for c in ckpt], None if data is None else str(data),
                        None if out is None else str(out), report, limit)  # the demo, --out, --report, --limit
    models = run_library(pair_adapters, list(found.ckpts), adapter, "auto")
    report = found.report
    options = parse_options(adapter_option)
    check_examples(save_examples)
    with warnings_to_console():
        several = len(models) > 1
        progress = RichProgress(err_console)
        if not several:
            progress = keeper(report, progress)  # keeps the drawn images' tensors for the report
        result = run_library(
            run_evaluation, [c for c, _ in models], found.data, proto, out=found.out,
            progress=progress, adapter=[a for _, a in models], adapter_options=options, source=source, device=device,
            workers=workers, dataset=dataset, split=split, batch_size=batch_size, limit=found.limit, overwrite=overwrite,
            strict=strict, resume=resume, precision=precision, distance=distance, compile=compile,
            chunk_threads=chunk_threads,
            max_image_pixels=max_image_pixels, metrics=tuple(metrics.split(",")), trace_dir=found.out).answer
        if several:
            return None if result is None else report_models(
                result, lambda done: after_evaluate(found.out, done, save_examples, bool(report), device,
                                                   tuple(adapter)))
    if result is None:  # a torchrun rank other than 0: rank 0 writes and reports
        return
    summary = result["summary"]
    out_console.print(summary_table(summary))
    if summary.get("zero_grad_images"):
        line("warning", "yellow", f"the pgd gradient was exactly zero on the attackable pixels for "
                                  f"{summary['zero_grad_images']} images at some step (see zero_grad in per_image.csv)")
    if result["meta"].get("skipped_images"):
        line("warning", "yellow", f"{len(result['meta']['skipped_images'])} images could not be used and were skipped "
                                  "(the warnings above say why; listed in meta.json, skipped_images)")
    written = [name for name in ("per_image.csv", "per_prototype.csv", "summary.csv", "meta.json")
               if (Path(result["out"]) / name).is_file()]
    say(f"results written to {result['out']}/ ({', '.join(written)})")
    after_evaluate(result["out"], [result["out"]], save_examples, bool(report), device, tuple(adapter), progress)


def report_models(result: dict[str, Any], then: Any) -> None:
    """One line per model, then `then(finished models' directories)`; exit 1 if one failed (summary.csv: why)."""
    from protobench.cli.tables import models_table

    out_console.print(models_table(result["summaries"]))
    say(f"results written to {result['out']}/ (summary.csv, meta.json, one folder per model)")
    then([str(Path(result["out"]) / row["model"]) for row in result["summaries"] if not row.get("error")])
    if result["failed"]:
        fail(f"{result['failed']} of {len(result['summaries'])} models failed: see the error column "
             f"of {result['out']}/summary.csv", 1)


@app.command(cls=RegistryHelp)
def convert(
    src: Path = typer.Argument(..., metavar="SRC", help="Checkpoint to convert: an original repository's file or "
                               "protobench's."),
    out: Path = typer.Argument(..., metavar="OUT", help="Where to write it (*.safetensors)."),
    adapter: str = typer.Option("auto", metavar="NAME", help="Model family (`protobench adapters` lists them) or auto."),
    adapter_option: list[str] = typer.Option([], "--adapter-option", metavar="KEY=VALUE", help=ADAPTER_OPTION_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Rewrite any supported checkpoint in protobench's safetensors format (no pickle needed again)."""
    from protobench.models.convert import convert as run_convert

    result = run_library(run_convert, str(src), str(out), adapter, parse_options(adapter_option), overwrite)
    say(f"wrote {result['out']} ({result['adapter']}: {result['num_prototypes']} prototypes, "
        f"{result['num_classes']} classes; outputs checked against the original)")


@app.command(cls=RegistryHelp)
def finetune(
    ckpt: Optional[Path] = typer.Option(None, metavar="FILE", help="Checkpoint to fine-tune. [default: the built-in "
                                        "demo model]"),
    adapter: str = typer.Option("auto", metavar="NAME", help="Model family (of the ProtoPNet family) or auto."),
    data: Optional[str] = typer.Option(None, metavar="DIR", help="Training data: a dataset directory (its train "
                                       "split) or protoshapes:train. [default: protoshapes:train, with the demo model]"),
    dataset: Optional[str] = typer.Option(None, metavar="LAYOUT", help=DATASET_HELP, callback=layout_name),
    split: Optional[str] = typer.Option(None, metavar="SPLIT", help="Split to train on; an ImageFolder has none. "
                                        "[default: the layout's train split]"),
    eval_data: Optional[str] = typer.Option(None, metavar="DIR", help="Evaluate before and after on this data, default "
                                            "protocol. [default: the demo test split for the demo; none otherwise]"),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Evaluate before and after fine-tuning."),
    out: Optional[Path] = typer.Option(None, metavar="DIR", help="Output directory. [default: "
                                       "protobench-results/finetune-<ckpt name>]"),
    lambda_align: Optional[float] = typer.Option(None, metavar="X", help="Weight of the alignment loss (0: the "
                                                 "family's loss only). [default: 10; 3 with --align-adversarial]"),
    align_loss: str = typer.Option("l1", metavar="NAME", help="l1 or l2."),
    mask_aug: bool = typer.Option(True, "--mask-aug/--no-mask-aug", help="Masking augmentation (docs/compensation.md)."),
    aug_prob: float = typer.Option(0.5, metavar="P", help="Probability of masking an image."),
    align_adversarial: bool = typer.Option(False, "--align-adversarial", help="Perturb the outside of the mask "
                                           "adversarially instead of blanking it (docs/compensation.md)."),
    adv_steps: int = typer.Option(3, metavar="N", help="Sign-gradient steps that craft the adversarial outside."),
    adv_eps: float = typer.Option(0.4, metavar="X", help="L-inf radius of the adversarial outside (normalized units)."),
    epochs: int = typer.Option(3, metavar="N", help="Joint epochs (backbone, add-on, prototypes)."),
    last_epochs: int = typer.Option(5, metavar="N", help="Last-layer epochs after push."),
    lr_features: float = typer.Option(1e-4, metavar="X", help="Learning rate of the backbone."),
    lr_add_on: float = typer.Option(3e-3, metavar="X", help="Learning rate of the add-on layers."),
    lr_prototypes: float = typer.Option(3e-3, metavar="X", help="Learning rate of the prototypes."),
    lr_last: float = typer.Option(1e-3, metavar="X", help="Learning rate of the last layer."),
    weight_decay: float = typer.Option(1e-3, metavar="X", help="Adam weight decay of backbone and add-on."),
    batch_size: int = typer.Option(32, metavar="N", help="Images per training step."),
    device: str = typer.Option("auto", metavar="DEVICE", help="auto, cpu or cuda[:N]."),
    seed: int = typer.Option(0, metavar="N", help="Seeds the batch order, the augmentation and the alignment draws."),
    push: bool = typer.Option(True, "--push/--no-push", help="Project prototypes onto training patches."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out (same options)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run already in --out."),
    max_image_pixels: int = typer.Option(MAX_PIXELS, metavar="N", help=MAX_PIXELS_HELP),
    adapter_option: list[str] = typer.Option([], "--adapter-option", metavar="KEY=VALUE", help=ADAPTER_OPTION_HELP),
) -> None:
    """Fine-tune a model to align its explanations (alignment loss, masking augmentation, push)."""
    from protobench.api.finetune import finetune as run_finetune
    from protobench.api.progress import RichProgress, TrainProgress

    settings = dict(
        lambda_align=lambda_align, align_loss=align_loss, adversarial=align_adversarial, adv_steps=adv_steps,
        adv_eps=adv_eps, mask_aug=mask_aug, aug_prob=aug_prob, epochs=epochs, last_epochs=last_epochs, push=push,
        lr_features=lr_features, lr_add_on=lr_add_on, lr_prototypes=lr_prototypes, lr_last=lr_last,
        weight_decay=weight_decay, batch_size=batch_size, seed=seed)
    with warnings_to_console():
        done = run_library(run_finetune, str(ckpt) if ckpt else None, data, out=out, adapter=adapter,
                           adapter_options=parse_options(adapter_option), dataset=dataset, split=split,
                           eval_data=eval_data, evaluate=evaluate, device=device, resume=resume, overwrite=overwrite,
                           max_image_pixels=max_image_pixels, progress=(TrainProgress(err_console),
                                                                        RichProgress(err_console)),
                           trace_dir=out, **settings)
    if done.before is not None and done.after is not None:
        from protobench.cli.tables import before_after_table

        out_console.print(before_after_table(done.before.scores, done.after.scores))
    say(f"wrote {done.path} (train_log.csv beside it)")


demo_app = typer.Typer(help="The built-in demo: ProtoShapes data and a small ProtoPNet trained on it.")
app.add_typer(demo_app, name="demo")


@demo_app.command("export", cls=RegistryHelp)
def demo_export(
    directory: Path = typer.Argument(..., metavar="DIRECTORY", help="New or empty directory to write "
                                     "DIRECTORY/<class>/<index>.png to."),
    split: str = typer.Option("test", metavar="SPLIT", help="train or test."),
    n: Optional[int] = typer.Option(None, metavar="N", help="Only the first N images. [default: the whole split]"),
) -> None:
    """Write ProtoShapes images to disk (ImageFolder layout) to look at them or evaluate them as files."""
    from protobench.demo.shapes import export
    from protobench.files import writing

    if n is not None and n < 1:
        fail(f"--n must be a whole number >= 1, got {n}")

    def write() -> int:
        with writing(directory):
            return export(directory, split, n)

    count = run_library(write)
    say(f"wrote {count} {split} images to {directory}/<class>/")


@app.command(cls=RegistryHelp)
def adapters() -> None:
    """List the model families protobench can load (built in, installed plugins), with their papers and licenses."""
    from protobench.cli.families import describe
    from protobench.cli.tables import adapters_table

    out_console.print(adapters_table(run_library(describe)))


app.add_typer(zoo_app, name="zoo")  # the catalogue of released models (cli/zoo.py)
app.command(name="report", cls=RegistryHelp)(report_command)
app.command(name="compare", cls=RegistryHelp)(compare_command)  # cli/compare.py
app.command(name="sensitivity", cls=RegistryHelp)(sensitivity_command)  # cli/sensitivity.py  # written beside the report's other CLI code (cli/report.py)


def main() -> None:
    app()
