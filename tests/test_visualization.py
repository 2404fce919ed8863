"""utils.visualization.overlay: tint, outline, untouched background and void."""
import numpy as np
import pytest

from utils.io import PALETTE
from utils.visualization import overlay


def scene():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    ids = np.zeros((60, 80), np.uint8)
    ids[10:40, 10:40] = 1
    ids[20:50, 40:70] = 2     # touches object 1 along x = 40
    ids[0:5, 70:80] = 255     # void
    return frame, ids


def test_objects_are_tinted_and_the_rest_untouched():
    frame, ids = scene()
    result = overlay(frame, ids, alpha=0.5)
    assert result.dtype == np.uint8 and result.shape == frame.shape
    untouched = (ids == 0) | (ids == 255)
    assert np.array_equal(result[untouched], frame[untouched])
    expected = np.rint(frame[25, 25] * 0.5 + PALETTE[1] * 0.5)
    assert np.array_equal(result[25, 25], expected)  # interior of object 1
    assert np.array_equal(result[35, 55], np.rint(frame[35, 55] * 0.5 + PALETTE[2] * 0.5))


def test_contour_follows_each_object_border():
    frame, ids = scene()
    result = overlay(frame, ids, alpha=0.5, contour_width=1)
    assert np.array_equal(result[10, 20], PALETTE[1]) and np.array_equal(result[39, 20], PALETTE[1])
    assert np.array_equal(result[30, 39], PALETTE[1])  # object 1 where it meets object 2
    assert np.array_equal(result[30, 40], PALETTE[2])
    assert np.array_equal(result[20, 55], PALETTE[2]) and np.array_equal(result[49, 55], PALETTE[2])
    assert not np.array_equal(result[11, 20], PALETTE[1])  # one pixel wide
    thick = overlay(frame, ids, alpha=0.5, contour_width=3)
    assert np.array_equal(thick[12, 20], PALETTE[1]) and not np.array_equal(thick[13, 20], PALETTE[1])


def test_alpha_zero_without_contour_returns_the_frame():
    frame, ids = scene()
    assert np.array_equal(overlay(frame, ids, alpha=0.0, contour_width=0), frame)


def test_shape_mismatch_is_an_error():
    frame, ids = scene()
    with pytest.raises(ValueError, match='overlay needs'):
        overlay(frame, ids[:, :-1])
