"""What happens at frame t: the published RMNet frame loop (SPEC 4), one frame at a time.

For every frame t >= 1, given frame t-1 and its estimate est[t-1]:
    1. the flow of frame t: TinyFlowNet on frames t and t-1, or the flow given by the caller
    2. memorise frame t-1 with est[t-1] (the memory's latest entry, read in every case)
    3. the query region of every object: est[t-1] warped by the flow, boxed
    4. encode frame t and read each object's memory inside its regions
    5. decode each object and aggregate the objects softly into logits
    6. objects given in frame t take their given mask; objects not yet present stay absent
    7. the memory schedule: frame t-1 stays in memory when t-1 is a multiple of
       MEMORIZE_EVERY or objects were given in it (frame 0 always)
est[t] = softmax of the logits.

One loop serves training (`RMNet.forward`, batched, with gradients), the benchmark jobs, the
video CLI and the Python API (core.segmenter). The memory bank decides how the read runs:
the published dense read over a list of frames (models.memory_bank, training), or the
regional read over packed, preallocated memory that gives the same result up to rounding
(models.packed_memory). With `fast` (CUDA) the whole of a step is replayed as a CUDA graph:
no host synchronisation inside the loop. `max_memory_frames` (TEST.MAX_MEMORY_FRAMES) bounds
the memory: frame 0, the frames where objects were given and the N most recent kept frames.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from models.memory_bank import MemoryBank
from models.object_manager import ObjectIndex, present_channels
from models.packed_memory import PackedMemoryBank
from models.query_encoding import QueryEncoding
from utils.cuda_graph import CaptureThread, GraphedStep

# the logit of a probability clamped to 1e-7 and the range up to 1 - 1e-7 (published values)
ABSENT_LOGIT = -16.1181
PRESENT_LOGIT_RANGE = 32.0605


class FrameRecurrence:
    """Propagates the masks of a batch of videos frame by frame.

    network: an RMNet (its per-frame steps); flow_net: a TinyFlowNet that computes the flow
    of each frame, or None when `step` is given the flows. counts: the number of objects of
    each video (the most it will ever have); channels 0..counts[b] of the masks are used,
    further channels stay at the absent logit. expected_frames: a hint for sizing the
    preallocated memory of the fast path. graph_pool, capture_thread: where the fast path's
    captures allocate and run (utils.cuda_graph.GraphedStep).
    """

    def __init__(self, network: torch.nn.Module, counts: Sequence[int], memorize_every: int,
                 regional_read: bool = False, fast: bool = False,
                 expected_frames: Optional[int] = None, flow_net: Optional[torch.nn.Module] = None,
                 max_memory_frames: int = 0, graph_pool: Optional[Tuple[int, int]] = None,
                 capture_thread: Optional[CaptureThread] = None):
        if memorize_every < 1:
            raise ValueError(f'memorize_every must be >= 1, got {memorize_every}')
        self.network = network
        self.flow_net = flow_net
        self.counts = [int(n) for n in counts]
        self.memorize_every = memorize_every
        self.regional_read = regional_read or fast
        self.fast = fast
        self.max_memory_frames = max_memory_frames
        self.graph_pool = graph_pool
        self.capture_thread = capture_thread
        self.expect(expected_frames)

    def expect(self, expected_frames: Optional[int]) -> None:
        """The length of the next video, when known: its memory is sized once, at the start."""
        self.expected_kept = None if expected_frames is None else expected_frames // self.memorize_every + 2

    def start(self, frame: torch.Tensor, masks: torch.Tensor, objects: Optional[ObjectIndex] = None) -> None:
        """Frame 0 (B, 3, H, W) and its given masks (B, K, H, W), one-hot or probabilities.
        objects: the index of the counts, when the caller holds it on the device (a captured
        training step). On the fast path a new video of the same shapes reuses the buffers and
        the CUDA graph."""
        if self.fast and self._same_shapes(frame, masks):
            self._restart(frame, masks)
            return
        self.objects = objects if objects is not None else ObjectIndex.from_counts(self.counts, frame.device)
        self.n_channels = masks.shape[1]
        self.in_use = self.objects.channel_in_use(self.n_channels)
        self.existing = present_channels(masks)
        self.existing[:, 0] = True          # the background is never an absent object
        self.prev_index = 0                 # t - 1
        self.prev_given = True              # objects were given in frame t - 1
        self.flow: Optional[torch.Tensor] = None
        if self.fast:
            self.memory = self._new_memory()
            self.prev_frame, self.prev_probs = frame.clone(), masks.clone()
            self.frame_in = torch.empty_like(frame)
            self.flow_in: Optional[torch.Tensor] = None
            self.flow_out: Optional[torch.Tensor] = None
            self.new_masks_in = torch.zeros_like(masks)
            self.new_flag = torch.zeros(1, dtype=torch.bool, device=frame.device)
            self.graphed = GraphedStep(self._graph_step, enabled=frame.is_cuda, pool=self.graph_pool,
                                       thread=self.capture_thread)
        else:
            self.memory = self._new_memory()
            self.prev_frame, self.prev_probs = frame, masks

    def _new_memory(self):
        """The regional read over packed, preallocated memory (graph-safe), or the published
        dense read over a list of frames (training: autograd)."""
        if self.regional_read:
            return PackedMemoryBank(self.expected_kept, self.max_memory_frames)
        return MemoryBank(self.max_memory_frames)

    def release(self) -> None:
        """Free the GPU memory now: the captured graph, the memory and the step's buffers (the
        graph holds this object's step, a reference cycle the collector would free only later).
        The next video starts afresh."""
        graphed = getattr(self, 'graphed', None)
        if graphed is not None:
            graphed.reset()
        for name in ('graphed', 'memory', 'prev_frame', 'prev_probs', 'frame_in', 'flow_in', 'flow_out',
                     'new_masks_in', 'new_flag', 'flow'):
            if hasattr(self, name):
                delattr(self, name)

    def memory_bytes(self) -> int:
        """The bytes the fast path's preallocated memory holds (0 for the dense read)."""
        memory = getattr(self, 'memory', None)
        return memory.nbytes() if isinstance(memory, PackedMemoryBank) else 0

    def _same_shapes(self, frame: torch.Tensor, masks: torch.Tensor) -> bool:
        previous = getattr(self, 'prev_frame', None)
        return (previous is not None and previous.shape == frame.shape and previous.dtype == frame.dtype
                and previous.device == frame.device and self.prev_probs.shape == masks.shape)

    def _restart(self, frame: torch.Tensor, masks: torch.Tensor) -> None:
        """start() in place: the captured step keeps reading and writing the same tensors."""
        self.memory.clear(self.expected_kept)
        self.existing.copy_(present_channels(masks))
        self.existing[:, 0] = True
        self.prev_frame.copy_(frame)
        self.prev_probs.copy_(masks)
        self.prev_index, self.prev_given, self.flow = 0, True, None

    def step(self, frame: torch.Tensor, flow: Optional[torch.Tensor] = None,
             new_masks: Optional[torch.Tensor] = None, query: Optional[QueryEncoding] = None) -> torch.Tensor:
        """Segment the next frame (B, 3, H, W). `flow` (B, 2, H, W): its flow, None to compute
        it with the flow network (it is then in `self.flow`). `new_masks` (B, K, H, W): the
        given masks of this frame when objects appear in it. `query`: the frame's
        RMNet.encode_query, when the caller encoded its frames together (not on the fast
        path, whose step is captured whole). Returns probabilities
        (B, K, H, W); on the fast path they are the recurrence's own state, which the next
        step reads and overwrites: read them (or copy them) before it, never change them."""
        if flow is None and self.flow_net is None:
            raise ValueError('no flow given and no flow network to compute it')
        if query is not None and self.fast:
            raise ValueError('the fast path encodes the query inside its captured step')
        if len(self.objects) == 0:
            probs = self._background_only(frame)
        elif self.fast:
            probs = self._fast_step(frame, flow, new_masks)
        else:
            probs, self.flow = self._frame_t(self.prev_frame, self.prev_probs, frame, flow,
                                             new_masks, None, query)
            self.prev_frame, self.prev_probs = frame, probs
        if self.prev_index % self.memorize_every == 0 or self.prev_given:
            if len(self.objects):
                self.memory.keep(pinned=self.prev_index == 0 or self.prev_given)
        self.prev_index += 1
        self.prev_given = new_masks is not None
        return probs

    def _frame_t(self, prev_frame: torch.Tensor, prev_probs: torch.Tensor, frame: torch.Tensor,
                 flow: Optional[torch.Tensor], new_masks: Optional[torch.Tensor],
                 new_flag: Optional[torch.Tensor],
                 query: Optional[QueryEncoding] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Frame t from frame t-1 and its estimate: (est[t], the flow of frame t)."""
        network, objects = self.network, self.objects
        if flow is None:
            flow = self.flow_net.step(frame, prev_frame).float()
        key, value, region = network.memorize(prev_frame, prev_probs, objects)
        self.memory.write_latest(key, value, region)
        query_region = network.query_region(prev_probs, flow, objects)
        if query is None:
            query = network.encode_query(frame)
        read = self.memory.read(query.key[objects.batch], query.value[objects.batch], query_region)
        fg_probs = network.decode(read, query, objects)
        logits = network.aggregate(fg_probs, objects, self.n_channels, query.pad)
        logits = self._objects_present(logits, new_masks, new_flag)
        return F.softmax(logits, dim=1), flow

    def _objects_present(self, logits: torch.Tensor, new_masks: Optional[torch.Tensor],
                         new_flag: Optional[torch.Tensor]) -> torch.Tensor:
        """Objects appearing in the given masks take them; objects not yet present stay absent.
        new_flag (fast path): a device flag saying whether new_masks hold this frame's masks."""
        if new_masks is not None:
            new_masks = new_masks.to(logits.dtype)
            appearing = present_channels(new_masks) & ~self.existing
            if new_flag is not None:
                appearing = appearing & new_flag
            given = new_masks * PRESENT_LOGIT_RANGE + ABSENT_LOGIT
            logits = torch.where(appearing[:, :, None, None], given, logits)
            self.existing |= appearing
        absent = self.in_use & ~self.existing
        return torch.where(absent[:, :, None, None], ABSENT_LOGIT, logits)

    def _fast_step(self, frame: torch.Tensor, flow: Optional[torch.Tensor],
                   new_masks: Optional[torch.Tensor]) -> torch.Tensor:
        """Copy the inputs into the captured buffers and replay the step."""
        self.frame_in.copy_(frame)
        if flow is not None:
            if self.flow_in is None:
                self.flow_in = torch.empty_like(flow)
            self.flow_in.copy_(flow)
        self.new_flag.fill_(new_masks is not None)
        if new_masks is not None:
            self.new_masks_in.copy_(new_masks)
        if self.memory.will_reallocate():
            self.graphed.reset()
        probs, self.flow = self.graphed()
        return probs

    def _graph_step(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The captured step. What it leaves for later (the probabilities, the flow, the state)
        lives in buffers allocated outside the capture, so captures may share a memory pool."""
        probs, flow = self._frame_t(self.prev_frame, self.prev_probs, self.frame_in, self.flow_in,
                                    self.new_masks_in, self.new_flag)
        self.prev_frame.copy_(self.frame_in)
        self.prev_probs.copy_(probs)
        if self.flow_in is not None:
            return self.prev_probs, self.flow_in
        if self.flow_out is None:           # the eager first call, before the capture
            self.flow_out = torch.empty_like(flow)
        self.flow_out.copy_(flow)
        return self.prev_probs, self.flow_out

    def _background_only(self, frame: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = frame.shape
        probs = frame.new_zeros(batch, self.n_channels, height, width)
        probs[:, 0] = 1
        return probs
