"""ONNX export of a trained network, checked against PyTorch.

Uses torch's ``torch.export``-based ONNX exporter (which needs ``onnxscript``) with a dynamic batch dimension,
then runs the file in ONNX Runtime on a test batch of another size and compares the logits with PyTorch's, so
a file that does not reproduce the model is never reported as exported. Install with ``pip install
training-aware-nas[onnx]``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

REQUIRED_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


class OnnxExportError(RuntimeError):
    """The ONNX file could not be written, or does not reproduce the PyTorch model."""


def export_onnx(
    model: nn.Module, path: Path, *, image_size: int, in_channels: int = 3, tolerance: float = 1e-4
) -> float:
    """Writes ``model`` (in eval mode) to ``path`` and returns the largest logit difference to PyTorch."""
    missing = [name for name in REQUIRED_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise OnnxExportError(
            f"ONNX export needs {', '.join(missing)}: pip install 'training-aware-nas[onnx]'"
        )
    import onnxruntime

    model = model.eval().to("cpu", memory_format=torch.contiguous_format)
    example = torch.randn(2, in_channels, image_size, image_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=True,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        verbose=False,
    )
    test = torch.randn(3, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"images": test.numpy()})
    with torch.no_grad():
        torch_logits = model(test)
    difference = float((torch.from_numpy(onnx_logits) - torch_logits).abs().max())
    if not difference <= tolerance:
        raise OnnxExportError(f"{path}: ONNX logits differ from PyTorch's by {difference:.3g} (> {tolerance:g})")
    return difference
