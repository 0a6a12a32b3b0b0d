"""Specs: validation with messages that name the field, block strings, exact YAML round trips."""

import dataclasses

import pytest

from search_spaces import presets
from search_spaces.io import dump_spec, load_spec, spec_from_yaml, spec_to_yaml
from search_spaces.spec import ArchSpec, SpecError, StageSpec

STAGE = dict(op="mbconv", num_layers=2, kernel_size=3, stride=2, expand_ratio=4, out_channels=32, se_ratio=0.25)


def make_spec(**changes) -> ArchSpec:
    fields = dict(stem_channels=16, stages=(StageSpec(**STAGE),), head_channels=64, train_image_size=32,
                  eval_image_size=32)
    return ArchSpec(**{**fields, **changes})


@pytest.mark.parametrize(
    "text",
    ["fused_r4_k3_s2_e4_c48", "mb_r6_k3_s2_e4_c128_se0.25", "fused_r2_k3_s1_e1_c24", "mb_r1_k5_s1_e6_c320_se0.5"],
)
def test_block_string_round_trips(text):
    assert StageSpec.from_block_string(text).block_string == text


def test_block_string_names_every_field():
    stage = StageSpec(op="fused_mbconv", num_layers=4, kernel_size=3, stride=2, expand_ratio=4, out_channels=48)
    assert stage.block_string == "fused_r4_k3_s2_e4_c48"
    assert StageSpec(**STAGE).block_string == "mb_r2_k3_s2_e4_c32_se0.25"


def test_malformed_block_string_is_refused():
    with pytest.raises(SpecError, match="block string"):
        StageSpec.from_block_string("mb_r6_k3")


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("kernel_size", 4, ["kernel_size", "(3, 5, 7)", "got 4"]),
        ("expand_ratio", 0, ["expand_ratio", "got 0"]),
        ("num_layers", 0, ["num_layers", "got 0"]),
        ("num_layers", 101, ["num_layers", "100"]),
        ("op", "conv", ["op", "mbconv", "fused_mbconv"]),
        ("stride", 3, ["stride", "(1, 2)"]),
        ("out_channels", -8, ["out_channels"]),
        ("se_ratio", 1.0, ["se_ratio"]),
        ("se_ratio", float("nan"), ["se_ratio"]),
        ("num_layers", 2.0, ["num_layers", "integer"]),
        ("kernel_size", True, ["kernel_size"]),
    ],
)
def test_stage_validation_names_field_and_allowed_values(field, value, words):
    with pytest.raises(SpecError) as error:
        StageSpec(**{**STAGE, field: value})
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize(
    "field, value",
    [("stem_channels", 0), ("head_channels", 1.5), ("dropout", 1.5), ("dropout", -0.1), ("drop_path_rate", 2),
     ("activation", "tanh"), ("bn_eps", 0), ("train_image_size", -32), ("round_limit", 1.5), ("stages", ())],
)
def test_arch_validation_names_field(field, value):
    with pytest.raises(SpecError, match=field):
        make_spec(**{field: value})


def test_total_stride_larger_than_image_is_refused():
    with pytest.raises(SpecError, match="total stride 4"):
        make_spec(train_image_size=2)


def test_float_fields_are_normalized_so_zero_and_zero_point_zero_agree():
    assert make_spec(dropout=0) == make_spec(dropout=0.0)
    assert isinstance(StageSpec(**{**STAGE, "se_ratio": 0}).se_ratio, float)


def test_from_dict_names_the_stage():
    data = make_spec().to_dict()
    data["stages"].append({**STAGE, "kernel_size": 4})
    with pytest.raises(SpecError, match=r"stage 2: kernel_size must be one of \(3, 5, 7\), got 4"):
        ArchSpec.from_dict(data)


@pytest.mark.parametrize("where", ["top", "stage"])
def test_unknown_keys_are_rejected(where):
    data = make_spec().to_dict()
    (data if where == "top" else data["stages"][0])["colour"] = "blue"
    with pytest.raises(SpecError, match=r"unknown key\(s\) \['colour'\]"):
        ArchSpec.from_dict(data)


def test_missing_keys_are_reported():
    data = make_spec().to_dict()
    del data["head_channels"]
    with pytest.raises(SpecError, match=r"missing required key\(s\) \['head_channels'\]"):
        ArchSpec.from_dict(data)


def test_specs_are_frozen_and_changed_by_replace():
    spec = make_spec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.dropout = 0.5
    assert dataclasses.replace(spec, dropout=0.5).dropout == 0.5
    with pytest.raises(SpecError, match="dropout"):
        dataclasses.replace(spec, dropout=5.0)


@pytest.mark.parametrize("name", presets.names())
def test_presets_round_trip_through_yaml_exactly(name, tmp_path):
    spec = presets.get(name)
    path = tmp_path / "spec.yaml"
    dump_spec(spec, path)
    assert load_spec(path) == spec
    assert spec_to_yaml(load_spec(path)) == path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["spec.yaml"]


def test_yaml_keeps_non_default_values(tmp_path):
    spec = make_spec(name="x", dropout=0.123, bn_eps=1e-5, round_limit=0.9, activation="relu", stem_stride=1)
    assert spec_from_yaml(spec_to_yaml(spec)) == spec


def test_load_spec_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="spec file not found"):
        load_spec(tmp_path / "missing.yaml")
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text('!!python/object/apply:os.system ["echo hacked"]\n')
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(hostile)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(listing)
    bad = tmp_path / "bad.yaml"
    bad.write_text(spec_to_yaml(make_spec()).replace("kernel_size: 3", "kernel_size: 4"))
    with pytest.raises(SpecError, match=rf"{bad.name}: stage 1: kernel_size"):
        load_spec(bad)


# --- input channels and the total-stride advice (issue 11) ------------------------------------------------------------


def test_in_channels_is_optional_and_a_spec_without_it_writes_no_key(tmp_path):
    spec = make_spec()
    assert spec.in_channels is None and "in_channels" not in spec.to_dict()
    assert "in_channels" not in spec_to_yaml(spec)
    for name in presets.names():
        assert "in_channels" not in presets.get(name).to_dict(), name


@pytest.mark.parametrize("channels", [1, 3])
def test_a_pinned_in_channels_round_trips_through_yaml_exactly(channels, tmp_path):
    spec = make_spec(in_channels=channels)
    assert f"in_channels: {channels}\n" in spec_to_yaml(spec)
    dump_spec(spec, tmp_path / "spec.yaml")
    assert load_spec(tmp_path / "spec.yaml") == spec
    assert spec_to_yaml(load_spec(tmp_path / "spec.yaml")) == spec_to_yaml(spec)
    assert ArchSpec.from_dict(spec.to_dict()) == spec and spec != make_spec()


@pytest.mark.parametrize("value", [0, -1, 3.0, True, "3", 16385])
def test_in_channels_must_be_a_positive_integer(value):
    with pytest.raises(SpecError, match=r"in_channels must be an integer in \[1, 16384\]"):
        make_spec(in_channels=value)


# --- the classes a spec was searched or trained on (issue 28) ---------------------------------------------------------


def test_num_classes_is_optional_and_older_files_without_it_read_as_before(tmp_path):
    spec = make_spec()
    assert spec.num_classes is None and "num_classes" not in spec.to_dict() and "num_classes" not in spec_to_yaml(spec)
    for name in presets.names():
        assert "num_classes" not in presets.get(name).to_dict(), name
    older = tmp_path / "older.yaml"  # a file written before the field existed
    older.write_text(spec_to_yaml(make_spec(in_channels=1)))
    assert load_spec(older) == make_spec(in_channels=1) and load_spec(older).num_classes is None


def test_a_recorded_num_classes_round_trips_through_yaml_exactly(tmp_path):
    spec = make_spec(num_classes=10, in_channels=1)
    assert "in_channels: 1\nnum_classes: 10\n" in spec_to_yaml(spec)
    dump_spec(spec, tmp_path / "spec.yaml")
    assert load_spec(tmp_path / "spec.yaml") == spec and spec != make_spec(in_channels=1)
    assert spec_to_yaml(load_spec(tmp_path / "spec.yaml")) == spec_to_yaml(spec)


@pytest.mark.parametrize("value", [0, 1, 2.0, True, "10", 100_001])
def test_num_classes_must_be_an_integer_count_of_at_least_two_classes(value):
    with pytest.raises(SpecError, match=r"num_classes must be an integer in \[2, 100000\], got"):
        make_spec(num_classes=value)


@pytest.mark.parametrize("in_channels, pinned", [(3, None), (1, 1), (4, 4)])
def test_for_data_records_the_classes_and_pins_channels_other_than_rgb(in_channels, pinned):
    """A spec searched or trained on RGB data keeps following the data's channels; on other data it builds only
    the stem its weights fit."""
    spec = make_spec(name="winner").for_data(num_classes=10, in_channels=in_channels)
    assert (spec.num_classes, spec.in_channels) == (10, pinned)
    assert dataclasses.replace(spec, num_classes=None, in_channels=None) == make_spec(name="winner")
    assert make_spec(in_channels=3).for_data(num_classes=4, in_channels=3).in_channels == 3  # a pin is kept


def test_total_stride_beyond_the_largest_image_size_asks_for_fewer_stride_2_stages():
    stages = tuple(StageSpec(**{**STAGE, "num_layers": 1}) for _ in range(12))  # 2 * 2**12 = 8192 > 4096
    with pytest.raises(SpecError) as refused:
        make_spec(stages=stages, train_image_size=4096, eval_image_size=4096)
    message = str(refused.value)
    assert "downsamples by 8192" in message and "largest image size 4096" in message
    assert "fewer stride-2 stages" in message and "image size >=" not in message


def test_total_stride_at_most_the_largest_image_size_still_suggests_an_image_size():
    stages = tuple(StageSpec(**{**STAGE, "num_layers": 1}) for _ in range(11))  # 2 * 2**11 = 4096
    with pytest.raises(SpecError, match="use an image size >= 4096"):
        make_spec(stages=stages, train_image_size=2048, eval_image_size=4096)
    assert make_spec(stages=stages, train_image_size=4096, eval_image_size=4096).total_stride == 4096
