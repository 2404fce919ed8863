"""Scoring written masks against ground truth, in worker processes while the next video runs.

This module imports no torch, so spawned workers start quickly.
"""
import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, List, NamedTuple, Optional, Sequence, Union

import numpy as np

from utils.cli import ignore_interrupts
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


class Scorer:
    """Scores jobs inline (workers <= 1) or in spawned processes; records() keeps submission order."""

    def __init__(self, workers: int) -> None:
        self._pool = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('spawn'),
                                          initializer=ignore_interrupts) if workers > 1 else None)
        self._results: List[Union[Future, List[ObjectRecord]]] = []

    def submit(self, job: ScoreJob) -> None:
        self._results.append(self._pool.submit(score_files, job) if self._pool else score_files(job))

    def records(self) -> List[ObjectRecord]:
        """Every object record, waiting for the workers (their errors are raised here)."""
        return [record for result in self._results
                for record in (result.result() if isinstance(result, Future) else result)]

    def __enter__(self) -> 'Scorer':
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=exc_type is None, cancel_futures=exc_type is not None)
