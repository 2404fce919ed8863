"""Small real clips for the command-line tests, built from the DAVIS 2016 training frames."""
import copy
import json
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest
from PIL import Image

from conftest import DAVIS_TRAIN
from config import cfg
from tools.make_demo import load, paste
from utils.io import write_palette_mask

SIZE = (160, 90)          # (W, H) of the test clips


@pytest.fixture(autouse=True)
def restore_cfg():
    """The CLI changes the global cfg; give every test the defaults back."""
    saved = copy.deepcopy(cfg)
    yield
    cfg.clear()
    cfg.update(saved)


def two_object_clip(n_frames: int, size: Tuple[int, int] = SIZE) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """Frames and id masks of 'hike' (object 1) with the woman of 'lucia' pasted in (object 2)."""
    DAVIS_TRAIN
    scale = size[0] / 480
    small = (int(round(size[0] * 0.6)), int(round(size[1] * 0.6)))
    frames, masks = [], []
    for t in range(n_frames):
        frame, mask = load(DAVIS_TRAIN, 'hike', t, size)
        ids = mask.astype(np.uint8)
        paste(frame, ids, *load(DAVIS_TRAIN, 'lucia', t, small), (int(10 * scale), int(110 * scale)))
        frames.append(frame)
        masks.append(ids)
    return frames, masks


def one_object_clip(sequence: str, n_frames: int, size: Tuple[int, int] = SIZE):
    """Frames and 0/1 masks of one DAVIS 2016 sequence."""
    pairs = [load(DAVIS_TRAIN, sequence, t, size) for t in range(n_frames)]
    return [frame for frame, _ in pairs], [mask.astype(np.uint8) for _, mask in pairs]


def save_jpeg(path: str, frame: np.ndarray) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(frame).save(path, quality=95)
    return path


def frame_folder(folder: str, frames: Sequence[np.ndarray]) -> str:
    """A folder of %05d.jpg frames."""
    for t, frame in enumerate(frames):
        save_jpeg(os.path.join(folder, f'{t:05d}.jpg'), frame)
    return folder


def davis_root(root: str, clips: Dict[str, Tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
               annotated: bool = True) -> str:
    """A DAVIS 2017-layout folder (also listed for DAVIS 2016) with split 'train' holding `clips`;
    annotated=False keeps only the first annotation (a split without ground truth)."""
    for name, (frames, masks) in clips.items():
        frame_folder(os.path.join(root, 'JPEGImages', '480p', name), frames)
        for t, mask in enumerate(masks if annotated else masks[:1]):
            write_palette_mask(os.path.join(root, 'Annotations', '480p', name, f'{t:05d}.png'), mask)
    for year in ('2016', '2017'):
        os.makedirs(os.path.join(root, 'ImageSets', year), exist_ok=True)
        with open(os.path.join(root, 'ImageSets', year, 'train.txt'), 'w') as f:
            f.write(''.join(f'{name}\n' for name in clips))
    return root


def youtube_root(root: str, name: str, frames: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                 listed: Dict[int, Sequence[int]]) -> str:
    """A YouTube-VOS 'valid' split of one video: every frame in valid_all_frames/, the listed
    frames (object id -> frame indexes) in valid/, and each object's mask at its first frame."""
    stems = [f'{t:05d}' for t in range(len(frames))]
    for t, frame in enumerate(frames):
        save_jpeg(os.path.join(root, 'valid_all_frames', 'JPEGImages', name, f'{stems[t]}.jpg'), frame)
        if any(t in indexes for indexes in listed.values()):
            save_jpeg(os.path.join(root, 'valid', 'JPEGImages', name, f'{stems[t]}.jpg'), frame)
    for obj, indexes in listed.items():
        first = min(indexes)
        path = os.path.join(root, 'valid', 'Annotations', name, f'{stems[first]}.png')
        earlier = np.array(Image.open(path)) if os.path.isfile(path) else np.zeros_like(masks[first])
        write_palette_mask(path, np.where(masks[first] == obj, obj, earlier))
    meta = {'videos': {name: {'objects': {str(obj): {'category': 'person', 'frames': [stems[t] for t in indexes]}
                                          for obj, indexes in listed.items()}}}}
    with open(os.path.join(root, 'valid', 'meta.json'), 'w') as f:
        json.dump(meta, f)
    return root


def read_ids(path: str) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == 'P', f'{path} is not a palette PNG'
        return np.array(image)
