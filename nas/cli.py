"""The ``nas`` command: inspect specs and spaces, scale architectures, benchmark and proxy-train them, run a search
and read its study.

Every command that takes a spec takes a preset name (``efficientnetv2-s``) or a spec file path; every command
that takes a space takes a shipped space name (``tiny``) or a space file path. Errors print one line naming the
problem and exit with status 2. This module parses (:mod:`nas.parser`), calls the library and prints: it imports
no Optuna, and no torch until a command needs it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from nas.outputs import best_spec_path, default_storage_url, report_directory, trial_spec_name
from nas.parser import EXIT_USAGE, IMAGENET_CLASSES, RECIPE_FLAGS, SEARCH_OVERRIDES, build_parser
from nas.scaling import V2_MAX_IMAGE_SIZE, compound_coefficients, compound_scale, image_size_rounding, scale
from search_spaces import presets
from search_spaces.checks import check_int
from search_spaces.files import LockHeldError, check_output
from search_spaces.io import dump_spec, spec_to_yaml, timm_arch_def
from search_spaces.spec import ArchSpec, SpecError

EXIT_FAILED = 1  # a run that started and failed
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM)
# The reader of the output went away (128 + SIGPIPE): what a shell reports for `git log | head`'s git, so that
# `set -o pipefail` treats nas as it treats other tools, and a script can tell a cut-short output from a whole one.
EXIT_BROKEN_PIPE = 141
MAX_SAMPLES = 100_000


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


def _spec_report(spec: ArchSpec, num_classes: int | None) -> dict[str, Any]:
    """What ``nas show`` says of a spec, counted for ``num_classes`` outputs; None counts for the classes the spec
    says it was searched or trained on (its ``num_classes``), else for ImageNet's 1000, as the papers count."""
    from nas.complexity import count_spec  # counted from the spec: nas show and nas scale import no torch

    if num_classes is None:
        num_classes = spec.num_classes or IMAGENET_CLASSES
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


def _classes_note(num_classes: int, spec: ArchSpec | None = None) -> str:
    """Which classifier a parameter count is for: a search prints its candidates' counts for the data's classes,
    ``nas show`` for ``--num-classes``, else for the classes ``spec`` was searched or trained on (its
    ``num_classes``), else for ImageNet's 1000, as the papers' counts are."""
    recorded = None if spec is None else spec.num_classes
    if recorded == num_classes:
        return (f"for {num_classes} classes (the spec's: those it was searched or trained on; --num-classes N counts "
                "for N)")
    if recorded is not None:
        return (f"for {num_classes} classes (not the {recorded} the spec was searched or trained on: --num-classes "
                f"{recorded} counts for those)")
    if num_classes == IMAGENET_CLASSES:
        return f"for {num_classes} classes (ImageNet's, the default; --num-classes N counts for your data's N)"
    return f"for {num_classes} classes (--num-classes {num_classes})"


def _print_spec(spec: ArchSpec, num_classes: int | None, sizes_note: str | None = None) -> None:
    """A spec as ``nas show`` prints it, counted for ``num_classes`` as :func:`_spec_report` resolves it;
    ``sizes_note`` (from :func:`_image_sizes_note`) says why it trains at another image size than it evaluates at,
    under the line that gives both."""
    report = _spec_report(spec, num_classes)
    print(
        f"{spec.name or '(unnamed spec)'}: train {spec.train_image_size}px, eval {spec.eval_image_size}px, "
        f"dropout {spec.dropout:g}, drop path {spec.drop_path_rate:g}, {spec.activation}"
    )
    if sizes_note is not None:
        print(f"  {sizes_note}")
    print(_stage_table(spec, report["stage_parameters"]))
    print(f"parameters: {report['parameters']:,} {_classes_note(report['num_classes'], spec)}")
    print(f"FLOPs: {_format_macs(report['macs'])} multiply-adds at {report['image_size']}x{report['image_size']}, "
          f"{report['in_channels']} input channel(s)")


def cmd_show(args: argparse.Namespace) -> int:
    spec = presets.resolve_spec(args.spec)
    if args.json:
        print(json.dumps(_spec_report(spec, args.num_classes), indent=2, allow_nan=False))
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
    with :mod:`nas.scaling`'s own numbers: its resolution coefficient, its rounding and its V2 cap."""
    train, evaluation = scaled.train_image_size, scaled.eval_image_size
    if train == evaluation:
        return None
    old_train, old_eval = spec.train_image_size, spec.eval_image_size
    if args.phi is not None:
        growth = compound_coefficients(args.phi, args.alpha, args.beta, args.gamma).resolution
        why = (f"train {train}px and eval {evaluation}px are the spec's {old_train} and {old_eval}px times gamma^phi "
               f"= {args.gamma:g}^{args.phi:g} = {growth:.4g}, each {image_size_rounding()}")
    elif args.image_size is None:
        why = f"the spec's own train and eval sizes, {old_train} and {old_eval}px"
    else:
        why = (f"eval {args.image_size}px as given (--image-size); train {train}px = {args.image_size} x "
               f"{old_train}/{old_eval} (the spec's train/eval ratio) {image_size_rounding()}")
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
    check_int("--family", args.family, 1, optional=True)
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
    """Runs :func:`nas.coefficient_search.search_and_save_coefficients`, printing its progress on stderr (each
    point, how long it took and about how long is left) and every grid point's result as a table, with whether the
    winner's lead is larger than the hold-out's noise; returns the winning (alpha, beta, gamma)."""
    from nas.coefficient_search import distinct_networks, search_and_save_coefficients
    from nas.progress import estimate_left, format_duration
    from nas.recipe import TrainConfig

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, device=args.device)
    plan: dict[str, Any] = {}
    durations: list[float] = []

    def started(points: list[Any], data: Any) -> None:
        plan.update(distinct=distinct_networks(points), holdout=len(data.val_labels))
        repeats = len(points) - plan["distinct"]
        same = f" ({repeats} round to a network another point trains: each trains once)" if repeats else ""
        print(f"coefficient search at phi = 1: {len(points)} grid points, {plan['distinct']} networks to train"
              f"{same}, {args.epochs} epoch(s) each on {data.name}; an estimate follows the first",
              file=sys.stderr, flush=True)

    def show(trial: Any) -> None:
        c, result = trial.coefficients, trial.result
        outcome = f"accuracy {result.accuracy:.4f}" if result.ok else f"failed: {result.failure_reason}"
        if trial.same_as is not None:
            s = trial.same_as
            timing = f"  (the network of alpha {s.depth:.2f} beta {s.width:.2f} gamma {s.resolution:.2f})"
        else:
            durations.append(result.wall_time_s or 0.0)
            left = estimate_left(durations, plan["distinct"] - len(durations))
            timing = f"  took {format_duration(durations[-1])}" + (
                f", about {format_duration(left)} left" if left else "")
        print(f"  alpha {c.depth:.2f} beta {c.width:.2f} gamma {c.resolution:.2f}  {trial.image_size}px  {outcome}"
              f"{timing}", file=sys.stderr, flush=True)

    best, trials = search_and_save_coefficients(spec, args.data, config, directory, grid_step=args.grid_step,
                                                on_start=started, on_trial=show)
    rows = [
        [f"{t.coefficients.depth:.2f}", f"{t.coefficients.width:.2f}", f"{t.coefficients.resolution:.2f}",
         f"{t.coefficients.depth * t.coefficients.width**2 * t.coefficients.resolution**2:.3f}",
         f"{t.result.parameters or 0:,}", t.image_size,
         "-" if t.result.accuracy is None else f"{t.result.accuracy:.4f}",
         "-" if t.result.step_time_s is None else f"{t.result.step_time_s * 1e3:.2f}",
         "best" if t is best else ("same network" if t.same_as is not None else "")]
        for t in trials
    ]
    print(format_table(["alpha", "beta", "gamma", "a*b^2*g^2", "params", "px", "accuracy", "S (ms)", ""], rows))
    print(_lead_line(best, trials, plan["holdout"]))
    return best.coefficients.depth, best.coefficients.width, best.coefficients.resolution


def _lead_line(best: Any, trials: Sequence[Any], holdout: int) -> str:
    """Whether the best point's accuracy lead over the best other network is larger than the hold-out's noise."""
    from nas.coefficient_search import lead_over_noise

    others = [t.result.accuracy for t in trials if t.result.ok and t.same_as is None and t.result is not best.result]
    if not others:
        return "only one network trained: nothing to compare the winning point with"
    runner_up = max(others)
    lead = lead_over_noise(best.result.accuracy, runner_up, holdout)
    verdict = ("larger than the hold-out's noise" if lead >= 2 else
               "inside the hold-out's noise: another seed or a larger hold-out could pick another point")
    return (f"the winning point leads the next network by {best.result.accuracy - runner_up:.4f} in accuracy, "
            f"{lead:.1f} standard errors on {holdout:,} hold-out images: {verdict}")


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

    Every file or directory a command writes (``-o``, ``--export``; ``nas train``'s outputs in
    :class:`nas.train.TrainPreflight`) goes through :func:`~search_spaces.files.check_output` before any work
    starts, so that a parent that is a file is refused at once; ``--force`` for an existing file is checked by the
    command. Safety from planted links comes from :func:`search_spaces.files.write_file`, not from confinement.
    """
    return check_output(value, flag=flag, force=True, directory=directory)


def cmd_space(args: argparse.Namespace) -> int:
    check_int("--sample", args.sample, 0, MAX_SAMPLES)
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
        }, indent=2, allow_nan=False))
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
    from nas.recipe import TimingConfig

    spec = presets.resolve_spec(args.spec)
    if args.relative_to is not None:  # refused before anything is timed
        TimingConfig(warmup=args.warmup, pairs=args.repeats, precision=args.precision or None,
                     max_seconds=args.max_timing_s)
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
        print(json.dumps(result.to_dict() | ({} if relative is None else {"relative": relative}), indent=2,
                         allow_nan=False))
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
        rows += [["relative to", relative["reference"]], *_relative_rows(relative, args.precision)]
    print(format_table(["measure", "value"], rows))
    return 0


def _relative_rows(relative: dict[str, Any], precision: float) -> list[list[str]]:
    """The rows of ``nas bench --relative-to``'s table that say S/S0, how precise it is and how it was measured."""
    from nas.records import relative_half_width

    ratio, low, high = (relative[key] for key in ("step_time_ratio", "step_time_ratio_low", "step_time_ratio_high"))
    interval = "no interval (too few pairs)" if low is None else \
        f"95% interval {low:.4f}-{high:.4f}, ±{relative_half_width(ratio, (low, high)):.1%}"
    source = " (from the step-time cache)" if relative["cached"] else ""
    measured = (f"{relative['step_time_pairs']} interleaved pairs of windows in "
                f"{relative['step_time_measure_s']:.1f} s")
    discarded = relative["step_time_discarded_pairs"]
    if discarded:
        measured += f"; {discarded} more left out, timed under CPU contention"
    stopped = relative["step_time_stopped_by"]
    if stopped == "cap":
        measured += f"; IMPRECISE: the time cap came before the interval narrowed to ±{precision:.1%}"
    elif stopped == "contention":
        measured += "; IMPRECISE: every pair was timed under CPU contention"
    return [
        ["S/S0", f"{ratio:.4f}{source}"],
        ["S/S0 interval", interval],
        ["S/S0 spread (IQR)", f"{relative['step_time_ratio_iqr']:.4f} (of single pairs)"],
        ["S/S0 measured from", measured],
    ]


def _bench_relative(spec: ArchSpec, result: Any, args: argparse.Namespace) -> dict[str, Any]:
    """S/S0 of ``spec`` against ``--relative-to`` at the settings just benchmarked, as a campaign measures it
    (:func:`nas.timing.relative_step_time`, with ``--storage``'s step-time cache when given)."""
    from nas.measure import resolve_device
    from nas.recipe import TimingConfig
    from nas.timing import relative_step_time

    reference = presets.resolve_spec(args.relative_to)
    fixed = not args.precision  # exactly --repeats pairs, as before issue 27: no contention check either
    settings = TimingConfig(image_size=result.image_size, batch_size=result.batch_size, amp=args.amp,
                            channels_last=args.channels_last, compile=args.compile, warmup=args.warmup,
                            pairs=args.repeats, precision=None if fixed else args.precision,
                            max_seconds=args.max_timing_s, max_stall=None if fixed else TimingConfig.max_stall)
    relative = relative_step_time(spec, reference, settings, device=resolve_device(args.device),
                                  num_classes=args.num_classes, in_channels=result.in_channels,
                                  storage_url=args.storage)
    return {"reference": reference.name or args.relative_to, "cached": relative.cached, **relative.measurement()}


def cmd_train(args: argparse.Namespace) -> int:
    """Proxy-trains a spec. Everything that can be refused is refused (exit 2) before training starts
    (:class:`nas.train.TrainPreflight`); exit 1 is for a run that started and failed. Ctrl-C ends with one line:
    what was saved and the command that continues the run (exit 130).

    Under a launcher (``torchrun --nproc-per-node N -m nas train ...``) every process is one rank of a
    data-parallel run (:mod:`nas.distributed`): rank 0 alone prints and writes."""
    from nas.data import load_data, load_data_with_evaluation
    from nas.distributed import decided_by_rank_zero, device_for, from_environment, process_group
    from nas.measure import resolve_device
    from nas.progressive import ProgressiveConfig
    from nas.recipe import TrainConfig
    from nas.train import TrainPreflight, checkpoint_world_size, run_record, save_run, train_and_evaluate

    spec = presets.resolve_spec(args.spec)
    progressive = None
    if args.progressive:
        progressive = ProgressiveConfig(
            num_stages=args.stages,
            image_size=tuple(args.image_size_range),
            dropout=tuple(args.dropout_range),
            randaugment_magnitude=tuple(args.randaugment_range),
            mixup_alpha=tuple(args.mixup_range),
        )
    config = TrainConfig(progressive=progressive, **{name: getattr(args, name) for name in RECIPE_FLAGS})
    parallel = from_environment(sync_batch_norm=args.sync_bn)
    device = device_for(parallel, resolve_device(config.device))
    if parallel.distributed and device.type not in ("cpu", "cuda"):
        raise ValueError(f"under torchrun, nas train runs on cuda (NCCL) or cpu (gloo), not {device.type}: "
                         "give --device cpu or cuda")
    if parallel.distributed:
        config = dataclasses.replace(config, device=str(device))  # each rank of a node on its own GPU
    preflight = TrainPreflight(spec, config, checkpoint=args.checkpoint or None, resume=args.resume,
                               force=args.force, save=args.save or None, export_onnx=args.export_onnx or None,
                               parallel=parallel)
    talk = parallel.is_main and not args.json  # the lines on stderr; other ranks print nothing at all
    saved_epochs: list[int] = []  # the epochs this run wrote to the checkpoint, for the line after Ctrl-C
    progress: list[Any] = []  # the run's TrainingProgress, once the data (and so the batch size) is known

    def on_epoch(stats: Any) -> None:
        saved_epochs.append(stats.epoch)
        if talk:
            progress[0].clear()
            _print_epoch(stats)

    workers = _loader_workers(args.loader_workers)
    plan: list[tuple[int | None, str | None]] = []  # (the size to load at, why a folder is streamed): the run's one

    def load() -> Any:
        load_size, streamed = plan[0]
        if streamed is not None:
            from nas.streaming import open_streaming_folder

            return open_streaming_folder(args.data.partition(":")[2], image_size=load_size,
                                         val_fraction=args.val_fraction, seed=args.seed, workers=workers)
        if args.eval_data:
            return load_data_with_evaluation(args.data, args.eval_data, image_size=load_size, seed=args.seed)
        return load_data(args.data, image_size=load_size, val_fraction=args.val_fraction, seed=args.seed)

    try:
        with contextlib.ExitStack() as held:
            held.enter_context(process_group(parallel, device))
            # Each rank sees its own free memory; the ranks of one run must load the data the same way.
            plan.append(decided_by_rank_zero(_folder_loading(args, progressive), parallel))
            streamed = plan[0][1]
            data = held.enter_context(preflight.start(load))
            if talk:
                print(_training_line(spec.name or args.spec, data, config), file=sys.stderr)
                print(_recipe_line(config, data), file=sys.stderr)
                if parallel.distributed:
                    print(_ranks_line(parallel, config, data), file=sys.stderr)
                if streamed is not None:
                    print(f"streaming {args.data} ({streamed}): {workers} DataLoader worker(s) decode "
                          "each epoch's images at its size; only the file list is resident", file=sys.stderr)
                _note_unused_arrays(args.data)
                saved = None if preflight.checkpoint is None else preflight.checkpoint.saved(spec, config)
                if saved is not None and checkpoint_world_size(saved) != parallel.world_size:
                    print(f"note: {preflight.checkpoint.path} was written by {checkpoint_world_size(saved)} rank(s) "
                          f"and resumes with {parallel.world_size}: the same samples, schedule and weights go on; "
                          "each rank's own random draws (dropout, mixup, RandAugment) are seeded afresh",
                          file=sys.stderr)
            progress.append(_training_progress(config, data))
            result = train_and_evaluate(spec, data, config, on_epoch=on_epoch, checkpoint=preflight.checkpoint,
                                        weights=preflight.weights, on_step=progress[0].step if talk else None,
                                        evaluate_each_epoch=bool(args.eval_data), parallel=parallel)
            record = run_record(result, data)
            if preflight.save is not None and result.ok and parallel.is_main:
                run = save_run(preflight.save, spec, data, config, result)  # spec.yaml, result.json with the input
                if talk:
                    print(f"saved the trained weights, the spec and the result to {preflight.save}", file=sys.stderr)
                if preflight.onnx is not None:
                    _export_onnx(run, preflight.onnx)
    except KeyboardInterrupt:
        checkpoint = None if preflight.checkpoint is None else preflight.checkpoint.path
        if parallel.is_main:
            print(_interrupted_line(args, checkpoint, saved_epochs[-1] if saved_epochs else None,
                                    launcher="torchrun [its options] -m nas" if parallel.distributed else "nas"),
                  file=sys.stderr)
        return EXIT_INTERRUPTED
    if parallel.is_main and args.json:
        print(json.dumps(record, indent=2, allow_nan=False))
    elif parallel.is_main:
        _print_result(result, record["evaluated_on"])
    return 0 if result.ok else EXIT_FAILED


def _loader_workers(requested: int | None) -> int:
    """``--loader-workers``, by default the CPU count shared by this node's ranks (torchrun's LOCAL_WORLD_SIZE), at
    most 8 per rank."""
    if requested is not None:
        check_int("--loader-workers", requested, 0, 256)
        return requested
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(8, (os.cpu_count() or 1) // ranks))


def _folder_loading(args: argparse.Namespace, progressive: Any) -> tuple[int | None, str | None]:
    """The size to load ``--data`` at and, for an image folder that is streamed, why (``--stream``, or the cache
    that would not fit in memory), else None. A progressive run decodes a folder at its largest stage's size, so
    no stage upsamples cached images."""
    source, _, argument = args.data.partition(":")
    if source != "imagefolder":
        if args.stream:
            raise ValueError(f"--stream reads image folders (--data imagefolder:DIR), not {source}")
        return args.image_size, None
    size = args.image_size or (max(progressive.image_size) if progressive is not None else None)
    if args.stream:
        reason = "--stream"
    else:
        from nas.streaming import cache_refusal

        # torchrun's ranks of this node each load their own copy of a cached folder
        refusal = cache_refusal(argument, size, processes=max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
        reason = None if refusal is None else f"the cached path would not fit: {refusal}"
    if reason is not None and args.eval_data:
        raise ValueError(f"a streamed image folder is evaluated on its own hold-out: --eval-data is not available "
                         f"when {args.data} is streamed ({reason})")
    return size, reason


def _ranks_line(parallel: Any, config: Any, data: Any) -> str:
    """How a data-parallel run shares its work: ranks, each rank's share of the global batch, batch norm."""
    from nas.recipe import resolve_recipe

    batch = resolve_recipe(config, train_images=len(data.train_labels), flips=data.flips).batch_size
    norm = "global (--sync-bn)" if parallel.sync_batch_norm else "per rank (add --sync-bn for global statistics)"
    return (f"data-parallel: {parallel.world_size} ranks on {config.device}, global batch {batch} = "
            f"{parallel.world_size} x {parallel.share(batch)}; batch norm {norm}; rank 0 prints and writes")


def _training_progress(config: Any, data: Any) -> Any:
    """Progress within epochs on stderr: redrawn in place on a terminal, a line every 30 s otherwise."""
    from nas.progress import TrainingProgress
    from nas.recipe import resolve_recipe

    recipe = resolve_recipe(config, train_images=len(data.train_labels), flips=data.flips)
    return TrainingProgress(sys.stderr, epochs=recipe.epochs, batch_size=recipe.batch_size,
                            terminal=sys.stderr.isatty())


def _note_unused_arrays(source: str) -> None:
    """Names the arrays of an npz source that the run leaves aside (a test split), rather than ignoring them."""
    from nas.sources import npz_unused_arrays

    unused = npz_unused_arrays(source)
    if unused:
        print(f"note: the file also holds {', '.join(unused)}, which this run does not read: the hold-out is drawn "
              "from the training arrays (a test split never steers a search)", file=sys.stderr)


def _training_line(name: str, data: Any, config: Any) -> str:
    """What a run trains on: the data's split, channels and classes, and its image size or progressive schedule."""
    progressive = config.progressive
    size = (f"progressive {progressive.image_size[0]}->{progressive.image_size[1]}px in {progressive.num_stages} "
            "stages" if progressive else f"{config.image_size or data.image_size}px")
    evaluation = ("hold-out" if data.evaluation is None else
                  f"evaluation (every epoch, from {data.evaluation}: a test set, never a search's)")
    return (f"training {name} on {data.name}: {len(data.train_labels):,} train / {len(data.val_labels):,} "
            f"{evaluation} images, {data.in_channels} channel(s), {data.num_classes} classes, {size}")


def _recipe_line(config: Any, data: Any) -> str:
    """The automatic settings as this run resolves them for its data (README, Proxy training)."""
    from nas.recipe import resolve_recipe
    from nas.sources import flip_rule

    recipe = resolve_recipe(config, train_images=len(data.train_labels), flips=data.flips)
    steps = len(data.train_labels) // recipe.batch_size
    chosen = [name for name, given in (("batch", config.batch_size), ("lr", config.learning_rate),
                                       ("warm-up", config.warmup_steps)) if given is None]
    augment = recipe.augment + (f" (auto: {flip_rule(data.name)})" if config.augment == "auto" else "")
    return (f"recipe: batch {recipe.batch_size} ({steps} steps per epoch), {recipe.optimizer} lr "
            f"{recipe.learning_rate:g}, warm-up {recipe.warmup_steps} steps, augment {augment}"
            + (f"; automatic: {', '.join(chosen)}" if chosen else ""))


def _interrupted_line(args: argparse.Namespace, checkpoint: Path | None, last_saved: int | None, *,
                      launcher: str = "nas") -> str:
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
    return f"nas train: interrupted; {saved}; resume with: {launcher} {shlex.join(command)}"


def _export_onnx(saved: Any, output: Path) -> None:
    """Exports the weights of a saved run (:class:`nas.train.SavedRun`) as ONNX, the run's normalization folded in
    and what to feed it in the file's metadata (:mod:`nas.onnx_export`); says how close ONNX Runtime's logits came
    to PyTorch's and what the graph takes."""
    from nas.onnx_export import export_weights_onnx

    difference = export_weights_onnx(saved.spec, saved.weights, output, saved.input)
    size, channels = saved.input.image_size, saved.input.in_channels
    print(f"wrote {output}: ONNX logits match PyTorch's within {difference:.2g}; it takes float32 (batch, {channels}, "
          f"{size}, {size}) pixels in [0, 1] and normalizes them itself (its metadata says so)", file=sys.stderr)


def _print_epoch(stats: Any) -> None:
    width = 20
    done = round(width * stats.epoch / stats.epochs)
    print(
        f"epoch {stats.epoch:>{len(str(stats.epochs))}}/{stats.epochs} [{'#' * done}{'.' * (width - done)}] "
        f"{stats.image_size}px  loss {stats.loss:.4f}  train acc {stats.train_accuracy:.1%}  "
        + ("" if stats.eval_accuracy is None else f"eval acc {stats.eval_accuracy:.2%}  ")
        + f"{stats.images_per_second:,.0f} img/s over the epoch",
        file=sys.stderr,
        flush=True,
    )


def _print_result(result: Any, evaluated_on: dict[str, Any]) -> None:
    def number(value: float | None, text: str) -> str:
        return "-" if value is None else text

    rows = [
        ["status", result.status + (f": {result.failure_reason}" if result.failure_reason else "")],
        ["accuracy", number(result.accuracy, f"{(result.accuracy or 0):.2%}")],
        ["evaluated on", f"{evaluated_on['images']:,} images: {evaluated_on['data']}"],
        ["final train loss", number(result.final_loss, f"{(result.final_loss or 0):.4f}")],
        ["step time (median)", number(result.step_time_s, f"{(result.step_time_s or 0) * 1e3:.2f} ms")],
        ["step time (IQR)", number(result.step_time_iqr_s, f"{(result.step_time_iqr_s or 0) * 1e3:.2f} ms")],
        ["images/s (timed step alone)", number(result.images_per_second, f"{(result.images_per_second or 0):,.1f}")],
        ["parameters", number(result.parameters, f"{(result.parameters or 0):,}")],
        ["FLOPs", number(result.macs, f"{_format_macs(result.macs or 0)} multiply-adds per image")],
        ["peak memory", number(result.peak_memory_bytes,
                               _format_memory(result.peak_memory_bytes or 0, result.device or ""))],
        ["wall time", number(result.wall_time_s, f"{(result.wall_time_s or 0):.1f} s")],
        ["epochs", str(result.epochs_completed)],
        ["device", result.device or "-"],
    ]
    print(format_table(["result", "value"], rows))


def cmd_search(args: argparse.Namespace) -> int:
    from nas.campaign import (
        CampaignConfig,
        LockLostError,
        MachineryError,
        Terminated,
        load_campaign,
        run_campaign,
    )

    config = load_campaign(args.config) if args.config else CampaignConfig()
    config = config.with_overrides({name: getattr(args, name) for name in SEARCH_OVERRIDES})
    # Everything that can be refused is refused here, before a study, a directory or a Ray node exists.
    output = _output_path("--export", args.export) if args.export else best_spec_path(config.study)
    config.check_inputs()
    _note_unused_arrays(config.data)
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
    except (LockLostError, MachineryError) as error:
        print(f"nas search: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(_finished_line(outcome.finished, outcome.budget, outcome.ran))
    if outcome.best_spec is not None:
        dump_spec(outcome.best_spec, output)
        baseline_won = _record_export(config.storage_url, config.study, output, outcome.best_trial)
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
        return (f"{finished} trials finished (budget {budget}, already met; none ran now): nothing to do; raise "
                f"--trials above {finished} to search more")
    if finished > budget:
        return f"{finished} trials finished (budget {budget}; {ran} in this run)"
    return f"{finished}/{budget} trials finished ({ran} in this run)"


def _record_export(storage_url: str, study: str, path: Path, best_trial: int | None) -> bool | None:
    """Records where the best spec was written in the study (:func:`nas.study.record_export`) and says whether
    ``best_trial`` is the baseline. The spec is already written: a storage that refuses is a warning on stderr, not
    a failed search; None when the study could not tell."""
    from nas.storage import StudyError
    from nas.study import record_export

    try:
        return record_export(storage_url, study, path, best_trial)
    except StudyError as error:
        print(f"nas search: warning: the study does not record where the best spec was written: {error}",
              file=sys.stderr)
        return None


def _storage_url(args: argparse.Namespace) -> str:
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
    """Prints a trials table (:func:`nas.trials.trials_frame`): CSV and JSON with every column, for scripts; text
    with the columns that rank a trial, narrow enough for a terminal (:func:`nas.trials.text_table`)."""
    if output_format == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    elif output_format == "json":
        print(frame.to_json(orient="records", indent=2))
    elif len(frame):
        from nas.trials import text_table

        print(text_table(frame))
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
    check_int("-k", args.k, 1)
    study = _open_study(args)
    if args.pareto:
        _print_frame(query.apply(trials_frame(study, pareto_front(study))), args.format)
    else:  # every complete trial by reward, so that the filters pick the best k among the trials they keep
        ranked = best_trials(study, None)
        _print_frame(query.apply(trials_frame(study, ranked), limit=args.k), args.format)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from nas.report import write_report

    output = _output_path("-o", args.output or report_directory(args.study))
    report = write_report(_open_study(args), output, force=args.force)
    for name, reason in report.not_drawn.items():
        print(f"figure {name} not drawn: {reason}", file=sys.stderr)
    print(f"wrote {report.path} with {len(report.figures)} figure(s)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Writes a trial's spec (the best by default) as YAML, saying the classes and input channels it was searched
    for (:func:`nas.study.exported_spec`), or prints it as timm block strings."""
    from nas.study import exported_spec
    from nas.trials import trial_to_export

    output = _output_path("-o", args.output) if args.output is not None else None
    study = _open_study(args)
    trial = trial_to_export(study, args.trial)
    spec = exported_spec(study, trial, name=args.name or trial_spec_name(args.study, trial.number))
    if args.format == "timm":
        blocks = "\n".join(f"    [{block!r}]," for block in timm_arch_def(spec))
        print(f"# {spec.name}: timm EfficientNet arch_def; stem_size={spec.stem_channels}, "
              f"num_features={spec.head_channels}\narch_def = [\n{blocks}\n]")
        return 0
    if _write_spec(spec, output, force=args.force):
        print(f"wrote trial {trial.number} (reward {trial.value:.4f}) to {output}")
    return 0


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "show": cmd_show, "scale": cmd_scale, "space": cmd_space, "bench": cmd_bench, "train": cmd_train,
    "search": cmd_search, "trials": _reads_study(cmd_trials), "best": _reads_study(cmd_best),
    "export": _reads_study(cmd_export), "report": _reads_study(cmd_report),
}


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
        return _HANDLERS[args.command](args)
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
