"""Padding to a multiple of the stride (published split) and cropping back."""
import torch

from utils.padding import pad_divide_by, padding_for, unpad


def test_published_split_floor_on_top_and_left():
    assert padding_for(150, 270, 16) == (1, 1, 5, 5)
    assert padding_for(480, 854, 16) == (5, 5, 0, 0)
    assert padding_for(480, 854, 64) == (21, 21, 16, 16)
    assert padding_for(17, 33, 16) == (7, 8, 7, 8)
    assert padding_for(64, 64, 64) == (0, 0, 0, 0)


def test_round_trip():
    x = torch.randn(2, 3, 37, 53)
    y = torch.randn(2, 1, 37, 53)
    (px, py), pad = pad_divide_by([x, y], 16)
    assert px.shape[-2:] == (48, 64) and py.shape[-2:] == (48, 64)
    assert px[..., :pad[2], :].abs().sum() == 0 and px[..., :, -pad[1]:].abs().sum() == 0
    assert torch.equal(unpad(px, pad), x) and torch.equal(unpad(py, pad), y)
    (same,), pad = pad_divide_by([x[..., :32, :48]], 16)
    assert pad == (0, 0, 0, 0) and torch.equal(unpad(same, pad), x[..., :32, :48])
