"""Shared test fixtures: the bundled DAVIS frames, the ../shared folder, checkpoints.

Real frames come from tests/data/davis2016-train (in the repository, built by
tools/make_test_data.py). Only the comparisons with the published code's outputs need the
../shared folder (or RMNET_SHARED): without it they skip, except under CI (CI=true), where
a missing ../shared is a failure.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from config import cfg  # noqa: E402
from models.rmnet import RMNet  # noqa: E402
from models.tiny_flownet import TinyFlowNet  # noqa: E402
from utils.checkpoint import published_checkpoint, save_checkpoint  # noqa: E402

SHARED = os.environ.get('RMNET_SHARED', os.path.join(os.path.dirname(ROOT), 'shared'))
DAVIS_TRAIN = os.path.join(ROOT, 'tests', 'data', 'davis2016-train')
SHARED_DAVIS_TRAIN = os.path.join(SHARED, 'data', 'davis2016-train')   # the full 854x480 set
with Image.open(os.path.join(DAVIS_TRAIN, 'JPEGImages', '480p', 'bear', '00000.jpg')) as _first:
    DAVIS_TRAIN_HW = (_first.height, _first.width)     # (H, W) of every bundled frame
PUBLISHED = os.path.join(SHARED, 'fixtures', 'published_outputs')
LAYOUT = os.path.join(SHARED, 'fixtures', 'published_checkpoint_layout.json')

# the cores, shared among pytest-xdist workers when there are several
torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))))


def require_shared(path: str) -> str:
    """`path` inside ../shared; a test needing it skips when it is missing (fails under CI)."""
    if not os.path.exists(path):
        message = (f'needs {path}: reference data of the published code, in the shared/ folder '
                   f'beside the project (or RMNET_SHARED pointing to it)')
        if os.environ.get('CI') == 'true':
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope='session')
def synth_checkpoint(tmp_path_factory) -> str:
    """A checkpoint in the published format built by shared/tools/synth_checkpoint.py (seed 0)."""
    tool = require_shared(os.path.join(SHARED, 'tools', 'synth_checkpoint.py'))
    path = str(tmp_path_factory.mktemp('checkpoint') / 'synth.pth')
    subprocess.run([sys.executable, tool, require_shared(LAYOUT), path, '0'], check=True)
    return path


@pytest.fixture(scope='session')
def checkpoint(tmp_path_factory) -> str:
    """A published-format checkpoint of seeded randomly initialised networks, for tests whose
    results do not depend on trained values (command lines, layouts, streaming)."""
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp('checkpoint') / 'random.pth')
    save_checkpoint(path, published_checkpoint(TinyFlowNet().eval(), RMNet(cfg).eval()))
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
