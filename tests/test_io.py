"""utils.io: frames of every bit depth, atomic writes with the umask's mode, write errors named."""
import errno
import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from utils.io import DataError, WriteError, atomic_write, read_frame, read_mask, write_palette_mask


@pytest.fixture
def umask():
    def set_umask(value):
        os.umask(value)
    previous = os.umask(0o022)
    yield set_umask
    os.umask(previous)


def test_16_bit_greyscale_frames_are_scaled_to_8_bits(tmp_path):
    ramp = (np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / 'deep.png')
    with Image.open(tmp_path / 'deep.png') as image:
        assert image.mode.startswith('I')
    frame = read_frame(str(tmp_path / 'deep.png'))
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    assert np.array_equal(frame[..., 0], expected) and np.array_equal(frame[..., 2], expected)
    assert 0 < frame.mean() < 255


def test_a_fifo_is_not_read(tmp_path, no_hang):
    os.mkfifo(tmp_path / 'pipe.png')
    with pytest.raises(DataError, match='pipe.png: frame is not a regular file'):
        read_frame(str(tmp_path / 'pipe.png'))
    with pytest.raises(DataError, match='pipe.png: mask is not a regular file'):
        read_mask(str(tmp_path / 'pipe.png'))


@pytest.mark.parametrize('mask, mode', [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_umask_mode(tmp_path, umask, mask, mode):
    umask(mask)
    path = str(tmp_path / 'ids.png')
    write_palette_mask(path, np.ones((4, 4), np.uint8))
    assert stat.S_IMODE(os.stat(path).st_mode) == mode


def test_a_failed_write_keeps_the_earlier_file_and_names_it(tmp_path):
    path = str(tmp_path / 'result.txt')
    with open(path, 'w') as f:
        f.write('earlier')

    def full_disk(temporary):
        with open(temporary, 'w') as f:
            f.write('part')
        raise OSError(errno.ENOSPC, 'No space left on device')

    with pytest.raises(WriteError, match=r'result.txt: cannot be written \(No space left on device\); '
                                         r'the earlier file is kept'):
        atomic_write(path, full_disk)
    assert os.listdir(tmp_path) == ['result.txt']
    with open(path) as f:
        assert f.read() == 'earlier'


def test_results_are_written_whole_and_never_replaced(tmp_path):
    from utils.io import check_new_result, write_json
    path = str(tmp_path / 'results.json')
    assert check_new_result(path) == path
    write_json(path, {'fps': [1.5, 2]})
    assert json.loads(open(path).read()) == {'fps': [1.5, 2]} and os.listdir(tmp_path) == ['results.json']
    with pytest.raises(DataError, match='results.json: already exists; choose another --out'):
        check_new_result(path)
    with pytest.raises(TypeError):                    # not serialisable: nothing left behind
        write_json(str(tmp_path / 'broken.json'), {'fps': object()})
    assert os.listdir(tmp_path) == ['results.json']
