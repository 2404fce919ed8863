"""utils.output_safety: outputs kept out of datasets, plain names, own-video folders, stale temporaries."""
import copy
import os
import subprocess
import sys

import pytest

from config import cfg as default_cfg
from utils.io import HOST_TAG, DataError, TEMPORARY_PREFIX, temporary_path
import utils.output_safety as output_safety
from utils.output_safety import (check_name, check_output_folder, check_user_video_output,
                                 dataset_folders, earlier_user_video_outputs, remove_stale_temporaries,
                                 replace_user_video_outputs, unfinished_run_folder)


@pytest.fixture
def cfg(tmp_path):
    options = copy.deepcopy(default_cfg)
    options.DATASETS.DAVIS.ROOT = str(tmp_path / 'data' / 'DAVIS')
    options.DATASETS.ECSSD.MASK_DIR = str(tmp_path / 'data' / 'ECSSD' / 'masks')
    return options


def test_every_configured_dataset_folder_is_protected(cfg, tmp_path):
    folders = dataset_folders(cfg)
    assert folders['cfg.DATASETS.DAVIS.ROOT'] == str(tmp_path / 'data' / 'DAVIS')
    assert 'cfg.DATASETS.DAVIS.TEST_DEV_ROOT' in folders and 'cfg.DATASETS.YOUTUBE_VOS.FLOW_ROOT' in folders
    assert 'cfg.DATASETS.PASCAL_VOC.IMAGE_DIR' in folders and 'cfg.DATASETS.DAVIS.RESOLUTION' not in folders


@pytest.mark.parametrize('output, relation', [
    ('data/DAVIS', 'is'), ('data/DAVIS/Annotations/480p', 'lies inside'), ('data', 'contains'),
    ('data/ECSSD/masks/../masks/run', 'lies inside')])
def test_output_folders_overlapping_a_dataset_are_refused(cfg, tmp_path, output, relation):
    with pytest.raises(DataError, match=f'the output folder {relation} the dataset folder .*Choose another --output'):
        check_output_folder(cfg, str(tmp_path / output))


def test_output_folder_through_a_link_into_a_dataset_is_refused(cfg, tmp_path):
    os.makedirs(tmp_path / 'data' / 'DAVIS' / 'Annotations')
    os.symlink(tmp_path / 'data' / 'DAVIS' / 'Annotations', tmp_path / 'results')
    with pytest.raises(DataError, match='lies inside'):
        check_output_folder(cfg, str(tmp_path / 'results'))
    assert check_output_folder(cfg, str(tmp_path / 'data-results')) == str(tmp_path / 'data-results')


@pytest.mark.parametrize('name', ['../x', 'a/b', '/etc', '..', '.', '', 'a\\b'])
def test_names_that_are_paths_are_refused(name):
    with pytest.raises(DataError, match='is not a plain name'):
        check_name(name, 'val.txt')


def test_plain_names_pass():
    assert check_name('bmx-trees', 'val.txt') == 'bmx-trees'
    assert check_name('a..b', 'val.txt') == 'a..b'


def test_a_non_empty_own_video_folder_needs_overwrite(tmp_path):
    out = tmp_path / 'out'
    check_user_video_output(str(out), overwrite=False)           # absent: fine
    os.makedirs(out / 'masks')
    (out / 'masks' / '00000.png').write_bytes(b'mask')
    (out / 'overlay.mp4').write_bytes(b'video')
    (out / 'notes.txt').write_text('mine')
    with pytest.raises(DataError, match='not empty .*--overwrite'):
        check_user_video_output(str(out), overwrite=False)
    check_user_video_output(str(out), overwrite=True)
    assert earlier_user_video_outputs(str(out)) == [str(out / 'masks'), str(out / 'overlay.mp4')]


def test_a_finished_run_replaces_the_earlier_outputs_and_nothing_else(tmp_path):
    out = tmp_path / 'out'
    os.makedirs(out / 'masks')
    (out / 'masks' / '00000.png').write_bytes(b'old mask')
    (out / 'masks' / '00001.png').write_bytes(b'old mask of a longer video')
    (out / 'overlay.avi').write_bytes(b'old video')
    (out / 'notes.txt').write_text('mine')
    new = unfinished_run_folder(str(out))
    assert os.path.basename(new).startswith('unfinished-run-') and os.listdir(new) == []
    assert unfinished_run_folder(str(out)) != new                     # every run has a folder of its own
    os.makedirs(os.path.join(new, 'masks'))
    with open(os.path.join(new, 'masks', '00000.png'), 'wb') as f:
        f.write(b'new mask')
    with open(os.path.join(new, 'overlay.mp4'), 'wb') as f:
        f.write(b'new video')
    replace_user_video_outputs(new, str(out))
    assert not os.path.exists(new)
    assert sorted(os.listdir(out / 'masks')) == ['00000.png']
    assert (out / 'masks' / '00000.png').read_bytes() == b'new mask'
    assert (out / 'overlay.mp4').read_bytes() == b'new video' and not (out / 'overlay.avi').exists()
    assert (out / 'notes.txt').read_text() == 'mine'


def test_inputs_among_the_replaced_outputs_are_refused(tmp_path):
    out = tmp_path / 'out'
    with pytest.raises(DataError, match='this input lies in .*masks'):
        check_user_video_output(str(out), True, [str(out / 'masks' / '00010.png')])
    check_user_video_output(str(out), True, [str(out / 'first_mask.png')])


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    os.makedirs(tmp_path / 'seq')
    stale = tmp_path / 'seq' / f'{TEMPORARY_PREFIX}{HOST_TAG}-{dead_pid}-00001.abc.png'
    stale.write_bytes(b'half')
    other_host = 'ffffffff' if HOST_TAG != 'ffffffff' else '00000000'
    elsewhere = tmp_path / 'seq' / f'{TEMPORARY_PREFIX}{other_host}-{dead_pid}-00003.abc.png'
    elsewhere.write_bytes(b'being written on another host')
    live = temporary_path(str(tmp_path / 'seq' / '00002.png'))
    assert os.path.basename(live).startswith(f'{TEMPORARY_PREFIX}{HOST_TAG}-{os.getpid()}-00002.')
    (tmp_path / 'seq' / '00000.png').write_bytes(b'result')
    assert remove_stale_temporaries(str(tmp_path)) == [str(stale)]
    assert sorted(os.listdir(tmp_path / 'seq')) == sorted(['00000.png', elsewhere.name, os.path.basename(live)])


def test_replaced_outputs_that_cannot_be_removed_leave_the_new_ones_in_place(tmp_path, monkeypatch, caplog):
    out = tmp_path / 'out'
    os.makedirs(out / 'masks')
    (out / 'masks' / '00000.png').write_bytes(b'old mask')
    new = unfinished_run_folder(str(out))
    os.makedirs(os.path.join(new, 'masks'))
    with open(os.path.join(new, 'masks', '00000.png'), 'wb') as f:
        f.write(b'new mask')

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, 'Permission denied')
    monkeypatch.setattr(output_safety.shutil, 'rmtree', refuse)
    with caplog.at_level('WARNING'):
        replace_user_video_outputs(new, str(out))
    assert (out / 'masks' / '00000.png').read_bytes() == b'new mask'
    assert 'could not be removed' in caplog.text and new in caplog.text

