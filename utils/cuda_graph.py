"""Replaying a fixed-shape GPU step as a CUDA graph."""
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
    the pool, so that one capture's temporaries may overlap another's."""

    def __init__(self, step: Callable[[], Any], enabled: bool = True,
                 pool: Optional[Tuple[int, int]] = None):
        self.step = step
        self.enabled = enabled
        self.pool = pool
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
