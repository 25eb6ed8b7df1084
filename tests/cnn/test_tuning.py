"""Training the backbone's last blocks with the head (``cbir train --from-block``) on real UKBench
photos: a few steps lower the loss, and an interrupted run resumes to the weights of an uninterrupted
one (runs repeat given the seed); the tuned weights save and reload
bit for bit and a tampered or foreign file is refused; a gem-ft index of the tuned model describes
images through the tuned blocks, its cache entries apart from the ImageNet network's."""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch

from cbir.build import build_index
from cbir.searchable import load_index
from cnn.backbone import imagenet_state, tuned_prefixes
from cnn.feature_maps import FeatureMapExtractor
from cnn.learned_model import LearnedModel, ModelFormatError, backbone_weights_version, data_fingerprint
from cnn.options import BackboneOptions
from cnn.training import TrainingConfig
from cnn.tuning import train_network
from index.persistence import MANIFEST, manifest_checksum

#: Blocks 14-15 + head conv with a 16-d head, 2 negatives, learning rates high enough to move in 3 epochs.
CONFIG = TrainingConfig(init="pca", dim=16, negatives=2, epochs=3, batch=8, lr=1e-2, backbone_lr=1e-3,
                        from_block=14, seed=1)


@pytest.fixture(scope="module")
def photos(data_dir):
    """16 UKBench photos (4 objects x 4 views) as the backbone sees them, their paths, pairs and labels."""
    paths = [os.path.join(data_dir, "ukbench", f"ukbench{i:05d}.jpg") for i in range(800, 816)]
    decode = FeatureMapExtractor().image
    labels = np.arange(len(paths)) // 4
    pairs = np.array([(i, j) for i in range(len(paths)) for j in range(i + 1, len(paths)) if labels[i] == labels[j]])
    return [decode(p) for p in paths], paths, pairs, labels


@pytest.fixture(scope="module")
def tuned(photos, tmp_path_factory):
    """The run of ``CONFIG`` saved as a model directory, and its result."""
    images, paths, pairs, labels = photos
    result = train_network(images, pairs, labels, CONFIG, "cpu", progress=False)
    model = LearnedModel("gem-fc", BackboneOptions().key, backbone_weights_version(), result.head.state_dict(),
                         CONFIG.__dict__, data_fingerprint(paths, pairs, labels), [r.__dict__ for r in result.history],
                         tuned=result.tuned, from_block=CONFIG.from_block)
    directory = str(tmp_path_factory.mktemp("tuned") / "model")
    model.save(directory)
    return directory, result


def test_a_few_steps_on_blocks_14_15_lower_the_loss_and_change_only_those_blocks(tuned):
    _, result = tuned
    losses = [r.loss for r in result.history]
    assert losses[-1] < 0.8 * losses[0], losses
    original = imagenet_state()
    assert set(result.tuned) == {k for k in original if k.startswith(tuned_prefixes(14))}
    assert not torch.equal(result.tuned["_blocks.14._project_conv.weight"], original["_blocks.14._project_conv.weight"])
    assert not torch.equal(result.tuned["_conv_head.weight"], original["_conv_head.weight"])
    assert torch.equal(result.tuned["_bn1.running_mean"], original["_bn1.running_mean"])  # BatchNorm frozen


def test_an_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(photos, tuned, tmp_path):
    images, _, pairs, labels = photos
    checkpoint = str(tmp_path / "checkpoint.pt")
    first = train_network(images, pairs, labels, TrainingConfig(**{**CONFIG.__dict__, "epochs": 2}), "cpu",
                          checkpoint=checkpoint, progress=False)
    assert len(first.history) == 2
    resumed = train_network(images, pairs, labels, CONFIG, "cpu", checkpoint=checkpoint, progress=False)
    assert [r.epoch for r in resumed.history] == [1, 2, 3]
    uninterrupted = tuned[1]  # the same seed, all 3 epochs in one run: training repeats bit for bit
    assert all(torch.equal(resumed.tuned[k], uninterrupted.tuned[k]) for k in uninterrupted.tuned)
    assert all(torch.equal(a, b) for a, b in zip(resumed.head.state_dict().values(),
                                                 uninterrupted.head.state_dict().values()))


def test_tuned_weights_reload_bit_for_bit_and_a_tampered_or_foreign_file_is_refused(tuned, tmp_path):
    directory, result = tuned
    loaded = LearnedModel.load(directory, backbone=BackboneOptions().key)
    assert loaded.from_block == 14 and loaded.tuned.keys() == result.tuned.keys()
    assert all(torch.equal(loaded.tuned[k], result.tuned[k]) for k in result.tuned)
    assert json.load(open(os.path.join(directory, MANIFEST)))["version"] == 2  # older engines refuse it
    file = next(f for f in os.listdir(directory) if f.endswith("-backbone.pt"))

    tampered = str(tmp_path / "tampered")
    shutil.copytree(directory, tampered)
    weights = torch.load(os.path.join(tampered, file), weights_only=True)
    weights["_conv_head.weight"] += 1e-3
    torch.save(weights, os.path.join(tampered, file))
    with pytest.raises(ModelFormatError, match=f"{file}: SHA-256 mismatch, the tuned backbone weights"):
        LearnedModel.load(tampered)

    foreign = str(tmp_path / "foreign")  # another network's blocks, the manifest's SHA-256 made to match
    shutil.copytree(directory, foreign)
    weights["_conv_head.weight"] = torch.zeros(640, 320, 1, 1)
    torch.save(weights, os.path.join(foreign, file))
    manifest = json.load(open(os.path.join(foreign, MANIFEST)))
    manifest["meta"]["tuned"]["sha256"] = hashlib.sha256(open(os.path.join(foreign, file), "rb").read()).hexdigest()
    manifest["checksum"] = manifest_checksum(manifest)
    json.dump(manifest, open(os.path.join(foreign, MANIFEST), "w"))
    with pytest.raises(ModelFormatError, match="_conv_head.weight' has shape .*tuned for another backbone"):
        LearnedModel.load(foreign)


def test_a_tuned_index_describes_through_the_tuned_blocks_and_caches_apart(tuned, photos, data_dir, tmp_path):
    directory, _ = tuned
    paths = [os.path.join(data_dir, "ukbench", f"ukbench{i:05d}.jpg") for i in range(0, 8)]
    cache = str(tmp_path / "cache")
    model = LearnedModel.load(directory)
    plain_head = model.inference_head()
    plain_head.tuned = None  # the same head on the ImageNet network
    tuned_index = build_index("gem-ft", model=directory, cache_dir=cache)
    tuned_index.add_images(paths, progress=False)
    plain = build_index("gem-ft", model=plain_head, cache_dir=cache)
    plain.add_images(paths, progress=False)
    a, b = tuned_index.dense.vectors, plain.dense.vectors
    assert a.shape == b.shape and len(a) == 8
    assert np.abs(a - b).max() > 1e-2
    assert len(os.listdir(cache)) == 2  # one cache folder per extractor key: tuned maps kept apart
    saved = str(tmp_path / "index")
    tuned_index.save(saved)
    reloaded = load_index(saved, cache_dir=str(tmp_path / "empty"))
    assert reloaded.head.tuned.digest == tuned_index.head.tuned.digest
    assert np.allclose(reloaded.prepare_query(paths[3]).descriptor, a[3], atol=1e-5)
