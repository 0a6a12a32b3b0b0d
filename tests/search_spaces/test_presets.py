"""Presets load by name; references are the published architectures."""

import pytest

from search_spaces import presets
from search_spaces.io import dump_spec
from search_spaces.spec import SpecError

REFERENCE_NAMES = ["efficientnet-b0", "efficientnetv2-b0", "efficientnetv2-l", "efficientnetv2-m", "efficientnetv2-s"]


def test_reference_presets_are_shipped():
    assert set(REFERENCE_NAMES) <= set(presets.names())
    assert {"efficientnetv2-s", "efficientnet-b0", "tiny"} <= set(presets.space_names())


def test_preset_names_match_their_files():
    for name in presets.names():
        assert presets.get(name).name == name


def test_efficientnetv2_s_matches_the_paper_table_4():
    spec = presets.get("efficientnetv2-s")
    assert spec.block_strings == (
        "fused_r2_k3_s1_e1_c24", "fused_r4_k3_s2_e4_c48", "fused_r4_k3_s2_e4_c64",
        "mb_r6_k3_s2_e4_c128_se0.25", "mb_r9_k3_s1_e6_c160_se0.25", "mb_r15_k3_s2_e6_c256_se0.25",
    )
    assert (spec.stem_channels, spec.head_channels, spec.train_image_size, spec.eval_image_size) == (24, 1280, 300, 384)


def test_rounding_rule_follows_the_reference():
    assert presets.get("efficientnet-b0").round_limit == 0.9
    assert presets.get("efficientnetv2-b0").round_limit == 0.0


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(SpecError, match="efficientnetv2-s"):
        presets.get("efficientnetv9")
    with pytest.raises(FileNotFoundError, match="available presets"):
        presets.resolve_spec("efficientnetv9")
    with pytest.raises(FileNotFoundError, match="available spaces"):
        presets.get_space("nowhere")


def test_resolve_spec_takes_names_and_paths(tmp_path):
    spec = presets.get("tiny")
    path = tmp_path / "mine.yaml"
    dump_spec(spec, path)
    assert presets.resolve_spec(str(path)) == spec
    assert presets.resolve_spec("tiny") == spec
