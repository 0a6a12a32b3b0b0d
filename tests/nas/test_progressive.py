"""Progressive learning (EfficientNetV2 Section 4.2, Algorithm 1; Table 6): exact stages, presets, validation."""

import dataclasses
import json
import subprocess
import sys

import pytest

from nas.progressive import (
    ProgressiveConfig,
    Regularization,
    Stage,
    fixed_schedule,
    progressive_schedule,
    stage_for_epoch,
)

V2_S = ProgressiveConfig.from_preset("efficientnetv2-s")


def test_v2_s_four_stages_over_350_epochs_follow_algorithm_1():
    schedule = progressive_schedule(V2_S, 350)
    assert [stage.index for stage in schedule] == [0, 1, 2, 3]
    # S_i = 128 + 172 * i / 3 = 128, 185.33, 242.67, 300: the middle ones round to multiples of 8, the ends stay.
    assert [stage.image_size for stage in schedule] == [128, 184, 240, 300]
    magnitudes = [stage.regularization.randaugment_magnitude for stage in schedule]
    assert magnitudes == pytest.approx([5.0, 5.0 + 10 / 3, 5.0 + 20 / 3, 15.0])
    dropouts = [stage.regularization.dropout for stage in schedule]
    assert dropouts == pytest.approx([0.1, 0.1 + 0.2 / 3, 0.1 + 0.4 / 3, 0.3])
    assert [stage.regularization.mixup_alpha for stage in schedule] == [0.0, 0.0, 0.0, 0.0]
    # the endpoints are the configured values exactly, not float approximations
    assert schedule[0].regularization == Regularization(dropout=0.1, randaugment_magnitude=5.0, mixup_alpha=0.0)
    assert schedule[-1].regularization == Regularization(dropout=0.3, randaugment_magnitude=15.0, mixup_alpha=0.0)


def test_epochs_use_the_reference_stage_boundaries_and_cover_the_run_contiguously():
    schedule = progressive_schedule(V2_S, 350)
    assert [stage.first_epoch for stage in schedule] == [0, 87, 175, 262]  # floor(i * 350 / 4)
    assert [stage.num_epochs for stage in schedule] == [87, 88, 87, 88]
    assert sum(stage.num_epochs for stage in schedule) == 350


@pytest.mark.parametrize("num_stages, total_epochs", [(1, 1), (2, 3), (3, 10), (4, 4), (4, 7), (5, 12), (7, 100)])
def test_stages_are_contiguous_nonempty_and_balanced(num_stages, total_epochs):
    schedule = progressive_schedule(dataclasses.replace(V2_S, num_stages=num_stages), total_epochs)
    assert len(schedule) == num_stages
    assert schedule[0].first_epoch == 0
    for previous, stage in zip(schedule, schedule[1:]):
        assert stage.first_epoch == previous.first_epoch + previous.num_epochs
    assert schedule[-1].first_epoch + schedule[-1].num_epochs == total_epochs
    lengths = [stage.num_epochs for stage in schedule]
    assert min(lengths) >= 1 and max(lengths) - min(lengths) <= 1


def test_one_stage_is_plain_training_at_the_final_values():
    schedule = progressive_schedule(dataclasses.replace(V2_S, num_stages=1), 350)
    final = Regularization(dropout=0.3, randaugment_magnitude=15.0, mixup_alpha=0.0)
    assert schedule == (Stage(index=0, first_epoch=0, num_epochs=350, image_size=300, regularization=final),)
    assert schedule == fixed_schedule(300, final, 350)


def test_two_stages_are_the_two_endpoints_exactly():
    config = ProgressiveConfig.from_preset("efficientnetv2-m")
    initial, final = progressive_schedule(dataclasses.replace(config, num_stages=2), 11)
    assert (initial.image_size, final.image_size) == (128, 380)
    assert initial.regularization == Regularization(dropout=0.1, randaugment_magnitude=5.0, mixup_alpha=0.0)
    assert final.regularization == Regularization(dropout=0.4, randaugment_magnitude=20.0, mixup_alpha=0.2)
    assert (initial.first_epoch, initial.num_epochs, final.first_epoch, final.num_epochs) == (0, 5, 5, 6)


def test_the_default_config_is_the_v2_s_row_with_four_stages():
    assert ProgressiveConfig() == V2_S
    assert (V2_S.num_stages, V2_S.image_size, V2_S.image_size_divisor) == (4, (128, 300), 8)
    assert (V2_S.randaugment_magnitude, V2_S.mixup_alpha, V2_S.dropout) == ((5, 15), (0, 0), (0.1, 0.3))


@pytest.mark.parametrize(
    "name, image_size, randaugment_magnitude, mixup_alpha, dropout",
    [
        ("efficientnetv2-m", (128, 380), (5, 20), (0, 0.2), (0.1, 0.4)),
        ("efficientnetv2-l", (128, 380), (5, 25), (0, 0.4), (0.1, 0.5)),
    ],
)
def test_presets_are_table_6(name, image_size, randaugment_magnitude, mixup_alpha, dropout):
    config = ProgressiveConfig.from_preset(name)
    assert config.num_stages == 4
    assert config.image_size == image_size
    assert config.randaugment_magnitude == randaugment_magnitude
    assert config.mixup_alpha == mixup_alpha
    assert config.dropout == dropout


def test_v2_l_schedule_grows_every_regularization():
    schedule = progressive_schedule(ProgressiveConfig.from_preset("efficientnetv2-l"), 350)
    assert [stage.image_size for stage in schedule] == [128, 216, 296, 380]  # 212 is halfway: up to 216
    assert [stage.regularization.mixup_alpha for stage in schedule] == pytest.approx([0.0, 0.4 / 3, 0.8 / 3, 0.4])
    assert [stage.regularization.randaugment_magnitude for stage in schedule] == pytest.approx(
        [5.0, 5.0 + 20 / 3, 5.0 + 40 / 3, 25.0]
    )


def test_unknown_preset_lists_the_known_ones():
    known = ".*".join(("efficientnetv2-s", "efficientnetv2-m", "efficientnetv2-l"))
    with pytest.raises(ValueError, match=f"preset must be one of .*{known}.*got 'efficientnetv2-xl'"):
        ProgressiveConfig.from_preset("efficientnetv2-xl")


def test_rounding_to_the_divisor_and_its_absence():
    config = ProgressiveConfig(image_size=(128, 300), num_stages=4, image_size_divisor=1)
    assert [stage.image_size for stage in progressive_schedule(config, 4)] == [128, 185, 243, 300]
    config = dataclasses.replace(config, image_size_divisor=32)
    assert [stage.image_size for stage in progressive_schedule(config, 4)] == [128, 192, 256, 300]
    config = ProgressiveConfig(image_size=(96, 104), num_stages=3)  # 100 is halfway between 96 and 104: rounds up
    assert [stage.image_size for stage in progressive_schedule(config, 3)] == [96, 104, 104]


def test_rounding_never_leaves_the_range_between_the_endpoints():
    config = ProgressiveConfig(image_size=(130, 133), num_stages=4)  # 131 and 132 round to 128 and 136
    assert [stage.image_size for stage in progressive_schedule(config, 4)] == [130, 130, 133, 133]


def test_a_decreasing_schedule_is_allowed():
    config = ProgressiveConfig(image_size=(256, 128), dropout=(0.3, 0.1), num_stages=3)
    schedule = progressive_schedule(config, 3)
    assert [stage.image_size for stage in schedule] == [256, 192, 128]
    assert [stage.regularization.dropout for stage in schedule] == pytest.approx([0.3, 0.2, 0.1])


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_stages": 0}, "num_stages must be an integer >= 1, got 0"),
        ({"num_stages": 2.0}, "num_stages must be an integer >= 1"),
        ({"num_stages": True}, "num_stages must be an integer >= 1"),
        ({"image_size": (-128, 300)}, r"image_size must be a pair of integers >= 1, got \(-128, 300\)"),
        ({"image_size": (128, 0)}, "image_size must be a pair of integers >= 1"),
        ({"image_size": (128.0, 300)}, "image_size must be a pair of integers >= 1"),
        ({"image_size": (128, 300, 380)}, r"image_size must be a tuple \(initial, final\)"),
        ({"image_size": [128, 300]}, r"image_size must be a tuple \(initial, final\)"),
        ({"randaugment_magnitude": (5, 31)}, r"randaugment_magnitude must be a number in \[0, 30\], got 31"),
        ({"randaugment_magnitude": (-1, 15)}, r"randaugment_magnitude must be a number in \[0, 30\], got -1"),
        ({"dropout": (0.1, 1.0)}, r"dropout must be a number in \[0, 1\), got 1.0"),
        ({"dropout": (-0.1, 0.3)}, r"dropout must be a number in \[0, 1\)"),
        ({"dropout": (0.1, float("nan"))}, r"dropout must be a number in \[0, 1\)"),
        ({"mixup_alpha": (0.0, -0.2)}, "mixup_alpha must be a finite number >= 0, got -0.2"),
        ({"mixup_alpha": (0.0, float("inf"))}, "mixup_alpha must be a finite number >= 0"),
        ({"mixup_alpha": 0.2}, r"mixup_alpha must be a tuple \(initial, final\), got 0.2"),
        ({"image_size_divisor": 0}, "image_size_divisor must be an integer >= 1, got 0"),
    ],
)
def test_config_validation_names_the_field_and_the_allowed_values(changes, message):
    with pytest.raises(ValueError, match=message):
        ProgressiveConfig(**changes)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\), got 1.0"),
        ({"randaugment_magnitude": 31}, r"randaugment_magnitude must be a number in \[0, 30\], got 31"),
        ({"randaugment_magnitude": "15"}, r"randaugment_magnitude must be a number in \[0, 30\]"),
        ({"mixup_alpha": -1.0}, "mixup_alpha must be a finite number >= 0, got -1.0"),
    ],
)
def test_regularization_validation(values, message):
    valid = {"dropout": 0.2, "randaugment_magnitude": 10.0, "mixup_alpha": 0.0}
    with pytest.raises(ValueError, match=message):
        Regularization(**{**valid, **values})


def test_regularization_accepts_the_range_ends():
    Regularization(dropout=0.0, randaugment_magnitude=0.0, mixup_alpha=0.0)
    Regularization(dropout=0.99, randaugment_magnitude=30, mixup_alpha=1.0)


@pytest.mark.parametrize(
    "total_epochs, message",
    [
        (0, "total_epochs must be an integer >= 1, got 0"),
        (-5, "total_epochs must be an integer >= 1, got -5"),
        (350.0, "total_epochs must be an integer >= 1, got 350.0"),
        (3, r"total_epochs must be >= num_stages \(4\) so that every stage trains at least one epoch, got 3"),
    ],
)
def test_progressive_schedule_validates_total_epochs(total_epochs, message):
    with pytest.raises(ValueError, match=message):
        progressive_schedule(V2_S, total_epochs)


def test_fixed_schedule_is_one_stage_over_every_epoch():
    regularization = Regularization(dropout=0.3, randaugment_magnitude=15.0, mixup_alpha=0.0)
    (stage,) = fixed_schedule(300, regularization, 350)
    assert stage == Stage(index=0, first_epoch=0, num_epochs=350, image_size=300, regularization=regularization)
    assert stage_for_epoch((stage,), 0) is stage and stage_for_epoch((stage,), 349) is stage


BASELINE_REGULARIZATION = Regularization(dropout=0.1, randaugment_magnitude=5, mixup_alpha=0)


@pytest.mark.parametrize(
    "image_size, regularization, total_epochs, message",
    [
        (0, BASELINE_REGULARIZATION, 10, "image_size must be an integer >= 1, got 0"),
        (224, {"dropout": 0.1}, 10, "regularization must be a Regularization, got dict"),
        (224, BASELINE_REGULARIZATION, 0, "total_epochs must be an integer >= 1, got 0"),
    ],
)
def test_fixed_schedule_validation(image_size, regularization, total_epochs, message):
    with pytest.raises(ValueError, match=message):
        fixed_schedule(image_size, regularization, total_epochs)


def test_stage_for_epoch_at_every_stage_boundary():
    schedule = progressive_schedule(V2_S, 350)
    for stage in schedule:
        assert stage_for_epoch(schedule, stage.first_epoch) is stage
        assert stage_for_epoch(schedule, stage.first_epoch + stage.num_epochs - 1) is stage
    assert [stage_for_epoch(schedule, epoch).index for epoch in (86, 87, 174, 175, 261, 262, 349)] == [
        0, 1, 1, 2, 2, 3, 3
    ]


@pytest.mark.parametrize("epoch", [-1, 350, 1000, 3.0, True])
def test_stage_for_epoch_outside_the_schedule(epoch):
    with pytest.raises(ValueError, match=r"epoch must be an integer in \[0, 350\)"):
        stage_for_epoch(progressive_schedule(V2_S, 350), epoch)


def test_stage_for_epoch_of_an_empty_schedule():
    with pytest.raises(ValueError, match="schedule must hold at least one stage"):
        stage_for_epoch((), 0)


@pytest.mark.parametrize(
    "config",
    [
        V2_S,
        ProgressiveConfig.from_preset("efficientnetv2-l"),
        ProgressiveConfig(num_stages=7, image_size=(96, 224), dropout=(0.05, 0.2), randaugment_magnitude=(2, 9),
                          mixup_alpha=(0.0, 0.8), image_size_divisor=16),
    ],
)
def test_to_dict_round_trips_exactly_through_json(config):
    data = config.to_dict()
    assert data["image_size"] == list(config.image_size)  # plain lists: JSON and YAML safe
    assert ProgressiveConfig.from_dict(json.loads(json.dumps(data))) == config
    assert ProgressiveConfig.from_dict(data) == config


def test_from_dict_refuses_unknown_keys_and_defaults_missing_ones():
    message = r"progressive config keys must be among .*num_stages.*got unknown \['stages'\]"
    with pytest.raises(ValueError, match=message):
        ProgressiveConfig.from_dict({"stages": 4})
    assert ProgressiveConfig.from_dict({"num_stages": 2}) == dataclasses.replace(V2_S, num_stages=2)


def test_configs_and_stages_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        V2_S.num_stages = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        progressive_schedule(V2_S, 4)[0].image_size = 64


def test_the_module_imports_no_framework():
    code = (
        "import sys\nimport nas.progressive\n"
        "print(','.join(m for m in ('torch', 'numpy', 'ray', 'optuna') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
