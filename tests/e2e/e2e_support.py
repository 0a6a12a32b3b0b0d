"""What the end-to-end tests share: a tiny campaign, running `nas` as a user does, and reading a study from outside.

A study is polled while its driver runs without opening an Optuna storage on it: an Optuna RDB storage creates
the schema when opened, and racing the driver to do so could fail the driver. SQLite and PostgreSQL are read with
plain read-only SQL; the journal file is replayed by Optuna, which only reads it.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml

CAMPAIGN = {
    "space": "tiny",
    "data": "synthetic:num_images=640,image_size=32",
    "trials": 4,
    "controller": "random",
    "study": "e2e",
    "workers": 2,
    "cpus_per_trial": 1,
    "train": {"epochs": 1, "batch_size": 64, "timing_warmup": 1, "timing_repeats": 2, "bn_recalibration_batches": 2},
    # S/S0 paired, but briefly: two pairs of short windows on a small batch
    "timing": {"batch_size": 8, "warmup": 1, "pairs": 2, "window_s": 0.02, "precision": None, "max_stall": None},
}


def write_campaign(directory: Path, **changes) -> Path:
    path = directory / "campaign.yaml"
    path.write_text(yaml.safe_dump({**CAMPAIGN, **changes}))
    return path


def nas(
    directory: Path, *argv: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m nas ARGV` in a fresh process with ``directory`` as the working directory."""
    return subprocess.run([sys.executable, "-m", "nas", *argv], cwd=directory, capture_output=True, text=True,
                          timeout=timeout, check=False, env=env)


def sqlite_url(directory: Path, name: str = "e2e") -> str:
    """The default storage of study ``name`` for a campaign run in ``directory``."""
    return f"sqlite:///{directory}/runs/{name}.db"


def load(storage_url: str, name: str = "e2e") -> optuna.Study:
    if storage_url.startswith("journal:"):
        backend = optuna.storages.journal.JournalFileBackend(storage_url.removeprefix("journal:"))
        return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(backend))
    return optuna.load_study(study_name=name, storage=storage_url)


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count toward the budget: complete ones and failures that were not interruptions."""
    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
            or (t.state == optuna.trial.TrialState.FAIL and not t.user_attrs.get("interrupted"))]


TRIAL_STATES = """
SELECT t.state, EXISTS(SELECT 1 FROM trial_user_attributes a WHERE a.trial_id = t.trial_id AND a.key = 'spec')
FROM trials t JOIN studies s ON s.study_id = t.study_id WHERE s.study_name = {placeholder} ORDER BY t.number
"""


def trial_states(storage_url: str, name: str) -> list[tuple[str, bool]]:
    """(state, handed to a worker) per trial of study ``name``; empty while the study does not exist yet."""
    try:
        if storage_url.startswith("sqlite:///"):
            database = Path(storage_url.removeprefix("sqlite:///"))
            if not database.exists():
                return []
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as connection:
                rows = connection.execute(TRIAL_STATES.format(placeholder="?"), (name,)).fetchall()
        elif storage_url.startswith("postgresql"):
            import psycopg

            with psycopg.connect(storage_url.replace("postgresql+psycopg", "postgresql")) as connection:
                rows = connection.execute(TRIAL_STATES.format(placeholder="%s"), (name,)).fetchall()
        else:
            if not Path(storage_url.removeprefix("journal:")).exists():
                return []
            study = load(storage_url, name)
            rows = [(t.state.name, "spec" in t.user_attrs) for t in study.get_trials(deepcopy=False)]
    except Exception:  # no tables or study yet, or the database locked for a moment: not there yet
        return []
    return [(state, bool(dispatched)) for state, dispatched in rows]


def wait_for_running_trial(storage_url: str, name: str, complete: int, timeout: float = 240) -> None:
    """Waits until ``complete`` trials are done and another one is training on a worker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        states = trial_states(storage_url, name)
        if [state for state, _ in states].count("COMPLETE") >= complete and ("RUNNING", True) in states:
            time.sleep(1.0)  # into the trial's training, past its hand-over
            return
    raise AssertionError(f"the campaign never reached {complete} finished trials with one running")
