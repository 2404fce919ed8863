"""Mask and flow losses: hand-checked Lovász values, NLL and Lovász against NumPy, ignored
pixels, finite gradients."""
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.losses import flow_loss, lovasz_softmax, nll_loss, segmentation_loss_terms

IGNORE = 255


def brute_force_lovasz(probs, labels):
    """The Lovász extension of the Jaccard loss from its definition: errors sorted
    decreasingly, each weighted by the loss increase of mispredicting one more pixel; mean over
    the present classes."""
    losses = []
    for c in range(probs.shape[0]):
        gt = {i for i, label in enumerate(labels) if label == c}
        if not gt:
            continue
        errors = [abs((labels[i] == c) - float(probs[c, i])) for i in range(len(labels))]
        order = sorted(range(len(labels)), key=lambda i: -errors[i])

        def jaccard_loss(mispredicted):
            return len(mispredicted) / len(gt | mispredicted) if mispredicted else 0.0

        loss = sum(errors[i] * (jaccard_loss(set(order[:k + 1])) - jaccard_loss(set(order[:k])))
                   for k, i in enumerate(order))
        losses.append(loss)
    return sum(losses) / len(losses)


def random_probs(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(*shape, generator=generator) * 2, dim=1)


def test_lovasz_of_a_perfect_prediction_is_zero():
    labels = torch.tensor([[[0, 1], [2, 1]]])
    probs = F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    assert lovasz_softmax(probs, labels, IGNORE).item() == 0.0
    assert lovasz_softmax(probs, labels, IGNORE, per_image=True).item() == 0.0


def test_lovasz_by_hand_on_two_pixels():
    # class 1: errors (0.2 fg, 0.3 bg) -> weights 0.5, 0.5 -> 0.25
    # class 0: errors (0.2 bg, 0.3 fg) -> weights 1, 0     -> 0.3   mean 0.275
    probs = torch.tensor([[0.2, 0.7], [0.8, 0.3]])[None]       # (1, C=2, P=2)
    labels = torch.tensor([[1, 0]])
    assert lovasz_softmax(probs, labels, IGNORE).item() == pytest.approx(0.275)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_lovasz_matches_its_definition(seed):
    probs = random_probs(1, 3, 7, seed=seed)
    labels = torch.randint(0, 2, (1, 7), generator=torch.Generator().manual_seed(seed))
    expected = brute_force_lovasz(probs[0], labels[0].tolist())
    assert lovasz_softmax(probs, labels, IGNORE).item() == pytest.approx(expected, abs=1e-6)


def test_lovasz_uses_present_classes_only():
    probs = random_probs(2, 3, 4, 5)
    labels = torch.randint(0, 2, (2, 4, 5), generator=torch.Generator().manual_seed(3))
    other = probs.clone()
    other[:, 2] = torch.rand(2, 4, 5)          # class 2 is absent: its channel does not count
    assert lovasz_softmax(other, labels, IGNORE).item() == pytest.approx(
        lovasz_softmax(probs, labels, IGNORE).item())


def test_per_image_is_the_mean_of_each_image():
    probs = random_probs(3, 4, 6, 6)
    labels = torch.randint(0, 4, (3, 6, 6), generator=torch.Generator().manual_seed(1))
    labels[2] = IGNORE                         # an image with no valid pixel is skipped
    single = [lovasz_softmax(probs[i:i + 1], labels[i:i + 1], IGNORE) for i in range(2)]
    assert lovasz_softmax(probs, labels, IGNORE, per_image=True).item() == pytest.approx(
        (single[0] + single[1]).item() / 2)


def test_ignored_pixels_change_nothing():
    probs = random_probs(2, 3, 5, 5)
    labels = torch.randint(0, 3, (2, 5, 5), generator=torch.Generator().manual_seed(2))
    labels[0, :2] = IGNORE
    changed = probs.clone()
    changed[0, :, :2] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    for per_image in (False, True):
        assert lovasz_softmax(changed, labels, IGNORE, per_image=per_image).item() == pytest.approx(
            lovasz_softmax(probs, labels, IGNORE, per_image=per_image).item())
    assert nll_loss(changed, labels, IGNORE).item() == pytest.approx(nll_loss(probs, labels, IGNORE).item())
    # and the same as the loss of the valid pixels alone
    valid = labels != IGNORE
    flat_probs = probs.permute(1, 0, 2, 3)[:, valid][None]
    assert lovasz_softmax(probs, labels, IGNORE).item() == pytest.approx(
        lovasz_softmax(flat_probs, labels[valid][None], IGNORE).item())


def numpy_softmax(logits, axis):
    shifted = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def test_nll_is_minus_log_of_the_true_class_probability():
    logits = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(4)) * 3
    labels = torch.randint(0, 4, (2, 3, 3), generator=torch.Generator().manual_seed(4))
    labels[1, 0] = IGNORE
    probs = numpy_softmax(logits.double().numpy(), axis=1)
    keep = labels.numpy() != IGNORE
    true_class = np.take_along_axis(probs, np.where(keep, labels.numpy(), 0)[:, None], 1)[:, 0]
    expected = -np.log(true_class[keep]).mean()
    assert nll_loss(logits, labels, IGNORE).item() == pytest.approx(expected, abs=1e-5)


def test_segmentation_loss_terms_against_numpy():
    """Both terms on a small void-free batch from the probabilities alone, as published:
    NLL = mean of -log p(true class), Lovász from its definition over the pooled pixels."""
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 3, 4, 3, 4, generator=generator) * 4     # (B, T, K, H, W)
    logits[0, 1, 2, 0, 0] = -30                                       # p ~ 1e-14 (finite log)
    labels = torch.randint(0, 3, (2, 3, 3, 4), generator=generator)
    labels[0, 1, 0, 0] = 2
    lovasz, nll = segmentation_loss_terms(logits, labels, IGNORE)

    probs = numpy_softmax(logits.double().numpy(), axis=2)[:, 1:]     # frames 1 and 2
    flat_probs = probs.transpose(2, 0, 1, 3, 4).reshape(4, -1)        # (K, pixels)
    flat_labels = labels[:, 1:].numpy().reshape(-1)
    expected_nll = -np.log(flat_probs[flat_labels, np.arange(flat_labels.size)]).mean()
    expected_lovasz = brute_force_lovasz(flat_probs, flat_labels.tolist())
    assert nll.item() == pytest.approx(expected_nll, abs=1e-5)
    assert lovasz.item() == pytest.approx(expected_lovasz, abs=1e-5)
    changed = logits.clone()
    changed[:, 0] = 0.25                                              # frame 0 is not scored
    assert torch.equal(torch.stack(segmentation_loss_terms(changed, labels, IGNORE)), torch.stack((lovasz, nll)))


def test_gradient_is_finite_where_the_true_class_probability_underflows():
    """exp(-200) is 0 in float32: the log-softmax keeps the loss and gives the pixel the full
    gradient softmax - one-hot, where a clamp of the probability gives it none."""
    logits = torch.tensor([[[0.0, 3.0], [-200.0, 1.0]]], requires_grad=True)   # (1, C=2, P=2)
    labels = torch.tensor([[1, 0]])
    assert torch.softmax(logits, 1)[0, 1, 0].item() == 0.0
    nll = nll_loss(logits, labels, IGNORE)
    lovasz = lovasz_softmax(torch.softmax(logits, 1), labels, IGNORE)
    (nll + lovasz).backward()
    p_other = 1 / (1 + math.exp(-2.0))                 # pixel 1: softmax of (3, 1), class 0
    assert nll.item() == pytest.approx((200 - math.log(p_other)) / 2, rel=1e-6)
    assert torch.isfinite(logits.grad).all()
    # NLL: (softmax - one-hot) / 2 pixels; Lovász: none, the softmax is saturated there
    assert logits.grad[0, 1, 0].item() == pytest.approx(-0.5, abs=1e-6)


def test_losses_without_valid_pixels_are_zero_with_a_gradient():
    logits = torch.randn(1, 2, 2, requires_grad=True)
    ignored = torch.full((1, 2), IGNORE)
    for value in (nll_loss(logits, ignored, IGNORE), lovasz_softmax(torch.softmax(logits, 1), ignored, IGNORE),
                  lovasz_softmax(torch.softmax(logits, 1), ignored, IGNORE, per_image=True)):
        value.backward()
        assert value.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_ignored_pixels_give_the_gradient_of_the_valid_pixels_alone():
    logits = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(8))
    labels = torch.randint(0, 3, (2, 5, 5), generator=torch.Generator().manual_seed(9))
    labels[0, :2] = IGNORE
    valid = labels != IGNORE
    whole = logits.clone().requires_grad_(True)
    (lovasz_softmax(torch.softmax(whole, 1), labels, IGNORE) + nll_loss(whole, labels, IGNORE)).backward()
    alone = logits.permute(1, 0, 2, 3)[:, valid][None].clone().requires_grad_(True)   # (1, C, P)
    (lovasz_softmax(torch.softmax(alone, 1), labels[valid][None], IGNORE)
     + nll_loss(alone, labels[valid][None], IGNORE)).backward()
    assert torch.allclose(whole.grad.permute(1, 0, 2, 3)[:, valid], alone.grad[0], atol=1e-7)
    assert torch.equal(whole.grad.permute(1, 0, 2, 3)[:, ~valid], torch.zeros(3, int((~valid).sum())))


def test_flow_loss_is_the_mean_absolute_difference():
    predicted = torch.zeros(1, 2, 2, 2)
    target = torch.tensor([[[[1.0, -2.0], [0.0, 0.0]], [[0.0, 0.0], [4.0, 1.0]]]])
    assert flow_loss(predicted, target).item() == pytest.approx(8 / 8)
    valid = torch.tensor([[[True, True], [False, False]]])
    assert flow_loss(predicted, target, valid).item() == pytest.approx(3 / 4)
    assert flow_loss(predicted, target, torch.zeros_like(valid)).item() == 0.0


def test_lovasz_of_an_all_wrong_prediction_is_one():
    """With every pixel wrong by 1, the loss is the Jaccard loss of predicting the opposite
    labels: 1 for each present class."""
    for labels in itertools.product((0, 1), repeat=3):
        labels = torch.tensor([labels])
        probs = F.one_hot(1 - labels, 2).permute(0, 2, 1).float()
        assert lovasz_softmax(probs, labels, IGNORE).item() == pytest.approx(1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_mask_losses_and_their_gradient_do_not_synchronise_on_the_gpu():
    generator = torch.Generator().manual_seed(10)
    logits = (torch.randn(2, 3, 4, 64, 64, generator=generator) * 4).cuda().requires_grad_(True)
    labels = torch.randint(0, 4, (2, 3, 64, 64), generator=generator)
    labels[:, :, :5] = IGNORE
    labels = labels.cuda()
    reference = segmentation_loss_terms(logits.detach().cpu(), labels.cpu(), IGNORE)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        lovasz, nll = segmentation_loss_terms(logits, labels, IGNORE)
        (lovasz + nll).backward()
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert torch.isfinite(logits.grad).all()
    assert lovasz.item() == pytest.approx(reference[0].item(), abs=1e-5)
    assert nll.item() == pytest.approx(reference[1].item(), abs=1e-5)
