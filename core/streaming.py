"""Pieces shared by the test and inference jobs: output folders, the segmenter, frames paired with masks."""
import collections
import logging
import os
import tempfile
import time
from typing import Iterable, Iterator, List, Optional, Tuple

import numpy as np

from core.segmenter import VideoSegmenter
from models.object_manager import ObjectManager
from utils.io import DataError
from utils.output_safety import check_output_folder, claim_new_folder, remove_stale_temporaries, timestamp

logger = logging.getLogger(__name__)


def experiment_dir(cfg) -> str:
    """cfg.DIR.OUT_PATH/<cfg.CONST.EXP_NAME>; without a name, a new folder named by the current
    time and created here (<time>-2, -3, ... when another run took that name), so that runs
    started in the same second never share one. Call it in one process of a multi-GPU job."""
    if cfg.CONST.EXP_NAME:
        return os.path.join(cfg.DIR.OUT_PATH, cfg.CONST.EXP_NAME)
    return claim_new_folder(check_output_folder(cfg, os.path.join(cfg.DIR.OUT_PATH, timestamp())))


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
                  first_video: Optional[Tuple[int, Tuple[int, int]]] = None) -> VideoSegmenter:
    """A VideoSegmenter on the default device for every video of a job; short_side resizes
    frames for the network; first_video: (objects, frame size) of the job's first video."""
    return VideoSegmenter(weights, None, cfg, short_side=short_side, first_video=first_video)


def segment_stream(segmenter: VideoSegmenter, frames: Iterable[np.ndarray],
                   objects: ObjectManager) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yield (frame, ids) for every frame: each frame the segmenter consumed with its mask."""
    consumed: 'collections.deque[np.ndarray]' = collections.deque()

    def remember() -> Iterator[np.ndarray]:
        for frame in frames:
            consumed.append(frame)
            yield frame

    stream = remember()
    if hasattr(frames, '__len__'):      # the length sizes the memory once, at the start
        stream = _Sized(stream, len(frames))
    for ids in segmenter.segment(stream, objects):
        yield consumed.popleft(), ids


class _Sized:
    """An iterator that knows how many items it will give."""

    def __init__(self, items: Iterator[np.ndarray], length: int) -> None:
        self.items, self.length = items, length

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.items

    def __len__(self) -> int:
        return self.length


class SplitSpeed:
    """Frames per second of a whole split: inside the videos (from each video's first mask to
    its last, so without the per-video setup) and over the split (from the first video's start
    to now, setup, reading and writing included; model loading excluded)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.frames = 0
        self.inside_frames = 0
        self.inside_seconds = 0.0
        self.first_video_seconds: Optional[float] = None   # its setup (compilation, capture) included
        self.videos_done_at: Optional[float] = None        # when the last video's stream ended
        self.start_seconds: List[float] = []               # per video: from its stream's start to its first mask

    def timed(self, stream: Iterable[Tuple[np.ndarray, np.ndarray]]) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Pass a video's (frame, ids) stream through, timing it."""
        begun, first, n_frames = time.perf_counter(), None, 0
        try:
            for item in stream:
                if first is None:
                    first = time.perf_counter()
                    self.start_seconds.append(first - begun)
                n_frames += 1
                yield item
        finally:
            self.videos_done_at = time.perf_counter()
            if self.first_video_seconds is None:
                self.first_video_seconds = self.videos_done_at - begun
        self.frames += n_frames
        if first is not None and n_frames > 1:
            self.inside_frames += n_frames - 1
            self.inside_seconds += self.videos_done_at - first

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def after_last_video(self) -> float:
        """Seconds since the last video's stream ended (scoring the last videos, the tables)."""
        return 0.0 if self.videos_done_at is None else time.perf_counter() - self.videos_done_at

    def summary(self) -> str:
        elapsed = max(self.elapsed(), 1e-9)
        inside = self.inside_frames / max(self.inside_seconds, 1e-9)
        first = '' if self.first_video_seconds is None else f'; the first video {self.first_video_seconds:.1f} s'
        return (f'{self.frames} frames: {inside:.1f} frames/s inside the videos, {self.frames / elapsed:.1f} '
                f'frames/s over the split ({elapsed:.1f} s, per-video setup included{first}; '
                f'{self.after_last_video():.1f} s after the last video)')
