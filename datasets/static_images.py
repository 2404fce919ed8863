"""Static "image + mask" sets (ECSSD, MSRA10K, PASCAL VOC, MS-COCO, ADE20K, DAVIS frames) as
training clips: the image repeated N_MAX_FRAMES times with zero flows; the per-frame random
affines of the 'image' augmentation make it a video and turn the flows into the affine motion.

Masks: a palette PNG keeps its ids (VOC SegmentationObject: 255 = void); any other PNG is a
salient-object mask where every non-zero value is the object.
"""
import logging
import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np
import torch.utils.data
from PIL import Image

from datasets.registry import list_videos
from datasets.transforms import Clip, Transform, blank_flows, build_transforms, sample_rng
from datasets.video import Video
from utils.io import DataError, read_frame

logger = logging.getLogger(__name__)

DAVIS_FRAMES = 'DAVIS_FRAMES'   # every annotated DAVIS train frame as a static image
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')
MASK_EXTENSION = '.png'


@dataclass(frozen=True)
class ImageMaskPair:
    """One sample: its name, image and mask, and whether every non-zero label is one object."""
    name: str
    image: str
    mask: str
    binary: bool = False


def read_object_mask(path: str, binary: bool = False) -> np.ndarray:
    """(H, W) uint8 ids: a palette PNG's ids (all non-zero -> 1 when `binary`), else 1 wherever a
    greyscale/colour salient-object mask is non-zero."""
    try:
        with Image.open(path) as image:
            if image.mode == 'P' and not binary:
                return np.array(image)
            values = np.array(image if image.mode == 'P' else image.convert('L'))
    except FileNotFoundError as e:
        raise DataError(f'{path}: mask not found') from e
    except OSError as e:
        raise DataError(f'{path}: unreadable mask ({e})') from e
    return (values != 0).astype(np.uint8)


def _index_files(folder: str, extensions: Sequence[str]) -> Dict[str, str]:
    """Relative path without extension -> file, for the files under `folder` (recursively)."""
    found: Dict[str, str] = {}
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            stem, extension = os.path.splitext(name)
            if name.startswith('.') or extension.lower() not in extensions:
                continue
            key = os.path.relpath(os.path.join(root, stem), folder)
            path = os.path.join(root, name)
            if key in found:
                raise DataError(f'{path}: same name as {found[key]}; cannot tell which one to use')
            found[key] = path
    return found


def find_pairs(image_dir: str, mask_dir: str) -> List[ImageMaskPair]:
    """Images of `image_dir` with a .png mask of the same name (and sub-folder) in `mask_dir`;
    when both are one folder (MSRA10K), the .png files are the masks."""
    for folder, what in ((image_dir, 'image'), (mask_dir, 'mask')):
        if not os.path.isdir(folder):
            raise DataError(f'{folder}: {what} folder not found')
    same_folder = os.path.samefile(image_dir, mask_dir)
    extensions = [e for e in IMAGE_EXTENSIONS if not (same_folder and e == MASK_EXTENSION)]
    images = _index_files(image_dir, extensions)
    masks = _index_files(mask_dir, (MASK_EXTENSION,))
    pairs = [ImageMaskPair(key, images[key], masks[key]) for key in sorted(images) if key in masks]
    if not pairs:
        raise DataError(f'{image_dir}: none of its {len(images)} images has a {MASK_EXTENSION} '
                        f'mask of the same name in {mask_dir}')
    if len(pairs) < len(images):
        logger.info('%s: %d of %d images have no mask in %s and are skipped', image_dir,
                    len(images) - len(pairs), len(images), mask_dir)
    return pairs


def davis_frame_pairs(videos: Iterable[Video]) -> List[ImageMaskPair]:
    """Every annotated frame of the videos as a static image."""
    pairs = []
    for video in videos:
        annotated = {**video.given_masks, **video.ground_truth}
        pairs += [ImageMaskPair(f'{video.name}/{video.output_names[index]}',
                                video.frame_paths[index], annotated[index], video.binary)
                  for index in sorted(annotated)]
    return pairs


class StaticImageDataset(torch.utils.data.Dataset):
    """Training clips made of one image each; item i of epoch e is a pure function of
    (seed, e, i): call set_epoch before each epoch."""

    def __init__(self, name: str, pairs: Sequence[ImageMaskPair], transform: Transform,
                 n_frames: int, seed: int = 0):
        if not pairs:
            raise DataError(f'{name}: no image/mask pairs')
        self.name = name
        self.pairs = list(pairs)
        self.transform = transform
        self.n_frames = n_frames
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """The image (H, W, 3) uint8 and its object ids (H, W) uint8 of pair `index`."""
        pair = self.pairs[index]
        image, mask = read_frame(pair.image), read_object_mask(pair.mask, pair.binary)
        if image.shape[:2] != mask.shape:
            raise DataError(f'{pair.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image '
                            f'{pair.image} is {image.shape[1]}x{image.shape[0]}')
        return image, mask

    def sample(self, index: int, rng: np.random.Generator) -> Clip:
        """The transformed clip of pair `index`, drawing from `rng`; 'name' says which pair."""
        image, mask = self.load(index)
        frames = [image] * self.n_frames
        clip = {'frames': frames, 'masks': [mask] * self.n_frames, 'flows': blank_flows(frames)}
        clip = self.transform(clip, rng)
        clip['name'] = f'{self.name}/{self.pairs[index].name}'
        return clip

    def __getitem__(self, index: int) -> Clip:
        return self.sample(index, sample_rng(self.seed, self.epoch, index))


def is_static_dataset(cfg, name: str) -> bool:
    """Whether `name` (no repeat suffix) is an image + mask set."""
    return name == DAVIS_FRAMES or 'IMAGE_DIR' in cfg.DATASETS.get(name, {})


def static_image_dataset(cfg, name: str) -> StaticImageDataset:
    """The training set `name` of cfg.DATASETS (IMAGE_DIR / MASK_DIR), or DAVIS_FRAMES, with the
    'image' augmentation."""
    if name == DAVIS_FRAMES:
        pairs = davis_frame_pairs(list_videos(cfg, 'DAVIS', 'train'))
    elif is_static_dataset(cfg, name):
        pairs = find_pairs(cfg.DATASETS[name].IMAGE_DIR, cfg.DATASETS[name].MASK_DIR)
    else:
        raise ValueError(f'{name} is not an image + mask dataset (cfg.DATASETS.{name} has no '
                         f'IMAGE_DIR)')
    return StaticImageDataset(name, pairs, build_transforms(cfg, 'image'), cfg.TRAIN.N_MAX_FRAMES,
                              cfg.CONST.RNG_SEED)
