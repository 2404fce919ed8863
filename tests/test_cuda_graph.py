"""CUDA graph replays and the thread that runs the eager first steps and the captures."""
import signal
import threading
import time

import pytest
import torch

from utils.cuda_graph import CaptureThread, GraphedStep, shared_capture_thread


def test_a_job_runs_in_the_thread_under_the_callers_grad_and_inference_modes():
    thread = CaptureThread()
    caller = threading.get_ident()

    def job():
        return threading.get_ident(), torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    ident, grad, inference = thread.run(job)
    assert ident != caller and grad and not inference
    with torch.no_grad():
        assert thread.run(job) == (ident, False, False)          # one thread for every job
    with torch.inference_mode():
        assert thread.run(job) == (ident, False, True)
        state = torch.zeros(3)                  # an inference tensor, changed in place by a job
        thread.run(lambda: state.add_(1))
    assert state.tolist() == [1.0, 1.0, 1.0]


def test_an_error_of_a_job_is_raised_in_the_caller_and_the_thread_goes_on():
    thread = CaptureThread()

    def fail():
        raise ValueError('bad shapes')

    with pytest.raises(ValueError, match='bad shapes'):
        thread.run(fail)
    assert thread.run(lambda: 3) == 3


def test_jobs_run_one_at_a_time_in_order():
    thread = CaptureThread()
    order = []
    release = threading.Event()
    first = thread.submit(lambda: (release.wait(5), order.append(1)))
    second = thread.submit(lambda: order.append(2))
    release.set()
    first.result(), second.result()
    assert order == [1, 2]


class Interrupted(BaseException):
    """What a Ctrl-C would raise in the waiting caller."""


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason='needs signals')
def test_an_interrupted_caller_goes_on_only_once_its_job_has_ended():
    """The job changes the caller's buffers (a capture, an eager step): the caller must not
    leave, and perhaps start the next video on them, while it runs."""
    thread = CaptureThread()
    ended = threading.Event()

    def interrupt(signum, frame):
        raise Interrupted()

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Interrupted):
            thread.run(lambda: (time.sleep(0.5), ended.set()))
        assert ended.is_set()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_the_process_shares_one_capture_thread():
    assert shared_capture_thread() is shared_capture_thread()


def test_a_disabled_step_runs_eagerly_in_the_caller():
    calls = []
    step = GraphedStep(lambda: calls.append(threading.get_ident()) or len(calls), enabled=False,
                       thread=CaptureThread())
    assert step() == 1 and step() == 2 and calls == [threading.get_ident()] * 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_a_step_captured_in_the_thread_replays_in_the_caller_on_the_gpu():
    """The eager call (on the caller's stream) and the capture run in the capture thread under
    the caller's autocast; replays in the caller give the eager result."""
    thread = CaptureThread()
    weight = torch.randn(64, 64, device='cuda')
    x = torch.randn(32, 64, device='cuda')
    out = torch.empty(32, 64, device='cuda')
    seen = []

    def step():
        seen.append((threading.get_ident(), torch.cuda.current_stream(), torch.get_autocast_dtype('cuda'),
                     torch.is_autocast_enabled('cuda')))
        out.copy_(torch.relu(x @ weight))
        return out

    stream = torch.cuda.Stream()
    graphed = GraphedStep(step, thread=thread)
    with torch.cuda.stream(stream), torch.autocast('cuda', dtype=torch.bfloat16):
        first = graphed().clone()
        x.copy_(torch.randn(32, 64, device='cuda'))
        replayed = graphed().clone()
        expected = torch.relu(x @ weight).float()
    torch.cuda.synchronize()
    assert len(seen) == 2 and all(s[0] != threading.get_ident() and s[2] == torch.bfloat16 and s[3] for s in seen)
    assert seen[0][1] == stream           # the eager call; the capture runs on its own stream
    assert graphed.graph is not None and not torch.equal(first, replayed)
    assert torch.equal(replayed, expected)
    last = torch.device('cuda', torch.cuda.device_count() - 1)     # a job named a GPU works there
    assert thread.run(torch.cuda.current_device, last) == last.index
