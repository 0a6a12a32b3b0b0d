"""Successive halving against the full budget: how much proxy training does it save, and does it lose the winner?

    python benchmarks/bench_asha.py --data npz:tests/data/mnist5k.npz --seeds 0,1,2
        [--config experiments/mnist5k.yaml] [--trials N] [--epochs N] [--controller random]
        [--min-epochs 1] [--reduction-factor 3] [--reference-epochs 40] [--device DEVICE]
        [--workers N] [--cpus-per-trial N] [--out-dir DIR] [--full-from DIR]
    python benchmarks/bench_asha.py --table-only --out-dir DIR     # re-print the tables of a finished run
    python benchmarks/bench_asha.py --quick                         # CI-size: tiny synthetic data, seconds

Run it from the repository root (the config's data path is relative). Cost at the defaults (mnist5k.yaml, 20
trials x 10 epochs, 3 seeds, reference 40 epochs): about 3 x (200 + ~70) proxy epochs and ~5 reference trainings
of 40 epochs, at 5-6 core-seconds per epoch on a CPU: ~1.5 core-hours, ~50 minutes with 2 workers. ``--workers 0``
(or 1) runs everything in this process (debugging, tests). A stopped run is not resumed: start again in a new out-dir.
``--full-from DIR`` takes the full arm (its studies, logs and wall times, and the reference results of its seeds)
from an earlier run in DIR instead of running it again, and runs only the halving arm: the way to try other
``--min-epochs`` or ``--reduction-factor`` against one full budget, at a fraction of the cost. The earlier run must
have the seeds and the same space, trials, controller, proxy settings and reference epochs; what differs is refused
by name, before anything is written. Compare epochs across the two runs; their wall times are comparable only if
the machine was as loaded in both.

Why: asynchronous successive halving (``scheduler: {type: asha}``) stops a candidate at a rung (after 1, 3, 9, ...
epochs) when it is behind the others there. It should cut the compute of a search several-fold; the risk is that
the architecture the full budget would have picked learns slowly at first and is stopped before it shows it.

What: for each seed, the same campaign twice, the *full* arm (every candidate trained ``train.epochs`` epochs,
``scheduler: none``) and the *halving* arm (ASHA with ``--min-epochs`` and ``--reduction-factor``): the same
space, data, recipe, budget of trials and controller. The controller defaults to ``random``: Optuna's random
sampler is seeded per trial number, so both arms propose *the identical sequence of candidates* and whether the
full-budget winner "survives" halving is well defined (with ``tpe`` or ``rl`` the halving arm learns from cut
results and proposes other candidates; the tables then say so). Each arm x seed is a campaign of its own (study
``bench-asha-<arm>-seed<S>``) in a fresh SQLite file under ``--out-dir``, run by the in-process executor
(:class:`nas.local.LocalExecutor`, no Ray) in one of ``--workers`` spawned processes, on ``cpus_per_trial``
threads. The seed is the campaign's (controller and hold-out split) and the training seed (``train.seed``).

The winner of each arm (best COMPLETE trial by proxy reward) is then *reference-trained*:
:func:`nas.train.train_and_evaluate` for ``--reference-epochs`` at the data's full image size with the campaign's
recipe, data split and seed. An architecture both arms of a seed picked is trained once. Its reference reward is
the reference accuracy with the trial's own normalized S and P and the campaign's exponents (so an architecture
both arms picked differs between them only by the noise of its two S/S0 timings). Reference accuracy is
measured on the campaign's hold-out split: the split that chose the winners, so both arms carry the same
selection bias and their difference is fair, but the absolute value is optimistic.

How to read: per seed, each arm's candidates, the trials stopped at each rung (``epoch: count``), the training
compute (epochs trained summed over all trials, the baseline included; proxy-training wall time summed over
trials; the campaign's own wall time, which adds step timing, data loading and the study), the winner and its
proxy and reference figures, and what became of the full-budget winner in the halving arm ("survived":
completed, or stopped at epoch N, or not proposed). The summary gives the compute saving (full / halving) per
seed and its mean, the halving winner's reference reward minus the full-budget winner's, and the seed spread (max -
min over seeds of the full-budget winners' reference rewards). The target, "at least 2.5x less training compute
at a winner within the seed spread", is met when the mean saving in epochs is at least 2.5x and, on every seed,
the halving winner's reference reward is at most one seed spread below the full-budget winner's.

Files under ``--out-dir`` (default a new ``runs/bench_asha/<time>``, which must be new or empty): the studies
(``seed<S>-<arm>.db``), each campaign's log, ``bench.json`` (settings, campaign wall times, reference results;
rewritten after every step through :func:`search_spaces.files.write_file`) and ``table.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    add_device_argument,
    machine,
    markdown_table,
    worker_results,
)
from nas import records  # noqa: E402
from nas.campaign import CampaignConfig, CampaignError, load_campaign  # noqa: E402
from nas.halving import (  # noqa: E402
    HalvingSummary,
    SchedulerConfig,
    TrialTraining,
    full_epochs,
    halving_summary,
)
from nas.recipe import TimingConfig  # noqa: E402
from nas.states import is_interrupted  # noqa: E402
from rewards import PARAMS_EXPONENT, STEP_TIME_EXPONENT, training_aware_reward  # noqa: E402
from search_spaces.files import write_file  # noqa: E402

FULL = "full"
HALVING = "halving"
ARMS = (FULL, HALVING)
ARM_TITLES = {FULL: "full budget", HALVING: "halving"}
DEFAULT_CONFIG = ROOT / "experiments" / "mnist5k.yaml"
STATE_FILE = "bench.json"
TABLE_FILE = "table.md"
TARGET_SAVING = 2.5  # "at least 2.5x less training compute ..."


QUICK = {  # CI-size: seconds per campaign on a CPU
    "data": "synthetic:num_images=256,image_size=16",
    "trials": 4,
    "epochs": 3,
    "reference_epochs": 2,
    "timing": TimingConfig(image_size=16, batch_size=16, warmup=1, pairs=2, window_s=0.02, precision=None,
                          max_stall=None),
}


# --- reading the studies: pure functions of trial records (tested on hand-made trials) --------------------------


def architecture_key(spec: Mapping[str, Any]) -> str:
    """The architecture of a spec dict, whatever its name (the baseline's spec carries the backbone's name, a
    candidate's none): a short digest of everything else."""
    plain = {key: value for key, value in spec.items() if key != "name"}
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrialRecord:
    """What the benchmark needs of one trial."""

    number: int
    state: str  # Optuna's state name: COMPLETE, PRUNED, FAIL, ...
    status: str | None  # records.STATUS: ok, failed, pruned (a constraint), stopped (halving)
    role: str | None
    architecture: str | None  # architecture_key of its spec; None when it never got one
    spec: Mapping[str, Any] | None
    block_strings: tuple[str, ...]
    epochs_completed: int
    wall_time_s: float
    reward: float | None
    accuracy: float | None
    normalized_step_time: float | None
    normalized_parameters: float | None
    stopped_at_epoch: int | None
    interrupted: bool

    @property
    def stopped(self) -> bool:
        return self.state == "PRUNED" and self.status == records.STATUS_STOPPED

    @property
    def finished(self) -> bool:
        """Counts toward the campaign's budget (as nas.study.finished_trials)."""
        return self.state in ("COMPLETE", "PRUNED", "FAIL") and not self.interrupted

    @property
    def training(self) -> TrialTraining:
        """What successive halving left of this trial, as :func:`nas.halving.halving_summary` counts it."""
        return TrialTraining(complete=self.state == "COMPLETE", stopped=self.stopped,
                             epochs_completed=self.epochs_completed, stopped_at_epoch=self.stopped_at_epoch)

    @classmethod
    def from_trial(cls, trial: optuna.trial.FrozenTrial) -> TrialRecord:
        attributes = trial.user_attrs
        spec = attributes.get(records.SPEC)
        complete = trial.state == optuna.trial.TrialState.COMPLETE
        return cls(
            number=trial.number,
            state=trial.state.name,
            status=attributes.get(records.STATUS),
            role=attributes.get(records.ROLE),
            architecture=None if spec is None else architecture_key(spec),
            spec=spec,
            block_strings=tuple(attributes.get(records.BLOCK_STRINGS, ())),
            epochs_completed=int(attributes.get(records.EPOCHS_COMPLETED) or 0),
            wall_time_s=float(attributes.get(records.WALL_TIME_S) or 0.0),
            reward=trial.value if complete else None,
            accuracy=attributes.get(records.ACCURACY),
            normalized_step_time=attributes.get(records.NORMALIZED_STEP_TIME),
            normalized_parameters=attributes.get(records.NORMALIZED_PARAMETERS),
            stopped_at_epoch=attributes.get(records.STOPPED_AT_EPOCH),
            interrupted=is_interrupted(trial),
        )


@dataclass(frozen=True)
class Exponents:
    """The campaign's reward exponents (w of S/S0, v of P/P0)."""

    step_time: float = STEP_TIME_EXPONENT
    params: float = PARAMS_EXPONENT

    @classmethod
    def from_campaign(cls, campaign: Mapping[str, Any]) -> Exponents:
        return cls(step_time=campaign.get("step_time_exponent", STEP_TIME_EXPONENT),
                   params=campaign.get("params_exponent", PARAMS_EXPONENT))


@dataclass(frozen=True)
class ArmResult:
    """One arm of one seed: its compute and its winner. ``epochs`` counts every trial's epochs, a failed trial's
    too (compute spent); ``halving`` is the campaign's own summary, as the report gives it (trained trials only)."""

    arm: str
    seed: int
    candidates: int  # finished candidate trials (the baseline not counted)
    halving: HalvingSummary
    epochs: int  # epochs trained, summed over all trials, the baseline included
    proxy_wall_s: float  # proxy-training wall time, summed over all trials
    campaign_wall_s: float | None  # the campaign's own wall time (None: not recorded)
    winner: TrialRecord | None  # the best COMPLETE trial by proxy reward (ties: the earlier trial)
    trials: tuple[TrialRecord, ...]
    exponents: Exponents = field(default_factory=Exponents)

    @property
    def stopped(self) -> Mapping[int | None, int]:
        """Rung epoch -> trials stopped there."""
        return self.halving.stopped_at


def summarize_arm(
    arm: str, seed: int, trials: Iterable[TrialRecord], *, campaign_wall_s: float | None = None,
    exponents: Exponents = Exponents(),
) -> ArmResult:
    trials = tuple(trials)
    complete = [trial for trial in trials if trial.state == "COMPLETE" and trial.reward is not None]
    winner = min(complete, key=lambda trial: (-trial.reward, trial.number)) if complete else None
    trainings = [trial.training for trial in trials]
    return ArmResult(
        arm=arm,
        seed=seed,
        candidates=sum(trial.finished and trial.role != records.ROLE_BASELINE for trial in trials),
        halving=halving_summary(trainings, epochs=full_epochs(None, trainings)),
        epochs=sum(trial.epochs_completed for trial in trials),
        proxy_wall_s=sum(trial.wall_time_s for trial in trials),
        campaign_wall_s=campaign_wall_s,
        winner=winner,
        trials=trials,
        exponents=exponents,
    )


@dataclass(frozen=True)
class Survival:
    """What became of the full-budget winner's architecture in the halving arm of the same seed."""

    outcome: str  # "completed", "stopped", "pruned" (a constraint), "failed", "not proposed", "no winner"
    stopped_at_epoch: int | None = None
    is_winner: bool = False

    @property
    def survived(self) -> bool:
        return self.outcome == "completed"

    def describe(self) -> str:
        if self.outcome == "completed":
            return "yes, its winner" if self.is_winner else "yes, not its winner"
        if self.outcome == "stopped":
            return f"no: stopped at epoch {self.stopped_at_epoch}"
        return f"no: {self.outcome}" if self.outcome in ("pruned", "failed", "not proposed") else self.outcome


def survival(full: ArmResult, halving: ArmResult) -> Survival:
    """Whether the full-budget winner's architecture (by spec) ran to completion in the halving arm, where it
    stopped if not, and whether it is the halving arm's winner."""
    if full.winner is None or full.winner.architecture is None:
        return Survival("no winner")
    same = [trial for trial in halving.trials if trial.architecture == full.winner.architecture
            and not trial.interrupted]
    is_winner = halving.winner is not None and halving.winner.architecture == full.winner.architecture
    for outcome, test in (("completed", lambda t: t.state == "COMPLETE"), ("stopped", lambda t: t.stopped),
                          ("pruned", lambda t: t.state == "PRUNED"), ("failed", lambda t: t.state == "FAIL")):
        found = [trial for trial in same if test(trial)]
        if found:
            return Survival(outcome, found[-1].stopped_at_epoch if outcome == "stopped" else None, is_winner)
    return Survival("not proposed")


def reference_reward(accuracy: float | None, winner: TrialRecord | None, exponents: Exponents) -> float | None:
    """The reference accuracy with the trial's own normalized S and P, by the campaign's reward."""
    if accuracy is None or winner is None or winner.normalized_step_time is None or \
            winner.normalized_parameters is None:
        return None
    return training_aware_reward(accuracy, winner.normalized_step_time, winner.normalized_parameters,
                                 step_time_ref=1.0, params_ref=1.0, w=exponents.step_time, v=exponents.params)


def reference_id(seed: int, architecture: str) -> str:
    return f"{seed}/{architecture}"


@dataclass(frozen=True)
class SeedResult:
    """Both arms of one seed, with their winners' reference figures."""

    seed: int
    arms: Mapping[str, ArmResult]
    references: Mapping[str, Mapping[str, Any]]  # arm -> the reference result of its winner ({} when none)

    def reference_accuracy(self, arm: str) -> float | None:
        return self.references.get(arm, {}).get("accuracy")

    def reference_reward(self, arm: str) -> float | None:
        result = self.arms[arm]
        return reference_reward(self.reference_accuracy(arm), result.winner, result.exponents)

    @property
    def survival(self) -> Survival:
        return survival(self.arms[FULL], self.arms[HALVING])

    def saving(self, measure: str) -> float | None:
        """full / halving of ``epochs``, ``proxy_wall_s`` or ``campaign_wall_s``."""
        return ratio(getattr(self.arms[FULL], measure), getattr(self.arms[HALVING], measure))

    @property
    def reward_difference(self) -> float | None:
        """The halving winner's reference reward minus the full-budget winner's."""
        full, halving = self.reference_reward(FULL), self.reference_reward(HALVING)
        return None if full is None or halving is None else halving - full


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


@dataclass(frozen=True)
class Summary:
    savings: Mapping[str, tuple[float | None, ...]]  # measure -> per seed (full / halving)
    mean_savings: Mapping[str, float | None]
    differences: tuple[float | None, ...]  # per seed: halving's reference reward - full's
    spread: float | None  # max - min over seeds of the full-budget winners' reference rewards
    met: bool | None  # None: undecided (a figure is missing)


MEASURES = ("epochs", "proxy_wall_s", "campaign_wall_s")


def summarize(seeds: Sequence[SeedResult]) -> Summary:
    savings = {measure: tuple(seed.saving(measure) for seed in seeds) for measure in MEASURES}
    mean_savings = {measure: (statistics.fmean(values) if values and None not in values else None)
                    for measure, values in savings.items()}
    differences = tuple(seed.reward_difference for seed in seeds)
    full_rewards = [seed.reference_reward(FULL) for seed in seeds]
    spread = max(full_rewards) - min(full_rewards) if full_rewards and None not in full_rewards else None
    if mean_savings["epochs"] is None or spread is None or None in differences:
        met = None
    else:
        met = mean_savings["epochs"] >= TARGET_SAVING and all(
            difference >= -spread - 1e-12 for difference in differences)
    return Summary(savings, mean_savings, differences, spread, met)


# --- the tables -----------------------------------------------------------------------------------------------


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"


def _stopped(stopped: Mapping[int, int]) -> str:
    return ", ".join(f"{epoch}: {count}" for epoch, count in stopped.items()) or "-"


def seed_table(seed: SeedResult) -> str:
    header = ("arm", "candidates", "stopped at rung (epoch: trials)", "epochs trained", "proxy wall s",
              "campaign wall s", "winner blocks", "winner proxy reward", "winner reference A", "reference reward",
              "full winner survived")
    rows = []
    for arm in ARMS:
        result = seed.arms[arm]
        winner = result.winner
        rows.append((
            ARM_TITLES[arm], result.candidates, _stopped(result.stopped) if arm == HALVING else "-", result.epochs,
            _number(result.proxy_wall_s, 1), _number(result.campaign_wall_s, 1),
            " ".join(winner.block_strings) if winner is not None else "-",
            _number(None if winner is None else winner.reward), _number(seed.reference_accuracy(arm)),
            _number(seed.reference_reward(arm)), seed.survival.describe() if arm == HALVING else "-",
        ))
    return f"### seed {seed.seed}\n\n" + markdown_table(header, rows, align="lrlrrrlrrrl")


def summary_table(seeds: Sequence[SeedResult], summary: Summary) -> str:
    header = ("seed", "epochs saving", "proxy wall saving", "campaign wall saving",
              "reference reward, halving - full", "full winner survived")
    rows = [(seed.seed, *(_times(summary.savings[measure][index]) for measure in MEASURES),
             _signed(summary.differences[index]), seed.survival.describe()) for index, seed in enumerate(seeds)]
    mean_difference = (statistics.fmean(summary.differences)
                       if summary.differences and None not in summary.differences else None)
    rows.append(("mean", *(_times(summary.mean_savings[measure]) for measure in MEASURES), _signed(mean_difference),
                 f"{sum(seed.survival.survived for seed in seeds)}/{len(seeds)} survived"))
    lines = ["### summary", "", markdown_table(header, rows, align="lrrrrl")]
    lines += ["", f"seed spread of the full-budget winners' reference reward (max - min over {len(seeds)} seed(s)): "
              f"{_number(summary.spread)}", target_line(summary)]
    return "\n".join(lines)


def target_line(summary: Summary) -> str:
    head = f"target: at least {TARGET_SAVING}x less training compute at a winner within the seed spread: "
    differences = ", ".join(_signed(value) for value in summary.differences)
    figures = (f"{_times(summary.mean_savings['epochs'])} fewer epochs trained (mean over seeds; proxy wall "
               f"{_times(summary.mean_savings['proxy_wall_s'])}, campaign wall "
               f"{_times(summary.mean_savings['campaign_wall_s'])}); halving winner's reference reward minus the "
               f"full-budget winner's per seed: {differences or '-'}, against a seed spread of "
               f"{_number(summary.spread)}")
    verdict = {True: "MET", False: "NOT MET", None: "UNDECIDED (a figure is missing)"}[summary.met]
    return head + verdict + " -- " + figures


def render(seeds: Sequence[SeedResult], settings: Mapping[str, Any]) -> str:
    controller = settings.get("controller")
    same = ("both arms propose the identical sequence of candidates (the random sampler is seeded per trial), "
            "so 'survived' compares like with like" if controller == "random" else
            "the halving arm learns from cut results, so its candidates differ from the full arm's: 'survived' "
            "is only meaningful where the same architecture was proposed")
    header = [
        "## Successive halving against the full budget",
        "",
        f"{settings.get('machine', '-')}; `{settings.get('command', '-')}`",
        "",
        f"space {settings.get('space')}, data {settings.get('data')}, {settings.get('trials')} trials "
        f"(baseline included) x {settings.get('epochs')} epochs, controller {controller}: {same}. Halving: ASHA, "
        f"min_epochs {settings.get('min_epochs')}, reduction_factor {settings.get('reduction_factor')}. Winners "
        f"reference-trained {settings.get('reference_epochs')} epochs at the data's full size."
        + (f" The full arm (its campaigns and its winners' references) is the one of `{settings['full_from']}`."
           if settings.get("full_from") else ""),
    ]
    body = [seed_table(seed) for seed in seeds]
    return "\n\n".join(["\n".join(header), *body, summary_table(seeds, summarize(seeds))]) + "\n"


# --- running: campaigns and reference trainings, in spawned worker processes ---------------------------------


def study_name(arm: str, seed: int) -> str:
    return f"bench-asha-{arm}-seed{seed}"


def database_name(arm: str, seed: int) -> str:
    return f"seed{seed}-{arm}.db"


def storage_url(out_dir: Path, arm: str, seed: int) -> str:
    return f"sqlite:///{(out_dir / database_name(arm, seed)).resolve()}"


def check_full_arm(source: Path, configs: Mapping[tuple[str, int], CampaignConfig],
                   settings: Mapping[str, Any]) -> dict[str, Any]:
    """The state of the earlier run in ``source`` if its full arm is the one ``configs`` would run (the seeds, the
    space, trials, controller and proxy settings of each seed's study, the reference epochs); otherwise exits
    naming every field that differs. Reads only."""
    from nas.study import StudyError, load_study, settings_differences
    from search_spaces import presets

    source_state = read_state(source)
    earlier = source_state["settings"]
    problems = [f"{key}: {source} has {earlier.get(key)!r}, this run {settings[key]!r}"
                for key in ("reference_epochs",) if earlier.get(key) != settings[key]]
    missing = [seed for seed in settings["seeds"] if campaign_id(FULL, seed) not in source_state["campaigns"]
               or not (source / database_name(FULL, seed)).is_file()]
    if missing:
        problems.append(f"seeds: {source} has no full arm for seed(s) {missing} (it has {earlier.get('seeds')})")
    for seed in (seed for seed in settings["seeds"] if seed not in missing):
        config = configs[(FULL, seed)]
        try:
            attributes = load_study(storage_url(source, FULL, seed), study_name(FULL, seed)).user_attrs
        except StudyError as error:
            problems.append(f"seed {seed}: {error}")
            continue
        recorded = attributes.get(records.CAMPAIGN, {})
        differences = settings_differences(attributes, presets.get_space(config.space), config.study_settings()) + [
            f"{key}: study {recorded.get(key)!r}, now {getattr(config, key)!r}"
            for key in ("trials", "controller") if recorded.get(key) != getattr(config, key)]
        problems += [f"seed {seed} {difference}" for difference in differences]
    if problems:
        raise SystemExit(f"error: --full-from {source}: its full arm is not this run's; " + "; ".join(problems))
    return source_state


def copy_full_arm(source: Path, source_state: Mapping[str, Any], out_dir: Path, state: dict[str, Any]) -> None:
    """Copies the checked full arm of ``source`` into ``out_dir`` and ``state``: each seed's study and log, its
    campaign entry (marked ``reused_from``) and the seed's reference results (an architecture trained there is not
    trained again: the same task, the same seed)."""
    for seed in state["settings"]["seeds"]:
        campaign = dict(source_state["campaigns"][campaign_id(FULL, seed)], reused_from=str(source))
        for name in (database_name(FULL, seed), campaign.get("log")):
            if name and (source / name).is_file():
                write_file(out_dir / name, (source / name).read_bytes())
        state["campaigns"][campaign_id(FULL, seed)] = campaign
        prefix = reference_id(seed, "")
        state["references"].update({key: value for key, value in source_state["references"].items()
                                    if key.startswith(prefix)})


def campaign_id(arm: str, seed: int) -> str:
    return f"{arm}/{seed}"


def halving_scheduler(base: CampaignConfig, min_epochs: int | None, reduction_factor: int | None
                      ) -> SchedulerConfig:
    """The halving arm's scheduler: the base config's ASHA settings (or ASHA's defaults) with the flags applied."""
    scheduler = base.scheduler
    options = {key: value for key, value in (("min_epochs", min_epochs), ("reduction_factor", reduction_factor))
               if value is not None}
    if scheduler.type != "asha":
        return SchedulerConfig(type="asha", **options)
    return dataclasses.replace(scheduler, **options)


def arm_config(
    base: CampaignConfig, arm: str, seed: int, out_dir: Path, *, device: str, halving: SchedulerConfig
) -> CampaignConfig:
    """``base`` as one arm of one seed: its own study and SQLite file, the seed for the controller, split and
    training, and halving on or off."""
    train = dataclasses.replace(base.train, seed=seed, device=device)
    return dataclasses.replace(
        base, study=study_name(arm, seed), storage=storage_url(out_dir, arm, seed), seed=seed, train=train,
        scheduler=halving if arm == HALVING else SchedulerConfig(type="none"),
    )


@dataclass(frozen=True)
class CampaignTask:
    arm: str
    seed: int
    config: CampaignConfig


@dataclass(frozen=True)
class ReferenceTask:
    seed: int
    architecture: str
    spec: Mapping[str, Any]
    config: CampaignConfig  # the campaign's (data, split, recipe, device, threads)
    epochs: int


class _Tee(io.TextIOBase):
    """The campaign's output: kept for its log file and echoed, line by line with a prefix, to stdout."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.text = io.StringIO()
        self._line = ""

    def write(self, text: str) -> int:
        self.text.write(text)
        self._line += text
        *lines, self._line = self._line.split("\n")
        for line in lines:
            print(f"{self.prefix} {line}", flush=True)
        return len(text)


def _quiet_optuna() -> None:
    """A worker's Optuna logs warnings only: each campaign's own output goes to its log."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def run_campaign_task(task: CampaignTask) -> dict[str, Any]:
    """Runs one arm x seed with the in-process executor; returns its wall time and log (or its error)."""
    from nas.campaign import run_campaign
    from nas.local import LocalExecutor

    log = _Tee(f"[{task.arm} seed {task.seed}]")
    start = time.perf_counter()
    error = None
    try:
        run_campaign(task.config, LocalExecutor(), out=log)
    except Exception as caught:  # recorded: the other campaigns go on, the table shows what is missing
        error = f"{type(caught).__name__}: {caught}"
        print(f"[{task.arm} seed {task.seed}] campaign failed: {error}", flush=True)
    return {"arm": task.arm, "seed": task.seed, "wall_s": time.perf_counter() - start, "error": error,
            "log": log.text.getvalue()}


def run_reference_task(task: ReferenceTask) -> dict[str, Any]:
    """Trains a winner for the reference epochs at the data's full size (the campaign's split, recipe, seed)."""
    from nas.data import load_data
    from nas.train import train_and_evaluate
    from search_spaces.spec import ArchSpec

    config = task.config
    data = load_data(config.data, image_size=None, val_fraction=config.val_fraction, seed=config.seed)
    train = dataclasses.replace(config.train, epochs=task.epochs, image_size=None, eval_image_size=None,
                                seed=config.seed, threads=config.cpus_per_trial, measure_step_time=False)
    if config.gpus_per_trial == 0:
        train = dataclasses.replace(train, device="cpu")
    result = train_and_evaluate(ArchSpec.from_dict(task.spec), data, train)
    print(f"[reference seed {task.seed}] {' '.join(ArchSpec.from_dict(task.spec).block_strings)}: "
          f"{result.status} A {_number(result.accuracy)} in {result.wall_time_s:.1f} s", flush=True)
    return {"seed": task.seed, "architecture": task.architecture, "status": result.status,
            "failure_reason": result.failure_reason, "accuracy": result.accuracy,
            "epochs": result.epochs_completed, "wall_time_s": result.wall_time_s,
            "image_size": data.image_size}


# --- the state of a run: bench.json and the studies ------------------------------------------------------------


def save_state(out_dir: Path, state: Mapping[str, Any]) -> None:
    write_file(out_dir / STATE_FILE, json.dumps(state, indent=1, sort_keys=True) + "\n")


def read_state(out_dir: Path) -> dict[str, Any]:
    path = out_dir / STATE_FILE
    if not path.is_file():
        raise SystemExit(f"error: {path} not found: --out-dir must be the directory of an earlier run")
    return json.loads(path.read_text())


def study_records(url: str, name: str) -> tuple[list[TrialRecord], Exponents]:
    """The trials of a finished campaign (opened read-only) and its reward exponents."""
    from nas.study import load_study

    study = load_study(url, name)
    exponents = Exponents.from_campaign(study.user_attrs.get(records.CAMPAIGN, {}))
    return [TrialRecord.from_trial(trial) for trial in study.get_trials(deepcopy=False)], exponents


def collect(out_dir: Path, state: Mapping[str, Any]) -> list[SeedResult]:
    """Every seed's arms, read from the studies, with the wall times and reference results of ``state``."""
    seeds = []
    for seed in state["settings"]["seeds"]:
        arms = {}
        for arm in ARMS:
            campaign = state["campaigns"].get(campaign_id(arm, seed), {})
            path = out_dir / database_name(arm, seed)
            trials, exponents = (study_records(storage_url(out_dir, arm, seed), study_name(arm, seed))
                                 if path.is_file() else ([], Exponents()))
            arms[arm] = summarize_arm(arm, seed, trials, campaign_wall_s=campaign.get("wall_s"),
                                      exponents=exponents)
        references = {}
        for arm, result in arms.items():
            if result.winner is not None and result.winner.architecture is not None:
                references[arm] = state["references"].get(reference_id(seed, result.winner.architecture), {})
        seeds.append(SeedResult(seed, arms, references))
    return seeds


# --- the command -----------------------------------------------------------------------------------------------


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers separated by commas, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"seeds must be distinct integers >= 0, got {text!r}")
    return seeds


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="the base campaign (default: %(default)s)")
    parser.add_argument("--data", help="data source (default: the config's)")
    parser.add_argument("--seeds", type=parse_seeds, default=[0, 1, 2], help="comma-separated (default: 0,1,2)")
    parser.add_argument("--trials", type=int, help="trials per campaign, the baseline included (default: config)")
    parser.add_argument("--epochs", type=int, help="proxy epochs, the full arm's budget (default: config)")
    parser.add_argument("--controller", default="random",
                        help="default random: both arms then propose the same candidates")
    add_device_argument(parser, "training device (replaces the config's)")
    parser.add_argument("--min-epochs", type=int, help="halving's first rung (default: the config's, else 1)")
    parser.add_argument("--reduction-factor", type=int, help="halving's reduction factor (default: config, else 3)")
    parser.add_argument("--reference-epochs", type=int,
                        help="reference training of the winners (default: 40; 2 with --quick)")
    parser.add_argument("--cpus-per-trial", type=int, help="threads of each campaign (default: the config's)")
    parser.add_argument("--workers", type=int,
                        help="parallel processes, each running one campaign or reference training (default: CPUs "
                             "// cpus_per_trial; 0 or 1 runs everything in this process)")
    parser.add_argument("--out-dir", help="a new or empty directory (default: runs/bench_asha/<time>)")
    parser.add_argument("--full-from", metavar="DIR",
                        help="take the full arm from the earlier run in DIR and run only the halving arm")
    parser.add_argument("--table-only", action="store_true", help="re-print the tables of --out-dir's run")
    parser.add_argument("--quick", action="store_true",
                        help="CI-size: synthetic data (256 images, 16px), 4 trials x 3 epochs, reference 2 epochs")
    return parser


def base_config(args: argparse.Namespace) -> CampaignConfig:
    """The config file with the flags (and --quick's sizes) applied."""
    config = load_campaign(args.config)
    quick = QUICK if args.quick else {}
    overrides = {
        "data": args.data or quick.get("data"),
        "trials": args.trials or quick.get("trials"),
        "epochs": args.epochs or quick.get("epochs"),
        "controller": args.controller,
        "cpus_per_trial": args.cpus_per_trial,
    }
    config = config.with_overrides(overrides)
    if args.quick:
        config = dataclasses.replace(config, timing=QUICK["timing"])
    return config


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.table_only:
        if not args.out_dir:
            raise SystemExit("error: --table-only needs --out-dir")
        out_dir = Path(args.out_dir)
        state = read_state(out_dir)
        print(render(collect(out_dir, state), state["settings"]), end="")
        return 0
    out_dir = Path(args.out_dir) if args.out_dir else new_out_dir()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise SystemExit(f"error: --out-dir {out_dir} exists and is not an empty directory; give a new one "
                         "(--table-only re-prints an earlier run)")
    try:
        base = base_config(args)
        base.check_inputs()
        halving = halving_scheduler(base, args.min_epochs, args.reduction_factor)
        configs = {(arm, seed): arm_config(base, arm, seed, out_dir, device=args.device, halving=halving)
                   for seed in args.seeds for arm in ARMS}
    except (CampaignError, ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    reference_epochs = (args.reference_epochs if args.reference_epochs is not None
                        else QUICK["reference_epochs"] if args.quick else 40)
    if reference_epochs < 1:
        raise SystemExit("error: --reference-epochs must be at least 1")
    if args.workers is not None and args.workers < 0:
        raise SystemExit("error: --workers must be 0 (this process) or more")
    threads = base.cpus_per_trial
    workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 1) // threads)

    settings = {
        "command": " ".join(["python benchmarks/bench_asha.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(), "config": str(args.config), "space": base.space, "data": base.data,
        "seeds": args.seeds, "trials": base.trials, "epochs": base.train.epochs, "controller": base.controller,
        "min_epochs": halving.min_epochs, "reduction_factor": halving.reduction_factor,
        "reference_epochs": reference_epochs, "device": args.device,
        "cpus_per_trial": threads, "workers": workers, "full_from": args.full_from,
    }
    source_state = check_full_arm(Path(args.full_from), configs, settings) if args.full_from else None
    out_dir.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"settings": settings, "campaigns": {}, "references": {}}
    if source_state is not None:
        copy_full_arm(Path(args.full_from), source_state, out_dir, state)
    save_state(out_dir, state)
    arms = (HALVING,) if args.full_from else ARMS
    print(f"bench_asha: {len(args.seeds)} seed(s) x {len(arms)} arm(s), {workers} worker(s) x {threads} thread(s), "
          f"out-dir {out_dir}" + (f", the full arm from {args.full_from}" if args.full_from else ""), flush=True)

    tasks = [CampaignTask(arm, seed, config) for (arm, seed), config in configs.items() if arm in arms]
    for done in worker_results(run_campaign_task, tasks, workers=workers, threads=threads,
                               initializer=_quiet_optuna):
        log = f"seed{done['seed']}-{done['arm']}.log"
        write_file(out_dir / log, done["log"])
        state["campaigns"][campaign_id(done["arm"], done["seed"])] = {
            "study": study_name(done["arm"], done["seed"]), "database": database_name(done["arm"], done["seed"]),
            "wall_s": done["wall_s"], "error": done["error"], "log": log,
        }
        save_state(out_dir, state)

    references: dict[str, ReferenceTask] = {}
    for seed in collect(out_dir, state):
        for arm, result in seed.arms.items():
            winner = result.winner
            if winner is not None and winner.architecture is not None and winner.spec is not None:
                key = reference_id(seed.seed, winner.architecture)  # an architecture both arms picked: once
                if key in state["references"]:  # trained by the run the full arm came from
                    continue
                references.setdefault(key, ReferenceTask(seed.seed, winner.architecture, winner.spec,
                                                         configs[(arm, seed.seed)], reference_epochs))
    for done in worker_results(run_reference_task, list(references.values()), workers=workers, threads=threads,
                               initializer=_quiet_optuna):
        state["references"][reference_id(done["seed"], done["architecture"])] = done
        save_state(out_dir, state)

    text = render(collect(out_dir, state), settings)
    write_file(out_dir / TABLE_FILE, text)
    print(text, end="")
    return 0


def new_out_dir() -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ("", *(f"-{number}" for number in range(1, 100))):
        path = Path("runs") / "bench_asha" / f"{stamp}{suffix}"
        if not path.exists():
            return path
    raise SystemExit("error: no free directory name under runs/bench_asha; give --out-dir")


if __name__ == "__main__":
    sys.exit(main())
