"""One process per GPU under torchrun: who this process is, and moving small objects between ranks."""
import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device('cpu')

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Distributed:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); else one process."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size > 1:
        local_rank = int(os.environ.get('LOCAL_RANK', '0'))
        use_cuda = torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group('nccl' if use_cuda else 'gloo')
        device = torch.device('cuda', local_rank) if use_cuda else torch.device('cpu')
        return Distributed(dist.get_rank(), world_size, device)
    return Distributed(0, 1, torch.device('cuda' if torch.cuda.is_available() else 'cpu'))


def broadcast_object(info: Distributed, value: Any) -> Any:
    """Rank 0's `value` on every rank."""
    if info.world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(info: Distributed, value: Any) -> List[Any]:
    """Every rank's `value`, in rank order, on rank 0 (an empty list elsewhere)."""
    if info.world_size == 1:
        return [value]
    gathered = [None] * info.world_size if info.is_main else None
    dist.gather_object(value, gathered, dst=0)
    return gathered or []
