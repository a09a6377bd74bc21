"""Reconstruction grids: original | masked | reconstruction | reconstruction with the visible patches pasted,
one row per image, in pixel space (correct for norm-pix models through ``predictions_to_images``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from ..modeling_mae_hf import IMAGENET_MEAN, IMAGENET_STD

GRID_PADDING = 2
MIN_TILE_SIZE = 96  # small images (digits, 32 px tests) are enlarged (nearest) so the picture is readable


def denormalize(pixel_values: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised (B, 3, H, W) back to [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=pixel_values.device).view(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixel_values.device).view(1, -1, 1, 1)
    return (pixel_values * std + mean).clamp(0, 1)


def tile_scale(image_size: int) -> int:
    return max(1, math.ceil(MIN_TILE_SIZE / image_size))


def grid_shape(num_images: int, image_size: int) -> tuple[int, int]:
    """(height, width) in pixels of the grid for ``num_images`` square images of ``image_size``."""
    tile = image_size * tile_scale(image_size) + GRID_PADDING
    return num_images * tile + GRID_PADDING, 4 * tile + GRID_PADDING


@torch.no_grad()
def reconstruction_panels(model, pixel_values: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(B, 4, 3, H, W) in [0, 1]. The mask comes from a private generator seeded with ``seed`` so every grid of
    a run shows the same patches removed, and the global RNG (masking during training) is not touched."""
    was_training = model.training
    model.eval()
    try:
        pixel_values = pixel_values.to(next(model.parameters()).device, torch.float32)
        batch, _, height, width = pixel_values.shape
        patch = model.config.patch_size
        num_patches = (height // patch) * (width // patch)
        generator = torch.Generator().manual_seed(seed)
        noise = torch.rand(batch, num_patches, generator=generator).to(pixel_values.device)
        outputs = model(pixel_values=pixel_values, noise=noise)
        reconstruction = model.predictions_to_images(outputs.logits, pixel_values)
        removed = model.mask_to_image(outputs.mask, (height, width))
        masked = pixel_values * (1 - removed)
        pasted = masked + reconstruction * removed
        # Removed patches shown grey (0 after normalisation would be the ImageNet mean colour; grey is clearer).
        masked_view = denormalize(masked) * (1 - removed) + 0.5 * removed
        panels = [denormalize(pixel_values), masked_view, denormalize(reconstruction), denormalize(pasted)]
        return torch.stack(panels, dim=1).cpu()
    finally:
        model.train(was_training)


def reconstruction_grid(model, pixel_values: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The (3, H, W) grid image in [0, 1]; rows = images, columns = original / masked / reconstruction / pasted."""
    panels = reconstruction_panels(model, pixel_values, seed)
    batch, columns, channels, height, width = panels.shape
    tiles = panels.reshape(batch * columns, channels, height, width)
    scale = tile_scale(height)
    if scale > 1:
        tiles = F.interpolate(tiles, scale_factor=scale, mode="nearest")
    return make_grid(tiles, nrow=columns, padding=GRID_PADDING, pad_value=1.0)


def save_reconstruction_grid(model, pixel_values: torch.Tensor, path: str, seed: int = 0) -> torch.Tensor:
    grid = reconstruction_grid(model, pixel_values, seed)
    save_image(grid, path)
    return grid


def log_image_to_trackers(accelerator, tag: str, image: torch.Tensor, step: int) -> None:
    """Send a (3, H, W) image to the TensorBoard tracker when one is active (main process)."""
    if not accelerator.is_main_process:
        return
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, image, global_step=step)
            tracker.writer.flush()


__all__ = [
    "denormalize",
    "grid_shape",
    "log_image_to_trackers",
    "reconstruction_grid",
    "reconstruction_panels",
    "save_reconstruction_grid",
]
