"""Static image + mask sets: pairing by name, mask kinds, clips whose flows follow the affines."""
import os

import numpy as np
import pytest
import torch
from easydict import EasyDict as edict
from PIL import Image

from config import cfg as default_cfg
from conftest import DAVIS_TRAIN
from datasets.static_images import (ImageMaskPair, StaticImageDataset, davis_frame_pairs,
                                    find_pairs, is_static_dataset, read_object_mask,
                                    static_image_dataset)
from datasets.transforms import Compose, RandomAffine, Resize
from datasets.video import Video
from test_transforms import assert_aligned
from utils.io import PALETTE, DataError

WHITE = (255, 255, 255)


def save_image(path, height=48, width=64, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def save_grey_mask(path, height=48, width=64):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[10:30, 20:40] = 255
    mask[30, 20:40] = 128                     # anti-aliased edge: still the object
    Image.fromarray(mask, mode='L').save(path)


def save_palette_mask(path, ids):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(np.asarray(ids, dtype=np.uint8), mode='P')
    image.putpalette(PALETTE.reshape(-1).tolist())
    image.save(path)


def test_pairs_by_name_in_two_folders(tmp_path):
    for stem in ('0001', '0002', '0003'):
        save_image(str(tmp_path / 'images' / f'{stem}.jpg'))
    for stem in ('0001', '0003', '9999'):
        save_grey_mask(str(tmp_path / 'masks' / f'{stem}.png'))
    pairs = find_pairs(str(tmp_path / 'images'), str(tmp_path / 'masks'))
    assert [(os.path.basename(p.image), os.path.basename(p.mask)) for p in pairs] == [
        ('0001.jpg', '0001.png'), ('0003.jpg', '0003.png')]


def test_pairs_in_one_folder_and_in_sub_folders(tmp_path):
    folder = tmp_path / 'Imgs'                 # MSRA10K: x.jpg beside its mask x.png
    for stem in ('a', 'b'):
        save_image(str(folder / f'{stem}.jpg'))
        save_grey_mask(str(folder / f'{stem}.png'))
    pairs = find_pairs(str(folder), str(folder))
    assert [(os.path.basename(p.image), os.path.basename(p.mask)) for p in pairs] == [
        ('a.jpg', 'a.png'), ('b.jpg', 'b.png')]
    save_image(str(tmp_path / 'img' / 'scene' / 'x.jpg'))
    save_grey_mask(str(tmp_path / 'ann' / 'scene' / 'x.png'))
    nested = find_pairs(str(tmp_path / 'img'), str(tmp_path / 'ann'))
    assert [pair.name for pair in nested] == [os.path.join('scene', 'x')]


def test_missing_folders_and_no_pairs_are_reported(tmp_path):
    save_image(str(tmp_path / 'images' / 'a.jpg'))
    os.makedirs(tmp_path / 'masks')
    with pytest.raises(DataError, match='mask folder not found'):
        find_pairs(str(tmp_path / 'images'), str(tmp_path / 'nowhere'))
    with pytest.raises(DataError, match='none of its 1 images'):
        find_pairs(str(tmp_path / 'images'), str(tmp_path / 'masks'))


def test_mask_kinds(tmp_path):
    save_grey_mask(str(tmp_path / 'salient.png'))
    salient = read_object_mask(str(tmp_path / 'salient.png'))
    assert set(np.unique(salient)) == {0, 1} and salient[10:31, 20:40].all()
    ids = np.array([[0, 1, 2], [3, 255, 0]])
    save_palette_mask(str(tmp_path / 'voc.png'), ids)
    assert np.array_equal(read_object_mask(str(tmp_path / 'voc.png')), ids)
    assert np.array_equal(read_object_mask(str(tmp_path / 'voc.png'), binary=True), ids != 0)
    with pytest.raises(DataError, match='missing.png: mask not found'):
        read_object_mask(str(tmp_path / 'missing.png'))


def test_a_sample_is_a_repeated_image_with_zero_flows(tmp_path):
    save_image(str(tmp_path / 'a.jpg'))
    save_grey_mask(str(tmp_path / 'a.png'))
    dataset = StaticImageDataset('ECSSD', find_pairs(str(tmp_path), str(tmp_path)),
                                 lambda clip, rng: clip, n_frames=3)
    clip = dataset[0]
    assert clip['name'] == 'ECSSD/a' and len(clip['frames']) == 3
    assert all(np.array_equal(f, clip['frames'][0]) for f in clip['frames'])
    assert all(np.all(f == 0) and f.shape == (48, 64, 2) for f in clip['flows'])


def test_mismatched_mask_size_names_the_files(tmp_path):
    save_image(str(tmp_path / 'a.jpg'))
    save_grey_mask(str(tmp_path / 'a.png'), height=40)
    dataset = StaticImageDataset('X', find_pairs(str(tmp_path), str(tmp_path)),
                                 lambda clip, rng: clip, n_frames=3)
    with pytest.raises(DataError, match=r'a.png: mask is 64x40 but its image .*a.jpg is 64x48'):
        dataset[0]


def test_affine_video_of_a_real_frame_is_consistent_with_its_flows():
    root = DAVIS_TRAIN
    pair = ImageMaskPair('bear/00000',
                         os.path.join(root, 'JPEGImages', '480p', 'bear', '00000.jpg'),
                         os.path.join(root, 'Annotations', '480p', 'bear', '00000.png'))
    transform = Compose([Resize(240), RandomAffine(20, (0.9, 1.1), 10, WHITE, 255)])
    dataset = StaticImageDataset('DAVIS_FRAMES', [pair], transform, n_frames=3, seed=1)
    clip = dataset[0]
    assert not np.array_equal(clip['frames'][0], clip['frames'][1])
    assert_aligned(clip, max_frame_error=4.0)   # real images have more fine detail


def test_full_image_pipeline_from_config(tmp_path):
    for stem in ('a', 'b'):
        save_image(str(tmp_path / 'images' / f'{stem}.jpg'), seed=len(stem))
        save_grey_mask(str(tmp_path / 'gt' / f'{stem}.png'))
    cfg = edict(default_cfg)
    cfg.DATASETS.ECSSD.IMAGE_DIR = str(tmp_path / 'images')
    cfg.DATASETS.ECSSD.MASK_DIR = str(tmp_path / 'gt')
    cfg.TRAIN.AUGMENTATION.RESIZE_SIZE, cfg.TRAIN.AUGMENTATION.CROP_SIZE = 48, 40
    assert is_static_dataset(cfg, 'ECSSD') and is_static_dataset(cfg, 'DAVIS_FRAMES')
    assert not is_static_dataset(cfg, 'DAVIS')
    dataset = static_image_dataset(cfg, 'ECSSD')
    sample = dataset[1]
    k = cfg.TRAIN.N_MAX_OBJECTS + 1
    assert sample['frames'].shape == (3, 3, 40, 40) and sample['masks'].shape == (3, k, 40, 40)
    assert sample['flows'].shape == (3, 2, 40, 40) and sample['n_objects'] == 1
    assert torch.equal(dataset[1]['frames'], sample['frames'])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[1]['frames'], sample['frames'])
    with pytest.raises(ValueError, match='not an image'):
        static_image_dataset(cfg, 'DAVIS')


def test_davis_frames_are_every_annotated_frame():
    video = Video(name='v', frame_paths=['f0.jpg', 'f1.jpg', 'f2.jpg'], given_masks={0: 'm0.png'},
                  output_names=['0', '1', '2'], ground_truth={0: 'm0.png', 2: 'm2.png'},
                  binary=True)
    pairs = davis_frame_pairs([video])
    assert pairs == [ImageMaskPair('v/0', 'f0.jpg', 'm0.png', True),
                     ImageMaskPair('v/2', 'f2.jpg', 'm2.png', True)]
