"""Training: the loss falls on one clip, resume continues exactly, DDP keeps ranks in step."""
import copy
import os
import socket
import urllib.error

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torchvision.models import ResNet50_Weights

from clips import davis_root, one_object_clip, restore_cfg  # noqa: F401  (autouse fixture)
from config import cfg as global_cfg
from core.train import Trainer, TrainingError, load_imagenet_backbones
from models.rmnet import RMNet
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
    batch = next(iter(trainer._loader(1)))
    trainer.set_train_mode()
    losses = [trainer.train_step(batch)[0] for _ in range(10)]
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
        load_imagenet_backbones(RMNet())
    assert ResNet50_Weights.IMAGENET1K_V1.url in str(error.value) and path in str(error.value)


def test_cached_imagenet_weights_fill_both_encoders(monkeypatch, tmp_path):
    path = empty_torch_home_offline(monkeypatch, tmp_path)
    torch.manual_seed(0)
    state = {'conv1.weight': torch.randn(64, 3, 7, 7), 'layer3.5.bn3.running_mean': torch.randn(1024)}
    os.makedirs(os.path.dirname(path))
    torch.save(state, path)
    rmnet = RMNet()
    load_imagenet_backbones(rmnet)
    for encoder in (rmnet.encoder_memory, rmnet.encoder_query):
        assert torch.equal(encoder.conv1.weight, state['conv1.weight'])
        assert torch.equal(encoder.res4[5].bn3.running_mean, state['layer3.5.bn3.running_mean'])


def test_a_failing_batch_stops_training(data_root, tmp_path):
    broken = str(tmp_path / 'broken')
    davis_root(broken, {'bear': one_object_clip('bear', 3, SIZE)})
    with open(os.path.join(broken, 'JPEGImages', '480p', 'bear', '00001.jpg'), 'wb') as f:
        f.write(b'not a jpeg')
    with pytest.raises(DataError, match='00001.jpg: unreadable image'):
        Trainer(training_cfg(broken, N_EPOCHS=1), str(tmp_path / 'out'), weights=None).run()


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
    initial = RMNet().state_dict()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        changed |= not torch.equal(rank0[key], initial[key])
    assert changed
    assert os.path.isfile(tmp_path / 'checkpoints' / 'ckpt-last.pth')


def test_calibration_makes_random_weights_trainable():
    """Random encoders with frozen BatchNorm saturate; calibration gives soft scores and p = 0.5."""
    from models.initialization import calibrate_random_rmnet, init_new_layers
    torch.manual_seed(0)
    net = RMNet().eval()
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
