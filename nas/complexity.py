"""Parameters and multiply-adds of a spec, counted from the spec's numbers alone: no torch.

``nas show`` and ``nas scale`` print a spec's size and cost. Building the network to count them
(:func:`nas.measure.spec_complexity`, on the meta device) costs an import of torch and, through the meta device's
initializers, of ``torch._dynamo``: 3-7 s on a loaded 2-core machine, for a command that trains nothing. Here the
builder's structure (:mod:`nas.builder`, :mod:`nas.blocks`) is counted layer by layer instead, in microseconds.
Both ways answer with one :class:`SpecCount`, and both resolve the input channels with :func:`resolve_in_channels`,
the rule the builder follows.

The counts are exact, not estimates: ``tests/nas/test_complexity.py`` compares the two :class:`SpecCount` values
(:func:`nas.measure.spec_complexity`: trainable parameters, and multiply-adds as torch's ``FlopCounterMode`` counts
them) on every preset and on sampled candidates, so a change to the blocks that this module does not follow fails
there. What is counted, as ``FlopCounterMode`` does: the convolutions (bias-free, except squeeze-excitation's) and
the classifier; batch norm, activations, pooling and the residual additions carry parameters (batch norm's scale
and shift) but no multiply-adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from search_spaces.checks import check_int
from search_spaces.spec import MAX_CHANNELS, ArchSpec, SpecError, StageSpec

#: The columns of a spec's stage table, in ``nas show`` and the report's baseline and winner tables.
STAGE_TABLE_HEADERS = (
    "stage", "block", "op", "layers", "kernel", "stride", "expand", "channels", "se", "output", "params",
)


@dataclass(frozen=True)
class SpecCount:
    """Size and cost of a spec for ``num_classes`` outputs and ``in_channels`` input channels: parameters in total
    and per stage, multiply-adds of one ``image_size`` x ``image_size`` image.

    :func:`count_spec` counts it from the spec's numbers; :func:`nas.measure.spec_complexity` measures it on the
    built network. The two are equal, field for field.
    """

    parameters: int
    stage_parameters: tuple[int, ...]
    macs: int
    image_size: int
    num_classes: int
    in_channels: int


@dataclass
class _Tally:
    parameters: int = 0
    macs: int = 0

    def conv(self, in_channels: int, out_channels: int, kernel_size: int, *, groups: int = 1, output_size: int,
             bias: bool = False) -> None:
        """A convolution whose output is ``output_size`` x ``output_size``."""
        weights = out_channels * (in_channels // groups) * kernel_size * kernel_size
        self.parameters += weights + (out_channels if bias else 0)
        self.macs += weights * output_size * output_size

    def conv_norm(self, in_channels: int, out_channels: int, kernel_size: int, *, groups: int = 1,
                  output_size: int) -> None:
        """:class:`nas.blocks.ConvNormAct`: a bias-free convolution and batch norm (scale and shift)."""
        self.conv(in_channels, out_channels, kernel_size, groups=groups, output_size=output_size)
        self.parameters += 2 * out_channels

    def squeeze_excite(self, channels: int, in_channels: int, se_ratio: float) -> None:
        """:class:`nas.blocks.SqueezeExcite`: two 1x1 convolutions with bias on the pooled 1x1 map; the squeeze
        width is :func:`nas.blocks.se_reduced_channels` of the block's input."""
        reduced = max(1, int(in_channels * se_ratio))
        self.conv(channels, reduced, 1, output_size=1, bias=True)
        self.conv(reduced, channels, 1, output_size=1, bias=True)


def _block(tally: _Tally, stage: StageSpec, in_channels: int, stride: int, size: int) -> int:
    """Counts one block of ``stage`` (:func:`nas.blocks.mbconv` or :func:`nas.blocks.fused_mbconv`) on a ``size``
    input; returns its output size."""
    out_size = _output_size(size, stride)
    out_channels, expand = stage.out_channels, stage.expand_ratio
    if stage.op == "mbconv":
        mid = in_channels * expand
        if expand != 1:
            tally.conv_norm(in_channels, mid, 1, output_size=size)
        tally.conv_norm(mid, mid, stage.kernel_size, groups=mid, output_size=out_size)
        if stage.se_ratio > 0:
            tally.squeeze_excite(mid, in_channels, stage.se_ratio)
        tally.conv_norm(mid, out_channels, 1, output_size=out_size)
    else:  # fused_mbconv
        fused = out_channels if expand == 1 else in_channels * expand
        tally.conv_norm(in_channels, fused, stage.kernel_size, output_size=out_size)
        if stage.se_ratio > 0:
            tally.squeeze_excite(fused, in_channels, stage.se_ratio)
        if expand != 1:
            tally.conv_norm(fused, out_channels, 1, output_size=out_size)
    return out_size


def _output_size(size: int, stride: int) -> int:
    """A convolution's output size with 'same' padding (``kernel_size // 2``) for an odd kernel: ceil(size/stride)."""
    return -(-size // stride)


def count_spec(
    spec: ArchSpec, *, num_classes: int = 1000, image_size: int | None = None, in_channels: int | None = None
) -> SpecCount:
    """Parameters and multiply-adds of the network :func:`nas.builder.build_model` makes of ``spec``, at its eval
    image size unless ``image_size`` is given; ``in_channels`` None means the spec's pinned value, else 3 (RGB).

    The classifier alone depends on ``num_classes`` (``head_channels * num_classes + num_classes`` parameters),
    which is why every printed count says which number of classes it is for.
    """
    check_int("num_classes", num_classes, 1)
    image_size = resolve_image_size(spec, image_size)
    in_channels = resolve_in_channels(spec, in_channels)
    tally = _Tally()
    size = _output_size(image_size, spec.stem_stride)
    tally.conv_norm(in_channels, spec.stem_channels, 3, output_size=size)
    channels, stage_parameters = spec.stem_channels, []
    for stage in spec.stages:
        before = tally.parameters
        for layer in range(stage.num_layers):
            size = _block(tally, stage, channels, stage.stride if layer == 0 else 1, size)
            channels = stage.out_channels
        stage_parameters.append(tally.parameters - before)
    tally.conv_norm(channels, spec.head_channels, 1, output_size=size)
    tally.parameters += spec.head_channels * num_classes + num_classes  # the classifier, a Linear with bias
    tally.macs += spec.head_channels * num_classes
    return SpecCount(tally.parameters, tuple(stage_parameters), tally.macs, image_size, num_classes, in_channels)


def resolve_image_size(spec: ArchSpec, image_size: int | None) -> int:
    """The image size to count ``spec`` at: ``image_size`` when given (an integer >= 1), else the spec's eval size."""
    check_int("image_size", image_size, 1, optional=True)
    return spec.eval_image_size if image_size is None else image_size


def resolve_in_channels(spec: ArchSpec, in_channels: int | None) -> int:
    """The input channels to build ``spec`` for: ``in_channels`` when given, else the spec's pinned value, else 3
    (RGB); refuses a value that contradicts the spec's pinned one.

    The builder (:func:`nas.builder.build_model`) and both counts follow this one rule; it lives here, with no
    torch, so that :func:`count_spec` need not import the builder.
    """
    if in_channels is None:
        return 3 if spec.in_channels is None else spec.in_channels
    check_int("in_channels", in_channels, 1, MAX_CHANNELS)
    if spec.in_channels is not None and spec.in_channels != in_channels:
        raise SpecError(
            f"spec {spec.name or '(unnamed)'} pins in_channels {spec.in_channels}, got in_channels {in_channels}: "
            f"drop in_channels from the spec to follow the input, or give {spec.in_channels}"
        )
    return in_channels


def stage_rows(spec: ArchSpec, stage_parameters: Sequence[int]) -> list[list[Any]]:
    """The rows of a spec's stage table under :data:`STAGE_TABLE_HEADERS`: the stem, one row per stage (block
    string, decisions, channels, output resolution at the eval image size, parameters) and the head."""
    rows: list[list[Any]] = []
    resolution = spec.eval_image_size // spec.stem_stride
    rows.append(["stem", f"conv_k3_s{spec.stem_stride}_c{spec.stem_channels}", "conv", 1, 3, spec.stem_stride, "",
                 spec.stem_channels, "", f"{resolution}x{resolution}", ""])
    for index, (stage, parameters) in enumerate(zip(spec.stages, stage_parameters), start=1):
        resolution = -(-resolution // stage.stride)
        rows.append([
            index, stage.block_string, stage.op, stage.num_layers, stage.kernel_size, stage.stride,
            stage.expand_ratio, stage.out_channels, f"{stage.se_ratio:g}", f"{resolution}x{resolution}",
            f"{parameters:,}",
        ])
    rows.append(["head", f"conv_k1_c{spec.head_channels}", "conv", 1, 1, 1, "", spec.head_channels, "",
                 f"{resolution}x{resolution}", ""])
    return rows
