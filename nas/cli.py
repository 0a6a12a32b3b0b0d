"""The ``nas`` command: inspect specs and spaces, scale architectures, benchmark and proxy-train them.

Every command that takes a spec takes a preset name (``efficientnetv2-s``) or a spec file path; every command
that takes a space takes a shipped space name (``tiny``) or a space file path. Errors print one line naming the
problem and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import random
import re
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Sequence

from nas.scaling import IMAGE_SIZE_DIVISOR, V2_MAX_IMAGE_SIZE, compound_scale, scale
from search_spaces import presets
from search_spaces.files import LockHeldError, check_output
from search_spaces.io import dump_spec, spec_to_yaml, timm_arch_def
from search_spaces.spec import ArchSpec, SpecError

if TYPE_CHECKING:
    from nas.campaign import CampaignConfig

EXIT_FAILED = 1  # a run that started and failed
EXIT_USAGE = 2  # refused input: a one-line error, nothing done
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM)
# The reader of the output went away (128 + SIGPIPE): what a shell reports for `git log | head`'s git, so that
# `set -o pipefail` treats nas as it treats other tools, and a script can tell a cut-short output from a whole one.
EXIT_BROKEN_PIPE = 141
MAX_SAMPLES = 100_000
IMAGENET_CLASSES = 1000  # the classifier --num-classes counts by default: the papers' parameter counts are ImageNet's


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: left-aligned text, right-aligned numbers."""
    cells = [[str(value) for value in row] for row in rows]
    widths = [max(len(str(header)), *(len(row[i]) for row in cells)) for i, header in enumerate(headers)]
    numeric = [
        any(row[i] for row in cells) and all(_NUMBER.fullmatch(row[i]) for row in cells if row[i])
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            value.rjust(width) if is_numeric else value.ljust(width)
            for value, width, is_numeric in zip(values, widths, numeric)
        ).rstrip()

    return "\n".join([line([str(header) for header in headers]), *(line(row) for row in cells)])


_NUMBER = re.compile(r"[-+]?[\d,]*\.?\d+(e[-+]?\d+)?")


def _spec_report(spec: ArchSpec, num_classes: int) -> dict[str, Any]:
    from nas.complexity import count_spec  # counted from the spec: nas show and nas scale import no torch

    complexity = count_spec(spec, num_classes=num_classes)
    return {
        "name": spec.name,
        "block_strings": list(spec.block_strings),
        "num_classes": num_classes,
        "in_channels": complexity.in_channels,
        "parameters": complexity.parameters,
        "stage_parameters": list(complexity.stage_parameters),
        "macs": complexity.macs,
        "image_size": complexity.image_size,
        "spec": spec.to_dict(),
    }


def _stage_table(spec: ArchSpec, stage_parameters: Sequence[int]) -> str:
    from nas.complexity import STAGE_TABLE_HEADERS, stage_rows  # the rows the report's stage tables show too

    return format_table(STAGE_TABLE_HEADERS, stage_rows(spec, stage_parameters))


def _classes_note(num_classes: int) -> str:
    """Which classifier a parameter count is for: a search prints its candidates' counts for the data's classes,
    ``nas show`` for ``--num-classes`` (ImageNet's 1000 by default, as the papers' counts are)."""
    if num_classes == IMAGENET_CLASSES:
        return f"for {num_classes} classes (ImageNet's, the default; --num-classes N counts for your data's N)"
    return f"for {num_classes} classes (--num-classes {num_classes})"


def _print_spec(spec: ArchSpec, num_classes: int, sizes_note: str | None = None) -> None:
    """A spec as ``nas show`` prints it; ``sizes_note`` (from :func:`_image_sizes_note`) says why it trains at
    another image size than it evaluates at, under the line that gives both."""
    report = _spec_report(spec, num_classes)
    print(
        f"{spec.name or '(unnamed spec)'}: train {spec.train_image_size}px, eval {spec.eval_image_size}px, "
        f"dropout {spec.dropout:g}, drop path {spec.drop_path_rate:g}, {spec.activation}"
    )
    if sizes_note is not None:
        print(f"  {sizes_note}")
    print(_stage_table(spec, report["stage_parameters"]))
    print(f"parameters: {report['parameters']:,} {_classes_note(num_classes)}")
    print(f"FLOPs: {_format_macs(report['macs'])} multiply-adds at {report['image_size']}x{report['image_size']}")


def cmd_show(args: argparse.Namespace) -> int:
    spec = presets.resolve_spec(args.spec)
    if args.json:
        print(json.dumps(_spec_report(spec, args.num_classes), indent=2))
    else:
        _print_spec(spec, args.num_classes)
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    output = None if args.output is None else _output_path("-o", args.output)
    spec = presets.resolve_spec(args.spec)
    if args.family is not None or args.search_coefficients:
        return _scale_family(spec, args, output)
    if args.phi is not None:
        if args.width is not None or args.depth is not None:
            raise SpecError("give either --phi or --width/--depth, not both")
        scaled = compound_scale(
            spec, args.phi, alpha=args.alpha, beta=args.beta, gamma=args.gamma, v2_rules=args.v2_rules, name=args.name
        )
    elif args.width is not None or args.depth is not None:
        scaled = scale(
            spec,
            1.0 if args.width is None else args.width,
            1.0 if args.depth is None else args.depth,
            image_size=args.image_size,
            round_limit=args.round_limit,
            depth_rule="later_stages" if args.v2_rules else "uniform",
            max_image_size=V2_MAX_IMAGE_SIZE if args.v2_rules else None,
            name=args.name,
        )
    else:
        raise SpecError("give --phi N, or --width W and/or --depth D")
    note = _image_sizes_note(spec, scaled, args)
    if _write_spec(scaled, output, force=args.force):
        _print_spec(scaled, args.num_classes, note)
        print(f"wrote {output}")
    elif note is not None:
        print(f"nas scale: train {scaled.train_image_size}px, eval {scaled.eval_image_size}px: {note}",
              file=sys.stderr)  # stdout holds the YAML alone
    return 0


def _image_sizes_note(spec: ArchSpec, scaled: ArchSpec, args: argparse.Namespace) -> str | None:
    """Why ``scaled`` trains at another image size than it evaluates at, in a few words (None when they agree),
    following :func:`nas.scaling.scale`'s rule: with ``--image-size`` the eval size is the one given and the train
    size keeps the spec's train/eval ratio, rounded to a multiple of 8; with ``--phi`` both of the spec's sizes
    grow by gamma^phi and are rounded to multiples of 8; ``--v2-rules`` caps both at 480px."""
    train, evaluation = scaled.train_image_size, scaled.eval_image_size
    if train == evaluation:
        return None
    old_train, old_eval = spec.train_image_size, spec.eval_image_size
    if args.phi is not None:
        why = (f"train {train}px and eval {evaluation}px are the spec's {old_train} and {old_eval}px times gamma^phi "
               f"= {args.gamma:g}^{args.phi:g} = {args.gamma ** args.phi:.4g}, each rounded to a multiple of "
               f"{IMAGE_SIZE_DIVISOR}")
    elif args.image_size is None:
        why = f"the spec's own train and eval sizes, {old_train} and {old_eval}px"
    else:
        why = (f"eval {args.image_size}px as given (--image-size); train {train}px = {args.image_size} x "
               f"{old_train}/{old_eval} (the spec's train/eval ratio) rounded to a multiple of {IMAGE_SIZE_DIVISOR}")
    if args.v2_rules and V2_MAX_IMAGE_SIZE in (train, evaluation):
        why += f"; then capped at {V2_MAX_IMAGE_SIZE}px (--v2-rules)"
    if old_train < old_eval:
        why += "; like EfficientNetV2, the spec trains on smaller images than it evaluates on (cheaper training)"
    return why


def _scale_family(spec: ArchSpec, args: argparse.Namespace, directory: Path | None) -> int:
    """``--search-coefficients`` and/or ``--family N``: coefficients first (when asked), then one spec per phi.

    Files are named after the specs (``NAME-phiK.yaml``); a name that would put one outside ``directory``
    (``../x``, ``/etc/x``) is refused before anything is trained or written.
    """
    from nas.complexity import count_spec
    from nas.scaling import compound_family, family_paths, write_family

    if directory is None:
        raise ValueError("--family and --search-coefficients write files: give -o DIRECTORY")
    if args.width is not None or args.depth is not None or args.phi is not None:
        raise ValueError("--family and --search-coefficients take --alpha/--beta/--gamma, not --width/--depth/--phi")
    if args.family is not None and args.family < 1:
        raise ValueError(f"--family must be >= 1, got {args.family}")
    phis = range(1, (args.family or 1) + 1)
    paths = family_paths(spec, directory, phis, force=args.force)  # checked before any training
    alpha, beta, gamma = args.alpha, args.beta, args.gamma
    if args.search_coefficients:
        alpha, beta, gamma = _search_coefficients(spec, args, directory)
    family = compound_family(spec, phis, alpha=alpha, beta=beta, gamma=gamma, v2_rules=args.v2_rules)
    write_family(family, paths)
    rows = []
    for phi, member in enumerate(family, start=1):
        complexity = count_spec(member, num_classes=args.num_classes)
        rows.append([phi, member.name, f"{complexity.parameters:,}", _format_macs(complexity.macs),
                     member.train_image_size, member.eval_image_size, member.num_blocks, member.head_channels])
    print(f"alpha {alpha:g}, beta {beta:g}, gamma {gamma:g} (alpha * beta^2 * gamma^2 = "
          f"{alpha * beta**2 * gamma**2:.3f}){', EfficientNetV2 rules' if args.v2_rules else ''}")
    print(format_table(["phi", "spec", "params", "FLOPs", "train px", "eval px", "blocks", "head"], rows))
    print(f"params {_classes_note(args.num_classes)}; FLOPs in multiply-adds at the eval image size")
    print(f"wrote {len(family)} spec(s) to {directory}")
    return 0


def _search_coefficients(spec: ArchSpec, args: argparse.Namespace, directory: Path) -> tuple[float, float, float]:
    from nas.coefficient_search import save_coefficients, search_coefficients
    from nas.data import load_data
    from nas.measure import resolve_device
    from nas.recipe import TrainConfig
    from nas.scaling import coefficient_grid

    grid = coefficient_grid(step=args.grid_step)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, device=args.device)
    resolve_device(config.device)  # a device this machine lacks is refused before the data loads
    data = load_data(args.data, seed=args.seed)
    print(f"coefficient search at phi = 1: {len(grid)} grid points, {args.epochs} epoch(s) each on {data.name}",
          file=sys.stderr)

    def show(trial: Any) -> None:
        c, result = trial.coefficients, trial.result
        outcome = f"accuracy {result.accuracy:.4f}" if result.ok else f"failed: {result.failure_reason}"
        print(f"  alpha {c.depth:.2f} beta {c.width:.2f} gamma {c.resolution:.2f}  {trial.image_size}px  {outcome}",
              file=sys.stderr, flush=True)

    best, trials = search_coefficients(spec, data, config, grid, on_trial=show)
    if best is None:
        raise ValueError("every grid point failed; see the reasons above")
    rows = [
        [f"{t.coefficients.depth:.2f}", f"{t.coefficients.width:.2f}", f"{t.coefficients.resolution:.2f}",
         f"{t.coefficients.depth * t.coefficients.width**2 * t.coefficients.resolution**2:.3f}",
         f"{t.result.parameters or 0:,}", t.image_size,
         "-" if t.result.accuracy is None else f"{t.result.accuracy:.4f}",
         "-" if t.result.step_time_s is None else f"{t.result.step_time_s * 1e3:.2f}",
         "best" if t is best else ""]
        for t in trials
    ]
    print(format_table(["alpha", "beta", "gamma", "a*b^2*g^2", "params", "px", "accuracy", "S (ms)", ""], rows))
    save_coefficients(directory, best, data, config)
    return best.coefficients.depth, best.coefficients.width, best.coefficients.resolution


def _write_spec(spec: ArchSpec, output: Path | None, *, force: bool) -> bool:
    """Writes ``spec`` to ``output`` (refusing to overwrite unless ``force``), or prints its YAML when None.

    Returns whether a file was written. ``output`` comes from :func:`_output_path`.
    """
    if output is None:
        sys.stdout.write(spec_to_yaml(spec))
        return False
    if output.exists() and not force:
        raise FileExistsError(f"{output} exists; pass --force to overwrite it")
    dump_spec(spec, output)
    return True


def _output_path(flag: str, value: str | Path, *, directory: bool | None = None) -> Path:
    """``value`` as a path to write, anywhere the user can write (a path the user types is theirs; DESIGN.md).

    Every file or directory a command writes (``-o``, ``--export``, ``--save``, ``--checkpoint``,
    ``--export-onnx``) goes through here before any work starts, so that a parent that is a file is refused
    at once; ``--force`` for an existing file is checked by the command. Safety from planted links comes from
    :func:`search_spaces.files.write_file`, not from confinement.
    """
    return check_output(value, flag=flag, force=True, directory=directory)


def cmd_space(args: argparse.Namespace) -> int:
    if not 0 <= args.sample <= MAX_SAMPLES:
        raise ValueError(f"--sample must be in [0, {MAX_SAMPLES}], got {args.sample}")
    space = presets.get_space(args.space)
    rng = random.Random(args.seed)
    samples = [space.sample(rng) for _ in range(args.sample)]
    if args.json:
        print(json.dumps({
            "name": space.name,
            "size": space.size,
            "fingerprint": space.fingerprint(),
            "decisions": {decision.name: list(decision.choices) for decision in space.decisions},
            "baseline": list(space.baseline.block_strings),
            "samples": [list(sample.block_strings) for sample in samples],
        }, indent=2))
        return 0
    baseline = space.baseline
    print(f"space {space.name}: backbone {space.backbone.name or '(inline)'}, "
          f"image size {baseline.train_image_size}px, {space.size:,} architectures ({space.size:.3g})")
    rows = [
        [index, "/".join(choices.op), ",".join(map(str, _compact(choices.num_layers))),
         ",".join(map(str, choices.kernel_size)), ",".join(map(str, choices.expand_ratio)),
         stage.out_channels, stage.stride, stage.block_string]
        for index, (choices, stage) in enumerate(zip(space.stages, baseline.stages), start=1)
    ]
    print(format_table(["stage", "op", "layers", "kernel", "expand", "channels", "stride", "baseline"], rows))
    print("squeeze-excitation: " + ", ".join(f"{op} {ratio:g}" for op, ratio in space.se_ratio.items()))
    for sample in samples:
        print(" ".join(sample.block_strings))
    return 0


def _compact(values: Sequence[int]) -> list[str]:
    """``[1, 2, 3, 4]`` as ``['1-4']`` when the values are a contiguous range."""
    if len(values) > 1 and list(values) == list(range(values[0], values[-1] + 1)):
        return [f"{values[0]}-{values[-1]}"]
    return [str(value) for value in values]


def _format_memory(count: int, device: str) -> str:
    """Peak memory; on CPU it is the process's peak resident set, which says so."""
    return f"{count / 2**20:,.0f} MiB" + (" (process peak RSS)" if device.startswith("cpu") else "")


def _format_macs(macs: int) -> str:
    return f"{macs / 1e9:.3f} G" if macs >= 1e9 else f"{macs / 1e6:.1f} M"


def cmd_bench(args: argparse.Namespace) -> int:
    """Times a spec's training step, the one a default ``nas train`` or search trains with (its optimizer, schedule
    and label smoothing); a batch the device cannot hold is a one-line error with advice (exit 2)."""
    from nas.measure import benchmark_spec, is_out_of_memory

    spec = presets.resolve_spec(args.spec)
    try:
        result = benchmark_spec(
            spec,
            device=args.device,
            batch_size=args.batch_size,
            image_size=args.image_size,
            in_channels=args.in_channels,
            num_classes=args.num_classes,
            amp=args.amp,
            channels_last=args.channels_last,
            compile=args.compile,
            warmup=args.warmup,
            repeats=args.repeats,
            inference=args.inference,
            threads=args.threads,
        )
    except (MemoryError, RuntimeError) as error:  # CUDA's OutOfMemoryError and the CPU allocator's are RuntimeErrors
        if not is_out_of_memory(error):
            raise
        image_size = spec.train_image_size if args.image_size is None else args.image_size
        raise ValueError(
            f"out of memory timing {spec.name or args.spec} at batch size {args.batch_size} and image size "
            f"{image_size}px on device {args.device}: use a smaller --batch-size or --image-size"
        ) from None
    relative = None if args.relative_to is None else _bench_relative(spec, result, args)
    if args.json:
        print(json.dumps(result.to_dict() | ({} if relative is None else {"relative": relative}), indent=2))
        return 0
    step = result.step
    rows = [
        ["spec", result.name or args.spec],
        ["device", result.device],
        ["batch x image", f"{result.batch_size} x {result.image_size}px, {result.in_channels} channel(s)"],
        ["precision", f"amp {result.amp}, {'channels_last' if result.channels_last else 'NCHW'}"
                      + (", torch.compile" if result.compile else "")],
        ["optimizer", f"{result.optimizer} (nas train's default recipe)"],
        ["parameters", f"{result.parameters:,}"],
        ["FLOPs", f"{_format_macs(result.macs)} multiply-adds per image"],
        ["train step (median)", f"{step.median_s * 1e3:.2f} ms"],
        ["train step (IQR)", f"{step.iqr_s * 1e3:.2f} ms ({step.relative_spread:.1%})"],
        ["timing", f"{step.warmup_steps} warm-up steps, {len(step.window_s)} windows x {step.steps_per_window} steps"],
        ["train images/s", f"{result.images_per_second:,.1f}"],
        ["peak memory", _format_memory(result.peak_memory_bytes, result.device)],
    ]
    if result.inference is not None:
        rows += [
            ["forward (median)", f"{result.inference.median_s * 1e3:.2f} ms"],
            ["forward images/s", f"{result.batch_size / result.inference.median_s:,.1f}"],
        ]
    if relative is not None:
        source = "the step-time cache" if relative["cached"] else f"{relative['pairs']} interleaved pairs of windows"
        rows += [
            ["relative to", relative["reference"]],
            ["S/S0", f"{relative['step_time_ratio']:.4f} (from {source})"],
            ["S/S0 spread (IQR)", f"{relative['step_time_ratio_iqr']:.4f}"],
        ]
    print(format_table(["measure", "value"], rows))
    return 0


def _bench_relative(spec: Any, result: Any, args: argparse.Namespace) -> dict[str, Any]:
    """S/S0 of ``spec`` against ``--relative-to`` at the settings just benchmarked, paired as a campaign times it,
    inside the device's timing lock; read from and added to ``--storage``'s step-time cache when given."""
    from nas.measure import resolve_device
    from nas.recipe import TimingConfig
    from nas.step_cache import StepTimeCache, cache_key
    from nas.storage import make_storage, storage_errors
    from nas.timing import DeviceLock, time_relative

    reference = presets.resolve_spec(args.relative_to)
    settings = TimingConfig(image_size=result.image_size, batch_size=result.batch_size, amp=args.amp,
                            channels_last=args.channels_last, compile=args.compile, warmup=args.warmup,
                            pairs=args.repeats)
    key = cache_key(spec, reference, result.device, settings.to_dict())
    cache = None
    if args.storage is not None:
        with storage_errors(args.storage, "open"):
            cache = StepTimeCache(make_storage(args.storage))
            entry = cache.get(key)
        if entry is not None:
            return {"reference": reference.name or args.relative_to, "cached": True, "pairs": None, **entry}
    device = resolve_device(args.device)
    with DeviceLock(device):
        paired = time_relative(spec, reference, settings, device=device, num_classes=args.num_classes,
                               in_channels=result.in_channels)
    measured = {"step_time_ratio": paired.ratio, "step_time_ratio_iqr": paired.ratio_iqr,
                "step_time_s": paired.step_time_s, "reference_step_time_s": paired.reference_step_time_s}
    if cache is not None:
        with storage_errors(args.storage, "write to"):
            cache.put(key, measured)
    return {"reference": reference.name or args.relative_to, "cached": False, "pairs": paired.pairs, **measured}

def cmd_train(args: argparse.Namespace) -> int:
    """Proxy-trains a spec. Everything that can be refused is refused (exit 2) before training starts: a device
    this machine does not have, the checkpoint (one that exists without --resume or --force; one to resume that is
    missing, not one, of another spec, recipe or data), a checkpoint another ``nas train`` holds, data the spec
    cannot train on; exit 1 is for a run that started and failed. Ctrl-C ends with one line: what was saved and
    the command that continues the run (exit 130)."""
    import contextlib

    from nas.data import load_data
    from nas.measure import resolve_device
    from nas.recipe import TrainConfig
    from nas.train import (
        check_checkpoint_data,
        check_data,
        evaluation_image_size,
        read_checkpoint,
        save_run,
        train_and_evaluate,
    )
    from search_spaces.files import FileLock

    spec = presets.resolve_spec(args.spec)
    progressive = None
    if args.progressive:
        from nas.progressive import ProgressiveConfig

        progressive = ProgressiveConfig(
            num_stages=args.stages,
            image_size=tuple(args.image_size_range),
            dropout=tuple(args.dropout_range),
            randaugment_magnitude=tuple(args.randaugment_range),
            mixup_alpha=tuple(args.mixup_range),
        )
    config = TrainConfig(progressive=progressive, **{name: getattr(args, name) for name in _RECIPE_FLAGS})
    resolve_device(config.device)  # a device this machine lacks is refused before the data loads
    if args.resume and args.checkpoint is None:
        raise ValueError("--resume needs --checkpoint PATH (the file earlier runs of this command wrote)")
    if args.force and args.checkpoint is None:
        raise ValueError("--force starts an existing --checkpoint over: give --checkpoint PATH")
    if args.force and args.resume:
        raise ValueError("--resume continues the --checkpoint's run and --force starts it over: give one of them")
    save = _output_path("--save", args.save, directory=True) if args.save else None
    checkpoint = _output_path("--checkpoint", args.checkpoint, directory=False) if args.checkpoint else None
    onnx_output = _output_path("--export-onnx", args.export_onnx, directory=False) if args.export_onnx else None
    if onnx_output is not None and save is None:
        raise ValueError("--export-onnx exports the saved weights: give --save DIR as well")
    saved_epochs: list[int] = []  # the epochs this run wrote to the checkpoint, for the line after Ctrl-C

    def on_epoch(stats: Any) -> None:
        saved_epochs.append(stats.epoch)
        if not args.json:
            _print_epoch(stats)

    try:
        with contextlib.ExitStack() as held:
            # One run owns a checkpoint: a second is refused, naming this one's host and pid. (A --resume whose
            # directory is missing has no checkpoint to resume, which read_checkpoint says without creating it.)
            if checkpoint is not None and (not args.resume or checkpoint.parent.is_dir()):
                checkpoint.parent.mkdir(parents=True, exist_ok=True)
                held.enter_context(FileLock(checkpoint, what="checkpoint"))
            if checkpoint is not None and checkpoint.exists() and not (args.resume or args.force):
                raise FileExistsError(f"--checkpoint {checkpoint} exists: add --resume to continue its run, or "
                                      "--force to start over (overwriting it)")
            # Read before the data loads (tensors memory-mapped): a missing, foreign or mismatched checkpoint costs
            # nothing.
            saved = read_checkpoint(checkpoint, spec, config) if args.resume else None
            data = load_data(args.data, image_size=args.image_size, val_fraction=args.val_fraction, seed=args.seed)
            check_data(spec, config, data)
            if saved is not None:
                check_checkpoint_data(saved, checkpoint, spec, data)
            if save is not None:
                save.mkdir(parents=True, exist_ok=True)
            if not args.json:
                print(f"training {spec.name or args.spec} on {data.name}: {len(data.train_labels):,} train / "
                      f"{len(data.val_labels):,} hold-out images, {data.in_channels} channel(s), {data.num_classes} "
                      "classes, " + (f"progressive {progressive.image_size[0]}->{progressive.image_size[1]}px in "
                                     f"{progressive.num_stages} stages" if progressive
                                     else f"{config.image_size or data.image_size}px"), file=sys.stderr)
                print(_recipe_line(config, data), file=sys.stderr)
            result = train_and_evaluate(
                spec, data, config, on_epoch=on_epoch, checkpoint=checkpoint, resume=args.resume,
                weights=save / "weights.pt" if save is not None else None,
            )
            if save is not None and result.ok:
                trained = save_run(save, spec, data, result)  # spec.yaml and result.json beside weights.pt
                if not args.json:
                    print(f"saved the trained weights, the spec and the result to {save}", file=sys.stderr)
                if onnx_output is not None:
                    _export_onnx(trained, data.num_classes, data.in_channels, save / "weights.pt", onnx_output,
                                 evaluation_image_size(config, data.image_size))
    except KeyboardInterrupt:
        print(_interrupted_line(args, checkpoint, saved_epochs[-1] if saved_epochs else None), file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print_result(result)
    return 0 if result.ok else EXIT_FAILED


def _recipe_line(config: Any, data: Any) -> str:
    """The automatic settings as this run resolves them for its data (README, Proxy training)."""
    from nas.recipe import resolve_recipe

    recipe = resolve_recipe(config, train_images=len(data.train_labels), flips=data.flips)
    steps = len(data.train_labels) // recipe.batch_size
    chosen = [name for name, given in (("batch", config.batch_size), ("lr", config.learning_rate),
                                       ("warm-up", config.warmup_steps)) if given is None]
    augment = recipe.augment + (f" (auto: mirror images {'keep' if data.flips else 'change'} this data's labels)"
                                if config.augment == "auto" else "")
    return (f"recipe: batch {recipe.batch_size} ({steps} steps per epoch), {recipe.optimizer} lr "
            f"{recipe.learning_rate:g}, warm-up {recipe.warmup_steps} steps, augment {augment}"
            + (f"; automatic: {', '.join(chosen)}" if chosen else ""))


def _interrupted_line(args: argparse.Namespace, checkpoint: Path | None, last_saved: int | None) -> str:
    """The one line ``nas train`` ends with after Ctrl-C: what the checkpoint holds and the exact command, as the
    user typed it, that continues the run (``--resume`` added, ``--force`` dropped)."""
    if checkpoint is None:
        return ("nas train: interrupted; without --checkpoint there is nothing to resume: add --checkpoint PATH to "
                "save every epoch, and --resume to continue from it")
    if last_saved is None and not args.resume:
        return f"nas train: interrupted before an epoch was saved to {checkpoint}; run the same command to start again"
    saved = (f"{checkpoint} is as before this run" if last_saved is None
             else f"epoch {last_saved}/{args.epochs} is saved in {checkpoint}")
    # --force (or an abbreviation argparse took for it: no other flag of nas train starts with --f) starts over.
    command = [token for token in args.command_line if not (token.startswith("--f") and "--force".startswith(token))]
    if not args.resume:
        command.append("--resume")
    return f"nas train: interrupted; {saved}; resume with: nas {shlex.join(command)}"


# TrainConfig fields that `nas train` takes as flags of the same name (the flag's dest; --lr sets learning_rate).
_RECIPE_FLAGS = (
    "epochs", "image_size", "batch_size", "optimizer", "learning_rate", "warmup_steps", "weight_decay",
    "label_smoothing", "augment",
    "eval_image_size", "randaugment_magnitude", "mixup_alpha", "ema_decay", "amp", "channels_last", "compile", "seed",
    "threads", "device",
)


def _export_onnx(
    spec: ArchSpec, num_classes: int, in_channels: int, weights: Path, output: Path, image_size: int
) -> None:
    """Exports the saved ``weights`` as ONNX for ``in_channels``-channel images (the data's) and says how close
    ONNX Runtime's logits came to PyTorch's."""
    from nas.onnx_export import export_weights_onnx

    difference = export_weights_onnx(spec, weights, output, num_classes=num_classes, in_channels=in_channels,
                                     image_size=image_size)
    print(f"wrote {output}: ONNX logits match PyTorch's within {difference:.2g}", file=sys.stderr)


def _print_epoch(stats: Any) -> None:
    width = 20
    done = round(width * stats.epoch / stats.epochs)
    print(
        f"epoch {stats.epoch:>{len(str(stats.epochs))}}/{stats.epochs} [{'#' * done}{'.' * (width - done)}] "
        f"{stats.image_size}px  loss {stats.loss:.4f}  train acc {stats.train_accuracy:.1%}  "
        f"{stats.images_per_second:,.0f} img/s",
        file=sys.stderr,
        flush=True,
    )


def _print_result(result: Any) -> None:
    def number(value: float | None, text: str) -> str:
        return "-" if value is None else text

    rows = [
        ["status", result.status + (f": {result.failure_reason}" if result.failure_reason else "")],
        ["hold-out accuracy", number(result.accuracy, f"{(result.accuracy or 0):.2%}")],
        ["final train loss", number(result.final_loss, f"{(result.final_loss or 0):.4f}")],
        ["step time (median)", number(result.step_time_s, f"{(result.step_time_s or 0) * 1e3:.2f} ms")],
        ["step time (IQR)", number(result.step_time_iqr_s, f"{(result.step_time_iqr_s or 0) * 1e3:.2f} ms")],
        ["images/s", number(result.images_per_second, f"{(result.images_per_second or 0):,.1f}")],
        ["parameters", number(result.parameters, f"{(result.parameters or 0):,}")],
        ["FLOPs", number(result.macs, f"{_format_macs(result.macs or 0)} multiply-adds per image")],
        ["peak memory", number(result.peak_memory_bytes,
                               _format_memory(result.peak_memory_bytes or 0, result.device or ""))],
        ["wall time", number(result.wall_time_s, f"{(result.wall_time_s or 0):.1f} s")],
        ["epochs", str(result.epochs_completed)],
        ["device", result.device or "-"],
    ]
    print(format_table(["result", "value"], rows))


_SEARCH_OVERRIDES = (
    "space", "data", "trials", "epochs", "image_size", "batch_size", "controller", "storage", "study", "address",
    "workers", "gpus_per_trial", "cpus_per_trial", "seed", "scheduler", "min_epochs", "reduction_factor",
)


def cmd_search(args: argparse.Namespace) -> int:
    from nas.campaign import CampaignConfig, LockLostError, Terminated, load_campaign, run_campaign

    config = load_campaign(args.config) if args.config else CampaignConfig()
    config = config.with_overrides({name: getattr(args, name) for name in _SEARCH_OVERRIDES})
    # Everything that can be refused is refused here, before a study, a directory or a Ray node exists.
    output = _output_path("--export", args.export) if args.export else Path("runs") / f"{config.study}-best.yaml"
    config.check_inputs()
    if args.executor == "local":
        from nas.local import LocalExecutor as Executor
    else:
        from nas.runner import RayExecutor as Executor
    try:
        outcome = run_campaign(config, Executor(), out=sys.stdout)  # the stdout of now, not of import time
    except KeyboardInterrupt as stop:
        signal_name = "SIGTERM" if isinstance(stop, Terminated) else "Ctrl-C"
        print(f"\nstopped ({signal_name}): trials in flight were marked interrupted and run once more on resume; "
              "finished trials are kept in the study; run the same command to resume", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(stop, Terminated) else EXIT_INTERRUPTED
    except LockLostError as error:
        print(f"nas search: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(_finished_line(outcome.finished, outcome.budget, outcome.ran))
    if outcome.best_spec is not None:
        dump_spec(outcome.best_spec, output)
        baseline_won = _record_export(config, output, outcome.best_trial)
        blocks = " ".join(outcome.best_spec.block_strings)
        if baseline_won:
            print(f"best: trial {outcome.best_trial}, the baseline, reward {outcome.best_reward:.4f}: {blocks}")
            print("no candidate beat the baseline: search longer (raise --trials), or reconsider the space or the "
                  "reward's exponents")
            print(f"exported the best architecture (the baseline's: no candidate beat it) to {output}")
        else:
            print(f"best: trial {outcome.best_trial}, reward {outcome.best_reward:.4f}: {blocks}")
            print(f"exported the best architecture to {output}")
    if outcome.finished < outcome.budget and not outcome.exhausted:
        print("stopped before the budget: finished trials are kept in the study; run the same command to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _finished_line(finished: int, budget: int, ran: int) -> str:
    """How many trials the study holds against the budget, true also when it held more than the budget before this
    run (a lower --trials than last time: nothing ran, and ``12/5`` would read as a broken count)."""
    if ran == 0 and finished >= budget:
        return (f"{finished} trials finished (budget {budget}, already met; none ran now): raise --trials above "
                f"{finished} to search more")
    if finished > budget:
        return f"{finished} trials finished (budget {budget}; {ran} in this run)"
    return f"{finished}/{budget} trials finished ({ran} in this run)"


def _record_export(config: CampaignConfig, path: Path, best_trial: int | None) -> bool | None:
    """Records ``path``, made absolute, as the study's :data:`~nas.records.EXPORTED_SPEC` (the report shows where
    the winner's spec is) and says whether ``best_trial`` is the baseline, which no candidate then beat.

    The study is opened again, for writing, after the campaign released it. The spec is already written: a storage
    that refuses the attribute is a warning on stderr, not a failed search; None when the study could not tell.
    """
    import optuna

    from nas import records
    from nas.storage import StudyError, make_storage, storage_errors

    try:
        with storage_errors(config.storage_url, "write to"):
            study = optuna.load_study(study_name=config.study, storage=make_storage(config.storage_url))
            study.set_user_attr(records.EXPORTED_SPEC, str(path.resolve()))
            baseline = records.study_baseline(study.user_attrs)
            if baseline is not None:
                return best_trial == baseline.trial
            trial = next((trial for trial in study.get_trials(deepcopy=False) if trial.number == best_trial), None)
            return trial is not None and trial.user_attrs.get(records.ROLE) == records.ROLE_BASELINE
    except StudyError as error:
        print(f"nas search: warning: the study does not record where the best spec was written: {error}",
              file=sys.stderr)
        return None


def _storage_url(args: argparse.Namespace) -> str:
    from nas.storage import default_storage_url

    return args.storage or default_storage_url(args.study)


def _open_study(args: argparse.Namespace) -> Any:
    from nas.study import load_study

    return load_study(_storage_url(args), args.study)


def _reads_study(handler: Any) -> Any:
    """Runs a command that reads a study with database errors (a damaged file, say) as one-line errors."""

    def run(args: argparse.Namespace) -> int:
        from nas.storage import storage_errors

        with storage_errors(_storage_url(args), "read"):
            return handler(args)

    return run


def _print_frame(frame: Any, output_format: str) -> None:
    if output_format == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    elif output_format == "json":
        print(frame.to_json(orient="records", indent=2))
    elif len(frame):
        # pandas prints a missing integer as <NA> whatever na_rep says: such cells become "-" here.
        integers = [column for column in frame.columns if str(frame[column].dtype) == "Int64"]
        table = frame.astype({column: object for column in integers}).fillna({column: "-" for column in integers})
        print(table.to_string(index=False, na_rep="-", float_format=lambda value: f"{value:.4g}"))
    else:
        print("no trials")


def cmd_trials(args: argparse.Namespace) -> int:
    from nas.trials import TrialQuery, trials_frame

    query = TrialQuery.parse(args.filter, args.sort, args.descending)
    _print_frame(query.apply(trials_frame(_open_study(args))), args.format)
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from nas.trials import TrialQuery, best_trials, pareto_front, trials_frame

    query = TrialQuery.parse(args.filter, args.sort, args.descending)
    if args.k < 1:
        raise ValueError(f"-k must be >= 1, got {args.k}")
    study = _open_study(args)
    if args.pareto:
        _print_frame(query.apply(trials_frame(study, pareto_front(study))), args.format)
    else:  # every complete trial by reward, so that the filters pick the best k among the trials they keep
        ranked = best_trials(study, len(study.get_trials(deepcopy=False)))
        _print_frame(query.apply(trials_frame(study, ranked), limit=args.k), args.format)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from nas.report import write_report

    output = _output_path("-o", args.output or f"runs/{args.study}-report")
    report = write_report(_open_study(args), output, force=args.force)
    for name, reason in report.not_drawn.items():
        print(f"figure {name} not drawn: {reason}", file=sys.stderr)
    print(f"wrote {report.path} with {len(report.figures)} figure(s)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from nas.study import trial_spec
    from nas.trials import trial_to_export

    output = _output_path("-o", args.output) if args.output is not None else None
    trial = trial_to_export(_open_study(args), args.trial)
    spec = dataclasses.replace(trial_spec(trial), name=args.name or f"{args.study}-trial{trial.number}")
    if args.format == "timm":
        blocks = "\n".join(f"    [{block!r}]," for block in timm_arch_def(spec))
        print(f"# {spec.name}: timm EfficientNet arch_def; stem_size={spec.stem_channels}, "
              f"num_features={spec.head_channels}\narch_def = [\n{blocks}\n]")
        return 0
    if _write_spec(spec, output, force=args.force):
        print(f"wrote trial {trial.number} (reward {trial.value:.4f}) to {output}")
    return 0


def _add_study_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, help="study name (the campaign's study setting)")
    parser.add_argument("--storage", help="Optuna storage URL: sqlite:///PATH, postgresql://..., or journal:PATH "
                                          "(default: sqlite:///runs/STUDY.db, relative to the working directory)")


class _HelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default where it has one (not for flags that are off, nor options whose
    default is None, whose help says what happens without them) and its help does not say it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "(default" in text or default is None or default is False
                or default is argparse.SUPPRESS or default == []):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (tuple, list)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class _SearchHelpFormatter(_HelpFormatter):
    """``nas search``'s help: a flag not given keeps the --config file's value, else the campaign's built-in
    default, which is read here, when help is printed, so that building the parser never imports the campaign."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = super()._get_help_string(action)
        if action.dest not in _SEARCH_OVERRIDES or "(default" in text:
            return text
        from nas.campaign import SCHEDULER_OVERRIDES, CampaignConfig

        config = CampaignConfig()
        if action.dest in SCHEDULER_OVERRIDES:
            value = getattr(config.scheduler, SCHEDULER_OVERRIDES[action.dest])
        elif hasattr(config, action.dest):
            value = getattr(config, action.dest)
        else:
            value = getattr(config.train, action.dest)
        return f"{text} (default: the --config file's, else {value})"


class _Parser(argparse.ArgumentParser):
    """argparse with this command's manners: a usage error is one line plus where the options are listed (the full
    usage only with --help), and a mistyped command, choice or flag gets the nearest valid one suggested."""

    def __init__(self, *args: Any, formatter_class: type[argparse.HelpFormatter] = _HelpFormatter,
                 **kwargs: Any) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}  # the subcommands' parsers, by name

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\nsee {self.prog} --help\n")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        # argparse's check of a command or --choice value; a mistyped one is told the nearest choice.
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as error:
            close = difflib.get_close_matches(str(value), [str(choice) for choice in action.choices or ()], n=1)
            if not close:
                raise
            raise argparse.ArgumentError(action, f"{error.message}; did you mean {close[0]}?") from None

    def refuse_unknown(self, arguments: Sequence[str]) -> NoReturn:
        """Refuses arguments this command does not take, with the nearest option for each mistyped flag."""
        options = [option for action in self._actions for option in action.option_strings]
        guesses = {
            argument: close[0] for argument in arguments if argument.startswith("-")
            for close in [difflib.get_close_matches(argument.split("=", 1)[0], options, n=1)] if close
        }
        if len(guesses) == 1:
            hint = f"; did you mean {next(iter(guesses.values()))}?"
        elif guesses:
            hint = f"; did you mean {', '.join(f'{close} (for {typed})' for typed, close in guesses.items())}?"
        else:
            hint = ""
        self.error(f"unrecognized arguments: {' '.join(arguments)}{hint}")


DESCRIPTION = ("Training-aware neural architecture search (EfficientNetV2): inspect specs and search spaces, scale "
               "architectures, benchmark and proxy-train them, run a search and read, export and report its study. "
               "A spec is a preset name or a spec file; a space is a shipped space name or a space file.")


def build_parser() -> _Parser:
    from nas.controller_names import CONTROLLERS  # not nas.controllers: building the parser imports no Optuna
    from nas.halving import SCHEDULERS
    from nas.progressive import ProgressiveConfig
    from nas.recipe import AUGMENT_CHOICES, OPTIMIZERS, TrainConfig
    from nas.sources import DEFAULT_IMAGEFOLDER_SIZE

    recipe, table6 = _defaults(TrainConfig), _defaults(ProgressiveConfig)
    spec_help = f"a spec file or a preset: {', '.join(presets.names())}"
    resized = f"imagefolder's images are resized to {DEFAULT_IMAGEFOLDER_SIZE}px unless --image-size says otherwise"
    parser = _Parser(prog="nas", description=DESCRIPTION, epilog="Run nas COMMAND --help for a command's options.")
    parser.add_argument("--version", action="version", version=f"nas {_version()}",
                        help="print the installed version of training-aware-nas and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.commands = commands.choices

    show = commands.add_parser(
        "show", help="print a spec's stages, parameters and FLOPs",
        description="Print a spec's stages (block string, channels, layers and parameters of each), its parameter "
                    "count for --num-classes outputs (ImageNet's 1000 unless given) and its FLOPs (multiply-adds) at "
                    "its eval image size, counted from the spec without building the network.",
    )
    show.add_argument("spec", metavar="SPEC_OR_PRESET", help=spec_help)
    show.add_argument("--num-classes", type=int, default=IMAGENET_CLASSES, metavar="N",
                      help=f"classifier outputs the parameter count is for (default: {IMAGENET_CLASSES}, ImageNet's, "
                           "as in the papers; a search counts for its data's classes, e.g. 10 for CIFAR-10)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=cmd_show)

    scale_parser = commands.add_parser(
        "scale", help="scale a spec in width, depth and resolution",
        description="Scale a spec by explicit multipliers (--width/--depth) or by compound coefficient --phi; "
                    "--family N writes one spec per phi = 1..N, --search-coefficients first grid-searches alpha, "
                    "beta and gamma with the proxy trainer.",
    )
    scale_parser.add_argument("spec", metavar="SPEC_OR_PRESET", help=spec_help)
    scale_parser.add_argument("--width", type=float, help="channel multiplier (default: 1 when --depth is given)")
    scale_parser.add_argument("--depth", type=float, help="layer multiplier (default: 1 when --width is given)")
    scale_parser.add_argument("--image-size", type=int,
                              help="new eval image size, with --width/--depth (default: the spec's)")
    scale_parser.add_argument("--round-limit", type=float,
                              help="channel rounding guard: 0.9 EfficientNet, 0 V2 (default: the spec's)")
    scale_parser.add_argument("--phi", type=float, help="compound coefficient: depth alpha^phi, width beta^phi, "
                                                        "resolution gamma^phi")
    scale_parser.add_argument("--alpha", type=float, default=1.2, help="depth base")
    scale_parser.add_argument("--beta", type=float, default=1.1, help="width base")
    scale_parser.add_argument("--gamma", type=float, default=1.15, help="resolution base")
    scale_parser.add_argument("--v2-rules", action="store_true",
                              help=f"EfficientNetV2 rules: image size capped at {V2_MAX_IMAGE_SIZE}, "
                                   "extra depth to later stages")
    scale_parser.add_argument("--name", help="name of the new spec (default: the spec's, with the multipliers or phi)")
    scale_parser.add_argument("-o", "--output", help="write the spec here (default: print YAML)")
    scale_parser.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    scale_parser.add_argument("--num-classes", type=int, default=IMAGENET_CLASSES, metavar="N",
                              help=f"classifier outputs the parameter count is for (default: {IMAGENET_CLASSES}, "
                                   "ImageNet's)")
    scale_parser.add_argument("--family", type=int, metavar="N",
                              help="write one spec per phi = 1..N into the -o directory, with a table")
    scale_parser.add_argument("--search-coefficients", action="store_true",
                              help="grid-search alpha, beta, gamma at phi = 1 with the proxy trainer (needs --data)")
    scale_parser.add_argument("--data", default="synthetic", help="data for --search-coefficients")
    scale_parser.add_argument("--epochs", type=int, default=3, help="proxy epochs per grid point")
    scale_parser.add_argument("--batch-size", type=int, default=128, help="images per step of the proxy training")
    scale_parser.add_argument("--grid-step", type=float, default=0.1, help="step of the coefficient grid")
    scale_parser.add_argument("--seed", type=int, default=0, help="seed of the proxy training and its data split")
    scale_parser.add_argument("--device", default="auto", help="device of the proxy training: auto, cpu, cuda, "
                                                               "cuda:N or mps")
    scale_parser.set_defaults(handler=cmd_scale)

    space = commands.add_parser(
        "space", help="print a search space's choices and size, or samples from it",
        description="Print a search space's backbone, its per-stage choices (op, layers, kernel, expansion) and its "
                    "size; --sample N also prints N candidates drawn from it as block strings.",
    )
    space.add_argument("space", metavar="SPACE", help=f"a space file or one of: {', '.join(presets.space_names())}")
    space.add_argument("--sample", type=int, default=0, metavar="N", help="print N sampled candidates")
    space.add_argument("--seed", type=int, default=0, help="seed for --sample")
    space.add_argument("--json", action="store_true", help="machine-readable output")
    space.set_defaults(handler=cmd_space)

    bench = commands.add_parser(
        "bench", help="measure a spec's training step time on a device",
        description="Time a spec's full training step (forward, backward, optimizer: nas train's default recipe) "
                    "on a device with the one timing protocol: warm-up steps excluded, the median of timed windows.",
    )
    bench.add_argument("spec", metavar="SPEC_OR_PRESET", help=spec_help)
    _add_device_arguments(bench)
    bench.add_argument("--batch-size", type=int, default=32, help="images per step")
    bench.add_argument("--image-size", type=int, help="image size (default: the spec's train image size)")
    bench.add_argument("--in-channels", type=int, metavar="N",
                       help="input image channels, 1 grayscale or 3 RGB (default: 3, or the spec's in_channels)")
    bench.add_argument("--num-classes", type=int, default=IMAGENET_CLASSES, metavar="N",
                       help=f"classifier outputs (default: {IMAGENET_CLASSES}, ImageNet's)")
    bench.add_argument("--warmup", type=int, default=recipe["timing_warmup"], help="untimed steps before timing")
    bench.add_argument("--repeats", type=int, default=recipe["timing_repeats"],
                       help="timed windows; the median is reported")
    bench.add_argument("--inference", action="store_true", help="also time the forward pass alone (eval mode)")
    bench.add_argument("--relative-to", metavar="SPEC_OR_PRESET",
                       help="also estimate S/S0 against this reference (a campaign's baseline) from --repeats "
                            "interleaved pairs of windows, as a campaign's reward does, with its spread")
    bench.add_argument("--storage", metavar="URL",
                       help="with --relative-to: read S/S0 from, and add it to, the step-time cache of this Optuna "
                            "storage (a campaign's, e.g. sqlite:///runs/STUDY.db), keyed by both architectures, "
                            "the device and the settings")
    bench.add_argument("--json", action="store_true", help="machine-readable output")
    bench.set_defaults(handler=cmd_bench)

    train = commands.add_parser(
        "train", help="proxy-train a spec and report accuracy, step time and size",
        description="Train a spec on a data source and report hold-out accuracy, step time, parameters and FLOPs. "
                    "--checkpoint saves every epoch (an existing one needs --resume to continue it or --force to "
                    "start over), --save keeps the trained weights, --progressive trains in stages of growing "
                    "image size and regularization.",
    )
    train.add_argument("spec", metavar="SPEC_OR_PRESET", help=spec_help)
    train.add_argument("--data", default="synthetic",
                       help=f"synthetic[:OPTIONS], cifar10:DIR, cifar100:DIR, npz:FILE or imagefolder:DIR ({resized}; "
                            "the others keep their own size)")
    train.add_argument("--epochs", type=int, default=recipe["epochs"], help="training epochs")
    train.add_argument("--image-size", type=int,
                       help=f"training image size (default: the data's own; {DEFAULT_IMAGEFOLDER_SIZE} for imagefolder)")
    train.add_argument("--batch-size", type=int, default=recipe["batch_size"],
                       help="images per step (default: auto, the largest power of two from 16 to 128 that gives at "
                            "least 200 steps per epoch; README, Proxy training)")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=recipe["optimizer"], help="optimizer")
    train.add_argument("--lr", dest="learning_rate", metavar="LR", type=float, default=recipe["learning_rate"],
                       help="peak learning rate (default: auto, 0.1 for sgd, 0.001 for adamw, 0.008 for rmsprop at "
                            "batch 128, scaled linearly with the batch)")
    train.add_argument("--warmup-steps", type=int, default=recipe["warmup_steps"],
                       help="optimizer steps over which the learning rate rises linearly (default: auto, 5%% of the "
                            "run's steps)")
    train.add_argument("--weight-decay", type=float, default=recipe["weight_decay"], help="weight decay")
    train.add_argument("--label-smoothing", type=float, default=recipe["label_smoothing"],
                       help="label smoothing of the loss")
    train.add_argument("--augment", choices=AUGMENT_CHOICES, default=recipe["augment"],
                       help="augmentation of the training images: auto is crop_flip where the data's mirror images "
                            "keep their labels (CIFAR, image folders, npz:FILE?flip=yes), else crop")
    train.add_argument("--eval-image-size", type=int, help="evaluation image size (default: the last training size)")
    train.add_argument("--randaugment", dest="randaugment_magnitude", type=float,
                       default=recipe["randaugment_magnitude"], metavar="M",
                       help="RandAugment magnitude 0-30 for a fixed-size run, 0 off")
    train.add_argument("--mixup", dest="mixup_alpha", type=float, default=recipe["mixup_alpha"], metavar="ALPHA",
                       help="mixup alpha, 0 off")
    progressive = train.add_argument_group(
        "progressive learning", "EfficientNetV2 Algorithm 1: M stages, image size and regularization growing "
                                "linearly from MIN to MAX (defaults: the paper's Table 6 for EfficientNetV2-S)")
    progressive.add_argument("--progressive", action="store_true", help="train in stages of growing size")
    progressive.add_argument("--stages", type=int, default=table6["num_stages"], help="number of stages M")
    for flag, name, kind, what in (("--image-size-range", "image_size", int, "image size"),
                                   ("--dropout-range", "dropout", float, "dropout rate"),
                                   ("--randaugment-range", "randaugment_magnitude", float, "RandAugment magnitude"),
                                   ("--mixup-range", "mixup_alpha", float, "mixup alpha")):
        progressive.add_argument(flag, type=kind, nargs=2, default=table6[name], metavar=("MIN", "MAX"),
                                 help=f"{what} of the first and the last stage")
    train.add_argument("--ema", dest="ema_decay", type=float, metavar="DECAY",
                       help="keep an exponential moving average of the weights (e.g. 0.999) and evaluate it")
    train.add_argument("--checkpoint", help="write the full training state here after every epoch; one run at a "
                                            "time owns it (a second is refused, naming the first's host and pid)")
    train.add_argument("--resume", action="store_true",
                       help="continue from --checkpoint, which must exist (same spec, recipe and data)")
    train.add_argument("--force", action="store_true",
                       help="start over: overwrite an existing --checkpoint instead of refusing")
    train.add_argument("--save", metavar="DIR", help="write weights.pt, spec.yaml and result.json into DIR")
    train.add_argument("--export-onnx", metavar="PATH", help="also write the trained network as ONNX (needs --save "
                                                              "and the onnx extra); checked against PyTorch")
    train.add_argument("--val-fraction", type=float, default=0.1,
                       help="share of the training data held out for accuracy")
    train.add_argument("--seed", type=int, default=recipe["seed"],
                       help="seed of the hold-out split, the initial weights and the augmentation")
    _add_device_arguments(train)
    train.add_argument("--json", action="store_true", help="machine-readable output")
    train.set_defaults(handler=cmd_train)

    search = commands.add_parser(
        "search", help="run or resume a training-aware architecture search", formatter_class=_SearchHelpFormatter,
        description="Run (or resume) a search campaign. Settings come from --config (a campaign YAML) and any "
                    "flag given overrides its field; without --config the built-in defaults apply.",
    )
    search.add_argument("--config", help="campaign file, e.g. experiments/cpu-demo.yaml (default: none, the "
                                         "built-in settings)")
    search.add_argument("--space", help="space name or file")
    search.add_argument("--data", help=f"data source, as for nas train ({resized})")
    search.add_argument("--trials", type=int, help="finished trials wanted in the study (baseline included)")
    search.add_argument("--epochs", type=int, help="proxy-training epochs per candidate")
    search.add_argument("--image-size", type=int,
                        help="proxy image size (default: the --config file's, else the data's)")
    search.add_argument("--batch-size", type=int, help="images per proxy-training step")
    search.add_argument("--controller", choices=CONTROLLERS, help="what proposes the candidates")
    search.add_argument("--storage", help="Optuna storage URL (default: the --config file's, else "
                                          "sqlite:///runs/STUDY.db)")
    search.add_argument("--study", help="study name")
    search.add_argument("--address", help="Ray cluster address, 'auto' or HOST:PORT (default: the --config file's, "
                                          "else start a local Ray)")
    search.add_argument("--workers", type=int, help="trials at once")
    search.add_argument("--gpus-per-trial", type=float, help="GPUs per trial, a fraction shares one (default: the "
                                                             "--config file's, else 1 when there are GPUs, else 0)")
    search.add_argument("--cpus-per-trial", type=int, help="CPUs per trial")
    search.add_argument("--seed", type=int, help="seed of the controller")
    search.add_argument("--scheduler", choices=SCHEDULERS,
                        help="successive halving: asha judges each trial after --min-epochs, then every "
                             "--reduction-factor times as many epochs, and stops those behind; none trains every "
                             "trial for all its epochs")
    search.add_argument("--min-epochs", type=int, metavar="N", help="epochs before a trial's first rung (asha)")
    search.add_argument("--reduction-factor", type=int, metavar="N",
                        help="asha: the top 1/N of the rewards at a rung go on, and rungs are N times apart")
    search.add_argument("--export", help="where to write the best spec (default: runs/STUDY-best.yaml)")
    search.add_argument("--executor", choices=("ray", "local"), default="ray",
                        help="ray: trials as Ray Tune trials, --workers at a time, on this machine or the cluster of "
                             "--address; local: one trial at a time in this process, without Ray (for debugging)")
    search.set_defaults(handler=cmd_search)

    trials = commands.add_parser(
        "trials", help="list a study's trials",
        description="List a study's trials: state, role, reward, accuracy A, step time S, parameters P, their "
                    "normalized values and the architecture. Reads the study only: it creates and changes nothing.",
    )
    _add_study_arguments(trials)
    trials.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    _add_query_arguments(trials)
    trials.set_defaults(handler=_reads_study(cmd_trials))

    best = commands.add_parser(
        "best", help="the best trials by reward, or the Pareto front over A, S and P",
        description="List a study's best complete trials by reward, or with --pareto the trials no other beats on "
                    "accuracy, step time and parameters at once. Reads the study only.",
    )
    _add_study_arguments(best)
    best.add_argument("-k", type=int, default=5, help="how many")
    best.add_argument("--pareto", action="store_true", help="the trials no other beats on accuracy, step time "
                                                            "and parameters at once")
    best.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    _add_query_arguments(best, ranking=" (with -k: the best k among the trials kept; with --pareto: the front's "
                                       "trials that match)")
    best.set_defaults(handler=_reads_study(cmd_best))

    export = commands.add_parser(
        "export", help="write a trial's architecture as a spec file",
        description="Write a trial's architecture (the best complete trial unless --trial) as a spec file, print "
                    "it as YAML, or print timm's arch_def for it. Reads the study only.",
    )
    _add_study_arguments(export)
    export.add_argument("--trial", type=int, help="trial number (default: the best complete trial)")
    export.add_argument("-o", "--output", help="spec file to write (default: print YAML)")
    export.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    export.add_argument("--name", help="name of the exported spec (default: STUDY-trialN)")
    export.add_argument("--format", choices=("yaml", "timm"), default="yaml",
                        help="yaml: a spec file; timm: the equivalent timm arch_def block strings")
    export.set_defaults(handler=_reads_study(cmd_export))

    report = commands.add_parser(
        "report", help="write an HTML report of a study, with figures",
        description="Write DIR/report.html with PNG figures beside it (no network needed to view it): the "
                    "optimization history by controller, accuracy against step time and parameters with the Pareto "
                    "front, the top 10% of candidates' decisions per stage, the baseline and the winner, failures "
                    "by reason, and the campaign's settings and device.",
    )
    _add_study_arguments(report)
    report.add_argument("-o", "--output", metavar="DIR", help="directory to write (default: runs/STUDY-report)")
    report.add_argument("--force", action="store_true", help="overwrite a report already in DIR")
    report.set_defaults(handler=_reads_study(cmd_report))
    return parser


def _version() -> str:
    """The installed distribution's version; a source tree that was never installed says so."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("training-aware-nas")
    except PackageNotFoundError:
        return "(not installed: run pip install -e .)"


def _defaults(config: type) -> dict[str, Any]:
    """The default of each field of a config dataclass: the CLI's defaults are its owners'."""
    return {field.name: field.default for field in dataclasses.fields(config)}


def _add_query_arguments(parser: argparse.ArgumentParser, ranking: str = "") -> None:
    from nas.trials import FILTER_FIELDS, TABLE_COLUMNS

    fields = "; ".join(f"{name}: {', '.join(values)}" for name, values in FILTER_FIELDS.items())
    parser.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE",
                        help=f"keep the trials whose FIELD is VALUE, in any case ({fields}); repeat it: filters on "
                             f"one field are alternatives, on different fields all must hold{ranking}")
    parser.add_argument("--sort", metavar="COLUMN", help="order the rows by COLUMN, smallest first, ties in the order "
                                                         f"shown without it; one of: {', '.join(TABLE_COLUMNS)}")
    parser.add_argument("--descending", action="store_true", help="with --sort: largest first (missing values "
                                                                  "stay last)")


def _add_device_arguments(parser: argparse.ArgumentParser) -> None:
    from nas.recipe import AMP_CHOICES

    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--amp", choices=AMP_CHOICES, default="auto",
                        help="autocast precision (default: auto = bf16 on CUDA, none on CPU)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="channels_last memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``nas`` command; returns the exit status.

    A reader that closes the output early (``nas show --json | head``, ``nas trials ... | head -3``) ends any
    command quietly with :data:`EXIT_BROKEN_PIPE`, with no "Broken pipe" message or traceback: Python's recipe for
    SIGPIPE (the signal module's notes), catching BrokenPipeError here and sending the rest of the output to
    devnull, so that the interpreter's own flush at exit has nothing left to fail on.
    """
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # a reader that went away shows here, not as a message when the interpreter exits
    except BrokenPipeError:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # a stdout without a file descriptor (a test's capture) has no pipe to close
            pass
        return EXIT_BROKEN_PIPE


def _run(argv: Sequence[str] | None) -> int:
    command_line = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(command_line)
    if unknown:
        parser.commands.get(args.command, parser).refuse_unknown(unknown)
    args.command_line = command_line  # as typed, for messages that repeat it (nas train's resume command)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.handler(args)
    except BrokenPipeError:
        raise  # an OSError, but no refused input: main ends quietly
    except _usage_errors() as error:
        print(f"nas {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE


# Errors of modules a command may import: each is refused input, reported in one line. They are looked up only
# in modules already imported (a command that never imported one cannot raise its error), so that `nas show` or
# `nas trials` does not import torch, or optuna, to name an error class.
_MODULE_USAGE_ERRORS = (
    ("nas.storage", "StudyError"), ("nas.measure", "DeviceUnavailableError"), ("nas.onnx_export", "OnnxExportError"),
)


def _usage_errors() -> tuple[type[BaseException], ...]:
    loaded = [getattr(sys.modules[module], name) for module, name in _MODULE_USAGE_ERRORS if module in sys.modules]
    return (SpecError, ValueError, OSError, LockHeldError, *loaded)


if __name__ == "__main__":
    sys.exit(main())
