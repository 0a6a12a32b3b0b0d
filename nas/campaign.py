"""Campaign settings: what a search evaluates, where its study lives and how trials run.

A campaign file (``experiments/*.yaml``) holds a mapping of these fields; every field can be overridden by a
``nas search`` flag. Unknown keys are refused. The proxy settings (space, data, training recipe, per-trial
resources, seed) define what a trial's numbers mean, so a study refuses to resume under different ones.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from nas.controllers import CONTROLLERS
from nas.data import DataError, check_source, holdout_count
from nas.train import TrainConfig
from search_spaces import presets
from search_spaces.io import read_yaml_mapping
from search_spaces.spec import SpecError

# TrainConfig fields a campaign decides for itself: the device follows the trial's resources, threads its CPUs.
_RUNNER_OWNED_TRAIN_FIELDS = ("device", "threads")
_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# Ranges of the integer fields. The caps refuse absurd values before any study, directory or Ray node exists; the
# seed is capped at 2^32 - 1 because Optuna's samplers seed NumPy with it.
_INTEGER_RANGES = {"trials": (1, 100_000), "workers": (1, 1024), "cpus_per_trial": (1, 1024), "seed": (0, 2**32 - 1)}


class CampaignError(ValueError):
    """A campaign file or option is invalid; the message names the field."""


@dataclass(frozen=True, kw_only=True)
class CampaignConfig:
    """One search campaign. ``trials`` counts finished trials wanted in the study, the baseline included.

    ``storage`` None means ``sqlite:///runs/<study>.db``. ``address`` None starts a local Ray; ``auto`` or
    ``HOST:PORT`` joins a cluster. ``gpus_per_trial`` None is 1 when the cluster has GPUs, else 0.
    The reward is ``A * (S / S_baseline)^step_time_exponent * (P / P_baseline)^params_exponent``.
    """

    space: str = "tiny"
    data: str = "synthetic"
    val_fraction: float = 0.1
    trials: int = 20
    controller: str = "rl"
    study: str = "nas"
    storage: str | None = None
    address: str | None = None
    workers: int = 1
    cpus_per_trial: int = 1
    gpus_per_trial: float | None = None
    seed: int = 0
    step_time_exponent: float = -0.07
    params_exponent: float = -0.05
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for name, (low, high) in _INTEGER_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise CampaignError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        if self.controller not in CONTROLLERS:
            raise CampaignError(f"controller must be one of {CONTROLLERS}, got {self.controller!r}")
        if not isinstance(self.study, str) or not _STUDY_NAME.fullmatch(self.study):
            raise CampaignError(
                f"study must be 1-100 letters, digits, '_', '.' or '-' (starting with a letter or digit), "
                f"got {self.study!r}"
            )
        if self.gpus_per_trial is not None and (
            isinstance(self.gpus_per_trial, bool) or not isinstance(self.gpus_per_trial, (int, float))
            or not 0 <= self.gpus_per_trial <= 64
        ):
            raise CampaignError(f"gpus_per_trial must be a number in [0, 64] or null, got {self.gpus_per_trial!r}")
        if not isinstance(self.val_fraction, (int, float)) or not 0 < self.val_fraction <= 0.5:
            raise CampaignError(f"val_fraction must be a number in (0, 0.5], got {self.val_fraction!r}")
        for name in ("step_time_exponent", "params_exponent"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not -10 <= value <= 10:
                raise CampaignError(f"{name} must be a number in [-10, 10], got {value!r}")
        for name in ("space", "data"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise CampaignError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        for name in ("storage", "address"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise CampaignError(f"{name} must be a non-empty string or null, got {value!r}")
        if not isinstance(self.train, TrainConfig):
            raise CampaignError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        try:  # the name and options only: the files it names are checked when the campaign starts
            check_source(self.data, image_size=self.train.image_size, files=False)
        except DataError as error:
            raise CampaignError(f"data: {error}") from None

    def check_inputs(self) -> None:
        """Refuses a space that does not load, a data source that would be refused (missing or malformed files,
        caps), a backbone that pins other input channels than the data has, and a batch larger than the training
        set.

        Construction checks values only; this reads the space file and the data's headers, without loading any
        image. ``nas search`` calls it before it creates a study, a directory or a Ray node.
        """
        try:
            space = presets.get_space(self.space)
        except (SpecError, FileNotFoundError) as error:
            raise CampaignError(f"space: {error}") from None
        try:
            summary = check_source(self.data, image_size=self.train.image_size)
        except DataError as error:
            raise CampaignError(f"data: {error}") from None
        pinned = space.baseline.in_channels
        if pinned is not None and summary.in_channels is not None and pinned != summary.in_channels:
            raise CampaignError(f"space: its backbone pins in_channels {pinned}, but the data {self.data!r} has "
                                f"{summary.in_channels} channel(s); unpin it to follow the data, or use other data")
        if summary.num_images is not None:
            train_images = summary.num_images - holdout_count(summary.num_images, self.val_fraction)
            if self.train.batch_size > train_images:
                raise CampaignError(
                    f"train.batch_size {self.train.batch_size} is larger than the {train_images:,} training images "
                    f"of {self.data!r} (after holding out val_fraction {self.val_fraction:g}); use at most "
                    f"{train_images:,}"
                )

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///runs/{self.study}.db"

    def proxy_settings(self) -> dict[str, Any]:
        """What a trial's numbers depend on; a resumed study must match these exactly."""
        train = {k: v for k, v in self.train.to_dict().items() if k not in _RUNNER_OWNED_TRAIN_FIELDS}
        return {
            "data": self.data,
            "val_fraction": self.val_fraction,
            "cpus_per_trial": self.cpus_per_trial,
            "gpus_per_trial": self.gpus_per_trial,
            "seed": self.seed,
            "step_time_exponent": self.step_time_exponent,
            "params_exponent": self.params_exponent,
            "train": train,
        }

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["train"] = {k: v for k, v in self.train.to_dict().items() if k not in _RUNNER_OWNED_TRAIN_FIELDS}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CampaignConfig:
        """Builds a config from plain data, refusing unknown keys (in the campaign and in its ``train`` part)."""
        if not isinstance(data, Mapping):
            raise CampaignError(f"a campaign must be a mapping, got {type(data).__name__}")
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in data if key not in allowed]
        if unknown:
            raise CampaignError(f"unknown campaign key(s) {unknown}; allowed keys are {allowed}")
        fields = dict(data)
        train = fields.pop("train", None) or {}
        if not isinstance(train, Mapping):
            raise CampaignError(f"train must be a mapping of training settings, got {train!r}")
        train_allowed = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in _RUNNER_OWNED_TRAIN_FIELDS]
        unknown = [key for key in train if key not in train_allowed]
        if unknown:
            raise CampaignError(f"unknown train key(s) {unknown}; allowed keys are {train_allowed}")
        try:
            fields["train"] = TrainConfig(**train)
            return cls(**fields)
        except CampaignError:
            raise
        except (TypeError, ValueError) as error:
            raise CampaignError(str(error)) from None

    def with_overrides(self, overrides: Mapping[str, Any]) -> CampaignConfig:
        """This config with the given fields replaced; ``None`` values (flags not given) are ignored.

        Keys ``epochs``, ``image_size`` and ``batch_size`` go to the training settings.
        """
        given = {key: value for key, value in overrides.items() if value is not None}
        train_keys = {"epochs", "image_size", "batch_size"}
        data = self.to_dict()
        data["train"].update({key: value for key, value in given.items() if key in train_keys})
        data.update({key: value for key, value in given.items() if key not in train_keys})
        return CampaignConfig.from_dict(data)


def load_campaign(path: str | Path) -> CampaignConfig:
    """Reads a campaign file; errors name the file and the field."""
    data = read_yaml_mapping(path, "campaign")
    try:
        return CampaignConfig.from_dict(data)
    except CampaignError as error:
        raise CampaignError(f"{path}: {error}") from None
