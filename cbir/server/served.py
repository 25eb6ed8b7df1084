"""The indexes a server holds: loaded once (memory-mapped), their pipelines, their
benchmark ground truth, and their images as cached JPEGs.

Images are fetched by index and *name* only: a name the index does not hold is
refused, so no request reaches a file outside the served collections.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import dataclass, field

import cv2
import numpy as np

from bovw.images import ImageOptions, load_image
from cbir.evaluate import run_queries
from cbir.pipelines import PIPELINES
from cbir.searchable import SearchableIndex, load_index
from index.datasets import Dataset, Query, load_dataset

logger = logging.getLogger("cbir")

#: Longest side, in pixels, of the image sizes served (thumbnails to match views).
IMAGE_SIDES = (128, 256, 512, 1024)
#: JPEGs kept in memory (a 256-px thumbnail weighs ~15 kB: ~60 MB at most).
CACHED_IMAGES = 4096


@dataclass
class ServedIndex:
    """One saved index as served.

    Attributes:
        id: its name in URLs (the folder name, made unique).
        directory: where it was loaded from.
        index: the loaded index.
        pipelines: names of the pipelines whose search options apply to it (its own first).
        benchmark: ground truth over its images when a served benchmark covers them, else None.
    """

    id: str
    directory: str
    index: SearchableIndex
    pipelines: list[str]
    benchmark: Dataset | None = None
    _evaluations: dict = field(default_factory=dict)
    _evaluation_lock: threading.Lock = field(default_factory=threading.Lock)

    def describe(self) -> dict:
        """JSON facts for the page: pipeline, kind, image count, pipelines, benchmark."""
        return {"id": self.id, "pipeline": self.index.pipeline.name,
                "kind": self.index.KIND, "images": len(self.index), "pipelines": self.pipelines,
                "benchmark": None if self.benchmark is None else {
                    "name": self.benchmark.name, "metric": self.benchmark.metric,
                    "queries": len(self.benchmark.queries)}}

    def path_of(self, name: str) -> str:
        """The file of an indexed image: under the index's root, else under its benchmark's folder
        for a relative name (never relative to the server's working folder).

        Raises:
            KeyError: the index holds no such name, or does not record where its images are.
        """
        if name not in self.index:
            raise KeyError(f"{self.id} holds no image named {name!r}")
        if os.path.isabs(name) or self.index.root is not None:
            return self.index.path_of(name)
        if self.benchmark is not None:
            return os.path.join(self.benchmark.root, name)
        raise KeyError(f"{self.id} does not record the folder of its images; serve it with --benchmark "
                       f"DATASET:ROOT, or rebuild it with cbir index --root")

    def options(self, pipeline: str) -> str | None:
        """What a search by ``pipeline`` passes as options: None (the saved settings) for the
        index's own pipeline, which may be built otherwise than today's pipeline of that name."""
        if pipeline not in self.pipelines:
            raise KeyError(f"pipeline {pipeline!r} cannot search {self.id} (built as {self.index.pipeline.name}; "
                           f"it serves {', '.join(self.pipelines)})")
        return None if pipeline == self.index.pipeline.name else pipeline

    def benchmark_query(self, name: str) -> Query | None:
        """The benchmark query called ``name`` (its file and box), or None."""
        if self.benchmark is None:
            return None
        return next((q for q in self.benchmark.queries if q.name == name), None)

    def evaluation(self, pipeline: str) -> dict:
        """Every benchmark query searched with ``pipeline``: its score (AP or N-S count) and the
        rank of its first positive; computed once per pipeline."""
        if self.benchmark is None:
            raise KeyError(f"{self.id} was not built from a served benchmark (start cbir serve with "
                           f"--benchmark DATASET:ROOT)")
        with self._evaluation_lock:
            if pipeline not in self._evaluations:
                result = run_queries(self.index, self.benchmark, self.options(pipeline), progress=False)
                scores = self.benchmark.per_query(result.rankings)
                self._evaluations[pipeline] = {
                    "index": self.id, "pipeline": pipeline, "dataset": self.benchmark.name,
                    "metric": self.benchmark.metric,
                    "mean": result.scores.get(self.benchmark.metric, result.scores.get("M")),
                    "queries": [{"name": q.name, "box": list(q.bbox) if q.bbox else None,
                                 "score": None if np.isnan(s) else round(float(s), 4),
                                 "top": ranking[:4]}
                                for q, s, ranking in zip(self.benchmark.queries, scores, result.rankings)]}
            return self._evaluations[pipeline]


def served_pipelines(index: SearchableIndex) -> list[str]:
    """Names of the pipelines a search of ``index`` can use, the index's own first."""
    names = [index.pipeline.name]
    for name in PIPELINES:
        try:
            index.search_options(name)
        except ValueError:
            continue
        if name not in names:
            names.append(name)
    return names


def parse_benchmark(spec: str) -> Dataset:
    """``DATASET:ROOT`` (holidays, ukbench or revisitop) -> the dataset (ValueError when malformed)."""
    kind, sep, root = spec.partition(":")
    if not sep or not root:
        raise ValueError(f"--benchmark {spec!r}: expected DATASET:ROOT, e.g. holidays:data/holidays")
    return load_dataset(kind, root)


def load_served(directories: list[str], benchmarks: list[Dataset], cache_dir: str | None = None,
                verify: bool = False) -> dict[str, ServedIndex]:
    """Load each index once (memory-mapped unless ``verify``) and pair it with the benchmark that
    covers most of its images (at least half of them).

    Raises:
        index.persistence.IndexFormatError: naming the index that cannot be loaded.
        ValueError: an index's saved search options turn the query (the page shows one orientation).
    """
    served: dict[str, ServedIndex] = {}
    used: set[str] = set()
    for directory in directories:
        index = load_index(directory, cache_dir=cache_dir, verify=verify, mmap=not verify)
        if index.pipeline.search.query_rotations != (0,):
            raise ValueError(f"{directory}: its saved search options turn the query "
                             f"{index.pipeline.search.query_rotations}; the page shows one orientation of a query: "
                             f"save the index without query_rotations")
        base = os.path.basename(os.path.normpath(directory)) or "index"
        key, n = base, 2
        while key in served:
            key, n = f"{base}-{n}", n + 1
        best = max(benchmarks, key=lambda d: sum(name in index for name in d.database), default=None)
        covered = best is not None and sum(name in index for name in best.database) * 2 >= max(len(index), 1)
        benchmark = best.restricted_to([n for n in best.database if n in index]) if covered else None
        served[key] = ServedIndex(key, directory, index, served_pipelines(index),
                                  benchmark if benchmark is not None and benchmark.queries else None)
        if served[key].benchmark is not None:
            used.add(best.root)
        elif index.root is None and any(not os.path.isabs(n) for n in index.names):
            logger.warning("%s does not record the folder of its images: they cannot be shown or searched by "
                           "name (serve it with --benchmark, or rebuild it with cbir index --root)", directory)
    for dataset in benchmarks:
        if dataset.root not in used:
            logger.warning("--benchmark %s:%s covers none of the served indexes (none holds half of its images "
                           "under their names); no evaluation view for it", dataset.name, dataset.root)
    return served


def image_side(requested: int) -> int:
    """The served size nearest above ``requested`` pixels (a fixed few, so the cache stays small)."""
    return next((side for side in IMAGE_SIDES if side >= requested), IMAGE_SIDES[-1])


def jpeg_of(path: str, side: int) -> bytes:
    """JPEG bytes of an image file down-scaled to ``side`` pixels, cached by file, size and
    modification time (ImageReadError when the file cannot be used)."""
    return _cached_jpeg(path, side, os.stat(path).st_mtime_ns)


@functools.lru_cache(maxsize=CACHED_IMAGES)
def _cached_jpeg(path: str, side: int, mtime_ns: int) -> bytes:
    return encode_jpeg(load_image(path, ImageOptions(max_side=side), color=True))


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    """(h, w, 3) uint8 RGB -> JPEG bytes."""
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()
