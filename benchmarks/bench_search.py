"""Does a campaign scale with workers, and what does the runner cost per trial?

Runs the same fixed CPU campaign (tiny space, synthetic data, one CPU thread per trial) with 1 and with 2 workers,
each in a fresh `nas search` process with its own local Ray and SQLite study, and prints:

- wall time of the whole command (Ray start-up included) and of the trial phase (first trial asked to last told,
  from the study's timestamps), and the speed-up of 2 workers over 1;
- per-trial overhead: a trial's time in the study (ask to tell) minus its own proxy-training wall time, i.e.
  scheduling, worker start, data transfer and result reporting; the first trial of each worker pays for starting
  the worker process.

    python benchmarks/bench_search.py                  # 32 trials, 1 epoch on 3,000 synthetic images
    python benchmarks/bench_search.py --trials 32 --workers 1 2
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import yaml


def campaign(args: argparse.Namespace, workers: int) -> dict:
    return {
        "space": "tiny",
        "data": f"synthetic:num_images={args.images},image_size=32",
        "trials": args.trials,
        "controller": "random",
        "study": f"bench-{workers}",
        "workers": workers,
        "cpus_per_trial": 1,
        "seed": 0,
        "train": {"epochs": args.epochs, "batch_size": 128, "timing_warmup": 2, "timing_repeats": 3},
    }


def run(directory: Path, args: argparse.Namespace, workers: int) -> dict:
    path = directory / f"campaign-{workers}.yaml"
    path.write_text(yaml.safe_dump(campaign(args, workers)))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nas", "search", "--config", str(path)], cwd=directory, check=True,
                   capture_output=True, text=True)
    wall = time.perf_counter() - start
    study = optuna.load_study(study_name=f"bench-{workers}", storage=f"sqlite:///{directory}/runs/bench-{workers}.db")
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    overheads = [(t.datetime_complete - t.datetime_start).total_seconds() - t.user_attrs["wall_time"] for t in trials]
    phase = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    return {
        "workers": workers,
        "trials": len(trials),
        "command wall (s)": wall,
        "trial phase (s)": phase,
        "mean proxy training (s)": statistics.mean(t.user_attrs["wall_time"] for t in trials),
        "overhead median (s)": statistics.median(overheads),
        "overhead max (s)": max(overheads),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        rows = [run(Path(directory), args, workers) for workers in args.workers]
    table = pd.DataFrame(rows)
    table["speed-up (command)"] = table["command wall (s)"].iloc[0] / table["command wall (s)"]
    table["speed-up (trial phase)"] = table["trial phase (s)"].iloc[0] / table["trial phase (s)"]
    print(f"fixed campaign: tiny space, {args.images} synthetic images at 32px, {args.epochs} epoch(s), "
          f"{args.trials} trials, 1 CPU thread per trial")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
