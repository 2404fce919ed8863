"""Replaying a fixed-shape GPU step as a CUDA graph."""
from typing import Any, Callable, Optional, Tuple

import torch


class GraphedStep:
    """Runs `step` (a function of fixed buffers, no host synchronisation) eagerly the first
    time, which does the real work and warms up kernels, then captures it; later calls replay
    the capture. `reset` forces a new capture (after buffers were reallocated).

    pool: a memory pool shared with other captures (torch.cuda.graph_pool_handle()). Only
    safe when every tensor a replay leaves for later (its outputs, the state it updates)
    lives outside the pool, so that one capture's temporaries may overlap another's."""

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
        with torch.cuda.graph(graph, pool=self.pool):
            self.outputs = self.step()
        self.graph = graph
        return outputs
