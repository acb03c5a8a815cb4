"""`augment shift= rotate= scale=`: the train-block setting, the transforms' geometry, seeding, resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from netc.dsl import NetError, parse
from netc.dsl.ir import AugmentConfig
from netc.runtime.augment import augment_batch, step_generator
from test_train import check_resume, make_trainer
from test_train import dataset  # noqa: F401  (the fixture the last test uses)

HEADER = "net a {\n    input [1, 28, 28]\n    flatten\n    linear 10\n}\ntrain {\n    %s\n}\n"


def blob_images(count: int, size: int = 28) -> torch.Tensor:
    """(count, 1, size, size) images with one bright Gaussian blob each, off centre."""
    rows = torch.arange(size, dtype=torch.float64)[:, None]
    cols = torch.arange(size, dtype=torch.float64)[None, :]
    blob = torch.exp(-((rows - 9.0) ** 2 + (cols - 16.0) ** 2) / 4.0)
    return blob.expand(count, 1, size, size).clone()


def centre_of_mass(images: torch.Tensor) -> torch.Tensor:
    """(B, 2) (row, col) of each image's mass."""
    size = images.shape[-1]
    grid = torch.arange(size, dtype=images.dtype)
    mass = images.sum(dim=(-1, -2)).reshape(-1)
    rows = (images.sum(dim=-1).reshape(-1, size) * grid).sum(1) / mass
    cols = (images.sum(dim=-2).reshape(-1, size) * grid).sum(1) / mass
    return torch.stack([rows, cols], dim=1)


def draws(seed: int, step: int, count: int) -> torch.Tensor:
    return torch.rand((count, 4), generator=step_generator(seed, step, torch.device("cpu"))) * 2 - 1


def test_the_setting_parses_with_ranges_and_errors() -> None:
    config = parse(HEADER % "augment shift=2 rotate=10 scale=0.1").train.augment
    assert config == AugmentConfig(2.0, 10.0, 0.1)
    assert parse(HEADER % "batch 8").train.augment is None
    for bad, message in [("augment rotate=-1", "'rotate' must be at least 0"),
                         ("augment scale=1", "'scale' must be in [0, 1), got 1"),
                         ("augment shfit=2", "did you mean 'shift'")]:
        with pytest.raises(NetError) as error:
            parse(HEADER % bad)
        assert message in str(error.value) and "<string>:7:" in str(error.value)


def test_all_zero_is_the_identity() -> None:
    images = torch.rand(5, 1, 28, 28, dtype=torch.float64)
    same = augment_batch(images, AugmentConfig(), (28, 28), step_generator(0, 0, torch.device("cpu")))
    torch.testing.assert_close(same, images, rtol=0, atol=1e-12)


def test_shift_moves_each_blob_by_its_own_drawn_pixels() -> None:
    images = blob_images(6)
    moved = augment_batch(images, AugmentConfig(shift=3.0), (28, 28), step_generator(7, 11, images.device))
    expected_shift = torch.stack([draws(7, 11, 6)[:, 3], draws(7, 11, 6)[:, 2]], dim=1).double() * 3.0
    torch.testing.assert_close(centre_of_mass(moved) - centre_of_mass(images), expected_shift,
                               atol=0.02, rtol=0)
    assert float(expected_shift.abs().max()) > 1.0  # the draws really moved something


def test_rotation_and_zoom_move_the_blob_about_the_centre() -> None:
    images = blob_images(6)
    config = AugmentConfig(rotate=40.0, scale=0.2)
    moved = augment_batch(images, config, (28, 28), step_generator(3, 5, images.device))
    drawn = draws(3, 5, 6).double()
    angle, zoom = drawn[:, 0] * math.radians(40.0), 1 + drawn[:, 1] * 0.2
    centre = 13.5  # pixel centres run 0..27
    before = centre_of_mass(images) - centre  # (row, col) = (y, x)
    # each output pixel samples the input at R(angle) p / zoom: the content turns by -angle and grows
    x = zoom * (torch.cos(angle) * before[:, 1] + torch.sin(angle) * before[:, 0])
    y = zoom * (-torch.sin(angle) * before[:, 1] + torch.cos(angle) * before[:, 0])
    torch.testing.assert_close(centre_of_mass(moved) - centre, torch.stack([y, x], dim=1), atol=0.1, rtol=0)


def test_the_same_step_draws_the_same_and_a_share_gets_its_rows() -> None:
    images = torch.rand(8, 784)
    config = AugmentConfig(shift=2.0, rotate=10.0, scale=0.1)

    def run(step: int, rows: slice = slice(None), batch: int | None = None, offset: int = 0) -> torch.Tensor:
        return augment_batch(images[rows], config, (28, 28), step_generator(1, step, images.device),
                             batch=batch, offset=offset)

    assert torch.equal(run(4), run(4)) and not torch.equal(run(4), run(5))
    # a data-parallel rank's part of the batch: the rows the whole batch would give them
    assert torch.equal(run(4, slice(5, 8), batch=8, offset=5), run(4)[5:])
    # zero outside: after normalization a zero pixel is -mean/std, and that is what comes in
    shifted = augment_batch(torch.full((2, 784), -0.5), AugmentConfig(shift=6.0), (28, 28),
                            step_generator(2, 0, images.device), background=-0.5)
    torch.testing.assert_close(shifted, torch.full((2, 784), -0.5))


def test_training_augments_train_batches_only_and_resumes_exactly(dataset: str, tmp_path: Path) -> None:  # noqa: F811
    settings = "optimizer sgd lr=0.1 momentum=0.9\n    augment shift=1 rotate=15 scale=0.1"
    trainer = make_trainer(dataset, None, settings)
    seen: list[torch.Tensor] = []
    original = trainer.net.forward
    trainer.net.forward = lambda x: (seen.append(x.detach().clone()), original(x))[1]  # type: ignore
    trainer.fit()
    train_x, val_x = trainer.splits.train_x, trainer.splits.val_x
    first = seen[0]  # the first batch of epoch 1: augmented, so not rows of the training set
    assert first.shape == (8, 25)
    assert not any(torch.allclose(row, sample) for row in first for sample in train_x)
    assert any(torch.equal(batch, val_x) for batch in seen)  # validation exactly as stored
    check_resume(dataset, tmp_path, settings, 5, "torch")


def test_mnist_samples_are_images_whatever_the_input_shape() -> None:
    from netc.dsl.ir import DataConfig
    from netc.runtime.data import prepare

    splits = prepare(DataConfig(), (784,), 10, 0, "cpu", limit=50)  # a flat net input
    assert splits.sample_shape == (28, 28) and splits.train_x.shape == (50, 784)
