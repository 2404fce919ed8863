"""Shared test fixtures: the ../shared folder, the synthetic published checkpoint, small clips."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.environ.get('RMNET_SHARED', os.path.join(os.path.dirname(ROOT), 'shared'))
DAVIS_TRAIN = os.path.join(SHARED, 'data', 'davis2016-train')
PUBLISHED = os.path.join(SHARED, 'fixtures', 'published_outputs')
LAYOUT = os.path.join(SHARED, 'fixtures', 'published_checkpoint_layout.json')

torch.set_num_threads(max(1, os.cpu_count() or 1))


def require_shared(path: str) -> str:
    if not os.path.exists(path):
        pytest.fail(f'{path} is missing: tests need the shared/ folder beside the project '
                    f'(or RMNET_SHARED pointing to it)')
    return path


@pytest.fixture(scope='session')
def synth_checkpoint(tmp_path_factory) -> str:
    """A checkpoint in the published format built by shared/tools/synth_checkpoint.py (seed 0)."""
    tool = require_shared(os.path.join(SHARED, 'tools', 'synth_checkpoint.py'))
    path = str(tmp_path_factory.mktemp('checkpoint') / 'synth.pth')
    subprocess.run([sys.executable, tool, require_shared(LAYOUT), path, '0'], check=True)
    return path


def normalise(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) normalised float."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float() / 255.0
    x = (x - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    return x.permute(0, 3, 1, 2).contiguous()


@pytest.fixture
def no_hang():
    """Fail (instead of blocking the suite) when the test takes more than 20 s, e.g. reading a FIFO."""
    import signal

    def interrupt(signum, frame):
        raise TimeoutError('the test blocked for 20 s')

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
