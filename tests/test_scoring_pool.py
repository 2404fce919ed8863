"""The scoring pool: results in submission order, and workers that start without PyTorch."""
import contextlib
import os
import subprocess
import sys

import pytest

from utils.scoring_pool import ScoringPool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def square(x):
    return x * x


@pytest.mark.parametrize('workers', [1, 2])
def test_results_come_back_in_submission_order(workers):
    with ScoringPool(workers) as pool:
        for x in range(5):
            pool.submit(square, x)
        assert list(pool.results()) == [0, 1, 4, 9, 16]


class RecordingExecutor:
    """Stands in for the process pool: runs jobs at once or leaves them pending, records shutdown."""

    def __init__(self, run_now):
        self.run_now, self.shutdowns = run_now, []

    def submit(self, job, x):
        from concurrent.futures import Future
        future = Future()
        if self.run_now:
            future.set_result(job(x))
        return future

    def shutdown(self, wait, cancel_futures):
        self.shutdowns.append((wait, cancel_futures))


@pytest.mark.parametrize('run_now,error,expected', [(True, False, (False, False)), (False, False, (True, False)),
                                                     (False, True, (False, True))])
def test_exit_waits_for_running_jobs_but_not_for_idle_workers(run_now, error, expected):
    """Every result in: no wait for the workers to exit; a job still running: wait for it; an
    error: cancel what has not started."""
    pool = ScoringPool(1)
    pool._pool = executor = RecordingExecutor(run_now)
    with pytest.raises(ValueError) if error else contextlib.nullcontext():
        with pool:
            pool.submit(square, 3)
            if error:
                raise ValueError('stop')
    assert executor.shutdowns == [expected]


@pytest.mark.parametrize('script', ['runner.py', os.path.join('tools', 'benchmark.py')])
def test_spawned_workers_import_the_entry_script_without_pytorch(script):
    """A spawned worker imports the script that started the job (runner.py for --test, the
    benchmark's split mode) before its first job: that import must not load PyTorch."""
    probe = ('import runpy, sys; sys.argv = [sys.argv[0]]; '
             f'runpy.run_path({script!r}, run_name="__mp_main__"); '
             'print("torch" in sys.modules)')
    done = subprocess.run([sys.executable, '-c', probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == 'False'
