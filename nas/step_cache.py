"""The step-time cache: S/S0 of an architecture, kept in the storage so that it is timed once.

S depends on the architecture, the device and the timing settings, not on the data (issue 16): a re-run of an
interrupted trial, a resumed campaign, another campaign on the same storage and ``nas bench --relative-to`` all
reuse a measurement instead of timing again. An entry is keyed by the fingerprints of the candidate and of its
reference (a ratio needs both), the device's description (hardware, threads and torch version, as
:func:`nas.measure.describe_device` writes it) and the resolved timing settings.

Entries live as user attributes of one study per storage, :data:`CACHE_STUDY`, beside the campaigns' studies: any
Optuna storage holds it, every campaign on the storage shares it, and deleting that study empties the cache.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import optuna

from search_spaces.spec import ArchSpec

#: The study that holds the cache in each storage (':' keeps it apart from the campaigns' study names).
CACHE_STUDY = "nas:step-times"
#: The measurement fields an entry keeps (EvalResult's names).
ENTRY_FIELDS = ("step_time_ratio", "step_time_ratio_iqr", "step_time_s", "reference_step_time_s")


def architecture_fingerprint(spec: ArchSpec) -> str:
    """What the network is, without its name: two specs that build the same network share it."""
    data = {key: value for key, value in spec.to_dict().items() if key != "name"}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def cache_key(spec: ArchSpec, reference: ArchSpec, device: str, timing: Mapping[str, Any]) -> str:
    """The key of ``spec``'s ratio to ``reference`` on ``device`` at the resolved ``timing`` settings."""
    parts = {
        "spec": architecture_fingerprint(spec),
        "reference": architecture_fingerprint(reference),
        "device": device,
        "timing": dict(timing),
    }
    return "s:" + hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


class StepTimeCache:
    """The cache of one storage. Reads never create the cache's study; the first :meth:`put` does."""

    def __init__(self, storage: optuna.storages.BaseStorage) -> None:
        self._storage = storage
        self._study_id: int | None = None

    def get(self, key: str) -> dict[str, Any] | None:
        """The entry stored under ``key``, or None."""
        study_id = self._existing_study_id()
        if study_id is None:
            return None
        entry = self._storage.get_study_user_attrs(study_id).get(key)
        return dict(entry) if isinstance(entry, Mapping) else None

    def put(self, key: str, measurement: Mapping[str, Any]) -> None:
        """Stores the :data:`ENTRY_FIELDS` of ``measurement`` (an EvalResult's dict) under ``key``."""
        entry = {field: measurement[field] for field in ENTRY_FIELDS}
        self._storage.set_study_user_attr(self._created_study_id(), key, entry)

    def _existing_study_id(self) -> int | None:
        if self._study_id is None:
            try:
                self._study_id = self._storage.get_study_id_from_name(CACHE_STUDY)
            except KeyError:
                return None
        return self._study_id

    def _created_study_id(self) -> int:
        study_id = self._existing_study_id()
        if study_id is not None:
            return study_id
        try:
            self._study_id = self._storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], CACHE_STUDY)
        except optuna.exceptions.DuplicatedStudyError:  # another driver created it meanwhile
            self._study_id = self._storage.get_study_id_from_name(CACHE_STUDY)
        return self._study_id
