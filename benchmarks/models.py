"""Models the benchmarks run: the real tiny SkySense segmentation model, or a fast dummy."""
from __future__ import annotations

from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "resources" / "models" / "landcover_loveda_tiny.pth"


class PixelDummy(torch.nn.Module):
    """A 1x1 convolution (3 -> 7 classes): costs almost nothing, so a run measures the engine's own
    reading, blending and writing (and its memory) rather than the network."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 7, 1)

    def forward(self, x):
        return self.conv(x)


def build_model(kind: str) -> torch.nn.Module:
    """"tiny": the trained default model file when present, else the same architecture untrained
    (speed does not depend on the weights); "dummy": PixelDummy."""
    if kind == "dummy":
        return PixelDummy().eval()
    if DEFAULT_MODEL.exists():
        from models.checkpoint import load_model_file
        return load_model_file(DEFAULT_MODEL)[0].eval()
    from models.registry import create_model
    torch.manual_seed(0)
    return create_model("skysense_seg_tiny", num_classes=7).eval()
