"""Mask and flow losses: hand-checked Lovász values, ignored pixels, NLL against torch."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from models.losses import PROB_EPS, flow_loss, lovasz_softmax, nll_loss, segmentation_loss

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


def test_nll_equals_torch_with_ignore_index():
    probs = random_probs(2, 4, 3, 3)
    labels = torch.randint(0, 4, (2, 3, 3), generator=torch.Generator().manual_seed(4))
    labels[1, 0] = IGNORE
    expected = F.nll_loss(probs.log(), labels, ignore_index=IGNORE)
    assert nll_loss(probs, labels, IGNORE).item() == pytest.approx(expected.item())


def test_losses_are_finite_for_zero_probabilities_and_all_ignored_pixels():
    probs = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]], requires_grad=True)   # (1, C=2, P=2)
    labels = torch.tensor([[0, 1]])                      # every true class has probability 0
    loss = nll_loss(probs, labels, IGNORE) + lovasz_softmax(probs, labels, IGNORE)
    loss.backward()
    assert loss.item() == pytest.approx(-math.log(PROB_EPS) + 1.0)
    assert torch.isfinite(probs.grad).all()
    ignored = torch.full((1, 2), IGNORE)
    for fn in (nll_loss, lovasz_softmax):
        value = fn(probs, ignored, IGNORE)
        value.backward()
        assert value.item() == 0.0


def test_segmentation_loss_uses_the_given_frames():
    probs = torch.softmax(torch.randn(2, 3, 4, 6, 6, generator=torch.Generator().manual_seed(5)), 2)
    labels = torch.randint(0, 4, (2, 3, 6, 6), generator=torch.Generator().manual_seed(6))
    labels[:, 1, :1] = IGNORE
    loss = segmentation_loss(probs, labels, IGNORE)
    flat_probs, flat_labels = probs[:, 1:].flatten(0, 1), labels[:, 1:].flatten(0, 1)
    expected = lovasz_softmax(flat_probs, flat_labels, IGNORE) + F.nll_loss(
        flat_probs.log(), flat_labels, ignore_index=IGNORE)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    changed = probs.clone()
    changed[:, 0] = 0.25                                # frame 0 (the given mask) is not scored
    assert segmentation_loss(changed, labels, IGNORE).item() == pytest.approx(loss.item())
    assert segmentation_loss(probs, labels, IGNORE, frames=(2,)).item() != pytest.approx(loss.item())


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
