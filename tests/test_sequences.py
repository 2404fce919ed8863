"""Benchmark videos streamed through a segmenter, the next one opened while one runs."""
import copy
import os
import threading

import numpy as np
import pytest

from clips import davis_root, one_object_clip, restore_cfg, two_object_clip  # noqa: F401
from config import cfg as default_cfg
from core.sequences import SplitStreams, first_video_objects, layout, stream_video
from datasets.registry import list_videos
from utils.io import DataError


class RecordingSegmenter:
    """Yields each frame's first channel as its ids and records the warm-ups it is asked for."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.events = []
        self.lock = threading.Lock()

    def warm_up(self, n_objects, frame_size):
        with self.lock:
            self.events.append(('warm_up', n_objects, tuple(frame_size)))

    def segment(self, frames, objects):
        with self.lock:
            self.events.append(('segment', len(objects)))
        for frame in frames:
            yield frame[..., 0]


@pytest.fixture(scope='module')
def clips():
    return {'hike': two_object_clip(3), 'bear': one_object_clip('bear', 3), 'boat': one_object_clip('boat', 2)}


def split(tmp_path, clips):
    cfg = copy.deepcopy(default_cfg)
    cfg.DATASETS.DAVIS.ROOT = davis_root(str(tmp_path / 'DAVIS'), clips)
    return cfg, list_videos(cfg, 'DAVIS', 'train')


def prefetch_threads(before=()):
    """The frame-prefetch threads alive now that were not in `before` (other tests' may linger)."""
    return [thread for thread in threading.enumerate() if thread.name == 'frame-prefetch' and thread not in before]


def test_the_next_video_is_opened_and_warmed_up_once_a_video_gives_its_first_mask(tmp_path, clips):
    cfg, videos = split(tmp_path, clips)
    before = prefetch_threads()
    segmenter = RecordingSegmenter(cfg)
    alone = [[ids for _, ids in stream_video(segmenter, video)] for video in videos]
    segmenter.events.clear()
    with SplitStreams(segmenter, videos) as streams:
        streamed = []
        for video, stream in streams:
            pairs = list(stream)
            streamed.append([ids for _, ids in pairs])
            assert [frame.shape for frame, _ in pairs] == [(90, 160, 3)] * len(video)
    assert all(np.array_equal(a, b) for video_a, video_b in zip(alone, streamed) for a, b in zip(video_a, video_b))
    assert [len(v) for v in streamed] == [3, 3, 2]
    # hike: 2 objects, bear and boat: 1; the first video is not warmed up (nothing runs before it)
    assert segmenter.events == [('segment', 2), ('warm_up', 1, (90, 160)), ('segment', 1),
                                ('warm_up', 1, (90, 160)), ('segment', 1)]
    assert not prefetch_threads(before)


def test_without_read_ahead_each_video_is_opened_at_its_turn(tmp_path, clips):
    cfg, videos = split(tmp_path, clips)
    segmenter = RecordingSegmenter(cfg)
    with SplitStreams(segmenter, videos, read_ahead=False) as streams:
        assert [len(list(stream)) for _, stream in streams] == [3, 3, 2]
    assert segmenter.events == [('segment', 2), ('segment', 1), ('segment', 1)]


def test_an_error_of_the_next_video_comes_at_its_turn_after_every_mask_of_this_one(tmp_path, clips):
    frames, masks = clips['bear']
    cfg, videos = split(tmp_path, {'hike': clips['hike'], 'bear': (frames, [np.zeros_like(masks[0])] + masks[1:])})
    segmenter = RecordingSegmenter(cfg)
    with SplitStreams(segmenter, videos) as streams:
        iterator = iter(streams)
        video, stream = next(iterator)
        assert video.name == 'hike' and len(list(stream)) == 3
        video, stream = next(iterator)
        with pytest.raises(DataError, match='bear.*00000.png: the first mask has no object'):
            next(stream)
    assert segmenter.events == [('segment', 2)]


def test_leaving_early_closes_the_video_opened_ahead(tmp_path, clips):
    cfg, videos = split(tmp_path, clips)
    before = prefetch_threads()
    segmenter = RecordingSegmenter(cfg)
    with SplitStreams(segmenter, videos) as streams:
        for video, stream in streams:
            next(stream)                 # the first mask: bear is opened ahead, its frames read
            stream.close()
            break
    assert ('warm_up', 1, (90, 160)) in segmenter.events
    assert not prefetch_threads(before)


def test_the_first_videos_objects_are_read_once_and_give_its_layout(tmp_path, clips, monkeypatch):
    cfg, videos = split(tmp_path, clips)
    first = first_video_objects(videos, cfg)
    assert layout(first) == (2, (90, 160))
    assert layout(first_video_objects(videos[1:], cfg)) == (1, (90, 160))
    assert first_video_objects([], cfg) is None and layout(None) is None
    import core.sequences as sequences
    read = []
    original = sequences.read_mask
    monkeypatch.setattr(sequences, 'read_mask', lambda path: read.append(os.path.basename(os.path.dirname(path)))
                        or original(path))
    segmenter = RecordingSegmenter(cfg)
    with SplitStreams(segmenter, videos, first_objects=first) as streams:
        assert [len(list(stream)) for _, stream in streams] == [3, 3, 2]
    assert read == ['bear', 'boat']           # hike's masks were read by first_video_objects only
    frames, masks = clips['bear']
    cfg, videos = split(tmp_path / 'void', {'bear': (frames, [np.zeros_like(masks[0])] + masks[1:])})
    assert first_video_objects(videos, cfg) is None          # its error comes at its turn


def test_a_video_skipped_without_reading_its_stream_has_its_frames_closed(tmp_path, clips):
    # bear longer than the reader's 4 frames ahead: its thread waits until the reader is closed
    cfg, videos = split(tmp_path, dict(clips, bear=one_object_clip('bear', 7)))
    before = prefetch_threads()
    segmenter = RecordingSegmenter(cfg)
    with SplitStreams(segmenter, videos) as streams:
        iterator = iter(streams)
        _, stream = next(iterator)
        next(stream)                          # bear is opened ahead, its frames prefetched
        assert len(list(stream)) == 2
        next(iterator)                        # bear: skipped, its stream never started
        streams.opened[1].result()            # its opening (in a thread) has ended
        assert prefetch_threads(before)
        video, stream = next(iterator)
        assert not prefetch_threads(before)   # bear's reader is closed, boat is opened at its turn
        assert video.name == 'boat' and len(list(stream)) == 2
    assert segmenter.events == [('segment', 2), ('warm_up', 1, (90, 160)), ('segment', 1)]
