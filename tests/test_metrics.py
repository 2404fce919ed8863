"""J, F and their statistics against values worked out by hand on small rectangles and series.

On frames up to 25x25 pixels the boundary tolerance is ceil(0.008 * diagonal) = 1 pixel, so the
matching disk is the 4-neighbour cross.
"""
import numpy as np
import pytest

from utils.io import DataError
from utils.metrics import (boundary_f, boundary_map, boundary_radius, decay, disk, object_count,
                           quick_video_metrics, region_similarity, sequence_scores, statistics)


def box(shape, top, left, height, width):
    mask = np.zeros(shape, dtype=bool)
    mask[top:top + height, left:left + width] = True
    return mask


SQUARE = box((10, 10), 2, 2, 4, 4)        # rows 2..5, columns 2..5
SHIFT_1 = box((10, 10), 2, 3, 4, 4)       # one column to the right
SHIFT_3 = box((10, 10), 2, 5, 4, 4)       # columns 5..8: one shared column
EMPTY = np.zeros((10, 10), dtype=bool)


def test_region_similarity_of_rectangles():
    assert region_similarity(SQUARE, SQUARE) == 1.0
    assert region_similarity(SQUARE, SHIFT_1) == pytest.approx(12 / 20)      # 4x3 shared, 16+16-12
    assert region_similarity(SQUARE, SHIFT_3) == pytest.approx(4 / 28)
    assert region_similarity(SQUARE, EMPTY) == 0.0
    assert region_similarity(EMPTY, SQUARE) == 0.0
    assert region_similarity(EMPTY, EMPTY) == 1.0
    stacked = region_similarity(np.stack([SQUARE, EMPTY]), np.stack([SHIFT_1, EMPTY]))
    np.testing.assert_allclose(stacked, [0.6, 1.0])


def test_region_similarity_leaves_void_pixels_out():
    void = box((10, 10), 0, 6, 10, 4)                                         # columns 6..9
    # SHIFT_3 keeps only column 5 (4 pixels, all shared): 4 / (16 + 4 - 4)
    assert region_similarity(SQUARE, SHIFT_3, void) == pytest.approx(0.25)
    assert region_similarity(EMPTY, box((10, 10), 0, 6, 2, 2), void) == 1.0


def test_boundary_map_of_a_rectangle():
    expected = np.zeros((10, 10), dtype=bool)
    expected[1, 1:6] = expected[1:6, 1] = True        # outside, above and left of the square
    expected[5, 2:6] = expected[2:6, 5] = True        # inside, its bottom row and right column
    np.testing.assert_array_equal(boundary_map(SQUARE), expected)
    assert boundary_map(SQUARE).sum() == 2 * (4 + 4)


def test_boundary_map_edge_rules():
    corner = box((4, 4), 2, 2, 2, 2)                  # touches the bottom and right edges
    expected = np.array([[0, 0, 0, 0],
                         [0, 1, 1, 1],                # last column: south neighbour only
                         [0, 1, 0, 0],
                         [0, 1, 0, 0]], dtype=bool)   # last row: east neighbour only
    np.testing.assert_array_equal(boundary_map(corner), expected)
    assert not boundary_map(np.ones((5, 6), dtype=bool)).any()
    np.testing.assert_array_equal(boundary_map(np.stack([corner, corner]))[1], expected)


def test_disk_and_tolerance():
    np.testing.assert_array_equal(disk(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    assert disk(2).sum() == 13 and disk(2).dtype == np.uint8
    assert boundary_radius((480, 854)) == 8            # 0.008 * 979.6 = 7.84
    assert boundary_radius((10, 10)) == 1
    assert boundary_radius((100, 100)) == 2            # 0.008 * 141.4 = 1.13


def test_boundary_f_of_rectangles():
    assert boundary_f(SQUARE, SQUARE) == 1.0
    # Every boundary pixel has its counterpart one pixel away, within the tolerance.
    assert boundary_f(SQUARE, SHIFT_1) == 1.0
    # 3 columns apart: 9 of the 16 boundary pixels of each mask lie within one pixel of the
    # other's (the top-row and bottom-row pixels near the shared column and the facing sides).
    assert boundary_f(SQUARE, SHIFT_3) == pytest.approx(9 / 16)
    assert boundary_f(SQUARE, EMPTY) == 0.0           # precision 1, recall 0
    assert boundary_f(EMPTY, SQUARE) == 0.0           # precision 0, recall 1
    assert boundary_f(EMPTY, EMPTY) == 1.0


def test_boundary_f_with_a_stray_blob_and_void():
    blob = box((10, 10), 7, 7, 2, 2)                  # 8 boundary pixels, none near the square
    pred = SQUARE | blob
    assert boundary_f(SQUARE, pred) == pytest.approx(0.8)    # precision 16/24, recall 1
    assert region_similarity(SQUARE, pred) == pytest.approx(0.8)
    void = box((10, 10), 6, 6, 4, 4)
    assert boundary_f(SQUARE, pred, void) == 1.0
    assert region_similarity(SQUARE, pred, void) == 1.0


def _brute_boundary(mask):
    """The boundary rule pixel by pixel."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    for y in range(h):
        for x in range(w):
            if y == h - 1 and x == w - 1:
                continue
            if y == h - 1:
                out[y, x] = mask[y, x] != mask[y, x + 1]
            elif x == w - 1:
                out[y, x] = mask[y, x] != mask[y + 1, x]
            else:
                out[y, x] = (mask[y, x] != mask[y, x + 1] or mask[y, x] != mask[y + 1, x]
                             or mask[y, x] != mask[y + 1, x + 1])
    return out


def _brute_f(gt, pred, void, radius):
    gt_b, pred_b = _brute_boundary(gt & ~void), _brute_boundary(pred & ~void)
    g, p = np.argwhere(gt_b), np.argwhere(pred_b)
    if len(g) == 0 or len(p) == 0:
        return 1.0 if len(g) == len(p) else 0.0
    close = ((g[:, None, :] - p[None, :, :]) ** 2).sum(-1) <= radius ** 2
    precision, recall = close.any(0).mean(), close.any(1).mean()
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def test_boundary_f_matches_the_definition_on_random_masks():
    rng = np.random.default_rng(0)
    shape = (50, 75)                                  # radius 1; (100, 150) below: radius 2
    for trial in range(12):
        if trial == 6:
            shape = (100, 150)
        radius = boundary_radius(shape)
        masks = []
        for _ in range(3):
            mask = np.zeros(shape, dtype=bool)
            for _ in range(rng.integers(1, 4)):
                top, left = rng.integers(-5, shape[0]), rng.integers(-5, shape[1])
                mask[max(top, 0):top + rng.integers(3, 30), max(left, 0):left + rng.integers(3, 30)] = True
            masks.append(mask)
        gt, pred, void = masks
        void = void if trial % 2 else np.zeros(shape, dtype=bool)
        assert boundary_f(gt, pred, void) == pytest.approx(_brute_f(gt, pred, void, radius), abs=1e-12)


def test_statistics_of_a_known_series():
    values = np.array([1, 1, 0, 0.5, 0.5, 0.2, 0.2])
    mean, recall, dec = statistics(values)
    assert mean == pytest.approx(3.4 / 7)
    assert recall == pytest.approx(2 / 7)              # 0.5 is not above 0.5
    # Bin edges round([1, 2.5, 4, 5.5, 7]) - 1 with halves up = [0, 2, 3, 5, 6]:
    # first bin frames 0..2, last bin frames 5..6.
    assert dec == pytest.approx(2 / 3 - 0.2)


def test_statistics_skip_nan_frames():
    mean, recall, dec = statistics([1.0, np.nan, 0.2, 0.8])
    assert mean == pytest.approx(2 / 3)
    assert recall == pytest.approx(0.5)                # a nan frame counts as a miss
    assert dec == pytest.approx(1.0 - 0.5)             # edges [0, 1, 2, 2, 3]: [1, nan] and [0.2, 0.8]
    assert statistics([0.7]) == (0.7, 1.0, 0.0)
    assert all(np.isnan(statistics([])))


def test_decay_beyond_256_frames():
    values = np.r_[np.ones(150), np.zeros(150)]
    # Edges [0, 75, 150, 224, 299]: frames 0..75 (all 1) and 224..299 (all 0).
    assert decay(values) == 1.0


def _scene(ids_of_boxes, shape=(20, 20)):
    frame = np.zeros(shape, dtype=np.uint8)
    for object_id, (top, left) in ids_of_boxes.items():
        frame[top:top + 4, left:left + 4] = object_id
    return frame


OBJECTS = {1: (1, 1), 2: (10, 10), 3: (15, 1)}


def _three_object_sequence():
    """6 frames; object 3 leaves the ground truth in frame 4, and void covers a stray blob in frame 2."""
    gt = np.stack([_scene(OBJECTS) for _ in range(6)])
    gt[3][6:9, 14:17] = 4                             # an id absent from the first frame: not scored
    gt[4][gt[4] == 3] = 0
    gt[2][6:10, 6:10] = 255
    pred = np.stack([_scene({1: (1, 1), 2: (10, 11)}) for _ in range(6)])   # object 2 one column right
    pred[2][7:9, 7:9] = 1                             # a stray blob of object 1 inside the void
    pred[0][:] = 9                                    # frames 0 and T-1 are not scored nor checked
    pred[5][:] = 7
    return gt, pred


def test_sequence_scores_by_hand():
    gt, pred = _three_object_sequence()
    j, f = sequence_scores('three', gt, pred)
    assert j.shape == f.shape == (3, 4)               # objects 1..3, frames 1..4
    np.testing.assert_allclose(j, [[1, 0.8, 1, 1], [0.6] * 4, [0, 0, 0, 1]])
    np.testing.assert_allclose(f, [[1, 0.8, 1, 1], [1] * 4, [0, 0, 0, 1]])
    j, f = sequence_scores('three', gt, pred, exclude_void=True)
    np.testing.assert_allclose(j[0], [1, 1, 1, 1])
    np.testing.assert_allclose(f[0], [1, 1, 1, 1])


def test_sequence_scores_reject_extra_ids():
    gt, pred = _three_object_sequence()
    pred[3][0, 0] = 4
    with pytest.raises(DataError, match=r'three: frame 3 .* object id 4.* 3 object'):
        sequence_scores('three', gt, pred)
    with pytest.raises(DataError, match='three'):
        sequence_scores('three', gt, pred[:, :10])


def test_sequence_scores_binary():
    gt = np.stack([_scene({1: (1, 1), 2: (10, 10)}) for _ in range(4)])
    pred = np.stack([_scene({2: (1, 1), 1: (10, 10)}) for _ in range(4)])
    j, f = sequence_scores('pair', gt, pred, binary=True)
    np.testing.assert_array_equal(j, np.ones((1, 2)))
    np.testing.assert_array_equal(f, np.ones((1, 2)))
    davis2016 = np.where(gt > 0, 255, 0).astype(np.uint8)      # DAVIS 2016 marks the object 255
    j, _ = sequence_scores('pair', davis2016, pred, binary=True)
    np.testing.assert_array_equal(j, np.ones((1, 2)))


def test_short_and_empty_sequences():
    gt = np.stack([_scene({1: (1, 1)})] * 2)
    j, f = sequence_scores('two', gt, gt)
    assert j.shape == (1, 0) and all(np.isnan(statistics(j[0])))
    assert object_count(np.full((3, 3), 255, dtype=np.uint8)) == 0
    j, _ = sequence_scores('none', np.zeros((4, 5, 5), np.uint8), np.zeros((4, 5, 5), np.uint8))
    assert j.shape == (0, 2)


def test_quick_video_metrics_by_hand():
    gt = np.stack([_scene({1: (2, 2)}), _scene({1: (2, 2)}), _scene({1: (2, 2), 2: (12, 12)})])
    pred = np.stack([_scene({}), _scene({1: (2, 3)}), _scene({1: (2, 5)})])
    # Frames 1 and 2, objects 1..2 (object 2 first appears in frame 2 and is never predicted):
    # J = [0.6, 1 (both empty), 1/7, 0], F = [1, 1, 9/16, 0].
    result = quick_video_metrics(gt, pred)
    assert result['J-Mean'] == pytest.approx((0.6 + 1 + 1 / 7 + 0) / 4)
    assert result['F-Mean'] == pytest.approx((1 + 1 + 9 / 16 + 0) / 4)
    assert result['JF-Mean'] == pytest.approx((result['J-Mean'] + result['F-Mean']) / 2)
