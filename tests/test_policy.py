"""kernels.policy: the precision and split-K decisions every kernel family follows."""

from __future__ import annotations

import pytest
import torch

from netc.kernels import policy


def test_cpu_and_float64_always_ieee() -> None:
    for kind in policy.DOT_KINDS:
        assert policy.dot_precision(kind, torch.float32, torch.device("cpu")) == "ieee"
        assert policy.dot_precision(kind, torch.float64, torch.device("cuda")) == "ieee"


def test_cuda_float32_follows_pytorch_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy, "interpreting", lambda: False)
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert policy.dot_precision("conv", torch.float32, cuda) == "tf32"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert policy.dot_precision("conv", torch.float32, cuda) == "ieee"
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert policy.dot_precision("matmul", torch.float32, cuda) == "ieee"
        torch.set_float32_matmul_precision("high")
        assert policy.dot_precision("matmul", torch.float32, cuda) == "tf32"
    finally:
        torch.set_float32_matmul_precision(previous)
    with pytest.raises(ValueError):
        policy.dot_precision("fft", torch.float32, cuda)


def test_split_k_fills_the_sms_without_tiny_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy, "interpreting", lambda: False)
    # LeNet's conv weight gradient: one output tile, 57,600 / 32 = 1800 K steps
    assert policy.split_k(1, 1800) == policy.SM_COUNT
    assert policy.split_k(4, 1800) == 33  # 4 * 33 >= 132
    assert policy.split_k(1, 12) == 3  # each split keeps >= 4 steps
    assert policy.split_k(1, 7) == 1  # too short to split
    assert policy.split_k(200, 1800) == 1  # the output tiles fill the GPU already
    monkeypatch.setattr(policy, "interpreting", lambda: True)
    assert policy.split_k(1, 1800) == 1


def test_batch_norm_reductions_fill_the_sms(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split reductions cover the SMs, each CTA reading >= NORM_MIN_STEPS tiles when there are enough."""
    monkeypatch.setattr(policy, "interpreting", lambda: False)
    sms, tile = policy.SM_COUNT, 1024
    # 64 channels of 128 x 7 x 7 (resnet.net's second stage): 7 tiles each, once one CTA per channel
    splits = policy.norm_splits(64, 128 * 49, tile)
    assert 64 * splits >= sms and splits <= 7
    # plenty of tiles: about 2 CTAs per SM, every CTA reading at least NORM_MIN_STEPS tiles
    splits = policy.norm_splits(32, 128 * 196 * 8, tile)
    assert 2 * sms <= 32 * splits < 2 * sms + 32 and 128 * 196 * 8 / splits >= policy.NORM_MIN_STEPS * tile
    assert policy.norm_splits(512, 10 * tile, tile) == 1  # channels alone fill the GPU
    assert policy.norm_splits(1, 3 * tile, tile) == 3  # no more CTAs than tiles
    monkeypatch.setattr(policy, "interpreting", lambda: True)
    assert policy.norm_splits(64, 128 * 49, tile) == 2  # the interpreter: 2 (the combine still runs)
