"""Replaying a fixed-shape GPU step as a CUDA graph."""
from typing import Any, Callable, Optional

import torch


class GraphedStep:
    """Runs `step` (a function of fixed buffers, no host synchronisation) eagerly the first
    time, which does the real work and warms up kernels, then captures it; later calls replay
    the capture. `reset` forces a new capture (after buffers were reallocated)."""

    def __init__(self, step: Callable[[], Any], enabled: bool = True):
        self.step = step
        self.enabled = enabled
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
        with torch.cuda.graph(graph):
            self.outputs = self.step()
        self.graph = graph
        return outputs
