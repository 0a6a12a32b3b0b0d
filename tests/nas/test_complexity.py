"""nas.complexity counts a spec's parameters and multiply-adds from its numbers; the built network is the truth.

Every preset and candidates sampled from every shipped space, at odd and even image sizes, for other numbers of
classes and input channels: the count must equal :func:`nas.measure.spec_complexity`'s (trainable parameters of
the network nas.builder makes; multiply-adds as torch's FlopCounterMode counts them) exactly, as one
:class:`~nas.complexity.SpecCount` value.
"""

from __future__ import annotations

import dataclasses
import random
import re

import pytest

from nas import measure
from nas.complexity import (
    STAGE_TABLE_HEADERS,
    SpecCount,
    count_spec,
    resolve_in_channels,
    stage_rows,
)
from search_spaces import presets
from search_spaces.spec import SpecError


def _specs() -> list:
    specs = [presets.get(name) for name in presets.names()]
    for name in presets.space_names():
        rng = random.Random(name)
        specs += [presets.get_space(name).sample(rng) for _ in range(3)]
    return specs


SPECS = _specs()


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name or " ".join(spec.block_strings))
@pytest.mark.parametrize("num_classes, image_size, in_channels", [(1000, None, None), (10, 33, 1)],
                         ids=["imagenet", "ten-classes-odd-size-grayscale"])
def test_the_count_equals_the_built_network_s(spec, num_classes, image_size, in_channels):
    counted = count_spec(spec, num_classes=num_classes, image_size=image_size, in_channels=in_channels)
    built = measure.spec_complexity(spec, num_classes=num_classes, image_size=image_size, in_channels=in_channels)
    assert isinstance(built, SpecCount)
    assert counted == built
    assert (counted.num_classes, counted.image_size, counted.in_channels) == (
        num_classes, image_size or spec.eval_image_size, in_channels or 3)


def test_the_reference_counts():
    """EfficientNet-B0: 5,288,548 parameters and 0.39 G multiply-adds (EfficientNet Table 2; timm)."""
    b0 = count_spec(presets.get("efficientnet-b0"))
    assert b0.parameters == 5_288_548 and b0.macs == pytest.approx(0.386e9, rel=0.01)
    assert count_spec(presets.get("efficientnetv2-s")).parameters == 21_458_488


def test_the_stage_table_has_the_stem_every_stage_and_the_head_with_their_parameters():
    spec = presets.get("efficientnetv2-s")
    parameters = count_spec(spec).stage_parameters
    rows = stage_rows(spec, parameters)
    assert [row[0] for row in rows] == ["stem", *range(1, len(spec.stages) + 1), "head"]
    assert all(len(row) == len(STAGE_TABLE_HEADERS) for row in rows)
    assert [row[-1] for row in rows[1:-1]] == [f"{count:,}" for count in parameters]


@pytest.mark.parametrize("count", [count_spec, measure.spec_complexity], ids=["counted", "built"])
@pytest.mark.parametrize("field, value, message", [
    ("num_classes", 0, "num_classes must be an integer >= 1, got 0"),
    ("num_classes", None, "num_classes must be an integer >= 1, got None"),
    ("image_size", -1, "image_size must be an integer >= 1 or None, got -1"),
    ("in_channels", True, "in_channels must be an integer in [1, 16384], got True"),
])
def test_both_ways_refuse_the_same_bad_values_naming_the_field(count, field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        count(presets.get("tiny"), **{field: value})


def test_both_ways_follow_the_spec_s_pinned_in_channels_and_refuse_a_contradiction():
    pinned = dataclasses.replace(presets.get("tiny"), in_channels=1)
    assert count_spec(pinned).in_channels == measure.spec_complexity(pinned).in_channels == 1
    assert resolve_in_channels(pinned, None) == 1 and resolve_in_channels(presets.get("tiny"), None) == 3
    for count in (count_spec, measure.spec_complexity):
        with pytest.raises(SpecError, match="spec tiny pins in_channels 1, got in_channels 3"):
            count(pinned, in_channels=3)
