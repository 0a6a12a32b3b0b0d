"""ONNX export reproduces the PyTorch network (dynamic batch) or refuses."""

import pytest
import torch

from nas.builder import build_model
from nas.onnx_export import OnnxExportError, export_onnx
from search_spaces import presets


def test_exported_network_matches_pytorch_for_another_batch_size(tmp_path):
    import onnxruntime

    torch.manual_seed(0)
    model = build_model(presets.get("tiny"), num_classes=7)
    path = tmp_path / "tiny.onnx"
    difference = export_onnx(model, path, image_size=32)
    assert path.stat().st_size > 100_000 and difference <= 1e-4
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.randn(5, 3, 32, 32)
    (logits,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(logits), model.eval()(images), atol=1e-4)


def test_missing_packages_are_named(tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "onnxscript" else real_find_spec(name, *args))
    with pytest.raises(OnnxExportError, match=r"needs onnxscript: pip install 'training-aware-nas\[onnx\]'"):
        export_onnx(build_model(presets.get("tiny")), tmp_path / "x.onnx", image_size=32)
    assert not (tmp_path / "x.onnx").exists()


def test_one_channel_network_exports_with_a_one_channel_input_and_leaves_no_temporary(tmp_path):
    import onnx

    torch.manual_seed(0)
    model = build_model(presets.get("tiny"), num_classes=4, in_channels=1)
    path = tmp_path / "out" / "gray.onnx"
    assert export_onnx(model, path, image_size=32, in_channels=1) <= 1e-4
    dimensions = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [dimension.dim_value for dimension in dimensions][1:] == [1, 32, 32]
    assert [entry.name for entry in path.parent.iterdir()] == ["gray.onnx"]  # one self-contained file


def test_a_model_that_does_not_reproduce_is_never_written(tmp_path):
    (tmp_path / "keep.onnx").write_bytes(b"previous export")
    with pytest.raises(OnnxExportError, match="ONNX logits differ from PyTorch's"):
        export_onnx(build_model(presets.get("tiny")), tmp_path / "keep.onnx", image_size=32, tolerance=-1.0)
    assert (tmp_path / "keep.onnx").read_bytes() == b"previous export"
    assert [entry.name for entry in tmp_path.iterdir()] == ["keep.onnx"]


def test_saved_weights_export_as_the_network_they_were_saved_from(tmp_path):
    import dataclasses

    import onnxruntime

    from nas.onnx_export import export_weights_onnx

    spec = dataclasses.replace(presets.get("tiny"), in_channels=1)
    torch.manual_seed(0)
    model = build_model(spec, num_classes=5, in_channels=1).eval()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    path = tmp_path / "out" / "tiny.onnx"
    difference = export_weights_onnx(spec, tmp_path / "weights.pt", path, num_classes=5, in_channels=1, image_size=24)
    assert difference <= 1e-4
    images = torch.randn(2, 1, 24, 24)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(logits), model(images), atol=1e-4)
    with pytest.raises(RuntimeError, match="size mismatch"):  # weights of another network are not exported
        export_weights_onnx(presets.get("tiny"), tmp_path / "weights.pt", tmp_path / "x.onnx", num_classes=5,
                            in_channels=3, image_size=24)
    assert not (tmp_path / "x.onnx").exists()


def test_the_exporter_says_nothing_about_itself(tmp_path, capfd, recwarn):
    """No 'torchvision is not installed' line per detection operator, no pytree FutureWarning (issue 15, point 7);
    the exporter's logger is left as it was."""
    import logging

    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    export_onnx(build_model(presets.get("tiny"), num_classes=3), tmp_path / "quiet.onnx", image_size=32)
    err = capfd.readouterr().err
    assert "torchvision" not in err and "LeafSpec" not in err, err
    assert not [warning for warning in recwarn if issubclass(warning.category, FutureWarning)]
    assert logger.level == level
