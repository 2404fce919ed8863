"""tools/make_test_data.py: the bundled DAVIS subset, rebuilt from a DAVIS-layout folder."""
import os

import numpy as np
import pytest
from PIL import Image

from conftest import DAVIS_TRAIN
from tools import make_test_data
from utils.io import read_frame


def test_subset_layout_sizes_masks_and_licence(tmp_path):
    out = str(tmp_path / 'subset')
    make_test_data.main(['--davis', DAVIS_TRAIN, '--out', out, '--sequences', 'bear', 'hike',
                         '--frames', '3', '--size', '64', '36'])
    with open(os.path.join(out, 'ImageSets', '2016', 'train.txt')) as f:
        assert f.read().split() == ['bear', 'hike']
    for name in ('bear', 'hike'):
        assert sorted(os.listdir(os.path.join(out, 'JPEGImages', '480p', name))) == \
            ['00000.jpg', '00001.jpg', '00002.jpg']
        with Image.open(os.path.join(out, 'Annotations', '480p', name, '00002.png')) as mask:
            assert mask.mode == 'P' and mask.size == (64, 36)
            assert set(np.unique(np.array(mask))) == {0, 1}
        assert read_frame(os.path.join(out, 'JPEGImages', '480p', name, '00000.jpg')).shape == (36, 64, 3)
    with open(os.path.join(out, 'README.md')) as f:
        readme = f.read()
    assert 'Creative Commons Attribution 4.0' in readme and 'bear, hike' in readme and '64x36' in readme


def test_an_existing_output_folder_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / 'subset'
    out.mkdir()
    (out / 'mine.txt').write_text('keep')
    with pytest.raises(SystemExit) as exit_info:
        make_test_data.main(['--davis', DAVIS_TRAIN, '--out', str(out), '--sequences', 'bear', '--frames', '1'])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f'error: {out}: already exists; remove it or choose '
                                                    f'another --out']
    assert os.listdir(out) == ['mine.txt']


def test_a_sequence_with_too_few_frames_is_refused_before_writing(tmp_path, capsys):
    out = tmp_path / 'subset'
    with pytest.raises(SystemExit) as exit_info:
        make_test_data.main(['--davis', DAVIS_TRAIN, '--out', str(out), '--sequences', 'bear', '--frames', '999'])
    assert exit_info.value.code == 2
    assert 'fewer than 999 .jpg files' in capsys.readouterr().err
    assert not out.exists()
