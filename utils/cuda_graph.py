"""Replaying a fixed-shape GPU step as a CUDA graph, and the thread that prepares the steps."""
import concurrent.futures
import threading
from typing import Any, Callable, Optional, Tuple

import torch

# only the capturing thread is held to what a capture allows: a training loader's pin-memory
# thread may allocate pinned memory while a step or a validation video is captured
CAPTURE_MODE = 'thread_local'


class GraphedStep:
    """Runs `step` (a function of fixed buffers, no host synchronisation) eagerly the first
    time, which does the real work and warms up kernels, then captures it; later calls replay
    the capture. `reset` forces a new capture (after buffers were reallocated).

    pool: a memory pool shared with other captures (SharedGraphPool.handle). Only safe when
    every tensor a replay leaves for later (its outputs, the state it updates) lives outside
    the pool, so that one capture's temporaries may overlap another's. thread: a
    CaptureThread that runs the eager call and the capture (replays run in the caller's)."""

    def __init__(self, step: Callable[[], Any], enabled: bool = True,
                 pool: Optional[Tuple[int, int]] = None, thread: Optional['CaptureThread'] = None):
        self.step = step
        self.enabled = enabled
        self.pool = pool
        self.thread = thread
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.outputs: Any = None

    def reset(self) -> None:
        self.graph, self.outputs = None, None

    def __call__(self) -> Any:
        if not self.enabled:
            return self.step()
        if self.graph is not None:
            self.graph.replay()
            return self.outputs
        if self.thread is not None:
            return self.thread.run(self._run_and_capture)
        return self._run_and_capture()

    def _run_and_capture(self) -> Any:
        outputs = self.step()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode=CAPTURE_MODE):
            self.outputs = self.step()
        self.graph = graph
        return outputs


class SharedGraphPool:
    """One memory pool for captures that never run at the same time. PyTorch releases a pool
    when the last graph captured into it goes, and a later capture into the same id then
    fails; a one-kernel graph, never replayed, keeps it alive as long as this object."""

    def __init__(self, device: torch.device):
        self.handle = torch.cuda.graph_pool_handle()
        self._counter = torch.zeros(1, device=device)
        self._keeper = torch.cuda.CUDAGraph()
        with torch.cuda.device(device), torch.cuda.graph(self._keeper, pool=self.handle,
                                                          capture_error_mode=CAPTURE_MODE):
            self._counter.add_(1)


class CaptureThread:
    """One thread that runs the eager first steps and the captures of the inference steps.

    cuDNN keeps its execution plans per thread: a step whose plans a thread has built runs at
    once there, and a replay needs no plans at all. Steps prepared in this thread can
    therefore be warmed up for a video to come (its object count and size) while the caller
    replays the graphs of the current one. `run` hands the caller's state over (device,
    stream, grad and inference modes, autocast), waits and returns the result or raises the
    error; `device` names the GPU the job works on when it is not the caller's current one (a
    caller in another thread). Its jobs run one at a time, in order; a job must not wait for a
    later one."""

    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='rmnet-capture')

    def submit(self, job: Callable[[], Any],
               device: Optional[torch.device] = None) -> 'concurrent.futures.Future[Any]':
        """Run `job` in the thread under the caller's state; its Future."""
        return self._executor.submit(_CallerState(device).applied, job)

    def run(self, job: Callable[[], Any], device: Optional[torch.device] = None) -> Any:
        future = self.submit(job, device)
        try:
            return future.result()
        except BaseException:
            if not future.done():     # interrupted (Ctrl-C): the job still changes the caller's
                concurrent.futures.wait([future])   # buffers, so it ends before the caller goes on
            raise


class _CallerState:
    """What a CUDA job inherits from the thread that hands it over (all of it thread-local):
    the caller's current GPU and stream, or `device` and the caller's stream there."""

    def __init__(self, device: Optional[torch.device] = None) -> None:
        self.grad = torch.is_grad_enabled()
        self.inference = torch.is_inference_mode_enabled()
        if device is not None and torch.device(device).type == 'cuda':
            self.device = torch.device(device).index
        else:
            self.device = torch.cuda.current_device() if torch.cuda.is_initialized() else None
        self.stream = torch.cuda.current_stream(self.device) if self.device is not None else None
        self.autocast = torch.is_autocast_enabled('cuda')
        self.autocast_dtype = torch.get_autocast_dtype('cuda')
        self.autocast_cache = torch.is_autocast_cache_enabled()

    def applied(self, job: Callable[[], Any]) -> Any:
        with torch.inference_mode(self.inference), torch.set_grad_enabled(self.grad):
            if self.device is None:
                return job()
            with torch.cuda.device(self.device), torch.cuda.stream(self.stream), \
                    torch.autocast('cuda', dtype=self.autocast_dtype, enabled=self.autocast,
                                   cache_enabled=self.autocast_cache):
                return job()


_shared_thread: Optional[CaptureThread] = None
_shared_lock = threading.Lock()


def shared_capture_thread() -> CaptureThread:
    """The process's CaptureThread, shared by every segmenter: its plans serve them all."""
    global _shared_thread
    with _shared_lock:
        if _shared_thread is None:
            _shared_thread = CaptureThread()
        return _shared_thread
