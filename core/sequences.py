"""Benchmark videos (DAVIS, YouTube-VOS) streamed from disk through a segmenter."""
import logging
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from core.segmenter import SegmentationError
from core.streaming import SegmenterSource, register_later_objects, segment_stream
from datasets.registry import SPLITS, list_videos
from datasets.video import Video
from utils.configuration import ConfigError
from utils.io import DataError, read_frame, read_mask
from utils.video_io import PrefetchReader

logger = logging.getLogger(__name__)


def resolve_split(cfg, dataset: Optional[str], split: Optional[str]) -> Tuple[str, str]:
    """The dataset (default cfg.DATASET.TEST_DATASET) and split (default its TEST_SPLIT), checked."""
    dataset = dataset or cfg.DATASET.TEST_DATASET
    if dataset not in SPLITS:
        raise ConfigError(f'unknown dataset {dataset!r}; known: {", ".join(SPLITS)}')
    split = split or cfg.DATASETS[dataset].TEST_SPLIT
    if split not in SPLITS[dataset]:
        raise ConfigError(f'{dataset} has no split {split!r}; splits: {", ".join(SPLITS[dataset])}')
    return dataset, split


def benchmark_videos(cfg, dataset: str, split: str) -> List[Video]:
    """The videos of a split, refusing an empty one."""
    videos = list_videos(cfg, dataset, split)
    if not videos:
        raise DataError(f'{dataset} {split}: the split lists no video')
    return videos


class FrameFiles:
    """Frame files read one at a time, in order (host memory does not grow with the video)."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[np.ndarray]:
        for path in self.paths:
            yield read_frame(path)


def input_masks(video: Video, void_id: int = 255) -> Tuple[np.ndarray, Dict[int, np.ndarray]]:
    """The first-frame mask (ids as in the file) and, per later frame, the masks of the objects
    that first appear there. Binary videos (DAVIS 2016) have one object: every non-zero label."""
    if 0 not in video.given_masks:
        raise DataError(f'{video.name}: no annotation is given for the first frame '
                        f'({video.frame_paths[0]})')
    seen = set()
    masks: Dict[int, np.ndarray] = {}
    for index in sorted(video.given_masks):
        mask = read_mask(video.given_masks[index])
        if video.binary:
            mask = (mask != 0).astype(np.uint8)
        new = sorted(set(np.unique(mask).tolist()) - {0, void_id} - seen)
        if index > 0:
            if not new:
                logger.warning('%s: %s holds no new object, ignored', video.name, video.given_masks[index])
                continue
            mask = np.where(np.isin(mask, new), mask, 0).astype(np.uint8)
        seen.update(new)
        masks[index] = mask
    return masks.pop(0), masks


def stream_video(segmenters: SegmenterSource, video: Video) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yield (frame, ids) for every frame of a benchmark video, frames read ahead in a thread.
    A mask that cannot be segmented is reported with the video's name and its mask files."""
    first_mask, later = input_masks(video, int(segmenters.cfg.CONST.IGNORE_IDX))
    segmenter = segmenters.new()
    try:
        register_later_objects(segmenter, later)
        with PrefetchReader(FrameFiles(video.frame_paths)) as frames:
            yield from segment_stream(segmenter, frames, first_mask)
    except SegmentationError as e:
        masks = ', '.join(video.given_masks[index] for index in sorted(video.given_masks))
        raise SegmentationError(f'{video.name}: {e} (mask files: {masks})') from e


def output_frames(video: Video) -> List[int]:
    """Frame indexes whose masks are written: those the video lists, or every frame."""
    return list(range(len(video))) if video.output_frames is None else sorted(video.output_frames)
