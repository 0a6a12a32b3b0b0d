"""The promise, measured: does the searched network reach the baseline's accuracy in less training time?

EfficientNetV2's claim, and this project's reason to exist, is that a training-aware search finds a network that
trains to the baseline's accuracy faster on the user's device. This benchmark trains, with the same recipe, on all
of ``--data`` and evaluating on ``--eval-data`` (the official test set) after every epoch:

- ``baseline``: the space's backbone (``--baseline``, default the ``tiny`` preset);
- ``winner``: the campaign's exported winner (``--winner``, default ``runs/fashion-best.yaml`` from
  ``nas search --config experiments/fashion.yaml``);
- ``winner-progressive``: the winner with progressive learning (image size ``--min-image-size`` to the data's over
  4 stages, RandAugment 2 to 6 and dropout 0.1 to 0.2 growing with it, random-resized crops);
- ``winner-equal-time``: the winner trained for about the baseline's time, ``--epochs / S/S0`` epochs (the fair
  form of "more accurate at equal time": the 20-epoch winner simply stops early).

each for ``--epochs`` (default 20) with every seed of ``--seeds`` (default 0,1,2), ``--workers`` processes of
``--threads`` torch threads. Every finished run goes into the JSONL results file at once, so a run cut short
resumes where it stopped; ``--table-only`` prints the tables and draws the figure from the file.

Time to the target (the baseline's final test accuracy, mean over seeds) is computed twice per arm, from the mean
curve over seeds (:func:`time_to_target`):
- from wall time: the training seconds of the epochs (images / the epoch's measured images/s; evaluation and the
  step-time measurement are not training), summed up to the epoch where the curve reaches the target (linear
  between epochs);
- from paired step time: epochs to the target x steps per epoch x the arm's step time relative to the baseline's,
  S/S0, timed in interleaved pairs at the training settings (:func:`nas.timing.relative_step_time`), in units of
  the baseline's own time to the target. This one is robust to a machine whose load changes between runs; the
  progressive arm has no single S/S0 (its image size changes), so it has only the first. S/S0 is measured once,
  as a campaign does (until its 95% interval is within ``--timing-precision``).

The target of issue 29: the winner reaches the baseline's final accuracy in at most 2/3 of the baseline's training
time (a speed-up of at least 1.5), or is at least 0.5 points more accurate at equal time.

    python benchmarks/fashion_mnist.py DIR -o data/                 # the data, once
    nas search --config experiments/fashion.yaml                   # the winner: runs/fashion-best.yaml
    python benchmarks/bench_promise.py --workers 2                 # 12 runs, 9 of them of 20 epochs
    python benchmarks/bench_promise.py --table-only                # the tables and docs/promise.png again
"""

from __future__ import annotations

import argparse
import functools
import io
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere, and in the spawned workers
    sys.path.insert(0, str(ROOT))

from benchmarks.common import JsonlResults, add_device_argument, markdown_table, worker_results  # noqa: E402

ARMS = ("baseline", "winner", "winner-progressive", "winner-equal-time")
EQUAL_TIME = "winner-equal-time"  # the winner trained for about the baseline's time: epochs / S/S0
TARGET_SPEED_UP = 1.5  # the winner at the baseline's final accuracy in at most 2/3 of its time
TARGET_POINTS = 0.5  # or this many points more accurate at equal time
DATA = "npz:data/fashion-mnist-20k.npz"
EVAL_DATA = "npz:data/fashion-mnist.npz?images=x_test&labels=y_test"
AT_BASELINE_TIME = "accuracy at the baseline's time"


# --- curves: pure arithmetic ----------------------------------------------------------------------------------------

def cumulative(values: Sequence[float]) -> list[float]:
    total, out = 0.0, []
    for value in values:
        total += value
        out.append(total)
    return out


def time_to_target(accuracies: Sequence[float], times: Sequence[float], target: float) -> float | None:
    """When a learning curve first reaches ``target``: ``accuracies[i]`` was measured at cumulative time
    ``times[i]`` (the end of epoch i + 1); linear between two epochs, the first epoch's time if it is already there
    (nothing is known before it), None if never.

    Example: accuracies 0.80, 0.86, 0.90 at 10, 20, 30 s, target 0.88: between 20 s and 30 s, halfway: 25 s.
    """
    for index, accuracy in enumerate(accuracies):
        if accuracy >= target:
            if index == 0:
                return times[0]
            before, after = accuracies[index - 1], times[index - 1]
            share = (target - before) / (accuracy - before)
            return after + share * (times[index] - after)
    return None


def accuracy_at(accuracies: Sequence[float], times: Sequence[float], when: float) -> float | None:
    """A learning curve's accuracy at time ``when``, linear between epochs; None before its first epoch ended;
    its last accuracy after its end (training has stopped there).

    Example: 0.80, 0.86 at 10, 20 s: 0.83 at 15 s; 0.86 at 40 s.
    """
    if when < times[0]:
        return None
    for index in range(1, len(times)):
        if when <= times[index]:
            share = (when - times[index - 1]) / (times[index] - times[index - 1])
            return accuracies[index - 1] + share * (accuracies[index] - accuracies[index - 1])
    return accuracies[-1]


def mean_curve(curves: Sequence[Sequence[float]]) -> list[float]:
    """The epoch-by-epoch mean of equally long curves (one per seed)."""
    return [statistics.fmean(values) for values in zip(*curves, strict=True)]


def speed_up(baseline_time: float | None, arm_time: float | None) -> float | None:
    """How many times faster than the baseline an arm reaches the target; None when either never does."""
    if baseline_time is None or arm_time is None or arm_time <= 0:
        return None
    return baseline_time / arm_time


# --- runs -----------------------------------------------------------------------------------------------------------

def arm_epochs(arm: str, args: argparse.Namespace) -> int:
    """``args.epochs``, except for the equal-time arm: as many epochs as the baseline's time buys the winner,
    ``args.epochs / S/S0`` rounded (``args.equal_time_epochs``, set once S/S0 is known)."""
    return args.equal_time_epochs if arm == EQUAL_TIME else args.epochs


def train_config(arm: str, seed: int, args: argparse.Namespace, data_image_size: int) -> Any:
    """The recipe of ``arm``: the project's automatic one for its epochs (:func:`arm_epochs`), with progressive
    learning for the progressive arm."""
    from nas.progressive import ProgressiveConfig
    from nas.recipe import TrainConfig

    common = dict(epochs=arm_epochs(arm, args), seed=seed, device=args.device, threads=args.threads,
                  measure_step_time=False)
    if arm != "winner-progressive":
        return TrainConfig(**common)
    progressive = ProgressiveConfig(num_stages=4, image_size=(args.min_image_size, data_image_size),
                                    dropout=(0.1, 0.2), randaugment_magnitude=(2.0, 6.0), mixup_alpha=(0.0, 0.0))
    return TrainConfig(**common, progressive=progressive, augment="resized_crop", eval_image_size=data_image_size)


def spec_of(arm: str, args: argparse.Namespace) -> Any:
    from search_spaces import presets

    return presets.resolve_spec(args.baseline if arm == "baseline" else str(args.winner))


def run_key(arm: str, seed: int, args: argparse.Namespace) -> str:
    spec = spec_of(arm, args)
    return f"train|{arm}|{seed}|{arm_epochs(arm, args)}|{args.min_image_size}|{args.data}|{args.eval_data}|" \
           f"{' '.join(spec.block_strings)}"


_DATA: dict[tuple[str, str], Any] = {}


def run(task: tuple[str, int, str], args: argparse.Namespace) -> dict[str, Any]:
    """Trains one arm with one seed, evaluating on the test set after every epoch; never raises."""
    from nas.data import load_data_with_evaluation
    from nas.train import train_and_evaluate

    arm, seed, key = task
    record: dict[str, Any] = {"key": key, "kind": "train", "arm": arm, "seed": seed}
    start = time.perf_counter()
    try:
        if (args.data, args.eval_data) not in _DATA:
            _DATA[args.data, args.eval_data] = load_data_with_evaluation(args.data, args.eval_data)
        data = _DATA[args.data, args.eval_data]
        result = train_and_evaluate(spec_of(arm, args), data, train_config(arm, seed, args, data.image_size),
                                    evaluate_each_epoch=True)
        images = len(data.train_labels)
        record.update(status=result.status, failure_reason=result.failure_reason, accuracy=result.accuracy,
                      parameters=result.parameters, device=result.device, wall_time_s=result.wall_time_s,
                      eval_images=len(data.val_labels), train_images=images,
                      curve=[{"epoch": epoch.epoch, "eval_accuracy": epoch.eval_accuracy,
                              "train_seconds": images / epoch.images_per_second, "image_size": epoch.image_size}
                             for epoch in result.history])
    except Exception as error:  # a benchmark of many runs records a failure and goes on
        record.update(status="failed", failure_reason=f"{type(error).__name__}: {error}",
                      wall_time_s=time.perf_counter() - start)
    return record


def time_pair(args: argparse.Namespace, results: JsonlResults) -> dict[str, Any]:
    """S/S0 of the winner against the baseline at the training settings (the data's size, the recipe's batch),
    in interleaved windows, once (kept in the results file)."""
    from nas.data import load_data
    from nas.measure import describe_device, resolve_device
    from nas.recipe import TimingConfig, resolve_recipe
    from nas.timing import relative_step_time

    key = (f"timing|{run_key('winner', 0, args)}|{spec_of('baseline', args).block_strings}|{args.timing_pairs}|"
           f"{args.timing_precision}")
    if key in results:
        return results.records[key]
    data = load_data(args.data)
    images = len(data.train_labels) + len(data.val_labels)  # the runs train on all of it
    recipe = resolve_recipe(train_config("winner", 0, args, data.image_size), train_images=images, flips=data.flips)
    device = resolve_device(args.device)
    fixed = not args.timing_precision  # exactly --timing-pairs, as before issue 27: no contention check either
    settings = TimingConfig(pairs=args.timing_pairs, window_s=0.25, precision=None if fixed else args.timing_precision,
                            max_stall=None if fixed else TimingConfig.max_stall).resolved(
        image_size=data.image_size, batch_size=recipe.batch_size)
    timing = relative_step_time(spec_of("winner", args), spec_of("baseline", args), settings, device=device,
                                num_classes=data.num_classes, in_channels=data.in_channels)
    record = {"key": key, "kind": "timing", **timing.measurement(), "batch_size": recipe.batch_size,
              "image_size": data.image_size, "steps_per_epoch": images // recipe.batch_size,
              "device": describe_device(device)}
    results.append(record)
    return record


# --- the report -----------------------------------------------------------------------------------------------------

def arm_curves(records: Sequence[dict[str, Any]], arm: str) -> tuple[list[list[float]], list[list[float]]]:
    """Per seed of ``arm`` (finished runs only): test accuracy after each epoch and cumulative training seconds."""
    runs = [record for record in records if record.get("kind") == "train" and record["arm"] == arm
            and record["status"] == "ok"]
    accuracies = [[epoch["eval_accuracy"] for epoch in run["curve"]] for run in runs]
    times = [cumulative([epoch["train_seconds"] for epoch in run["curve"]]) for run in runs]
    return accuracies, times


def summarize(records: Sequence[dict[str, Any]], timing: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per arm: final accuracy, time to the baseline's final mean accuracy (wall and paired) and the
    speed-up against the baseline, and accuracy at the baseline's full training time."""
    baseline_accuracies, baseline_times = arm_curves(records, "baseline")
    if not baseline_accuracies:
        return []
    target = statistics.fmean(curve[-1] for curve in baseline_accuracies)
    baseline_curve, baseline_clock = mean_curve(baseline_accuracies), mean_curve(baseline_times)
    baseline_wall = time_to_target(baseline_curve, baseline_clock, target)
    baseline_epochs = time_to_target(baseline_curve, list(range(1, len(baseline_curve) + 1)), target)
    rows = []
    for arm in ARMS:
        accuracies, times = arm_curves(records, arm)
        if not accuracies:
            continue
        curve, clock = mean_curve(accuracies), mean_curve(times)
        finals = [run[-1] for run in accuracies]
        wall = time_to_target(curve, clock, target)
        epochs = time_to_target(curve, list(range(1, len(curve) + 1)), target)
        ratio = 1.0 if arm == "baseline" else (timing or {}).get("step_time_ratio")
        paired = None
        if arm != "winner-progressive" and epochs is not None and baseline_epochs and ratio is not None:
            paired = epochs * ratio / baseline_epochs  # in units of the baseline's own time to the target
        parameters = next(record["parameters"] for record in records if record.get("arm") == arm
                          and record.get("status") == "ok")
        rows.append({"arm": arm, "seeds": len(finals), "parameters": parameters,
                     "final accuracy": f"{100 * statistics.fmean(finals):.2f} ± "
                                       f"{100 * (statistics.stdev(finals) if len(finals) > 1 else 0):.2f}",
                     "S/S0": "-" if arm == "winner-progressive" or ratio is None else f"{ratio:.3f}",
                     "training s (mean)": f"{clock[-1]:.0f}",
                     "s to target": "not reached" if wall is None else f"{wall:.0f}",
                     "speed-up (wall)": _times(speed_up(baseline_wall, wall)),
                     "speed-up (paired)": _times(None if paired is None else 1 / paired),
                     AT_BASELINE_TIME: _percent(accuracy_at(curve, clock, baseline_clock[-1])),
                     "_wall": speed_up(baseline_wall, wall),
                     "_at_time": accuracy_at(curve, clock, baseline_clock[-1]), "_target": target})
    return rows


def _interval(timing: dict[str, Any]) -> str:
    """``95% interval 0.398-0.409, 24 pairs`` (timings recorded before S/S0 had an interval: the pairs' IQR)."""
    low, high = timing.get("step_time_ratio_low"), timing.get("step_time_ratio_high")
    if low is None or high is None:
        return f"pairs IQR {timing['step_time_ratio_iqr']:.3f}"
    return f"95% interval {low:.3f}-{high:.3f}, {timing['step_time_pairs']} pairs"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def verdict(rows: Sequence[dict[str, Any]]) -> str:
    """Whether the winner (fixed size) meets issue 29's target: a speed-up of at least 1.5 to the baseline's final
    accuracy, or 0.5 points more accuracy at the baseline's training time (the winner's own 20 epochs, flat after
    their end, or the equal-time arm, which trains for about that time)."""
    winner = next((row for row in rows if row["arm"] == "winner"), None)
    if winner is None:
        return "target: no finished winner run yet"
    faster = winner["_wall"] is not None and winner["_wall"] >= TARGET_SPEED_UP
    at_time = [row["_at_time"] for row in rows if row["arm"] in ("winner", EQUAL_TIME) and row["_at_time"] is not None]
    best_at_time = max(at_time, default=None)
    better = best_at_time is not None and 100 * (best_at_time - winner["_target"]) >= TARGET_POINTS
    held = "HOLDS" if faster or better else "does NOT hold"
    return (f"target: the winner reaches the baseline's final accuracy {100 * winner['_target']:.2f}% at least "
            f"{TARGET_SPEED_UP}x faster, or is {TARGET_POINTS} points more accurate at equal time: {held} (speed-up "
            f"{winner['speed-up (wall)']}, best accuracy at the baseline's time {_percent(best_at_time)})")


def figure(records: Sequence[dict[str, Any]], path: Path) -> None:
    """Test accuracy against training seconds, one colour per arm: each seed thin, the mean thick; the dashed line
    is the target (the baseline's final mean). Written through the safe-write helper."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from search_spaces.files import write_file

    figure_, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    target = None
    for arm, colour in zip(ARMS, ("tab:gray", "tab:blue", "tab:orange", "tab:green")):
        accuracies, times = arm_curves(records, arm)
        if not accuracies:
            continue
        for curve, clock in zip(accuracies, times):
            axes.plot(clock, [100 * a for a in curve], color=colour, alpha=0.3, linewidth=0.8)
        axes.plot(mean_curve(times), [100 * a for a in mean_curve(accuracies)], color=colour, linewidth=2,
                  label=f"{arm} (mean of {len(accuracies)})")
        if arm == "baseline":
            target = 100 * statistics.fmean(curve[-1] for curve in accuracies)
    if target is not None:
        axes.axhline(target, color="black", linestyle="--", linewidth=0.8, label="baseline's final mean")
    axes.set_xlabel("training time (s; evaluation excluded)")
    axes.set_ylabel("test accuracy (%)")
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure_.tight_layout()
    figure_.savefig(buffer, format="png")
    plt.close(figure_)
    write_file(path, buffer.getvalue())


# --- the command ----------------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DATA, help="training data, all of it (default %(default)s)")
    parser.add_argument("--eval-data", default=EVAL_DATA, help="test data (default %(default)s)")
    parser.add_argument("--baseline", default="tiny", help="the baseline spec (default %(default)s)")
    parser.add_argument("--winner", type=Path, default=Path("runs/fashion-best.yaml"),
                        help="the campaign's winner (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default %(default)s)")
    parser.add_argument("--min-image-size", type=int, default=16, help="the progressive arm's first size")
    parser.add_argument("--timing-pairs", type=int, default=7, help="pairs of windows of the S/S0 timing (at least)")
    parser.add_argument("--timing-precision", type=float, default=0.02, metavar="SHARE",
                        help="time pairs until S/S0's 95%% interval is this narrow (a share of S/S0); 0: exactly "
                             "--timing-pairs (default %(default)s)")
    add_device_argument(parser, "training and timing device")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path, default=ROOT / "runs" / "promise" / "promise.jsonl")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "promise.png")
    parser.add_argument("--table-only", action="store_true", help="the tables and figure from the results file")
    args = parser.parse_args(argv)
    try:
        args.seeds = [int(value) for value in args.seeds.split(",")]
    except ValueError:
        parser.error("--seeds are comma-separated integers")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    results = JsonlResults(args.results)
    timing = None
    if not args.table_only:
        timing = time_pair(args, results)
        print(f"S/S0 of the winner at the training settings: {timing['step_time_ratio']:.3f} "
              f"({_interval(timing)}; {timing['image_size']}px, batch {timing['batch_size']})", flush=True)
        args.equal_time_epochs = max(1, round(args.epochs / timing["step_time_ratio"]))
        print(f"the equal-time arm trains {args.equal_time_epochs} epochs ({args.epochs} / S/S0)", flush=True)
        tasks = [(arm, seed, run_key(arm, seed, args)) for arm in ARMS for seed in args.seeds]
        pending = [task for task in tasks if task[2] not in results]
        print(f"runs: {len(pending)} of {len(tasks)} to train ({len(tasks) - len(pending)} in {args.results})",
              flush=True)
        work = functools.partial(run, args=args)
        for number, record in enumerate(worker_results(work, pending, workers=args.workers, threads=args.threads),
                                        start=1):
            results.append(record)
            outcome = (f"test {100 * record['accuracy']:.2f}%" if record["status"] == "ok"
                       else f"FAILED: {record['failure_reason']}")
            print(f"  [{number}/{len(pending)}] {record['arm']} seed {record['seed']}: {outcome}, "
                  f"{record['wall_time_s']:.0f} s", flush=True)
    records = list(results.records.values())
    timing = timing or next((record for record in records if record.get("kind") == "timing"), None)
    rows = summarize(records, timing)
    if not rows:
        print("no finished baseline run: nothing to compare yet")
        return
    shown = [name for name in rows[0] if not name.startswith("_")]
    print(markdown_table(shown, [[str(row[name]) for name in shown] for row in rows]))
    print(verdict(rows))
    figure(records, args.figure)
    print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
