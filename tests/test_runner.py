"""runner.py: options, config overrides, and one `error:` line with status 2 for every expected failure."""
import json
import os
import resource
import signal
import stat
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import runner
from clips import SIZE, davis_root, frame_folder, read_ids, restore_cfg, two_object_clip  # noqa: F401
from conftest import ROOT
from config import cfg
from utils.io import HOST_TAG, TEMPORARY_PREFIX, write_palette_mask


@pytest.fixture(scope='module')
def clip():
    return two_object_clip(4)


@pytest.fixture
def video(tmp_path, clip):
    return frame_folder(str(tmp_path / 'frames'), clip[0])


@pytest.fixture
def mask(tmp_path, clip):
    path = str(tmp_path / 'mask.png')
    write_palette_mask(path, clip[1][0])
    return path


def own_video(video, mask, weights, output, *extra):
    return ['--inference', '--video', video, '--mask', mask, '--weights', weights, '--output', output,
            '--size', '0', *extra]


def expect_error(capsys, argv, *fragments):
    """Run the CLI in-process; check status 2, one `error:` message holding `fragments`, no traceback."""
    assert runner.main(argv) == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    message = err[err.index('error: '):]
    for fragment in fragments:
        assert fragment in message, f'{fragment!r} not in {message!r}'
    return message


def test_published_invocations_parse():
    args = runner.parse_args(['--test', '--weights=/path/model.pth'])
    assert args.test and not args.inference and args.weights == '/path/model.pth'
    args = runner.parse_args(['--inference', '--weights=davis'])
    assert args.inference and args.video is None and args.benchmark is None
    args = runner.parse_args(['--gpu', '1', '--benchmark', '--frames', '30', '--weights', 'w.pth'])
    assert args.gpu == '1' and args.benchmark == ['--frames', '30', '--weights', 'w.pth']


def test_own_video_options_parse():
    args = runner.parse_args(['--video', 'clip.mp4', '--mask', 'a.png', '--mask', '12:b.png', '--size', '360',
                              '--precision', 'bf16', '--binary', '--resize-mask'])
    assert args.inference and args.mask == [(0, 'a.png'), (12, 'b.png')]
    assert (args.size, args.precision, args.binary, args.resize_mask) == (360, 'bf16', True, True)


@pytest.mark.parametrize('argv', [['--mask', 'a.png'], ['--video', 'v.mp4'], ['--test', '--video', 'v.mp4'],
                                  ['--test', '--inference'], ['--output', 'out'], ['--size', '-1', '--test'],
                                  ['--size', '0'],
                                  ['--video', 'v.mp4', '--mask', 'a.png', '--dataset', 'DAVIS']])
def test_misuse_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner.parse_args(argv)
    assert exit_info.value.code == 2
    assert 'error:' in capsys.readouterr().err


def test_cfg_file_and_set_overrides_are_applied(tmp_path):
    config_file = tmp_path / 'overrides.json'
    config_file.write_text(json.dumps({'TEST': {'MEMORIZE_EVERY': 3, 'FRAME_SCALES': [1.0, 1.5]}}))
    args = runner.parse_args(['--test', '--cfg', str(config_file), '--set', 'TEST.FLIP_LR', 'True',
                              '--set', 'TEST.MEMORIZE_EVERY', '7', '--exp', 'run1', '--precision', 'bf16',
                              '--visualize'])
    runner.configure(args)
    assert cfg.TEST.MEMORIZE_EVERY == 7            # --set comes after --cfg
    assert cfg.TEST.FRAME_SCALES == [1.0, 1.5] and cfg.TEST.FLIP_LR is True
    assert (cfg.CONST.EXP_NAME, cfg.TEST.PRECISION, cfg.TEST.VISUALIZE) == ('run1', 'bf16', True)


def test_runs_without_a_name_claim_a_new_folder_each(tmp_path):
    from core.streaming import experiment_dir
    runner.configure(runner.parse_args(['--test', '--set', 'DIR.OUT_PATH', str(tmp_path)]))
    assert cfg.CONST.EXP_NAME == ''                # named by the job, when it claims its folder
    first, second = experiment_dir(cfg), experiment_dir(cfg)    # e.g. two runs in the same second
    assert first != second and os.path.isdir(first) and os.path.isdir(second)

def test_seed_is_fixed_unless_rand():
    runner.configure(runner.parse_args(['--test']))
    first = torch.rand(3)
    runner.configure(runner.parse_args(['--test']))
    assert torch.equal(first, torch.rand(3))


def test_gpu_sets_visible_devices_and_missing_weights_is_an_error(monkeypatch, capsys):
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '0')        # restored after the test
    expect_error(capsys, ['--gpu', '3', '--test'], '--test needs weights')
    assert os.environ['CUDA_VISIBLE_DEVICES'] == '3'


def test_bad_override_and_bad_config_file(tmp_path, capsys):
    expect_error(capsys, ['--test', '--set', 'TEST.NO_SUCH_KEY', '1'], 'TEST.NO_SUCH_KEY')
    expect_error(capsys, ['--test', '--set', 'TEST.MEMORIZE_EVERY', 'often'], 'TEST.MEMORIZE_EVERY')
    expect_error(capsys, ['--test', '--cfg', str(tmp_path / 'missing.py')], 'missing.py', 'not found')


def test_unreadable_and_empty_videos(tmp_path, mask, capsys):
    empty_file = tmp_path / 'empty.mp4'
    empty_file.write_bytes(b'')
    expect_error(capsys, own_video(str(empty_file), mask, 'w.pth', str(tmp_path / 'out')), 'empty.mp4',
                 'cannot open')
    (tmp_path / 'no_frames').mkdir()
    expect_error(capsys, own_video(str(tmp_path / 'no_frames'), mask, 'w.pth', str(tmp_path / 'out')),
                 'no_frames', 'no frames')
    expect_error(capsys, own_video(str(tmp_path / 'absent.mp4'), mask, 'w.pth', str(tmp_path / 'out')),
                 'absent.mp4')


def test_corrupt_frame_mid_video_keeps_earlier_outputs(tmp_path, video, mask, checkpoint, capsys):
    (tmp_path / 'frames' / '00002.jpg').write_bytes(b'\xff\xd8 not a jpeg')
    out = tmp_path / 'out'
    expect_error(capsys, own_video(video, mask, checkpoint, str(out)), '00002.jpg', 'frame 2',
                 'masks of frames 0..1 are kept')
    assert sorted(os.listdir(out / 'masks')) == ['00000.png', '00001.png']
    capture = cv2.VideoCapture(str(out / 'overlay.mp4'))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 2
    capture.release()
    assert not [name for name in os.listdir(out) if name.startswith('.')]     # no temporary files left


def test_mask_of_another_size_then_resize_mask(tmp_path, video, clip, checkpoint, capsys):
    small = str(tmp_path / 'small.png')
    write_palette_mask(small, cv2.resize(clip[1][0], (80, 45), interpolation=cv2.INTER_NEAREST))
    expect_error(capsys, own_video(video, small, checkpoint, str(tmp_path / 'out')), 'small.png',
                 '45x80', '90x160')
    assert runner.main(own_video(video, small, checkpoint, str(tmp_path / 'out'), '--resize-mask')) == 0
    assert read_ids(str(tmp_path / 'out' / 'masks' / '00003.png')).shape == (SIZE[1], SIZE[0])


def test_mask_without_object(tmp_path, video, capsys):
    blank = str(tmp_path / 'blank.png')
    write_palette_mask(blank, np.zeros((SIZE[1], SIZE[0]), np.uint8))
    expect_error(capsys, own_video(video, blank, 'w.pth', str(tmp_path / 'out')), 'blank.png', 'no object')


def test_too_many_objects(tmp_path, video, capsys):
    three = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    three[10:30, 10:30], three[40:60, 40:60], three[10:30, 100:130] = 1, 2, 3
    path = str(tmp_path / 'three.png')
    write_palette_mask(path, three)
    expect_error(capsys, own_video(video, path, 'w.pth', str(tmp_path / 'out'), '--set', 'TEST.N_MAX_OBJECTS', '2'),
                 'three.png', 'at most 2')


def test_later_mask_past_the_end(tmp_path, video, mask, capsys):
    expect_error(capsys, own_video(video, mask, 'w.pth', str(tmp_path / 'out'), '--mask', f'9:{mask}'),
                 'frame 9', '4 frames')


def test_antialiased_colour_mask_works(tmp_path, video, checkpoint):
    colour = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
    cv2.circle(colour, (60, 45), 20, (255, 0, 0), -1, cv2.LINE_AA)
    cv2.ellipse(colour, (120, 50), (18, 25), 30, 0, 360, (0, 255, 0), -1, cv2.LINE_AA)
    assert len(np.unique(colour.reshape(-1, 3), axis=0)) > 10        # blended edges
    path = str(tmp_path / 'drawn.png')
    Image.fromarray(colour).save(path)
    out = tmp_path / 'out'
    assert runner.main(own_video(video, path, checkpoint, str(out))) == 0
    first = read_ids(str(out / 'masks' / '00000.png'))
    assert set(np.unique(first)) == {0, 1, 2}                      # DAVIS red is 1, green is 2
    assert first[45, 60] == 1 and first[50, 120] == 2


def test_output_folder_not_writable(tmp_path, video, mask, capsys):
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    expect_error(capsys, own_video(video, mask, 'w.pth', str(blocker / 'out')), str(blocker / 'out'),
                 'cannot be written')


def test_truncated_weights(tmp_path, video, mask, checkpoint, capsys):
    truncated = tmp_path / 'truncated.pth'
    with open(checkpoint, 'rb') as f:
        truncated.write_bytes(f.read(1 << 16))
    expect_error(capsys, own_video(video, mask, str(truncated), str(tmp_path / 'out')), 'truncated.pth',
                 'not a readable PyTorch checkpoint')


def test_weights_of_another_network(tmp_path, video, mask, capsys):
    foreign = tmp_path / 'foreign.pth'
    torch.save({'tflownet': {'module.conv.weight': torch.zeros(3)}, 'rmnet': {'module.fc.weight': torch.zeros(2)}},
               foreign)
    expect_error(capsys, own_video(video, mask, str(foreign), str(tmp_path / 'out')), 'foreign.pth',
                 'does not fit')
    expect_error(capsys, own_video(video, mask, str(tmp_path / 'absent.pth'), str(tmp_path / 'out')),
                 'absent.pth', 'no such weights file')


def test_exit_status_of_a_real_process(tmp_path, video, clip):
    small = str(tmp_path / 'small.png')
    write_palette_mask(small, clip[1][0][:45, :80])
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'runner.py'), *own_video(
        video, small, 'w.pth', str(tmp_path / 'out'))], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.startswith('error: ') or '\nerror: ' in result.stderr
    assert 'Traceback' not in result.stderr and '45x80' in result.stderr


def tree(folder):
    """Every file under `folder` with its content, to compare before and after a command."""
    found = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(parent, name), 'rb') as f:
                found[os.path.relpath(os.path.join(parent, name), folder)] = f.read()
    return found


@pytest.fixture
def dataset(tmp_path, clip):
    return davis_root(str(tmp_path / 'DAVIS'), {'two': (clip[0][:3], clip[1][:3])})


@pytest.mark.parametrize('job', ['--test', '--inference'])
@pytest.mark.parametrize('inside', ['Annotations/480p', 'JPEGImages/480p/two', '', '..'])
def test_benchmark_output_overlapping_a_dataset_is_refused(tmp_path, dataset, capsys, job, inside):
    before = tree(dataset)
    output = os.path.normpath(os.path.join(dataset, inside))
    expect_error(capsys, [job, '--dataset', 'DAVIS', '--split', 'train', '--weights', 'w.pth', '--output', output,
                          '--set', 'DATASETS.DAVIS.ROOT', dataset], output, 'the dataset folder', '--output')
    assert tree(dataset) == before


def test_own_video_output_inside_a_dataset_is_refused(tmp_path, dataset, video, mask, capsys):
    before = tree(dataset)
    output = os.path.join(dataset, 'Annotations', '480p', 'two')
    expect_error(capsys, own_video(video, mask, 'w.pth', output, '--set', 'DATASETS.DAVIS.ROOT', dataset),
                 'lies inside the dataset folder')
    assert tree(dataset) == before


def test_sequence_name_with_dots_is_refused_before_anything_is_written(tmp_path, dataset, capsys):
    with open(os.path.join(dataset, 'ImageSets', '2017', 'train.txt'), 'a') as f:
        f.write('../../escaped\n')
    expect_error(capsys, ['--test', '--dataset', 'DAVIS', '--split', 'train', '--weights', 'w.pth', '--output',
                          str(tmp_path / 'out'), '--set', 'DATASETS.DAVIS.ROOT', dataset],
                 'train.txt', "'../../escaped' is not a plain name")
    assert not os.path.exists(tmp_path / 'out') and not os.path.exists(tmp_path / 'escaped')


def test_reusing_an_own_video_output_needs_overwrite(tmp_path, clip, mask, synth_checkpoint, capsys):
    three = frame_folder(str(tmp_path / 'three'), clip[0][:3])
    two = frame_folder(str(tmp_path / 'two'), clip[0][:2])
    out = tmp_path / 'out'
    previous_umask = os.umask(0o022)
    try:
        assert runner.main(own_video(three, mask, synth_checkpoint, str(out))) == 0
    finally:
        os.umask(previous_umask)
    assert sorted(os.listdir(out / 'masks')) == ['00000.png', '00001.png', '00002.png']
    assert stat.S_IMODE(os.stat(out / 'masks' / '00000.png').st_mode) == 0o644       # shared lab servers
    assert stat.S_IMODE(os.stat(out / 'overlay.mp4').st_mode) == 0o644
    (out / 'notes.txt').write_text('the user\'s own file')
    before = tree(str(out))
    expect_error(capsys, own_video(two, mask, synth_checkpoint, str(out)), str(out), 'not empty', '--overwrite')
    assert tree(str(out)) == before
    stale = out / 'masks' / f'{TEMPORARY_PREFIX}{HOST_TAG}-999999999-00007.x.png'
    stale.write_bytes(b'left by a killed run')
    assert runner.main(own_video(two, mask, synth_checkpoint, str(out), '--overwrite', '--binary')) == 0
    assert sorted(os.listdir(out / 'masks')) == ['00000.png', '00001.png']
    assert sorted(os.listdir(out / 'binary' / '1')) == ['00000.png', '00001.png']
    assert (out / 'notes.txt').read_text() == 'the user\'s own file'
    capture = cv2.VideoCapture(str(out / 'overlay.mp4'))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 2
    capture.release()


def test_a_failed_overwrite_keeps_the_earlier_outputs(tmp_path, clip, mask, synth_checkpoint, capsys):
    three = frame_folder(str(tmp_path / 'three'), clip[0][:3])
    out = tmp_path / 'out'
    assert runner.main(own_video(three, mask, synth_checkpoint, str(out), '--binary')) == 0
    before = tree(str(out))
    broken = frame_folder(str(tmp_path / 'broken'), clip[0][:4])
    (tmp_path / 'broken' / '00002.jpg').write_bytes(b'\xff\xd8 not a jpeg')
    expect_error(capsys, own_video(broken, mask, synth_checkpoint, str(out), '--overwrite'), '00002.jpg',
                 'masks of frames 0..1 are kept in', 'unfinished-run-', f'the earlier outputs in {out} are unchanged')
    unfinished = [name for name in os.listdir(out) if name.startswith('unfinished-run-')]
    assert len(unfinished) == 1
    assert {k: v for k, v in tree(str(out)).items() if not k.startswith('unfinished-run-')} == before
    assert sorted(os.listdir(out / unfinished[0] / 'masks')) == ['00000.png', '00001.png']
    # a run that finishes replaces the earlier outputs (binary/ too: this run writes none) and
    # leaves the user's other entries, the unfinished run's folder among them
    assert runner.main(own_video(frame_folder(str(tmp_path / 'two'), clip[0][:2]), mask, synth_checkpoint,
                                 str(out), '--overwrite')) == 0
    assert sorted(os.listdir(out)) == sorted(['masks', 'overlay.mp4', unfinished[0]])
    assert sorted(os.listdir(out / 'masks')) == ['00000.png', '00001.png']

def test_overwrite_refuses_to_delete_an_input_mask(tmp_path, video, clip, synth_checkpoint, capsys):
    out = tmp_path / 'out'
    os.makedirs(out / 'masks')
    corrected = str(out / 'masks' / '00000.png')
    write_palette_mask(corrected, clip[1][0])
    expect_error(capsys, own_video(video, corrected, synth_checkpoint, str(out), '--overwrite'),
                 'this input lies in', 'masks')
    assert os.path.isfile(corrected)


def test_a_failed_own_video_run_leaves_no_empty_folder(tmp_path, video, mask, capsys):
    out = tmp_path / 'runs' / 'new'
    expect_error(capsys, own_video(video, mask, str(tmp_path / 'absent.pth'), str(out)), 'absent.pth')
    assert not os.path.exists(out)
    # the default, timestamped folder too
    expect_error(capsys, ['--inference', '--video', video, '--mask', mask, '--weights', str(tmp_path / 'absent.pth'),
                          '--size', '0', '--set', 'DIR.OUT_PATH', str(tmp_path / 'runs')], 'absent.pth')
    assert os.listdir(tmp_path / 'runs') == []


@pytest.mark.parametrize('argv, fragment', [
    (['--size', '1'], 'at least 32 pixels'),
    (['--mask', '-1:late.png'], 'frame numbers start at 0'),
    (['--mask=-1:late.png'], 'frame numbers start at 0'),
    (['--mask', 'abc:late.png'], "'abc' is not a frame number")])
def test_bad_own_video_options_say_what_is_wrong(tmp_path, video, mask, capsys, argv, fragment):
    with pytest.raises(SystemExit) as exit_info:
        runner.parse_args(['--inference', '--video', video, '--mask', mask, *argv])
    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err


@pytest.mark.parametrize('settings, fragment', [
    (['TEST.MEMORIZE_EVERY', '0'], 'TEST.MEMORIZE_EVERY must be at least 1'),
    (['TEST.FRAME_SCALES', '[]'], 'TEST.FRAME_SCALES is empty'),
    (['TEST.FRAME_SCALES', '[1.0, 0]'], 'TEST.FRAME_SCALES must hold positive numbers')])
def test_test_options_that_cannot_work(tmp_path, video, mask, capsys, settings, fragment):
    expect_error(capsys, own_video(video, mask, 'w.pth', str(tmp_path / 'out'), '--set', *settings), fragment)
    assert not os.path.exists(tmp_path / 'out')


def test_json_config_that_is_not_an_object(tmp_path, capsys):
    config_file = tmp_path / 'list.json'
    config_file.write_text('[1, 2]')
    expect_error(capsys, ['--test', '--cfg', str(config_file)], 'list.json', 'expected a JSON object', 'list')


def test_a_fifo_as_video_is_refused(tmp_path, mask):
    os.mkfifo(tmp_path / 'pipe.mp4')
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'runner.py'), *own_video(
        str(tmp_path / 'pipe.mp4'), mask, 'w.pth', str(tmp_path / 'out'))], capture_output=True, text=True,
        cwd=ROOT, timeout=120)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert 'pipe.mp4: not a regular file' in result.stderr


def test_full_disk_while_writing_the_overlay(tmp_path, video, mask, synth_checkpoint):
    """Files may not grow past 6 kB: the masks fit, the overlay does not."""
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))

    out = tmp_path / 'out'
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'runner.py'), *own_video(
        video, mask, synth_checkpoint, str(out))], capture_output=True, text=True, cwd=ROOT, timeout=300,
        preexec_fn=limit_file_size, env=dict(os.environ, RMNET_NO_BUILD='1'))
    assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
    message = result.stderr[result.stderr.index('error: '):]
    assert 'overlay.mp4' in message and 'masks of frames 0..3 are kept' in message
    assert sorted(os.listdir(out)) == ['masks']
    assert sorted(os.listdir(out / 'masks')) == ['00000.png', '00001.png', '00002.png', '00003.png']


@pytest.mark.parametrize('setting, value', [('TEST.MEMORIZE_EVERY', '0'), ('TEST.VIDEO_SHORT_SIDE', '8'),
                                            ('TEST.MAX_MEMORY_FRAMES', '-1')])
def test_own_video_refuses_bad_test_options(tmp_path, video, mask, setting, value, capsys):
    out = tmp_path / 'out'
    expect_error(capsys, own_video(video, mask, 'w.pth', str(out), '--set', setting, value), setting)
    assert not out.exists()
