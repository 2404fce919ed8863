"""Pieces shared by the test and inference jobs: output folders, segmenters, frames paired with masks."""
import collections
import datetime
import logging
import os
import tempfile
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple

import numpy as np

from core.segmenter import VideoSegmenter
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


def new_segmenter(weights: Optional[str], cfg, short_side: Optional[int] = None,
                  **networks: Any) -> VideoSegmenter:
    """A VideoSegmenter on the default device; short_side resizes frames for the network."""
    options = dict(networks)
    if short_side is not None:
        options['short_side'] = short_side
    return VideoSegmenter(weights, None, cfg, **options)


class SegmenterSource:
    """Fresh segmenters (one per video) that share one loaded copy of the networks."""

    def __init__(self, weights: str, cfg, short_side: Optional[int] = None) -> None:
        self.weights, self.cfg, self.short_side = weights, cfg, short_side
        self._loaded: Optional[VideoSegmenter] = None

    def new(self) -> VideoSegmenter:
        if self._loaded is None:
            self._loaded = new_segmenter(self.weights, self.cfg, self.short_side)
            return self._loaded
        return new_segmenter(None, self.cfg, self.short_side,
                             tflownet=self._loaded.tflownet, rmnet=self._loaded.rmnet)


def segment_stream(segmenter: VideoSegmenter, frames: Iterable[np.ndarray],
                   first_mask: np.ndarray) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yield (frame, ids) for every frame: each frame the segmenter consumed with its mask."""
    consumed: 'collections.deque[np.ndarray]' = collections.deque()

    def remember() -> Iterator[np.ndarray]:
        for frame in frames:
            consumed.append(frame)
            yield frame

    for ids in segmenter.segment(remember(), first_mask):
        yield consumed.popleft(), ids


def register_later_objects(segmenter: VideoSegmenter, masks: Dict[int, np.ndarray]) -> None:
    """Hand the masks of objects that appear after frame 0 to the segmenter, before it starts."""
    for frame_index in sorted(masks):
        if frame_index > 0:
            segmenter.add_object(frame_index, masks[frame_index])
