"""A batch of training images (B, *input_shape) + `augment shift= rotate= scale=` -> the same batch, each
image moved by its own random affine transform, on the device.

Each image, viewed in the dataset's own sample shape (H, W) before it is
reshaped to the net's input, gets a rotation by an angle drawn uniformly in
[-rotate, rotate] degrees about its centre, a zoom by a factor in
[1 - scale, 1 + scale] (above 1 the digit grows) and a shift of up to
`shift` pixels along each axis, resampled bilinearly with zeros outside
(zero in the dataset's pixel values: the normalization's shift is undone
around the resampling). The draws come from a generator seeded by
(run seed, global step), so a resumed run draws exactly what an
uninterrupted one would, whatever was interrupted where. Validation and test
images are never augmented: the trainer calls this for training batches only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from netc.dsl.ir import AugmentConfig

_STREAM = 0x5EED_A06  # separates augmentation draws from every other use of the run's seed


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """A generator on `device` for global step `step` of a run seeded `seed`."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + step) ^ _STREAM)
    return generator


def affine_matrices(count: int, config: AugmentConfig, size: tuple[int, int],
                    generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """(count, 2, 3) matrices mapping output to input coordinates, in affine_grid's [-1, 1] units."""
    height, width = size
    draws = torch.rand((count, 4), generator=generator, device=device, dtype=torch.float32) * 2 - 1
    angle = draws[:, 0] * math.radians(config.rotate)
    zoom = 1 + draws[:, 1] * config.scale
    # a shift of +s pixels moves the content by s: sample the input at p - s (2/size units per pixel)
    shift_x, shift_y = -draws[:, 2] * config.shift * 2 / width, -draws[:, 3] * config.shift * 2 / height
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    aspect = height / width  # affine_grid's units differ per axis on a non-square image
    return torch.stack([torch.stack([cos, -sin * aspect, shift_x], dim=1),
                        torch.stack([sin / aspect, cos, shift_y], dim=1)], dim=1)


def augment_batch(images: torch.Tensor, config: AugmentConfig, sample_shape: tuple[int, ...],
                  generator: torch.Generator, background: float = 0.0,
                  batch: int | None = None, offset: int = 0) -> torch.Tensor:
    """(B, *input_shape) images -> augmented copies; `background` is a zero pixel after normalization.

    The images may be one part of a larger batch (a data-parallel rank's share): `batch`
    transforms are drawn, and rows offset..offset+B of them applied, so every image gets the
    transform of its place in the whole batch, however the batch is split.
    """
    if len(sample_shape) != 2:
        raise ValueError(f"augment needs 2-D images, the dataset's samples are {list(sample_shape)}")
    count = images.shape[0]
    planes = images.reshape(count, 1, *sample_shape) - background  # (B, 1, H, W), zero outside
    drawn = affine_matrices(batch or count, config, sample_shape, generator, images.device)
    theta = drawn[offset:offset + count].to(images.dtype)
    grid = F.affine_grid(theta, list(planes.shape), align_corners=False)
    moved = F.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (moved + background).reshape(images.shape)
