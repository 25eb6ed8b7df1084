"""The tuple losses against their formulas, on examples computed by hand."""
import math

import pytest
import torch

from cnn.losses import DEFAULT_MARGINS, contrastive_loss, triplet_loss, tuple_loss

# One tuple: anchor (1, 0); positive (0.6, 0.8): d^2 = 0.4^2 + 0.8^2 = 0.8;
# negatives (0, 1): d = sqrt(2), d^2 = 2; and (-1, 0): d = 2, d^2 = 4.
A = torch.tensor([[1.0, 0.0]])
P = torch.tensor([[0.6, 0.8]])
N = torch.tensor([[[0.0, 1.0], [-1.0, 0.0]]])


def test_contrastive_loss_is_half_squared_positive_distance_plus_hinged_negatives():
    # margin 0.85: both negatives are farther, only the positive term: 0.5 * 0.8
    assert float(contrastive_loss(A, P, N, 0.85)) == pytest.approx(0.4, abs=1e-6)
    # margin 1.5: the first negative is inside it: + 0.5 * (1.5 - sqrt 2)^2
    assert float(contrastive_loss(A, P, N, 1.5)) == pytest.approx(0.4 + 0.5 * (1.5 - math.sqrt(2)) ** 2, abs=1e-6)
    # margin 3: both: + 0.5 * (3 - sqrt 2)^2 + 0.5 * (3 - 2)^2
    assert float(contrastive_loss(A, P, N, 3.0)) == pytest.approx(
        0.4 + 0.5 * (3 - math.sqrt(2)) ** 2 + 0.5, abs=1e-6)


def test_triplet_loss_hinges_squared_distance_differences():
    assert float(triplet_loss(A, P, N, 0.1)) == 0.0               # 0.8 - 2 + 0.1 < 0, 0.8 - 4 + 0.1 < 0
    assert float(triplet_loss(A, P, N, 1.5)) == pytest.approx(0.3, abs=1e-6)   # 0.8 - 2 + 1.5
    assert float(triplet_loss(A, P, N, 3.5)) == pytest.approx(2.3 + 0.3, abs=1e-6)  # + (0.8 - 4 + 3.5)


def test_losses_average_over_tuples_and_names_pick_them():
    two = (torch.cat([A, A]), torch.cat([P, A]), torch.cat([N, N]))  # second tuple: positive = anchor
    assert float(contrastive_loss(*two, 1.5)) == pytest.approx(
        (0.4 + 0.5 * (1.5 - math.sqrt(2)) ** 2 + 0.5 * (1.5 - math.sqrt(2)) ** 2) / 2, abs=1e-6)
    assert float(tuple_loss("triplet", A, P, N)) == float(triplet_loss(A, P, N, DEFAULT_MARGINS["triplet"]))
    with pytest.raises(ValueError, match="unknown loss 'arcface'"):
        tuple_loss("arcface", A, P, N)


def test_contrastive_gradient_pulls_the_positive_and_pushes_a_close_negative():
    anchor = A.clone().requires_grad_(True)
    contrastive_loss(anchor, P, N, 1.5).backward()
    # d/da of 0.5|a-p|^2 is a - p = (0.4, -0.8); the hinge on (0, 1) adds -(m - d)(a - n)/d
    d = math.sqrt(2)
    expected = torch.tensor([0.4 - (1.5 - d) / d, -0.8 + (1.5 - d) / d])
    assert torch.allclose(anchor.grad[0], expected, atol=1e-5)
