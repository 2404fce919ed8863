"""Training RMNet or TinyFlowNet with the published recipe (SPEC 5), on one or many GPUs.

    python runner.py                                   one process (GPU if there is one)
    torchrun --nproc_per_node 4 runner.py              DistributedDataParallel, one GPU each

Each epoch: the frame step of the curriculum, one pass over the training set (Adam, cosine
schedule), validation on the configured videos, checkpoints. ckpt-best.pth (and the every-N
ckpt-epoch-*.pth) are published-format weights; ckpt-last.pth adds what `--resume` needs to
continue exactly: optimizer, scheduler, epoch, curriculum and random states. Rank 0 logs, validates and writes; a failing batch stops the
run with its error (nothing is skipped silently).
"""
import gc
import itertools
import logging
import math
import os
import random
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torchvision.models import ResNet50_Weights
from tqdm import tqdm

from core.distributed import Distributed, broadcast_object, setup_distributed
from core.segmenter import VideoSegmenter, frame_statistics
from core.training_graphs import GraphedTrainingStep, graphs_apply, training_step
from datasets.registry import SPLITS, list_videos
from datasets.transforms import normalise_frames
from datasets.video import Video
from datasets.video_clips import build_training_set, max_frame_step
from models.initialization import calibrate_random_rmnet, init_new_layers
from models.losses import flow_loss, segmentation_loss_terms
from models.object_manager import ObjectIndex
from models.rmnet import RMNet
from models.tiny_flownet import TinyFlowNet
from utils.checkpoint import (CheckpointError, load_networks, load_state_strict, published_checkpoint,
                              read_checkpoint, save_checkpoint)
from utils.cli import UserError
from utils.io import DataError, WriteError, read_frame, read_mask
from utils.metrics import quick_video_metrics
from utils.output_safety import check_output_folder, remove_stale_temporaries
from utils.torchvision_weights import MissingWeightsError, fetch_weights
from utils.visualization import overlay

logger = logging.getLogger(__name__)


class TrainingError(UserError, RuntimeError):
    """A training run that cannot start or continue; the message says why."""


def load_imagenet_backbones(rmnet: RMNet) -> None:
    """Copy torchvision's ImageNet ResNet-50 (conv1, bn1, layer1-3) into both encoders."""
    try:
        path = fetch_weights(ResNet50_Weights.IMAGENET1K_V1)
    except MissingWeightsError as e:
        raise TrainingError(f'{e}; or start from random weights with '
                            f'--set TRAIN.PRETRAINED_BACKBONE False') from e
    state = torch.load(path, map_location='cpu', weights_only=True)
    names = {'conv1': 'conv1', 'bn1': 'bn1', 'layer1': 'res2', 'layer2': 'res3', 'layer3': 'res4'}
    for encoder in (rmnet.encoder_memory, rmnet.encoder_query):
        own = encoder.state_dict()
        for key, value in state.items():
            head, rest = key.split('.', 1)
            if head in names:
                own[f'{names[head]}.{rest}'] = value
        encoder.load_state_dict(own, strict=True)


def build_networks(cfg, weights: Optional[str], resuming: bool = False) -> Tuple[TinyFlowNet, RMNet]:
    """The two networks: from `weights`, or initialised for a new run (resuming: left for the
    checkpoint to fill)."""
    tflownet, rmnet = TinyFlowNet(cfg), RMNet(cfg)
    for module in (tflownet, rmnet.kv_memory, rmnet.kv_query, rmnet.decoder):
        init_new_layers(module)
    if weights:
        load_networks(weights, tflownet=tflownet, rmnet=rmnet)
    elif cfg.TRAIN.NETWORK == 'RMNet' and not resuming:
        if cfg.TRAIN.PRETRAINED_BACKBONE:
            load_imagenet_backbones(rmnet)
        else:
            logger.warning('Starting RMNet from random weights (TRAIN.PRETRAINED_BACKBONE is False)')
    return tflownet, rmnet


def freeze_batch_norm(module: torch.nn.Module) -> None:
    """BatchNorm layers use their running statistics (published), the rest stays in train mode."""
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def frame_step(cfg, epoch: int, hold_epochs: int) -> int:
    """SPEC 5 curriculum: a step drawn in 1..min(MAX, epoch // 5 + 2), or 1 while held."""
    if hold_epochs > 0:
        return 1
    rng = np.random.default_rng([cfg.CONST.RNG_SEED, 2, epoch])
    return int(rng.integers(1, max_frame_step(cfg, epoch) + 1))


def random_states() -> Dict[str, Any]:
    states = {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: Dict[str, Any]) -> None:
    random.setstate(states['python'])
    np.random.set_state(states['numpy'])
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


def logits_of(probs: torch.Tensor) -> torch.Tensor:
    """Logits of the soft aggregation from RMNet.forward's probabilities: their log, whose
    softmax is the same distribution. The aggregation bounds the logits (a clamp of the
    per-object probabilities), so no probability is 0 and the log is finite."""
    return torch.log(probs.float())


def loss_names(network_name: str) -> Tuple[str, ...]:
    """The per-step loss terms a network reports, the total first."""
    return ('loss', 'lovasz', 'nll') if network_name == 'RMNet' else ('loss',)


def no_stage_mark(stage: str) -> None:
    """The default stage hook of TrainingStep: training does not time its stages."""


class TrainingStep:
    """One optimiser step on a batch, queued on the device without waiting for it.

    Returns the detached loss terms (`loss_names`) as one device tensor, read back by the
    caller when it logs, and for RMNet the probabilities (B, T, K, H, W). `mark(stage)` is
    called as each stage begins ('forward', 'losses', 'backward', 'optimizer') and with
    'end' after the last (tools/benchmark_train.py times the stages with it).
    """

    # the tensors of a loader batch that the step reads
    input_keys = ('frames', 'brightness', 'channel_order', 'masks', 'labels', 'flows')

    def __init__(self, cfg, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, device: torch.device, network_name: str,
                 precision: str, mark: Callable[[str], None] = no_stage_mark):
        self.cfg = cfg
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler
        self.device = device
        self.network_name = network_name
        self.dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(precision)
        self.mark = mark
        self.mean, self.std = frame_statistics(cfg, device)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                              enabled=self.dtype is not None)

    def device_inputs(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """The batch's tensors the step reads (input_keys), copied to the device without waiting
        (the loader pins them)."""
        return {key: batch[key].to(self.device, non_blocking=True) for key in self.input_keys if key in batch}

    def frames(self, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The frames of device_inputs (or of a batch), on the device, brightened and normalised."""
        return normalise_frames(inputs['frames'].to(self.device, non_blocking=True), inputs['brightness'],
                                inputs['channel_order'], self.mean, self.std)

    def losses(self, inputs: Dict[str, torch.Tensor], counts: torch.Tensor,
               objects: Optional[ObjectIndex] = None) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
        """The loss terms of one batch (its device_inputs and its host tensor of objects per
        clip) and, for RMNet, its probabilities. objects: the index of `counts` on the device,
        when the caller holds it (a captured step)."""
        self.mark('forward')
        frames, labels, flows = self.frames(inputs), inputs['labels'].long(), inputs['flows']
        ignore_index = self.cfg.CONST.IGNORE_IDX
        if self.network_name == 'TinyFlowNet':
            with self.autocast():
                predicted = self.model(frames)
            self.mark('losses')
            return [flow_loss(predicted[:, 1:], flows[:, 1:], labels[:, 1:] != ignore_index)], None
        if int(counts.sum()) == 0:                           # a host tensor: no synchronisation
            logger.warning('A batch without any object: zero loss for this step')
            zero = sum(p.sum() * 0 for p in self.model.parameters())
            return [zero, zero, zero], None
        n_objects = counts.view(-1, 1).expand(-1, frames.shape[1])
        with self.autocast():
            probs = self.model(frames, inputs['masks'], flows, n_objects, self.cfg.TRAIN.MEMORIZE_EVERY,
                               objects=objects)
        self.mark('losses')
        lovasz, nll = segmentation_loss_terms(logits_of(probs), labels, ignore_index)
        return [lovasz + nll, lovasz, nll], probs

    def run(self, inputs: Dict[str, torch.Tensor], counts: torch.Tensor,
            objects: Optional[ObjectIndex] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The step on device inputs (see losses): gradients, optimiser, the detached terms."""
        self.optimizer.zero_grad(set_to_none=True)
        terms, probs = self.losses(inputs, counts, objects)
        self.mark('backward')
        self.scaler.scale(terms[0]).backward()
        self.mark('optimizer')
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.mark('end')
        # detached: nothing the caller keeps holds this step's autograd graph (a captured
        # step's backward must not meet the gradient accumulators of an earlier one)
        return torch.stack(terms).detach(), None if probs is None else probs.detach()

    def __call__(self, batch: Dict[str, Any]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        return self.run(self.device_inputs(batch), batch['n_objects'])


class LossLog:
    """The loss terms of the steps since the last read, kept on the device. On a GPU a read
    starts copying them to pinned host memory and returns those of the read before (long
    copied by then), so the loop never waits for the GPU; `wait` (the end of an epoch) returns
    everything. A non-finite loss stops the run when it is read, naming its step and clips
    (checkpoints are written only after an epoch whose losses were all read; TensorBoard
    images of up to 2 x TRAIN.LOG_EVERY steps after it may have been written)."""

    def __init__(self, names: Sequence[str]):
        self.names = tuple(names)
        self.pending: List[Tuple[int, Any, torch.Tensor]] = []
        self.copying: Optional[Tuple[List[Tuple[int, Any, torch.Tensor]], torch.Tensor, torch.cuda.Event]] = None

    def __len__(self) -> int:
        return len(self.pending)

    def add(self, step: int, clips: Any, terms: torch.Tensor) -> None:
        self.pending.append((step, clips, terms))

    def read(self, epoch: int, wait: bool = False) -> List[Tuple[int, Dict[str, float]]]:
        """(step, {term: value}) of the steps read back by now, in order (with `wait` or on the
        CPU: every step added)."""
        records = []
        if self.copying is not None:
            entries, host, done = self.copying
            self.copying = None
            done.synchronize()
            records += self._records(epoch, entries, host.tolist())
        if not self.pending:
            return records
        entries, self.pending = self.pending, []
        terms = torch.stack([terms for _, _, terms in entries])
        if wait or not terms.is_cuda:
            return records + self._records(epoch, entries, terms.tolist())
        host = torch.empty(terms.shape, dtype=terms.dtype, pin_memory=True)
        host.copy_(terms, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self.copying = (entries, host, done)
        return records

    def _records(self, epoch: int, entries: List[Tuple[int, Any, torch.Tensor]],
                 values: List[List[float]]) -> List[Tuple[int, Dict[str, float]]]:
        records = []
        for (step, clips, _), row in zip(entries, values):
            if not all(math.isfinite(v) for v in row):
                raise TrainingError(f'the loss is {row[0]} at epoch {epoch}, step {step} (clips {clips})')
            records.append((step, dict(zip(self.names, row))))
        return records


class TimedBatches:
    """The batches of a loader, with the time spent waiting for them (the loading workers
    falling behind the GPU shows here)."""

    def __init__(self, batches: Iterable[Dict[str, Any]]):
        self.batches = batches
        self.waited = 0.0

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        iterator = iter(self.batches)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.waited += time.perf_counter() - start
            yield batch


class EpochItems(torch.utils.data.Dataset):
    """The training set addressed by (epoch, frame step, index) keys, so that workers that
    live across epochs (persistent_workers) draw each item of each epoch as a fresh
    DataLoader would: the key sets the dataset's epoch and frame step in the worker."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset
        self.state: Optional[Tuple[int, int]] = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int, int]) -> Dict[str, Any]:
        epoch, step, index = key
        if self.state != (epoch, step):
            self.dataset.set_epoch(epoch)
            self.dataset.set_frame_step(step)
            self.state = (epoch, step)
        return self.dataset[index]


class EpochBatches(torch.utils.data.Sampler):
    """The batches of the planned epochs in turn, as lists of EpochItems keys: each epoch's order
    of the training set (seeded by CONST.RNG_SEED and the epoch; with several processes each
    takes its share, DistributedSampler) cut into batches, a partial last one dropped. With the
    later epochs planned too, the workers load the next epoch's first batches while this one
    ends (the loader prefetches across the boundary)."""

    def __init__(self, n_items: int, batch_size: int, seed: int, dist_info: Distributed):
        self.n_items = n_items
        self.batch_size = batch_size
        self.seed = seed
        self.dist = dist_info
        self.plan: Tuple[Tuple[int, int], ...] = ((0, 1),)    # (epoch, frame step) in order
        # the latest iteration: a token of its own and the plan it follows
        self.iterated: Optional[Tuple[object, Tuple[Tuple[int, int], ...]]] = None

    def set_plan(self, epochs: Sequence[Tuple[int, int]]) -> None:
        self.plan = tuple(epochs)

    def set_epoch(self, epoch: int, frame_step: int) -> None:
        """Plan one epoch only."""
        self.set_plan(((epoch, frame_step),))

    def _order(self, epoch: int) -> torch.utils.data.Sampler:
        if self.dist.world_size > 1:
            sampler = torch.utils.data.DistributedSampler(range(self.n_items), self.dist.world_size,
                                                          self.dist.rank, shuffle=True, seed=self.seed,
                                                          drop_last=True)
            sampler.set_epoch(epoch)
            return sampler
        generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        return torch.utils.data.RandomSampler(range(self.n_items), generator=generator)

    def batches_per_epoch(self) -> int:
        return len(self._order(0)) // self.batch_size

    def __len__(self) -> int:
        return self.batches_per_epoch() * len(self.plan)

    def __iter__(self) -> Iterator[List[Tuple[int, int, int]]]:
        self.iterated = (object(), self.plan)
        return self._batches(self.plan)

    def _batches(self, plan: Sequence[Tuple[int, int]]) -> Iterator[List[Tuple[int, int, int]]]:
        for epoch, step in plan:
            order = [int(i) for i in self._order(epoch)]
            for start in range(0, self.batches_per_epoch() * self.batch_size, self.batch_size):
                yield [(epoch, step, i) for i in order[start:start + self.batch_size]]


def training_loader(cfg, dataset: torch.utils.data.Dataset, batches: EpochBatches,
                    device: torch.device) -> torch.utils.data.DataLoader:
    """Loading and augmentation in CONST.N_WORKERS worker processes that live across epochs,
    batches prefetched into pinned memory (CUDA) for asynchronous copies to the device."""
    workers = cfg.CONST.N_WORKERS
    return torch.utils.data.DataLoader(EpochItems(dataset), batch_sampler=batches, num_workers=workers,
                                       pin_memory=device.type == 'cuda', persistent_workers=workers > 0)


def build_optimizer(cfg, module: torch.nn.Module, device: torch.device,
                    capturable: bool = False) -> torch.optim.Adam:
    """Adam with the configured rate, betas and weight decay; the fused kernel on a GPU,
    capturable (its step counts on the device) when the step is replayed as a CUDA graph."""
    fused = device.type == 'cuda'
    return torch.optim.Adam(module.parameters(), lr=cfg.TRAIN.LEARNING_RATE, betas=tuple(cfg.TRAIN.BETAS),
                            weight_decay=cfg.TRAIN.WEIGHT_DECAY, fused=fused, capturable=fused and capturable)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Dict[str, Any]) -> None:
    """optimizer.load_state_dict, keeping this optimizer's own implementation (fused,
    capturable, foreach): a run saved with CUDA graphs resumes without them and back. The step
    counts go where that implementation keeps them (the parameter's device or the host)."""
    own = [{key: group[key] for key in ('fused', 'capturable', 'foreach') if key in group}
           for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, flags in zip(optimizer.param_groups, own):
        group.update(flags)
        on_device = bool(group.get('fused') or group.get('capturable'))
        for param in group['params']:
            per_param = optimizer.state.get(param, {})
            if torch.is_tensor(per_param.get('step')):
                per_param['step'] = per_param['step'].to(device=param.device if on_device else 'cpu', dtype=torch.float32)


def use_channels_last(cfg, module: torch.nn.Module, device: torch.device) -> None:
    """TRAIN.CHANNELS_LAST on a GPU: the network's weights (and so its activations) in NHWC
    layout, which cuDNN's tensor-core kernels take without transposing."""
    if cfg.TRAIN.CHANNELS_LAST and device.type == 'cuda':
        module.to(memory_format=torch.channels_last)


class Trainer:
    """Holds the networks, optimiser, data and bookkeeping of one training run."""

    def __init__(self, cfg, out_dir: str, weights: Optional[str] = None, resume: Optional[str] = None,
                 dist_info: Optional[Distributed] = None):
        self.cfg = cfg
        self.dist = dist_info or setup_distributed()
        self.out_dir = out_dir
        self.network_name = cfg.TRAIN.NETWORK
        if self.network_name not in ('RMNet', 'TinyFlowNet'):
            raise TrainingError(f'TRAIN.NETWORK must be RMNet or TinyFlowNet, got {self.network_name!r}')
        self.precision = cfg.TRAIN.PRECISION
        if self.precision not in ('fp32', 'bf16', 'fp16'):
            raise TrainingError(f'TRAIN.PRECISION must be fp32, bf16 or fp16, got {self.precision!r}')
        batch = int(cfg.TRAIN.BATCH_SIZE)
        if batch % self.dist.world_size:
            raise TrainingError(f'TRAIN.BATCH_SIZE ({batch}) must be a multiple of the number of '
                                f'processes ({self.dist.world_size})')
        self.batch_per_process = batch // self.dist.world_size

        self.tflownet, self.rmnet = build_networks(cfg, None if resume else weights, resuming=bool(resume))
        self.tflownet.to(self.dist.device)
        self.rmnet.to(self.dist.device)
        self.trained = self.rmnet if self.network_name == 'RMNet' else self.tflownet
        use_channels_last(cfg, self.trained, self.dist.device)
        if self.dist.device.type == 'cuda':
            torch.backends.cudnn.benchmark = cfg.TRAIN.CUDNN_BENCHMARK
        if cfg.TRAIN.SYNC_BN and self.dist.world_size > 1:
            self.trained = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.trained)
            if self.network_name == 'RMNet':
                self.rmnet = self.trained
        self.model = self.trained
        if self.dist.world_size > 1:
            device_ids = [self.dist.device.index] if self.dist.device.type == 'cuda' else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.trained, device_ids=device_ids)
        graphs = graphs_apply(cfg, self.dist.device, self.dist.world_size, self.precision)
        self.optimizer = build_optimizer(cfg, self.trained, self.dist.device, capturable=graphs)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.TRAIN.N_EPOCHS)
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.precision == 'fp16'
                                           and self.dist.device.type == 'cuda')
        self.epoch = 1
        self.global_step = 0
        self.hold_epochs = 0
        self.best_metrics = {'J-Mean': 0.0, 'F-Mean': 0.0, 'JF-Mean': 0.0}
        self.best_loss = math.inf
        self.dataset = checked_training_set(cfg)
        self.validation_videos = validation_videos(cfg)
        self.resumed_from = resume
        self.unvalidated_loss: Optional[float] = None     # a resumed epoch whose validation did not finish
        self.sampler = EpochBatches(len(self.dataset), self.batch_per_process, cfg.CONST.RNG_SEED, self.dist)
        self.loader = training_loader(cfg, self.dataset, self.sampler, self.dist.device)
        self.batches: Optional[Iterator[Dict[str, Any]]] = None   # the loader's iterator
        # its iteration (sampler.iterated), the epochs taken from it, whether the last one finished
        self.loading: Tuple[Any, int, bool] = (None, 0, True)
        self.last_epoch = int(cfg.TRAIN.N_EPOCHS)
        self.step = TrainingStep(cfg, self.model, self.optimizer, self.scaler, self.dist.device,
                                 self.network_name, self.precision)
        self.stepper = training_step(cfg, self.step, graphs)     # graphed or the step
        if len(self.dataset) < batch:
            raise TrainingError(f'the training set has {len(self.dataset)} clips, fewer than one batch '
                                f'of {batch} (TRAIN.BATCH_SIZE)')
        if resume:
            self._resume(resume)
        elif self.network_name == 'RMNet' and not weights and not cfg.TRAIN.PRETRAINED_BACKBONE:
            self._calibrate()
        self.writer = None
        if self.dist.is_main:
            from tensorboardX import SummaryWriter
            self.writer = SummaryWriter(os.path.join(out_dir, 'logs'))

    def _calibrate(self, n_batches: int = 4) -> None:
        """Random weights: condition the encoders and keys on training frames (rank 0's draw,
        then broadcast, so every process starts from the same network)."""
        if self.dist.is_main:
            self.sampler.set_epoch(0, 1)
            batches = []
            for batch, _ in zip(self.loader, range(n_batches)):
                frames = self.step.frames(batch)[:, 0]
                masks = batch['masks'][:, 0, 1:2].to(self.dist.device).float()
                batches.append((frames, masks))
            calibrate_random_rmnet(self.rmnet, batches)
            logger.info('Calibrated the random RMNet on %d training batches', len(batches))
        if self.dist.world_size > 1:
            for tensor in self.rmnet.state_dict().values():
                dist.broadcast(tensor, 0)

    def _resume(self, path: str) -> None:
        checkpoint = read_checkpoint(path)
        missing = [k for k in ('optimizer', 'scheduler', 'epoch_index', 'rng', 'network') if k not in checkpoint]
        if missing:
            raise CheckpointError(f'{path}: cannot resume from it, it lacks {missing} (a published '
                                  f'checkpoint can initialise a run with --weights instead)')
        if checkpoint['network'] != self.network_name:
            raise CheckpointError(f'{path}: trains {checkpoint["network"]}, but TRAIN.NETWORK is '
                                  f'{self.network_name}')
        load_state_strict(self.tflownet, checkpoint['tflownet'], f'{path} [tflownet]')
        load_state_strict(self.rmnet, checkpoint['rmnet'], f'{path} [rmnet]')
        load_optimizer_state(self.optimizer, checkpoint['optimizer'])
        self.scheduler.load_state_dict(checkpoint['scheduler'])
        if 'scaler' in checkpoint:
            self.scaler.load_state_dict(checkpoint['scaler'])
        self.epoch = checkpoint['epoch_index'] + 1
        self.global_step = checkpoint.get('global_step', 0)
        self.hold_epochs = checkpoint.get('hold_epochs', 0)
        self.best_metrics = checkpoint.get('best_metrics', self.best_metrics)
        self.best_loss = checkpoint.get('best_loss', self.best_loss)
        restore_random_states(checkpoint['rng'])
        if not checkpoint.get('validated', True):
            self.unvalidated_loss = checkpoint['epoch_loss']
        logger.info('Resuming from %s at epoch %d', path, self.epoch)

    def train_step(self, batch: Dict[str, Any]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """One step: the detached loss terms (device tensor) and, for RMNet, the probabilities."""
        terms, probs = self.stepper(batch)
        self.global_step += 1
        return terms, probs

    def set_train_mode(self) -> None:
        self.trained.train()
        if self.cfg.TRAIN.FREEZE_BN and not self.cfg.TRAIN.SYNC_BN:
            freeze_batch_norm(self.trained)

    def epoch_frame_step(self, epoch: int, hold_epochs: int) -> int:
        return 1 if self.network_name == 'TinyFlowNet' else frame_step(self.cfg, epoch, hold_epochs)

    def epoch_batches(self, step: int) -> Iterator[Dict[str, Any]]:
        """This epoch's batches, from a loader that goes on loading the epochs after it up to
        self.last_epoch, their frame steps planned with the curriculum as it stands. A change at
        validation, an epoch left early or another use of the loader restarts it with the right plan."""
        iteration, taken, finished = self.loading
        if (self.batches is None or not finished or self.sampler.iterated is not iteration
                or iteration[1][taken:taken + 1] != ((self.epoch, step),)):
            hold = self.hold_epochs
            self.sampler.set_plan([(self.epoch, step)] + [
                (e, self.epoch_frame_step(e, max(0, hold - (e - self.epoch))))
                for e in range(self.epoch + 1, self.last_epoch + 1)])
            self.batches = iter(self.loader)
            iteration, taken = self.sampler.iterated, 0
        n_batches = self.sampler.batches_per_epoch()
        self.loading = (iteration, taken + 1, False)     # finished once every batch is out
        for delivered, batch in enumerate(itertools.islice(self.batches, n_batches), 1):
            if delivered == n_batches:
                self.loading = (iteration, taken + 1, True)
            yield batch

    def train_epoch(self) -> float:
        self.set_train_mode()
        step = self.epoch_frame_step(self.epoch, self.hold_epochs)
        log = LossLog(loss_names(self.network_name))
        self.epoch_losses: List[float] = []
        if self.dist.device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(self.dist.device)
        started = time.perf_counter()
        batches = TimedBatches(self.epoch_batches(step))
        bar = tqdm(batches, desc=f'Epoch {self.epoch}/{self.cfg.TRAIN.N_EPOCHS} (step {step})',
                   total=self.sampler.batches_per_epoch(), disable=not self.dist.is_main, dynamic_ncols=True)
        for batch in bar:
            terms, probs = self.train_step(batch)
            log.add(self.global_step, batch.get('name'), terms)
            if len(log) >= self.cfg.TRAIN.LOG_EVERY:
                self._write_losses(log.read(self.epoch), bar)
            if (self.writer is not None and probs is not None
                    and self.global_step % self.cfg.TRAIN.VISUALIZE_EVERY == 0):
                self._log_images(batch, probs)
        self._write_losses(log.read(self.epoch, wait=True), bar)
        if isinstance(self.stepper, GraphedTrainingStep):
            # the next epoch's learning rate needs new captures anyway; validation gets the memory
            self.stepper.release()
        self.epoch_learning_rate = self.optimizer.param_groups[0]['lr']
        self.scheduler.step()
        elapsed = time.perf_counter() - started
        n_steps = len(self.epoch_losses)
        self.throughput = {'iterations_per_s': n_steps / elapsed,
                           'samples_per_s': n_steps * self.cfg.TRAIN.BATCH_SIZE / elapsed,
                           'data_wait_fraction': batches.waited / elapsed,
                           'peak_gpu_gib': (torch.cuda.max_memory_allocated(self.dist.device) / 2 ** 30
                                            if self.dist.device.type == 'cuda' else 0.0)}
        mean_loss = float(np.mean(self.epoch_losses)) if self.epoch_losses else math.nan
        if self.dist.world_size > 1:
            total = torch.tensor([mean_loss], device=self.dist.device)
            dist.all_reduce(total)
            mean_loss = float(total) / self.dist.world_size
        if self.writer is not None:
            self.writer.add_scalar('Loss/Epoch', mean_loss, self.epoch)
            self.writer.add_scalar('Train/FrameStep', step, self.epoch)
            self.writer.add_scalar('Train/LearningRate', self.epoch_learning_rate, self.epoch)
            self.writer.add_scalar('Train/IterationsPerSecond', self.throughput['iterations_per_s'], self.epoch)
            self.writer.add_scalar('Train/SamplesPerSecond', self.throughput['samples_per_s'], self.epoch)
            self.writer.add_scalar('Train/DataWaitFraction', self.throughput['data_wait_fraction'], self.epoch)
        return mean_loss

    def _write_losses(self, records: List[Tuple[int, Dict[str, float]]], bar: tqdm) -> None:
        """Losses read back from the device: the epoch's list, TensorBoard, the progress bar."""
        for step, values in records:
            self.epoch_losses.append(values['loss'])
            if self.writer is not None:
                self.writer.add_scalar('Loss/Batch', values['loss'], step)
                for name in ('lovasz', 'nll'):
                    if name in values:
                        self.writer.add_scalar(f'Loss/Batch{name.capitalize()}', values[name], step)
        if records:
            bar.set_postfix(loss=f'{records[-1][1]["loss"]:.4f}')

    def _log_images(self, batch: Dict[str, Any], probs: torch.Tensor) -> None:
        # the clip's byte frame in its original colours (RandomChannelPermutation undone)
        frame = batch['frames'][0, -1].permute(1, 2, 0).numpy()[..., np.argsort(batch['channel_order'][0].numpy())]
        predicted = probs[0, -1].argmax(0).cpu().numpy().astype(np.uint8)
        truth = batch['labels'][0, -1].numpy().astype(np.uint8)
        picture = np.concatenate([overlay(frame, truth), overlay(frame, predicted)], axis=1)
        self.writer.add_image('Train/TruthPrediction', picture, self.global_step, dataformats='HWC')

    @torch.no_grad()
    def validate(self) -> Optional[Dict[str, float]]:
        """The published quick J/F means over the validation videos (rank 0), or None."""
        videos = self.validation_videos
        if videos is None:
            return None
        segmenter = VideoSegmenter(None, self.dist.device, cfg=self.cfg, tflownet=self.tflownet, rmnet=self.rmnet)
        scores = []
        try:
            for video in tqdm(videos, desc='Validation', leave=False, dynamic_ncols=True):
                frames = (read_frame(p) for p in video.frame_paths)
                first = read_mask(video.given_masks[0])
                predicted = np.stack(list(segmenter.segment(frames, first)))
                truth = np.stack([read_mask(video.ground_truth[i]) for i in sorted(video.ground_truth)])
                scores.append(quick_video_metrics(truth, predicted[sorted(video.ground_truth)]))
        finally:
            segmenter.release()          # its graphs and memory would stay on the GPU into training
        metrics = {key: float(np.mean([s[key] for s in scores])) for key in ('J-Mean', 'F-Mean', 'JF-Mean')}
        for key, value in metrics.items():
            self.writer.add_scalar(f'Validation/{key}', value, self.epoch)
        return metrics

    def checkpoint_path(self, name: str) -> str:
        return os.path.join(self.out_dir, 'checkpoints', name)

    def _weights(self) -> Dict[str, Any]:
        return published_checkpoint(self.tflownet, self.rmnet, epoch_index=self.epoch,
                                    best_metrics=self.best_metrics, network=self.network_name)

    def _resume_state(self, weights: Dict[str, Any], validated: bool = True,
                      epoch_loss: float = math.nan) -> Dict[str, Any]:
        return dict(weights, optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
                    global_step=self.global_step, hold_epochs=self.hold_epochs,
                    best_loss=self.best_loss, rng=random_states(), validated=validated,
                    epoch_loss=epoch_loss)

    def save_last(self, loss: float) -> None:
        """ckpt-last.pth of the epoch just trained, before validation, so that a failing
        validation never costs the trained epoch; resuming from it validates the epoch first."""
        self._save(self.checkpoint_path('ckpt-last.pth'),
                   self._resume_state(self._weights(), validated=False, epoch_loss=loss))

    def save(self, metrics: Optional[Dict[str, float]], loss: float) -> None:
        """ckpt-last.pth with the validation's outcome, ckpt-best.pth when the main metric (the
        loss without validation) improved or no best checkpoint exists yet, and the every-N
        ckpt-epoch-*.pth."""
        main_metric = self.cfg.TEST.MAIN_METRIC_NAME
        best_path = self.checkpoint_path('ckpt-best.pth')
        improved = (metrics[main_metric] > self.best_metrics[main_metric] if metrics is not None
                    else loss < self.best_loss)
        if improved:
            if metrics is not None:
                self.best_metrics = metrics
            self.best_loss = min(self.best_loss, loss)
        weights = self._weights()
        self._save(self.checkpoint_path('ckpt-last.pth'), self._resume_state(weights))
        if improved or not os.path.isfile(best_path):
            self._save(best_path, weights)
        if self.cfg.TRAIN.SAVE_FREQ and self.epoch % self.cfg.TRAIN.SAVE_FREQ == 0:
            self._save(self.checkpoint_path(f'ckpt-epoch-{self.epoch:03d}.pth'), weights)

    def _save(self, path: str, content: Dict[str, Any]) -> None:
        try:
            save_checkpoint(path, content)
        except WriteError as e:
            raise TrainingError(f'{e}; training stopped after epoch {self.epoch}') from e

    def _validate_saved_epoch(self, loss: float) -> Optional[Dict[str, float]]:
        """validate(), after saving the epoch; a failure names the checkpoint to resume from."""
        if self.validation_videos is None:
            return None
        self.save_last(loss)
        try:
            return self.validate()
        except UserError as e:
            last = self.checkpoint_path('ckpt-last.pth')
            raise TrainingError(f'validation after epoch {self.epoch} failed: {e}; the epoch is saved '
                                f'in {last}: fix the problem and continue with --resume {last}') from e

    def _update_curriculum(self, metrics: Optional[Dict[str, float]]) -> None:
        self.hold_epochs = max(0, self.hold_epochs - 1)
        if (metrics is not None and self.epoch >= self.cfg.TRAIN.EFFECTIVE_EPOCH
                and metrics['JF-Mean'] > self.cfg.TRAIN.EFFECTIVE_JF and self.hold_epochs == 0):
            self.hold_epochs = self.cfg.TRAIN.EFFECTIVE_HOLD_EPOCHS

    def run(self, max_epochs: Optional[int] = None) -> Dict[str, Any]:
        """Train up to TRAIN.N_EPOCHS (or `max_epochs` more epochs); return the last summary."""
        last_epoch = self.cfg.TRAIN.N_EPOCHS if max_epochs is None else min(self.cfg.TRAIN.N_EPOCHS,
                                                                            self.epoch + max_epochs - 1)
        self.summary: Dict[str, Any] = {}
        self.last_epoch = last_epoch
        if self.unvalidated_loss is not None:
            self._finish_unvalidated_epoch()
        if self.epoch > last_epoch and self.dist.is_main:
            logger.warning('%s: all %d epochs (TRAIN.N_EPOCHS) are already trained; nothing to do. '
                           'Raise TRAIN.N_EPOCHS to train longer', self.resumed_from, self.cfg.TRAIN.N_EPOCHS)
        # what exists now (networks, datasets and their indexes) lives through the run: the
        # garbage collector stops rescanning it, which it otherwise does many times an epoch
        frozen_here = gc.get_freeze_count() == 0        # a caller's own freeze is left alone
        if frozen_here:
            gc.collect()
            gc.freeze()
        try:
            self._run_epochs(last_epoch)
        finally:
            if frozen_here:
                gc.unfreeze()
        if self.writer is not None:
            self.writer.close()
        return self.summary

    def _run_epochs(self, last_epoch: int) -> None:
        while self.epoch <= last_epoch:
            loss = self.train_epoch()
            metrics = self._validate_and_save(loss)
            self.summary = {'epoch': self.epoch, 'loss': loss, 'metrics': metrics}
            if self.dist.is_main:
                logger.info('Epoch %d/%d: loss %.4f, %.2f it/s, %.1f samples/s, %.0f%% of the time waiting '
                            'for data, peak GPU memory %.2f GiB%s',
                            self.epoch, self.cfg.TRAIN.N_EPOCHS, loss, self.throughput['iterations_per_s'],
                            self.throughput['samples_per_s'], 100 * self.throughput['data_wait_fraction'],
                            self.throughput['peak_gpu_gib'], _metrics_text(metrics))
            self.epoch += 1

    def _validate_and_save(self, loss: float) -> Optional[Dict[str, float]]:
        """The end of an epoch: validation, curriculum and checkpoints on rank 0, the curriculum
        shared with every rank."""
        metrics = self._validate_saved_epoch(loss) if self.dist.is_main else None
        if self.dist.is_main:
            self._update_curriculum(metrics)
            self.save(metrics, loss)
        if self.dist.world_size > 1:
            hold = torch.tensor([self.hold_epochs], device=self.dist.device)
            dist.broadcast(hold, 0)
            self.hold_epochs = int(hold)
            dist.barrier()
        return metrics

    def _finish_unvalidated_epoch(self) -> None:
        """The resumed checkpoint was saved before its epoch's validation finished: validate and
        save that epoch now (best and every-N checkpoints, curriculum), as the run would have."""
        loss, self.unvalidated_loss = self.unvalidated_loss, None
        self.epoch -= 1
        try:
            if self.dist.is_main:
                logger.info('Epoch %d was saved before its validation finished: validating it first', self.epoch)
            metrics = self._validate_and_save(loss)
            self.summary = {'epoch': self.epoch, 'loss': loss, 'metrics': metrics}
            if self.dist.is_main:
                logger.info('Epoch %d/%d: loss %.4f%s', self.epoch, self.cfg.TRAIN.N_EPOCHS, loss,
                            _metrics_text(metrics))
        finally:
            self.epoch += 1


def _metrics_text(metrics: Optional[Dict[str, float]]) -> str:
    return '' if metrics is None else ', ' + ', '.join(f'{k} {v:.4f}' for k, v in metrics.items())


def checked_training_set(cfg) -> torch.utils.data.Dataset:
    """build_training_set, with a TrainingError naming DATASET.TRAIN_DATASET for a bad entry."""
    try:
        return build_training_set(cfg)
    except DataError:
        raise
    except (ValueError, KeyError) as e:
        raise TrainingError(f'DATASET.TRAIN_DATASET = {list(cfg.DATASET.TRAIN_DATASET)}: {e}') from e


def validation_videos(cfg) -> Optional[List[Video]]:
    """The videos RMNet is validated on after each epoch (None without DATASET.VAL_DATASET or
    for TinyFlowNet), checked: the dataset, split and every name of DATASET.VAL_VIDEOS must
    exist, with ground truth."""
    name, split, wanted = cfg.DATASET.VAL_DATASET, cfg.DATASET.VAL_SPLIT, list(cfg.DATASET.VAL_VIDEOS)
    if not name or cfg.TRAIN.NETWORK != 'RMNet':
        return None
    if name not in SPLITS:
        raise TrainingError(f'DATASET.VAL_DATASET: unknown dataset {name!r}; known: {", ".join(SPLITS)} '
                            f'(or empty for no validation)')
    if split not in SPLITS[name]:
        raise TrainingError(f'DATASET.VAL_SPLIT: {name} has no split {split!r}; splits: '
                            f'{", ".join(SPLITS[name])}')
    videos = list_videos(cfg, name, split)
    unknown = sorted(set(wanted) - {v.name for v in videos})
    if unknown:
        raise TrainingError(f'DATASET.VAL_VIDEOS: {", ".join(map(repr, unknown))} not in {name} {split}')
    videos = [v for v in videos if (not wanted or v.name in wanted) and v.ground_truth]
    if not videos:
        raise TrainingError(f'no validation video with ground truth in {name} {split} '
                            f'(DATASET.VAL_VIDEOS = {wanted})')
    return videos


def check_run_folder(cfg, out_dir: str, resume: Optional[str]) -> None:
    """Before anything is trained: the run folder is outside the datasets, and holds no other
    run's checkpoints or logs (those are only continued, with --resume of its checkpoint)."""
    check_output_folder(cfg, out_dir)
    folder = os.path.join(out_dir, 'checkpoints')
    remove_stale_temporaries(folder)
    existing = sorted(name for name in (os.listdir(folder) if os.path.isdir(folder) else [])
                      if name.endswith('.pth'))
    logs = os.path.join(out_dir, 'logs')
    if os.path.isdir(logs) and os.listdir(logs):
        existing.append('logs/')
    same_run = resume is not None and os.path.realpath(os.path.dirname(os.path.abspath(resume))) == \
        os.path.realpath(folder)
    if existing and not same_run:
        last = os.path.join(folder, 'ckpt-last.pth')
        raise TrainingError(f'{out_dir} already holds the run {", ".join(existing)}; its checkpoints '
                            f'are never replaced: continue it with --resume {last}, or start a new run '
                            f'with another --exp NAME')
    from core.streaming import prepare_output_dir
    prepare_output_dir(folder)


def train_net(cfg, weights: Optional[str] = None, resume: Optional[str] = None,
              out_dir: Optional[str] = None) -> Dict[str, Any]:
    """Entry point of `python runner.py` (training): every check before the first step."""
    from core.streaming import experiment_dir
    weights = weights or cfg.CONST.WEIGHTS or None
    resume = resume or cfg.TRAIN.RESUME or None
    dist_info = setup_distributed()
    problem = None
    if dist_info.is_main:                  # rank 0 names the folder, before any rank writes
        try:
            out_dir = out_dir or experiment_dir(cfg)
            check_run_folder(cfg, out_dir, resume)
        except UserError as e:
            problem = str(e)
    out_dir, problem = broadcast_object(dist_info, (out_dir, problem))
    if problem is not None:
        raise TrainingError(problem)
    trainer = Trainer(cfg, out_dir, weights=weights, resume=resume, dist_info=dist_info)
    return trainer.run()
