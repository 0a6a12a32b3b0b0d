"""Load: 1,000 trials through the real runner and study, with a trainer that returns at once.

What it measures is the campaign machinery (Ray Tune scheduling, the Searcher's ask/tell, the study's writes and
reads, the step-time cache), on SQLite and PostgreSQL, and it checks that the study ends with exactly the budget of finished
trials, no trial left RUNNING and no trial number twice. S/S0 is still timed in every trial (issue 16), at the
smallest settings (one image, one pair of one-step windows): two tiny networks built and stepped, tens of ms. Throughput is given for the whole run and for its first
and last 100 trials, so a cost that grows with the study's size shows.

    python benchmarks/bench_load.py                                   # SQLite (and PostgreSQL if the URL is set)
    python benchmarks/bench_load.py --postgres postgresql://user@host/db --trials 1000 --workers 4

``--postgres`` defaults to ``NAS_TEST_POSTGRES_URL``; each run uses a new study, so any database will do.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import tempfile
import time
import zlib
from pathlib import Path

import optuna
import pandas as pd
import ray

from nas.campaign import CampaignConfig, run_campaign
from nas.data import ImageData
from nas.halving import Rungs
from nas.measure import spec_complexity
from nas.recipe import TimingConfig, TrainConfig
from nas.records import EvalResult
from nas.runner import RayExecutor
from nas.storage import make_storage
from nas.study import finished_trials
from search_spaces.spec import ArchSpec


def instant_trainer(spec: ArchSpec, data: ImageData, config: TrainConfig, rungs: Rungs | None = None) -> EvalResult:
    """A stand-in for proxy training: a deterministic accuracy per architecture, its real parameter count."""
    digest = zlib.crc32(" ".join(spec.block_strings).encode())
    parameters = spec_complexity(spec, num_classes=data.num_classes, image_size=data.image_size).parameters
    return EvalResult(status="ok", accuracy=0.5 + (digest % 1000) / 4000, step_time_s=1e-3 * (1 + digest % 7),
                      step_time_iqr_s=1e-5, parameters=parameters, macs=1, device="cpu", wall_time_s=0.0,
                      epochs_completed=config.epochs)


def throughput(trials: list[optuna.trial.FrozenTrial]) -> float:
    """Trials per second between the first start and the last completion of ``trials``."""
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    return len(trials) / span if span > 0 else float("inf")


def run(label: str, storage_url: str, args: argparse.Namespace) -> dict[str, object]:
    study_name = f"load-{int(time.time() * 1000)}"
    config = CampaignConfig(space="tiny", data="synthetic:num_images=256,image_size=32", trials=args.trials,
                            controller=args.controller, storage=storage_url, study=study_name,
                            workers=args.workers, cpus_per_trial=1,
                            timing=TimingConfig(batch_size=1, warmup=1, pairs=1, window_s=0.001, precision=None,
                                                max_stall=None))
    start = time.perf_counter()
    outcome = run_campaign(config, RayExecutor(trainer=instant_trainer), out=io.StringIO())
    wall = time.perf_counter() - start
    study = optuna.load_study(study_name=study_name, storage=make_storage(storage_url))
    trials = study.get_trials(deepcopy=False)
    complete = sorted((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.number)
    numbers = [t.number for t in trials]
    return {
        "storage": label,
        "trials": outcome.budget,
        "finished in study": len(finished_trials(study)),
        "running left": sum(t.state == optuna.trial.TrialState.RUNNING for t in trials),
        "unique numbers": len(set(numbers)) == len(numbers),
        "wall (s)": wall,
        "trials/s": outcome.ran / wall,
        "first 100 trials/s": throughput(complete[1:101]),  # after the baseline, which runs alone
        "last 100 trials/s": throughput(complete[-100:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4, help="trials in flight at once")
    parser.add_argument("--controller", default="random", choices=("random", "tpe", "rl"))
    parser.add_argument("--postgres", default=os.environ.get("NAS_TEST_POSTGRES_URL"),
                        help="a PostgreSQL URL (default: $NAS_TEST_POSTGRES_URL; none skips PostgreSQL)")
    args = parser.parse_args()
    # The trainer needs no CPU, so every trial in flight gets a slot whatever the machine's core count.
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        rows.append(run("sqlite", f"sqlite:///{Path(directory) / 'load.db'}", args))
        if args.postgres:
            rows.append(run("postgresql", args.postgres, args))
    print(f"{args.trials} trials, {args.workers} in flight, {args.controller} controller, instant trainer")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda value: f"{value:.2f}"))


if __name__ == "__main__":
    main()
