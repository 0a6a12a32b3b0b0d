"""The stage-factorized search space of EfficientNetV2 (Section 3.3), as plain data.

Each stage of a backbone chooses its op (MBConv or Fused-MBConv), number of layers, kernel size and expansion
ratio; channel widths and strides are reused from the backbone, and squeeze-excitation follows the op (MBConv
0.25, Fused-MBConv none) unless the space says otherwise. A candidate is described by flat decisions
(``stage3.op``, ``stage3.num_layers``, ...), the form Optuna stores as trial params.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from search_spaces.checks import check_int, is_int
from search_spaces.spec import MAX_IMAGE_SIZE, MAX_NUM_LAYERS, OPS, ArchSpec, SpecError, StageSpec

DECISION_FIELDS = ("op", "num_layers", "kernel_size", "expand_ratio")
PAPER_CHOICES = {"op": OPS, "kernel_size": (3, 5), "expand_ratio": (1, 4, 6)}
DEFAULT_SE_RATIO = {"mbconv": 0.25, "fused_mbconv": 0.0}
_SPACE_KEYS = ("name", "backbone", "image_size", "se_ratio", "defaults", "stages")


class SpaceError(SpecError):
    """A search space (or a file describing one) cannot produce valid networks; the message says why."""


@dataclass(frozen=True)
class StageChoices:
    """The values one stage may take for each decision field."""

    op: tuple[str, ...]
    num_layers: tuple[int, ...]
    kernel_size: tuple[int, ...]
    expand_ratio: tuple[int, ...]


@dataclass(frozen=True)
class Decision:
    """One categorical decision of the controller: ``name`` is the flat key, e.g. ``stage3.kernel_size``."""

    name: str
    stage: int
    field: str
    choices: tuple


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """Per-stage choices over a backbone; every candidate it can produce is a valid :class:`ArchSpec`.

    ``image_size``, when set, is the train and eval image size of every candidate (and of the baseline).
    """

    name: str
    backbone: ArchSpec
    stages: tuple[StageChoices, ...]
    se_ratio: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_SE_RATIO))
    image_size: int | None = None

    def __post_init__(self) -> None:
        if len(self.stages) != len(self.backbone.stages):
            raise SpaceError(
                f"the space has {len(self.stages)} stages but its backbone {self.backbone.name!r} has "
                f"{len(self.backbone.stages)}; give one entry per backbone stage"
            )
        unknown_ops = [op for op in self.se_ratio if op not in OPS]
        if unknown_ops:
            raise SpaceError(f"se_ratio: unknown op(s) {unknown_ops}; allowed ops are {list(OPS)}")
        object.__setattr__(self, "se_ratio", {op: self.se_ratio.get(op, DEFAULT_SE_RATIO[op]) for op in OPS})
        for index, (choices, stage) in enumerate(zip(self.stages, self.backbone.stages), start=1):
            _validate_choices(index, choices, stage, self.se_ratio)
        try:
            self._template()
        except SpecError as error:
            raise SpaceError(f"the space's candidates are invalid: {error}") from None
        try:
            self.to_params(self.baseline)
        except SpaceError as error:
            raise SpaceError(f"the backbone must be a member of its space, but {error}") from None

    @property
    def decisions(self) -> tuple[Decision, ...]:
        """Every decision in a fixed stage-major order (the order a sequential controller emits them)."""
        return tuple(
            Decision(f"stage{index}.{field}", index, field, getattr(choices, field))
            for index, choices in enumerate(self.stages, start=1)
            for field in DECISION_FIELDS
        )

    @property
    def size(self) -> int:
        """Number of distinct architectures in the space."""
        return math.prod(len(decision.choices) for decision in self.decisions)

    @property
    def baseline(self) -> ArchSpec:
        """The backbone, at the space's image size: the reference S and P of the reward are measured on it."""
        return self._template(name=self.backbone.name)

    def sample(self, rng: random.Random | int | None = None) -> ArchSpec:
        """A uniformly random candidate; ``rng`` is a ``random.Random`` or a seed."""
        if not isinstance(rng, random.Random):
            rng = random.Random(rng)
        return self.from_params({decision.name: rng.choice(decision.choices) for decision in self.decisions})

    def sample_distinct(self, count: int, rng: random.Random | int | None = None) -> list[ArchSpec]:
        """``count`` distinct candidates other than the baseline, drawn one after another from ``rng`` (so a
        shorter list is a prefix of a longer one); refuses a space too small to hold them."""
        if not isinstance(rng, random.Random):
            rng = random.Random(rng)
        seen = {self.baseline.block_strings}
        specs: list[ArchSpec] = []
        for _ in range(1000 * count):
            if len(specs) == count:
                break
            spec = self.sample(rng)
            if spec.block_strings not in seen:
                seen.add(spec.block_strings)
                specs.append(spec)
        if len(specs) < count:
            raise SpaceError(f"the {self.name!r} space gave only {len(specs)} distinct architectures besides its "
                             f"baseline, {count} asked")
        return specs

    def from_params(self, params: Mapping[str, Any]) -> ArchSpec:
        """The candidate that the flat decisions describe; every decision must be present and allowed."""
        expected = [decision.name for decision in self.decisions]
        unknown = [key for key in params if key not in expected]
        missing = [key for key in expected if key not in params]
        if unknown or missing:
            raise SpaceError(f"params do not match the space {self.name!r}: unknown {unknown}, missing {missing}")
        for decision in self.decisions:
            value = params[decision.name]
            if isinstance(value, bool) or value not in decision.choices:
                raise SpaceError(f"{decision.name} must be one of {decision.choices}, got {value!r}")
        stages = tuple(
            dataclasses.replace(
                stage,
                se_ratio=self.se_ratio[params[f"stage{index}.op"]],
                **{field: params[f"stage{index}.{field}"] for field in DECISION_FIELDS},
            )
            for index, stage in enumerate(self.backbone.stages, start=1)
        )
        return self._template(stages=stages)

    def to_params(self, spec: ArchSpec) -> dict[str, Any]:
        """The flat decisions of ``spec``; raises :class:`SpaceError` saying why a spec is not in the space."""
        if len(spec.stages) != len(self.stages):
            raise SpaceError(f"the spec has {len(spec.stages)} stages, the space {len(self.stages)}")
        params = {}
        for decision in self.decisions:
            value = getattr(spec.stages[decision.stage - 1], decision.field)
            if value not in decision.choices:
                raise SpaceError(f"stage {decision.stage}: {decision.field} {value!r} is not among {decision.choices}")
            params[decision.name] = value
        rebuilt = self.from_params(params)
        different = [
            field.name
            for field in dataclasses.fields(ArchSpec)
            if field.name != "name" and getattr(rebuilt, field.name) != getattr(spec, field.name)
        ]
        if different:
            raise SpaceError(
                f"the spec differs from the space's candidates in {different} (channels, strides, squeeze-excitation "
                f"and global settings come from the backbone {self.backbone.name!r})"
            )
        return params

    def to_dict(self) -> dict[str, Any]:
        """Plain, self-contained data (the backbone inline): what a study stores and :meth:`from_dict` reads."""
        return {
            "name": self.name,
            "backbone": self.backbone.to_dict(),
            "image_size": self.image_size,
            "se_ratio": dict(self.se_ratio),
            "stages": [{field: list(getattr(choices, field)) for field in DECISION_FIELDS} for choices in self.stages],
        }

    def fingerprint(self) -> str:
        """A short hash of the space's content, to refuse resuming a campaign on a different space."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, resolve_backbone: Callable[[str], ArchSpec] | None = None
    ) -> SearchSpace:
        """Builds a space from plain data (a space file's content).

        ``backbone`` is an inline spec mapping or, with ``resolve_backbone``, a name or path it resolves.
        ``defaults`` gives choices shared by all stages (the paper's choices when absent); each entry of
        ``stages`` overrides them. ``num_layers`` is a list of values or ``{min: a, max: b}`` (inclusive).
        """
        if not isinstance(data, Mapping):
            raise SpaceError(f"a search space must be a mapping, got {type(data).__name__}")
        unknown = [key for key in data if key not in _SPACE_KEYS]
        if unknown:
            raise SpaceError(f"unknown key(s) {unknown}; allowed keys are {list(_SPACE_KEYS)}")
        missing = [key for key in ("name", "backbone", "stages") if key not in data]
        if missing:
            raise SpaceError(f"missing required key(s) {missing}")
        backbone = _backbone(data["backbone"], resolve_backbone)
        image_size = data.get("image_size")
        if image_size is not None:
            check_int("image_size", image_size, 1, MAX_IMAGE_SIZE, error=SpaceError)
        se_ratio = data.get("se_ratio") or {}
        if not isinstance(se_ratio, Mapping):
            raise SpaceError(f"se_ratio must map ops {list(OPS)} to ratios, got {se_ratio!r}")
        defaults = _stage_entry("defaults", data.get("defaults") or {})
        raw_stages = data["stages"]
        if not isinstance(raw_stages, list):
            raise SpaceError(f"stages must be a list with one entry per backbone stage, got {raw_stages!r}")
        stages = []
        for index, raw_stage in enumerate(raw_stages, start=1):
            entry = {**PAPER_CHOICES, **defaults, **_stage_entry(f"stage {index}", raw_stage)}
            if "num_layers" not in entry:
                raise SpaceError(f"stage {index}: num_layers is required (a list or {{min: a, max: b}})")
            stages.append(StageChoices(**{field: entry[field] for field in DECISION_FIELDS}))
        return cls(
            name=str(data["name"]), backbone=backbone, stages=tuple(stages), se_ratio=se_ratio, image_size=image_size
        )

    def _template(self, *, stages: tuple[StageSpec, ...] | None = None, name: str = "") -> ArchSpec:
        """A candidate: the backbone's global settings with the given stages, at the space's image size."""
        changes: dict[str, Any] = {"name": name, "stages": stages if stages is not None else self.backbone.stages}
        if self.image_size is not None:
            changes.update(train_image_size=self.image_size, eval_image_size=self.image_size)
        return dataclasses.replace(self.backbone, **changes)


def _backbone(raw: Any, resolve_backbone: Callable[[str], ArchSpec] | None) -> ArchSpec:
    if isinstance(raw, Mapping):
        try:
            return ArchSpec.from_dict(raw)
        except SpecError as error:
            raise SpaceError(f"backbone: {error}") from None
    if isinstance(raw, str) and resolve_backbone is not None:
        return resolve_backbone(raw)
    raise SpaceError(f"backbone must be an inline spec mapping or a preset name or spec path, got {raw!r}")


def _stage_entry(where: str, raw: Any) -> dict[str, tuple]:
    """Normalizes one stage entry (or the defaults) to tuples of choices."""
    if not isinstance(raw, Mapping):
        raise SpaceError(f"{where}: must be a mapping of decision fields to choices, got {raw!r}")
    unknown = [key for key in raw if key not in DECISION_FIELDS]
    if unknown:
        raise SpaceError(f"{where}: unknown key(s) {unknown}; allowed keys are {list(DECISION_FIELDS)}")
    entry = {}
    for field, value in raw.items():
        if field == "num_layers" and isinstance(value, Mapping):
            value = _layer_range(where, value)
        if not isinstance(value, list) or not value:
            raise SpaceError(f"{where}: {field} must be a non-empty list of choices, got {value!r}")
        if len(set(map(repr, value))) != len(value):
            raise SpaceError(f"{where}: {field} lists a choice twice: {value}")
        entry[field] = tuple(value)
    return entry


def _layer_range(where: str, value: Mapping[str, Any]) -> list[int]:
    if set(value) != {"min", "max"}:
        raise SpaceError(f"{where}: num_layers as a range must have exactly the keys min and max, got {dict(value)}")
    low, high = value["min"], value["max"]
    for bound in (low, high):
        if not is_int(bound, 1, MAX_NUM_LAYERS):
            raise SpaceError(f"{where}: num_layers min and max must be integers in [1, {MAX_NUM_LAYERS}], got {bound!r}")
    if low > high:
        raise SpaceError(f"{where}: num_layers min ({low}) is greater than max ({high})")
    return list(range(low, high + 1))


def _validate_choices(index: int, choices: StageChoices, stage: StageSpec, se_ratio: Mapping[str, float]) -> None:
    """Every single choice must make a valid stage with the backbone's channels and stride."""
    for field in DECISION_FIELDS:
        values = getattr(choices, field)
        if not values:
            raise SpaceError(f"stage {index}: {field} has no choices")
        for value in values:
            changes = {field: value}
            if field == "op" and value in OPS:
                changes["se_ratio"] = se_ratio[value]
            try:
                dataclasses.replace(stage, **changes)
            except SpecError as error:
                raise SpaceError(f"stage {index}: {error}") from None
