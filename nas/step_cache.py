"""The step-time cache: S/S0 of an architecture, kept in the storage so that it is timed once.

S depends on the network that is timed, the device, the timing settings and the optimizer's work, not on the data's
images (issue 16): a re-run of an interrupted trial, a resumed campaign, another campaign on the same storage and
``nas bench --relative-to`` all reuse a measurement instead of timing again. An entry is keyed by everything that
changes the timed work (:func:`cache_key`): the fingerprints of the candidate and of its reference (a ratio needs
both), the number of classes and of input channels (they size the head and the stem), the device's description
(hardware, threads and torch version, as :func:`nas.measure.describe_device` writes it), the resolved timing
settings, and the recipe's fields that change a step's work (:data:`STEP_WORK_FIELDS`: the optimizer and what
it does per step).

An entry is checked when it is read (:func:`entry_problem`): one with missing fields, a non-number, a value that
is not finite and positive, or a ratio outside :data:`PLAUSIBLE_RATIO` is ignored, with one warning line, and the
architecture is timed again; its new measurement replaces it.

Entries live as user attributes of one study per storage, :data:`CACHE_STUDY`, beside the campaigns' studies: any
Optuna storage holds it, every campaign on the storage shares it, and deleting that study empties the cache. The
storage itself is read and written by :class:`nas.storage.AttributeStudy`, with the ledger's other storage code.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from typing import TYPE_CHECKING, Any, Callable, Mapping

from nas.records import IMPRECISE, STOPPED_BY
from nas.storage import AttributeStudy
from search_spaces.spec import ArchSpec

if TYPE_CHECKING:
    import optuna

#: The study that holds the cache in each storage (':' keeps it apart from the campaigns' study names).
CACHE_STUDY = "nas:step-times"
#: The measurement fields an entry keeps (EvalResult's names): the positive times and ratio, the spread and the
#: measurement's seconds (>= 0), the interval (None when too few pairs gave one), the pair counts, and why it ended.
POSITIVE_FIELDS = ("step_time_ratio", "step_time_s", "reference_step_time_s")
NON_NEGATIVE_FIELDS = ("step_time_ratio_iqr", "step_time_measure_s")
INTERVAL_FIELDS = ("step_time_ratio_low", "step_time_ratio_high")
COUNT_FIELDS = ("step_time_pairs", "step_time_discarded_pairs")
ENTRY_FIELDS = (*POSITIVE_FIELDS, *NON_NEGATIVE_FIELDS, *INTERVAL_FIELDS, *COUNT_FIELDS, "step_time_stopped_by")
#: The recipe fields that change a timed step's work: the optimizer's kind and the per-step updates it makes.
STEP_WORK_FIELDS = ("optimizer", "momentum", "weight_decay", "label_smoothing")
#: The S/S0 a cache entry may hold: a network 1,000 times faster or slower than the baseline is not one the same
#: space builds; a value outside is a damaged or foreign entry, never a reward's input.
PLAUSIBLE_RATIO = (1e-3, 1e3)


def architecture_fingerprint(spec: ArchSpec) -> str:
    """What the network is, without its name: two specs that build the same network share it."""
    data = {key: value for key, value in spec.to_dict().items() if key != "name"}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def step_work(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a training recipe (a TrainConfig's dict) that change what one timed step computes."""
    return {field: recipe.get(field) for field in STEP_WORK_FIELDS}


def cache_key(
    spec: ArchSpec,
    reference: ArchSpec,
    *,
    num_classes: int,
    in_channels: int,
    device: str,
    timing: Mapping[str, Any],
    recipe: Mapping[str, Any],
) -> str:
    """The key of ``spec``'s ratio to ``reference``, both built for ``num_classes`` outputs and ``in_channels``
    input channels, on ``device`` at the resolved ``timing`` settings with ``recipe``'s optimizer
    (:func:`step_work`; the other recipe fields never change a step's work)."""
    parts = {
        "spec": architecture_fingerprint(spec),
        "reference": architecture_fingerprint(reference),
        "num_classes": num_classes,
        "in_channels": in_channels,
        "device": device,
        "timing": dict(timing),
        "step": step_work(recipe),
    }
    return "s:" + hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def entry_problem(entry: Any) -> str | None:
    """Why a cache entry read back cannot be used (None when it can): it must be a mapping holding every one of
    :data:`ENTRY_FIELDS`: the step times and the ratio finite and > 0, the ratio within :data:`PLAUSIBLE_RATIO`,
    the IQR and the seconds finite and >= 0, the interval None or two finite numbers around the ratio, the pair
    counts integers (at least one pair used) and the reason one of :data:`STOPPED_BY` (another client may have
    written the storage; a bad ratio would become a reward)."""
    if not isinstance(entry, Mapping):
        return f"it is a {type(entry).__name__}, not a mapping of {', '.join(ENTRY_FIELDS)}"
    for field in (*POSITIVE_FIELDS, *NON_NEGATIVE_FIELDS):
        value = entry.get(field)
        if not _is_real(value):
            return f"{field} is {value!r}, not a finite number"
        spread = field in NON_NEGATIVE_FIELDS  # a spread may be 0; a time or a ratio may not
        if value < 0 or (value == 0 and not spread):
            return f"{field} is {value!r}, not {'>= 0' if spread else '> 0'}"
    low, high = PLAUSIBLE_RATIO
    ratio = entry["step_time_ratio"]
    if not low <= ratio <= high:
        return f"step_time_ratio {ratio!r} is outside the plausible [{low:g}, {high:g}]"
    interval = [entry.get(field) for field in INTERVAL_FIELDS]
    if interval != [None, None] and not (all(map(_is_real, interval)) and interval[0] <= ratio <= interval[1]):
        return f"the interval {interval!r} is not two numbers around step_time_ratio {ratio!r}, nor None"
    for field, least in zip(COUNT_FIELDS, (1, 0)):
        value = entry.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            return f"{field} is {value!r}, not an integer >= {least}"
    if entry.get("step_time_stopped_by") not in STOPPED_BY:
        return f"step_time_stopped_by is {entry.get('step_time_stopped_by')!r}, not one of {', '.join(STOPPED_BY)}"
    return None


def _is_real(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class StepTimeCache:
    """The cache of one storage. Reads never create the cache's study; the first :meth:`put` does. ``warn``
    receives the one line that says an entry was ignored (default: stderr)."""

    def __init__(self, storage: optuna.storages.BaseStorage, *, warn: Callable[[str], None] = _warn) -> None:
        self._entries = AttributeStudy(storage, CACHE_STUDY)
        self._warn = warn

    def get(self, key: str) -> dict[str, Any] | None:
        """The measurement stored under ``key`` (its :data:`ENTRY_FIELDS`, numbers as floats but the counts), or
        None when there is none or it fails :func:`entry_problem`; an ignored entry is said in one line and is
        replaced by the next :meth:`put` of the same key."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        problem = entry_problem(entry)
        if problem is not None:
            self._warn(f"step-time cache {CACHE_STUDY!r}: entry {key} ignored ({problem}); timing again")
            return None
        return {field: float(entry[field]) if _is_real(entry[field]) and field not in COUNT_FIELDS else entry[field]
                for field in ENTRY_FIELDS}

    def put(self, key: str, measurement: Mapping[str, Any]) -> None:
        """Stores the :data:`ENTRY_FIELDS` of ``measurement`` (an EvalResult's dict) under ``key``, unless the
        measurement was imprecise (it hit its time cap: :data:`~nas.records.IMPRECISE`): the trial keeps it, marked
        so, and the next trial of the architecture times it again, perhaps on a quieter machine."""
        if measurement.get("step_time_stopped_by") in IMPRECISE:
            return
        self._entries.put(key, {field: measurement[field] for field in ENTRY_FIELDS})
