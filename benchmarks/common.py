"""What the benchmark scripts share: rank statistics, markdown tables, JSONL results that resume, worker pools, the
machine's description, the one ``--device`` default and the ``--json`` convention.

``benchmarks/`` is a folder of scripts, not a package: a script imports this as ``benchmarks.common`` with the
repository root on ``sys.path`` (each script puts it there). Nothing here imports torch at import time, so a
spawned worker of a script that needs no torch does not pay for it.

The ``--json`` convention (:func:`add_json_argument`): with ``--json`` a script prints its result as one JSON object
on stdout and nothing else there; what it prints for people (progress, tables) goes to stderr instead
(:func:`human_output`). ``benchmarks/gpu_check.py`` reads that object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import random
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TypeVar

Task = TypeVar("Task")
Result = TypeVar("Result")

#: The device every benchmark runs on unless ``--device`` says otherwise: ``auto`` is CUDA, else MPS, else the CPU
#: (:func:`nas.measure.resolve_device`), as ``nas train`` and ``nas bench`` default to.
DEFAULT_DEVICE = "auto"
ALIGNMENTS = ("l", "r")


# --- command line ---------------------------------------------------------------------------------------------------

def add_device_argument(parser: argparse.ArgumentParser, help_text: str = "the device to run on") -> None:
    """``--device`` with the one default, :data:`DEFAULT_DEVICE`."""
    parser.add_argument("--device", default=DEFAULT_DEVICE,
                        help=f"{help_text}: cpu, cuda, cuda:N, mps or auto (default: %(default)s)")


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    """``--json``: the result as one JSON object on stdout, the text for people on stderr (module doc)."""
    parser.add_argument("--json", action="store_true",
                        help="print the result as one JSON object on stdout (the text for people goes to stderr)")


@contextlib.contextmanager
def human_output(as_json: bool) -> Iterator[None]:
    """While active, with ``as_json``, ``print`` goes to stderr: stdout is kept for :func:`print_json`."""
    if not as_json:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def print_json(result: Any) -> None:
    """``result`` as one JSON object on stdout (NaN stays NaN, which Python's ``json`` reads back)."""
    print(json.dumps(result, sort_keys=True), flush=True)


# --- rank statistics ------------------------------------------------------------------------------------------------

def _checked_pair(a: Sequence[float], b: Sequence[float]) -> tuple[list[float], list[float]]:
    x, y = [float(value) for value in a], [float(value) for value in b]
    if len(x) != len(y):
        raise ValueError(f"rank statistics need two sequences of one length, got lengths {len(x)} and {len(y)}")
    if not all(math.isfinite(value) for value in x + y):
        raise ValueError("rank statistics need finite values: drop the NaN or infinite entries first")
    return x, y


def average_ranks(values: Sequence[float]) -> list[float]:
    """The rank of each value, from 1 for the smallest; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda index: values[index])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho: the Pearson correlation of the average ranks (ties share their mean rank).

    NaN when there are fewer than two values or either side is constant (no order to compare), as
    :func:`kendall_tau_b`. Raises ValueError for sequences of different lengths or values that are not finite.
    """
    x, y = _checked_pair(a, b)
    if len(x) < 2:
        return math.nan
    rx, ry = average_ranks(x), average_ranks(y)
    mean = (len(x) + 1) / 2  # the mean of average ranks is always this
    covariance = sum((p - mean) * (q - mean) for p, q in zip(rx, ry))
    spread = math.sqrt(sum((p - mean) ** 2 for p in rx) * sum((q - mean) ** 2 for q in ry))
    return covariance / spread if spread else math.nan


def kendall_tau_b(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((pairs not tied in a) * (pairs not tied in b)); a pair tied
    on one side counts in neither the numerator nor that side's factor.

    NaN when there are fewer than two values or either side is constant, as :func:`spearman`. Raises ValueError for
    sequences of different lengths or values that are not finite.
    """
    x, y = _checked_pair(a, b)
    score = untied_a = untied_b = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            sign_a = (x[i] > x[j]) - (x[i] < x[j])
            sign_b = (y[i] > y[j]) - (y[i] < y[j])
            score += sign_a * sign_b
            untied_a += sign_a != 0
            untied_b += sign_b != 0
    denominator = math.sqrt(untied_a * untied_b)
    return score / denominator if denominator else math.nan


# --- markdown tables ------------------------------------------------------------------------------------------------

def bootstrap_interval(
    statistic: Callable[[list[int]], float], count: int, *, resamples: int = 2000, confidence: float = 0.9,
    seed: int = 0,
) -> tuple[float, float]:
    """A percentile bootstrap interval of ``statistic`` over ``count`` items (candidates): ``statistic(indices)``
    computed on ``resamples`` draws of ``count`` indices with replacement, seeded; the central ``confidence`` share
    of the values that are not NaN (a draw of one repeated candidate has no order). ``(nan, nan)`` when fewer than
    two items or no finite value.

    It says how much a rank correlation over a few candidates could move with other candidates of the same kind:
    16 candidates whose Spearman is 0.89 (a normal sample and the same plus noise of 0.6 sd) get [0.68, 0.96].
    """
    if count < 2:
        return math.nan, math.nan
    generator = random.Random(seed)
    values = []
    for _ in range(resamples):
        value = statistic([generator.randrange(count) for _ in range(count)])
        if math.isfinite(value):
            values.append(value)
    if not values:
        return math.nan, math.nan
    values.sort()
    tail = (1 - confidence) / 2
    return _quantile(values, tail), _quantile(values, 1 - tail)


def _quantile(ordered: Sequence[float], share: float) -> float:
    """The ``share`` quantile of sorted ``ordered``, linear between order statistics (numpy's default)."""
    position = share * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub markdown table: ``align`` has one letter a column, ``l`` (the default) or ``r``; each cell is
    ``str(value)`` with any ``|`` escaped. No trailing newline."""
    align = align or "l" * len(header)
    if len(align) != len(header) or set(align) - set(ALIGNMENTS):
        raise ValueError(f"align must have one of {ALIGNMENTS} per column ({len(header)}), got {align!r}")

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    lines = [line(header), line("---:" if letter == "r" else "---" for letter in align)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a table row has {len(row)} cells, the header {len(header)}: {row!r}")
        lines.append(line(row))
    return "\n".join(lines)


# --- JSONL results --------------------------------------------------------------------------------------------------

def append_json_line(path: Path, record: dict[str, Any]) -> None:
    """Appends ``record`` as one line, flushed and synced, so a killed run loses at most the line in flight. A file
    whose last line was cut short by a kill gets a line break first: the fragment stays a line of its own (skipped
    by :func:`read_json_lines`) instead of swallowing this record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as file:
        torn = file.tell() > 0 and _last_byte(path) != b"\n"
        file.write((b"\n" if torn else b"") + (json.dumps(record) + "\n").encode("utf-8"))
        file.flush()
        os.fsync(file.fileno())


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as file:
        file.seek(-1, os.SEEK_END)
        return file.read(1)


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of ``path``, one a line (none when it does not exist); a line that is not one (cut short by
    a kill while being written) is skipped with a note on stderr."""
    if not path.exists():
        return []
    records = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                print(f"{path}:{number}: skipping an unreadable line (a run cut short while writing?)",
                      file=sys.stderr)
    return records


class JsonlResults:
    """A results file that resumes: one JSON object a line, each naming its job in the field ``key``. Opening it
    reads the finished jobs (the last record of a key wins); :meth:`pending` leaves them out; :meth:`append`
    records one more as soon as it finishes, so a run cut short starts again where it stopped."""

    def __init__(self, path: Path, key: str = "key") -> None:
        self.path, self.key = path, key
        self.records: dict[str, dict[str, Any]] = {}
        for record in read_json_lines(path):
            if key in record:
                self.records[record[key]] = record
            else:
                print(f"{path}: skipping a record without {key!r}", file=sys.stderr)

    def __contains__(self, key: object) -> bool:
        return key in self.records

    def pending(self, jobs: Iterable[Task], key: Callable[[Task], str]) -> list[Task]:
        """The jobs whose ``key(job)`` is not in the file yet, in their order."""
        return [job for job in jobs if key(job) not in self.records]

    def append(self, record: dict[str, Any]) -> None:
        if self.key not in record:
            raise ValueError(f"a result record needs the field {self.key!r}, got fields {sorted(record)}")
        self.records[record[self.key]] = record
        append_json_line(self.path, record)


# --- worker pools ---------------------------------------------------------------------------------------------------

def set_threads(threads: int | None, *, fresh_process: bool = False) -> None:
    """``threads`` torch threads for this process (None: leave torch's default). In a fresh process, before torch
    is imported, OpenMP and MKL get the same count (they read it once, at import); elsewhere the environment is left
    alone, as it would reach the processes this one starts."""
    if threads is None:
        return
    if fresh_process:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _start_worker(threads: int | None, initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    set_threads(threads, fresh_process=True)
    if initializer is not None:
        initializer(*initargs)


def worker_results(function: Callable[[Task], Result], tasks: Sequence[Task], *, workers: int,
                   threads: int | None = None, initializer: Callable[..., None] | None = None,
                   initargs: tuple[Any, ...] = ()) -> Iterator[Result]:
    """``function(task)`` of every task: with ``workers`` <= 1 in this process, in order (debugging, tests); else in
    ``workers`` spawned processes (spawn: forking a process with torch's thread pool running is unsafe), yielding
    each result as it finishes. Every worker, this process included, first gets ``threads`` torch threads
    (:func:`set_threads`) and then runs ``initializer(*initargs)``. Closing the iteration early, or an error,
    cancels the tasks not started."""
    if workers <= 1:
        set_threads(threads)
        if initializer is not None:
            initializer(*initargs)
        for task in tasks:
            yield function(task)
        return
    if not tasks:
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context, initializer=_start_worker,
                             initargs=(threads, initializer, initargs)) as pool:
        futures = [pool.submit(function, task) for task in tasks]  # in order: the pool starts them so
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:  # an error, Ctrl-C or the caller stopping early: do not start the rest
            pool.shutdown(wait=False, cancel_futures=True)
            raise


# --- the machine ----------------------------------------------------------------------------------------------------

def machine() -> str:
    """The machine a benchmark ran on: its CPU as :func:`nas.measure.describe_device` names it, the CPU count and
    the Python version."""
    import torch

    from nas.measure import describe_device

    return f"{describe_device(torch.device('cpu'))}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
