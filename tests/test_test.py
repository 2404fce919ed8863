"""python runner.py --test: masks of a DAVIS-layout split, J/F per object and overall, CSV files."""
import csv
import logging
import os

import numpy as np
import pytest
import torch

import runner
from clips import SIZE, davis_root, one_object_clip, read_ids, restore_cfg, two_object_clip  # noqa: F401
from utils.evaluate import GLOBAL_COLUMNS


@pytest.fixture(scope='module')
def clips():
    return {'hike': two_object_clip(3), 'bear': one_object_clip('bear', 3)}


def run_test(root, out, dataset, weights, *extra):
    return runner.main(['--test', '--weights', weights, '--dataset', dataset, '--split', 'train', '--output', str(out),
                        '--set', f'DATASETS.{dataset}.ROOT', str(root), *extra])


def read_csv(path):
    with open(path) as f:
        return list(csv.reader(f))


def test_davis_prints_scores_and_writes_masks_and_csvs(tmp_path, clips, checkpoint, capsys):
    root = davis_root(str(tmp_path / 'DAVIS'), clips)
    out = tmp_path / 'out'
    assert run_test(root, out, 'DAVIS', checkpoint, '--set', 'TEST.EVAL_WORKERS', '1', '--visualize') == 0
    printed = capsys.readouterr().out
    for row in ('hike_1', 'hike_2', 'bear_1', 'J&F-Mean', 'F-Decay'):
        assert row in printed
    for name, (_, masks) in clips.items():
        assert sorted(os.listdir(out / name)) == ['00000.png', '00001.png', '00002.png']
        first = read_ids(str(out / name / '00000.png'))
        assert first.shape == (SIZE[1], SIZE[0]) and np.array_equal(first, masks[0])
        assert set(np.unique(read_ids(str(out / name / '00002.png')))) <= set(np.unique(masks[0]))
        assert sorted(os.listdir(out / f'{name}_overlay')) == ['00000.png', '00001.png', '00002.png']
    global_rows = read_csv(out / 'global_results-train.csv')
    assert global_rows[0] == list(GLOBAL_COLUMNS)
    assert 0.0 <= float(global_rows[1][0]) <= 1.0
    sequence_rows = read_csv(out / 'per-sequence_results-train.csv')
    assert [row[0] for row in sequence_rows[1:]] == ['hike_1', 'hike_2', 'bear_1']


def test_a_second_run_into_the_same_output_folder_is_refused_and_the_first_kept(tmp_path, clips, checkpoint,
                                                                                 capsys):
    root = davis_root(str(tmp_path / 'DAVIS'), {'bear': clips['bear']})
    out = tmp_path / 'out'
    assert run_test(root, out, 'DAVIS', checkpoint, '--set', 'TEST.EVAL_WORKERS', '1') == 0
    before = {name: (out / name).stat().st_mtime_ns for name in os.listdir(out)}
    capsys.readouterr()
    assert run_test(root, out, 'DAVIS', checkpoint, '--set', 'TEST.EVAL_WORKERS', '1') == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f'error: {out}: the output folder is not empty')
    assert {name: (out / name).stat().st_mtime_ns for name in os.listdir(out)} == before


def test_davis2016_is_one_object_per_video(tmp_path, clips, checkpoint, capsys):
    root = davis_root(str(tmp_path / 'DAVIS'), {'hike': clips['hike']})
    out = tmp_path / 'out'
    assert run_test(root, out, 'DAVIS2016', checkpoint, '--set', 'TEST.EVAL_WORKERS', '2') == 0
    printed = capsys.readouterr().out
    assert 'hike_1' in printed and 'hike_2' not in printed
    first = read_ids(str(out / 'hike' / '00000.png'))
    assert np.array_equal(first, (clips['hike'][1][0] != 0).astype(np.uint8))    # both objects as one
    assert [row[0] for row in read_csv(out / 'per-sequence_results-train.csv')[1:]] == ['hike_1']


def test_split_without_ground_truth_writes_masks_only(tmp_path, clips, checkpoint, caplog):
    root = davis_root(str(tmp_path / 'DAVIS'), {'bear': clips['bear']}, annotated=False)
    out = tmp_path / 'out'
    with caplog.at_level(logging.INFO):
        assert run_test(root, out, 'DAVIS', checkpoint) == 0
    assert 'no public ground truth' in caplog.text
    assert sorted(os.listdir(out / 'bear')) == ['00000.png', '00001.png', '00002.png']
    assert not [name for name in os.listdir(out) if name.endswith('.csv')]


def _sharded_worker(rank, world_size, port, root, out, weights):
    os.environ.update({'WORLD_SIZE': str(world_size), 'RANK': str(rank), 'LOCAL_RANK': str(rank),
                       'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port)})
    import torch
    torch.set_num_threads(1)
    status = run_test(root, out, 'DAVIS', weights, '--set', 'TEST.EVAL_WORKERS', '1')
    torch.distributed.destroy_process_group()
    assert status == 0


def test_videos_sharded_over_processes_give_the_same_scores(tmp_path, clips, checkpoint):
    """torchrun-style: two processes (gloo) each take a share of the videos; rank 0 merges."""
    import socket

    import torch.multiprocessing as mp
    root = davis_root(str(tmp_path / 'DAVIS'), clips)
    assert run_test(root, tmp_path / 'single', 'DAVIS', checkpoint, '--set', 'TEST.EVAL_WORKERS', '1') == 0
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    mp.spawn(_sharded_worker, args=(2, port, root, str(tmp_path / 'sharded'), checkpoint), nprocs=2)
    for name in ('global_results-train.csv', 'per-sequence_results-train.csv'):
        assert read_csv(tmp_path / 'sharded' / name) == read_csv(tmp_path / 'single' / name)
    for video in clips:
        assert sorted(os.listdir(tmp_path / 'sharded' / video)) == ['00000.png', '00001.png', '00002.png']


def test_errors_name_the_sequence_and_its_mask_file(tmp_path, clips, synth_checkpoint, capsys):
    frames, masks = clips['bear']
    void = [np.full_like(masks[0], 255)] + list(masks[1:])
    root = davis_root(str(tmp_path / 'DAVIS'), {'bear': (frames, void)})
    assert run_test(root, tmp_path / 'out', 'DAVIS', synth_checkpoint) == 2
    error = capsys.readouterr().err
    assert 'Traceback' not in error
    first = os.path.join(root, 'Annotations', '480p', 'bear', '00000.png')
    message = error[error.index('error: '):]
    assert message.startswith(f'error: bear: {first}: the first mask has no object')
    assert message.count('\n') == 1


def test_short_sequences_are_left_out_of_the_scores(tmp_path, clips, synth_checkpoint, caplog):
    frames, masks = clips['bear']
    root = davis_root(str(tmp_path / 'DAVIS'), {'bear': clips['bear'], 'pair': (frames[:2], masks[:2])})
    out = tmp_path / 'out'
    with caplog.at_level(logging.WARNING):
        assert run_test(root, out, 'DAVIS', synth_checkpoint, '--set', 'TEST.EVAL_WORKERS', '1') == 0
    assert 'left out of the scores: pair' in caplog.text
    assert [row[0] for row in read_csv(out / 'per-sequence_results-train.csv')] == ['Sequence', 'bear_1']
    assert all(read_csv(out / 'global_results-train.csv')[1])       # no empty (NaN) field
    assert sorted(os.listdir(out / 'pair')) == ['00000.png', '00001.png']


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
@pytest.mark.parametrize('precision', ['fp32', 'bf16'])
def test_reading_ahead_writes_the_same_masks_on_the_gpu(tmp_path, clips, checkpoint, precision):
    """Videos of two object counts and two sizes, each opened and warmed up while the one
    before runs (TEST.READ_AHEAD), give the masks of a run that opens each at its turn."""
    videos = dict(clips, boat=one_object_clip('boat', 3, size=(128, 72)), hike2=two_object_clip(4))
    root = davis_root(str(tmp_path / 'DAVIS'), videos)
    for ahead in (True, False):
        assert run_test(root, tmp_path / f'ahead-{ahead}', 'DAVIS', checkpoint, '--set', 'TEST.PRECISION',
                        precision, 'TEST.READ_AHEAD', str(ahead)) == 0
    for video, (frames, _) in videos.items():
        for t in range(len(frames)):
            assert np.array_equal(read_ids(tmp_path / 'ahead-True' / video / f'{t:05d}.png'),
                                  read_ids(tmp_path / 'ahead-False' / video / f'{t:05d}.png')), (video, t)


class RecordingScorer:
    """Stands in for the scoring pool: records each job and which mask files existed then."""

    def __init__(self):
        self.submitted = []

    def submit(self, score, job):
        self.submitted.append((job, {p for p in job.pred_paths if os.path.exists(p)}))


def test_score_parts_are_submitted_in_order_once_their_masks_are_written(tmp_path):
    from types import SimpleNamespace
    from core.scoring import read_span, video_parts
    from core.test import ScoredAsWritten, _score_job
    from utils.io import write_palette_mask
    names = [f'{t:05d}' for t in range(20)]
    video = SimpleNamespace(name='v', output_names=names, binary=False,
                            ground_truth={t: str(tmp_path / f'gt{t}.png') for t in range(0, 20, 2)})
    scorer = RecordingScorer()
    parts = ScoredAsWritten(scorer, video, str(tmp_path), False, 2)        # 8 parts for two workers
    (tmp_path / 'v').mkdir()
    submitted_by_frame = []
    for t in range(20):
        write_palette_mask(str(tmp_path / 'v' / f'{names[t]}.png'), np.zeros((4, 4), np.uint8))
        parts.written(t)
        submitted_by_frame.append(len(scorer.submitted))
    assert parts.finish() == 8 and len(scorer.submitted) == 8
    expected = video_parts(_score_job(video, str(tmp_path), False), 8)
    assert [job for job, _ in scorer.submitted] == expected            # the parts, in frame order
    for job, existing in scorer.submitted:                             # each with every file it reads
        low, high = read_span(job)
        assert set(job.pred_paths[low:high]) <= existing
    assert submitted_by_frame[9] == 4 and submitted_by_frame[17] == 7   # the last part waits for frame 18
    none = ScoredAsWritten(scorer, SimpleNamespace(name='w', output_names=names, binary=False, ground_truth={}),
                           str(tmp_path), False, 4)
    none.written(19)
    assert none.finish() == 0 and len(scorer.submitted) == 8
    inline = ScoredAsWritten(scorer, video, str(tmp_path), False, 1)       # scored in the caller: after the video
    inline.written(19)
    assert len(scorer.submitted) == 8
    assert inline.finish() == 1 and scorer.submitted[-1][0] == video_parts(_score_job(video, str(tmp_path), False), 1)[0]
