"""utils.video_io: video files and frame folders in, prefetching, mp4 out."""
import logging
import os
import threading
import time

import av
import cv2
import numpy as np
import pytest

from conftest import DAVIS_TRAIN
from utils import video_io
from utils.io import read_frame
from utils.video_io import PrefetchReader, VideoIOError, VideoWriter, natural_key, open_frames

SIZE = (96, 160)  # H, W
RED = np.array([255, 0, 0], np.uint8)


def davis_frames(count: int) -> list:
    folder = os.path.join(DAVIS_TRAIN, 'JPEGImages', '480p', 'bear')
    frames = [read_frame(os.path.join(folder, f'{i:05d}.jpg')) for i in range(count)]
    return [cv2.resize(frame, SIZE[::-1], interpolation=cv2.INTER_AREA) for frame in frames]


def write_mp4(path: str, frames: list, fps: float = 10.0) -> None:
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), fps, SIZE[::-1])
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def numbered_folder(folder, count: int, names: str = 'frame{}.png') -> None:
    """Frames whose pixels all hold their number, so the reading order can be checked."""
    folder.mkdir(exist_ok=True)
    for i in range(1, count + 1):
        cv2.imwrite(str(folder / names.format(i)), np.full((8, 12, 3), i * 10, np.uint8))


def test_video_file_frames_are_rgb_in_order(tmp_path):
    frames = davis_frames(5) + [np.broadcast_to(RED, SIZE + (3,)).copy()]
    write_mp4(str(tmp_path / 'clip.mp4'), frames)
    video = open_frames(str(tmp_path / 'clip.mp4'))
    assert (len(video), video.size, video.fps, video.length_is_exact) == (6, SIZE, 10.0, False)
    decoded = list(video)
    assert len(decoded) == 6 and all(f.shape == SIZE + (3,) and f.dtype == np.uint8 for f in decoded)
    for original, frame in zip(frames[:5], decoded[:5]):
        assert np.abs(original.astype(int) - frame).mean() < 12
    assert decoded[5][..., 0].mean() > 200 and decoded[5][..., 2].mean() < 40  # RGB, not BGR
    assert len(list(video)) == 6  # iterating again starts from the first frame


def test_folder_is_sorted_naturally_and_skips_other_files(tmp_path):
    numbered_folder(tmp_path / 'frames', 12)
    (tmp_path / 'frames' / 'notes.txt').write_text('not a frame')
    video = open_frames(str(tmp_path / 'frames'), fps=30)
    assert (len(video), video.size, video.fps, video.length_is_exact) == (12, (8, 12), 30.0, True)
    assert [int(frame[0, 0, 0]) // 10 for frame in video] == list(range(1, 13))
    assert sorted(['b10', 'a2', 'b9', 'a10'], key=natural_key) == ['a2', 'a10', 'b9', 'b10']


def test_folder_frames_are_read_lazily(tmp_path):
    numbered_folder(tmp_path / 'frames', 4)
    frames = iter(open_frames(str(tmp_path / 'frames')))
    next(frames)
    os.remove(tmp_path / 'frames' / 'frame3.png')
    next(frames)
    with pytest.raises(VideoIOError):
        next(frames)


def test_corrupt_frame_stops_after_the_good_ones(tmp_path):
    folder = tmp_path / 'frames'
    folder.mkdir()
    for i, frame in enumerate(davis_frames(5)):
        cv2.imwrite(str(folder / f'{i:05d}.jpg'), frame)
    data = (folder / '00003.jpg').read_bytes()
    (folder / '00003.jpg').write_bytes(data[:len(data) // 2])
    read = []
    with pytest.raises(VideoIOError, match=r'00003\.jpg: frame 3 cannot be decoded') as error:
        for frame in open_frames(str(folder)):
            read.append(frame)
    assert len(read) == 3
    assert str(folder) in str(error.value)


def test_folder_frames_of_different_sizes(tmp_path):
    numbered_folder(tmp_path / 'frames', 3)
    cv2.imwrite(str(tmp_path / 'frames' / 'frame4.png'), np.zeros((10, 12, 3), np.uint8))
    with pytest.raises(VideoIOError, match=r'frame4\.png: frame 3 is 10x12 .*frame1\.png is 8x12'):
        list(open_frames(str(tmp_path / 'frames')))


@pytest.mark.parametrize('make, message', [
    (lambda p: p / 'missing.mp4', 'no such video file or frame folder'),
    (lambda p: p / 'empty', 'no frames in this folder'),
    (lambda p: p / 'empty.mp4', 'cannot open this video'),
    (lambda p: p / 'junk.avi', 'cannot open this video'),
    (lambda p: p / 'one.png', 'single image'),
])
def test_unusable_sources_name_the_path(tmp_path, make, message):
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'readme.txt').write_text('no frames here')
    (tmp_path / 'empty.mp4').write_bytes(b'')
    (tmp_path / 'junk.avi').write_bytes(b'not a video' * 50)
    cv2.imwrite(str(tmp_path / 'one.png'), np.zeros((4, 4, 3), np.uint8))
    path = str(make(tmp_path))
    with pytest.raises(VideoIOError, match=message) as error:
        open_frames(path)
    assert path in str(error.value)


def test_prefetch_keeps_order_and_reraises_at_the_failing_item():
    def items():
        yield from range(5)
        raise VideoIOError('frame 5 is broken')

    received = []
    with pytest.raises(VideoIOError, match='frame 5 is broken'):
        for item in PrefetchReader(items(), depth=2):
            received.append(item)
    assert received == [0, 1, 2, 3, 4]


def test_prefetch_reads_ahead_a_bounded_number_and_stops_on_close():
    produced = []

    def endless():
        while True:
            produced.append(len(produced))
            yield produced[-1]

    reader = PrefetchReader(endless(), depth=3)
    assert next(reader) == 0
    time.sleep(0.3)
    assert len(produced) <= 1 + 3 + 1  # consumed + queued + one waiting to be queued
    reader.close()
    assert not any(t.name == 'frame-prefetch' and t.is_alive() for t in threading.enumerate())
    with pytest.raises(StopIteration):
        next(reader)


def test_prefetch_of_a_frame_source_has_its_length(tmp_path):
    numbered_folder(tmp_path / 'frames', 6)
    source = open_frames(str(tmp_path / 'frames'))
    with PrefetchReader(source) as reader:
        assert len(reader) == 6
        assert [int(frame[0, 0, 0]) // 10 for frame in reader] == list(range(1, 7))


def test_writer_renames_on_close_only(tmp_path):
    frames = davis_frames(4)
    target = tmp_path / 'out' / 'result.mp4'
    with VideoWriter(str(target), fps=12) as writer:
        for frame in frames:
            writer.write(frame)
        assert not target.exists()
        assert len(os.listdir(target.parent)) == 1  # the hidden temporary file
    assert writer.path == str(target) and os.listdir(target.parent) == ['result.mp4']
    video = open_frames(str(target))
    assert (video.size, video.fps) == (SIZE, 12.0)
    decoded = list(video)
    assert len(decoded) == 4 and np.abs(decoded[2].astype(int) - frames[2]).mean() < 12


def test_writer_leaves_nothing_after_a_crash(tmp_path):
    with pytest.raises(RuntimeError):
        with VideoWriter(str(tmp_path / 'result.mp4'), fps=10) as writer:
            writer.write(davis_frames(1)[0])
            raise RuntimeError('model failed')
    assert os.listdir(tmp_path) == []


def test_writer_rejects_a_frame_of_another_size(tmp_path):
    with VideoWriter(str(tmp_path / 'result.mp4'), fps=10, size=SIZE) as writer:
        with pytest.raises(ValueError, match='frame 0 is 8x8'):
            writer.write(np.zeros((8, 8, 3), np.uint8))
        writer.write(np.zeros(SIZE + (3,), np.uint8))
    assert len(list(open_frames(str(tmp_path / 'result.mp4')))) == 1


def probe(path: str):
    """(codec name, pixel format, (H, W), decoded frames as RGB) of a video, decoded with PyAV."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format='rgb24') for frame in container.decode(stream)]
        return stream.codec_context.name, stream.codec_context.format.name, (stream.height, stream.width), frames


def test_writer_encodes_h264_yuv420p_with_the_index_first_and_odd_sizes_padded(tmp_path):
    frames = [frame[:95, :159].copy() for frame in davis_frames(5)]          # odd height and width
    with VideoWriter(str(tmp_path / 'result.mp4'), fps=24, size=(95, 159)) as writer:
        for frame in frames:
            writer.write(frame)
    assert writer.frames_written == 5 and writer.path == str(tmp_path / 'result.mp4')
    codec, pix_fmt, size, decoded = probe(writer.path)
    assert (codec, pix_fmt, size, len(decoded)) == ('h264', 'yuv420p', (96, 160), 5)
    # H.264 at this size is 4-6 levels off on average (the encoder's threads move it a little),
    # about as far as neighbouring frames are apart: each frame is held to be nearest its own
    # original; black padding would be about 120 levels off the edge row
    errors = np.array([[np.abs(frame[:95, :159].astype(int) - original).mean() for original in frames]
                       for frame in decoded])
    assert (errors.argmin(axis=1) == np.arange(5)).all() and errors.diagonal().max() < 10, errors
    for frame in decoded:
        assert np.abs(frame[95].astype(int) - frame[94]).mean() < 12                 # padding repeats the edge
    with open(writer.path, 'rb') as f:
        header = f.read()
    assert header.index(b'moov') < header.index(b'mdat')                            # +faststart


def test_writer_falls_back_to_opencv_with_one_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(video_io, 'H264_ENCODER', 'no-such-encoder')
    with caplog.at_level(logging.WARNING, logger='utils.video_io'):
        with VideoWriter(str(tmp_path / 'result.mp4'), fps=10) as writer:
            for frame in davis_frames(3):
                writer.write(frame)
    assert os.listdir(tmp_path) == ['result.mp4']
    assert len(caplog.records) == 1 and 'no-such-encoder' in caplog.text and 'mp4v' in caplog.text
    codec, _, size, decoded = probe(writer.path)
    assert (codec, size, len(decoded)) == ('mpeg4', SIZE, 3)


def test_writer_falls_back_to_mjpg_avi(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(video_io, 'H264_ENCODER', 'no-such-encoder')
    monkeypatch.setattr(video_io, 'OPENCV_CODEC', 'QQQQ')  # a codec no mp4 muxer accepts
    with caplog.at_level(logging.WARNING, logger='utils.video_io'):
        with VideoWriter(str(tmp_path / 'result.mp4'), fps=10) as writer:
            for frame in davis_frames(3):
                writer.write(frame)
    assert writer.path == str(tmp_path / 'result.avi')
    assert os.listdir(tmp_path) == ['result.avi']
    assert len(caplog.records) == 1 and 'result.avi' in caplog.text
    assert len(list(open_frames(writer.path))) == 3
