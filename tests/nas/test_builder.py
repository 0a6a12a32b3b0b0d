"""The builder: exact reference parameter counts, gradients everywhere, stochastic depth, initialization."""

import dataclasses
import math
import random
import re

import pytest
import torch
from torch import nn

from nas.blocks import DropPath, SqueezeExcite
from nas.builder import build_model
from nas.measure import count_parameters
from search_spaces import presets
from search_spaces.spec import StageSpec

# Parameter counts of the reference implementations (TensorFlow efficientnet/efficientnetv2, as ported by
# timm and torchvision), 1000 classes.
REFERENCE_PARAMETERS = {
    "efficientnetv2-s": 21_458_488,
    "efficientnetv2-m": 54_139_356,
    "efficientnetv2-l": 118_515_272,
    "efficientnetv2-b0": 7_139_704,
    "efficientnet-b0": 5_288_548,
}


def meta_model(spec, **kwargs):
    with torch.device("meta"):
        return build_model(spec, **kwargs)


@pytest.mark.parametrize("name, expected", REFERENCE_PARAMETERS.items())
def test_reference_parameter_counts_are_exact(name, expected):
    assert count_parameters(meta_model(presets.get(name))) == expected


def test_classifier_size_follows_num_classes():
    spec = presets.get("efficientnet-b0")
    difference = count_parameters(meta_model(spec)) - count_parameters(meta_model(spec, num_classes=10))
    assert difference == 990 * (spec.head_channels + 1)


def test_output_and_feature_shapes():
    spec = presets.get("tiny")
    model = build_model(spec, num_classes=7, in_channels=1).eval()
    x = torch.randn(3, 1, 32, 32)
    assert model(x).shape == (3, 7)
    assert model.forward_features(x).shape == (3, spec.head_channels, 32 // spec.total_stride, 32 // spec.total_stride)


@pytest.mark.parametrize("name", ["tiny", "efficientnetv2-b0", "efficientnet-b0"])
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    spec = dataclasses.replace(presets.get(name), drop_path_rate=0.0, dropout=0.0)
    model = build_model(spec, num_classes=5)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all(), parameter_name
        assert parameter.grad.abs().sum() > 0, parameter_name


def test_drop_path_grows_linearly_with_block_index():
    spec = presets.get("efficientnetv2-s")
    model = meta_model(spec)
    blocks = [block for stage in model.stages for block in stage]
    assert len(blocks) == spec.num_blocks
    for index, block in enumerate(blocks):
        if block.has_shortcut and index > 0:
            assert isinstance(block.drop_path, DropPath)
            assert block.drop_path.drop_rate == pytest.approx(spec.drop_path_rate * index / spec.num_blocks)
        else:
            assert not isinstance(block.drop_path, DropPath)


def test_drop_path_drops_whole_samples_and_keeps_the_expectation():
    torch.manual_seed(0)
    layer = DropPath(0.25).train()
    out = layer(torch.ones(20000, 2, 2, 2))
    per_sample = out.flatten(1)
    assert per_sample.unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    assert (per_sample == per_sample[:, :1]).all()
    assert out.mean().item() == pytest.approx(1.0, abs=0.02)
    assert torch.equal(layer.eval()(torch.ones(3, 2)), torch.ones(3, 2))


def test_shortcut_only_when_shapes_match():
    model = meta_model(presets.get("efficientnetv2-s"))
    first_blocks = [stage[0] for stage in model.stages]
    # stage 1 keeps 24 channels at stride 1; every other stage changes channels or stride in its first block
    assert [block.has_shortcut for block in first_blocks] == [True, False, False, False, False, False]
    assert all(block.has_shortcut for stage in model.stages for block in list(stage)[1:])


def stage_model(**stage):
    spec = presets.get("tiny")
    fields = {"num_layers": 1, "kernel_size": 5, "stride": 2, "out_channels": 24, "se_ratio": 0.0}
    return build_model(dataclasses.replace(spec, stages=(StageSpec(**{**fields, **stage}),)))


def test_block_structure_follows_the_reference():
    fused_e1 = stage_model(op="fused_mbconv", expand_ratio=1).stages[0][0].body
    assert list(fused_e1._modules) == ["fused"]
    assert fused_e1.fused[0].kernel_size == (5, 5) and fused_e1.fused[0].stride == (2, 2)
    fused_e4 = stage_model(op="fused_mbconv", expand_ratio=4, se_ratio=0.25).stages[0][0].body
    assert list(fused_e4._modules) == ["fused", "se", "project"]
    assert fused_e4.fused[0].out_channels == 64 and fused_e4.project[0].kernel_size == (1, 1)
    assert len(fused_e4.project) == 2  # linear projection: conv + norm, no activation
    mb_e1 = stage_model(op="mbconv", expand_ratio=1, se_ratio=0.25).stages[0][0].body
    assert list(mb_e1._modules) == ["depthwise", "se", "project"]
    mb_e6 = stage_model(op="mbconv", expand_ratio=6, se_ratio=0.25).stages[0][0].body
    assert list(mb_e6._modules) == ["expand", "depthwise", "se", "project"]
    assert mb_e6.depthwise[0].groups == 96
    se = mb_e6.se
    assert isinstance(se, SqueezeExcite) and se.reduce.out_channels == 4  # int(16 input channels * 0.25)


def test_batch_norm_and_activation_settings_reach_every_layer():
    spec = dataclasses.replace(presets.get("tiny"), bn_momentum=0.1, bn_eps=1e-5, activation="relu")
    model = build_model(spec)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.1 and m.eps == 1e-5 for m in norms)
    assert not any(isinstance(m, nn.SiLU) for m in model.modules())
    assert any(isinstance(m, nn.ReLU) for m in model.modules())


def test_reference_initialization():
    torch.manual_seed(0)
    model = build_model(presets.get("efficientnet-b0"))
    head_conv = model.head[0]
    fan_out = head_conv.out_channels  # 1x1 kernel
    assert head_conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.02)
    depthwise = model.stages[5][0].body.depthwise[0]
    assert depthwise.weight.std().item() == pytest.approx(math.sqrt(2.0 / 25), rel=0.05)  # fan_out per group: 5x5x1
    bound = 1.0 / math.sqrt(1000)
    assert model.classifier.weight.abs().max().item() <= bound
    assert model.classifier.weight.abs().max().item() > 0.95 * bound
    assert torch.count_nonzero(model.classifier.bias) == 0
    norm = model.stem[1]
    assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and torch.count_nonzero(norm.bias) == 0


@pytest.mark.parametrize("num_classes, in_channels, message", [
    (0, 3, "num_classes must be an integer >= 1, got 0"),
    (True, 3, "num_classes must be an integer >= 1, got True"),
    (2.5, 3, "num_classes must be an integer >= 1, got 2.5"),
    (10, 0, "in_channels must be an integer in [1, 16384], got 0"),
    (10, 16385, "in_channels must be an integer in [1, 16384], got 16385"),
])
def test_invalid_build_arguments(num_classes, in_channels, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_model(presets.get("tiny"), num_classes=num_classes, in_channels=in_channels)


@pytest.mark.parametrize("space_name", presets.space_names())
def test_two_hundred_samples_build_and_ten_train_a_step(space_name):
    space = presets.get_space(space_name)
    rng = random.Random(space_name)
    samples = [space.sample(rng) for _ in range(200)]
    for spec in samples:
        model = meta_model(spec, num_classes=10)
        assert len([b for stage in model.stages for b in stage]) == spec.num_blocks
    torch.manual_seed(0)
    image_size = max(32, 2 * samples[0].total_stride)
    for spec in samples[:10]:  # a real build of an efficientnetv2-s candidate takes ~2 s on a CI core
        model = build_model(spec, num_classes=10)
        images = torch.randn(2, 3, image_size, image_size)
        loss = nn.functional.cross_entropy(model(images), torch.tensor([1, 2]))
        loss.backward()
        assert torch.isfinite(loss)
        assert all(p.grad is not None for p in model.parameters())


# --- input channels (issue 11) ------------------------------------------------------------------------------------


def test_input_channels_default_to_rgb_or_to_what_the_spec_pins():
    spec = presets.get("tiny")
    assert build_model(spec, num_classes=10).stem[0].in_channels == 3
    assert build_model(spec, num_classes=10, in_channels=1).stem[0].in_channels == 1
    pinned = dataclasses.replace(spec, in_channels=1)
    assert build_model(pinned, num_classes=10).stem[0].in_channels == 1
    assert build_model(pinned, num_classes=10, in_channels=1)(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_channels_that_contradict_the_spec_are_refused_naming_both():
    from search_spaces.spec import SpecError

    pinned = dataclasses.replace(presets.get("tiny"), in_channels=1)
    with pytest.raises(SpecError, match="spec tiny pins in_channels 1, got in_channels 3"):
        build_model(pinned, num_classes=10, in_channels=3)
