"""tools/benchmark.py: a machine without a CUDA GPU is a user error (status 2), not a crash."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without a CUDA GPU')
def test_without_a_gpu_the_benchmark_exits_2_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'benchmark.py'), '--frames', '2',
                           '--out', str(tmp_path / 'benchmark.json')], capture_output=True, text=True,
                          timeout=300, cwd=str(tmp_path))
    assert done.returncode == 2
    assert done.stderr == 'error: the benchmark needs a CUDA GPU (none is visible to PyTorch)\n'
    assert not os.path.exists(tmp_path / 'benchmark.json')
