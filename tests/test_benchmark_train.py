"""The training benchmark: synthetic batches in the loader's format, a CPU run of the grid
with the per-stage breakdown, earlier results kept."""
import json

import pytest
import torch

from tools.benchmark_train import MAX_OBJECTS, N_FRAMES, N_OBJECTS, main, synthetic_batch


def test_synthetic_batch_has_the_loader_format():
    batch = synthetic_batch(2, 48, torch.device('cpu'))
    assert batch['frames'].shape == (2, N_FRAMES, 3, 48, 48) and batch['frames'].dtype == torch.uint8
    assert batch['brightness'].shape == (2,) and sorted(batch['channel_order'][1].tolist()) == [0, 1, 2]
    assert batch['masks'].shape == (2, N_FRAMES, MAX_OBJECTS + 1, 48, 48)
    assert batch['labels'].dtype == batch['masks'].dtype == torch.uint8 and batch['n_objects'].tolist() == [N_OBJECTS] * 2
    # one-hot masks whose argmax is the label, every object present in every frame
    assert torch.equal(batch['masks'].sum(2), torch.ones(2, N_FRAMES, 48, 48, dtype=torch.uint8))
    assert torch.equal(batch['masks'].argmax(2), batch['labels'].long())
    for b in range(2):
        for t in range(N_FRAMES):
            assert set(batch['labels'][b, t].unique().tolist()) == set(range(N_OBJECTS + 1))
    assert torch.equal(batch['flows'][:, 0], torch.zeros(2, 2, 48, 48))


def test_quick_run_reports_speed_and_stages(tmp_path, capsys):
    out = tmp_path / 'train.json'
    assert main(['--quick', '--sizes', '1x32', '--precisions', 'fp32', '--steps', '1', '--warmup', '0',
                 '--profile', '--out', str(out)]) == 0
    run, = json.loads(out.read_text())['runs']
    assert (run['batch'], run['crop'], run['precision']) == (1, 32, 'fp32')
    assert run['samples_per_s'] > 0
    assert run['samples_per_s'] == pytest.approx(1000 / run['step_ms'])
    stages = run['stages_ms']
    for stage in ('forward', 'losses', 'backward', 'optimizer', 'frame 1', 'frame 2 memory read',
                  'frame 2 decode', 'encode_query (all frames)'):
        assert stages[stage] >= 0, stage
    assert 'frame 3' not in stages                       # frames 1 and 2 are segmented
    assert stages['encode_query (all frames)'] + stages['frame 1'] + stages['frame 2'] <= stages['forward'] * 1.01
    printed = capsys.readouterr().out
    assert '1 x 32' in printed and 'frame 2 memory read' in printed
    # an existing result is never replaced
    assert main(['--quick', '--out', str(out)]) == 2
    assert json.loads(out.read_text())['runs'] == [run]
    assert 'exists' in capsys.readouterr().err
