"""Cold start of `nas --help`, the commands that read a study (trials, best, export, report) and `nas show`, each
in fresh processes.

    python benchmarks/bench_cli.py [--before REF] [--runs 5] [--trials 200]

Times the whole command (interpreter start, imports, reading the study, printing) as a user pays it, median of
``--runs`` fresh processes. With ``--before REF`` (a git commit or branch) the same commands run on that revision
too, extracted with ``git archive`` into a temporary directory, so the table shows before and after side by side.
The study is made once, in a temporary directory, with ``--trials`` complete trials carrying the attributes a
campaign writes; nothing is written in the repository.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas import records  # noqa: E402
from search_spaces import presets  # noqa: E402

COMMANDS = {
    "nas --help": ["--help"],
    "nas trials": ["trials", "--study", "bench", "--storage", "sqlite:///bench.db"],
    "nas best": ["best", "--study", "bench", "--storage", "sqlite:///bench.db", "-k", "5"],
    "nas export": ["export", "--study", "bench", "--storage", "sqlite:///bench.db"],
    "nas show": ["show", "efficientnetv2-s"],
    "nas report": ["report", "--study", "bench", "--storage", "sqlite:///bench.db", "-o", "report", "--force"],
}


def make_study(directory: Path, trials: int) -> None:
    """A finished campaign's study: a baseline and ``trials - 1`` candidates with their measurements."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = presets.get_space("tiny")
    study = optuna.create_study(study_name="bench", storage=f"sqlite:///{directory / 'bench.db'}",
                                direction="maximize")
    for number in range(trials):
        spec = space.baseline if number == 0 else space.sample(number)
        role = records.ROLE_BASELINE if number == 0 else records.ROLE_CANDIDATE
        trial = study.ask()
        result = records.EvalResult(status=records.STATUS_OK, accuracy=0.5 + number % 37 / 100,
                                    step_time_s=0.01 + number % 11 / 1000, step_time_iqr_s=1e-4,
                                    parameters=100_000 + number * 997, macs=10**7, device="cpu", wall_time_s=1.0,
                                    epochs_completed=1)
        attributes = records.started_attributes(role, spec, "random") | records.result_attributes(result) | {
            records.NORMALIZED_STEP_TIME: result.step_time_s / 0.01, records.NORMALIZED_PARAMETERS:
            result.parameters / 100_000, records.REWARD: result.accuracy}
        for key, value in attributes.items():
            trial.set_user_attr(key, value)
        study.tell(trial, result.accuracy)


def cold_start(checkout: Path, arguments: list[str], directory: Path, runs: int) -> float:
    """Median wall time of ``python -m nas ARGUMENTS`` in ``runs`` fresh processes using ``checkout``'s code."""
    environment = {**os.environ, "PYTHONPATH": str(checkout)}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nas", *arguments], cwd=directory, env=environment, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def extract(ref: str, directory: Path) -> Path:
    """The tree of git revision ``ref``, extracted under ``directory``."""
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True, capture_output=True).stdout
    target = directory / "before"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", metavar="REF", help="also time this git revision (e.g. a commit before a change)")
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per command (default: 5)")
    parser.add_argument("--trials", type=int, default=200, help="trials in the study read (default: 200)")
    args = parser.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        make_study(directory, args.trials)
        checkouts = {"after": ROOT} if args.before is None else {"before": extract(args.before, directory),
                                                                 "after": ROOT}
        rows = {name: {label: cold_start(checkout, arguments, directory, args.runs)
                       for label, checkout in checkouts.items()} for name, arguments in COMMANDS.items()}
    labels = list(checkouts)
    print(f"cold start, median of {args.runs} fresh processes (s); study of {args.trials} trials; "
          f"python {sys.version.split()[0]}" + (f"; before = {args.before}" if args.before else ""))
    print(f"{'command':<12}" + "".join(f"{label:>10}" for label in labels))
    for name, times in rows.items():
        print(f"{name:<12}" + "".join(f"{times[label]:>10.2f}" for label in labels))
    print(f"load average before the runs: {load[0]:.2f}, after: {os.getloadavg()[0]:.2f} (1 min; {os.cpu_count()} "
          "CPUs): the figures are only comparable at a similar load")


if __name__ == "__main__":
    main()
