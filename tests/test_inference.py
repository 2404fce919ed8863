"""python runner.py --inference: benchmark result layouts, a user's own video, and the Python API."""
import os
import zipfile

import av
import cv2
import numpy as np
import pytest

import runner
from core.inference import VideoSegmenter
from clips import (SIZE, davis_root, frame_folder, read_ids, restore_cfg, two_object_clip,  # noqa: F401
                   youtube_root)
from utils.io import write_palette_mask
from utils.video_io import VideoWriter

HEIGHT, WIDTH = SIZE[1], SIZE[0]


@pytest.fixture(scope='module')
def clip():
    return two_object_clip(6)


def frame_count(path) -> int:
    capture = cv2.VideoCapture(str(path))
    try:
        count = 0
        while capture.read()[0]:
            count += 1
        return count
    finally:
        capture.release()


def zip_names(path):
    with zipfile.ZipFile(path) as archive:
        return sorted(archive.namelist())


def test_davis_results_layout_and_zip(tmp_path, clip, checkpoint):
    frames, masks = clip
    root = davis_root(str(tmp_path / 'DAVIS'), {'hike': (frames[:3], masks[:3])})
    out = tmp_path / 'out'
    assert runner.main(['--inference', '--weights', checkpoint, '--dataset', 'DAVIS', '--split', 'train',
                        '--output', str(out), '--set', 'DATASETS.DAVIS.ROOT', root, '--visualize']) == 0
    names = ['00000.png', '00001.png', '00002.png']
    assert sorted(os.listdir(out / 'hike')) == names
    for name in names:
        assert read_ids(str(out / 'hike' / name)).shape == (HEIGHT, WIDTH)
    assert np.array_equal(read_ids(str(out / 'hike' / '00000.png')), masks[0])
    assert zip_names(out / 'train.zip') == [f'hike/{name}' for name in names]
    assert frame_count(out / 'overlay' / 'hike.mp4') == 3


def test_benchmark_results_never_go_into_a_non_empty_folder(tmp_path, clip, checkpoint, capsys):
    frames, masks = clip
    root = davis_root(str(tmp_path / 'DAVIS'), {'hike': (frames[:3], masks[:3])})
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'notes.txt').write_text('earlier work')
    assert runner.main(['--inference', '--weights', checkpoint, '--dataset', 'DAVIS', '--split', 'train',
                        '--output', str(out), '--set', 'DATASETS.DAVIS.ROOT', root]) == 2
    assert 'the output folder is not empty (it holds notes.txt)' in capsys.readouterr().err
    assert os.listdir(out) == ['notes.txt'] and (out / 'notes.txt').read_text() == 'earlier work'


def test_youtube_vos_listed_frames_object_appearing_mid_video(tmp_path, clip, checkpoint):
    frames, masks = clip
    root = youtube_root(str(tmp_path / 'YouTubeVOS'), 'walkers', frames, masks, {1: [0, 2, 4], 2: [2, 4]})
    out = tmp_path / 'out'
    assert runner.main(['--inference', '--weights', checkpoint, '--dataset', 'YOUTUBE_VOS',
                        '--output', str(out), '--set', 'DATASETS.YOUTUBE_VOS.ROOT', root]) == 0
    video_dir = out / 'Annotations' / 'walkers'
    assert sorted(os.listdir(video_dir)) == ['00000.png', '00002.png', '00004.png']    # listed frames only
    first, appears = read_ids(str(video_dir / '00000.png')), read_ids(str(video_dir / '00002.png'))
    assert first.shape == appears.shape == (HEIGHT, WIDTH)
    assert set(np.unique(first)) == {0, 1}
    assert (appears[masks[2] == 2] == 2).all()             # given at frame 2: segmented from there
    assert zip_names(out / 'valid.zip') == [f'Annotations/walkers/{name}' for name in sorted(os.listdir(video_dir))]


def user_inputs(tmp_path, clip, binary_later=False):
    """A frame folder, a first mask with ids 3 and 7, and a later mask at frame 2: a palette
    mask of id 9, or (binary_later) a 0/255 greyscale mask."""
    frames, masks = clip
    video = frame_folder(str(tmp_path / 'frames'), frames[:4])
    first = np.select([masks[0] == 1, masks[0] == 2], [3, 7], 0).astype(np.uint8)
    later = np.zeros_like(first)
    later[5:30, 110:150] = 9
    write_palette_mask(str(tmp_path / 'first.png'), first)
    if binary_later:
        cv2.imwrite(str(tmp_path / 'later.png'), np.where(later > 0, 255, 0).astype(np.uint8))
    else:
        write_palette_mask(str(tmp_path / 'later.png'), later)
    return video, first, later


@pytest.mark.parametrize('binary_later, new_id', [(False, 9), (True, 8)])
def test_own_video_outputs_keep_user_ids_and_take_late_objects(tmp_path, clip, checkpoint, capsys,
                                                               binary_later, new_id):
    """A later id mask adds its new id; a later binary mask a new object with the next free id."""
    video, first, later = user_inputs(tmp_path, clip, binary_later)
    out = tmp_path / 'out'
    assert runner.main(['--inference', '--video', video, '--mask', str(tmp_path / 'first.png'),
                        '--mask', f'2:{tmp_path / "later.png"}', '--weights', checkpoint,
                        '--output', str(out), '--binary', '--size', '0']) == 0
    names = [f'{t:05d}.png' for t in range(4)]
    assert sorted(os.listdir(out / 'masks')) == names
    ids = [read_ids(str(out / 'masks' / name)) for name in names]
    assert np.array_equal(ids[0], first)
    assert all(set(np.unique(mask)) <= {0, 3, 7, new_id} for mask in ids)
    assert new_id not in ids[0] and new_id not in ids[1] and (ids[2][later == 9] == new_id).all()
    assert frame_count(out / 'overlay.mp4') == 4
    assert sorted(os.listdir(out / 'binary')) == sorted(['3', '7', str(new_id)])
    binary = cv2.imread(str(out / 'binary' / '7' / '00003.png'), cv2.IMREAD_UNCHANGED)
    assert binary.shape == (HEIGHT, WIDTH) and set(np.unique(binary)) <= {0, 255}
    assert np.array_equal(binary == 255, ids[3] == 7)
    summary = capsys.readouterr().out
    assert f'4 frames, 3 object(s), networks at {WIDTH}x{HEIGHT}' in summary and str(out / 'masks') in summary


def test_own_video_file(tmp_path, clip, checkpoint):
    frames, masks = clip
    with VideoWriter(str(tmp_path / 'clip.mp4'), 24.0) as writer:
        for frame in frames[:3]:
            writer.write(frame)
    write_palette_mask(str(tmp_path / 'first.png'), masks[0])
    out = tmp_path / 'out'
    assert runner.main(['--inference', '--video', writer.path, '--mask', str(tmp_path / 'first.png'),
                        '--weights', checkpoint, '--output', str(out), '--precision', 'fp32', '--size', '0']) == 0
    assert sorted(os.listdir(out / 'masks')) == ['00000.png', '00001.png', '00002.png']
    assert frame_count(out / 'overlay.mp4') == 3
    with av.open(str(out / 'overlay.mp4')) as overlay:                  # plays in browsers
        assert overlay.streams.video[0].codec_context.name == 'h264'


def test_own_video_networks_at_the_configured_short_side_outputs_at_input_size(tmp_path, clip, checkpoint, capsys):
    frames, masks = clip
    video = frame_folder(str(tmp_path / 'frames'), frames[:2])
    write_palette_mask(str(tmp_path / 'first.png'), masks[0])
    for options, network in (([], '107x60'), (['--size', '64'], '114x64'), (['--size', '0'], f'{WIDTH}x{HEIGHT}')):
        out = tmp_path / f'out-{network}'
        assert runner.main(['--inference', '--video', video, '--mask', str(tmp_path / 'first.png'),
                            '--weights', checkpoint, '--output', str(out), '--set', 'TEST.VIDEO_SHORT_SIDE', '60',
                            *options]) == 0
        assert f'2 frames, 2 object(s), networks at {network},' in capsys.readouterr().out
        assert read_ids(str(out / 'masks' / '00001.png')).shape == (HEIGHT, WIDTH)


def test_python_api_streams_and_takes_late_objects(clip, checkpoint):
    frames, masks = clip
    consumed = []

    def source():
        for frame in frames[:4]:
            consumed.append(len(consumed))
            yield frame

    segmenter = VideoSegmenter(checkpoint, 'cpu')
    later = np.where(masks[2] == 2, 2, 0).astype(np.uint8)
    segmenter.add_object(2, later)
    outputs = []
    for t, ids in enumerate(segmenter.segment(source(), np.where(masks[0] == 1, 1, 0).astype(np.uint8))):
        assert len(consumed) <= t + 2                       # frames are pulled as masks are produced
        assert ids.shape == (HEIGHT, WIDTH) and ids.dtype == np.uint8
        outputs.append(ids)
    assert len(outputs) == 4
    assert 2 not in outputs[0] and 2 not in outputs[1] and (outputs[2][later == 2] == 2).all()


def test_an_interrupted_own_video_says_what_it_kept(tmp_path, clip, checkpoint, monkeypatch, caplog):
    import core.inference
    import core.results
    from config import cfg
    frames, masks = clip
    video = frame_folder(str(tmp_path / 'frames'), frames)
    write_palette_mask(str(tmp_path / 'first.png'), masks[0])
    write = core.results.VideoResults.write

    def interrupted(self, t, frame, ids):
        if t == 2:
            raise KeyboardInterrupt
        write(self, t, frame, ids)
    monkeypatch.setattr(core.results.VideoResults, 'write', interrupted)
    out = tmp_path / 'out'
    with caplog.at_level('WARNING'), pytest.raises(KeyboardInterrupt):
        core.inference.segment_user_video(cfg, video, [str(tmp_path / 'first.png')], weights=checkpoint,
                                          out_dir=str(out), short_side=0)
    assert sorted(os.listdir(out / 'masks')) == ['00000.png', '00001.png']
    assert frame_count(out / 'overlay.mp4') == 2                     # a whole video of those frames
    assert f'masks of frames 0..1 are kept in {out / "masks"}' in caplog.text
