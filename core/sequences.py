"""Benchmark videos (DAVIS, YouTube-VOS) streamed from disk through a segmenter."""
import logging
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from core.segmenter import VideoSegmenter
from core.streaming import segment_stream
from datasets.registry import SPLITS, list_videos
from datasets.video import Video
from models.object_manager import NoNewObject, ObjectManager, SegmentationError
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


def video_objects(video: Video, cfg) -> ObjectManager:
    """The objects of a benchmark video: those of its first annotation and, per later
    annotation, the objects first given there. Binary videos (DAVIS 2016) have one object:
    every non-zero label."""
    if 0 not in video.given_masks:
        raise DataError(f'{video.name}: no annotation is given for the first frame '
                        f'({video.frame_paths[0]})')
    objects = None
    for index in sorted(video.given_masks):
        path = video.given_masks[index]
        mask = read_mask(path)
        if video.binary:
            mask = (mask != 0).astype(np.uint8)
        try:
            if objects is None:
                objects = ObjectManager.from_cfg(mask, cfg)
            else:
                objects.add(index, mask)
        except NoNewObject as e:
            logger.warning('%s: %s; ignored', path, e)
        except SegmentationError as e:
            raise DataError(f'{video.name}: {path}: {e}') from e
    return objects


def stream_video(segmenter: VideoSegmenter, video: Video) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yield (frame, ids) for every frame of a benchmark video, frames read ahead in a thread.
    A mask that cannot be segmented is reported with the video's name and its mask files."""
    try:
        objects = video_objects(video, segmenter.cfg)
        with PrefetchReader(FrameFiles(video.frame_paths)) as frames:
            yield from segment_stream(segmenter, frames, objects)
    except SegmentationError as e:
        masks = ', '.join(video.given_masks[index] for index in sorted(video.given_masks))
        raise SegmentationError(f'{video.name}: {e} (mask files: {masks})') from e


def output_frames(video: Video) -> List[int]:
    """Frame indexes whose masks are written: those the video lists, or every frame."""
    return list(range(len(video))) if video.output_frames is None else sorted(video.output_frames)
