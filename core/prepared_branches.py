"""The branches of test-time augmentation prepared for earlier videos, kept for the next ones.

On the fast path a branch's recurrences hold preallocated GPU memory and captured CUDA graphs,
whose preparation (first kernels, cuDNN plans, the capture) costs far more than a short video's
frames. A split's videos come in a few object counts and sizes, so the branches of each
(object count, channels, network size) are kept, least recently used first out: at most
`max_kept` of them, and the idle ones other than the latest video's together hold at most
IDLE_MEMORY_BYTES of memory (a long video's memory is large, and its preparation small beside
its frames). Evicted branches free their GPU memory at once. The graphs' shared pool (about one
step's temporaries, core.segmenter) is not counted."""
import collections
from typing import Callable, Hashable, List

from core.augmentation import ScaleBranch

IDLE_MEMORY_BYTES = 1 << 30


def branches_memory_bytes(branches: List[ScaleBranch]) -> int:
    return sum(branch.memory_bytes() for branch in branches)


class PreparedBranches:
    """Branches by key; `get` builds those of a new key with `build` and evicts old ones."""

    def __init__(self, max_kept: int):
        if max_kept < 1:
            raise ValueError(f'max_kept must be at least 1, got {max_kept}')
        self.max_kept = max_kept
        self.kept: 'collections.OrderedDict[Hashable, List[ScaleBranch]]' = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self.kept)

    def get(self, key: Hashable, build: Callable[[], List[ScaleBranch]]) -> List[ScaleBranch]:
        """The branches of `key` (now the most recently used), built when not kept."""
        if key in self.kept:
            self.kept.move_to_end(key)
            return self.kept[key]
        self._evict(room_for=1)
        branches = build()
        self.kept[key] = branches
        return branches

    def clear(self) -> None:
        """Free every kept branch's GPU memory."""
        while self.kept:
            for branch in self.kept.popitem(last=False)[1]:
                branch.release()

    def trim(self) -> None:
        """Drop idle branches (all but the most recent) beyond the memory bound; call it when a
        video has finished, when its memory has its final size."""
        self._evict(room_for=0)

    def _evict(self, room_for: int) -> None:
        keys = list(self.kept)
        idle = keys if room_for else keys[:-1]
        idle_bytes = sum(branches_memory_bytes(self.kept[k]) for k in idle)
        for key in idle:
            if len(self.kept) + room_for <= self.max_kept and idle_bytes <= IDLE_MEMORY_BYTES:
                break
            evicted = self.kept.pop(key)
            idle_bytes -= branches_memory_bytes(evicted)
            for branch in evicted:
                branch.release()
