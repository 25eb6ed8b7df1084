"""``cbir train`` as a function: mine verified pairs in a folder, train a head (and with
``TrainingConfig.from_block`` the backbone's last blocks, ``cnn.tuning``), save the model.

The model directory doubles as the work folder of an interrupted run: ``mining/`` holds
the resumable mining (index, features, queries done), ``pairs/`` the mined pairs once
mining is over (kept: a user can inspect them, ``cbir.mining.MinedPairs.load``), and
``checkpoint.pt`` the training state after the last finished epoch. Running the same
command again resumes from there; ``manifest.json`` is written last, when the model is
complete, and the mining and checkpoint files are then removed.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from bovw.extraction import ExtractionReport, iter_features
from cbir.pipelines import Pipeline, get_pipeline
from cnn.options import LAST_BLOCK

logger = logging.getLogger("cbir")

#: The pipeline a ``cbir train`` model of each head kind is for (its backbone, scales and pooling;
#: ``blcf-lw``, ``blcf-how``: its conv features, the model also serves ``blcf-asmk``, which extracts the same).
PIPELINE_OF_HEAD = {"gem-fc": "gem-ft", "rmac-lw": "rmac-lw", "netvlad": "netvlad-ft", "blcf-lw": "blcf-he",
                    "blcf-how": "blcf-he"}
#: Conv positions the PCA step of a ``blcf-lw`` whitening samples (bounds its memory: ~600 per image).
LOCAL_LW_POPULATION = 200_000
#: The pipeline of the trained (torch) head.
TRAINED_PIPELINE = PIPELINE_OF_HEAD["gem-fc"]


@dataclass
class TrainingRun:
    """What ``train_model`` did.

    Attributes:
        model: the saved model.
        mined: the verified pairs it trained on.
        result: the training history (``cnn.training.TrainingResult``; None for ``rmac-lw`` and
            ``blcf-lw``, learned in closed form).
        report: the feature-map extraction of the mined images (skipped files).
    """

    model: object
    mined: object
    result: object
    report: ExtractionReport


def training_maps(paths: Sequence[str], cache_dir: str | None = None, n_jobs: int = 1,
                  progress: bool | None = None, device: str = "auto",
                  pipeline: str = TRAINED_PIPELINE) -> tuple[list[list[np.ndarray]], list[int], ExtractionReport]:
    """The backbone's 'global' maps of the usable images of ``paths`` at ``pipeline``'s scales.

    Returns:
        (per image, its (C, H, W) float16 maps, one per scale; index in ``paths`` of each image;
        extraction report).
    """
    from cnn.feature_maps import MultiScaleMaps
    build = get_pipeline(pipeline).build
    extractor = MultiScaleMaps(build.backbone, build.scales, cache_dir, device)
    report = ExtractionReport()
    position = {path: i for i, path in enumerate(paths)}
    maps, kept = [], []
    for path, found in iter_features(list(paths), extractor, None, report, n_jobs=n_jobs, verbose=progress):
        maps.append([m.astype(np.float16) for m in found["global"]])
        kept.append(position[path])
    return maps, kept, report


def local_training_rows(paths: Sequence[str], cache_dir: str | None = None, n_jobs: int = 1,
                        progress: bool | None = None, pipeline: str | Pipeline = "blcf-he"
                        ) -> tuple[list[np.ndarray], list[int], ExtractionReport]:
    """The conv local features (BLCF) of the usable images of ``paths``, as ``pipeline`` extracts them
    (from and into the feature cache).

    Returns:
        (per image, its (n_i, C) float32 L2-normalised descriptors; index in ``paths`` of each image;
        extraction report).
    """
    from cbir.retrieval_index import local_feature_cache, read_local_features
    build = get_pipeline(pipeline).build
    report = ExtractionReport()
    position = {path: i for i, path in enumerate(paths)}
    rows, kept = [], []
    for path, features in iter_features(list(paths), functools.partial(read_local_features, build),
                                        local_feature_cache(build, cache_dir), report, n_jobs=n_jobs,
                                        verbose=progress):
        rows.append(features.descriptors)
        kept.append(position[path])
    return rows, kept, report


def restrict(pairs: np.ndarray, components: np.ndarray, kept: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Pairs and components renumbered to the images ``kept`` (pairs touching others dropped)."""
    new = np.full(len(components), -1, np.int64)
    new[kept] = np.arange(len(kept))
    pairs = new[np.asarray(pairs, np.int64).reshape(-1, 2)]
    return pairs[(pairs >= 0).all(axis=1)], np.asarray(components, np.int64)[kept]


def train_model(images: Sequence[str], out: str, config=None, min_inliers: int | None = None,
                shortlist: int | None = None, cache_dir: str | None = None, n_jobs: int = -1,
                device: str = "auto", progress: bool | None = None, mined=None,
                vocabulary_config=None) -> TrainingRun:
    """Mine ``images`` (``cbir.mining.mine_pairs``), train a head on their cached maps (``rmac-lw``:
    learn its regional whitening, in closed form; ``blcf-lw``: the same of the conv local features),
    save it to ``out``.

    Args:
        images: the training photos (never the ones to be evaluated); unusable ones are skipped.
        out: the model directory (also the work folder of an interrupted run: called again
            with the same arguments, it resumes).
        config: ``cnn.training.TrainingConfig`` (default settings when None).
        min_inliers, shortlist: mining settings (None: mining's defaults).
        cache_dir: feature cache (SIFT features and conv maps).
        n_jobs: extraction workers.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        progress: progress bars (None: only on a terminal).
        mined: pairs already mined for ``images`` (skips mining).
        vocabulary_config: the mining vocabulary's shape (None: mining's default, 141^2 words).

    Raises:
        cbir.mining.MiningError: too few verified pairs (the message says how many and what would help).
    """
    from cbir.mining import MinedPairs, mine_pairs
    from cnn.learned_model import LearnedModel, backbone_weights_version, data_fingerprint
    from cnn.training import CLOSED_FORM_HEADS, TrainingConfig
    config = config or TrainingConfig()
    images = [str(p) for p in images]
    os.makedirs(out, exist_ok=True)
    pairs_dir, mining_dir = os.path.join(out, "pairs"), os.path.join(out, "mining")
    settings = {key: value for key, value in (("min_inliers", min_inliers), ("shortlist", shortlist))
                if value is not None}
    mining = dict(settings, vocabulary_config=vocabulary_config) if vocabulary_config is not None else settings
    if mined is None and os.path.isdir(pairs_dir):
        previous = MinedPairs.load(pairs_dir)
        same = set(previous.images) | set(previous.skipped) == set(images) and all(
            previous.settings.get(key) == value for key, value in settings.items())
        if same:
            logger.info("using the pairs mined before in %s: %s", pairs_dir, previous.summary())
            mined = previous
    if mined is None:  # mine_pairs logs its summary
        mined = mine_pairs(images, cache_dir=cache_dir, n_jobs=n_jobs, resume=mining_dir, progress=progress,
                           **mining)
        mined.save(pairs_dir)
    closed_form = config.head in CLOSED_FORM_HEADS
    pipeline = get_pipeline(PIPELINE_OF_HEAD.get(config.head, TRAINED_PIPELINE))
    local = pipeline.kind == "local"
    if local:  # blcf-lw, blcf-how: per image its conv features instead of its maps
        maps, kept, report = local_training_rows(mined.images, cache_dir, n_jobs, progress, pipeline.name)
    else:
        maps, kept, report = training_maps(mined.images, cache_dir, n_jobs, progress, device, pipeline.name)
    pairs, components = restrict(mined.pairs, mined.components, kept)
    if len(pairs) < 2 or (not closed_form and len(np.unique(components)) <= config.negatives):
        needed = "" if closed_form else f" to train with {config.negatives} negatives per tuple"
        raise ValueError(f"{out}: {len(pairs)} verified pairs in {len(np.unique(components))} components are too "
                         f"few{needed}; add photos of more objects or places, each from several viewpoints")
    used = [mined.images[i] for i in kept]
    backbone = pipeline.build.conv.backbone if local else pipeline.build.backbone
    data = {**data_fingerprint(used, pairs, components), "mining": mined.settings}
    if local:  # the conv features' key: the model is refused for features extracted otherwise
        data["features"] = pipeline.build.conv.key
    if closed_form:
        logger.info("learning a regional whitening (%s) from %d verified pairs of %d images", config.head,
                    len(pairs), len(used))
        if local:
            state, scores = lw_state(maps, pairs, functools.partial(conv_lw, pipeline=pipeline))
        else:
            state, scores = regional_lw_state(maps, pairs, pipeline)
        result, history = None, []
    else:
        tuned = "" if config.from_block is None else f" and backbone blocks {config.from_block}..{LAST_BLOCK}"
        logger.info("training a %s head%s on %d images, %d verified pairs (%s loss, %d epochs)", config.head, tuned,
                    len(used), len(pairs), config.loss, config.epochs)
        result = _train(used, maps, pairs, components, config, device, os.path.join(out, "checkpoint.pt"),
                        progress, pipeline)
        state, history = result.head.state_dict(), [dataclasses.asdict(r) for r in result.history]
        scores = {"final_loss": result.history[-1].loss if result.history else None,
                  "tuples_seen": result.tuples_seen, "training_seconds": round(result.seconds, 1)}
    model = LearnedModel(config.head, backbone.key, backbone_weights_version(backbone.name), state,
                         dataclasses.asdict(config), data, history, scores,
                         tuned=None if result is None else result.tuned, from_block=config.from_block)
    model.save(out)
    if os.path.exists(os.path.join(out, "checkpoint.pt")):
        os.unlink(os.path.join(out, "checkpoint.pt"))
    shutil.rmtree(mining_dir, ignore_errors=True)
    return TrainingRun(model, mined, result, report)


def _train(paths: list[str], maps: list, pairs: np.ndarray, components: np.ndarray, config, device: str,
           checkpoint: str, progress: bool | None, pipeline: Pipeline):
    """The head trained on the cached maps of ``paths`` (``cnn.training.train_head``; ``maps``: per image its
    (C, H, W) maps of ``pipeline``'s scales, the first one used), or with ``config.from_block`` blocks of the
    backbone too, on the decoded images (``cnn.tuning.train_network``, the FC layer starting from the same
    whitening of the cached maps as the head alone). ``blcf-how``: ``maps`` are per image its (n_i, C) conv
    features, the head the ``blcf-lw`` whitening of them, trained through their sum."""
    from cnn.training import initial_whitening, train_head
    if config.head == "blcf-how":
        return train_head([rows.T[:, :, None] for rows in maps], pairs, components, config, device,
                          conv_lw(maps, pairs, pipeline), checkpoint=checkpoint, progress=progress)
    maps = [m[0] for m in maps]
    if config.from_block is None:
        return train_head(maps, pairs, components, config, device, checkpoint=checkpoint, progress=progress)
    from cnn.feature_maps import FeatureMapExtractor
    from cnn.tuning import train_network
    decode = FeatureMapExtractor(pipeline.build.backbone).image
    whitening = initial_whitening(maps, pairs, config) if config.head == "gem-fc" else None
    return train_network([decode(p) for p in paths], pairs, components, config, device, whitening, checkpoint,
                         progress, options=pipeline.build.backbone)


def conv_lw(rows: list[np.ndarray], pairs: np.ndarray, pipeline: Pipeline):
    """``blcf-lw``'s whitening (``cnn.whitening.PCAWhitening``): the regional learned whitening of BLCF's conv
    features ``rows`` (per image (n_i, C), L2-normalised) from their verified ``pairs``, to ``pipeline``'s
    whitening dimensions, its PCA step over ``LOCAL_LW_POPULATION`` positions."""
    from cnn.whitening import regional_learned_whitening
    return regional_learned_whitening(rows, pairs, dim=pipeline.build.local_whitening_dim,
                                      population=LOCAL_LW_POPULATION)


def regional_lw_state(maps: list[list[np.ndarray]], pairs: np.ndarray, pipeline) -> tuple[dict, dict]:
    """The ``rmac-lw`` model state: ``lw_state`` of the R-MAC regions, at every scale of ``pipeline``,
    of images whose verified ``pairs`` are given (all dimensions kept).

    Args:
        maps: per image, its (C, H, W) head maps, one per scale.
        pairs: (m, 2) verified pairs of image numbers.
    """
    from cnn.global_descriptors import raw_vectors
    return lw_state([raw_vectors([m.astype(np.float32) for m in scales], pipeline.build.descriptor) for scales in maps],
                    pairs)


def lw_state(rows: list[np.ndarray], pairs: np.ndarray, learn: Callable | None = None) -> tuple[dict, dict]:
    """The state of a closed-form model (``rmac-lw``: R-MAC regions; ``blcf-lw``: conv positions): the
    regional learned whitening of the images' region vectors, from their verified ``pairs``.

    Args:
        rows: per image, (r_i, C) L2-normalised region vectors.
        pairs: (m, 2) verified pairs of image numbers.
        learn: ``(rows, pairs) -> PCAWhitening`` (``blcf-lw``: ``conv_lw``); None:
            ``cnn.whitening.regional_learned_whitening`` keeping all C dimensions.

    Returns:
        (state: {'mean': (C,), 'projection': (C, dim)} float32 tensors, scores: learning facts).
    """
    import torch

    from cnn.whitening import regional_learned_whitening
    start = time.perf_counter()
    whitening = (learn or regional_learned_whitening)(rows, pairs)
    state = {"mean": torch.from_numpy(whitening.mean), "projection": torch.from_numpy(whitening.projection)}
    return state, {"regions": int(sum(len(r) for r in rows)), "training_seconds": round(time.perf_counter() - start, 1)}
