"""Scoring a video's written masks against its ground truth (a job for utils.scoring_pool).

This module imports no torch, so spawned workers start quickly.
"""
from typing import List, NamedTuple, Optional, Sequence

import numpy as np

from utils.evaluate import ObjectRecord, evaluate_sequence
from utils.io import DataError, read_mask


class ScoreJob(NamedTuple):
    """One video to score: ground-truth and predicted mask files of the same frames, in order."""
    name: str
    gt_paths: Sequence[str]
    pred_paths: Sequence[str]
    binary: bool
    exclude_void: bool


def _read_all(paths: Sequence[str], shape: Optional[tuple], what: str) -> np.ndarray:
    masks = []
    for path in paths:
        mask = read_mask(path)
        shape = shape or mask.shape
        if mask.shape != shape:
            raise DataError(f'{path}: {what} is {mask.shape[1]}x{mask.shape[0]}, expected '
                            f'{shape[1]}x{shape[0]}')
        masks.append(mask)
    return np.stack(masks)


def score_files(job: ScoreJob) -> List[ObjectRecord]:
    """Read a video's masks and score every object (official DAVIS protocol)."""
    gt = _read_all(job.gt_paths, None, 'ground-truth mask')
    pred = _read_all(job.pred_paths, gt.shape[1:], 'predicted mask')
    return evaluate_sequence(job.name, gt, pred, binary=job.binary, exclude_void=job.exclude_void)
