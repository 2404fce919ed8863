"""The folder scorer and its CSV files on small DAVIS-layout folders with hand-worked results."""
import glob
import logging
import os
import re
import resource
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import DAVIS_TRAIN, ROOT
from utils.evaluate import (GLOBAL_COLUMNS, evaluate_folder, evaluate_sequence, format_table,
                            split_sequences, summarise, write_csvs)
from utils.io import DataError, read_mask, write_palette_mask

# bear_1 (real, predicted exactly): J = F = 1 on every frame.
# rects_1 predicted exactly; rects_2 right on frames 1-2 and missing on frames 3-4:
# J = F = [1, 1, 0, 0], Mean 0.5, Recall 0.5, Decay mean(frames 1-2) - mean(frames 3-4) = 1.
# Global over the 3 objects: Mean = Recall = 2.5 / 3, Decay = 1 / 3.
EXPECTED_GLOBAL = ('J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n'
                   '0.833,0.833,0.833,0.333,0.833,0.833,0.333\n')
EXPECTED_SEQUENCES = 'Sequence,J-Mean,F-Mean\nbear_1,1.000,1.000\nrects_1,1.000,1.000\nrects_2,0.500,0.500\n'


def write_sequence(folder, frames, first=0, last=None):
    last = len(frames) if last is None else last
    for t in range(first, last):
        write_palette_mask(os.path.join(folder, f'{t:05d}.png'), frames[t])


def write_list(root, year_folder, names):
    path = os.path.join(root, 'ImageSets', year_folder, 'val.txt')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write('\n'.join(names) + '\n')


def rects_sequence():
    """6 frames of 20x20: object 1 at the top left, object 2 at the bottom right."""
    gt = np.zeros((6, 20, 20), dtype=np.uint8)
    gt[:, 2:6, 2:6] = 1
    gt[:, 12:16, 12:16] = 2
    pred = gt.copy()
    pred[3:5][pred[3:5] == 2] = 0
    return gt, pred


def bear_sequence(n_frames=8):
    """The first frames of the real 'bear' annotations, a quarter of their size."""
    folder = os.path.join(DAVIS_TRAIN, 'Annotations', '480p', 'bear')
    paths = sorted(glob.glob(os.path.join(folder, '*.png')))
    return np.stack([cv2.resize(read_mask(p), (214, 120), interpolation=cv2.INTER_NEAREST)
                     for p in paths[:n_frames]])


@pytest.fixture
def folders(tmp_path):
    """(davis_root, results_dir) holding 'bear' and 'rects'; frames 0 and T-1 of rects unpredicted."""
    root, results = str(tmp_path / 'DAVIS'), str(tmp_path / 'results')
    bear = bear_sequence()
    assert bear.max() == 1 and (bear[1:-1] == 1).any()
    write_sequence(os.path.join(root, 'Annotations', '480p', 'bear'), bear)
    write_sequence(os.path.join(results, 'bear'), bear)
    gt, pred = rects_sequence()
    write_sequence(os.path.join(root, 'Annotations', '480p', 'rects'), gt)
    write_sequence(os.path.join(results, 'rects'), pred, first=1, last=5)
    write_list(root, '2017', ['bear', 'rects'])
    return root, results


def read_text(path):
    with open(path) as f:
        return f.read()


def test_folder_results_and_csv_files(folders, capsys):
    root, results = folders
    summary = evaluate_folder(results, root, 'val', workers=1)
    assert list(summary) == list(GLOBAL_COLUMNS)
    assert summary['J-Mean'] == pytest.approx(2.5 / 3) and summary['F-Decay'] == pytest.approx(1 / 3)
    assert read_text(os.path.join(results, 'global_results-val.csv')) == EXPECTED_GLOBAL
    assert read_text(os.path.join(results, 'per-sequence_results-val.csv')) == EXPECTED_SEQUENCES
    printed = capsys.readouterr().out
    assert 'rects_2' in printed and 'J&F-Mean' in printed and '0.833' in printed


def test_worker_processes_give_the_same_files(folders):
    root, results = folders
    summary = evaluate_folder(results, root, 'val', workers=2)
    assert summary['J&F-Mean'] == pytest.approx(2.5 / 3)
    assert read_text(os.path.join(results, 'global_results-val.csv')) == EXPECTED_GLOBAL
    assert read_text(os.path.join(results, 'per-sequence_results-val.csv')) == EXPECTED_SEQUENCES


def test_in_memory_api_matches_the_folder(folders, tmp_path):
    gt, pred = rects_sequence()
    bear = bear_sequence()
    records = evaluate_sequence('bear', bear, bear) + evaluate_sequence('rects', gt, pred)
    assert [r.name for r in records] == ['bear_1', 'rects_1', 'rects_2']
    assert records[2].j == (0.5, 0.5, 1.0) and records[2].f == (0.5, 0.5, 1.0)
    np.testing.assert_array_equal(records[2].j_frames, [1, 1, 0, 0])
    assert summarise(records)['J-Recall'] == pytest.approx(2.5 / 3)
    global_path, sequence_path = write_csvs(str(tmp_path / 'out'), 'val', records)
    assert read_text(global_path) == EXPECTED_GLOBAL and read_text(sequence_path) == EXPECTED_SEQUENCES
    assert 'rects_2' in format_table(records)
    with pytest.raises(ValueError, match='no objects'):
        summarise([])


def test_missing_unreadable_and_wrong_sized_predictions(folders):
    root, results = folders
    path = os.path.join(results, 'rects', '00002.png')
    os.remove(path)
    with pytest.raises(DataError, match=re.escape(f'{path}: mask not found')):
        evaluate_folder(results, root, 'val', workers=1)
    with open(path, 'wb') as f:
        f.write(b'not a png')
    with pytest.raises(DataError, match=re.escape(f'{path}: unreadable')):
        evaluate_folder(results, root, 'val', workers=2)
    write_palette_mask(path, np.zeros((10, 12), dtype=np.uint8))
    wrong_size = f'{path}: predicted mask is 12x10, the ground truth is 20x20'
    with pytest.raises(DataError, match=re.escape(wrong_size)):
        evaluate_folder(results, root, 'val', workers=1)


def test_prediction_with_too_many_ids(folders):
    root, results = folders
    write_palette_mask(os.path.join(results, 'rects', '00002.png'), np.full((20, 20), 3, dtype=np.uint8))
    with pytest.raises(DataError, match=r'rects: frame 2 .* id 3, but the ground truth has 2 object'):
        evaluate_folder(results, root, 'val', workers=1)


def test_command_line(folders):
    root, results = folders
    command = [sys.executable, '-m', 'utils.evaluate', '--results', results, '--davis', root,
               '--split', 'val', '--workers', '2']
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 'rects_2' in done.stdout
    assert read_text(os.path.join(results, 'global_results-val.csv')) == EXPECTED_GLOBAL
    os.remove(os.path.join(results, 'bear', '00003.png'))
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and 'Traceback' not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith('error: ') and '00003.png: mask not found' in done.stderr


def test_davis2016_lists_and_binary_scoring(tmp_path):
    root, results = str(tmp_path / 'DAVIS'), str(tmp_path / 'results')
    gt, _ = rects_sequence()
    write_sequence(os.path.join(root, 'Annotations', '480p', 'rects'), np.where(gt > 0, 255, 0))
    write_sequence(os.path.join(results, 'rects'), (gt > 0).astype(np.uint8))
    lines = [f'/JPEGImages/480p/rects/{t:05d}.jpg /Annotations/480p/rects/{t:05d}.png' for t in range(6)]
    write_list(root, '480p', lines)
    assert split_sequences(root, 'val', 2016) == ['rects']
    assert evaluate_folder(results, root, 'val', year=2016, workers=1)['J&F-Mean'] == 1.0
    write_list(root, '2016', ['rects'])
    write_sequence(os.path.join(results, 'rects'), np.choose(gt, [0, 2, 1]))   # ids 1 and 2 swapped
    write_sequence(os.path.join(root, 'Annotations', '480p', 'rects'), gt)
    assert evaluate_folder(results, root, 'val', year=2016, workers=1)['J&F-Mean'] == 1.0
    rows = read_text(os.path.join(results, 'per-sequence_results-val.csv')).splitlines()
    assert rows[1:] == ['rects_1,1.000,1.000']


def test_sequence_longer_than_256_frames(tmp_path):
    root, results = str(tmp_path / 'DAVIS'), str(tmp_path / 'results')
    gt = np.zeros((262, 8, 8), dtype=np.uint8)
    gt[:, 2:6, 2:6] = 1
    pred = gt.copy()
    pred[131:] = 0                                     # scored frames 1..130 right, 131..260 empty
    write_sequence(os.path.join(root, 'Annotations', '480p', 'long'), gt)
    write_sequence(os.path.join(results, 'long'), pred)
    write_list(root, '2017', ['long'])
    summary = evaluate_folder(results, root, 'val', workers=1)
    # 260 scored frames, bin edges [0, 65, 130, 194, 259]: first quarter all 1, last all 0.
    assert summary['J-Mean'] == 0.5 and summary['J-Recall'] == 0.5 and summary['J-Decay'] == 1.0
    assert summary['F-Mean'] == 0.5 and summary['F-Decay'] == 1.0


def test_missing_lists_and_ground_truth(folders, tmp_path):
    root, results = folders
    with pytest.raises(DataError, match='split list not found'):
        evaluate_folder(results, root, 'train', workers=1)
    with pytest.raises(DataError, match='results folder not found'):
        evaluate_folder(str(tmp_path / 'nowhere'), root, 'val', workers=1)
    frames = os.path.join(root, 'JPEGImages', '480p', 'rects')
    os.makedirs(frames)
    for t in range(7):
        cv2.imwrite(os.path.join(frames, f'{t:05d}.jpg'), np.zeros((20, 20, 3), dtype=np.uint8))
    with pytest.raises(DataError, match='6 ground-truth masks for 7 frames'):
        evaluate_folder(results, root, 'val', workers=1)


def test_sequences_of_two_frames_are_left_out_with_a_warning(folders, caplog):
    root, results = folders
    expected = evaluate_folder(results, root, 'val', workers=1)
    tiny = np.zeros((2, 20, 20), np.uint8)
    tiny[:, 5:10, 5:10] = 1
    write_sequence(os.path.join(root, 'Annotations', '480p', 'tiny'), tiny)
    write_sequence(os.path.join(results, 'tiny'), tiny)
    write_list(root, '2017', ['bear', 'tiny', 'rects'])
    with caplog.at_level(logging.WARNING):
        summary = evaluate_folder(results, root, 'val', workers=1)
    assert 'left out of the scores: tiny (2 frames or fewer' in caplog.text
    assert summary == expected
    assert read_text(os.path.join(results, 'global_results-val.csv')) == EXPECTED_GLOBAL
    assert read_text(os.path.join(results, 'per-sequence_results-val.csv')) == EXPECTED_SEQUENCES


def test_only_short_sequences_is_an_error(tmp_path):
    root, results = str(tmp_path / 'DAVIS'), str(tmp_path / 'results')
    tiny = np.ones((2, 20, 20), np.uint8)
    write_sequence(os.path.join(root, 'Annotations', '480p', 'tiny'), tiny)
    write_sequence(os.path.join(results, 'tiny'), tiny)
    write_list(root, '2017', ['tiny'])
    with pytest.raises(DataError, match='too short to score'):
        evaluate_folder(results, root, 'val', workers=1)
    assert os.listdir(results) == ['tiny']


def test_results_that_cannot_be_written_are_one_error_line(folders):
    """Files may not grow at all (as on a full disk or a read-only folder): the CSV files fail."""
    root, results = folders

    def no_writes():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    command = [sys.executable, '-m', 'utils.evaluate', '--results', results, '--davis', root, '--workers', '1']
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, preexec_fn=no_writes)
    assert done.returncode == 2 and 'Traceback' not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        f'error: {os.path.join(results, "global_results-val.csv")}: cannot be written')
    assert not [name for name in os.listdir(results) if name.endswith('.csv') or name.startswith('.')]


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders')
def test_read_only_results_folder_is_refused_before_scoring(folders):
    root, results = folders
    os.chmod(results, 0o555)
    try:
        with pytest.raises(DataError, match='results folder is not writable'):
            evaluate_folder(results, root, 'val', workers=1)
    finally:
        os.chmod(results, 0o755)
