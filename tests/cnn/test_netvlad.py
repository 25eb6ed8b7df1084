"""A NetVLAD head on the conv maps of real UKBench photos, trained by the GeM head's loop: a couple of
epochs lower the loss, the numpy head an index applies gives the torch head's descriptors, a saved
model reloads bit for bit, and a netvlad-ft index built with it finds an object's views."""
import os

import numpy as np
import pytest
import torch

from cbir.build import build_index
from cnn.heads import MapBank, head_from_state
from cnn.learned_model import LearnedModel, backbone_weights_version, data_fingerprint
from cnn.options import BackboneOptions
from cnn.training import TrainingConfig, span_whitening, train_head
from cnn.whitening import PCAWhitening

#: Small and quick: 8 clusters, a 32-d learned-whitening start (40 images), 3 negatives.
CONFIG = TrainingConfig(head="netvlad", clusters=8, init="lw", dim=32, negatives=3, epochs=2, batch=16, lr=1e-3,
                        seed=3)


@pytest.fixture(scope="module")
def trained(training_maps):
    maps, paths, pairs, labels = training_maps
    result = train_head(maps, pairs, labels, CONFIG, "cpu", progress=False)
    model = LearnedModel("netvlad", BackboneOptions().key, backbone_weights_version(), result.head.state_dict(),
                         CONFIG.__dict__, data_fingerprint(paths, pairs, labels))
    return result, model


def test_a_couple_of_epochs_lower_the_loss(trained, training_maps):
    result, _ = trained
    losses = [r.loss for r in result.history]
    assert losses[-1] < 0.9 * losses[0], losses
    assert all(r.p is None and r.tuples_per_s > 0 for r in result.history)
    maps, _, pairs, labels = training_maps
    start = train_head(maps, pairs, labels, TrainingConfig(**{**CONFIG.__dict__, "epochs": 0}), "cpu",
                       progress=False).head
    trained_state = result.head.state_dict()
    assert set(trained_state) == {"centroids", "assign_weight", "assign_bias", "mean", "projection"}
    assert trained_state["centroids"].shape == (8, 1280) and trained_state["projection"].shape == (8 * 1280, 32)
    assert all(not torch.equal(start.state_dict()[k], trained_state[k]) for k in trained_state)  # all are trained


def test_the_numpy_head_gives_the_torch_heads_descriptors(trained, training_maps):
    result, model = trained
    maps = training_maps[0]
    expected = MapBank(maps).describe_all(result.head)
    head = model.inference_head()
    assert head.p is None and head.output_dim == 32
    described = np.stack([head.describe([m.astype(np.float32)])[0] for m in maps])
    assert np.allclose(described, expected, atol=1e-4)
    rebuilt = head_from_state("netvlad", result.head.state_dict())
    assert np.array_equal(MapBank(maps).describe_all(rebuilt), expected)


def test_a_saved_model_reloads_bit_for_bit_and_its_index_finds_an_objects_views(trained, training_maps, tmp_path):
    _, model = trained
    _, paths, _, labels = training_maps
    directory = str(tmp_path / "model")
    model.save(directory)
    loaded = LearnedModel.load(directory, backbone=BackboneOptions().key)
    assert loaded.state.keys() == model.state.keys()
    assert all(torch.equal(loaded.state[k], model.state[k]) for k in model.state)
    index = build_index("netvlad-ft", model=directory, cache_dir=str(tmp_path / "cache"))
    index.add_images(paths, [os.path.basename(p) for p in paths], progress=False)
    hits = index.search(paths[5], top_k=4)
    assert hits[0].name == os.path.basename(paths[5])
    found = [labels[paths.index(os.path.join(os.path.dirname(paths[0]), h.name))] for h in hits]
    assert np.mean(np.array(found) == labels[5]) >= 0.75
    index.save(str(tmp_path / "index"))
    from cbir.searchable import load_index
    reloaded = load_index(str(tmp_path / "index"))
    assert [h.name for h in reloaded.search(paths[5], top_k=4)] == [h.name for h in hits]
    assert reloaded.info()["learned_head"]["kind"] == "netvlad"


@pytest.mark.parametrize("init", ["pca", "lw"])
def test_whitening_in_the_span_of_few_long_vectors_equals_the_full_one(init):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 80)) @ rng.normal(size=(80, 80))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pairs = np.array([(i, i + 1) for i in range(0, 30, 2)])
    config = TrainingConfig(init=init, dim=10)
    span = span_whitening(x, pairs, config)
    full = PCAWhitening.learn(x, 10) if init == "pca" else PCAWhitening.learn_from_pairs(x, pairs, 10)
    assert span.projection.shape == (80, 10)
    # the same directions up to their signs: the same similarities between whitened vectors
    assert np.allclose(span.apply(x) @ span.apply(x).T, full.apply(x) @ full.apply(x).T, atol=1e-3)
