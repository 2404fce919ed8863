"""Frames paired with their masks, and the video's length handed to the segmenter."""
import numpy as np

from core.streaming import SplitSpeed, segment_stream


class RecordingSegmenter:
    """Yields the first channel of every frame as its 'mask' and records the length it was told."""

    def segment(self, frames, objects):
        self.length = len(frames) if hasattr(frames, '__len__') else None
        for frame in frames:
            yield frame[..., 0]


def test_frames_come_back_with_their_masks_and_the_length_is_known():
    frames = [np.full((2, 3, 3), t, dtype=np.uint8) for t in range(4)]
    segmenter = RecordingSegmenter()
    pairs = list(segment_stream(segmenter, frames, objects=None))
    assert segmenter.length == 4
    assert [int(frame[0, 0, 0]) for frame, _ in pairs] == [0, 1, 2, 3]
    assert all(np.array_equal(ids, frame[..., 0]) for frame, ids in pairs)
    segmenter = RecordingSegmenter()
    assert len(list(segment_stream(segmenter, iter(frames), objects=None))) == 4
    assert segmenter.length is None


def test_split_speed_counts_every_frame_and_keeps_the_first_video_apart(monkeypatch):
    import core.streaming as streaming
    clock = iter(float(t) for t in range(100))       # each reading of the clock: one second later
    monkeypatch.setattr(streaming.time, 'perf_counter', lambda: next(clock))
    speed = SplitSpeed()                             # starts at 0
    for n_frames in (3, 1, 2):
        assert len(list(speed.timed(iter(range(n_frames))))) == n_frames
    assert speed.frames == 6 and speed.inside_frames == 2 + 1      # frame 0 of each video is setup
    # video 1: begins at 1, first mask at 2, ends at 3 (first video: 2 s, inside: 1 s);
    # video 2 (one frame): nothing inside; video 3: first mask at 8, ends at 9 (inside: 1 s)
    assert speed.first_video_seconds == 2.0 and speed.inside_seconds == 2.0
    assert speed.after_last_video() == 1.0 and speed.elapsed() == 11.0
    assert speed.start_seconds == [1.0, 1.0, 1.0]          # each video: from its start to its first mask


def test_runs_without_a_name_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch):
    import copy
    import os

    import core.streaming as streaming
    from config import cfg as global_cfg
    cfg = copy.deepcopy(global_cfg)
    cfg.DIR.OUT_PATH = str(tmp_path / 'output')
    cfg.CONST.EXP_NAME = ''
    monkeypatch.setattr(streaming, 'timestamp', lambda: '2026-12-01_10-00-00')
    first, second = streaming.experiment_dir(cfg), streaming.experiment_dir(cfg)
    assert first == str(tmp_path / 'output' / '2026-12-01_10-00-00')
    assert second == first + '-2'
    assert os.path.isdir(first) and os.path.isdir(second)
    cfg.CONST.EXP_NAME = 'named'
    assert streaming.experiment_dir(cfg) == str(tmp_path / 'output' / 'named')
    assert not os.path.exists(tmp_path / 'output' / 'named')      # a named run's folder is checked later


def test_no_default_folder_is_created_inside_a_dataset(tmp_path):
    import copy
    import os

    import pytest

    from config import cfg as global_cfg
    from core.streaming import experiment_dir
    from utils.io import DataError
    cfg = copy.deepcopy(global_cfg)
    cfg.DATASETS.DAVIS.ROOT = str(tmp_path / 'DAVIS')
    os.makedirs(cfg.DATASETS.DAVIS.ROOT)
    cfg.DIR.OUT_PATH = os.path.join(cfg.DATASETS.DAVIS.ROOT, 'results')
    cfg.CONST.EXP_NAME = ''
    with pytest.raises(DataError, match='lies inside the dataset folder'):
        experiment_dir(cfg)
    assert os.listdir(cfg.DATASETS.DAVIS.ROOT) == []
