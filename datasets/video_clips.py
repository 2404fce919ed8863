"""Training clips from videos, and the training set of cfg.DATASET.TRAIN_DATASET.

A clip is N_MAX_FRAMES annotated frames of one video taken `frame_step` apart (SPEC 5: the
training loop draws one step per epoch and calls set_frame_step). A video too short for a
distinct clip gives sorted frames drawn with repeats; one too short for the step gives sorted
distinct frames drawn at random (both as the published code, which left the repeats unsorted).

Flows: the flow of clip frame t is its video frame's teacher flow (to the previous video
frame), exact for consecutive frames and an approximation for larger steps (as published);
clip frame 0, and a frame repeating the one before it, get a zero flow.
"""
import bisect
import dataclasses
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch.utils.data

from datasets.registry import list_videos, parse_dataset_list
from datasets.static_images import is_static_dataset, static_image_dataset
from datasets.transforms import Clip, Transform, build_transforms, sample_rng
from datasets.video import Video
from utils.io import DataError, read_flo, read_frame, read_mask

logger = logging.getLogger(__name__)

SUBSET_STREAM = 1   # first seed word of the per-epoch subsets (clips use transforms.CLIP_STREAM)
FRAME_DRAWS = 5     # tries to find a clip whose first frame shows an object


def max_frame_step(cfg, epoch: int) -> int:
    """The largest frame step of an epoch (from 1): min(MAX_FRAME_STEPS, epoch // 5 + 2)."""
    return min(cfg.TRAIN.MAX_FRAME_STEPS, epoch // 5 + 2)


def sample_frame_indexes(n_available: int, n_frames: int, step: int,
                         rng: np.random.Generator) -> List[int]:
    """Positions (sorted) of a clip's frames among `n_available` frames."""
    if n_available < n_frames:
        return sorted(int(i) for i in rng.choice(n_available, n_frames, replace=True))
    span = (n_frames - 1) * step
    if span >= n_available:
        return sorted(int(i) for i in rng.choice(n_available, n_frames, replace=False))
    begin = int(rng.integers(0, n_available - span))
    return list(range(begin, begin + span + 1, step))


def _flow_path(video: Video, index: int) -> Optional[str]:
    return video.flow_paths[index] if video.flow_paths else None


def _check_flow_paths(name: str, videos: Sequence[Video]) -> None:
    """A DataError for a flow list of the wrong length; ONE warning for all missing flows."""
    needed, missing = 0, []
    for video in videos:
        if video.flow_paths is not None and len(video.flow_paths) != len(video.frame_paths):
            raise DataError(f'{name}/{video.name}: {len(video.flow_paths)} flow paths for '
                            f'{len(video.frame_paths)} frames')
        for index in sorted(video.ground_truth)[1:]:   # a clip never loads its first frame's flow
            needed += 1
            path = _flow_path(video, index)
            if path is None or not os.path.isfile(path):
                missing.append(path or f'{video.name} frame {index} (no flow path)')
    if missing:
        logger.warning('%s: %d of %d teacher flows are missing (first: %s); zero flows are used '
                       'for them', name, len(missing), needed, missing[0])


class VideoClipDataset(torch.utils.data.Dataset):
    """Training clips, one per video; item i of epoch e is a pure function of (seed, e, i) and
    the frame step: call set_epoch and set_frame_step before each epoch (the DataLoader copies
    the dataset into its workers when an epoch starts, unless persistent_workers is set)."""

    def __init__(self, name: str, videos: Sequence[Video], transform: Transform, n_frames: int,
                 seed: int, ignore_index: int):
        self.name = name
        self.videos = [video for video in videos if video.ground_truth]
        if len(self.videos) < len(videos):
            logger.warning('%s: %d of %d videos have no annotated frames and are skipped', name,
                           len(videos) - len(self.videos), len(videos))
        if not self.videos:
            raise DataError(f'{name}: no video with annotated frames')
        _check_flow_paths(name, self.videos)
        self.transform = transform
        self.n_frames = n_frames
        self.seed = seed
        self.ignore_index = ignore_index
        self.epoch = 0
        self.frame_step = 1

    def __len__(self) -> int:
        return len(self.videos)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_frame_step(self, step: int) -> None:
        if step < 1:
            raise ValueError(f'the frame step must be at least 1, got {step}')
        self.frame_step = step

    def frame_indexes(self, index: int, rng: np.random.Generator) -> List[int]:
        """Video frame indexes of a clip of video `index`."""
        annotated = sorted(self.videos[index].ground_truth)
        positions = sample_frame_indexes(len(annotated), self.n_frames, self.frame_step, rng)
        return [annotated[p] for p in positions]

    def sample(self, index: int, rng: np.random.Generator) -> Clip:
        """The transformed clip of video `index`, drawing from `rng`. Frames are drawn again (up
        to FRAME_DRAWS times) while the first one shows no object, e.g. before a YouTube-VOS
        object appears."""
        video = self.videos[index]
        for _ in range(FRAME_DRAWS):
            clip = load_clip(video, self.frame_indexes(index, rng))
            first = clip['masks'][0]
            if np.any((first != 0) & (first != self.ignore_index)):
                break
        clip = self.transform(clip, rng)
        clip['name'] = f'{self.name}/{video.name}'
        return clip

    def __getitem__(self, index: int) -> Clip:
        return self.sample(index, sample_rng(self.seed, self.epoch, index))


def load_clip(video: Video, indexes: Sequence[int]) -> Clip:
    """Frames, masks and backward flows of the video frames `indexes` (in clip order)."""
    frames: Dict[int, np.ndarray] = {i: read_frame(video.frame_paths[i]) for i in set(indexes)}
    masks = []
    for i in indexes:
        mask = read_mask(video.ground_truth[i])
        if mask.shape != frames[i].shape[:2]:
            raise DataError(f'{video.ground_truth[i]}: mask is {mask.shape[1]}x{mask.shape[0]} '
                            f'but frame {video.frame_paths[i]} is {frames[i].shape[1]}x'
                            f'{frames[i].shape[0]}')
        masks.append((mask != 0).astype(np.uint8) if video.binary else mask)
    flows = []
    for t, i in enumerate(indexes):
        moved = t > 0 and i != indexes[t - 1]
        flows.append(_load_flow(video, i, frames[i].shape[:2]) if moved
                     else np.zeros(frames[i].shape[:2] + (2,), dtype=np.float32))
    return {'frames': [frames[i] for i in indexes], 'masks': masks, 'flows': flows}


def _load_flow(video: Video, index: int, size: Tuple[int, int]) -> np.ndarray:
    """The teacher flow of frame `index`; zero when it is missing (reported once per dataset)."""
    path = _flow_path(video, index)
    if path is None or not os.path.isfile(path):
        return np.zeros(size + (2,), dtype=np.float32)
    flow = read_flo(path)
    if flow.shape[:2] != size:
        raise DataError(f'{path}: flow is {flow.shape[1]}x{flow.shape[0]} but frame '
                        f'{video.frame_paths[index]} is {size[1]}x{size[0]}')
    return flow


class ConcatWithRepeats(torch.utils.data.Dataset):
    """Datasets one after another, each repeated r times: the whole dataset floor(r) times, then
    int(len * (r - floor(r))) items drawn without replacement, a new draw each epoch (at least
    one item in all). Parts need __len__ and sample(index, rng); item i of epoch e is a pure
    function of (seed, e, i): call set_epoch (and set_frame_step) before each epoch."""

    def __init__(self, parts: Sequence[Tuple[torch.utils.data.Dataset, float]], seed: int = 0):
        if not parts:
            raise ValueError('no datasets to concatenate')
        for dataset, repeats in parts:
            if repeats <= 0 or len(dataset) == 0:
                raise ValueError(f'{getattr(dataset, "name", dataset)}: cannot use {len(dataset)} '
                                 f'items x{repeats}')
        self.parts = [(dataset, float(repeats)) for dataset, repeats in parts]
        self.sizes = [max(1, int(len(dataset) * repeats)) for dataset, repeats in self.parts]
        self.offsets = np.cumsum([0] + self.sizes).tolist()
        self.seed = seed
        self.epoch = 0
        self.frame_step = 1
        self._orders: Dict[int, np.ndarray] = {}   # this epoch's, by part

    def __len__(self) -> int:
        return self.offsets[-1]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._orders = {}

    def set_frame_step(self, step: int) -> None:
        """Set the frame step of every video part."""
        self.frame_step = step
        for dataset, _ in self.parts:
            if hasattr(dataset, 'set_frame_step'):
                dataset.set_frame_step(step)

    def _order(self, part: int) -> np.ndarray:
        """This epoch's random order of part `part`, for its fractional repeat."""
        if part not in self._orders:
            rng = np.random.default_rng([SUBSET_STREAM, self.seed, self.epoch, part])
            self._orders[part] = rng.permutation(len(self.parts[part][0]))
        return self._orders[part]

    def locate(self, index: int) -> Tuple[int, int]:
        """(part, item of that part) of item `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f'index {index} out of range for {len(self)} items')
        part = bisect.bisect_right(self.offsets, index) - 1
        position = index - self.offsets[part]
        dataset, repeats = self.parts[part]
        whole = len(dataset) * int(repeats)
        if position < whole:
            return part, position % len(dataset)
        return part, int(self._order(part)[position - whole])

    def __getitem__(self, index: int) -> Clip:
        part, item = self.locate(index)
        return self.parts[part][0].sample(item, sample_rng(self.seed, self.epoch, index))


def with_teacher_flows(videos: Sequence[Video], flow_root: Optional[str]) -> List[Video]:
    """Videos whose flow_paths, when not set, are flow_root/<video>/<frame name>.flo (the files
    utils.compute_flows writes); unchanged when flow_root is None."""
    if flow_root is None:
        return list(videos)
    return [video if video.flow_paths is not None else dataclasses.replace(
        video, flow_paths=[os.path.join(flow_root, video.name, f'{stem}.flo')
                           for stem in video.output_names])
            for video in videos]


def training_dataset(cfg, name: str) -> torch.utils.data.Dataset:
    """One training set by name (no suffix): an image + mask set with the 'image' augmentation,
    else the 'train' videos of datasets.registry.list_videos with cfg.DATASETS.<name>.FLOW_ROOT
    flows and the 'video' augmentation."""
    if is_static_dataset(cfg, name):
        return static_image_dataset(cfg, name)
    videos = with_teacher_flows(list_videos(cfg, name, 'train'),
                                cfg.DATASETS[name].get('FLOW_ROOT'))
    return VideoClipDataset(name, videos, build_transforms(cfg, 'video'), cfg.TRAIN.N_MAX_FRAMES,
                            cfg.CONST.RNG_SEED, cfg.CONST.IGNORE_IDX)


def build_training_set(cfg, entries: Optional[Sequence[str]] = None) -> ConcatWithRepeats:
    """The training set of `entries` (default cfg.DATASET.TRAIN_DATASET), 'NAMExN' repeated."""
    names = parse_dataset_list(entries or cfg.DATASET.TRAIN_DATASET)
    parts = [(training_dataset(cfg, name), repeats) for name, repeats in names]
    for (name, repeats), (dataset, _) in zip(names, parts):
        logger.info('Training set %s: %d items x%g', name, len(dataset), repeats)
    return ConcatWithRepeats(parts, cfg.CONST.RNG_SEED)
