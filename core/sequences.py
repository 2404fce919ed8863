"""Benchmark videos (DAVIS, YouTube-VOS) streamed from disk through a segmenter."""
import concurrent.futures
import logging
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

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


OpenedVideo = Tuple[ObjectManager, PrefetchReader]


def first_video_objects(videos: Sequence[Video], cfg) -> Optional[ObjectManager]:
    """The objects of the first video, read before the segmenter starts (with its shapes,
    `layout`); None when there is none or its masks cannot be read (the error comes at its turn)."""
    if not videos:
        return None
    try:
        return video_objects(videos[0], cfg)
    except (DataError, SegmentationError):
        return None


def layout(objects: Optional[ObjectManager]) -> Optional[Tuple[int, Tuple[int, int]]]:
    """(object count, frame size) of a video's objects: what VideoSegmenter(first_video=) takes."""
    return None if objects is None else (len(objects), objects.first_mask.shape)


def open_video(segmenter: VideoSegmenter, video: Video, warm_up: bool = False,
               objects: Optional[ObjectManager] = None) -> OpenedVideo:
    """A video's objects (read unless given) and its frames, read ahead in a thread; with
    `warm_up`, the segmenter also prepares for its object count and size in the background."""
    objects = video_objects(video, segmenter.cfg) if objects is None else objects
    if warm_up:
        segmenter.warm_up(len(objects), objects.first_mask.shape)
    return objects, PrefetchReader(FrameFiles(video.frame_paths))


def stream_video(segmenter: VideoSegmenter, video: Video,
                 opened: Optional['concurrent.futures.Future[OpenedVideo]'] = None,
                 on_first: Optional[Callable[[], None]] = None) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yield (frame, ids) for every frame of a benchmark video, frames read ahead in a thread.
    opened: the video opened ahead (open_video), whose errors are raised here; on_first: called
    once the first mask is there (the video's first step has run). A mask that cannot be
    segmented is reported with the video's name and its mask files."""
    try:
        objects, frames = open_video(segmenter, video) if opened is None else opened.result()
        with frames:
            for t, item in enumerate(segment_stream(segmenter, frames, objects)):
                if t == 0 and on_first is not None:
                    on_first()
                yield item
    except SegmentationError as e:
        masks = ', '.join(video.given_masks[index] for index in sorted(video.given_masks))
        raise SegmentationError(f'{video.name}: {e} (mask files: {masks})') from e


class SplitStreams:
    """The (video, stream) pairs of a split, in order. With `read_ahead`, once a video's first
    mask is there the next video is opened in a thread: its masks are read, its first frames
    prefetched and the segmenter warmed up for its objects and size (VideoSegmenter.warm_up),
    while this video runs. An error of the next video is raised when its turn comes, after
    this one's masks were all given. first_objects: the first video's objects, when they were
    read already (first_video_objects). One video at a time: asking for the next pair closes
    the frames of the one before. Use as a context manager: leaving it closes what was opened."""

    def __init__(self, segmenter: VideoSegmenter, videos: Sequence[Video], read_ahead: bool = True,
                 first_objects: Optional[ObjectManager] = None):
        self.segmenter = segmenter
        self.videos = list(videos)
        self.read_ahead = read_ahead
        self.opened: Dict[int, 'concurrent.futures.Future[OpenedVideo]'] = {}
        self.opener = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='video-open')
        if first_objects is not None and self.videos:
            self.opened[0] = self.opener.submit(open_video, segmenter, self.videos[0], False, first_objects)

    def __iter__(self) -> Iterator[Tuple[Video, Iterator[Tuple[np.ndarray, np.ndarray]]]]:
        for i, video in enumerate(self.videos):
            opened = self.opened.get(i)
            yield video, stream_video(self.segmenter, video, opened, on_first=lambda i=i: self._open(i + 1))
            self._close(i)                  # a stream never started (a skipped video) has its frames open

    def _open(self, i: int) -> None:
        if self.read_ahead and i < len(self.videos) and i not in self.opened:
            self.opened[i] = self.opener.submit(open_video, self.segmenter, self.videos[i], True)

    def _close(self, i: int) -> None:
        future = self.opened.pop(i, None)
        if future is not None and future.exception() is None:
            future.result()[1].close()

    def __enter__(self) -> 'SplitStreams':
        return self

    def __exit__(self, *exc_info) -> None:
        for i in list(self.opened):
            self._close(i)
        self.opener.shutdown(wait=True)


def output_frames(video: Video) -> List[int]:
    """Frame indexes whose masks are written: those the video lists, or every frame."""
    return list(range(len(video))) if video.output_frames is None else sorted(video.output_frames)
