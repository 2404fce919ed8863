"""DAVIS measures with the semantics of the official semi-supervised evaluation (davis2017-evaluation).

Masks are boolean numpy arrays. J is the region similarity (IoU), F the boundary F-measure; each
object's per-frame values are summarised by Mean, Recall and Decay.
"""
import warnings
from typing import Dict, NamedTuple, Optional, Tuple, Union

import cv2
import numpy as np

from utils.io import DataError

VOID_ID = 255
BOUNDARY_TOLERANCE = 0.008   # match distance for boundary pixels, as a fraction of the image diagonal
RECALL_THRESHOLD = 0.5
DECAY_BINS = 4


class Statistics(NamedTuple):
    """Mean, Recall (fraction of frames above 0.5) and Decay of one object's per-frame values."""
    mean: float
    recall: float
    decay: float


def _check_shapes(*arrays: Optional[np.ndarray]) -> None:
    shapes = {a.shape for a in arrays if a is not None}
    if len(shapes) > 1:
        raise ValueError(f'masks of different shapes: {sorted(shapes)}')


def region_similarity(gt: np.ndarray, pred: np.ndarray,
                      void: Optional[np.ndarray] = None) -> Union[float, np.ndarray]:
    """IoU of (..., H, W) boolean masks over the non-void pixels; 1 where both masks are empty."""
    gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    _check_shapes(gt, pred, void)
    both, either = gt & pred, gt | pred
    if void is not None:
        keep = ~np.asarray(void, dtype=bool)
        both, either = both & keep, either & keep
    inter = np.count_nonzero(both, axis=(-2, -1))
    union = np.count_nonzero(either, axis=(-2, -1))
    j = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    return float(j) if j.ndim == 0 else j


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundaries of (..., H, W) boolean masks (DAVIS seg2bmap).

    A pixel is on the boundary when it differs from its east, south or south-east neighbour; on
    the last row only the east neighbour counts, on the last column only the south one, and the
    bottom-right pixel never is.
    """
    seg = np.asarray(mask, dtype=bool)
    east = seg[..., :, :-1] != seg[..., :, 1:]
    south = seg[..., :-1, :] != seg[..., 1:, :]
    south_east = seg[..., :-1, :-1] != seg[..., 1:, 1:]
    bmap = np.zeros_like(seg)
    bmap[..., :-1, :-1] = east[..., :-1, :] | south[..., :, :-1] | south_east
    bmap[..., -1, :-1] = east[..., -1, :]
    bmap[..., :-1, -1] = south[..., :, -1]
    return bmap


def disk(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) uint8 structuring element: offsets (dy, dx) with dy^2 + dx^2 <= r^2."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2).astype(np.uint8)


def boundary_radius(shape: Tuple[int, int]) -> int:
    """Boundary match tolerance in pixels: ceil(0.008 x image diagonal)."""
    return int(np.ceil(BOUNDARY_TOLERANCE * np.linalg.norm(shape)))


def _window(mask: np.ndarray) -> Optional[Tuple[slice, slice]]:
    """Rows and columns that hold every boundary pixel of `mask` (its box plus one pixel)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return (slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(cols[0] - 1, 0), cols[-1] + 2))


def _precision_recall_f(n_pred: int, n_gt: int, pred_matched: int, gt_matched: int) -> float:
    """F-measure of boundary matches with the DAVIS conventions for empty boundaries."""
    if n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    elif n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        precision, recall = pred_matched / float(n_pred), gt_matched / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def boundary_f(gt: np.ndarray, pred: np.ndarray, void: Optional[np.ndarray] = None) -> float:
    """Boundary F-measure of two (H, W) boolean masks (DAVIS f_measure).

    Void pixels are removed from both masks before their boundaries are taken. A boundary pixel
    is matched when the other mask's boundary lies within a disk of boundary_radius pixels.
    """
    gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    _check_shapes(gt, pred, void)
    if gt.ndim != 2:
        raise ValueError(f'boundary_f takes (H, W) masks, got shape {gt.shape}')
    if void is not None:
        keep = ~np.asarray(void, dtype=bool)
        gt, pred = gt & keep, pred & keep
    window = _window(gt | pred)
    if window is None:
        return 1.0
    # Every boundary pixel lies in the window, so dilating inside it gives the full-image matches.
    gt_boundary, pred_boundary = boundary_map(gt[window]), boundary_map(pred[window])
    footprint = disk(boundary_radius(gt.shape))
    gt_dilated = cv2.dilate(gt_boundary.view(np.uint8), footprint).view(bool)
    pred_dilated = cv2.dilate(pred_boundary.view(np.uint8), footprint).view(bool)
    return _precision_recall_f(int(np.count_nonzero(pred_boundary)), int(np.count_nonzero(gt_boundary)),
                               int(np.count_nonzero(pred_boundary & gt_dilated)),
                               int(np.count_nonzero(gt_boundary & pred_dilated)))


def decay(values: np.ndarray) -> float:
    """Mean of the first quarter of the frames minus that of the last quarter (nan-aware).

    The quarters are the toolkit's: bin edges round(linspace(1, n, 5) + 1e-10) - 1 (halves round
    up), the first bin from edge 0 to edge 1 and the last from edge 3 to edge 4, both inclusive.
    """
    values = np.asarray(values, dtype=np.float64)
    edges = (np.round(np.linspace(1, len(values), DECAY_BINS + 1) + 1e-10) - 1).astype(np.int64)
    first, last = values[edges[0]:edges[1] + 1], values[edges[-2]:edges[-1] + 1]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', category=RuntimeWarning)
        return float(np.nanmean(first) - np.nanmean(last))


def statistics(values: np.ndarray) -> Statistics:
    """Mean (nan frames skipped), Recall (nan frames count as misses) and Decay of per-frame values."""
    values = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', category=RuntimeWarning)
        mean = np.nanmean(values)
        recall = np.nanmean(values > RECALL_THRESHOLD)
    return Statistics(float(mean), float(recall), decay(values))


def object_count(first_gt: np.ndarray) -> int:
    """Objects of a sequence: 1 .. the largest non-void id of its first annotation."""
    ids = first_gt[first_gt != VOID_ID]
    return int(ids.max()) if ids.size else 0


def _check_prediction_ids(name: str, pred: np.ndarray, n_objects: int, first_frame: int) -> None:
    """Raise when a scored frame holds an id above the number of objects (pred: the frames from
    `first_frame` on)."""
    top = pred.reshape(len(pred), -1).max(axis=1) if len(pred) else np.zeros(0)
    bad = np.flatnonzero(top > n_objects)
    if bad.size:
        raise DataError(f'{name}: frame {first_frame + int(bad[0])} of the prediction holds object id '
                        f'{int(top[bad[0]])}, but the ground truth has {n_objects} object(s)')


def sequence_scores(name: str, gt_ids: np.ndarray, pred_ids: np.ndarray, binary: bool = False,
                    exclude_void: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Per-object, per-frame J and F of one sequence, each (n_objects, T - 2), over frames 1 .. T-2.

    gt_ids, pred_ids: (T, H, W) label ids. Objects are 1 .. the largest id of the first ground
    truth frame; an object missing from the prediction scores as an empty mask, a predicted id
    above the object count raises DataError. Void (255) ground-truth pixels count as background,
    as in the official evaluation (its loader clears them before the void mask is taken);
    exclude_void=True leaves them out of J and F instead. binary=True scores DAVIS 2016: every
    non-zero label of either array is the one object (DAVIS 2016 marks it 255).
    """
    gt_ids, pred_ids = np.asarray(gt_ids), np.asarray(pred_ids)
    if gt_ids.ndim != 3 or gt_ids.shape != pred_ids.shape:
        raise DataError(f'{name}: ground truth {gt_ids.shape} and prediction {pred_ids.shape} '
                        f'must be (T, H, W) arrays of one shape')
    scored = slice(1, max(len(gt_ids) - 1, 1))
    return frame_scores(name, gt_ids[0], gt_ids[scored], pred_ids[scored], 1, binary, exclude_void)


def frame_scores(name: str, first_gt: np.ndarray, gt_ids: np.ndarray, pred_ids: np.ndarray, first_frame: int,
                 binary: bool = False, exclude_void: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Per-object J and F, each (n_objects, F), of F consecutive frames of a sequence from frame
    `first_frame` on: gt_ids, pred_ids (F, H, W); the objects are those of the sequence's first
    annotation first_gt (H, W). sequence_scores is this over frames 1 .. T-2 (same rules); a
    sequence scored in parts gives the same values."""
    void = None
    if binary:
        gt_ids, pred_ids, n_objects = gt_ids != 0, pred_ids != 0, 1
    else:
        if exclude_void:
            void = gt_ids == VOID_ID
        gt_ids = np.where(gt_ids == VOID_ID, 0, gt_ids)
        n_objects = object_count(first_gt)
    _check_prediction_ids(name, pred_ids, n_objects, first_frame)
    j, f = np.zeros((n_objects, len(gt_ids))), np.zeros((n_objects, len(gt_ids)))
    for t, (gt, pred) in enumerate(zip(gt_ids, pred_ids)):
        frame_void = None if void is None else void[t]
        for k in range(n_objects):
            gt_mask, pred_mask = gt == k + 1, pred == k + 1
            j[k, t] = region_similarity(gt_mask, pred_mask, frame_void)
            f[k, t] = boundary_f(gt_mask, pred_mask, frame_void)
    return j, f


def quick_video_metrics(gt_ids: np.ndarray, pred_ids: np.ndarray) -> Dict[str, float]:
    """The published RMNet training-time signal for one video: J and F averaged over frames
    1 .. T-1 and objects 1 .. the largest ground-truth id of the video (no void handling).
    Keys 'J-Mean', 'F-Mean' and 'JF-Mean'. Not the official protocol: see sequence_scores."""
    gt_ids, pred_ids = np.asarray(gt_ids), np.asarray(pred_ids)
    _check_shapes(gt_ids, pred_ids)
    n_objects = object_count(gt_ids)
    j, f = [], []
    for gt, pred in zip(gt_ids[1:], pred_ids[1:]):
        for k in range(1, n_objects + 1):
            j.append(region_similarity(gt == k, pred == k))
            f.append(boundary_f(gt == k, pred == k))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', category=RuntimeWarning)
        j_mean, f_mean = float(np.nanmean(j)), float(np.nanmean(f))
    return {'J-Mean': j_mean, 'F-Mean': f_mean, 'JF-Mean': (j_mean + f_mean) / 2}
