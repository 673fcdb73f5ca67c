"""Commands about the network: its size and cost, training, and evaluation."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import TextColumn

from latup_edge.cli.app import (
    JsonOption,
    command,
    console,
    err_console,
    print_json,
    print_table,
    progress_bar,
)
from latup_edge.cli.options import MirrorOption, ScoredLabelsOption, TilingOption
from latup_edge.errors import LatupError
from latup_edge.runtime.volume import DEFAULT_TILING


@command("model-info")
def model_info(
    size: Annotated[tuple[int, int, int], typer.Option(help="Input size D H W (each divisible by 8).")] = (
        128,
        128,
        128,
    ),
    base_filters: Annotated[int, typer.Option(help="Width of the network (paper: 32).")] = 32,
    as_json: JsonOption = False,
) -> None:
    """Parameters, multiply-accumulates and activation memory of LATUP-Net, beside the paper's figures."""
    from latup_edge.models import LATUPNet, LATUPNetConfig, check_input_shape
    from latup_edge.models.cost import PAPER_GFLOPS, PAPER_PARAMETERS, model_cost

    config = LATUPNetConfig(base_filters=base_filters)
    try:
        check_input_shape((1, config.in_channels, *size), config.in_channels)
    except ValueError as error:  # the network's own shape check: here it is the user's --size
        raise LatupError(str(error)) from None
    cost = model_cost(LATUPNet(config), (config.in_channels, *size)).to_dict()
    cost["paper"] = {"parameters": PAPER_PARAMETERS, "gflops_reported": PAPER_GFLOPS}
    if as_json:
        print_json(cost)
        return
    rows = [
        ("parameters", f"{cost['parameters']:,}", f"{PAPER_PARAMETERS:,}"),
        ("GMAC per forward pass", f"{cost['gmac']:.1f}", "-"),
        ("TFLOP per forward pass", f"{cost['tflop']:.3f}", f"{PAPER_GFLOPS / 1000:.5f} (*)"),
        ("peak activations, fp32 (MB)", f"{cost['peak_activation_mb']:,.0f}", "-"),
        ("weights, fp32 (MB)", f"{cost['weights_mb']:.1f}", "-"),
    ]
    print_table(f"LATUP-Net at {'x'.join(map(str, size))}", ("", "counted", "paper"), rows)
    stages = ", ".join(f"{k} {v:.0f}" for k, v in cost["gmac_by_stage"].items())
    console.print(f"GMAC by stage: {stages}")
    console.print(
        "(*) the paper's 15.79 GFLOPs comes from a TensorFlow profiler that does not count 3-D "
        "convolutions; the counted figure walks every convolution of the real graph."
    )


@command("train")
def train(
    data_dir: Annotated[Path, typer.Argument(help="A BraTS-format folder (real or phantom) with seg files.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder for checkpoints, e.g. models/NAME.")],
    patch: Annotated[int, typer.Option(help="Patch size (cubic, multiple of 8); the paper uses 128.")] = 128,
    epochs: Annotated[int, typer.Option(min=1)] = 20,
    steps_per_epoch: Annotated[int, typer.Option(min=1)] = 100,
    batch: Annotated[int, typer.Option(min=1)] = 1,
    lr: Annotated[float, typer.Option(help="Adam learning rate (paper: 1e-4).")] = 1e-4,
    lr_schedule: Annotated[
        str, typer.Option(help="poly (nnU-Net's decay to 0 over the run's steps) or constant (paper).")
    ] = "poly",
    l2: Annotated[float, typer.Option(help="L2 penalty on the paper's kernels (paper: 0.02).")] = 0.02,
    grad_clip: Annotated[float, typer.Option(help="Clip the gradient norm (0: off).")] = 0.0,
    tumour_fraction: Annotated[float, typer.Option(help="Share of patches centred on tumour.")] = 0.7,
    no_et_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of patches from cases without ET (0: cases drawn uniformly).")
    ] = 0.0,
    ce_weight: Annotated[
        float, typer.Option(min=0.0, help="Cross-entropy added to the paper's Dice loss (0: the paper's loss).")
    ] = 0.0,
    activation_noise: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Rounding noise on each convolution's input while training, in 8-bit steps of its range "
            "(1: about INT8's own; 0: off).",
        ),
    ] = 0.0,
    val_cases: Annotated[int, typer.Option(help="Cases held out for per-epoch validation.")] = 4,
    seed: Annotated[int, typer.Option()] = 0,
    precision: Annotated[str, typer.Option(help="auto (bf16 on CUDA and AMX CPUs), bf16 or fp32.")] = "auto",
    threads: Annotated[int, typer.Option(help="CPU threads (0: torch's default).")] = 0,
    base_filters: Annotated[int, typer.Option(help="Network width (paper: 32).")] = 32,
    resume: Annotated[bool, typer.Option(help="Continue the run in --output from its last epoch.")] = False,
    init_from: Annotated[
        Path | None, typer.Option(help="Start from this checkpoint's weights (fine-tuning), fresh optimizer.")
    ] = None,
    average_from: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Also keep average.safetensors, the mean of the weights after every step past this one "
            "(stochastic weight averaging; pair it with --lr-schedule constant).",
        ),
    ] = None,
    statistics: Annotated[
        str, typer.Option(help="InstanceNorm/SE statistics over the brain (default) or the whole input (paper).")
    ] = "brain",
    normalization: Annotated[str, typer.Option(help="zscore-brain (default) or minmax (paper).")] = "zscore-brain",
    workers: Annotated[
        int,
        typer.Option(
            min=0,
            help="Processes that draw and augment batches ahead of the network (0: none). The same batches "
            "either way; on a GPU it keeps the network fed.",
        ),
    ] = 0,
    max_minutes: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Stop after this much training time, saving the run where it stopped; --resume goes on from there.",
        ),
    ] = None,
    augment: Annotated[bool, typer.Option(help="Training-time augmentation (the flags below); off: none.")] = True,
    flip: Annotated[float, typer.Option(help="Probability of a mirror flip, per axis.")] = 0.5,
    rotate_deg: Annotated[float, typer.Option(help="Largest rotation per axis, degrees.")] = 10.0,
    scale: Annotated[float, typer.Option(help="Isotropic scaling in [1-s, 1+s].")] = 0.1,
    spatial_p: Annotated[float, typer.Option(help="Probability of rotation + scaling per patch.")] = 0.3,
    gamma: Annotated[float, typer.Option(help="Per-modality gamma exp(U(-g, g)).")] = 0.3,
    contrast: Annotated[float, typer.Option(help="Per-modality contrast factor in [1-c, 1+c].")] = 0.25,
    brightness: Annotated[float, typer.Option(help="Per-modality shift, in brain standard deviations.")] = 0.2,
    noise: Annotated[float, typer.Option(help="Largest Gaussian noise std, in brain standard deviations.")] = 0.1,
    blur_sigma: Annotated[float, typer.Option(help="Largest Gaussian blur sigma, voxels.")] = 1.0,
    intensity_p: Annotated[float, typer.Option(help="Probability of each intensity augmentation.")] = 0.5,
    thick_p: Annotated[
        float, typer.Option(help="Probability, per modality, of a thick-slice acquisition (0: off, the default).")
    ] = 0.0,
    thick_max: Annotated[float, typer.Option(help="Thickest slices of that acquisition, voxels (from 2).")] = 6,
) -> None:
    """Train LATUP-Net with the paper's loss; keeps the last and the best checkpoint by validation Dice."""
    from latup_edge.data.preprocess import NORMALIZATIONS, SIZE_MULTIPLE
    from latup_edge.train.augment import Augmentation
    from latup_edge.train.loop import TrainingSettings
    from latup_edge.train.loop import train as run_training

    if statistics not in ("brain", "volume"):
        raise typer.BadParameter("must be brain or volume", param_hint="--statistics")
    if normalization not in NORMALIZATIONS:
        raise typer.BadParameter(f"must be one of {', '.join(NORMALIZATIONS)}", param_hint="--normalization")
    try:
        augmentation = (
            Augmentation(
                flip=flip,
                rotate_deg=rotate_deg,
                scale=scale,
                spatial_p=spatial_p,
                gamma=gamma,
                contrast=contrast,
                brightness=brightness,
                noise=noise,
                blur_sigma=blur_sigma,
                intensity_p=intensity_p,
                thick_p=thick_p,
                thick_max=thick_max,
            )
            if augment
            else Augmentation.off()
        )
    except ValueError as error:  # Augmentation checks its own fields: here they are the user's flags
        raise LatupError(str(error)) from None

    if patch % SIZE_MULTIPLE:
        raise typer.BadParameter(f"must be a multiple of {SIZE_MULTIPLE}, got {patch}", param_hint="--patch")
    if lr_schedule not in ("poly", "constant"):
        raise typer.BadParameter("must be poly or constant", param_hint="--lr-schedule")
    if precision not in ("auto", "bf16", "fp32"):
        raise typer.BadParameter("must be auto, bf16 or fp32", param_hint="--precision")
    settings = TrainingSettings(
        patch=patch,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        batch=batch,
        lr=lr,
        lr_schedule=lr_schedule,
        l2=l2,
        grad_clip=grad_clip or None,
        tumour_fraction=tumour_fraction,
        no_et_fraction=no_et_fraction,
        ce_weight=ce_weight,
        activation_noise=activation_noise,
        val_cases=val_cases,
        seed=seed,
        precision=precision,
        threads=threads or None,
        base_filters=base_filters,
        init_from=str(init_from) if init_from else None,
        average_from=average_from,
        statistics=statistics,
        normalization=normalization,
        augmentation=augmentation,
    )
    with progress_bar(TextColumn("{task.fields[status]}")) as bar:
        task = bar.add_task("training", total=epochs * steps_per_epoch, status="loading cases")

        def report(event: dict) -> None:
            if event["event"] == "loaded":
                err_console.print(
                    f"{event['train']} training / {event['val']} validation cases on {event['device']}"
                    f"{' with bf16 autocast' if event['bf16'] else ''}"
                )
            elif event["event"] == "step":
                bar.update(task, completed=event["step"], status=f"loss {event['loss']:.3f}")
                if not err_console.is_terminal and event["step"] % 10 == 0:  # a log file gets plain lines
                    err_console.print(f"step {event['step']}/{event['total']} loss {event['loss']:.3f}")
            elif event["event"] == "stopped":
                err_console.print(
                    f"stopped at step {event['step']}/{event['total']} after {event['minutes']:g} min; "
                    "--resume goes on from there"
                )
            else:
                dice = " ".join(f"{k} {v:.3f}" for k, v in event["val_dice"].items())
                err_console.print(
                    f"epoch {event['epoch']}/{event['epochs']}: loss {event['loss']:.3f}, val Dice {dice}"
                    f"{'  (best)' if event['best'] else ''}"
                )

        state = run_training(
            data_dir, output, settings, resume=resume, report=report, workers=workers, max_minutes=max_minutes
        )
    if state.step < epochs * steps_per_epoch:
        console.print(f"Stopped: {state.step} steps in {state.seconds / 60:.1f} min -> {output / 'last.safetensors'}")
        return
    console.print(
        f"Done: {state.step} steps in {state.seconds / 60:.1f} min; best epoch {state.best_epoch} "
        f"-> {output / 'best.safetensors'}"
    )
    if state.averaged:
        console.print(f"Averaged over the last {state.averaged} steps -> {output / 'average.safetensors'}")


@command("blend")
def blend(
    checkpoints: Annotated[
        list[Path], typer.Argument(help="Checkpoints of one network, e.g. a model and its fine-tunes.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for blend.safetensors and its JSON.")],
    coefficients: Annotated[
        str, typer.Option(help="One weight per checkpoint, comma-separated, >= 0, summing to 1 (default: equal).")
    ] = "",
    as_json: JsonOption = False,
) -> None:
    """Average checkpoints in weight space (WiSE-FT, model soups): sum of coefficient x weights."""
    from latup_edge.models.checkpoint import blend_checkpoints, save_checkpoint

    try:
        weights = [float(c) for c in coefficients.split(",")] if coefficients else None
    except ValueError:
        raise typer.BadParameter(f"must be numbers separated by commas, got {coefficients!r}") from None
    model, provenance = blend_checkpoints(checkpoints, weights)
    path = save_checkpoint(model, output / "blend", provenance)
    result = {"output": str(path), **provenance}
    if as_json:
        print_json(result)
        return
    rows = [(source["path"], f"{source['coefficient']:.4f}", source["sha256"][:16]) for source in provenance["blend"]]
    print_table(f"Blend written to {path}", ("checkpoint", "coefficient", "sha256"), rows)


@command("evaluate")
def evaluate(
    data_dirs: Annotated[
        list[Path],
        typer.Argument(help="BraTS-format folders with seg files; each is scored and summarised on its own."),
    ],
    weights: Annotated[Path | None, typer.Option(help="Checkpoint (default: the shipped demo weights).")] = None,
    precision: Annotated[str, typer.Option(help="fp32 or bf16 (autocast in PyTorch, the hint in OpenVINO).")] = "fp32",
    backend: Annotated[
        str, typer.Option(help="torch (the reference) or openvino (the checkpoint exported to ONNX; ~2-8x faster).")
    ] = "torch",
    postprocess: ScoredLabelsOption = True,
    tiling: TilingOption = DEFAULT_TILING,
    mirror: MirrorOption = "none",
    as_json: JsonOption = False,
) -> None:
    """Dice and HD95 per case and region (WT, TC, ET) over the full volume, with a summary per folder.

    Pass the standard held-out set and the independent set side by side, e.g.
    ``latup-edge evaluate heldout independent``.
    """
    from latup_edge.data.cases import channel_order_warnings, discover_cases
    from latup_edge.models.checkpoint import load_model
    from latup_edge.runtime.postprocess import DEFAULT_POSTPROCESSING, Postprocessing
    from latup_edge.runtime.volume import mirror_axes, mirror_name, mirrored, torch_forward

    if precision not in ("fp32", "bf16"):
        raise typer.BadParameter("must be fp32 or bf16", param_hint="--precision")
    if backend not in ("torch", "openvino"):
        raise typer.BadParameter("must be torch or openvino", param_hint="--backend")
    axes = mirror_axes(mirror)  # an unknown mirroring is refused before any work
    folders = {str(folder): discover_cases(folder) for folder in data_dirs}
    for warning in channel_order_warnings([case for cases in folders.values() for case in cases]):
        err_console.print(f"[bold yellow]Warning:[/] {warning}", highlight=False)
    model = load_model(weights)
    with tempfile.TemporaryDirectory(prefix="latup-evaluate-") as work:
        if backend == "openvino":
            from latup_edge.deploy.export import export_onnx
            from latup_edge.runtime.openvino_backend import OpenVINOModel

            forward = OpenVINOModel(export_onnx(model, Path(work) / "model.onnx"), precision)
        else:
            forward = torch_forward(model, bf16=precision == "bf16")
        rules = DEFAULT_POSTPROCESSING if postprocess else Postprocessing.none()
        sets = _evaluate_sets(folders, mirrored(forward, axes), model.config.normalization, rules, tiling)
    result = {
        "weights": str(weights or "shipped demo weights"),
        "backend": backend,
        "precision": precision,
        "postprocessing": rules.to_dict(),
        "tiling": tiling,
        "mirror": mirror_name(axes) or None,
        "statistics": model.config.statistics,
        "normalization": model.config.normalization,
        "sets": sets,
    }
    if as_json:
        print_json(result)
    else:
        for name, one in sets.items():
            print_evaluation(one, f"{name}: {result['weights']} ({backend} {precision}, {tiling} tiling, full volume)")
        if len(sets) > 1:
            print_set_means(sets)
    if any(one["failures"] for one in sets.values()):
        raise typer.Exit(1)


def _evaluate_sets(folders: dict, forward, normalization: str, postprocessing, tiling: str) -> dict[str, dict]:
    from latup_edge.runtime.evaluation import evaluate_cases

    sets = {}
    with progress_bar() as bar:
        task = bar.add_task("evaluating", total=sum(len(cases) for cases in folders.values()))
        for name, cases in folders.items():
            sets[name] = evaluate_cases(
                cases, forward, progress=lambda case: bar.advance(task), normalization=normalization,
                postprocessing=postprocessing, tiling=tiling,
            )  # fmt: skip
    return sets


def print_set_means(sets: dict[str, dict]) -> None:
    """One row per folder: mean Dice and HD95 per region, to compare data sets at a glance."""
    regions = ("WT", "TC", "ET")
    rows = [
        (
            name,
            str(one["summary"]["WT"]["dice"]["n"]),
            *(f"{one['summary'][r]['dice']['mean']:.4f}" for r in regions),
            *(f"{one['summary'][r]['hd95']['mean']:.2f}" for r in regions),
        )
        for name, one in sets.items()
    ]
    columns = ("data", "cases", "Dice WT", "Dice TC", "Dice ET", "HD95 WT", "HD95 TC", "HD95 ET")
    print_table("Mean per data set", columns, rows, caption="HD95 in mm")


def print_evaluation(result: dict, title: str) -> None:
    regions = ("WT", "TC", "ET")
    rows = [
        (case, *(f"{m[r]['dice']:.4f}" for r in regions), *(f"{m[r]['hd95']:.2f}" for r in regions))
        for case, m in result["cases"].items()
    ]
    summary = result["summary"]
    for stat in ("mean", "std", "median", "min", "max"):
        rows.append(
            (
                f"[bold]{stat}[/]",
                *(f"{summary[r]['dice'][stat]:.4f}" for r in regions),
                *(f"{summary[r]['hd95'][stat]:.2f}" for r in regions),
            )
        )
    columns = ("case", "Dice WT", "Dice TC", "Dice ET", "HD95 WT", "HD95 TC", "HD95 ET")
    print_table(title, columns, rows, caption="HD95 in mm")
    for case, message in result["failures"].items():
        err_console.print(f"[red]failed[/] {case}: {message}")
