"""The step-time cache: S/S0 of an architecture, kept in the storage so that it is timed once.

S depends on the architecture, the device and the timing settings, not on the data (issue 16): a re-run of an
interrupted trial, a resumed campaign, another campaign on the same storage and ``nas bench --relative-to`` all
reuse a measurement instead of timing again. An entry is keyed by the fingerprints of the candidate and of its
reference (a ratio needs both), the device's description (hardware, threads and torch version, as
:func:`nas.measure.describe_device` writes it) and the resolved timing settings.

Entries live as user attributes of one study per storage, :data:`CACHE_STUDY`, beside the campaigns' studies: any
Optuna storage holds it, every campaign on the storage shares it, and deleting that study empties the cache. The
storage itself is read and written by :class:`nas.storage.AttributeStudy`, with the ledger's other storage code.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Mapping

from nas.storage import AttributeStudy
from search_spaces.spec import ArchSpec

if TYPE_CHECKING:
    import optuna

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
        self._entries = AttributeStudy(storage, CACHE_STUDY)

    def get(self, key: str) -> dict[str, Any] | None:
        """The entry stored under ``key``, or None."""
        entry = self._entries.get(key)
        return dict(entry) if isinstance(entry, Mapping) else None

    def put(self, key: str, measurement: Mapping[str, Any]) -> None:
        """Stores the :data:`ENTRY_FIELDS` of ``measurement`` (an EvalResult's dict) under ``key``."""
        self._entries.put(key, {field: measurement[field] for field in ENTRY_FIELDS})
