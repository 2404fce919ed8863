"""Scoring written masks: a video scored in parts (several workers) gives the records of the
whole video, and the same errors."""
import os

import numpy as np
import pytest
from PIL import Image

from core.scoring import ScoreJob, merge_parts, score_files, video_parts
from utils.evaluate import evaluate_sequence
from utils.io import DataError


def moving_objects(n_frames: int, seed: int, void: bool = True) -> np.ndarray:
    """(T, 48, 64) ids: three boxes drifting, with a void border around the first."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((n_frames, 48, 64), np.uint8)
    for t in range(n_frames):
        for k, (y, x) in enumerate(rng.integers(2, 30, size=(3, 2)), start=1):
            ids[t, y:y + 14, x:x + 20] = k
            if void and k == 1:
                ids[t, max(y - 1, 0), x:x + 20] = 255
    return ids


def write_video(folder: str, ids: np.ndarray) -> list:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for t, frame in enumerate(ids):
        path = os.path.join(folder, f'{t:05d}.png')
        Image.fromarray(frame, mode='L').save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize('n_frames', [1, 2, 3, 9, 20])
def test_parts_cover_the_scored_frames_once_in_order(n_frames):
    job = ScoreJob('v', ['g'] * n_frames, ['p'] * n_frames, False, False)
    for parts in (1, 2, 4, 30):
        frames = [part.frames for part in video_parts(job, parts)]
        assert 1 <= len(frames) <= parts
        covered = [t for first, stop in frames for t in range(first, stop)]
        assert covered == list(range(1, max(n_frames - 1, 1)))
        assert n_frames < 3 or all(stop > first for first, stop in frames)


@pytest.mark.parametrize('binary, exclude_void', [(False, False), (False, True), (True, False)])
def test_a_video_scored_in_parts_gives_the_records_of_the_whole(tmp_path, binary, exclude_void):
    gt = moving_objects(11, seed=0)
    pred = moving_objects(11, seed=1, void=False)
    pred[pred == 3] = 0                               # an object the prediction misses
    job = ScoreJob('v', write_video(str(tmp_path / 'gt'), gt), write_video(str(tmp_path / 'pred'), pred),
                   binary, exclude_void)
    expected = evaluate_sequence('v', gt, pred, binary=binary, exclude_void=exclude_void)
    assert len(expected) == (1 if binary else 3) and expected[0].j_frames.shape == (9,)
    for parts in (1, 3, 4):
        records = merge_parts([score_files(part) for part in video_parts(job, parts)])
        assert [(r.sequence, r.object_id) for r in records] == [(r.sequence, r.object_id) for r in expected]
        for got, want in zip(records, expected):
            assert np.array_equal(got.j_frames, want.j_frames, equal_nan=True)
            assert np.array_equal(got.f_frames, want.f_frames, equal_nan=True)
    assert np.array_equal(merge_parts([score_files(job)])[-1].f_frames, expected[-1].f_frames)   # unparted


def test_a_part_raises_what_the_whole_video_raises(tmp_path):
    """An id above the object count in a scored frame of the last part names that frame; a last
    frame (not scored) of the wrong size is refused by the last part."""
    gt = moving_objects(9, seed=0)
    pred = moving_objects(9, seed=1, void=False)
    pred[6, 0, 0] = 7
    job = ScoreJob('v', write_video(str(tmp_path / 'gt'), gt), write_video(str(tmp_path / 'pred'), pred),
                   False, False)
    with pytest.raises(DataError) as whole:
        evaluate_sequence('v', gt, pred)
    parts = video_parts(job, 3)
    score_files(parts[0])
    with pytest.raises(DataError) as part:
        score_files(parts[-1])
    assert str(part.value) == str(whole.value) and 'frame 6 ' in str(part.value)

    pred[6, 0, 0] = 0
    job = job._replace(pred_paths=write_video(str(tmp_path / 'pred2'), pred))
    Image.fromarray(np.zeros((10, 10), np.uint8), mode='L').save(job.pred_paths[-1])
    parts = video_parts(job, 3)
    score_files(parts[0])
    with pytest.raises(DataError, match='predicted mask is 10x10, expected 64x48'):
        score_files(parts[-1])
