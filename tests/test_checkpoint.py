"""Published checkpoint format: strict loading with or without `module.`, atomic saving."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from config import cfg
from conftest import LAYOUT, ROOT, require_shared
from models.rmnet import RMNet
from models.tiny_flownet import TinyFlowNet
from utils.checkpoint import (CheckpointError, load_networks, load_state_strict, published_checkpoint,
                              read_checkpoint, save_checkpoint)


def layout_state(name):
    with open(require_shared(LAYOUT)) as f:
        rows = json.load(f)[name]
    generator = torch.Generator().manual_seed(0)
    return {key: (torch.tensor(0) if dtype == 'int64' else torch.randn(shape, generator=generator))
            for key, shape, dtype in rows}


@pytest.mark.parametrize('name, network', [('tflownet', TinyFlowNet), ('rmnet', RMNet)])
def test_published_layout_loads_strictly(name, network):
    state = layout_state(name)
    assert all(k.startswith('module.') for k in state)
    net = network(cfg)
    load_state_strict(net, state)
    key = next(k for k in state if k.endswith('conv1.0.weight') or k.endswith('decoder.pred2.weight'))
    assert torch.equal(net.state_dict()[key[len('module.'):]], state[key])
    load_state_strict(network(cfg), {k[len('module.'):]: v for k, v in state.items()})


def test_mismatches_are_named():
    state = layout_state('tflownet')
    state.pop('module.predict_flow2.bias')
    state['module.conv6.0.weight'] = torch.zeros(1)
    state['module.conv1.0.weight'] = torch.zeros(64, 3, 7, 7)
    with pytest.raises(CheckpointError) as error:
        load_state_strict(TinyFlowNet(), state, source='x.pth')
    message = str(error.value)
    assert 'missing keys: predict_flow2.bias' in message
    assert 'unexpected keys: conv6.0.weight' in message
    assert 'conv1.0.weight: checkpoint (64, 3, 7, 7) vs network (64, 6, 7, 7)' in message


def test_save_round_trip_is_published_format(tmp_path):
    tflownet, rmnet = TinyFlowNet(), RMNet(cfg)
    path = str(tmp_path / 'ckpt.pth')
    save_checkpoint(path, published_checkpoint(tflownet, rmnet, epoch_index=3,
                                               best_metrics={'J-Mean': 0.5, 'F-Mean': 0.6, 'JF-Mean': 0.55}))
    assert os.listdir(tmp_path) == ['ckpt.pth']
    content = read_checkpoint(path)
    assert content['epoch_index'] == 3 and content['best_metrics']['JF-Mean'] == 0.55
    assert all(k.startswith('module.') for k in content['rmnet'])
    other = TinyFlowNet()
    load_networks(path, tflownet=other)
    assert torch.equal(other.conv1[0].weight, tflownet.conv1[0].weight)


def test_failed_save_keeps_the_old_file(tmp_path):
    path = str(tmp_path / 'ckpt.pth')
    save_checkpoint(path, {'epoch_index': 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError('cannot pickle')

    with pytest.raises(RuntimeError):
        save_checkpoint(path, {'epoch_index': 2, 'bad': Unpicklable()})
    assert read_checkpoint(path)['epoch_index'] == 1
    assert os.listdir(tmp_path) == ['ckpt.pth']


def test_truncated_and_foreign_files(tmp_path):
    path = str(tmp_path / 'ckpt.pth')
    save_checkpoint(path, published_checkpoint(TinyFlowNet(), torch.nn.Conv2d(1, 1, 1)))
    with open(path, 'rb') as f:
        data = f.read()
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated.pth: not a readable PyTorch checkpoint'):
        read_checkpoint(str(truncated))
    with pytest.raises(CheckpointError, match=r'\[rmnet\] does not fit RMNet'):
        load_networks(path, rmnet=RMNet(cfg))
    with pytest.raises(CheckpointError, match='not found'):
        read_checkpoint(str(tmp_path / 'missing.pth'))
    plain = tmp_path / 'plain.pth'
    torch.save([1, 2], plain)
    with pytest.raises(CheckpointError, match='expected a dict'):
        read_checkpoint(str(plain))


def test_full_disk_while_saving_leaves_no_file(tmp_path):
    """A real write failure (files may not grow past 100 kB) inside torch.save."""
    script = textwrap.dedent(f'''
        import resource, signal, sys
        sys.path.insert(0, {ROOT!r})
        import torch
        from utils.checkpoint import save_checkpoint
        from utils.io import WriteError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        try:
            save_checkpoint({str(tmp_path / 'ckpt-last.pth')!r}, {{'rmnet': {{'w': torch.zeros(200_000)}}}})
        except WriteError as e:
            print(e)
    ''')
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = f'{tmp_path / "ckpt-last.pth"}: cannot be written (File too large); nothing was written there'
    assert done.stdout == expected + '\n'
    assert os.listdir(tmp_path) == []


def test_a_network_entry_that_is_not_a_state_dict(tmp_path):
    path = str(tmp_path / 'odd.pth')
    torch.save({'tflownet': {'module.w': torch.zeros(1)}, 'rmnet': [torch.zeros(1)]}, path)
    with pytest.raises(CheckpointError, match=r'odd.pth \[rmnet\]: expected a state dict .*got list'):
        load_networks(path, rmnet=RMNet(cfg))
    torch.save({'tflownet': {'module.w': 'text'}, 'rmnet': {}}, path)
    with pytest.raises(CheckpointError, match=r"\[tflownet\]: expected a state dict .*'module.w' is str"):
        load_networks(path, tflownet=TinyFlowNet())
