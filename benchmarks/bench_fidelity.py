"""Does proxy accuracy rank candidates as real training does?

A search never trains a candidate fully: it ranks candidates by a proxy (a few epochs at a reduced image size) and
keeps the best. That is only sound if the proxy orders candidates as the real training would. This benchmark
measures it on ``--candidates`` architectures of a space (default: 24 of ``tiny``: the space's baseline and
distinct samples drawn with one generator seeded by ``--sample-seed``):

- proxy: each candidate trained for 1, 3 and 10 epochs (``--proxy-epochs``; each a separate full run with its own
  learning-rate schedule, as a campaign's proxy would be) at ``--proxy-image-size`` (default 24 px);
- reference: each candidate trained for ``--reference-epochs`` (default 40) at the data's own image size;
- both for every seed of ``--seeds`` (default 0,1; the TrainConfig seed: initialization, batch order,
  augmentation; the hold-out split is the same for all, ``load_data(..., seed=0)``);
- S/S0 once per candidate against the baseline (:func:`nas.timing.time_relative`, paired windows) at the tiny
  campaign's default timing settings (the baseline's training image size, batch 32), and P/P0 from
  :func:`nas.complexity.count_spec`; reward = A * (S/S0)^-0.07 * (P/P0)^-0.05 (:func:`rewards.training_aware_reward`).

Every run uses the project's default recipe: ``TrainConfig(epochs, image_size, seed, device, threads)`` and
``measure_step_time`` off (as a campaign's runner sets it), nothing else, so the benchmark follows the recipe as it
changes; the header prints it as resolved for the data (batch, learning rate, warm-up, augmentation). The jobs (candidate x seed x {each proxy, reference})
run in ``--workers`` processes (spawn), reference runs first (longest first, so the workers finish together),
each process with ``--threads`` torch threads; on a GPU several workers share the device. Every finished job is
appended to the results file (JSONL, ``--results``, default under runs/fidelity/) and flushed, so a run cut short
resumes where it stopped when started again with the same file and settings; ``--table-only`` prints the tables
from the file. A job that fails is recorded with its reason and counted in the tables.

    python benchmarks/bench_fidelity.py --data npz:tests/data/mnist5k.npz --workers 2   # 24 candidates, 192 jobs
    python benchmarks/bench_fidelity.py --data synthetic:image_size=32 --workers 2
    python benchmarks/bench_fidelity.py --data npz:tests/data/mnist5k.npz --device cuda --workers 14
    python benchmarks/bench_fidelity.py --data npz:tests/data/mnist5k.npz --device cuda --table-only
    python benchmarks/bench_fidelity.py --quick                          # CI size: 4 candidates, 24 jobs, ~1 min

(Give synthetic data its native size, ``synthetic:image_size=32``: without it the proxy's images are drawn at the
proxy size rather than resized from the reference's.) Cost, mnist5k (4,000 training images; the automatic recipe
trains them at batch 16): on the 2-core development machine (AMD EPYC, 1 thread a job) a 20-epoch reference job
takes about 140 s of CPU (so a 40-epoch one about 280 s) and the 1-, 3- and 10-epoch proxies 6, 16 and 61 s: the
192 jobs at the defaults are about 4.8 CPU-hours (2.4 h with 2 workers on an otherwise idle machine), 3 CPU-hours
with ``--reference-epochs 20``. On one H200 with 14 workers sharing it, 40-epoch reference jobs took 90-220 s each
(the small steps are bound by kernel launches); the whole run comes to about 13 minutes there (extrapolated
from a run stopped after the first 32 jobs).

How to read the tables. For each proxy (E epochs) and each quantity (accuracy A, reward), the mean over seeds of
the proxy is compared with the mean over seeds of the reference: Spearman (Pearson correlation of the average
ranks), Kendall tau-b (pairs ordered alike minus pairs ordered oppositely, ties corrected) and the top-3 overlap
(how many of the reference's 3 best candidates are among the proxy's 3 best; ties broken by candidate order).
The floor row ranks by the reward's S/S0 and P/P0 terms alone (every A equal) against the reference's reward:
both sides share those terms, so where accuracies differ little (MNIST) the reward rows come out high whatever
the proxy does, and the A rows are the ones that tell.
The ceiling rows say how much agreement there is to be had: the reference against itself with another seed
(seed 0 vs seed 1; with more seeds, the mean over seed pairs), and the same for the longest proxy. A proxy
cannot be expected to agree with the reference better than the reference agrees with itself; a ceiling near 0
means the candidates differ less than a seed changes them, and the benchmark then cannot tell a good proxy from
a bad one (more candidates that differ more, or more seeds, are needed). The seed-to-seed rows compare single
seeds: means over two seeds are less noisy, so the proxy rows may come out somewhat above them. Each Spearman
comes with a 90% bootstrap interval over the candidates (``--bootstrap`` resamples): with 16-24 candidates a rank
correlation is known to about +-0.15. The targets (issue 29): the reference's own seed-to-seed Spearman of A >= 0.8
(the data separates the candidates) and the 10-epoch proxy's A >= 0.8; the last lines say whether they hold.
The reward-balance table (:func:`reward_balance`) asks of the references what the reward ranks by: with the
paper's exponents and smaller ones, how far log A and log (S/S0)^w (P/P0)^v spread over the candidates and which
of the two the reward's ranking follows; its last line gives the exponents at which the two weigh alike.

With ``--eval-data SOURCE`` (a test set) each reference trains on all of ``--data`` and is evaluated on SOURCE,
while the proxies keep their hold-out of ``--data``, as a campaign's do (a test set never steers a search):

    python benchmarks/bench_fidelity.py --data npz:data/fashion-mnist-20k.npz --candidates 16 --reference-epochs 20 \
        --eval-data 'npz:data/fashion-mnist.npz?images=x_test&labels=y_test' --workers 2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import itertools
import json
import math
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere, and in the spawned workers
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    JsonlResults,
    add_device_argument,
    bootstrap_interval,
    kendall_tau_b,
    markdown_table,
    spearman,
    worker_results,
)
from nas.complexity import count_spec  # noqa: E402
from nas.recipe import TimingConfig, TrainConfig, resolve_recipe  # noqa: E402
from rewards import PARAMS_EXPONENT, STEP_TIME_EXPONENT, training_aware_reward  # noqa: E402
from search_spaces import presets  # noqa: E402
from search_spaces.space import SearchSpace  # noqa: E402
from search_spaces.spec import ArchSpec  # noqa: E402

TOP_K = 3
TARGET_SPEARMAN = 0.8  # for the 10-epoch proxy's A (issue 29; 0.7 on A and reward before)
TARGET_CEILING = 0.8  # the reference's own seed-to-seed Spearman of A: the data separates the candidates
CONFIDENCE = 0.9  # of the bootstrap intervals over candidates
REFERENCE = "reference"
FULL = {"data": "synthetic:image_size=32", "candidates": 24, "proxy_epochs": "1,3,10", "reference_epochs": 40,
        "proxy_image_size": 24, "timing_pairs": 3, "timing_window_s": 0.1, "timing_precision": 0.02}
QUICK = {"data": "synthetic:num_images=256,image_size=32", "candidates": 4, "proxy_epochs": "1,2", "reference_epochs": 2,
         "proxy_image_size": 16, "timing_pairs": 1, "timing_window_s": 0.02, "timing_precision": 0.0}
TIMING_BATCH_SIZE = 32  # the tiny campaign's timing batch
EXPONENT_SCALES = (1.0, 0.5, 0.25, 0.125, 0.0625)  # the paper's w and v times each, in the reward-balance table


# --- top-k overlap (Spearman and Kendall tau-b are benchmarks.common's) -----------------------------------------------

def top_k(values: Sequence[float], k: int = TOP_K) -> list[int]:
    """Indices of the ``k`` largest values, ties broken by index (the earlier candidate first)."""
    return [int(i) for i in np.argsort(-np.asarray(values, dtype=float), kind="stable")[:k]]


def top_k_overlap(proxy: Sequence[float], reference: Sequence[float], k: int = TOP_K) -> int:
    """How many of the reference's top ``k`` are among the proxy's top ``k``."""
    return len(set(top_k(proxy, k)) & set(top_k(reference, k)))


# --- candidates and jobs --------------------------------------------------------------------------------------------

def candidates(space: SearchSpace, count: int, sample_seed: int) -> list[ArchSpec]:
    """The space's baseline and ``count - 1`` distinct architectures sampled with ``random.Random(sample_seed)``."""
    return [space.baseline, *space.sample_distinct(count - 1, random.Random(sample_seed))]


@dataclass(frozen=True)
class Job:
    """One training run: candidate ``candidate`` with ``seed`` for ``epochs`` at ``image_size`` (None: the data's).

    ``column`` is the number of proxy epochs, or :data:`REFERENCE`.
    """

    candidate: int
    block_strings: tuple[str, ...]
    seed: int
    epochs: int
    image_size: int | None
    column: int | str


def train_config(job: Job, device: str, threads: int | None) -> TrainConfig:
    """The project's default recipe with only the run's own settings given, and the fields a campaign's runner
    owns (``nas.campaign``: device, threads, and ``measure_step_time`` off, as a campaign's proxy trains: timing
    its own proxy step would cost ~2 s a job and change nothing it trains)."""
    return TrainConfig(epochs=job.epochs, image_size=job.image_size, seed=job.seed, device=device, threads=threads,
                       measure_step_time=False)


RUN_FIELDS = ("epochs", "image_size", "seed", "device", "threads", "measure_step_time")  # in the key or immaterial


def resolved_recipe(job: Job, device: str, threads: int | None, data: Any) -> TrainConfig:
    """The job's recipe with its automatic settings filled in from the training set, as training will
    (:func:`nas.recipe.resolve_recipe`; the proxy's data has the same images, only smaller)."""
    return resolve_recipe(train_config(job, device, threads), train_images=len(data.train_labels), flips=data.flips)


def describe_recipe(recipes: dict[int | str, dict[str, Any]]) -> str:
    """The fields all runs share, and for those that differ (the warm-up, a share of the run's steps) each run's
    value, by run length."""
    shared = {}
    varying = []
    first = next(iter(recipes.values()))
    for name, value in first.items():
        if name in RUN_FIELDS:
            continue
        if all(recipe.get(name) == value for recipe in recipes.values()):
            shared[name] = value
        else:
            values = ", ".join(f"{_column_name(column)} {recipe.get(name)}" for column, recipe in recipes.items())
            varying.append(f"{name}: {values}")
    return json.dumps(shared) + "".join(f"; {text}" for text in varying)


def _column_name(column: int | str) -> str:
    return REFERENCE if column == REFERENCE else f"{column} ep"


def make_jobs(specs: Sequence[ArchSpec], seeds: Sequence[int], proxy_epochs: Sequence[int], reference_epochs: int,
              proxy_image_size: int, data_image_size: int) -> list[Job]:
    """Every (candidate, seed, proxy or reference) run, longest first: by epochs x pixels, then seed, candidate."""
    jobs = []
    for (index, spec), seed in itertools.product(enumerate(specs), seeds):
        for epochs in proxy_epochs:
            jobs.append(Job(index, spec.block_strings, seed, epochs, proxy_image_size, epochs))
        jobs.append(Job(index, spec.block_strings, seed, reference_epochs, None, REFERENCE))

    def cost(job: Job) -> int:
        return job.epochs * (job.image_size or data_image_size) ** 2

    return sorted(jobs, key=lambda job: (-cost(job), job.column != REFERENCE, job.seed, job.candidate))


def job_key(data: str, job: Job, recipe: TrainConfig, eval_data: str | None = None) -> str:
    """A job's identity in the results file: the data, architecture, seed, length, size and resolved recipe (a
    change of the project's default recipe makes every job new); a reference evaluated on ``eval_data`` (a test
    set) is another job than one evaluated on the hold-out."""
    fields = {name: value for name, value in recipe.to_dict().items() if name not in RUN_FIELDS}
    identity = ["train", data, list(job.block_strings), job.seed, job.epochs, job.image_size, fields]
    if eval_data is not None and job.column == REFERENCE:
        identity.append({"eval_data": eval_data})
    return json.dumps(identity, sort_keys=True)


def timing_key(data: str, block_strings: Sequence[str], settings: dict[str, Any]) -> str:
    return json.dumps(["timing", data, list(block_strings), settings], sort_keys=True)


# --- the results file -----------------------------------------------------------------------------------------------

def default_results_path(space: str, data: str, device: str, quick: bool) -> Path:
    """One file per space, data and kind of device (a CPU's and a GPU's accuracies are not mixed by a resume)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{space}-{data}-{device}").strip("_") + ("-quick" if quick else "")
    return ROOT / "runs" / "fidelity" / f"{name}.jsonl"


# --- the work -------------------------------------------------------------------------------------------------------

_DATA: dict[tuple[str, int | None, str | None], Any] = {}  # per process: each data set as a job needs it, loaded once
# A fifth of the data is held out (1,000 of mnist5k's digits): with the default tenth, 500 images, the reference's
# own seed-to-seed rank correlation of A was 0.31 on mnist5k (candidates within ~1.5% of each other).
VAL_FRACTION = 0.2


def load(source: str, image_size: int | None, eval_data: str | None = None):
    """``source`` at ``image_size`` with its hold-out split, or, with ``eval_data``, all of it to train on and all
    of ``eval_data`` (a test set) to evaluate on."""
    from nas.data import load_data, load_data_with_evaluation

    if (source, image_size, eval_data) not in _DATA:
        _DATA[source, image_size, eval_data] = (
            load_data(source, image_size=image_size, val_fraction=VAL_FRACTION, seed=0) if eval_data is None
            else load_data_with_evaluation(source, eval_data, image_size=image_size, seed=0))
    return _DATA[source, image_size, eval_data]


def run_job(task: tuple[Job, ArchSpec, str], data_source: str, device: str, threads: int | None,
            eval_data: str | None = None) -> dict[str, Any]:
    """Trains one job (``task``: the job, its spec and its key); a reference job with ``eval_data`` trains on all
    of the data and is evaluated on ``eval_data``. Never raises (a failure, data loading included, is a record with
    its reason)."""
    import torch

    from nas.train import train_and_evaluate

    job, spec, key = task
    evaluation = eval_data if job.column == REFERENCE else None
    record: dict[str, Any] = {"key": key, "kind": "train", "candidate": job.candidate,
                              "block_strings": list(job.block_strings), "seed": job.seed, "epochs": job.epochs,
                              "image_size": job.image_size, "column": job.column, "torch": torch.__version__}
    start = time.perf_counter()
    try:
        data = load(data_source, job.image_size, evaluation)
        record["evaluated_on"] = {"data": data.evaluated_on, "images": len(data.val_labels)}
        record["data_image_size"] = data.image_size
        result = train_and_evaluate(spec, data, train_config(job, device, threads))
        record.update(recipe=result.recipe or resolved_recipe(job, device, threads, data).to_dict(),
                      status=result.status, failure_reason=result.failure_reason, accuracy=result.accuracy,
                      device=result.device, parameters=result.parameters, final_loss=result.final_loss,
                      epochs_completed=result.epochs_completed, wall_time_s=result.wall_time_s)
    except Exception as error:  # a benchmark of many jobs records a failure and goes on
        record.update(status="failed", failure_reason=f"{type(error).__name__}: {error}",
                      wall_time_s=time.perf_counter() - start)
    return record


def time_candidates(specs: Sequence[ArchSpec], args: argparse.Namespace, settings: TimingConfig, data: Any,
                    records: dict[str, dict[str, Any]], results: JsonlResults) -> None:
    """S/S0 of every candidate not yet in ``records``, one after another in this process, before any training
    (timing windows never share the device), by the campaign's own :func:`~nas.timing.relative_step_time` (inside
    the device's timing lock; no step-time cache: the results file is this benchmark's)."""
    import torch

    from nas.measure import describe_device, resolve_device
    from nas.timing import relative_step_time

    device = resolve_device(args.device)
    baseline = specs[0]
    for index, spec in enumerate(specs):
        key = timing_key(args.data, spec.block_strings, settings.to_dict())
        if key in records:
            continue
        record: dict[str, Any] = {
            "key": key, "kind": "timing", "candidate": index, "block_strings": list(spec.block_strings),
            "parameters": count_spec(spec, num_classes=data.num_classes, in_channels=data.in_channels).parameters,
            "device": describe_device(device), "torch": torch.__version__,
        }
        if index == 0:  # the baseline against itself: 1 by definition, as a campaign's baseline
            record.update(status="ok", ratio=1.0, ratio_iqr=0.0)
        else:
            try:
                timing = relative_step_time(spec, baseline, settings, device=device, num_classes=data.num_classes,
                                            in_channels=data.in_channels)
                record.update(status="ok", ratio=timing.step_time_ratio, ratio_iqr=timing.step_time_ratio_iqr,
                              step_time_s=timing.step_time_s, reference_step_time_s=timing.reference_step_time_s)
            except Exception as error:
                record.update(status="failed", failure_reason=f"{type(error).__name__}: {error}")
        records[key] = record
        results.append(record)
        ratio = f"{record['ratio']:.3f}" if record["status"] == "ok" else record["failure_reason"]
        print(f"  S/S0 {index + 1}/{len(specs)}: {ratio}", flush=True)


def run_jobs(jobs: Sequence[tuple[Job, str]], specs: list[ArchSpec], args: argparse.Namespace,
             results: JsonlResults) -> None:
    """Runs ``jobs`` (with their keys) in ``args.workers`` spawned processes (in this one when 1), started in order
    (longest first), and records each as it finishes."""
    start = time.perf_counter()
    work = functools.partial(run_job, data_source=args.data, device=args.device, threads=args.threads,
                             eval_data=args.eval_data)
    tasks = [(job, specs[job.candidate], key) for job, key in jobs]
    try:
        for number, record in enumerate(worker_results(work, tasks, workers=args.workers, threads=args.threads),
                                        start=1):
            results.append(record)
            outcome = (f"A {record['accuracy']:.3f}" if record["status"] == "ok"
                       else f"FAILED: {record['failure_reason']}")
            print(f"  [{number}/{len(jobs)}] {record_label(record)}: {outcome}, {record['wall_time_s']:.0f} s "
                  f"({time.perf_counter() - start:.0f} s elapsed)", flush=True)
    except concurrent.futures.process.BrokenProcessPool:
        print("a worker process died (killed for memory?); the jobs not finished are not recorded: run the same "
              "command again to resume them", file=sys.stderr)


def record_label(record: dict[str, Any]) -> str:
    what = REFERENCE if record["column"] == REFERENCE else "proxy"
    size = "full size" if record["image_size"] is None else f"{record['image_size']}px"
    return f"{what} {record['epochs']} ep {size}, candidate {record['candidate']}, seed {record['seed']}"


# --- the tables -----------------------------------------------------------------------------------------------------

def markdown(table: pd.DataFrame, decimals: int = 3) -> str:
    """``table`` as a markdown table, floats to ``decimals`` decimals and NaN as n/a."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "n/a" if math.isnan(value) else f"{value:.{decimals}f}"
        return str(value)

    return markdown_table([str(column) for column in table.columns],
                          [[cell(value) for value in row] for row in table.itertuples(index=False)])


@dataclass
class Measured:
    """Per candidate: accuracy per (column, seed) (NaN where the job failed or has not run), S/S0 and P/P0."""

    accuracy: dict[tuple[int | str, int], np.ndarray]
    step_time_ratio: np.ndarray
    params_ratio: np.ndarray
    failed: list[dict[str, Any]]  # the failed training and timing records
    missing: int  # jobs not in the results file

    def mean(self, column: int | str, seeds: Sequence[int]) -> np.ndarray:
        stacked = np.stack([self.accuracy[column, seed] for seed in seeds])
        counts = np.isfinite(stacked).sum(axis=0)
        sums = np.where(np.isfinite(stacked), stacked, 0.0).sum(axis=0)
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)

    def reward(self, accuracy: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """The reward of each candidate with ``accuracy``, its exponents the paper's times ``scale``."""
        w, v = scale * STEP_TIME_EXPONENT, scale * PARAMS_EXPONENT
        values = []
        for a, s, p in zip(accuracy, self.step_time_ratio, self.params_ratio):
            usable = all(math.isfinite(x) for x in (a, s, p))
            values.append(training_aware_reward(a, s, p, step_time_ref=1.0, params_ref=1.0, w=w, v=v)
                          if usable else math.nan)
        return np.asarray(values)


def collect(specs: Sequence[ArchSpec], jobs: Sequence[tuple[Job, str]], timing_keys: Sequence[str],
            records: dict[str, dict[str, Any]]) -> Measured:
    columns = {job.column for job, _ in jobs}
    seeds = {job.seed for job, _ in jobs}
    accuracy = {(column, seed): np.full(len(specs), np.nan) for column in columns for seed in seeds}
    failed, missing = [], 0
    for job, key in jobs:
        record = records.get(key)
        if record is None:
            missing += 1
        elif record["status"] == "ok" and record.get("accuracy") is not None:
            accuracy[job.column, job.seed][job.candidate] = record["accuracy"]
        else:
            failed.append(record)
    step_time_ratio, parameters = np.full(len(specs), np.nan), np.full(len(specs), np.nan)
    for index, key in enumerate(timing_keys):
        record = records.get(key)
        if record is None:
            continue
        parameters[index] = record["parameters"]
        if record["status"] == "ok":
            step_time_ratio[index] = record["ratio"]
        else:
            failed.append(record)
    return Measured(accuracy, step_time_ratio, parameters / parameters[0], failed, missing)


INTERVAL = f"Spearman {round(CONFIDENCE * 100)}% CI"


def agreement(proxy: np.ndarray, reference: np.ndarray, resamples: int = 0) -> dict[str, Any]:
    """Spearman (with its bootstrap interval over the candidates, when ``resamples``), Kendall tau-b and top-k
    overlap over the candidates measured on both sides."""
    both = np.isfinite(proxy) & np.isfinite(reference)
    a, b = proxy[both], reference[both]
    overlap = f"{top_k_overlap(a, b)}/{min(TOP_K, len(a))}" if len(a) else "n/a"
    row = {"n": int(both.sum()), "Spearman": spearman(a, b)}
    if resamples:
        row[INTERVAL] = _interval(lambda chosen: spearman(a[chosen], b[chosen]), len(a), resamples)
    return {**row, "Kendall tau-b": kendall_tau_b(a, b), f"top-{TOP_K} overlap": overlap}


def _interval(statistic: Any, count: int, resamples: int) -> str:
    low, high = bootstrap_interval(statistic, count, resamples=resamples, confidence=CONFIDENCE)
    return "n/a" if math.isnan(low) else f"[{low:.2f}, {high:.2f}]"


def _finite_mean(values: Sequence[float]) -> float:
    finite = [value for value in values if math.isfinite(value)]
    return sum(finite) / len(finite) if finite else math.nan


def seed_to_seed(measured: Measured, column: int | str, seeds: Sequence[int], quantity: str,
                 resamples: int = 0) -> dict[str, Any]:
    """Single seed against single seed, averaged over the pairs of seeds (one pair for two seeds); the interval
    resamples the candidates of every pair alike."""
    pairs = []
    for first, second in itertools.combinations(seeds, 2):
        a, b = measured.accuracy[column, first], measured.accuracy[column, second]
        if quantity == "reward":
            a, b = measured.reward(a), measured.reward(b)
        pairs.append((a, b))
    rows = [agreement(a, b) for a, b in pairs]
    both = np.logical_and.reduce([np.isfinite(a) & np.isfinite(b) for a, b in pairs])
    kept = [(a[both], b[both]) for a, b in pairs]
    if len(rows) == 1:
        row = rows[0]
    else:
        overlaps = [float(row[f"top-{TOP_K} overlap"].split("/")[0]) for row in rows if row["n"]]
        row = {"n": min(row["n"] for row in rows), "Spearman": float(np.nanmean([r["Spearman"] for r in rows])),
               "Kendall tau-b": float(np.nanmean([r["Kendall tau-b"] for r in rows])),
               f"top-{TOP_K} overlap": f"{np.mean(overlaps):.1f}/{TOP_K} (mean)" if overlaps else "n/a"}
    if resamples:
        interval = _interval(lambda chosen: _finite_mean([spearman(a[chosen], b[chosen]) for a, b in kept]),
                             int(both.sum()), resamples)
        row = {"n": row["n"], "Spearman": row["Spearman"], INTERVAL: interval,
               **{key: value for key, value in row.items() if key not in ("n", "Spearman")}}
    return row


def report(specs: Sequence[ArchSpec], jobs: Sequence[tuple[Job, str]], timing_keys: Sequence[str],
           records: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    """Prints the per-candidate table, the agreement table, its ceiling rows and the verdict."""
    measured = collect(specs, jobs, timing_keys, records)
    seeds, proxies = args.seeds, args.proxy_epochs
    proxy_means = {epochs: measured.mean(epochs, seeds) for epochs in proxies}
    reference_mean = measured.mean(REFERENCE, seeds)

    table = pd.DataFrame({"#": range(len(specs)), "block strings": [" ".join(spec.block_strings) for spec in specs],
                          "P/P0": measured.params_ratio, "S/S0": measured.step_time_ratio})
    for epochs in proxies:
        table[f"A {epochs} ep"] = proxy_means[epochs]
    table[f"A ref {args.reference_epochs} ep"] = reference_mean
    table["reward ref"] = measured.reward(reference_mean)
    accuracy = ("hold-out accuracy" if args.eval_data is None else
                f"hold-out accuracy of the proxies, accuracy on {args.eval_data} of the references")
    print(f"\nper candidate (#0 is the baseline; A = {accuracy}, mean over seeds {_seeds(seeds)}):")
    print(markdown(table))

    rows = []
    for epochs in proxies:
        for quantity in ("A", "reward"):
            proxy, reference = proxy_means[epochs], reference_mean
            if quantity == "reward":
                proxy, reference = measured.reward(proxy), measured.reward(reference)
            rows.append({"comparison": f"proxy {epochs} ep vs reference", "quantity": quantity,
                         **agreement(proxy, reference, args.bootstrap)})
    # The reward's floor: S/S0 and P/P0 are the same on both sides, so they alone (A the same for all) already
    # rank part of the way; a proxy earns only what its reward row adds above this one.
    no_accuracy = measured.reward(np.ones(len(specs)))
    rows.append({"comparison": "floor: S/S0 and P/P0 alone (A equal)", "quantity": "reward",
                 **agreement(no_accuracy, measured.reward(reference_mean), args.bootstrap)})
    pairs = f"seed {seeds[0]} vs {seeds[1]}" if len(seeds) == 2 else "seed vs seed, mean over pairs"
    if len(seeds) >= 2:
        for column, name in ((REFERENCE, "ceiling: reference"), (max(proxies), f"ceiling: proxy {max(proxies)} ep")):
            for quantity in ("A", "reward"):
                rows.append({"comparison": f"{name}, {pairs}", "quantity": quantity,
                             **seed_to_seed(measured, column, seeds, quantity, args.bootstrap)})
    print(f"\nrank agreement with the reference ({args.reference_epochs} ep at the data's size), over the "
          f"candidates measured on both sides (n):")
    print(markdown(pd.DataFrame(rows)))
    if len(seeds) < 2:
        print("(no ceiling rows: they need at least two seeds)")

    balance, balanced = reward_balance(measured, reference_mean)
    print(f"\nreward balance on the references' A (mean over seeds): what decides the ranking, with the paper's "
          f"exponents (w {STEP_TIME_EXPONENT}, v {PARAMS_EXPONENT}) scaled:")
    print(markdown(balance, decimals=4))
    print(f"A and (S/S0)^w (P/P0)^v spread alike at {balanced:.3f} x the paper's exponents: "
          f"w {balanced * STEP_TIME_EXPONENT:.4f}, v {balanced * PARAMS_EXPONENT:.4f}")

    done = len(jobs) - measured.missing
    failed_training = [record for record in measured.failed if record["kind"] == "train"]
    failed_timing = [record for record in measured.failed if record["kind"] == "timing"]
    print(f"\njobs: {done} of {len(jobs)} in the results file, {len(failed_training)} failed; S/S0 timings failed: "
          f"{len(failed_timing)}")
    for record in measured.failed[:10]:
        what = f"S/S0 timing, candidate {record['candidate']}" if record["kind"] == "timing" else record_label(record)
        print(f"  failed: {what}: {record.get('failure_reason')}")
    if measured.missing:
        print(f"  {measured.missing} job(s) not run yet: run the same command without --table-only to resume")

    print(verdict(rows, max(proxies)))


def reward_balance(measured: Measured, accuracy: np.ndarray,
                   scales: Sequence[float] = EXPONENT_SCALES) -> tuple[pd.DataFrame, float]:
    """How much of the reward's ranking accuracy decides, with the exponents (w, v) the paper's times each scale.

    The reward is A * C with C = (S/S0)^w * (P/P0)^v, so it ranks by log A + log C: the term that spreads more
    over the candidates decides. Per scale: the spread (standard deviation over the candidates) of log A and of
    log C, and the Spearman of the reward with A and with C. Also returned: the scale at which the two spread
    alike (sd log A / sd log C at the paper's exponents). Worked example: A 0.90 at S/S0 1 and A 0.91 at S/S0 2,
    both at P/P0 1 (sd of log A 0.0055, of log C 0.07 * ln 2 / 2 = 0.024): the faster, less accurate one wins at
    the paper's exponents (0.900 against 0.91 * 2^-0.07 = 0.867), and A and C weigh alike at scale 0.23 (w -0.016).
    """
    paper = measured.reward(accuracy)
    both = np.isfinite(paper) & (accuracy > 0)  # log A: none for an accuracy of 0
    log_accuracy = np.log(accuracy[both])
    rows = []
    for scale in scales:
        log_reward = np.log(measured.reward(accuracy, scale)[both])
        log_cost = log_reward - log_accuracy
        rows.append({"w": scale * STEP_TIME_EXPONENT, "v": scale * PARAMS_EXPONENT,
                     "sd log A": float(log_accuracy.std()), "sd log (S/S0)^w (P/P0)^v": float(log_cost.std()),
                     "Spearman reward vs A": spearman(log_reward, log_accuracy),
                     "Spearman reward vs (S/S0)^w (P/P0)^v": spearman(log_reward, log_cost)})
    paper_cost = np.log(paper[both]) - log_accuracy
    balanced = float(log_accuracy.std() / paper_cost.std()) if paper_cost.std() > 0 else math.nan
    return pd.DataFrame(rows), balanced


def verdict(rows: Sequence[dict[str, Any]], longest: int) -> str:
    """The targets, each held or not: the reference's own seed-to-seed Spearman of A (the ceiling: whether the data
    separates the candidates at all) and the longest proxy's A against the reference; NaN holds nothing."""
    def spearman_of(comparison: str) -> float:
        return next((row["Spearman"] for row in rows if row["comparison"].startswith(comparison)
                     and row["quantity"] == "A"), math.nan)

    lines = []
    for name, value, target in (("the reference's seed-to-seed Spearman of A (the ceiling)",
                                 spearman_of("ceiling: reference"), TARGET_CEILING),
                                (f"the {longest}-epoch proxy's Spearman of A against the reference",
                                 spearman_of(f"proxy {longest} ep vs reference"), TARGET_SPEARMAN)):
        held = "HOLDS" if value >= target else "does NOT hold"  # NaN compares False
        lines.append(f"target: {name} >= {target}: {held} ({value:.3f})")
    return "\n".join(lines)


def _seeds(seeds: Sequence[int]) -> str:
    return ",".join(map(str, seeds))


# --- the command ----------------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help=f"data source (default {FULL['data']}; with --quick {QUICK['data']})")
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--candidates", type=int, help="the baseline and N-1 samples (default 24; --quick 4)")
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of the candidates' generator")
    parser.add_argument("--proxy-epochs", help="comma-separated proxy lengths (default 1,3,10; --quick 1,2)")
    parser.add_argument("--proxy-image-size", type=int, help="default 24 (--quick 16)")
    parser.add_argument("--reference-epochs", type=int, help="default 40 (--quick 2)")
    parser.add_argument("--seeds", default="0,1", help="TrainConfig seeds, comma-separated (default %(default)s)")
    parser.add_argument("--eval-data", metavar="SOURCE",
                        help="evaluate the references on SOURCE (a test set, e.g. 'npz:FILE?images=x_test&"
                             "labels=y_test'), trained on all of --data; proxies keep the hold-out, as a campaign")
    parser.add_argument("--bootstrap", type=int, default=2000,
                        help="resamples of the candidates for each Spearman's interval (default %(default)s)")
    parser.add_argument("--timing-pairs", type=int, help="pairs of windows per S/S0 (default 3; --quick 1)")
    parser.add_argument("--timing-window-s", type=float, help="seconds per timed window (default 0.1; --quick 0.02)")
    parser.add_argument("--timing-precision", type=float, metavar="SHARE",
                        help="time pairs until S/S0's 95%% interval is this narrow (half-width, a share of S/S0), "
                             "as a campaign does; 0: exactly --timing-pairs (default 0.02; --quick 0)")
    parser.add_argument("--timing-batch-size", type=int, default=TIMING_BATCH_SIZE)
    add_device_argument(parser, "training and timing device")
    parser.add_argument("--workers", type=int, default=1, help="training processes (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default %(default)s)")
    parser.add_argument("--results", type=Path, help="JSONL results file (default under runs/fidelity/)")
    parser.add_argument("--table-only", action="store_true", help="print the tables from the results file")
    parser.add_argument("--quick", action="store_true", help="CI size: " + ", ".join(f"{k} {v}" for k, v in
                                                                                      QUICK.items()))
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        args.proxy_epochs = sorted({int(value) for value in str(args.proxy_epochs).split(",")})
        args.seeds = list(dict.fromkeys(int(value) for value in str(args.seeds).split(",")))
    except ValueError:
        parser.error("--proxy-epochs and --seeds are comma-separated integers")
    if args.candidates < 2 or args.workers < 1 or args.threads < 1 or min(args.proxy_epochs) < 1:
        parser.error("--candidates must be at least 2, --workers, --threads and the proxy epochs at least 1")
    if args.results is None:
        from nas.measure import resolve_device

        args.results = default_results_path(args.space, args.data, resolve_device(args.device).type, args.quick)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    wall_start = time.perf_counter()
    space = presets.get_space(args.space)
    specs = candidates(space, args.candidates, args.sample_seed)
    settings = TimingConfig(pairs=args.timing_pairs, window_s=args.timing_window_s,
                            precision=args.timing_precision or None,
                            max_stall=TimingConfig.max_stall if args.timing_precision else None).resolved(
        image_size=space.baseline.train_image_size, batch_size=args.timing_batch_size)
    timing_keys = [timing_key(args.data, spec.block_strings, settings.to_dict()) for spec in specs]
    results = JsonlResults(args.results)
    records = results.records
    if args.table_only and not records:
        raise SystemExit(f"no results in {args.results}")
    data = load(args.data, None)  # the jobs' keys hold the recipe as resolved for it
    jobs = make_jobs(specs, args.seeds, args.proxy_epochs, args.reference_epochs, args.proxy_image_size,
                     data.image_size)
    recipes = {job.column: resolved_recipe(job, args.device, args.threads, data) for job in jobs}
    keyed = [(job, job_key(args.data, job, recipes[job.column], args.eval_data)) for job in jobs]

    if args.table_only:
        device_line = "; ".join(sorted({r["device"] for r in records.values() if r.get("device")})) or "n/a"
    else:
        from nas.measure import describe_device, prepare_device, resolve_device

        device = resolve_device(args.device)
        prepare_device(device, args.threads)
        device_line = describe_device(device)
    workers = "" if args.table_only else f"; {args.workers} worker(s) x {args.threads} torch thread(s)"
    print(f"device: {device_line}{workers}")
    evaluation = ("" if args.eval_data is None else
                  f"; references train on all {len(data.train_labels) + len(data.val_labels)} and are evaluated on "
                  f"{args.eval_data}")
    print(f"data: {args.data} ({data.image_size}px, {len(data.train_labels)} training and {len(data.val_labels)} "
          f"hold-out images{evaluation}); space {args.space}, {len(specs)} candidates (sample seed "
          f"{args.sample_seed}), seeds {_seeds(args.seeds)}")
    print(f"proxy: {', '.join(map(str, args.proxy_epochs))} epochs at {args.proxy_image_size}px; reference: "
          f"{args.reference_epochs} epochs at {data.image_size}px (the data's size); S/S0 timed at "
          f"{settings.image_size}px, batch {settings.batch_size}, {settings.pairs} pair(s) of {settings.window_s} s "
          f"windows")
    print("recipe as run (TrainConfig defaults resolved for this data; each job's own epochs, image_size, seed): "
          + describe_recipe({column: recipe.to_dict() for column, recipe in sorted(
              recipes.items(), key=lambda item: (item[0] == REFERENCE, 0 if item[0] == REFERENCE else item[0]))}))
    print(f"results: {args.results}")

    if not args.table_only:
        from search_spaces.files import FileLock

        args.results.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(args.results, what="results file")
        lock.acquire()  # a second run on the same file is refused, naming this one
        try:
            todo_timing = sum(key not in records for key in timing_keys)
            print(f"\nS/S0 and P: {todo_timing} of {len(specs)} candidates to time", flush=True)
            time_candidates(specs, args, settings, data, records, results)
            todo = results.pending(keyed, key=lambda keyed_job: keyed_job[1])
            print(f"training: {len(todo)} of {len(keyed)} jobs to run ({len(keyed) - len(todo)} in the results "
                  f"file)", flush=True)
            run_jobs(todo, specs, args, results)
        finally:
            lock.release()

    report(specs, keyed, timing_keys, records, args)
    job_seconds = sum(records[key].get("wall_time_s") or 0.0 for _, key in keyed if key in records)
    print(f"wall time: {time.perf_counter() - wall_start:.0f} s this run; the jobs in the results file took "
          f"{job_seconds:.0f} s of worker time in all")


if __name__ == "__main__":
    main()
