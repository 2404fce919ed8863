"""Training: the loss falls on one clip, resume continues exactly, DDP keeps ranks in step."""
import copy
import gc
import math
import errno
import logging
import os
import socket
import urllib.error

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torchvision.models import ResNet50_Weights

import runner
from clips import davis_root, one_object_clip, restore_cfg  # noqa: F401  (autouse fixture)
from config import cfg as global_cfg
from core.train import Trainer, TrainingError, load_imagenet_backbones
from models.rmnet import RMNet
from utils import checkpoint as checkpoint_module
from utils.checkpoint import read_checkpoint
from utils.io import DataError

SIZE = (96, 54)


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('davis'))
    return davis_root(root, {name: one_object_clip(name, 4, SIZE) for name in ('bear', 'boat')})


def training_cfg(root, **train):
    cfg = copy.deepcopy(global_cfg)
    cfg.DATASETS.DAVIS2016.ROOT = root
    cfg.DATASET.TRAIN_DATASET = ['DAVIS2016']
    cfg.DATASET.VAL_DATASET = ''
    cfg.CONST.N_WORKERS = 0
    aug = cfg.TRAIN.AUGMENTATION
    aug.RESIZE_SIZE, aug.CROP_SIZE = 48, 48
    cfg.TRAIN.update({'BATCH_SIZE': 1, 'N_MAX_OBJECTS': 1, 'PRETRAINED_BACKBONE': False,
                      'N_EPOCHS': 3, 'SAVE_FREQ': 0, 'VISUALIZE_EVERY': 1})
    cfg.TRAIN.update(train)
    return cfg


def still_clip_cfg(cfg):
    """No random geometry or brightness: the same clip every step (for overfitting)."""
    aug = cfg.TRAIN.AUGMENTATION
    aug.AFFINE_VIDEO_DEGREES, aug.AFFINE_VIDEO_SCALE, aug.AFFINE_VIDEO_SHEARS = 0, (1.0, 1.0), 0
    aug.BRIGHTNESS = (1.0, 1.0)
    return cfg


def test_overfitting_one_clip_lowers_the_loss_steadily(data_root, tmp_path):
    """From random weights (calibrated on the data), at the published learning rate; 2-frame
    clips (the DDP test trains on 3-frame clips)."""
    torch.manual_seed(0)
    cfg = still_clip_cfg(training_cfg(data_root, N_EPOCHS=100, N_MAX_FRAMES=2))
    trainer = Trainer(cfg, str(tmp_path))
    trainer.sampler.set_epoch(1, 1)
    batch = next(iter(trainer.loader))
    trainer.set_train_mode()
    losses = [float(trainer.train_step(batch)[0][0]) for _ in range(10)]
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.75 * losses[0], losses


def test_resume_continues_exactly(data_root, tmp_path):
    """Two epochs in one run equal one epoch, then a resumed run of the second (one step per
    epoch: both videos in one batch of 2-frame clips)."""
    settings = {'N_EPOCHS': 2, 'BATCH_SIZE': 2, 'N_MAX_FRAMES': 2}
    torch.manual_seed(0)
    straight = Trainer(training_cfg(data_root, **settings), str(tmp_path / 'straight'))
    summary = straight.run()
    assert summary['epoch'] == 2

    torch.manual_seed(0)
    first = Trainer(training_cfg(data_root, **settings), str(tmp_path / 'split'))
    first.run(max_epochs=1)
    checkpoint = str(tmp_path / 'split' / 'checkpoints' / 'ckpt-last.pth')
    content = read_checkpoint(checkpoint)
    assert content['epoch_index'] == 1 and content['network'] == 'RMNet'
    assert all(key.startswith('module.') for key in content['rmnet'])
    torch.manual_seed(123)                     # the checkpoint's random states must win
    resumed = Trainer(training_cfg(data_root, **settings), str(tmp_path / 'split'), resume=checkpoint)
    assert resumed.epoch == 2
    summary_resumed = resumed.run()
    assert summary_resumed['loss'] == pytest.approx(summary['loss'], rel=1e-6)
    for a, b in zip(straight.rmnet.state_dict().values(), resumed.rmnet.state_dict().values()):
        assert torch.equal(a, b)
    best = read_checkpoint(str(tmp_path / 'split' / 'checkpoints' / 'ckpt-best.pth'))
    assert sorted(best) == ['best_metrics', 'epoch_index', 'network', 'rmnet', 'tflownet']   # weights only
    assert os.listdir(tmp_path / 'split' / 'logs')


def test_tiny_flownet_training_and_bad_settings(data_root, tmp_path):
    trainer = Trainer(training_cfg(data_root, NETWORK='TinyFlowNet', N_EPOCHS=1), str(tmp_path))
    summary = trainer.run()
    assert np.isfinite(summary['loss']) and summary['metrics'] is None
    with pytest.raises(TrainingError, match='TRAIN.NETWORK'):
        Trainer(training_cfg(data_root, NETWORK='STM'), str(tmp_path))
    with pytest.raises(TrainingError, match='multiple of the number of processes'):
        Trainer(training_cfg(data_root, BATCH_SIZE=3), str(tmp_path),
                dist_info=type(trainer.dist)(0, 2, torch.device('cpu')))


def empty_torch_home_offline(monkeypatch, tmp_path) -> str:
    """TORCH_HOME is tmp_path and downloads fail; returns where the ResNet-50 file goes."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)

    def urlopen(*args, **kwargs):
        raise urllib.error.URLError('Network is unreachable')
    monkeypatch.setattr(torch.hub, 'urlopen', urlopen)
    return str(tmp_path / 'hub' / 'checkpoints' / 'resnet50-0676ba61.pth')


def test_missing_imagenet_weights_are_explained(monkeypatch, tmp_path):
    path = empty_torch_home_offline(monkeypatch, tmp_path)
    with pytest.raises(TrainingError, match='PRETRAINED_BACKBONE False') as error:
        load_imagenet_backbones(RMNet(global_cfg))
    assert ResNet50_Weights.IMAGENET1K_V1.url in str(error.value) and path in str(error.value)


def test_cached_imagenet_weights_fill_both_encoders(monkeypatch, tmp_path):
    path = empty_torch_home_offline(monkeypatch, tmp_path)
    torch.manual_seed(0)
    state = {'conv1.weight': torch.randn(64, 3, 7, 7), 'layer3.5.bn3.running_mean': torch.randn(1024)}
    os.makedirs(os.path.dirname(path))
    torch.save(state, path)
    rmnet = RMNet(global_cfg)
    load_imagenet_backbones(rmnet)
    for encoder in (rmnet.encoder_memory, rmnet.encoder_query):
        assert torch.equal(encoder.conv1.weight, state['conv1.weight'])
        assert torch.equal(encoder.res4[5].bn3.running_mean, state['layer3.5.bn3.running_mean'])


def test_the_collector_skips_what_lives_through_training(data_root, tmp_path, monkeypatch):
    trainer = Trainer(training_cfg(data_root, NETWORK='TinyFlowNet', N_EPOCHS=1), str(tmp_path))
    frozen = []
    epoch = trainer.train_epoch
    monkeypatch.setattr(trainer, 'train_epoch', lambda: frozen.append(gc.get_freeze_count()) or epoch())
    assert np.isfinite(trainer.run()['loss'])
    assert frozen[0] > 1000 and gc.get_freeze_count() == 0     # networks, datasets; released after


def test_a_failing_batch_stops_training(data_root, tmp_path):
    broken = str(tmp_path / 'broken')
    davis_root(broken, {'bear': one_object_clip('bear', 3, SIZE)})
    with open(os.path.join(broken, 'JPEGImages', '480p', 'bear', '00001.jpg'), 'wb') as f:
        f.write(b'not a jpeg')
    with pytest.raises(DataError, match='00001.jpg: unreadable image'):
        Trainer(training_cfg(broken, N_EPOCHS=1), str(tmp_path / 'out'), weights=None).run()
    assert gc.get_freeze_count() == 0


def _ddp_worker(rank, world_size, port, root, out_dir):
    os.environ.update({'WORLD_SIZE': str(world_size), 'RANK': str(rank), 'LOCAL_RANK': str(rank),
                       'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port)})
    torch.set_num_threads(1)
    torch.manual_seed(rank)                     # different seeds: DDP must still start them equal
    from core.distributed import setup_distributed
    cfg = training_cfg(root, BATCH_SIZE=2, N_EPOCHS=1)       # 3-frame clips, as published
    trainer = Trainer(cfg, out_dir, dist_info=setup_distributed())
    trainer.run()
    torch.save(trainer.rmnet.state_dict(), os.path.join(out_dir, f'rank{rank}.pt'))
    torch.distributed.destroy_process_group()


def test_two_process_ddp_keeps_identical_weights(data_root, tmp_path):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, data_root, str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / 'rank0.pt')
    rank1 = torch.load(tmp_path / 'rank1.pt')
    changed = False
    initial = RMNet(global_cfg).state_dict()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        changed |= not torch.equal(rank0[key], initial[key])
    assert changed
    assert os.path.isfile(tmp_path / 'checkpoints' / 'ckpt-last.pth')


def test_calibration_makes_random_weights_trainable():
    """Random encoders with frozen BatchNorm saturate; calibration gives soft scores and p = 0.5."""
    from models.initialization import calibrate_random_rmnet, init_new_layers
    torch.manual_seed(0)
    net = RMNet(global_cfg).eval()
    for module in (net.kv_memory, net.kv_query, net.decoder):
        init_new_layers(module)
    frames, masks = torch.randn(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.7).float()
    calibrate_random_rmnet(net, [(frames, masks)])
    with torch.no_grad():
        key = net.kv_query.key_conv(net.encoder_query(frames)[0])
        memory = net.kv_memory.key_conv(net.encoder_memory(frames, masks, torch.zeros_like(masks)))
        scores = torch.einsum('bchw,bcxy->bhwxy', memory, key) / key.shape[1] ** 0.5
        assert 1.0 < float(scores.std()) < 4.0
        logits = net.decoder(torch.randn(2, 1024, 4, 4), torch.randn(2, 512, 8, 8), torch.randn(2, 256, 16, 16))
        assert torch.equal(logits, torch.zeros_like(logits))
    assert all(bn.momentum == 0.1 for bn in net.modules() if isinstance(bn, torch.nn.BatchNorm2d))


def test_persistent_workers_draw_what_a_fresh_loader_draws(data_root):
    """Workers that live across epochs still see each epoch's seed and frame step."""
    from core.distributed import Distributed
    from core.train import EpochBatches, training_loader
    from datasets.video_clips import build_training_set

    def epochs(n_workers):
        cfg = training_cfg(data_root)
        cfg.CONST.N_WORKERS = n_workers
        dataset = build_training_set(cfg)
        sampler = EpochBatches(len(dataset), 1, cfg.CONST.RNG_SEED, Distributed(0, 1, torch.device('cpu')))
        loader = training_loader(cfg, dataset, sampler, torch.device('cpu'))
        assert loader.persistent_workers == (n_workers > 0)
        drawn = []
        for epoch, step in ((1, 1), (2, 3), (3, 2)):
            sampler.set_epoch(epoch, step)
            drawn.append([(b['name'], b['frames'], b['labels']) for b in loader])
        return drawn

    persistent, fresh = epochs(1), epochs(0)
    assert [[n for n, _, _ in e] for e in persistent] == [[n for n, _, _ in e] for e in fresh]
    for epoch_p, epoch_f in zip(persistent, fresh):
        for (_, frames_p, labels_p), (_, frames_f, labels_f) in zip(epoch_p, epoch_f):
            assert torch.equal(frames_p, frames_f) and torch.equal(labels_p, labels_f)
    assert not torch.equal(persistent[0][0][1], persistent[1][0][1])   # epochs differ


@pytest.mark.filterwarnings('ignore:Detected call of')   # the scheduler steps, no optimiser does here
def test_loading_goes_on_across_epochs_with_each_epochs_own_clips(data_root, tmp_path):
    """The loader goes on into the next epochs (planned with the curriculum) and each epoch gets
    the clips a fresh loader draws for it; a frame step changed at validation restarts it."""
    from core.distributed import Distributed
    from core.train import EpochBatches, frame_step, training_loader
    from datasets.video_clips import build_training_set

    cfg = training_cfg(data_root, N_EPOCHS=60)
    changed = next(e for e in range(3, 60) if frame_step(cfg, e, 0) != 1)   # a hold makes it 1
    cfg.CONST.N_WORKERS = 1
    trainer = Trainer(cfg, str(tmp_path / 'run'))
    seen = []
    trainer.stepper = lambda batch: (seen.append((trainer.epoch, batch['name'], batch['frames'])),
                                    (torch.zeros(3), None))[1]
    trainer.last_epoch = changed + 1
    plans = []
    for epoch in range(changed - 2, changed + 2):
        trainer.epoch = epoch
        trainer.hold_epochs = 1 if epoch == changed else 0
        trainer.train_epoch()
        plans.append(trainer.sampler.iterated)
    assert plans[1] is plans[0] and plans[3] is plans[2] and plans[2] is not plans[1]
    assert plans[0][1][0] == (changed - 2, frame_step(cfg, changed - 2, 0)) and plans[2][1][0] == (changed, 1)

    fresh_cfg = training_cfg(data_root, N_EPOCHS=60)
    dataset = build_training_set(fresh_cfg)
    sampler = EpochBatches(len(dataset), 1, cfg.CONST.RNG_SEED, Distributed(0, 1, torch.device('cpu')))
    loader = training_loader(fresh_cfg, dataset, sampler, torch.device('cpu'))
    expected = []
    for epoch in range(changed - 2, changed + 2):
        sampler.set_epoch(epoch, 1 if epoch == changed else frame_step(cfg, epoch, 0))
        expected += [(epoch, b['name'], b['frames']) for b in loader]
    assert len(seen) == len(expected) == 4 * sampler.batches_per_epoch()
    for (epoch, names, frames), (epoch_f, names_f, frames_f) in zip(seen, expected):
        assert (epoch, names) == (epoch_f, names_f) and torch.equal(frames, frames_f)


@pytest.mark.filterwarnings('ignore:Detected call of')   # the scheduler steps, no optimiser does here
def test_an_epoch_left_early_or_a_look_at_the_loader_restarts_the_loading(data_root, tmp_path):
    """The epoch after one that stopped early (its batches still held by a kept traceback), and
    the epoch after someone else iterated the loader with the same plan, get their own clips."""
    from core.distributed import Distributed
    from core.train import EpochBatches, training_loader
    from datasets.video_clips import build_training_set

    class Stop(Exception):
        pass

    cfg = training_cfg(data_root, N_EPOCHS=3)
    cfg.CONST.N_WORKERS = 2
    trainer = Trainer(cfg, str(tmp_path / 'run'))
    seen, calls = [], [0]

    def step(batch):
        calls[0] += 1
        if calls[0] == 2:
            raise Stop()
        seen.append((trainer.epoch, batch['name'], batch['frames']))
        return torch.zeros(3), None

    trainer.stepper = step
    trainer.epoch = 1
    with pytest.raises(Stop) as stopped:          # the traceback keeps the epoch's batches alive
        trainer.train_epoch()
    del seen[:]
    for epoch in (2, 3):
        trainer.epoch = epoch
        trainer.train_epoch()
        next(iter(trainer.loader))                 # a look at the loader, the plan unchanged

    fresh_cfg = training_cfg(data_root, N_EPOCHS=3)
    dataset = build_training_set(fresh_cfg)
    sampler = EpochBatches(len(dataset), 1, cfg.CONST.RNG_SEED, Distributed(0, 1, torch.device('cpu')))
    loader = training_loader(fresh_cfg, dataset, sampler, torch.device('cpu'))
    expected = []
    for epoch in (2, 3):
        sampler.set_epoch(epoch, trainer.epoch_frame_step(epoch, 0))
        expected += [(epoch, b['name'], b['frames']) for b in loader]
    assert stopped.type is Stop and len(seen) == len(expected) == 2 * sampler.batches_per_epoch()
    for (epoch, names, frames), (epoch_f, names_f, frames_f) in zip(seen, expected):
        assert (epoch, names) == (epoch_f, names_f) and torch.equal(frames, frames_f)


def test_losses_are_read_in_order_and_a_non_finite_one_names_its_step():
    from core.train import LossLog
    log = LossLog(('loss', 'lovasz', 'nll'))
    log.add(7, ['a/x'], torch.tensor([1.5, 0.5, 1.0]))
    log.add(8, ['a/y'], torch.tensor([2.0, 1.0, 1.0]))
    assert log.read(1) == [(7, {'loss': 1.5, 'lovasz': 0.5, 'nll': 1.0}),
                           (8, {'loss': 2.0, 'lovasz': 1.0, 'nll': 1.0})]
    assert len(log) == 0 and log.read(1) == []
    log.add(9, ['b/z'], torch.tensor([1.0, 0.5, 0.5]))
    log.add(10, ['c/w'], torch.tensor([math.inf, 0.5, math.inf]))
    with pytest.raises(TrainingError, match=r"epoch 2, step 10 \(clips \['c/w'\]\)"):
        log.read(2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_loss_log_reads_back_on_the_gpu_without_waiting():
    """On a GPU a read returns the steps of the read before (their copy has landed) and the
    epoch's last read, with wait, every step left; the values are the CPU path's."""
    from core.train import LossLog
    log = LossLog(('loss', 'lovasz', 'nll'))
    rows = [[1.5, 0.5, 1.0], [2.0, 1.0, 1.0], [0.25, 0.125, 0.125], [3.0, 2.0, 1.0]]
    for step, row in enumerate(rows[:2]):
        log.add(step, [f'v/{step}'], torch.tensor(row, device='cuda'))
    assert log.read(1) == []
    for step, row in enumerate(rows[2:], start=2):
        log.add(step, [f'v/{step}'], torch.tensor(row, device='cuda'))
    first = log.read(1)
    assert first == [(0, dict(zip(log.names, rows[0]))), (1, dict(zip(log.names, rows[1])))]
    assert log.read(1, wait=True) == [(2, dict(zip(log.names, rows[2]))), (3, dict(zip(log.names, rows[3])))]
    assert log.read(1, wait=True) == []
    log.add(4, ['w/z'], torch.tensor([math.nan, 0.5, math.nan], device='cuda'))
    assert log.read(2) == []
    with pytest.raises(TrainingError, match=r"epoch 2, step 4 \(clips \['w/z'\]\)"):
        log.read(2)


def test_loss_logits_give_back_the_probabilities():
    """Aggregation logits lie within +-16.1181 (its clamp): the log of their softmax is finite
    and is their log-softmax."""
    from core.train import logits_of
    logits = (torch.rand(2, 3, 4, 5, 5, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 16.1181
    logits[0, 1, :, 0, 0] = torch.tensor([16.1181, -16.1181, -16.1181, -16.1181])
    recovered = logits_of(torch.softmax(logits, dim=2))
    assert torch.isfinite(recovered).all()
    assert torch.allclose(recovered, torch.log_softmax(logits, dim=2), atol=1e-5)


def test_channels_last_training_step_gives_the_same_losses():
    """TRAIN.CHANNELS_LAST applies to GPU training only; the layout changes no loss (the NHWC
    weights are made here on the CPU by naming a CUDA device)."""
    from core.train import TrainingStep, freeze_batch_norm, use_channels_last
    from tools.benchmark_train import synthetic_batch
    batch = synthetic_batch(1, 32, torch.device('cpu'))
    results = []
    for layout_device in ('cpu', 'cuda'):
        cfg = copy.deepcopy(global_cfg)
        assert cfg.TRAIN.CHANNELS_LAST
        torch.manual_seed(0)
        net = RMNet(cfg).train()
        freeze_batch_norm(net)
        use_channels_last(cfg, net, torch.device(layout_device))
        channels_last = layout_device == 'cuda'
        assert net.encoder_query.conv1.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-5)
        step = TrainingStep(cfg, net, optimizer, torch.amp.GradScaler('cuda', enabled=False),
                            torch.device('cpu'), 'RMNet', 'fp32')
        results.append(torch.stack([step(batch)[0] for _ in range(2)]))
    assert torch.isfinite(results[0]).all()
    assert torch.allclose(results[0], results[1], rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('precision, channels_last, tolerance', [('fp32', False, 1e-3), ('fp32', True, 1e-3),
                                                                 ('bf16', True, 5e-2)])
def test_gpu_training_step_gives_the_cpu_losses(precision, channels_last, tolerance):
    """Fused Adam, cuDNN, channels-last and bf16 change the arithmetic only: two fp32 steps on
    the GPU give the losses of the same two steps on the CPU; in bf16 the first step does (the
    second starts from weights moved by bf16 gradients, which a random network amplifies)."""
    from core.train import TrainingStep, freeze_batch_norm, use_channels_last
    from tools.benchmark_train import synthetic_batch
    losses = []
    for device in (torch.device('cpu'), torch.device('cuda')):
        cfg = copy.deepcopy(global_cfg)
        cfg.TRAIN.CHANNELS_LAST = channels_last
        torch.manual_seed(0)
        net = RMNet(cfg).to(device).train()
        freeze_batch_norm(net)
        use_channels_last(cfg, net, device)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-5, fused=device.type == 'cuda')
        step = TrainingStep(cfg, net, optimizer, torch.amp.GradScaler('cuda', enabled=False), device, 'RMNet',
                            precision if device.type == 'cuda' else 'fp32')
        batch = synthetic_batch(2, 96, device)
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            losses.append(torch.stack([step(batch)[0] for _ in range(2)]).cpu())
    assert torch.isfinite(losses[1]).all()
    compared = 2 if precision == 'fp32' else 1
    assert torch.allclose(losses[1][:compared], losses[0][:compared], rtol=tolerance, atol=tolerance)
    assert not torch.equal(losses[1][0], losses[1][1])        # the optimiser stepped


def runner_training(tmp_path, root, *settings):
    """runner.py arguments of a tiny training run in tmp_path/run from `root` (DAVIS 2016 layout)."""
    return ['--exp', 'run', '--set', 'DIR.OUT_PATH', str(tmp_path), 'DATASETS.DAVIS2016.ROOT', root,
            'DATASET.TRAIN_DATASET', "['DAVIS2016']", 'DATASET.VAL_DATASET', 'DAVIS2016', 'DATASET.VAL_SPLIT',
            'train', 'TRAIN.PRETRAINED_BACKBONE', 'False', 'CONST.N_WORKERS', '0', *settings]


@pytest.fixture
def no_training_step(monkeypatch):
    def refuse(self, batch):
        raise AssertionError('a training step ran before the checks')
    monkeypatch.setattr(Trainer, 'train_step', refuse)


def test_another_runs_checkpoints_are_never_replaced(data_root, tmp_path, capsys, no_training_step):
    checkpoints = tmp_path / 'run' / 'checkpoints'
    os.makedirs(checkpoints)
    (checkpoints / 'ckpt-best.pth').write_bytes(b'the better run')
    assert runner.main(runner_training(tmp_path, data_root)) == 2
    message = capsys.readouterr().err
    assert 'Traceback' not in message and 'ckpt-best.pth' in message
    assert f'--resume {checkpoints / "ckpt-last.pth"}' in message and 'another --exp NAME' in message
    assert (checkpoints / 'ckpt-best.pth').read_bytes() == b'the better run'
    assert sorted(os.listdir(tmp_path / 'run')) == ['checkpoints']


def test_logs_of_another_run_are_not_mixed(data_root, tmp_path, capsys, no_training_step):
    os.makedirs(tmp_path / 'run' / 'logs')
    (tmp_path / 'run' / 'logs' / 'events.out.tfevents.1').write_bytes(b'earlier run')
    assert runner.main(runner_training(tmp_path, data_root)) == 2
    assert 'logs/' in capsys.readouterr().err


@pytest.mark.parametrize('settings, fragment', [
    (['DATASET.TRAIN_DATASET', "['DAVIS2016x0']"], "'DAVIS2016x0': expected a dataset name"),
    (['DATASET.TRAIN_DATASET', "['x0']"], "unknown dataset 'x0'"),
    (['DATASET.TRAIN_DATASET', "['DAVIS2O16']"], "unknown dataset 'DAVIS2O16'"),
    (['DATASET.VAL_DATASET', 'DAVIS16'], "DATASET.VAL_DATASET: unknown dataset 'DAVIS16'"),
    (['DATASET.VAL_SPLIT', 'vall'], "DATASET.VAL_SPLIT: DAVIS2016 has no split 'vall'"),
    (['DATASET.VAL_VIDEOS', "['bear', 'baer']"], "DATASET.VAL_VIDEOS: 'baer' not in DAVIS2016 train")])
def test_dataset_typos_are_found_before_the_first_step(data_root, tmp_path, capsys, no_training_step,
                                                       settings, fragment):
    assert runner.main(runner_training(tmp_path, data_root, *settings)) == 2
    message = capsys.readouterr().err
    assert 'Traceback' not in message and fragment in message, message
    assert not os.listdir(tmp_path / 'run' / 'checkpoints')


def test_epoch_is_saved_before_validating_and_best_after_the_first(data_root, tmp_path, monkeypatch, caplog):
    cfg = training_cfg(data_root, N_EPOCHS=2)
    cfg.DATASET.VAL_DATASET, cfg.DATASET.VAL_SPLIT, cfg.DATASET.VAL_VIDEOS = 'DAVIS2016', 'train', ['bear']
    fixed = {'J-Mean': 0.5, 'F-Mean': 0.7, 'JF-Mean': 0.6}
    outcomes = iter([{'J-Mean': 0.0, 'F-Mean': 0.0, 'JF-Mean': 0.0}, DataError('bear/00002.png: unreadable mask'),
                     fixed])

    def validate(self):
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(Trainer, 'validate', validate)
    trainer = Trainer(cfg, str(tmp_path))
    logged = {}
    add_scalar = trainer.writer.add_scalar
    monkeypatch.setattr(trainer.writer, 'add_scalar', lambda tag, value, step: (
        logged.__setitem__((tag, step), value), add_scalar(tag, value, step)))
    last = str(tmp_path / 'checkpoints' / 'ckpt-last.pth')
    with pytest.raises(TrainingError, match=f'validation after epoch 2 failed: .*unreadable mask.*--resume {last}'):
        trainer.run()
    assert read_checkpoint(last)['epoch_index'] == 2                 # the trained epoch is kept
    assert read_checkpoint(last)['validated'] is False
    assert read_checkpoint(str(tmp_path / 'checkpoints' / 'ckpt-best.pth'))['epoch_index'] == 1   # score 0
    assert logged[('Train/LearningRate', 1)] == pytest.approx(cfg.TRAIN.LEARNING_RATE)          # used in epoch 1
    assert logged[('Train/LearningRate', 2)] == pytest.approx(cfg.TRAIN.LEARNING_RATE * (1 + np.cos(np.pi / 2)) / 2)

    caplog.clear()
    with caplog.at_level(logging.INFO):                 # the problem fixed: epoch 2 is validated first
        finished = Trainer(cfg, str(tmp_path), resume=last)
        summary = finished.run()
    assert summary['epoch'] == 2 and summary['metrics'] == fixed
    assert 'Epoch 2 was saved before its validation finished' in caplog.text
    assert 'all 2 epochs (TRAIN.N_EPOCHS) are already trained' in caplog.text
    assert 'random weights' not in caplog.text and 'Resuming from' in caplog.text
    best = read_checkpoint(str(tmp_path / 'checkpoints' / 'ckpt-best.pth'))
    assert best['epoch_index'] == 2 and best['best_metrics'] == fixed
    assert read_checkpoint(last)['validated'] is True and read_checkpoint(last)['epoch_index'] == 2
    with caplog.at_level(logging.INFO):                 # and only once
        assert Trainer(cfg, str(tmp_path), resume=last).run() == {}


def test_a_full_disk_while_saving_stops_with_the_file_named(data_root, tmp_path, monkeypatch):
    trainer = Trainer(training_cfg(data_root, N_EPOCHS=1), str(tmp_path))

    def full_disk(content, path):
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(checkpoint_module.torch, 'save', full_disk)
    with pytest.raises(TrainingError, match=r'ckpt-last.pth: cannot be written \(No space left on device\); '
                                            r'nothing was written there; training stopped after epoch 1'):
        trainer.run()
    assert os.listdir(tmp_path / 'checkpoints') == []


def test_timed_batches_yields_every_batch_and_counts_the_wait_for_them():
    import time
    from core.train import TimedBatches

    def slow_loader():
        for i in range(3):
            time.sleep(0.02)
            yield {'index': i}

    batches = TimedBatches(slow_loader())
    seen = []
    for batch in batches:
        time.sleep(0.05)                   # the step's own time is not waiting
        seen.append(batch['index'])
    assert seen == [0, 1, 2]
    assert 0.06 <= batches.waited < 0.15


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_a_gpu_run_with_loading_workers_replays_its_steps_and_trains_as_without(data_root, tmp_path):
    """TRAIN.CUDA_GRAPHS in a whole run: the loader's workers and pin-memory thread run while
    steps and validation videos are captured, the later steps are replays, and the epochs'
    losses are those of the same run launching its kernels one by one."""
    from core.training_graphs import GraphedTrainingStep
    losses = []
    for graphs in (True, False):
        torch.manual_seed(0)
        cfg = training_cfg(data_root, N_EPOCHS=3, CUDA_GRAPHS=graphs)
        cfg.CONST.N_WORKERS = 2
        cfg.DATASET.VAL_DATASET, cfg.DATASET.VAL_SPLIT = 'DAVIS2016', 'train'   # its videos captured too
        trainer = Trainer(cfg, str(tmp_path / f'graphs-{graphs}'))
        summary = trainer.run()
        assert summary['epoch'] == 3
        losses.append(trainer.epoch_losses + [summary['loss']])    # the last epoch's steps, its mean
        assert isinstance(trainer.stepper, GraphedTrainingStep) == graphs
        if graphs:
            assert trainer.stepper.replays > 0 and trainer.stepper.captures >= 1
    assert all(math.isfinite(v) for v in losses[0])
    assert np.allclose(losses[0], losses[1], rtol=1e-3, atol=1e-4), losses


def test_the_logged_picture_shows_the_frame_in_its_original_colours(data_root, tmp_path, monkeypatch):
    """The TensorBoard picture undoes the clip's channel permutation (datasets.transforms)."""
    from datasets.transforms import RandomChannelPermutation
    original = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    rng = np.random.default_rng(3)
    clip = RandomChannelPermutation()({'frames': [original]}, rng)
    assert clip['channel_order'].tolist() != [0, 1, 2]
    batch = {'frames': torch.from_numpy(clip['frames'][0].copy()).permute(2, 0, 1)[None, None],
             'channel_order': torch.from_numpy(clip['channel_order'])[None],
             'labels': torch.zeros(1, 1, 16, 24, dtype=torch.uint8)}
    trainer = Trainer(training_cfg(data_root), str(tmp_path))
    pictures = []
    monkeypatch.setattr(trainer.writer, 'add_image',
                        lambda tag, picture, step, dataformats: pictures.append(picture))
    probs = torch.zeros(1, 1, 2, 16, 24)
    probs[:, :, 0] = 1                                       # predicted: all background
    trainer._log_images(batch, probs)
    assert np.array_equal(pictures[0][:, :24], original) and np.array_equal(pictures[0][:, 24:], original)
