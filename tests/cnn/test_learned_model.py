"""A trained model as a directory: it reloads bit for bit, a tampered or mismatched one is refused
with a message naming the file, and a gem-ft index carries the head so that a saved index is
searched without the model."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from cbir.build import BuildError, build_index
from cbir.searchable import load_index
from cnn.heads import MapBank
from cnn.learned_model import LearnedModel, ModelFormatError, backbone_weights_version, data_fingerprint, trained_on
from cnn.options import BackboneOptions
from cnn.training import TrainingConfig, train_head
from index.persistence import MANIFEST, manifest_checksum


@pytest.fixture(scope="module")
def trained(training_maps):
    maps, paths, pairs, labels = training_maps
    config = TrainingConfig(init="pca", dim=32, negatives=3, epochs=1, batch=16, lr=1e-2)
    result = train_head(maps, pairs, labels, config, "cpu", progress=False)
    key = BackboneOptions().key
    return LearnedModel("gem-fc", key, backbone_weights_version(), result.head.state_dict(), config.__dict__,
                        data_fingerprint(paths, pairs, labels), [r.__dict__ for r in result.history], {"note": "test"}), \
        result.head


def edit_manifest(directory, change):
    path = os.path.join(directory, MANIFEST)
    manifest = json.load(open(path))
    change(manifest)
    manifest["checksum"] = manifest_checksum(manifest)
    json.dump(manifest, open(path, "w"))


def test_a_saved_model_reloads_bit_for_bit(trained, tmp_path):
    model, _ = trained
    model.save(str(tmp_path / "model"))
    loaded = LearnedModel.load(str(tmp_path / "model"), backbone=BackboneOptions().key)
    assert loaded.state.keys() == model.state.keys()
    assert all(torch.equal(loaded.state[k], model.state[k].cpu()) for k in model.state)
    assert loaded.settings == json.loads(json.dumps(model.settings)) and loaded.scores == {"note": "test"}
    assert loaded.model_id == model.model_id and len(loaded.model_id) == 16
    assert loaded.data["images"] == 40 and len(loaded.data["image_digests"]) == 40
    model.save(str(tmp_path / "model"))  # a second save replaces the first: one state file
    assert sorted(f for f in os.listdir(tmp_path / "model") if f.endswith(".pt")).__len__() == 1


def test_a_tampered_or_foreign_model_is_refused_naming_the_file(trained, tmp_path):
    model, _ = trained
    directory = str(tmp_path / "model")
    model.save(directory)
    state_file = next(f for f in os.listdir(directory) if f.endswith("-state.pt"))
    with pytest.raises(ModelFormatError, match="trained on backbone 'efficientnet-lite0-v1-side1024', this "
                                               "pipeline uses 'efficientnet-lite0-v1-side512'"):
        LearnedModel.load(directory, backbone=BackboneOptions(max_side=512).key)
    edited = str(tmp_path / "edited")
    shutil.copytree(directory, edited)
    with open(os.path.join(edited, MANIFEST), "a") as handle:
        handle.write(" ")
    manifest = json.load(open(os.path.join(edited, MANIFEST)))
    manifest["meta"]["settings"]["lr"] = 1.0  # edited without fixing the checksum
    json.dump(manifest, open(os.path.join(edited, MANIFEST), "w"))
    with pytest.raises(ModelFormatError, match="manifest.json: checksum mismatch"):
        LearnedModel.load(edited)
    weights = str(tmp_path / "weights")
    shutil.copytree(directory, weights)
    edit_manifest(weights, lambda m: m["meta"].update(weights_version="0.0.1"))
    with pytest.raises(ModelFormatError, match="weights version 0.0.1, the installed weights are version"):
        LearnedModel.load(weights)
    tampered = str(tmp_path / "tampered")
    shutil.copytree(directory, tampered)
    state = torch.load(os.path.join(tampered, state_file), weights_only=True)
    state["pool.p"] += 0.5
    torch.save(state, os.path.join(tampered, state_file))
    with pytest.raises(ModelFormatError, match=f"{state_file}: SHA-256 mismatch"):
        LearnedModel.load(tampered)
    newer = str(tmp_path / "newer")
    shutil.copytree(directory, newer)
    edit_manifest(newer, lambda m: m.update(version=3))
    with pytest.raises(ModelFormatError, match="model format version 3 cannot be read"):
        LearnedModel.load(newer)
    with pytest.raises(ModelFormatError, match="missing"):
        LearnedModel.load(str(tmp_path / "nowhere"))


def test_gem_ft_index_applies_the_head_saves_it_and_needs_the_model_only_to_build(trained, training_maps,
                                                                                  tmp_path, data_dir):
    model, head = trained
    maps, paths, _, _ = training_maps
    directory = str(tmp_path / "model")
    model.save(directory)
    index = build_index("gem-ft", model=directory, cache_dir=str(tmp_path / "cache"))
    index.add_images(paths, [os.path.basename(p) for p in paths], progress=False)
    # the numpy head gives the torch head's descriptors
    expected = MapBank(maps).describe_all(head)
    assert np.allclose(index.dense.vectors[:len(paths)], expected, atol=1e-4)
    hits = index.search(paths[5], top_k=4)
    assert hits[0].name == os.path.basename(paths[5])
    index.save(str(tmp_path / "index"))
    shutil.rmtree(directory)
    loaded = load_index(str(tmp_path / "index"))
    assert [h.name for h in loaded.search(paths[5], top_k=4)] == [h.name for h in hits]
    assert loaded.info()["learned_head"]["model_id"] == model.model_id
    assert trained_on(model, paths[:3] + [os.path.join(data_dir, "ukbench", "ukbench00000.jpg")]) == 3
    with pytest.raises(BuildError, match="needs a trained model"):
        build_index("gem-ft")
    with pytest.raises(BuildError, match="uses no trained model"):
        build_index("gem", model=loaded.head)
    with pytest.raises(BuildError, match="takes its whitening from the trained model"):
        build_index("gem-ft", model=loaded.head, whiten_paths=paths[:3])


def test_rmac_lw_learns_a_regional_whitening_in_closed_form_and_indexes_at_three_scales(training_maps, tmp_path):
    """The rmac-lw model: Lw of the mutually nearest R-MAC regions (1.414, 1 and 0.707 scales) of the
    pairs; its index describes images with it, finds each UKBench object's views and reloads alike."""
    from cbir.learning import regional_lw_state, training_maps as multi_scale_maps
    from cbir.pipelines import get_pipeline
    from cnn.global_descriptors import embed, raw_vectors
    _, paths, pairs, labels = training_maps
    cache = str(tmp_path / "cache")
    maps, kept, _ = multi_scale_maps(paths, cache, device="cpu", pipeline="rmac-lw")
    assert kept == list(range(40)) and [m.shape[1] for m in maps[0]] == [10, 7, 5]  # 240-px rows at 3 scales, stride 32
    state, scores = regional_lw_state(maps, pairs, get_pipeline("rmac-lw"))
    assert scores["regions"] > 40 * 3 * 10 and state["projection"].shape == (1280, 1280)
    model = LearnedModel("rmac-lw", BackboneOptions().key, backbone_weights_version(), state, {},
                         data_fingerprint(paths, pairs, labels))
    model.save(str(tmp_path / "model"))
    with pytest.raises(ValueError, match="learned in closed form"):
        train_head([m[0] for m in maps], pairs, labels, TrainingConfig(head="rmac-lw"), "cpu")
    index = build_index("rmac-lw", model=str(tmp_path / "model"), cache_dir=cache)
    index.add_images(paths, [os.path.basename(p) for p in paths], progress=False)
    head = index.head
    descriptor, _ = embed(raw_vectors([m.astype(np.float32) for m in maps[7]], head.pooling), head.whitening,
                          head.pooling)
    assert np.allclose(index.dense.vectors[7], descriptor, atol=1e-3)  # cached maps are float16
    same_object = [np.mean([labels[paths.index(os.path.join(os.path.dirname(paths[0]), h.name))] == labels[q]
                            for h in index.search(paths[q], top_k=4)]) for q in range(40)]
    assert np.mean(same_object) >= 0.85
    index.save(str(tmp_path / "index"))
    loaded = load_index(str(tmp_path / "index"))
    assert [h.name for h in loaded.search(paths[5], top_k=4)] == [h.name for h in index.search(paths[5], top_k=4)]
    assert loaded.info()["learned_head"] == {"kind": "rmac-lw", "p": None, "dim": 1280, "model_id": model.model_id}
    with pytest.raises(BuildError, match="needs a gem-fc head; the model holds a rmac-lw one"):
        build_index("gem-ft", model=str(tmp_path / "model"))


def test_blcf_lw_learns_the_conv_features_whitening_and_blcf_indexes_use_it(training_maps, data_dir, tmp_path):
    """cbir train --head blcf-lw (its mining replaced by the known UKBench groups): Lw of the mutually
    nearest conv positions of the pairs, for blcf-he's features. A blcf-he index built with it keeps
    that whitening (vocabulary and signatures from other images) and ranks each object's views first;
    other features, pipelines or a second whitening are refused."""
    from bovw.vocabulary import VocabularyConfig
    from cbir.learning import train_model
    from cbir.mining import MinedPairs
    from cbir.pipelines import get_pipeline
    _, paths, pairs, labels = training_maps
    cache, out = str(tmp_path / "cache"), str(tmp_path / "model")
    mined = MinedPairs(paths, pairs, np.full(len(pairs), 30), np.ones(len(pairs)), labels)
    run = train_model(paths, out, TrainingConfig(head="blcf-lw"), cache_dir=cache, n_jobs=1, progress=False,
                      mined=mined)
    model = LearnedModel.load(out, backbone=BackboneOptions().key)
    assert run.result is None and model.head == "blcf-lw"
    assert model.data["features"] == get_pipeline("blcf-he").build.conv.key
    assert tuple(model.state["projection"].shape) == (672, 256) and model.scores["regions"] > 40 * 500
    train = [os.path.join(data_dir, "ukbench", f"ukbench{i:05d}.jpg") for i in range(40)]  # other objects
    shape = VocabularyConfig(branching=16, depth=2)
    names = [os.path.basename(p) for p in paths]

    def precision(index):
        index.add_images(paths, names, progress=False)
        return np.mean([np.mean([labels[names.index(h.name)] == labels[q] for h in index.search(paths[q], top_k=4)])
                        for q in range(len(paths))])

    learned = build_index("blcf-he", train_paths=train, vocabulary_config=shape, cache_dir=cache, model=out)
    assert np.array_equal(learned.whitening.projection, model.state["projection"].numpy())
    assert precision(learned) >= 0.95
    learned.save(str(tmp_path / "index"))
    assert load_index(str(tmp_path / "index")).info()["whitening_method"] == "learned"  # cbir info shows it
    with pytest.raises(BuildError, match="learned on the conv features .* pipeline 'blcf' extracts"):
        build_index("blcf", train_paths=train, model=out)
    with pytest.raises(BuildError, match="not both"):
        build_index("blcf-asmk", train_paths=train, whiten_paths=train, model=out)
    with pytest.raises(BuildError, match="uses no trained model"):
        build_index("sift-he", train_paths=train, model=out)
    with pytest.raises(BuildError, match="needs a rmac-lw head; the model holds a blcf-lw one"):
        build_index("rmac-lw", model=out)


@pytest.mark.slow
def test_blcf_how_trains_the_conv_whitening_through_the_images_sums_and_blcf_asmk_uses_it(training_maps, data_dir,
                                                                                          tmp_path):
    """cbir train --head blcf-how: blcf-lw's whitening, then Adam on the contrastive loss of the sums of each
    image's whitened positions. The loss falls epoch by epoch, the whitening moves from its closed-form start,
    the model reloads as a conv whitening, and a blcf-asmk index built with it ranks each object's views first."""
    from bovw.vocabulary import VocabularyConfig
    from cbir.build import conv_whitening
    from cbir.learning import local_training_rows, train_model
    from cbir.mining import MinedPairs
    from cnn.whitening import regional_learned_whitening
    _, paths, pairs, labels = training_maps
    cache, out = str(tmp_path / "cache"), str(tmp_path / "model")
    mined = MinedPairs(paths, pairs, np.full(len(pairs), 30), np.ones(len(pairs)), labels)
    config = TrainingConfig(head="blcf-how", epochs=3, batch=8, lr=3e-3, negatives=3)
    run = train_model(paths, out, config, cache_dir=cache, n_jobs=1, progress=False, mined=mined)
    losses = [record.loss for record in run.result.history]
    assert len(losses) == 3 and losses[2] < losses[1] < losses[0]
    model = LearnedModel.load(out, backbone=BackboneOptions().key)
    assert model.head == "blcf-how" and tuple(model.state["projection"].shape) == (672, 256)
    rows, _, _ = local_training_rows(paths, cache, 1, False, "blcf-asmk")
    start = regional_learned_whitening(rows, pairs, dim=256, population=200_000)
    moved = np.abs(model.state["projection"].numpy() - start.projection).max()
    assert moved > 1e-3 * np.abs(start.projection).max()
    whitening = conv_whitening(out, "blcf-asmk")
    assert whitening.method == "learned" and np.array_equal(whitening.projection, model.state["projection"].numpy())
    train = [os.path.join(data_dir, "ukbench", f"ukbench{i:05d}.jpg") for i in range(40)]  # other objects
    index = build_index("blcf-asmk", train_paths=train, vocabulary_config=VocabularyConfig(branching=16, depth=2),
                        cache_dir=cache, model=out)
    names = [os.path.basename(p) for p in paths]
    index.add_images(paths, names, progress=False)
    precision = np.mean([np.mean([labels[names.index(h.name)] == labels[q] for h in index.search(paths[q], top_k=4)])
                         for q in range(len(paths))])
    assert precision >= 0.95
