"""Geometric and radiometric augmentation for segmentation batches (image and labels move together)."""
from __future__ import annotations

import torch


def augment_batch(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                  brightness: float = 0.1, contrast: float = 0.1,
                  channel_gain: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips, 90-degree rotations and mild brightness/contrast per sample.

    images: [B, C, H, W] normalised float (H == W); labels: [B, H, W]. Brightness is a shift in
    normalised units, contrast a gain around each chip's mean, so class appearance stays plausible;
    channel_gain (optional) scales each band independently, imitating sensor/season colour shifts.
    """
    out_images, out_labels = [], []
    for image, label in zip(images, labels):
        quarter_turns = int(torch.randint(0, 4, (1,), generator=generator))
        if quarter_turns:
            image = torch.rot90(image, quarter_turns, dims=(1, 2))
            label = torch.rot90(label, quarter_turns, dims=(0, 1))
        if bool(torch.randint(0, 2, (1,), generator=generator)):
            image = torch.flip(image, dims=(2,))
            label = torch.flip(label, dims=(1,))
        gain = 1.0 + (torch.rand(1, generator=generator) * 2 - 1) * contrast
        shift = (torch.rand(1, generator=generator) * 2 - 1) * brightness
        mean = image.mean(dim=(1, 2), keepdim=True)
        image = (image - mean) * gain + mean + shift
        if channel_gain:
            band_gain = 1.0 + (torch.rand(image.shape[0], 1, 1, generator=generator) * 2 - 1) * channel_gain
            image = (image - mean) * band_gain + mean
        out_images.append(image)
        out_labels.append(label)
    return torch.stack(out_images), torch.stack(out_labels)
