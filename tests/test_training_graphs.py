"""The training step replayed as CUDA graphs: when it applies, and (on a GPU) that it trains as
the step launched kernel by kernel does."""
import copy

import pytest
import torch

from config import cfg as global_cfg
from core.train import TrainingStep, build_optimizer, freeze_batch_norm, load_optimizer_state, use_channels_last
from core.training_graphs import GraphedTrainingStep, graphs_apply, training_step
from models.rmnet import RMNet
from models.tiny_flownet import TinyFlowNet
from tools.benchmark_train import synthetic_batch

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')


def test_graphs_apply_to_one_process_on_a_gpu_in_fp32_and_bf16_only():
    cfg = copy.deepcopy(global_cfg)
    assert cfg.TRAIN.CUDA_GRAPHS
    cuda, cpu = torch.device('cuda'), torch.device('cpu')
    assert graphs_apply(cfg, cuda, 1, 'fp32') and graphs_apply(cfg, cuda, 1, 'bf16')
    assert not graphs_apply(cfg, cuda, 1, 'fp16')       # loss scaling reads its overflow check back
    assert not graphs_apply(cfg, cuda, 2, 'fp32')       # DDP
    assert not graphs_apply(cfg, cpu, 1, 'fp32')
    cfg.TRAIN.CUDA_GRAPHS = False
    assert not graphs_apply(cfg, cuda, 1, 'bf16')


def test_on_the_cpu_a_run_trains_with_the_step_itself():
    cfg = copy.deepcopy(global_cfg)
    net = RMNet(cfg)
    optimizer = build_optimizer(cfg, net, torch.device('cpu'), capturable=True)
    assert not optimizer.param_groups[0]['capturable'] and not optimizer.param_groups[0]['fused']
    step = TrainingStep(cfg, net, optimizer, torch.amp.GradScaler('cuda', enabled=False), torch.device('cpu'),
                        'RMNet', 'fp32')
    assert training_step(cfg, step, graphs_apply(cfg, torch.device('cpu'), 1, 'fp32')) is step


def test_an_optimiser_state_resumes_across_implementations():
    """A checkpoint of a run with graphs (fused, capturable, step counts on the device) loads
    into an optimiser without them, which keeps its own implementation and steps on: the same
    state as from a checkpoint of its own kind."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]

    def optimiser():
        return torch.optim.Adam([p.detach().clone().requires_grad_() for p in params], lr=1e-2)

    def one_step(optimizer, seed):
        generator = torch.Generator().manual_seed(seed)
        for p in optimizer.param_groups[0]['params']:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()

    saved = optimiser()
    one_step(saved, 1)
    state = copy.deepcopy(saved.state_dict())
    graphed_kind = copy.deepcopy(state)
    graphed_kind['param_groups'][0].update(fused=True, capturable=True, foreach=None)
    for per_param in graphed_kind['state'].values():
        per_param['step'] = per_param['step'].reshape(())          # as saved from the device
    results = []
    for content in (state, graphed_kind):
        resumed = optimiser()
        for p, q in zip(resumed.param_groups[0]['params'], saved.param_groups[0]['params']):
            p.data.copy_(q.data)
        load_optimizer_state(resumed, content)
        group = resumed.param_groups[0]
        assert not group['fused'] and not group['capturable']
        assert all(s['step'].device.type == 'cpu' and s['step'].dtype == torch.float32
                   for s in resumed.state.values())
        one_step(resumed, 2)
        results.append([p.detach().clone() for p in group['params']])
    for a, b in zip(*results):
        assert torch.equal(a, b)
    assert not torch.equal(results[0][0], saved.param_groups[0]['params'][0])


def batch_with_counts(counts, crop: int, seed: int):
    """A synthetic batch whose clips hold `counts` objects (the others' pixels background)."""
    batch = synthetic_batch(len(counts), crop, torch.device('cpu'), seed=seed, n_objects=max(counts))
    for b, n in enumerate(counts):
        labels = batch['labels'][b]
        labels[labels > n] = 0
        batch['masks'][b, :, n + 1:] = 0
        batch['masks'][b, :, 0] = (labels == 0).to(torch.uint8)
    batch['n_objects'] = torch.tensor(counts, dtype=torch.long)
    return {key: value.pin_memory() if torch.is_tensor(value) else value for key, value in batch.items()}


def gpu_steps(precision: str, graphs: bool, batches, lr_change_at: int):
    cfg = copy.deepcopy(global_cfg)
    cfg.TRAIN.KEPT_GRAPHS = 2
    device = torch.device('cuda')
    torch.manual_seed(0)
    net = RMNet(cfg).to(device).train()
    freeze_batch_norm(net)
    use_channels_last(cfg, net, device)
    initial = [p.detach().clone() for p in net.parameters()]
    optimizer = build_optimizer(cfg, net, device, capturable=graphs)
    for group in optimizer.param_groups:
        group['lr'] = 1e-4
    step = TrainingStep(cfg, net, optimizer, torch.amp.GradScaler('cuda', enabled=False), device, 'RMNet',
                        precision)
    run = GraphedTrainingStep(step, cfg.TRAIN.KEPT_GRAPHS) if graphs else step
    terms = []
    for i, batch in enumerate(batches):
        if i == lr_change_at:
            for group in optimizer.param_groups:
                group['lr'] = 5e-5
        terms.append(run(batch)[0].cpu())
    updates = torch.cat([(p.detach() - p0).flatten().float() for p, p0 in zip(net.parameters(), initial)])
    return torch.stack(terms), updates, run


@needs_gpu
@pytest.mark.parametrize('precision, term_tolerance, update_tolerance', [('fp32', 1e-3, 2e-2),
                                                                         ('bf16', 2e-2, 1e-1)])
def test_graphed_training_steps_train_as_the_eager_steps_on_the_gpu(precision, term_tolerance, update_tolerance,
                                                                     monkeypatch):
    """Layouts of 3 objects (2 + 1 and 1 + 2 share a graph), of 2 (1 + 1) and of 4; each new
    layout's eager step releases the graphs, which are captured again; a learning rate changed
    midway (captured again); a third layout evicting the least recently used of the 2 graphs
    kept. Every step's loss terms and the weights' total update match the eager steps'."""
    layouts = [[2, 1], [1, 2], [1, 1], [2, 1], [1, 1], [2, 2], [2, 2], [1, 2], [2, 1], [1, 1], [2, 1],
               [2, 2], [1, 1]]
    batches = [batch_with_counts(counts, 64, seed) for seed, counts in enumerate(layouts)]
    # the same convolution algorithms in both runs (an earlier test may have left cuDNN's
    # benchmark on), and fp32 kept fp32: Adam turns tiny gradient differences into visible ones
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    eager_terms, eager_updates, _ = gpu_steps(precision, False, batches, lr_change_at=8)
    graphed_terms, graphed_updates, graphed = gpu_steps(precision, True, batches, lr_change_at=8)
    # eager: steps 0, 2, 5 (releasing the graphs at 2 and 5); captured: 1, 3, 4, 6, 7, 8, 9, 11, 12
    assert (graphed.captures, graphed.replays, graphed.releases) == (9, 10, 2), \
        (graphed.captures, graphed.replays, graphed.releases)
    assert torch.isfinite(graphed_terms).all()
    assert torch.allclose(graphed_terms, eager_terms, rtol=term_tolerance, atol=term_tolerance), \
        (graphed_terms, eager_terms)
    difference = float((graphed_updates - eager_updates).norm() / eager_updates.norm())
    assert difference < update_tolerance, difference


@needs_gpu
def test_graphed_tiny_flownet_steps_train_as_the_eager_steps_on_the_gpu():
    """TRAIN.NETWORK TinyFlowNet: one layout per batch shape, whatever the objects."""
    cfg = copy.deepcopy(global_cfg)
    device = torch.device('cuda')
    batches = [batch_with_counts(counts, 64, seed) for seed, counts in enumerate([[1, 2], [2, 2], [1, 1], [2, 1]])]
    for b in batches:
        b['flows'].normal_()
    results = []
    for graphs in (False, True):
        torch.manual_seed(0)
        net = TinyFlowNet(cfg).to(device).train()
        initial = [p.detach().clone() for p in net.parameters()]
        optimizer = build_optimizer(cfg, net, device, capturable=graphs)
        step = TrainingStep(cfg, net, optimizer, torch.amp.GradScaler('cuda', enabled=False), device,
                            'TinyFlowNet', 'fp32')
        run = GraphedTrainingStep(step, 2) if graphs else step
        terms = torch.stack([run(batch)[0].cpu() for batch in batches])
        updates = torch.cat([(p.detach() - p0).flatten() for p, p0 in zip(net.parameters(), initial)])
        results.append((terms, updates))
    assert run.captures == 1 and run.replays == 3
    (eager_terms, eager_updates), (graphed_terms, graphed_updates) = results
    assert torch.allclose(graphed_terms, eager_terms, rtol=1e-4, atol=1e-5), (graphed_terms, eager_terms)
    assert float((graphed_updates - eager_updates).norm() / eager_updates.norm()) < 1e-2
