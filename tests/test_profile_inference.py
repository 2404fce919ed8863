"""tools/profile_inference.py: stages, the Triton read kernels apart, and the weights it used."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from tools import profile_inference


def test_a_cpu_check_reports_every_stage_and_the_seeded_weights(tmp_path):
    """In its own process: the profile wraps the networks' methods for good."""
    out = tmp_path / 'profile.json'
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'profile_inference.py'), '--device', 'cpu',
                           '--frames', '7', '--steps', '2', '--height', '48', '--width', '80', '--seed', '3',
                           '--out', str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result['weights'] == 'random (seed 3)'
    (run,) = result['runs']
    assert (run['frames'], run['objects'], run['precision']) == (7, 2, 'bf16')
    stages = run['stages_ms_per_frame']
    assert set(stages) == {label for label, _ in profile_inference.STAGES} | {'read kernels', 'all kernels'}
    assert run['graphed_fps'] > 0


def test_an_existing_result_is_not_overwritten(tmp_path):
    out = tmp_path / 'profile.json'
    out.write_text('earlier')
    with pytest.raises(Exception, match='profile.json'):
        profile_inference.main(['--device', 'cpu', '--frames', '7', '--out', str(out)])
    assert out.read_text() == 'earlier'


def test_the_read_kernels_it_counts_are_those_of_the_packed_read():
    kernels = pytest.importorskip('models.packed_read_triton')
    assert all(hasattr(kernels, name) for name in profile_inference.READ_KERNELS)
