"""Training RMNet or TinyFlowNet with the published recipe (SPEC 5), on one or many GPUs.

    python runner.py                                   one process (GPU if there is one)
    torchrun --nproc_per_node 4 runner.py              DistributedDataParallel, one GPU each

Each epoch: the frame step of the curriculum, one pass over the training set (Adam, cosine
schedule), validation on the configured videos, checkpoints. ckpt-best.pth (and the every-N
ckpt-epoch-*.pth) are published-format weights; ckpt-last.pth adds what `--resume` needs to
continue exactly: optimizer, scheduler, epoch, curriculum and random states. Rank 0 logs, validates and writes; a failing batch stops the
run with its error (nothing is skipped silently).
"""
import logging
import math
import os
import random
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torchvision.models import ResNet50_Weights
from tqdm import tqdm

from core.distributed import Distributed, setup_distributed
from core.segmenter import VideoSegmenter
from datasets.registry import list_videos
from datasets.video_clips import build_training_set, max_frame_step
from models.initialization import calibrate_random_rmnet, init_new_layers
from models.losses import flow_loss, segmentation_loss
from models.rmnet import RMNet
from models.tiny_flownet import TinyFlowNet
from utils.checkpoint import (CheckpointError, load_networks, load_state_strict, published_checkpoint,
                              read_checkpoint, save_checkpoint)
from utils.io import read_frame, read_mask
from utils.metrics import quick_video_metrics
from utils.torchvision_weights import MissingWeightsError, fetch_weights
from utils.visualization import overlay

logger = logging.getLogger(__name__)
class TrainingError(RuntimeError):
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


def build_networks(cfg, weights: Optional[str]) -> Tuple[TinyFlowNet, RMNet]:
    tflownet, rmnet = TinyFlowNet(cfg), RMNet(cfg)
    for module in (tflownet, rmnet.kv_memory, rmnet.kv_query, rmnet.decoder):
        init_new_layers(module)
    if weights:
        load_networks(weights, tflownet=tflownet, rmnet=rmnet)
    elif cfg.TRAIN.NETWORK == 'RMNet':
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

        self.tflownet, self.rmnet = build_networks(cfg, None if resume else weights)
        self.tflownet.to(self.dist.device)
        self.rmnet.to(self.dist.device)
        self.trained = self.rmnet if self.network_name == 'RMNet' else self.tflownet
        if cfg.TRAIN.SYNC_BN and self.dist.world_size > 1:
            self.trained = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.trained)
            if self.network_name == 'RMNet':
                self.rmnet = self.trained
        self.model = self.trained
        if self.dist.world_size > 1:
            device_ids = [self.dist.device.index] if self.dist.device.type == 'cuda' else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.trained, device_ids=device_ids)
        self.optimizer = torch.optim.Adam(self.trained.parameters(), lr=cfg.TRAIN.LEARNING_RATE,
                                          betas=tuple(cfg.TRAIN.BETAS), weight_decay=cfg.TRAIN.WEIGHT_DECAY)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.TRAIN.N_EPOCHS)
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.precision == 'fp16'
                                           and self.dist.device.type == 'cuda')
        self.epoch = 1
        self.global_step = 0
        self.hold_epochs = 0
        self.best_metrics = {'J-Mean': 0.0, 'F-Mean': 0.0, 'JF-Mean': 0.0}
        self.best_loss = math.inf
        self.dataset = build_training_set(cfg)
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
            loader = self._loader(0)
            batches = []
            for batch, _ in zip(loader, range(n_batches)):
                frames = batch['frames'][:, 0].to(self.dist.device)
                masks = batch['masks'][:, 0, 1:2].to(self.dist.device)
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
        self.optimizer.load_state_dict(checkpoint['optimizer'])
        self.scheduler.load_state_dict(checkpoint['scheduler'])
        if 'scaler' in checkpoint:
            self.scaler.load_state_dict(checkpoint['scaler'])
        self.epoch = checkpoint['epoch_index'] + 1
        self.global_step = checkpoint.get('global_step', 0)
        self.hold_epochs = checkpoint.get('hold_epochs', 0)
        self.best_metrics = checkpoint.get('best_metrics', self.best_metrics)
        self.best_loss = checkpoint.get('best_loss', self.best_loss)
        restore_random_states(checkpoint['rng'])
        logger.info('Resuming from %s at epoch %d', path, self.epoch)

    def _loader(self, epoch: int) -> torch.utils.data.DataLoader:
        if self.dist.world_size > 1:
            sampler = torch.utils.data.DistributedSampler(self.dataset, self.dist.world_size, self.dist.rank,
                                                          shuffle=True, seed=self.cfg.CONST.RNG_SEED,
                                                          drop_last=True)
            sampler.set_epoch(epoch)
        else:
            generator = torch.Generator().manual_seed(self.cfg.CONST.RNG_SEED * 1000 + epoch)
            sampler = torch.utils.data.RandomSampler(self.dataset, generator=generator)
        return torch.utils.data.DataLoader(self.dataset, batch_size=self.batch_per_process, sampler=sampler,
                                           num_workers=self.cfg.CONST.N_WORKERS, drop_last=True,
                                           pin_memory=self.dist.device.type == 'cuda')

    def _autocast(self):
        dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(self.precision)
        return torch.autocast(self.dist.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def loss(self, batch: Dict[str, Any]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The loss of one batch and, for RMNet, its probabilities (B, T, K, H, W)."""
        device = self.dist.device
        frames = batch['frames'].to(device, non_blocking=True)
        labels = batch['labels'].to(device, non_blocking=True)
        with self._autocast():
            if self.network_name == 'TinyFlowNet':
                flows = batch['flows'].to(device, non_blocking=True)
                predicted = self.model(frames)
                return flow_loss(predicted[:, 1:], flows[:, 1:], labels[:, 1:] != self.cfg.CONST.IGNORE_IDX), None
            masks = batch['masks'].to(device, non_blocking=True)
            flows = batch['flows'].to(device, non_blocking=True)
            n_objects = batch['n_objects'].view(-1, 1).expand(-1, frames.shape[1])
            if int(n_objects.sum()) == 0:
                logger.warning('A batch without any object: zero loss for this step')
                return sum(p.sum() * 0 for p in self.model.parameters()), None
            probs = self.model(frames, masks, flows, n_objects, self.cfg.TRAIN.MEMORIZE_EVERY)
        return segmentation_loss(probs.float(), labels, frames=range(1, frames.shape[1]),
                                 ignore_index=self.cfg.CONST.IGNORE_IDX), probs

    def train_step(self, batch: Dict[str, Any]) -> Tuple[float, Optional[torch.Tensor]]:
        self.optimizer.zero_grad(set_to_none=True)
        loss, probs = self.loss(batch)
        if not torch.isfinite(loss):
            raise TrainingError(f'the loss is {float(loss)} at epoch {self.epoch}, step {self.global_step} '
                                f'(clips {batch.get("name")})')
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.global_step += 1
        return float(loss.detach()), probs

    def set_train_mode(self) -> None:
        self.trained.train()
        if self.cfg.TRAIN.FREEZE_BN and not self.cfg.TRAIN.SYNC_BN:
            freeze_batch_norm(self.trained)

    def train_epoch(self) -> float:
        self.set_train_mode()
        step = 1 if self.network_name == 'TinyFlowNet' else frame_step(self.cfg, self.epoch, self.hold_epochs)
        self.dataset.set_epoch(self.epoch)
        self.dataset.set_frame_step(step)
        loader = self._loader(self.epoch)
        losses = []
        if self.dist.device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(self.dist.device)
        started = time.perf_counter()
        bar = tqdm(loader, desc=f'Epoch {self.epoch}/{self.cfg.TRAIN.N_EPOCHS} (step {step})',
                   disable=not self.dist.is_main, dynamic_ncols=True)
        for batch in bar:
            loss, probs = self.train_step(batch)
            losses.append(loss)
            bar.set_postfix(loss=f'{loss:.4f}')
            if self.writer is not None:
                self.writer.add_scalar('Loss/Batch', loss, self.global_step)
                if probs is not None and self.global_step % self.cfg.TRAIN.VISUALIZE_EVERY == 0:
                    self._log_images(batch, probs)
        self.scheduler.step()
        elapsed = time.perf_counter() - started
        self.throughput = {'iterations_per_s': len(losses) / elapsed,
                           'samples_per_s': len(losses) * self.cfg.TRAIN.BATCH_SIZE / elapsed,
                           'peak_gpu_gib': (torch.cuda.max_memory_allocated(self.dist.device) / 2 ** 30
                                            if self.dist.device.type == 'cuda' else 0.0)}
        mean_loss = float(np.mean(losses)) if losses else math.nan
        if self.dist.world_size > 1:
            total = torch.tensor([mean_loss], device=self.dist.device)
            dist.all_reduce(total)
            mean_loss = float(total) / self.dist.world_size
        if self.writer is not None:
            self.writer.add_scalar('Loss/Epoch', mean_loss, self.epoch)
            self.writer.add_scalar('Train/FrameStep', step, self.epoch)
            self.writer.add_scalar('Train/LearningRate', self.scheduler.get_last_lr()[0], self.epoch)
            self.writer.add_scalar('Train/IterationsPerSecond', self.throughput['iterations_per_s'], self.epoch)
        return mean_loss

    def _log_images(self, batch: Dict[str, Any], probs: torch.Tensor) -> None:
        mean = np.array(self.cfg.CONST.DATASET_MEAN)
        std = np.array(self.cfg.CONST.DATASET_STD)
        frame = batch['frames'][0, -1].permute(1, 2, 0).numpy() * std + mean
        frame = (frame.clip(0, 1) * 255).astype(np.uint8)
        predicted = probs[0, -1].argmax(0).cpu().numpy().astype(np.uint8)
        truth = batch['labels'][0, -1].numpy().astype(np.uint8)
        picture = np.concatenate([overlay(frame, truth), overlay(frame, predicted)], axis=1)
        self.writer.add_image('Train/TruthPrediction', picture, self.global_step, dataformats='HWC')

    @torch.no_grad()
    def validate(self) -> Optional[Dict[str, float]]:
        """The published quick J/F means over the validation videos (rank 0), or None."""
        name = self.cfg.DATASET.VAL_DATASET
        if not name or self.network_name != 'RMNet':
            return None
        videos = list_videos(self.cfg, name, self.cfg.DATASET.VAL_SPLIT)
        wanted = list(self.cfg.DATASET.VAL_VIDEOS)
        if wanted:
            videos = [v for v in videos if v.name in wanted]
        videos = [v for v in videos if v.ground_truth]
        if not videos:
            raise TrainingError(f'no validation video with ground truth in {name} '
                                f'{self.cfg.DATASET.VAL_SPLIT} (DATASET.VAL_VIDEOS = {wanted})')
        segmenter = VideoSegmenter(None, self.dist.device, cfg=self.cfg, tflownet=self.tflownet, rmnet=self.rmnet)
        scores = []
        for video in tqdm(videos, desc='Validation', leave=False, dynamic_ncols=True):
            frames = (read_frame(p) for p in video.frame_paths)
            first = read_mask(video.given_masks[0])
            predicted = np.stack(list(segmenter.segment(frames, first)))
            truth = np.stack([read_mask(video.ground_truth[i]) for i in sorted(video.ground_truth)])
            scores.append(quick_video_metrics(truth, predicted[sorted(video.ground_truth)]))
        metrics = {key: float(np.mean([s[key] for s in scores])) for key in ('J-Mean', 'F-Mean', 'JF-Mean')}
        for key, value in metrics.items():
            self.writer.add_scalar(f'Validation/{key}', value, self.epoch)
        return metrics

    def save(self, metrics: Optional[Dict[str, float]], loss: float) -> None:
        folder = os.path.join(self.out_dir, 'checkpoints')
        main_metric = self.cfg.TEST.MAIN_METRIC_NAME
        improved = (metrics[main_metric] > self.best_metrics[main_metric] if metrics is not None
                    else loss < self.best_loss)
        if improved:
            if metrics is not None:
                self.best_metrics = metrics
            self.best_loss = min(self.best_loss, loss)
        weights = published_checkpoint(self.tflownet, self.rmnet, epoch_index=self.epoch,
                                       best_metrics=self.best_metrics, network=self.network_name)
        resume_state = dict(weights, optimizer=self.optimizer.state_dict(),
                            scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
                            global_step=self.global_step, hold_epochs=self.hold_epochs,
                            best_loss=self.best_loss, rng=random_states())
        save_checkpoint(os.path.join(folder, 'ckpt-last.pth'), resume_state)
        if improved:
            save_checkpoint(os.path.join(folder, 'ckpt-best.pth'), weights)
        if self.cfg.TRAIN.SAVE_FREQ and self.epoch % self.cfg.TRAIN.SAVE_FREQ == 0:
            save_checkpoint(os.path.join(folder, f'ckpt-epoch-{self.epoch:03d}.pth'), weights)

    def _update_curriculum(self, metrics: Optional[Dict[str, float]]) -> None:
        self.hold_epochs = max(0, self.hold_epochs - 1)
        if (metrics is not None and self.epoch >= self.cfg.TRAIN.EFFECTIVE_EPOCH
                and metrics['JF-Mean'] > self.cfg.TRAIN.EFFECTIVE_JF and self.hold_epochs == 0):
            self.hold_epochs = self.cfg.TRAIN.EFFECTIVE_HOLD_EPOCHS

    def run(self, max_epochs: Optional[int] = None) -> Dict[str, Any]:
        """Train up to TRAIN.N_EPOCHS (or `max_epochs` more epochs); return the last summary."""
        last_epoch = self.cfg.TRAIN.N_EPOCHS if max_epochs is None else min(self.cfg.TRAIN.N_EPOCHS,
                                                                            self.epoch + max_epochs - 1)
        summary: Dict[str, Any] = {}
        while self.epoch <= last_epoch:
            loss = self.train_epoch()
            metrics = self.validate() if self.dist.is_main else None
            summary = {'epoch': self.epoch, 'loss': loss, 'metrics': metrics}
            if self.dist.is_main:
                logger.info('Epoch %d/%d: loss %.4f, %.2f it/s, %.1f samples/s, peak GPU memory %.2f GiB%s',
                            self.epoch, self.cfg.TRAIN.N_EPOCHS, loss, self.throughput['iterations_per_s'],
                            self.throughput['samples_per_s'], self.throughput['peak_gpu_gib'],
                            '' if metrics is None else ', ' + ', '.join(f'{k} {v:.4f}' for k, v in metrics.items()))
                self._update_curriculum(metrics)
                self.save(metrics, loss)
            if self.dist.world_size > 1:
                hold = torch.tensor([self.hold_epochs], device=self.dist.device)
                dist.broadcast(hold, 0)
                self.hold_epochs = int(hold)
                dist.barrier()
            self.epoch += 1
        if self.writer is not None:
            self.writer.close()
        return summary


def train_net(cfg, weights: Optional[str] = None, resume: Optional[str] = None,
              out_dir: Optional[str] = None) -> Dict[str, Any]:
    """Entry point of `python runner.py` (training)."""
    from core.streaming import experiment_dir
    weights = weights or cfg.CONST.WEIGHTS or None
    resume = resume or cfg.TRAIN.RESUME or None
    trainer = Trainer(cfg, out_dir or experiment_dir(cfg), weights=weights, resume=resume)
    return trainer.run()
