"""The training step replayed as CUDA graphs (TRAIN.CUDA_GRAPHS): the same step, launched as one
graph instead of its ~2800 kernels one by one, so that its speed no longer follows the host.

A graph is captured per batch layout: the shapes of the batch's tensors and, for RMNet, its
total number of objects (the index of which clip and channel each object is goes into the
graph as a device tensor, so that clips of 1 + 2 and 2 + 1 objects share one graph). The first
batch of a layout runs eagerly (cuDNN picks its kernels, the optimiser creates its state), after
the graphs so far are released, so that their memory pool and the eager step's temporaries are
never on the GPU together; the second is captured and replayed, and so are the later ones (the
layouts seen are captured again as they come, without an eager step). What a capture bakes in
is checked before every replay: the optimiser's settings (the scheduler changes the learning
rate once an epoch), the storage of the parameters, buffers and optimiser state, and every
module's train/eval mode; a change drops the graphs, which are captured again. The step is the
same code either way (core.train.TrainingStep.run); GPU tests compare the two.
"""
import gc
from collections import OrderedDict
from typing import Any, Dict, Hashable, Optional, Tuple

import torch

from models.object_manager import ObjectIndex
from utils.cuda_graph import CAPTURE_MODE, SharedGraphPool


class _Capture:
    """One captured step and the object index it reads."""

    def __init__(self, graph: torch.cuda.CUDAGraph, objects: Optional[torch.Tensor]):
        self.graph = graph
        self.objects = objects


class GraphedTrainingStep:
    """A core.train.TrainingStep (fp32 or bf16, one process, on a GPU) whose steps are replayed as CUDA
    graphs, up to `kept_graphs` layouts at a time (the least recently used goes first). Called
    like the step; the probabilities it returns are overwritten by the next step."""

    def __init__(self, step, kept_graphs: int):
        if kept_graphs < 1:
            raise ValueError(f'kept_graphs must be >= 1, got {kept_graphs}')
        self.step = step
        self.kept_graphs = kept_graphs
        self.pool: Optional[SharedGraphPool] = None
        self.graphs: 'OrderedDict[Hashable, _Capture]' = OrderedDict()
        self.seen = set()                            # layouts that ran eagerly once
        self.baked: Optional[Tuple[Any, ...]] = None
        # inputs and outputs live outside the pool, one set per tensor shapes, shared by the
        # graphs of those shapes (a replay's outputs are read before the next step)
        self.inputs: Dict[Hashable, Dict[str, torch.Tensor]] = {}
        self.outputs: Dict[Hashable, Tuple[torch.Tensor, Optional[torch.Tensor]]] = {}
        self.captures = 0
        self.replays = 0
        self.releases = 0

    def __call__(self, batch: Dict[str, Any]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        counts = batch['n_objects']
        rmnet = self.step.network_name == 'RMNet'
        if rmnet and int(counts.sum()) == 0:
            return self.step(batch)          # a zero loss, hardly any memory: beside the graphs
        baked = self._baked_state()
        if baked != self.baked:
            self.graphs.clear()
            self.baked = baked
        shapes = tuple((key, tuple(batch[key].shape), batch[key].dtype) for key in self.step.input_keys
                       if key in batch)
        layout = (shapes, int(counts.sum()) if rmnet else 0)
        capture = self.graphs.get(layout)
        if capture is None:
            if layout not in self.seen:
                return self._eager(layout, shapes, batch)
            capture = self._capture(layout, shapes, batch)
        self.graphs.move_to_end(layout)
        for key, buffer in self.inputs[shapes].items():
            buffer.copy_(batch[key], non_blocking=True)
        if capture.objects is not None:
            capture.objects.copy_(self._object_values(counts), non_blocking=True)
        capture.graph.replay()
        self.replays += 1
        terms, probs = self.outputs[shapes]
        return terms.clone(), probs

    def _eager(self, layout: Hashable, shapes: Hashable,
               batch: Dict[str, Any]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """A layout's first step, kernel by kernel, in the memory the graphs held: they are
        released first (the layouts seen are captured again as they come), so that the GPU
        never holds a graph pool and an eager step's temporaries at once."""
        self.release()
        terms, probs = self.step(batch)
        self.seen.add(layout)
        if shapes not in self.outputs:
            self.outputs[shapes] = (torch.empty_like(terms), None if probs is None else torch.empty_like(probs))
        return terms, probs

    def release(self) -> None:
        """Drop every graph and give their memory pool back to the GPU (but for the two cuBLAS
        workspaces of the first capture, 64 MiB, which PyTorch keeps for the process)."""
        if self.pool is None:
            return
        self.graphs.clear()
        self.pool = None
        self.step.optimizer.zero_grad(set_to_none=True)     # the last capture's gradients
        gc.collect()
        torch.cuda.empty_cache()
        self.releases += 1

    def _capture(self, layout: Hashable, shapes: Hashable, batch: Dict[str, Any]) -> _Capture:
        """Record the step for this layout (nothing runs; the replay that follows is its step)."""
        while len(self.graphs) >= self.kept_graphs:
            self.graphs.popitem(last=False)
        device = self.step.device
        if self.pool is None:
            self.pool = SharedGraphPool(device)
        if shapes not in self.inputs:
            self.inputs[shapes] = {key: torch.empty(batch[key].shape, dtype=batch[key].dtype, device=device)
                                   for key in self.step.input_keys if key in batch}
        inputs = self.inputs[shapes]
        terms_out, probs_out = self.outputs[shapes]
        counts = batch['n_objects']
        values, objects = None, None
        if self.step.network_name == 'RMNet':
            values = self._object_values(counts).to(device)
            objects = ObjectIndex.from_values(values, counts.tolist())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool.handle, capture_error_mode=CAPTURE_MODE):
            terms, probs = self.step.run(inputs, counts, objects)
            terms_out.copy_(terms)
            if probs is not None:
                probs_out.copy_(probs)
        del terms, probs
        self.captures += 1
        capture = _Capture(graph, values)
        self.graphs[layout] = capture
        return capture

    def _object_values(self, counts: torch.Tensor) -> torch.Tensor:
        return ObjectIndex.host_values(counts.tolist()).pin_memory()

    def _baked_state(self) -> Tuple[Any, ...]:
        """What a capture bakes in beyond its inputs: the optimiser's settings (learning rate,
        betas, ...), where the weights, buffers and optimiser state are, the modules' modes."""
        optimizer, model = self.step.optimizer, self.step.model
        settings = tuple((key, value if not isinstance(value, torch.Tensor) else float(value))
                         for group in optimizer.param_groups for key, value in group.items() if key != 'params')
        storage = tuple(p.data_ptr() for group in optimizer.param_groups for p in group['params'])
        buffers = tuple(b.data_ptr() for b in model.buffers())
        state = tuple(value.data_ptr() for per_param in optimizer.state.values()
                      for value in per_param.values() if torch.is_tensor(value))
        modes = tuple(m.training for m in model.modules())
        return settings, storage, buffers, state, modes


def graphs_apply(cfg, device: torch.device, world_size: int, precision: str) -> bool:
    """Whether TRAIN.CUDA_GRAPHS replays this run's step: on a GPU, one process (DDP's gradient
    hooks are not captured), fp32 or bf16 (fp16's loss scaling reads its overflow check back)."""
    return bool(cfg.TRAIN.CUDA_GRAPHS) and device.type == 'cuda' and world_size == 1 and precision != 'fp16'


def training_step(cfg, step, graphs: bool):
    """The step a run trains with: graphed when `graphs` (graphs_apply, which also decides
    whether the optimiser is built capturable), else the step itself."""
    return GraphedTrainingStep(step, int(cfg.TRAIN.KEPT_GRAPHS)) if graphs else step
