"""Scoring a video's written masks against its ground truth (a job for utils.scoring_pool).

This module imports no torch, so spawned workers start quickly.
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from utils.evaluate import ObjectRecord
from utils.io import DataError, read_mask
from utils.metrics import frame_scores


class ScoreJob(NamedTuple):
    """One video to score, or a part of it: ground-truth and predicted mask files of the same
    frames, in order, and the positions [first, stop) among them to score (None: 1 .. T-2, the
    official protocol's frames). The first ground truth names the objects."""
    name: str
    gt_paths: Sequence[str]
    pred_paths: Sequence[str]
    binary: bool
    exclude_void: bool
    frames: Optional[Tuple[int, int]] = None


def scored_span(job: ScoreJob) -> Tuple[int, int]:
    """The positions [first, stop) of the frames the job scores."""
    return job.frames or (1, max(len(job.gt_paths) - 1, 1))


def video_parts(job: ScoreJob, parts: int) -> List[ScoreJob]:
    """The job cut into up to `parts` jobs of consecutive scored frames (at least one frame each),
    so that several workers score one video: the last video of a split is then scored about
    `parts` times sooner. merge_parts joins their results into those of the whole job."""
    first, stop = scored_span(job)
    count = max(1, min(parts, stop - first))
    bounds = [first + (stop - first) * i // count for i in range(count + 1)]
    return [job._replace(frames=(a, b)) for a, b in zip(bounds, bounds[1:])]


def merge_parts(parts: Sequence[List[ObjectRecord]]) -> List[ObjectRecord]:
    """The records of a video from those of its parts, in frame order."""
    return [ObjectRecord(records[0].sequence, records[0].object_id,
                         np.concatenate([r.j_frames for r in records]), np.concatenate([r.f_frames for r in records]))
            for records in zip(*parts)]


def _read_all(paths: Sequence[str], shape: Tuple[int, int], what: str) -> np.ndarray:
    """The masks of `paths`, each of `shape`, as (len(paths), H, W)."""
    masks = []
    for path in paths:
        mask = read_mask(path)
        if mask.shape != shape:
            raise DataError(f'{path}: {what} is {mask.shape[1]}x{mask.shape[0]}, expected '
                            f'{shape[1]}x{shape[0]}')
        masks.append(mask)
    return np.stack(masks) if masks else np.zeros((0,) + tuple(shape), np.uint8)


def read_span(job: ScoreJob) -> Tuple[int, int]:
    """The positions [low, high) of the files `score_files(job)` reads: its scored frames, plus
    frame 0 for the first part and the last frame for the last one."""
    n_frames = len(job.gt_paths)
    first, stop = scored_span(job)
    return (0 if first == 1 else first), (n_frames if stop == n_frames - 1 else stop)


def score_files(job: ScoreJob) -> List[ObjectRecord]:
    """Read a video's masks (or those of its part) and score every object (official DAVIS
    protocol). Every file of the video is read by one of its parts: the first part also reads
    frame 0, the last one the last frame, which are not scored but must be masks of the size."""
    first, stop = scored_span(job)
    low, high = read_span(job)
    first_gt = read_mask(job.gt_paths[0])
    later_gt = _read_all(job.gt_paths[max(low, 1):high], first_gt.shape, 'ground-truth mask')
    gt = np.concatenate([first_gt[None], later_gt]) if low == 0 else later_gt
    pred = _read_all(job.pred_paths[low:high], first_gt.shape, 'predicted mask')
    scored = slice(first - low, stop - low)
    j, f = frame_scores(job.name, first_gt, gt[scored], pred[scored], first, binary=job.binary,
                        exclude_void=job.exclude_void)
    return [ObjectRecord(job.name, k + 1, j[k], f[k]) for k in range(len(j))]
