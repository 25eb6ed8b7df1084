"""Training a GeM + FC head on the conv maps of real UKBench photos: a few steps lower the
loss and pull positives closer than negatives; a seed makes it repeatable; a checkpointed run
resumes exactly where it stopped."""
import numpy as np
import pytest
import torch

from cnn.heads import MapBank, head_from_state
from cnn.training import TrainingConfig, initial_whitening, load_checkpoint, train_head
from cnn.tuples import epoch_tuples, negatives_for

#: Small and quick: 32-d PCA start (40 images), 3 negatives, a high learning rate.
CONFIG = TrainingConfig(init="pca", dim=32, negatives=3, epochs=3, batch=16, lr=1e-2, seed=3)
#: Shorter runs for the repeatability tests: 2 epochs of 48 tuples.
SHORT = TrainingConfig(**{**CONFIG.__dict__, "epochs": 2, "max_tuples": 48})


@pytest.fixture(scope="module")
def start(training_maps):
    """The FC layer's start (PCA whitening of the 40 images), computed once."""
    maps, _, pairs, _ = training_maps
    return initial_whitening(maps, pairs, CONFIG)


def gaps(maps, head, pairs, labels):
    """Per query image: similarity to its farthest positive minus that to its nearest negative."""
    d = MapBank(maps).describe_all(head)
    s = d @ d.T
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    worst_positive = np.where(same, s, np.inf).min(axis=1)
    best_negative = np.where(labels[:, None] != labels[None, :], s, -np.inf).max(axis=1)
    return worst_positive - best_negative


def test_a_few_epochs_lower_the_loss_and_separate_positives_from_negatives(training_maps, start):
    maps, _, pairs, labels = training_maps
    before = train_head(maps, pairs, labels, TrainingConfig(**{**CONFIG.__dict__, "epochs": 0}), "cpu", start,
                        progress=False)
    result = train_head(maps, pairs, labels, CONFIG, "cpu", start, progress=False)
    losses = [r.loss for r in result.history]
    assert losses[-1] < 0.8 * losses[0], losses
    gap_before, gap_after = gaps(maps, before.head, pairs, labels), gaps(maps, result.head, pairs, labels)
    assert gap_after.mean() > gap_before.mean() + 0.05, (gap_before.mean(), gap_after.mean())
    assert (gap_after > 0).mean() > (gap_before > 0).mean()
    assert result.tuples_seen == 3 * 2 * len(pairs)  # every verified pair, both directions, each epoch
    assert all(r.tuples_per_s > 0 for r in result.history)


def test_the_same_seed_gives_the_same_head_and_another_seed_another(training_maps, start):
    maps, _, pairs, labels = training_maps
    a = train_head(maps, pairs, labels, SHORT, "cpu", start, progress=False).head.state_dict()
    b = train_head(maps, pairs, labels, SHORT, "cpu", start, progress=False).head.state_dict()
    c = train_head(maps, pairs, labels, TrainingConfig(**{**SHORT.__dict__, "seed": 4}), "cpu", start,
                   progress=False).head.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["projection"], c["projection"])


def test_an_interrupted_run_resumes_from_its_last_epoch_to_the_same_head(training_maps, start, tmp_path):
    maps, _, pairs, labels = training_maps
    checkpoint = str(tmp_path / "checkpoint.pt")
    first = train_head(maps, pairs, labels, TrainingConfig(**{**SHORT.__dict__, "epochs": 1}), "cpu", start,
                       checkpoint=checkpoint, progress=False)
    assert load_checkpoint(checkpoint)["epoch"] == 1 and len(first.history) == 1
    resumed = train_head(maps, pairs, labels, SHORT, "cpu", start, checkpoint=checkpoint, progress=False)
    straight = train_head(maps, pairs, labels, SHORT, "cpu", start, progress=False)
    assert [r.epoch for r in resumed.history] == [1, 2]
    assert resumed.history[0].loss == first.history[0].loss
    state, expected = resumed.head.state_dict(), straight.head.state_dict()
    assert all(torch.equal(state[k], expected[k]) for k in state)
    # a head rebuilt from the saved state describes as the trained one
    rebuilt = head_from_state("gem-fc", state)
    assert np.array_equal(MapBank(maps).describe_all(rebuilt), MapBank(maps).describe_all(resumed.head))


def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint.pt: not a readable training checkpoint"):
        load_checkpoint(str(path))


def test_hard_negatives_are_the_nearest_images_of_other_components_one_per_component():
    # 6 images on a circle; components {0, 1}, {2}, {3, 4}, {5}
    angles = np.array([0.0, 0.1, 0.3, 0.5, 0.55, 2.0])
    d = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    components = np.array([0, 0, 1, 2, 2, 3])
    negatives = negatives_for(d, np.array([0]), components, 3)
    assert negatives.tolist() == [[2, 3, 5]]  # 4 is nearer than 5 but shares 3's component
    rng = np.random.default_rng(0)
    random = negatives_for(d, np.array([0, 0, 0]), components, 2, hard=False, rng=rng)
    assert all(len(set(components[row])) == 2 and 0 not in components[row] for row in random)
    with pytest.raises(ValueError, match="4 negatives per query need 5 components; there are 4"):
        negatives_for(d, np.array([0]), components, 4)
    tuples = epoch_tuples(d, np.array([[0, 1], [3, 4]]), components, 2, np.random.default_rng(0),
                          hard_positives=True)
    assert sorted(zip(tuples.queries.tolist(), tuples.positives.tolist())) == [(0, 1), (1, 0), (3, 4), (4, 3)]
