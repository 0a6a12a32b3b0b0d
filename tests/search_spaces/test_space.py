"""The stage-factorized search space: decisions, sampling, params round trips and rejection of bad spaces."""

import dataclasses
import math
import random

import pytest
import yaml

from search_spaces import presets
from search_spaces.io import spec_from_yaml, spec_to_yaml
from search_spaces.space import DECISION_FIELDS, SearchSpace, SpaceError
from search_spaces.spec import SpecError

SPACES = presets.space_names()


def write_space(tmp_path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


TINY_SPACE = """
name: t
backbone: tiny
stages:
  - num_layers: [1, 2]
  - num_layers: [1, 2]
  - num_layers: {min: 1, max: 3}
  - num_layers: {min: 1, max: 3}
"""


@pytest.fixture(params=SPACES)
def space(request) -> SearchSpace:
    return presets.get_space(request.param)


def test_decisions_are_flat_stage_major_keys(space):
    names = [decision.name for decision in space.decisions]
    expected = [f"stage{i}.{field}" for i in range(1, len(space.stages) + 1) for field in DECISION_FIELDS]
    assert names == expected


def test_size_is_the_product_of_choices(space):
    expected = math.prod(
        len(getattr(choices, field)) for choices in space.stages for field in DECISION_FIELDS
    )
    assert space.size == expected > 1


def test_paper_choices_are_offered(space):
    for choices in space.stages:
        assert set(choices.op) == {"mbconv", "fused_mbconv"}
        assert choices.kernel_size == (3, 5)
        assert choices.expand_ratio == (1, 4, 6)


def test_two_hundred_samples_round_trip_through_params_and_yaml(space):
    rng = random.Random(0)
    seen = set()
    for _ in range(200):
        spec = space.sample(rng)
        params = space.to_params(spec)
        assert space.from_params(params) == spec
        assert spec_from_yaml(spec_to_yaml(spec)) == spec
        seen.add(spec.block_strings)
    assert len(seen) > 150


def test_candidates_keep_backbone_channels_and_strides_and_se_follows_op(space):
    for seed in range(50):
        spec = space.sample(seed)
        for stage, reference in zip(spec.stages, space.backbone.stages):
            assert (stage.out_channels, stage.stride) == (reference.out_channels, reference.stride)
            assert stage.se_ratio == {"mbconv": 0.25, "fused_mbconv": 0.0}[stage.op]


def test_sampling_is_seeded(space):
    assert space.sample(7) == space.sample(random.Random(7))
    assert [space.sample(seed) for seed in range(5)] != [space.sample(seed) for seed in range(5, 10)]


def test_baseline_is_the_backbone_and_in_the_space(space):
    assert space.baseline == space.backbone
    assert space.from_params(space.to_params(space.baseline)) == dataclasses.replace(space.baseline, name="")


def test_sampling_covers_every_choice():
    space = presets.get_space("tiny")
    rng = random.Random(1)
    params = [space.to_params(space.sample(rng)) for _ in range(400)]
    for decision in space.decisions:
        assert {p[decision.name] for p in params} == set(decision.choices)


def test_from_dict_round_trip_keeps_fingerprint(space):
    again = SearchSpace.from_dict(space.to_dict())
    assert again == space
    assert again.fingerprint() == space.fingerprint()


def test_fingerprint_changes_with_the_choices():
    space = presets.get_space("tiny")
    data = space.to_dict()
    data["stages"][0]["kernel_size"] = [3]
    assert SearchSpace.from_dict(data).fingerprint() != space.fingerprint()


def test_from_params_rejects_bad_params():
    space = presets.get_space("tiny")
    params = space.to_params(space.baseline)
    with pytest.raises(SpaceError, match=r"missing \['stage1.op'\]"):
        space.from_params({k: v for k, v in params.items() if k != "stage1.op"})
    with pytest.raises(SpaceError, match=r"unknown \['stage9.op'\]"):
        space.from_params({**params, "stage9.op": "mbconv"})
    with pytest.raises(SpaceError, match=r"stage2.kernel_size must be one of \(3, 5\), got 7"):
        space.from_params({**params, "stage2.kernel_size": 7})


def test_to_params_explains_why_a_spec_is_outside():
    space = presets.get_space("tiny")
    wider = dataclasses.replace(
        space.baseline, stages=(dataclasses.replace(space.baseline.stages[0], out_channels=99),)
        + space.baseline.stages[1:]
    )
    with pytest.raises(SpaceError, match="stages"):
        space.to_params(wider)
    with pytest.raises(SpaceError, match="head_channels"):
        space.to_params(dataclasses.replace(space.baseline, head_channels=512))
    with pytest.raises(SpaceError, match="6 stages, the space 4"):
        space.to_params(presets.get("efficientnetv2-s"))


def test_space_file_with_defaults_and_overrides(tmp_path):
    path = write_space(tmp_path, TINY_SPACE.replace("name: t", "name: t\ndefaults: {kernel_size: [3]}")
                       .replace("  - num_layers: [1, 2]\n", "  - {num_layers: [1, 2], kernel_size: [3, 5]}\n", 1))
    space = presets.get_space(str(path))
    assert space.stages[0].kernel_size == (3, 5)
    assert space.stages[1].kernel_size == (3,)
    assert space.stages[2].num_layers == (1, 2, 3)


def test_space_image_size_applies_to_every_candidate(tmp_path):
    space = presets.get_space(str(write_space(tmp_path, TINY_SPACE + "image_size: 64\n")))
    assert space.baseline.train_image_size == space.sample(0).eval_image_size == 64


def test_se_ratio_can_be_overridden(tmp_path):
    tiny = presets.get("tiny")
    backbone = dataclasses.replace(
        tiny, stages=tuple(dataclasses.replace(s, se_ratio=0.5) if s.op == "mbconv" else s for s in tiny.stages)
    )
    data = {**yaml.safe_load(TINY_SPACE), "backbone": backbone.to_dict(), "se_ratio": {"mbconv": 0.5}}
    space = presets.get_space(str(write_space(tmp_path, yaml.safe_dump(data))))
    ratios = {(stage.op, stage.se_ratio) for seed in range(20) for stage in space.sample(seed).stages}
    assert ratios == {("mbconv", 0.5), ("fused_mbconv", 0.0)}


def test_se_ratio_that_excludes_the_backbone_is_refused(tmp_path):
    with pytest.raises(SpaceError, match="backbone must be a member"):
        presets.get_space(str(write_space(tmp_path, TINY_SPACE + "se_ratio: {fused_mbconv: 0.25}\n")))


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda t: t.replace("[1, 2]", "[0, 2]", 1), ["stage 1", "num_layers"]),
        (lambda t: t.replace("{min: 1, max: 3}", "{min: 0, max: 3}", 1), ["stage 3", "num_layers"]),
        (lambda t: t.replace("{min: 1, max: 3}", "{min: 3, max: 1}", 1), ["min (3) is greater than max (1)"]),
        (lambda t: t + "defaults: {kernel_size: [3, 4]}\n", ["kernel_size must be one of (3, 5, 7), got 4"]),
        (lambda t: t + "defaults: {expand_ratio: [0, 4]}\n", ["expand_ratio", "got 0"]),
        (lambda t: t + "defaults: {op: [mbconv, conv]}\n", ["op must be one of"]),
        (lambda t: t + "defaults: {kernel_size: [3, 3]}\n", ["twice"]),
        (lambda t: t + "defaults: {kernel_size: []}\n", ["non-empty"]),
        (lambda t: t + "image_size: 8\n", ["total stride 16"]),
        (lambda t: t + "colour: blue\n", ["unknown key", "colour"]),
        (lambda t: t.replace("  - num_layers: [1, 2]\n", "", 1), ["3 stages", "has 4"]),
        (lambda t: t.replace("backbone: tiny", "backbone: nowhere"), ["nowhere"]),
        (lambda t: t + "defaults: {expand_ratio: [4]}\n", ["backbone must be a member", "expand_ratio 1"]),
        (lambda t: t.replace("  - num_layers: [1, 2]\n", "  - {kernel_size: [3]}\n", 1), ["num_layers is required"]),
        (lambda t: "- a\n- b\n", ["mapping"]),
    ],
)
def test_bad_space_files_are_refused_with_the_reason(tmp_path, edit, words):
    path = write_space(tmp_path, edit(TINY_SPACE))
    with pytest.raises(SpecError) as error:
        presets.get_space(str(path))
    for word in words:
        assert word in str(error.value)


def test_inline_backbone(tmp_path):
    data = yaml.safe_load(TINY_SPACE)
    data["backbone"] = presets.get("tiny").to_dict()
    space = presets.get_space(str(write_space(tmp_path, yaml.safe_dump(data))))
    assert space.backbone == presets.get("tiny")


def test_backbone_path_is_relative_to_the_space_file(tmp_path):
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "mine.yaml").write_text(spec_to_yaml(dataclasses.replace(presets.get("tiny"), name="mine")))
    space = presets.get_space(str(write_space(tmp_path, TINY_SPACE.replace("backbone: tiny", "backbone: nets/mine.yaml"))))
    assert space.backbone.name == "mine"


def test_distinct_samples_leave_out_the_baseline_and_a_shorter_list_is_a_prefix(monkeypatch):
    space = presets.get_space("tiny")
    specs = space.sample_distinct(12, random.Random(3))
    keys = [spec.block_strings for spec in specs]
    assert len(set(keys)) == 12 and space.baseline.block_strings not in keys
    assert space.sample_distinct(5, 3) == specs[:5]  # the benchmarks resume runs of more candidates on fewer
    monkeypatch.setattr(SearchSpace, "sample", lambda self, rng=None: specs[0])  # a space of one candidate
    with pytest.raises(SpaceError, match="gave only 1 distinct architectures besides its baseline, 2 asked"):
        space.sample_distinct(2, 0)
