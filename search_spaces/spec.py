"""Architecture specs: an EfficientNet-family network written down as plain, validated data.

A spec is the single truth about an architecture: the builder turns it into a module, scaling turns it into
another spec, the search stores it in a trial, and YAML round-trips it exactly. Validation happens on
construction so that an invalid network can never exist as a spec; every error names the stage, the field and
the allowed values.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from search_spaces.checks import check_choice, check_int, check_real

OPS = ("mbconv", "fused_mbconv")
OP_SHORT_NAMES = {"mbconv": "mb", "fused_mbconv": "fused"}
KERNEL_SIZES = (3, 5, 7)
STRIDES = (1, 2)
ACTIVATIONS = ("silu", "relu", "gelu", "hardswish")
MAX_NUM_STAGES = 32  # the references have 6 (EfficientNetV2) or 7 (EfficientNet)
MAX_NUM_LAYERS = 100
MAX_CHANNELS = 16384
MAX_EXPAND_RATIO = 16
MAX_IMAGE_SIZE = 4096
MAX_NUM_CLASSES = 100_000  # nas.sources.MAX_CLASSES: the most classes a data source may hold
RGB_CHANNELS = 3  # what a spec that pins no in_channels builds for


class SpecError(ValueError):
    """An architecture spec (or a file describing one) is invalid; the message names the field."""


@dataclass(frozen=True, kw_only=True)
class StageSpec:
    """One stage: ``num_layers`` identical blocks, the first of which carries the stride.

    ``op`` is ``mbconv`` (1x1 expand, depthwise kxk, squeeze-excitation, 1x1 project) or ``fused_mbconv`` (the
    expand and depthwise convolutions fused into one kxk convolution; EfficientNetV2 Figure 2).
    ``se_ratio`` is relative to the block's input channels, as in the reference implementations.
    """

    op: str
    num_layers: int
    kernel_size: int
    stride: int
    expand_ratio: int
    out_channels: int
    se_ratio: float = 0.0

    def __post_init__(self) -> None:
        check_choice("op", self.op, OPS, error=SpecError)
        check_int("num_layers", self.num_layers, 1, MAX_NUM_LAYERS, error=SpecError)
        check_choice("kernel_size", self.kernel_size, KERNEL_SIZES, error=SpecError)
        check_choice("stride", self.stride, STRIDES, error=SpecError)
        check_int("expand_ratio", self.expand_ratio, 1, MAX_EXPAND_RATIO, error=SpecError)
        check_int("out_channels", self.out_channels, 1, MAX_CHANNELS, error=SpecError)
        se_ratio = check_real("se_ratio", self.se_ratio, 0.0, 1.0, high_open=True, error=SpecError)
        object.__setattr__(self, "se_ratio", float(se_ratio))  # 0 and 0.0 make the same spec

    @property
    def block_string(self) -> str:
        """One-line description for logs and tables, e.g. ``mb_r6_k3_s2_e4_c128_se0.25``."""
        text = (
            f"{OP_SHORT_NAMES[self.op]}_r{self.num_layers}_k{self.kernel_size}_s{self.stride}"
            f"_e{self.expand_ratio}_c{self.out_channels}"
        )
        return f"{text}_se{self.se_ratio:g}" if self.se_ratio > 0 else text

    @classmethod
    def from_block_string(cls, text: str) -> StageSpec:
        """Parses the output of :attr:`block_string` back into a stage."""
        match = _BLOCK_STRING.fullmatch(text.strip())
        if match is None:
            raise SpecError(
                f"block string {text!r} must look like 'mb_r6_k3_s2_e4_c128_se0.25' or 'fused_r2_k3_s1_e1_c24'"
            )
        short_to_op = {short: op for op, short in OP_SHORT_NAMES.items()}
        return cls(
            op=short_to_op[match["op"]],
            num_layers=int(match["r"]),
            kernel_size=int(match["k"]),
            stride=int(match["s"]),
            expand_ratio=int(match["e"]),
            out_channels=int(match["c"]),
            se_ratio=float(match["se"]) if match["se"] else 0.0,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageSpec:
        _check_mapping("stage", data, _field_names(cls), _required_field_names(cls))
        return cls(**data)


_BLOCK_STRING = re.compile(
    r"(?P<op>mb|fused)_r(?P<r>\d+)_k(?P<k>\d+)_s(?P<s>\d+)_e(?P<e>\d+)_c(?P<c>\d+)(?:_se(?P<se>[0-9.]+))?"
)


@dataclass(frozen=True, kw_only=True)
class ArchSpec:
    """A whole network: stem, stages, head and the training-relevant settings that a faithful build needs.

    Field conventions follow the reference implementations:

    - ``bn_momentum`` uses PyTorch's convention (TensorFlow's decay 0.99 is 0.01 here).
    - ``drop_path_rate`` is the stochastic-depth rate of the last block; block ``i`` of ``n`` drops with
      ``drop_path_rate * i / n``.
    - ``channel_divisor`` and ``round_limit`` are the width-rounding rule used when this spec is scaled:
      channels are rounded to the nearest multiple of ``channel_divisor``, and when the result falls below
      ``round_limit`` times the unrounded width one divisor is added. EfficientNet (V1) uses 0.9; EfficientNetV2
      has no such guard (0.0).
    - ``in_channels`` pins the input image channels (1 grayscale, 3 RGB). None, the default, follows the data the
      network is trained on; a pinned value that differs from the data's is refused before training. A spec that
      does not pin it writes no ``in_channels`` key, so that reference files and their hashes stay as they were.
    - ``num_classes`` records the classes of the data the spec was searched or trained on (``nas search``,
      ``nas export`` and ``nas train --save`` write it: :meth:`for_data`), so that a spec file says what its
      classifier was for and ``nas show`` counts the network that was searched rather than ImageNet's 1000-class
      one. It is a record, not a constraint: training builds the classifier for its data's classes, so a spec
      searched on a proxy dataset trains on the target one unchanged. None, the default, writes no key, as for
      ``in_channels``; files written before the field existed read as None.
    """

    name: str = ""
    stem_channels: int
    stages: tuple[StageSpec, ...]
    head_channels: int
    stem_stride: int = 2
    activation: str = "silu"
    dropout: float = 0.2
    drop_path_rate: float = 0.2
    train_image_size: int = 224
    eval_image_size: int = 224
    bn_momentum: float = 0.01
    bn_eps: float = 1e-3
    channel_divisor: int = 8
    round_limit: float = 0.0
    in_channels: int | None = None
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise SpecError(f"name must be a string, got {self.name!r}")
        check_int("stem_channels", self.stem_channels, 1, MAX_CHANNELS, error=SpecError)
        check_int("head_channels", self.head_channels, 1, MAX_CHANNELS, error=SpecError)
        check_choice("stem_stride", self.stem_stride, STRIDES, error=SpecError)
        check_choice("activation", self.activation, ACTIVATIONS, error=SpecError)
        check_int("train_image_size", self.train_image_size, 1, MAX_IMAGE_SIZE, error=SpecError)
        check_int("eval_image_size", self.eval_image_size, 1, MAX_IMAGE_SIZE, error=SpecError)
        check_int("channel_divisor", self.channel_divisor, 1, 256, error=SpecError)
        if self.in_channels is not None:
            check_int("in_channels", self.in_channels, 1, MAX_CHANNELS, error=SpecError)
        if self.num_classes is not None:
            check_int("num_classes", self.num_classes, 2, MAX_NUM_CLASSES, error=SpecError)
        for field, low, high in (
            ("dropout", 0.0, 1.0),
            ("drop_path_rate", 0.0, 1.0),
            ("bn_momentum", 0.0, 1.0),
            ("bn_eps", 0.0, 1.0),
            ("round_limit", 0.0, 1.0),
        ):
            high_open = field != "round_limit"
            value = check_real(field, getattr(self, field), low, high, high_open=high_open, error=SpecError)
            object.__setattr__(self, field, float(value))  # 0 and 0.0 make the same spec
        if self.bn_eps <= 0.0:
            raise SpecError(f"bn_eps must be a number in (0, 1), got {self.bn_eps}")
        stages = tuple(self.stages) if isinstance(self.stages, (list, tuple)) else self.stages
        if not isinstance(stages, tuple) or not stages:
            raise SpecError(f"stages must be a non-empty list of stages, got {self.stages!r}")
        if len(stages) > MAX_NUM_STAGES:
            raise SpecError(f"stages must be a list of 1 to {MAX_NUM_STAGES} stages, got {len(stages)}")
        for index, stage in enumerate(stages, start=1):
            if not isinstance(stage, StageSpec):
                raise SpecError(f"stage {index}: must be a StageSpec, got {type(stage).__name__}")
        object.__setattr__(self, "stages", stages)
        if self.total_stride > MAX_IMAGE_SIZE:
            raise SpecError(
                f"the network downsamples by {self.total_stride} in total (stem_stride times the stage strides), "
                f"more than the largest image size {MAX_IMAGE_SIZE}: the last feature map would be empty; "
                "use fewer stride-2 stages"
            )
        for field in ("train_image_size", "eval_image_size"):
            size = getattr(self, field)
            if self.total_stride > size:
                raise SpecError(
                    f"{field} {size} is smaller than the network's total stride {self.total_stride}: "
                    f"the last feature map would be empty; use an image size >= {self.total_stride}"
                )

    @property
    def total_stride(self) -> int:
        """Downsampling factor from the input image to the last feature map."""
        return self.stem_stride * math.prod(stage.stride for stage in self.stages)

    @property
    def num_blocks(self) -> int:
        return sum(stage.num_layers for stage in self.stages)

    @property
    def block_strings(self) -> tuple[str, ...]:
        return tuple(stage.block_string for stage in self.stages)

    def for_data(self, *, num_classes: int, in_channels: int) -> ArchSpec:
        """This spec as searched or trained on data of ``num_classes`` classes and ``in_channels`` channels: it
        records the classes, and pins the channels unless they are RGB's 3 (what an unpinned spec builds for), so
        that a network searched or trained on RGB data still follows the channels of the next data it meets."""
        pinned = self.in_channels if in_channels == RGB_CHANNELS else in_channels
        return dataclasses.replace(self, num_classes=num_classes, in_channels=pinned)

    def to_dict(self) -> dict[str, Any]:
        """Plain data in field order (stages as a list of mappings), the form written to YAML.

        ``in_channels`` and ``num_classes`` appear only when set: a spec without them has the same data (and hash)
        as before the fields existed.
        """
        data = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        data["stages"] = [stage.to_dict() for stage in self.stages]
        for optional in ("in_channels", "num_classes"):
            if data[optional] is None:
                del data[optional]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArchSpec:
        """Builds a spec from plain data, rejecting unknown or missing keys; stage errors name the stage."""
        _check_mapping("spec", data, _field_names(cls), _required_field_names(cls))
        raw_stages = data["stages"]
        if not isinstance(raw_stages, list) or not raw_stages:
            raise SpecError(f"stages must be a non-empty list of stage mappings, got {raw_stages!r}")
        stages = []
        for index, raw_stage in enumerate(raw_stages, start=1):
            try:
                stages.append(StageSpec.from_dict(raw_stage))
            except SpecError as error:
                raise SpecError(f"stage {index}: {error}") from None
        return cls(**{**data, "stages": tuple(stages)})


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))


def _required_field_names(cls: type) -> tuple[str, ...]:
    return tuple(
        field.name
        for field in dataclasses.fields(cls)
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    )


def _check_mapping(what: str, data: Any, allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    if not isinstance(data, Mapping):
        raise SpecError(f"{what} must be a mapping of field names to values, got {type(data).__name__}")
    unknown = [key for key in data if key not in allowed]
    if unknown:
        raise SpecError(f"{what}: unknown key(s) {unknown}; allowed keys are {list(allowed)}")
    missing = [key for key in required if key not in data]
    if missing:
        raise SpecError(f"{what}: missing required key(s) {missing}")
