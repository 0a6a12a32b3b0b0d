"""Where a campaign's files go when the user names no path: the one home of the output naming conventions.

``nas search``, ``nas export``, ``nas report``, the report's instructions and the Ray executor all spell these
paths; each reads them from here, so the page never tells a user to look where the command did not write.
Paths are relative to the working directory, as the README's commands are.
"""

from __future__ import annotations

from pathlib import Path

RUNS_DIRECTORY = Path("runs")  # studies, exported specs and Ray's own files, unless a path is given
REPORT_FILE = "report.html"  # the page `nas report -o DIR` writes into DIR, with its figures beside it


def default_storage_url(study: str) -> str:
    """Where a study lives when no storage is given: ``sqlite:///runs/STUDY.db``."""
    return f"sqlite:///{(RUNS_DIRECTORY / f'{study}.db').as_posix()}"


def best_spec_path(study: str) -> Path:
    """Where ``nas search`` exports the winner's spec unless ``--export`` says: ``runs/STUDY-best.yaml``."""
    return RUNS_DIRECTORY / f"{study}-best.yaml"


def trial_spec_name(study: str, number: int) -> str:
    """The name ``nas export`` gives trial ``number``'s spec unless ``--name`` says: ``STUDY-trialN``."""
    return f"{study}-trial{number}"


def report_directory(study: str) -> Path:
    """Where ``nas report`` writes unless ``-o`` says: ``runs/STUDY-report``."""
    return RUNS_DIRECTORY / f"{study}-report"


def ray_storage_path() -> Path:
    """Ray Tune's own results directory, absolute as Tune requires: ``runs/ray``."""
    return (RUNS_DIRECTORY / "ray").resolve()
