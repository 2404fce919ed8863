"""Training clips from videos: frame steps, short videos, teacher flows, repeats of datasets."""
import glob
import logging
import os

import numpy as np
import pytest
import torch
from easydict import EasyDict as edict
from PIL import Image

from config import cfg as default_cfg
from conftest import DAVIS_TRAIN, DAVIS_TRAIN_HW
from datasets.transforms import sample_rng
from datasets.video import Video
from datasets.video_clips import (ConcatWithRepeats, VideoClipDataset, build_training_set,
                                  max_frame_step, sample_frame_indexes, with_teacher_flows)
from utils.io import DataError, read_frame, write_flo

VOID = default_cfg.CONST.IGNORE_IDX


def identity(clip, rng):
    return clip


def davis_video(name, flow_dir=None, n_frames=None, binary=False):
    """A real DAVIS video (its first n_frames), flows expected in flow_dir/<name>/<frame>.flo."""
    root = DAVIS_TRAIN
    frames = sorted(glob.glob(os.path.join(root, 'JPEGImages', '480p', name, '*.jpg')))[:n_frames]
    stems = [os.path.splitext(os.path.basename(p))[0] for p in frames]
    masks = [os.path.join(root, 'Annotations', '480p', name, f'{s}.png') for s in stems]
    video = Video(name=name, frame_paths=frames, given_masks={0: masks[0]}, output_names=stems,
                  ground_truth=dict(enumerate(masks)), binary=binary)
    return with_teacher_flows([video], flow_dir)[0]


def test_frame_indexes_follow_the_step():
    rng = np.random.default_rng(0)
    for step in (1, 2, 5):
        for _ in range(20):
            indexes = sample_frame_indexes(30, 3, step, rng)
            assert np.all(np.diff(indexes) == step) and 0 <= indexes[0] and indexes[-1] < 30
    starts = {sample_frame_indexes(10, 3, 4, rng)[0] for _ in range(50)}
    assert starts == {0, 1}                                     # 0 + 2 * 4 <= 9
    assert sample_frame_indexes(3, 3, 1, rng) == [0, 1, 2]


def test_short_videos_fall_back_to_random_frames():
    rng = np.random.default_rng(1)
    for _ in range(20):
        too_short = sample_frame_indexes(2, 3, 1, rng)          # repeats, in order
        assert len(too_short) == 3 and set(too_short) <= {0, 1} and too_short == sorted(too_short)
        step_too_long = sample_frame_indexes(5, 3, 3, rng)      # distinct, in order
        assert len(set(step_too_long)) == 3 and step_too_long == sorted(step_too_long)
        assert max(step_too_long) < 5


def test_max_frame_step_grows_with_the_epoch():
    assert [max_frame_step(default_cfg, e) for e in (1, 5, 10, 89, 200)] == [2, 3, 4, 19, 20]


def test_clip_frames_masks_and_flows_come_from_the_sampled_frames(tmp_path):
    video = davis_video('dog-agility', str(tmp_path), n_frames=12)
    rng = np.random.default_rng(0)
    written = {}
    for index in range(1, 12):
        written[index] = rng.normal(size=DAVIS_TRAIN_HW + (2,)).astype(np.float32)
        write_flo(video.flow_paths[index], written[index])
    dataset = VideoClipDataset('DAVIS', [video], identity, n_frames=3, seed=3, ignore_index=VOID)
    dataset.set_frame_step(4)
    clip = dataset[0]
    indexes = dataset.frame_indexes(0, sample_rng(3, 0, 0))
    assert np.all(np.diff(indexes) == 4) and clip['name'] == 'DAVIS/dog-agility'
    for t, i in enumerate(indexes):
        assert np.array_equal(clip['frames'][t], read_frame(video.frame_paths[i]))
        assert clip['masks'][t].shape == DAVIS_TRAIN_HW
    assert np.all(clip['flows'][0] == 0)                        # frame 0 of a clip: no flow
    for t in (1, 2):                                            # the video frame's teacher flow
        assert np.array_equal(clip['flows'][t], written[indexes[t]])


def test_missing_flows_are_zero_with_one_warning(tmp_path, caplog):
    videos = [davis_video('dog-agility', str(tmp_path), n_frames=5),
              davis_video('rollerblade', n_frames=5)]           # no flow paths at all
    write_flo(videos[0].flow_paths[2], np.ones(DAVIS_TRAIN_HW + (2,), np.float32))
    with caplog.at_level(logging.WARNING):
        dataset = VideoClipDataset('DAVIS', videos, identity, n_frames=3, seed=0, ignore_index=VOID)
        for epoch in range(3):
            dataset.set_epoch(epoch)
            clips = [dataset[0], dataset[1]]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert 'DAVIS: 7 of 8 teacher flows are missing' in warnings[0].getMessage()
    assert all(np.all(f == 0) for f in clips[1]['flows'])


def test_bad_files_raise_errors_naming_them(tmp_path):
    video = davis_video('dog-agility', str(tmp_path), n_frames=3)
    dataset = VideoClipDataset('DAVIS', [video], identity, n_frames=3, seed=0, ignore_index=VOID)
    os.makedirs(os.path.dirname(video.flow_paths[1]))
    with open(video.flow_paths[1], 'wb') as f:
        f.write(b'not a flow')
    with pytest.raises(DataError, match=r'00001.flo: too short for a .flo header'):
        dataset[0]
    write_flo(video.flow_paths[1], np.zeros((10, 20, 2), np.float32))
    height, width = DAVIS_TRAIN_HW
    with pytest.raises(DataError, match=fr'00001.flo: flow is 20x10 but frame .*jpg is {width}x{height}'):
        dataset[0]
    missing_frame = Video(name='gone', frame_paths=[str(tmp_path / 'gone.jpg')], given_masks={},
                          output_names=['gone'], ground_truth={0: video.ground_truth[0]})
    with pytest.raises(DataError, match='gone.jpg: frame not found'):
        VideoClipDataset('DAVIS', [missing_frame], identity, n_frames=3, seed=0, ignore_index=VOID)[0]


def test_a_one_frame_video_repeats_it_with_zero_flows(tmp_path):
    video = davis_video('bear', str(tmp_path), n_frames=1)
    clip = VideoClipDataset('DAVIS', [video], identity, n_frames=3, seed=0, ignore_index=VOID)[0]
    assert all(np.array_equal(f, clip['frames'][0]) for f in clip['frames'])
    assert all(np.all(f == 0) for f in clip['flows'])


def test_binary_videos_have_one_object(tmp_path):
    mask = np.array(Image.open(davis_video('bear').ground_truth[0]))
    mask[:5] = 3                                                 # a second label, same object
    Image.fromarray(mask).save(tmp_path / '00000.png')
    video = davis_video('bear', n_frames=1, binary=True)
    video.ground_truth = {0: str(tmp_path / '00000.png')}
    clip = VideoClipDataset('DAVIS2016', [video], identity, n_frames=3, seed=0, ignore_index=VOID)[0]
    assert set(np.unique(clip['masks'][0])) == {0, 1}


def test_videos_without_annotations_are_skipped_and_steps_validated():
    videos = [davis_video('bear', n_frames=4), Video('empty', ['x.jpg'], {}, ['x'])]
    dataset = VideoClipDataset('DAVIS', videos, identity, n_frames=3, seed=0, ignore_index=VOID)
    assert len(dataset) == 1
    with pytest.raises(ValueError, match='at least 1'):
        dataset.set_frame_step(0)
    with pytest.raises(DataError, match='no video with annotated frames'):
        VideoClipDataset('DAVIS', videos[1:], identity, n_frames=3, seed=0, ignore_index=VOID)


class Items:
    """A stand-in dataset whose samples say which item they are."""

    def __init__(self, name, size):
        self.name, self.size, self.frame_step = name, size, 1

    def __len__(self):
        return self.size

    def set_frame_step(self, step):
        self.frame_step = step

    def sample(self, index, rng):
        return self.name, index, rng.integers(1 << 30)


def test_repeats_and_fractions():
    videos, images = Items('videos', 4), Items('images', 20)
    concat = ConcatWithRepeats([(videos, 3), (images, 0.25)], seed=0)
    assert len(concat) == 12 + 5
    items = [concat[i][:2] for i in range(len(concat))]
    assert items[:12] == [('videos', i % 4) for i in range(12)]
    picked = [i for _, i in items[12:]]
    assert len(set(picked)) == 5                                 # drawn without replacement
    assert picked == [concat[12 + k][1] for k in range(5)]       # the same within an epoch
    draws = {concat[i][2] for i in range(12)}
    assert len(draws) == 12                                      # repeats get their own randomness
    concat.set_epoch(1)
    assert [concat[12 + k][1] for k in range(5)] != picked       # another subset next epoch
    concat.set_frame_step(7)
    assert videos.frame_step == 7 and images.frame_step == 7
    with pytest.raises(IndexError):
        concat[len(concat)]
    with pytest.raises(ValueError, match='x0'):
        ConcatWithRepeats([(videos, 0)])


def test_training_set_from_config_names(tmp_path):
    for stem in ('a', 'b', 'c'):
        Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(tmp_path / f'{stem}.jpg')
        mask = np.zeros((40, 50), np.uint8)
        mask[5:20, 5:20] = 255
        Image.fromarray(mask, mode='L').save(tmp_path / f'{stem}.png')
    cfg = edict(default_cfg)
    cfg.DATASETS.MSRA10K.IMAGE_DIR = cfg.DATASETS.MSRA10K.MASK_DIR = str(tmp_path)
    cfg.TRAIN.AUGMENTATION.RESIZE_SIZE, cfg.TRAIN.AUGMENTATION.CROP_SIZE = 40, 32
    training = build_training_set(cfg, ['MSRA10Kx2'])
    assert len(training) == 6
    batch = torch.utils.data.default_collate([training[0], training[3]])
    assert batch['frames'].shape == (2, 3, 3, 32, 32) and batch['n_objects'].tolist() == [1, 1]
    assert batch['name'] == ['MSRA10K/a', 'MSRA10K/a']
    assert not torch.equal(batch['frames'][0], batch['frames'][1])   # two different draws
    assert torch.equal(training[0]['frames'], batch['frames'][0])    # reproducible


def test_teacher_flow_paths_follow_frame_names(tmp_path):
    video = Video('v', ['a/00000.jpg', 'a/00005.jpg'], {}, ['00000', '00005'])
    assert with_teacher_flows([video], str(tmp_path))[0].flow_paths == [
        str(tmp_path / 'v' / '00000.flo'), str(tmp_path / 'v' / '00005.flo')]
    assert with_teacher_flows([video], None)[0].flow_paths is None


def test_clips_start_where_an_object_is_visible(tmp_path):
    """Frames 0..2 show no object (it appears later): clips are drawn again to start on it."""
    frames, masks = [], {}
    for i in range(10):
        frames.append(str(tmp_path / f'{i:05d}.jpg'))
        Image.fromarray(np.full((20, 20, 3), 10 * i, np.uint8)).save(frames[-1])
        mask = np.zeros((20, 20), np.uint8)
        mask[5:10, 5:10] = 1 if i >= 3 else 0
        masks[i] = str(tmp_path / f'{i:05d}.png')
        Image.fromarray(mask, mode='L').save(masks[i])
    video = Video('late', frames, {3: masks[3]}, [f'{i:05d}' for i in range(10)],
                  ground_truth=masks)
    dataset = VideoClipDataset('YOUTUBE_VOS', [video], identity, n_frames=3, seed=0, ignore_index=VOID)
    starts = []
    for epoch in range(20):
        dataset.set_epoch(epoch)
        starts.append(dataset[0]['masks'][0].any())
    assert sum(starts) >= 19                     # a single draw would miss about 3 times in 8
