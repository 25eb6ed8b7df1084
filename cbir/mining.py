"""Mining training pairs from unlabelled images with the verified SIFT pipeline (issue 14).

Radenović et al. (CVPR 2016) train retrieval CNNs on pairs that a bag-of-words
engine with geometric verification found, with no human label. Here every image
of the training list queries all the others through ``sift-he-sv`` (Hamming
embedding, then homography re-ranking of a shortlist); a pair whose homography
has at least ``min_inliers`` inliers is a positive. The connected components of
the resulting verification graph play the role of cirtorch's "clusters" (its 3D
models): two images in different components never verified, directly or through
others, so they may serve as a negative pair; two in one component may not.

The vocabulary and Hamming embedding of the mining index are learned on the
mining images themselves unless ``train_paths`` are given: mining is
unsupervised, it uses no label, and the images it runs on are the training set
of what comes next (never the evaluated set), so that is no leak.

Resumable: with ``resume=DIR`` the built index, the extracted features and the
verified edges of the queries done so far are saved there every
``CHECKPOINT_EVERY`` queries (atomic saves); calling again with the same
``resume`` continues where it stopped.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from index.persistence import IndexFormatError, load_arrays, read_manifest, save_arrays
from index.verified_pairs import strongest_pairs

logger = logging.getLogger("cbir")

FORMAT = "cbir-mined-pairs"
VERSION = 1
PROGRESS_FORMAT = "cbir-mining-progress"
PROGRESS_VERSION = 1
#: The verified pipeline that mines: RootSIFT, 20k words, Hamming embedding, homography re-ranking.
MINING_PIPELINE = "sift-he-sv"
#: Inliers that make a positive. Measured against the labels (benchmarks/results/mining.md), pairs mined
#: on each set with a vocabulary learned on it: at T = 5/8/10/12/15/20 the pair precision is
#: 0.978/0.992/0.994/0.997/0.998/1.000 on UKBench-1000 and 0.923/0.964/0.968/0.972/0.978/0.983 on
#: Holidays-811 (whose remaining "errors" with many inliers are mostly duplicate photos filed under two
#: groups), recall 0.81/0.76/0.72/0.69/0.64/0.57 and 0.70/0.65/0.61/0.58/0.54/0.50. 10 is where
#: precision stops rising by more than a point; going to 15 drops 7-8% of the positives and leaves more
#: views of one object in different components (UKBench 17% -> 23%, Holidays 30% -> 39% of same-object
#: pairs), where hard-negative mining may pick them as negatives.
DEFAULT_MIN_INLIERS = 10
#: Candidates verified per query (the top of the Hamming-embedding ranking, the query itself excluded).
DEFAULT_SHORTLIST = 100
#: Fewer positives than this cannot train anything (a few batches of tuples).
DEFAULT_MIN_PAIRS = 10
#: Queries between two checkpoints of a resumable mining.
CHECKPOINT_EVERY = 50


class MiningError(ValueError):
    """Mining cannot give usable training pairs; the message says what was found and what would help."""


@dataclass
class MinedPairs:
    """Verified positive pairs of an unlabelled image list and the components they form.

    Negatives: images ``i`` and ``j`` may form a negative pair exactly when they lie in
    different components (``negative_allowed(i, j)``): verification never linked them,
    not even through other images. Hard negatives are re-mined from descriptors by the
    training loop under that rule.

    Attributes:
        images: usable image paths; image ``i`` is ``images[i]``.
        pairs: (m, 2) int32 image indices, ``i < j``, each pair once (verified positives).
        inliers: (m,) int32 homography inliers of the pair (the larger of its two directions).
        scale: (m,) float32 linear scale change from ``images[i]`` to ``images[j]``:
            ``sqrt(|det A|)`` of the affine part ``A = H[:2, :2] / H[2, 2]`` of the homography
            ``H`` mapping pixels of ``i`` to pixels of ``j`` (pixels of the images as extracted,
            at most 1024 px on the long side). 2.0: the shared content looks twice as large in
            ``j``. When the verification came from ``j``'s query it is the inverse of that one.
        components: (n,) int32 connected-component id per image of the graph of ``pairs``;
            ids are 0..c-1, singletons get their own ids.
        settings: how it was mined (pipeline, min_inliers, shortlist, vocabulary, timings), JSON.
        skipped: path -> reason for every input image that could not be used (corrupt, unreadable).
    """

    images: list[str]
    pairs: np.ndarray
    inliers: np.ndarray
    scale: np.ndarray
    components: np.ndarray
    settings: dict = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.pairs = np.asarray(self.pairs, np.int32).reshape(-1, 2)
        self.inliers = np.asarray(self.inliers, np.int32)
        self.scale = np.asarray(self.scale, np.float32)
        self.components = np.asarray(self.components, np.int32)
        n, m = len(self.images), len(self.pairs)
        if len(self.inliers) != m or len(self.scale) != m or len(self.components) != n:
            raise ValueError(f"mined pairs disagree: {m} pairs, {len(self.inliers)} inlier counts, "
                             f"{len(self.scale)} scales, {n} images, {len(self.components)} component ids")
        if m and (self.pairs.min() < 0 or self.pairs.max() >= n or np.any(self.pairs[:, 0] >= self.pairs[:, 1])):
            raise ValueError("mined pairs must be image indices i < j within the image list")

    @property
    def n_components(self) -> int:
        """Components, singletons included."""
        return int(self.components.max()) + 1 if len(self.components) else 0

    def component_sizes(self) -> np.ndarray:
        """(n_components,) int64 images per component."""
        return np.bincount(self.components, minlength=self.n_components)

    def negative_allowed(self, i: int, j: int) -> bool:
        """True when images ``i`` and ``j`` lie in different components (may be a negative pair)."""
        return bool(self.components[i] != self.components[j])

    def partners(self, i: int) -> np.ndarray:
        """Image indices verified with image ``i`` (int32, ascending)."""
        rows = (self.pairs[:, 0] == i) | (self.pairs[:, 1] == i)
        return np.sort(np.where(self.pairs[rows, 0] == i, self.pairs[rows, 1], self.pairs[rows, 0]))

    def at_threshold(self, min_inliers: int) -> "MinedPairs":
        """The pairs with at least ``min_inliers`` inliers, components recomputed (a stricter
        threshold than the one mined with; a looser one cannot bring back dropped pairs)."""
        mined_at = self.settings.get("min_inliers", 0)
        if min_inliers < mined_at:
            raise ValueError(f"these pairs were mined with min_inliers={mined_at}; mine again for {min_inliers}")
        keep = self.inliers >= min_inliers
        return MinedPairs(list(self.images), self.pairs[keep], self.inliers[keep], self.scale[keep],
                          components_of(len(self.images), self.pairs[keep]),
                          {**self.settings, "min_inliers": int(min_inliers)}, dict(self.skipped))

    def summary(self) -> str:
        """One line: images, pairs, components, the largest component."""
        sizes = self.component_sizes()
        linked = int((sizes > 1).sum())
        return (f"{len(self.images)} images, {len(self.pairs)} verified pairs (>= {self.settings.get('min_inliers')} "
                f"inliers), {linked} components of 2+ images (largest {int(sizes.max()) if len(sizes) else 0}), "
                f"{int((sizes == 1).sum())} unmatched images, {len(self.skipped)} skipped")

    def save(self, path: str) -> None:
        """Atomically save as a directory: ``manifest.json`` (images, settings, skipped: readable JSON)
        and one ``.npy`` per array; no pickle."""
        save_arrays(path, FORMAT, VERSION,
                    {"images": list(self.images), "settings": self.settings, "skipped": dict(self.skipped)},
                    {"pairs": self.pairs, "inliers": self.inliers, "scale": self.scale,
                     "components": self.components})

    @classmethod
    def load(cls, path: str) -> "MinedPairs":
        """Load a save of :meth:`save`.

        Raises:
            IndexFormatError: missing, corrupt, another format or version, or inconsistent
                arrays; the message names the file.
        """
        meta, arrays = load_arrays(path, FORMAT, VERSION)
        try:
            return cls(list(meta["images"]), arrays["pairs"], arrays["inliers"], arrays["scale"],
                       arrays["components"], dict(meta["settings"]), dict(meta["skipped"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{os.path.join(path, 'manifest.json')}: not a consistent set of mined "
                                   f"pairs ({exc})") from None


def components_of(n: int, pairs: np.ndarray) -> np.ndarray:
    """(n,) int32 connected-component id of every node of the undirected graph with edges ``pairs``
    ((m, 2) int); isolated nodes get their own ids."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int32)


def homography_scale(homography: np.ndarray) -> float:
    """Linear scale change of a (3, 3) homography: ``sqrt(|det(H[:2, :2] / H[2, 2])|)``
    (its affine part's area change, square-rooted). NaN for a degenerate one."""
    h = np.asarray(homography, np.float64)
    if not np.isfinite(h).all() or abs(h[2, 2]) < 1e-12:
        return float("nan")
    return float(np.sqrt(abs(np.linalg.det(h[:2, :2] / h[2, 2]))))


def symmetric_pairs(queries: np.ndarray, matches: np.ndarray, inliers: np.ndarray,
                    scales: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Join directed verifications into undirected pairs.

    Args:
        queries, matches: (e,) int image indices of each verification (query -> match).
        inliers: (e,) int inliers of each.
        scales: (e,) float scale change from the query to the match.

    Returns:
        pairs (m, 2) int32 with i < j sorted by (i, j); inliers (m,) int32, the larger of the
        pair's directions; scale (m,) float32 from i to j of that direction.
    """
    pairs, strongest, source = strongest_pairs(queries, matches, inliers)
    forward = np.asarray(queries, np.int64)[source] < np.asarray(matches, np.int64)[source]
    scales = np.asarray(scales, np.float64)[source]
    with np.errstate(divide="ignore"):
        scales = np.where(forward, scales, 1.0 / scales)
    return pairs.astype(np.int32).reshape(-1, 2), strongest, scales.astype(np.float32)


def _fingerprint(images: Sequence[str], settings: dict) -> str:
    """What a checkpoint must match to be resumed: the image list and the mining settings."""
    body = json.dumps({"images": list(images), "settings": settings}, sort_keys=True)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]


class _Progress:
    """The resumable state: which queries are done and the verified edges they found."""

    def __init__(self, n: int, fingerprint: str):
        self.fingerprint = fingerprint
        self.done = np.zeros(n, bool)
        self.edges: list[np.ndarray] = []  # (e, 4) float64 rows: query, match, inliers, scale
        self.seconds = 0.0

    def edge_array(self) -> np.ndarray:
        return np.concatenate(self.edges) if self.edges else np.zeros((0, 4))

    def save(self, directory: str, images: list[str], skipped: dict) -> None:
        edges = self.edge_array()
        save_arrays(directory, PROGRESS_FORMAT, PROGRESS_VERSION,
                    {"fingerprint": self.fingerprint, "images": images, "skipped": skipped,
                     "seconds": self.seconds},
                    {"done": self.done, "query": edges[:, 0].astype(np.int32), "match": edges[:, 1].astype(np.int32),
                     "inliers": edges[:, 2].astype(np.int32), "scale": edges[:, 3].astype(np.float64)})

    @classmethod
    def load(cls, directory: str, fingerprint: str, images: list[str]) -> "_Progress":
        meta, arrays = load_arrays(directory, PROGRESS_FORMAT, PROGRESS_VERSION)
        if meta.get("fingerprint") != fingerprint or meta.get("images") != images:
            raise MiningError(f"{directory}: a mining of other images or settings was started here; "
                              f"remove it or give another resume folder")
        progress = cls(len(images), fingerprint)
        progress.done = np.array(arrays["done"], bool)
        progress.edges = [np.stack([arrays["query"], arrays["match"], arrays["inliers"], arrays["scale"]], axis=1)
                          .astype(np.float64)]
        progress.seconds = float(meta.get("seconds", 0.0))
        return progress


def _too_few(pairs_found: int, min_inliers: int, n_images: int, min_pairs: int, looser: dict[int, int]) -> str:
    hints = ", ".join(f"{count} at {t} inliers" for t, count in sorted(looser.items(), reverse=True) if t < min_inliers)
    return (f"mining found {pairs_found} verified pairs (>= {min_inliers} inliers) among {n_images} images; "
            f"training needs at least {min_pairs}. Add photos that show the same objects or places from "
            f"several viewpoints (each at least twice), or a larger folder"
            + (f"; a lower min_inliers would find {hints} (less precise)" if hints else ""))


def mine_pairs(images: Sequence[str], min_inliers: int = DEFAULT_MIN_INLIERS, shortlist: int = DEFAULT_SHORTLIST,
               cache_dir: str | None = None, n_jobs: int = -1, resume: str | None = None,
               progress: bool | None = True, train_paths: Sequence[str] | None = None,
               vocabulary_config=None, min_pairs: int = DEFAULT_MIN_PAIRS) -> MinedPairs:
    """Verify every image against the others with ``sift-he-sv`` and keep the pairs that hold.

    Args:
        images: image paths (unlabelled); unusable ones are skipped and listed in ``skipped``.
        min_inliers: homography inliers that make a positive (default measured, see
            ``DEFAULT_MIN_INLIERS``).
        shortlist: candidates verified per query, from the top of its Hamming-embedding ranking
            (the query itself excluded).
        cache_dir: feature cache (default: ``resume``'s ``features`` folder, or a temporary one).
        n_jobs: extraction workers and verification threads (-1: all cores).
        resume: a folder that holds the mining's state (index, features, queries done); an
            interrupted call continues there. None: not resumable.
        progress: progress bars.
        train_paths: images to learn the vocabulary and Hamming embedding on (default: ``images``).
        vocabulary_config: vocabulary shape (default: the pipeline's, 141^2 words).
        min_pairs: fewer positives than this raise :class:`MiningError`.

    Returns:
        the verified pairs; ``settings`` record the parameters, mining seconds and per-image time.

    Raises:
        MiningError: fewer than 2 usable images, fewer than ``min_pairs`` positives (the message
            says how many were found and what would help), or a ``resume`` folder of another mining.
    """
    # Imported here: mining is a client of the engine, the engine does not need it.
    from cbir.build import build_index
    from cbir.pipelines import get_pipeline
    from cbir.searchable import load_index

    images = [str(p) for p in images]
    if len(set(images)) != len(images):
        raise MiningError("the image list names some images twice")
    if min_inliers < 1 or shortlist < 1:
        raise ValueError("min_inliers and shortlist must be at least 1")
    n_jobs = (os.cpu_count() or 1) if n_jobs in (None, -1) else max(1, int(n_jobs))
    pipeline = get_pipeline(MINING_PIPELINE)
    verification = dataclasses.replace(pipeline.search.verification, top_k=shortlist + 1,
                                       min_inliers=min(min_inliers, pipeline.search.verification.min_inliers))
    options = dataclasses.replace(pipeline.search, verification=verification)
    settings = {"pipeline": MINING_PIPELINE, "shortlist": int(shortlist),
                "verified_min_inliers": int(verification.min_inliers),
                "vocabulary": dataclasses.asdict(vocabulary_config or pipeline.build.vocabulary),
                "trained_on": "given train_paths" if train_paths else "the mined images (unsupervised)",
                "train_images": len(train_paths) if train_paths else None}
    fingerprint = _fingerprint(images, {**settings, "train_paths": list(map(str, train_paths or []))})

    temporary = None
    if cache_dir is None:
        if resume is not None:
            cache_dir = os.path.join(resume, "features")
        else:
            temporary = tempfile.TemporaryDirectory(prefix="cbir-mining-")
            cache_dir = temporary.name
    try:
        index, state, build_seconds = _mining_index(images, train_paths, vocabulary_config, cache_dir, n_jobs,
                                                    resume, progress, fingerprint, build_index, load_index)
        usable = [p for p in images if p in index]
        skipped = state.skipped
        if len(usable) < 2:
            raise MiningError(f"mining needs at least 2 usable images; {len(usable)} of {len(images)} could be read"
                              + "".join(f"; skipped {p}: {r}" for p, r in list(skipped.items())[:3]))
        slot_of = {path: i for i, path in enumerate(usable)}
        work = state.progress if state.progress is not None else _Progress(len(usable), fingerprint)
        todo = np.flatnonzero(~work.done)
        started, since_save = time.perf_counter(), 0
        bar = _progress_bar(len(usable), len(usable) - len(todo), progress)
        for i in todo:
            edges = []
            for hit in index.search(usable[i], top_k=shortlist + 1, options=options, n_jobs=n_jobs):
                if hit.inliers is not None and hit.name != usable[i]:
                    edges.append((i, slot_of[hit.name], hit.inliers, homography_scale(hit.homography)))
            if edges:
                work.edges.append(np.asarray(edges, np.float64))
            work.done[i] = True
            since_save += 1
            if bar is not None:
                bar.update(1)
            if resume is not None and since_save >= CHECKPOINT_EVERY:
                work.seconds += time.perf_counter() - started
                started, since_save = time.perf_counter(), 0
                work.save(os.path.join(resume, "progress"), usable, skipped)
        if bar is not None:
            bar.close()
        work.seconds += time.perf_counter() - started
        if resume is not None and since_save:
            work.save(os.path.join(resume, "progress"), usable, skipped)
    finally:
        if temporary is not None:
            temporary.cleanup()

    edges = work.edge_array()
    pairs, inliers, scale = symmetric_pairs(edges[:, 0], edges[:, 1], edges[:, 2], edges[:, 3])
    keep = inliers >= min_inliers
    settings.update(min_inliers=int(min_inliers), build_seconds=round(build_seconds, 2),
                    query_seconds=round(work.seconds, 2),
                    query_ms_per_image=round(1000 * work.seconds / max(1, len(usable)), 1))
    mined = MinedPairs(usable, pairs[keep], inliers[keep], scale[keep], components_of(len(usable), pairs[keep]),
                       settings, skipped)
    if len(mined.pairs) < min_pairs:
        looser = {t: int((inliers >= t).sum()) for t in (5, 8, 10, 12) if t >= verification.min_inliers}
        raise MiningError(_too_few(len(mined.pairs), min_inliers, len(usable), min_pairs, looser))
    logger.info("mined %s", mined.summary())
    return mined


@dataclass
class _State:
    skipped: dict
    progress: _Progress | None


def _mining_index(images, train_paths, vocabulary_config, cache_dir, n_jobs, resume, progress, fingerprint,
                  build_index, load_index):
    """The ``sift-he`` index of ``images`` (loaded from ``resume`` when it holds one of this mining),
    the resumable state, and the seconds spent building it."""
    started = time.perf_counter()
    index_dir, progress_dir = (os.path.join(resume, "index"), os.path.join(resume, "progress")) if resume else (None,) * 2
    if resume is not None and os.path.isfile(os.path.join(progress_dir, "manifest.json")):
        meta = read_manifest(progress_dir)["meta"]
        if meta.get("fingerprint") != fingerprint:
            raise MiningError(f"{progress_dir}: a mining of other images or settings was started here; "
                              f"remove it or give another resume folder")
        work = _Progress.load(progress_dir, fingerprint, meta["images"])
        index = load_index(index_dir, cache_dir=cache_dir)
        logger.info("resuming the mining in %s: %d of %d queries done", resume, int(work.done.sum()), len(work.done))
        return index, _State(dict(meta["skipped"]), work), 0.0
    index = build_index(MINING_PIPELINE, train_paths=list(train_paths or images), vocabulary_config=vocabulary_config,
                        cache_dir=cache_dir, n_jobs=n_jobs, progress=progress)
    report = index.add_images(images, names=images, n_jobs=n_jobs, progress=progress)
    skipped = {str(path): reason for path, reason in report.skipped}
    usable = [p for p in images if p in index]
    state = _State(skipped, None)
    if resume is not None:
        index.save(index_dir)
        state.progress = _Progress(len(usable), fingerprint)
        state.progress.save(progress_dir, usable, skipped)
    return index, state, time.perf_counter() - started


def _progress_bar(total: int, done: int, progress: bool | None):
    if progress is False:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=done, desc="mining", unit="query",
                disable=None if progress is None else False)
