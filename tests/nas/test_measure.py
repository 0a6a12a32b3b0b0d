"""Parameter and multiply-add counts."""

import torch

from nas.builder import build_model
from nas.measure import count_macs, count_parameters, spec_complexity
from search_spaces import presets


def test_macs_match_the_papers():
    # EfficientNet-B0: 0.39B FLOPs at 224 (Tan & Le 2019, Table 2); EfficientNetV2-B0: 0.72B (Tan & Le 2021).
    assert round(spec_complexity(presets.get("efficientnet-b0")).macs / 1e9, 2) == 0.39
    assert round(spec_complexity(presets.get("efficientnetv2-b0")).macs / 1e9, 2) == 0.72


def test_macs_grow_with_the_square_of_the_image_size():
    spec = presets.get("tiny")
    small, large = spec_complexity(spec, image_size=32).macs, spec_complexity(spec, image_size=64).macs
    per_image = spec.head_channels * 1000  # the classifier's cost does not depend on the image size
    assert 3.95 < (large - per_image) / (small - per_image) <= 4.0


def test_stage_parameters_add_up():
    spec = presets.get("efficientnetv2-s")
    complexity = spec_complexity(spec)
    head_and_stem = 24 * 3 * 9 + 2 * 24 + 256 * 1280 + 2 * 1280 + 1280 * 1000 + 1000
    assert sum(complexity.stage_parameters) + head_and_stem == complexity.parameters
    assert complexity.image_size == spec.eval_image_size


def test_counting_on_a_real_model_agrees_and_keeps_the_mode():
    spec = presets.get("tiny")
    model = build_model(spec).train()
    assert count_macs(model, 32) == spec_complexity(spec, image_size=32).macs
    assert model.training
    model.classifier.weight.requires_grad_(False)
    assert count_parameters(model) == spec_complexity(spec).parameters - model.classifier.weight.numel()
    assert torch.is_grad_enabled()
