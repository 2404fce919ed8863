"""Video listings of DAVIS 2017 / 2016 and YouTube-VOS from tiny layouts built with real frames."""
import copy
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import config
from conftest import DAVIS_TRAIN, ROOT
from datasets.make_index import main as make_index
from datasets.registry import list_videos, parse_dataset_list
from utils.cli import run_command
from utils.io import DataError, read_mask, write_palette_mask

H, W = 36, 64


@pytest.fixture(scope='module')
def jpegs():
    """Four real DAVIS frames downscaled to 64x36, as JPEG bytes."""
    folder = os.path.join(DAVIS_TRAIN, 'JPEGImages', '480p', 'bear')
    encoded = []
    for index in range(4):
        with Image.open(os.path.join(folder, f'{index:05d}.jpg')) as image:
            buffer = io.BytesIO()
            image.convert('RGB').resize((W, H), Image.BILINEAR).save(buffer, format='JPEG')
            encoded.append(buffer.getvalue())
    return encoded


@pytest.fixture
def cfg(tmp_path):
    options = copy.deepcopy(config.cfg)
    options.DATASETS.DAVIS.ROOT = str(tmp_path / 'DAVIS')
    options.DATASETS.DAVIS.TEST_DEV_ROOT = str(tmp_path / 'DAVIS-test-dev')
    options.DATASETS.DAVIS2016.ROOT = str(tmp_path / 'DAVIS2016')
    options.DATASETS.YOUTUBE_VOS.ROOT = str(tmp_path / 'YouTubeVOS')
    options.DATASETS.YOUTUBE_VOS_2019.ROOT = str(tmp_path / 'YouTubeVOS2019')
    return options


def object_mask(*labels: int) -> np.ndarray:
    """Label k fills the k-th 8-pixel-wide column band; 255 (void) a strip along the bottom."""
    mask = np.zeros((H, W), dtype=np.uint8)
    for label in labels:
        if label == 255:
            mask[-3:] = 255
        else:
            mask[4:20, 8 * label:8 * label + 8] = label
    return mask


def write_jpegs(folder, stems, jpegs):
    os.makedirs(folder, exist_ok=True)
    for i, stem in enumerate(stems):
        with open(os.path.join(folder, f'{stem}.jpg'), 'wb') as f:
            f.write(jpegs[i % len(jpegs)])


def write_text(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(''.join(f'{line}\n' for line in lines))


def make_davis(root, year, split, sequences, jpegs, annotated_frames=None):
    """A DAVIS 2017-style folder: `sequences` maps a name to its frame count."""
    write_text(os.path.join(root, 'ImageSets', year, f'{split}.txt'), list(sequences))
    for name, n_frames in sequences.items():
        stems = [f'{i:05d}' for i in range(n_frames)]
        write_jpegs(os.path.join(root, 'JPEGImages', '480p', name), stems, jpegs)
        for stem in stems[:annotated_frames]:
            write_palette_mask(os.path.join(root, 'Annotations', '480p', name, f'{stem}.png'),
                               object_mask(1, 2, 255))


def frames_of(root, name, n_frames, kind='JPEGImages', extension='.jpg'):
    return [os.path.join(root, kind, '480p', name, f'{i:05d}{extension}') for i in range(n_frames)]


def test_davis_2017_lists_frames_input_mask_and_ground_truth(cfg, jpegs):
    root = cfg.DATASETS.DAVIS.ROOT
    make_davis(root, '2017', 'val', {'boat': 3, 'bear': 2}, jpegs)
    write_text(os.path.join(root, 'JPEGImages', '480p', 'boat', 'notes.txt'), ['not a frame'])
    videos = list_videos(cfg, 'DAVIS')  # TEST_SPLIT: val
    assert [v.name for v in videos] == ['boat', 'bear']
    boat = videos[0]
    masks = frames_of(root, 'boat', 3, 'Annotations', '.png')
    assert boat.frame_paths == frames_of(root, 'boat', 3)
    assert boat.output_names == ['00000', '00001', '00002']
    assert boat.given_masks == {0: masks[0]}
    assert boat.ground_truth == dict(enumerate(masks))
    assert boat.output_frames is None and not boat.binary and len(boat) == 3
    assert set(np.unique(read_mask(boat.given_masks[0]))) == {0, 1, 2, 255}


def test_davis_test_dev_comes_from_its_root_without_ground_truth(cfg, jpegs):
    root = cfg.DATASETS.DAVIS.TEST_DEV_ROOT
    make_davis(root, '2017', 'test-dev', {'aerobatics': 3}, jpegs, annotated_frames=1)
    [video] = list_videos(cfg, 'DAVIS', 'test-dev')
    assert video.frame_paths == frames_of(root, 'aerobatics', 3)
    assert video.given_masks == {0: frames_of(root, 'aerobatics', 1, 'Annotations', '.png')[0]}
    assert video.ground_truth == {}


def test_davis2016_from_a_2017_folder_is_binary(cfg, jpegs):
    root = cfg.DATASETS.DAVIS2016.ROOT
    make_davis(root, '2016', 'val', {'blackswan': 2}, jpegs)
    [video] = list_videos(cfg, 'DAVIS2016')
    assert video.binary and video.frame_paths == frames_of(root, 'blackswan', 2)
    masks = frames_of(root, 'blackswan', 2, 'Annotations', '.png')
    assert video.ground_truth == dict(enumerate(masks))


def test_davis2016_release_list_of_frame_and_annotation_paths(cfg, jpegs):
    root = cfg.DATASETS.DAVIS2016.ROOT
    lines = []
    for name, n_frames in (('cows', 3), ('bear', 2)):
        write_jpegs(os.path.join(root, 'JPEGImages', '480p', name),
                    [f'{i:05d}' for i in range(n_frames)], jpegs)
        for i in range(n_frames):
            path = os.path.join(root, 'Annotations', '480p', name, f'{i:05d}.png')
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(object_mask(1) * 255, mode='L').save(path)
            lines.append(f'/JPEGImages/480p/{name}/{i:05d}.jpg '
                         f'/Annotations/480p/{name}/{i:05d}.png')
    write_text(os.path.join(root, 'ImageSets', '480p', 'val.txt'), lines)
    videos = list_videos(cfg, 'DAVIS2016', 'val')
    assert [v.name for v in videos] == ['cows', 'bear']
    cows = videos[0]
    assert cows.binary and cows.frame_paths == frames_of(root, 'cows', 3)
    assert cows.output_names == ['00000', '00001', '00002']
    assert cows.given_masks == {0: frames_of(root, 'cows', 1, 'Annotations', '.png')[0]}
    assert cows.ground_truth == dict(enumerate(frames_of(root, 'cows', 3, 'Annotations', '.png')))
    assert set(np.unique(read_mask(cows.given_masks[0]))) == {0, 255}


def test_real_davis2016_train_split():
    options = copy.deepcopy(config.cfg)
    options.DATASETS.DAVIS2016.ROOT = DAVIS_TRAIN
    videos = list_videos(options, 'DAVIS2016', 'train')
    with open(os.path.join(DAVIS_TRAIN, 'ImageSets', '2016', 'train.txt')) as f:
        assert [v.name for v in videos] == f.read().split()
    for video in videos:
        frames = os.listdir(os.path.join(DAVIS_TRAIN, 'JPEGImages', '480p', video.name))
        assert len(video) == len(frames) > 0
    for video in videos:
        assert video.binary and list(video.given_masks) == [0]
        assert len(video.ground_truth) == len(video) == len(video.output_names)


def make_youtube_valid(root, jpegs):
    """Video 'a1': object 2 appears at 00005, all frames extracted (00000-00012).
    Video 'b2': two objects start at 00000, no all-frames folder."""
    meta = {'videos': {
        'b2': {'objects': {'1': {'category': 'cat', 'frames': ['00000', '00005']},
                           '2': {'category': 'dog', 'frames': ['00005', '00000']}}},
        'a1': {'objects': {'1': {'category': 'person', 'frames': ['00000', '00005', '00010']},
                           '2': {'category': 'ball', 'frames': ['00005', '00010']}}},
    }}
    write_text(os.path.join(root, 'valid', 'meta.json'), [json.dumps(meta)])
    for name, stems, labels in (('a1', ['00000', '00005', '00010'], {'00000': (1,), '00005': (2,)}),
                                ('b2', ['00000', '00005'], {'00000': (1, 2)})):
        write_jpegs(os.path.join(root, 'valid', 'JPEGImages', name), stems, jpegs)
        for stem, objects in labels.items():
            write_palette_mask(os.path.join(root, 'valid', 'Annotations', name, f'{stem}.png'),
                               object_mask(*objects))
    write_jpegs(os.path.join(root, 'valid_all_frames', 'JPEGImages', 'a1'),
                [f'{i:05d}' for i in range(13)], jpegs)


def test_youtube_vos_valid_with_all_frames_and_mid_video_object(cfg, jpegs):
    root = cfg.DATASETS.YOUTUBE_VOS.ROOT
    make_youtube_valid(root, jpegs)
    a1, b2 = list_videos(cfg, 'YOUTUBE_VOS')  # TEST_SPLIT: valid
    stems = [f'{i:05d}' for i in range(11)]   # 00011 and 00012 follow the last listed frame
    assert a1.name == 'a1'
    assert a1.frame_paths == [os.path.join(root, 'valid_all_frames', 'JPEGImages', 'a1', f'{s}.jpg')
                              for s in stems]
    assert a1.output_names == stems and a1.output_frames == [0, 5, 10]
    annotations = os.path.join(root, 'valid', 'Annotations')
    assert a1.given_masks == {0: os.path.join(annotations, 'a1', '00000.png'),
                              5: os.path.join(annotations, 'a1', '00005.png')}
    assert set(np.unique(read_mask(a1.given_masks[5]))) == {0, 2}
    assert a1.ground_truth == {} and not a1.binary
    assert b2.frame_paths == [os.path.join(root, 'valid', 'JPEGImages', 'b2', f'{s}.jpg')
                              for s in ('00000', '00005')]
    assert b2.output_names == ['00000', '00005'] and b2.output_frames is None
    assert b2.given_masks == {0: os.path.join(annotations, 'b2', '00000.png')}


def test_youtube_vos_2019_uses_its_own_root(cfg, jpegs):
    make_youtube_valid(cfg.DATASETS.YOUTUBE_VOS_2019.ROOT, jpegs)
    assert [v.name for v in list_videos(cfg, 'YOUTUBE_VOS_2019', 'valid')] == ['a1', 'b2']
    with pytest.raises(DataError, match='cfg.DATASETS.YOUTUBE_VOS.ROOT'):
        list_videos(cfg, 'YOUTUBE_VOS', 'valid')


def test_youtube_vos_train_uses_every_annotated_frame(cfg, jpegs):
    root = os.path.join(cfg.DATASETS.YOUTUBE_VOS.ROOT, 'train')
    meta = {'videos': {'c3': {'objects': {'1': {'category': 'cat', 'frames': ['00000', '00005']},
                                          '2': {'category': 'dog', 'frames': ['00005']}}}}}
    write_text(os.path.join(root, 'meta.json'), [json.dumps(meta)])
    write_jpegs(os.path.join(root, 'JPEGImages', 'c3'), ['00000', '00005', '00010'], jpegs)
    for stem, objects in (('00000', (1,)), ('00005', (1, 2)), ('00010', ())):
        write_palette_mask(os.path.join(root, 'Annotations', 'c3', f'{stem}.png'),
                           object_mask(*objects))
    [video] = list_videos(cfg, 'YOUTUBE_VOS', 'train')
    masks = [os.path.join(root, 'Annotations', 'c3', f'{s}.png')
             for s in ('00000', '00005', '00010')]
    assert video.output_names == ['00000', '00005', '00010'] and video.output_frames is None
    assert video.frame_paths == [os.path.join(root, 'JPEGImages', 'c3', f'{s}.jpg')
                                 for s in video.output_names]
    assert video.given_masks == {0: masks[0], 1: masks[1]}
    assert video.ground_truth == dict(enumerate(masks))


def test_davis_layout_errors_name_what_is_missing(cfg, jpegs):
    root = cfg.DATASETS.DAVIS.ROOT
    with pytest.raises(DataError, match=r'DAVIS root \(cfg.DATASETS.DAVIS.ROOT\).*ImageSets/2017'):
        list_videos(cfg, 'DAVIS', 'val')
    make_davis(root, '2017', 'train', {'bear': 2}, jpegs)
    with pytest.raises(DataError, match=f'{root}/ImageSets/2017/val.txt: split list not found'):
        list_videos(cfg, 'DAVIS', 'val')
    write_text(os.path.join(root, 'ImageSets', '2017', 'val.txt'), ['bear', 'ghost'])
    with pytest.raises(DataError, match=f"{root}/JPEGImages/480p/ghost: frame folder of sequence "
                                        f"'ghost' \\(listed in .*val.txt\\) not found"):
        list_videos(cfg, 'DAVIS', 'val')
    os.remove(os.path.join(root, 'Annotations', '480p', 'bear', '00000.png'))
    with pytest.raises(DataError, match="bear/00000.png: first-frame annotation of sequence"):
        list_videos(cfg, 'DAVIS', 'train')
    with pytest.raises(DataError, match='neither .*2016/val.txt nor .*480p/val.txt'):
        cfg.DATASETS.DAVIS2016.ROOT = root
        list_videos(cfg, 'DAVIS2016', 'val')
    with pytest.raises(ValueError, match="unknown dataset 'MOSE'"):
        list_videos(cfg, 'MOSE')
    with pytest.raises(ValueError, match="DAVIS has no split 'valid'; splits: train, val,"):
        list_videos(cfg, 'DAVIS', 'valid')


def test_youtube_vos_layout_errors_name_what_is_missing(cfg, jpegs):
    root = cfg.DATASETS.YOUTUBE_VOS.ROOT
    os.makedirs(root)
    with pytest.raises(DataError, match=f'{root}/valid/meta.json: YouTube-VOS meta.json not found'):
        list_videos(cfg, 'YOUTUBE_VOS', 'valid')
    make_youtube_valid(root, jpegs)
    os.remove(os.path.join(root, 'valid_all_frames', 'JPEGImages', 'a1', '00005.jpg'))
    with pytest.raises(DataError, match=r'a1: lacks 00005.jpg \(frames of video .a1. listed'):
        list_videos(cfg, 'YOUTUBE_VOS', 'valid')
    write_jpegs(os.path.join(root, 'valid_all_frames', 'JPEGImages', 'a1'), ['00005'], jpegs)
    os.remove(os.path.join(root, 'valid', 'Annotations', 'b2', '00000.png'))
    with pytest.raises(DataError, match="b2/00000.png: annotation of video 'b2' where"):
        list_videos(cfg, 'YOUTUBE_VOS', 'valid')
    write_text(os.path.join(root, 'valid', 'meta.json'), ['{"videos": []}'])
    with pytest.raises(DataError, match='not a YouTube-VOS meta.json'):
        list_videos(cfg, 'YOUTUBE_VOS', 'valid')


def test_parse_dataset_list_repeat_suffix():
    assert parse_dataset_list(['YOUTUBE_VOS', 'DAVISx5', 'DAVIS_FRAMES']) == [
        ('YOUTUBE_VOS', 1), ('DAVIS', 5), ('DAVIS_FRAMES', 1)]
    assert parse_dataset_list('YOUTUBE_VOSx0.5') == [('YOUTUBE_VOS', 0.5)]
    assert isinstance(parse_dataset_list('DAVISx5')[0][1], int)
    with pytest.raises(ValueError, match='DAVISx0'):
        parse_dataset_list(['DAVISx0'])


def test_make_index_writes_names_frame_and_object_counts(cfg, jpegs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)   # the default test-dev root does not exist here: skipped
    root = cfg.DATASETS.DAVIS.ROOT
    make_davis(root, '2017', 'val', {'boat': 3, 'bear': 2}, jpegs)
    out = str(tmp_path / 'index' / 'DAVIS.json')
    make_index(['--dataset', 'DAVIS', '--root', root, '--out', out])
    with open(out) as f:
        index = json.load(f)
    assert index == {'dataset': 'DAVIS', 'splits': {'val': [
        {'name': 'boat', 'n_frames': 3, 'n_objects': 2},
        {'name': 'bear', 'n_frames': 2, 'n_objects': 2}]}}
    assert 'skipping DAVIS train' in capsys.readouterr().err
    make_davis(root, '2016', 'val', {'bear': 2}, jpegs)
    make_index(['--dataset', 'DAVIS2016', '--root', root, '--split', 'val', '--out', out])
    with open(out) as f:
        assert json.load(f)['splits'] == {'val': [{'name': 'bear', 'n_frames': 2, 'n_objects': 1}]}
    capsys.readouterr()
    assert run_command(make_index, ['--dataset', 'DAVIS2016', '--root', root, '--split', 'train',
                                    '--out', out]) == 2
    assert re.match(r'error: .*ImageSets/2016/train.txt', capsys.readouterr().err)


@pytest.mark.parametrize('name', ['../escape', '/tmp/absolute', 'a/b', '..'])
def test_sequence_names_that_are_paths_are_refused(cfg, jpegs, name):
    root = cfg.DATASETS.DAVIS.ROOT
    make_davis(root, '2017', 'val', {'bear': 2}, jpegs)
    write_text(os.path.join(root, 'ImageSets', '2017', 'val.txt'), ['bear', name])
    with pytest.raises(DataError, match=f'val.txt: sequence name {re.escape(repr(name))} is not a plain name'):
        list_videos(cfg, 'DAVIS', 'val')


def test_youtube_vos_video_and_frame_names_that_are_paths_are_refused(cfg, jpegs):
    root = cfg.DATASETS.YOUTUBE_VOS.ROOT
    make_youtube_valid(root, jpegs)
    meta_path = os.path.join(root, 'valid', 'meta.json')
    with open(meta_path) as f:
        meta = json.load(f)
    good = meta['videos']['a1']
    for videos, fragment in (({'../../etc': good}, "video name '../../etc'"),
                             ({'a1': {'objects': {'1': {'frames': ['../00000']}}}}, "frame name of video 'a1'")):
        write_text(meta_path, [json.dumps({'videos': videos})])
        with pytest.raises(DataError, match=re.escape(fragment)):
            list_videos(cfg, 'YOUTUBE_VOS', 'valid')


def test_make_index_exit_statuses(cfg, tmp_path):
    command = [sys.executable, '-m', 'datasets.make_index', '--dataset', 'DAVIS', '--split', 'val',
               '--root', str(tmp_path / 'absent'), '--out', str(tmp_path / 'index.json')]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and 'Traceback' not in done.stderr
    assert done.stderr.startswith('error: ') and 'absent' in done.stderr
    assert not os.path.exists(tmp_path / 'index.json')
