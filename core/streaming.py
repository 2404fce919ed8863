"""Pieces shared by the test and inference jobs: output folders, the segmenter, frames paired with masks."""
import collections
import datetime
import logging
import os
import tempfile
from typing import Iterable, Iterator, Optional, Tuple

import numpy as np

from core.segmenter import VideoSegmenter
from models.object_manager import ObjectManager
from utils.io import DataError
from utils.output_safety import remove_stale_temporaries

logger = logging.getLogger(__name__)


def timestamp() -> str:
    """The default experiment name: the current local time."""
    return datetime.datetime.now().strftime('%Y-%m-%d_%H-%M-%S')


def experiment_dir(cfg) -> str:
    """cfg.DIR.OUT_PATH/<cfg.CONST.EXP_NAME>, or a timestamp when no experiment name is set."""
    return os.path.join(cfg.DIR.OUT_PATH, cfg.CONST.EXP_NAME or timestamp())


def prepare_output_dir(path: str) -> str:
    """Create `path` and check that files can be written into it, before any work starts;
    remove the temporary files an interrupted run left there."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise DataError(f'{path}: output folder cannot be written ({e.strerror or e})') from e
    remove_stale_temporaries(path)
    return path


def new_segmenter(weights: Optional[str], cfg, short_side: Optional[int] = None) -> VideoSegmenter:
    """A VideoSegmenter on the default device for every video of a job; short_side resizes
    frames for the network."""
    return VideoSegmenter(weights, None, cfg, short_side=short_side)


def segment_stream(segmenter: VideoSegmenter, frames: Iterable[np.ndarray],
                   objects: ObjectManager) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yield (frame, ids) for every frame: each frame the segmenter consumed with its mask."""
    consumed: 'collections.deque[np.ndarray]' = collections.deque()

    def remember() -> Iterator[np.ndarray]:
        for frame in frames:
            consumed.append(frame)
            yield frame

    for ids in segmenter.segment(remember(), objects):
        yield consumed.popleft(), ids
