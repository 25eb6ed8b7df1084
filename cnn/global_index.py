"""Searchable index of CNN global descriptors (dense, inner product), saved as one directory."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bovw.extraction import ExtractionReport, iter_features
from bovw.images import ImageOptions, ImageReadError, load_image, resize_to_max_side
from cnn.feature_maps import FeatureMapExtractor
from cnn.global_descriptors import embed, raw_vectors
from cnn.pipelines import GLOBAL_PIPELINES, GlobalPipeline
from cnn.whitening import PCAWhitening
from index.dense_index import DenseIndex
from index.image_store import ImageStore, name_map
from index.kernels import top_indices
from index.persistence import IndexFormatError, load_arrays, save_arrays
from index.results import SearchResult
from index.rw_lock import ReadWriteLock

INDEX_FORMAT = "cbir-global-index"
INDEX_VERSION = 1


@dataclass
class GlobalQuery:
    """A query's descriptor (k,) and its whitened rows (R-MAC regions), (r, k)."""

    descriptor: np.ndarray
    rows: np.ndarray


def learn_whitening(paths: Sequence[str], pipeline: GlobalPipeline | str, cache_dir: str | None = None,
                    verbose: bool = True) -> tuple[PCAWhitening, ExtractionReport]:
    """Learn the pipeline's PCA whitening on images (use a dataset other than the evaluated one)."""
    pipeline = GLOBAL_PIPELINES[pipeline] if isinstance(pipeline, str) else pipeline
    extractor = FeatureMapExtractor(pipeline.backbone, cache_dir)
    report = ExtractionReport()
    rows = [raw_vectors(maps["global"], pipeline.descriptor)
            for _, maps in iter_features(list(map(str, paths)), extractor, None, report, verbose=verbose)]
    if not rows:
        raise ValueError("no image could be read to learn the whitening")
    return PCAWhitening.learn(np.concatenate(rows), pipeline.descriptor.whitening_dim), report


class GlobalIndex:
    """Images searchable by a CNN global descriptor.

    Args:
        pipeline: a GlobalPipeline or its name.
        whitening: learned PCA whitening (None: L2 only).
        cache_dir: feature-map cache folder.
    """

    def __init__(self, pipeline: GlobalPipeline | str, whitening: PCAWhitening | None,
                 cache_dir: str | None = None):
        self.pipeline = GLOBAL_PIPELINES[pipeline] if isinstance(pipeline, str) else pipeline
        self.whitening = whitening
        self.cache_dir = cache_dir
        self.extractor = FeatureMapExtractor(self.pipeline.backbone, cache_dir)
        dim = whitening.output_dim if whitening is not None else None
        self.dense = DenseIndex(dim) if dim else None
        self.images = ImageStore()
        self._lock = ReadWriteLock()

    def __len__(self) -> int:
        return len(self.images)

    @property
    def names(self) -> list[str]:
        return self.images.names

    def describe(self, maps: dict) -> GlobalQuery:
        """Descriptor of an image from its feature maps."""
        descriptor, rows = embed(raw_vectors(maps["global"], self.pipeline.descriptor), self.whitening,
                                 self.pipeline.descriptor)
        return GlobalQuery(descriptor, rows)

    def add_images(self, paths: Sequence[str], names: Sequence[str] | None = None, n_jobs: int = 1,
                   verbose: bool = True) -> ExtractionReport:
        """Describe and index image files; unusable files are skipped and reported."""
        name_of = name_map(paths, names)
        report = ExtractionReport()
        new_names, descriptors, regions = [], [], []
        extracted = iter_features([str(p) for p in paths], self.extractor, None, report, n_jobs=n_jobs,
                                  verbose=verbose)
        for name, maps in self.images.new_images(extracted, name_of, report):
            query = self.describe(maps)
            if self.dense is None:
                self.dense = DenseIndex(len(query.descriptor))
            new_names.append(name)
            descriptors.append(query.descriptor)
            regions.append(query.rows if self.pipeline.region_rerank else query.rows[:0])
        if new_names:
            empty = np.zeros((0, 4), np.float32)
            with self._lock.writing():
                self.images.add(new_names, [(0, 0)] * len(new_names), [empty] * len(new_names),
                                [np.zeros(0, np.int32)] * len(new_names))
                self.dense.add(np.stack(descriptors), regions)
        return report

    def remove(self, names: Sequence[str]) -> None:
        """Remove images by name (KeyError naming the first unknown one)."""
        slots = self.images.slots(names)
        with self._lock.writing():
            self.dense.remove(slots)
            self.images.remove(slots)

    def extract(self, path: str) -> dict:
        """Feature maps of an image file (cached)."""
        return self.extractor(path)

    def query_features(self, query, bbox: tuple | None = None) -> GlobalQuery:
        """Descriptor of a query image path or RGB array, optionally cropped to ``bbox``
        (x0, y0, x1, y1) in pixels of the image as given."""
        if isinstance(query, GlobalQuery):
            return query
        if bbox is None and not isinstance(query, np.ndarray):
            return self.describe(self.extract(os.fspath(query)))
        image = query if isinstance(query, np.ndarray) else \
            load_image(os.fspath(query), ImageOptions(max_side=0), color=True)
        if bbox is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in bbox)
            image = image[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)]
        image = resize_to_max_side(image, self.pipeline.backbone.max_side)
        if min(image.shape[:2]) < 32:
            raise ImageReadError(str(query) if not isinstance(query, np.ndarray) else "<array>",
                                 "query region smaller than 32 pixels")
        return self.describe(self.extractor.backbone.feature_maps(image))

    def search(self, query, top_k: int | None = None, bbox: tuple | None = None, n_jobs: int = 1) -> list[SearchResult]:
        """Rank the collection by inner product with the query descriptor
        (then by best region match for ``rmac-rr``)."""
        if len(self) == 0:
            warnings.warn("the index is empty; returning no results", stacklevel=2)
            return []
        query = self.query_features(query, bbox)
        with self._lock.reading():
            return self._rank(query, top_k)

    def _rank(self, query: GlobalQuery, wanted: int | None) -> list[SearchResult]:
        scores = self.dense.scores(query.descriptor)
        order = top_indices(scores, None if wanted is None else max(wanted, self.pipeline.region_rerank))
        if self.pipeline.region_rerank:
            head = order[:self.pipeline.region_rerank]
            region = self.dense.region_scores(query.descriptor, head)
            rerank = np.lexsort((np.arange(len(head)), -region))
            scores = scores.copy()
            scores[head] = region
            order = np.r_[head[rerank], order[self.pipeline.region_rerank:]]
        return [SearchResult(self.images.names[i], float(scores[i]), int(i)) for i in order[:wanted]]

    def save(self, directory: str) -> None:
        """Atomically save the index (pipeline, whitening, descriptors, names)."""
        arrays, meta = {}, {"pipeline": self.pipeline.to_dict()}
        for prefix, part in (("whitening", self.whitening), ("dense", self.dense), ("images", self.images)):
            if part is None:
                meta[prefix] = None
                continue
            part_meta, part_arrays = part.state_dict()
            meta[prefix] = part_meta
            arrays.update({f"{prefix}.{k}": v for k, v in part_arrays.items()})
        save_arrays(directory, INDEX_FORMAT, INDEX_VERSION, meta, arrays)

    @classmethod
    def load(cls, directory: str, cache_dir: str | None = None, verify: bool = True) -> "GlobalIndex":
        """Load an index saved by ``save`` (IndexFormatError naming the problem if unusable)."""
        meta, arrays = load_arrays(directory, INDEX_FORMAT, INDEX_VERSION, verify=verify)

        def part(prefix):
            return {k[len(prefix) + 1:]: v for k, v in arrays.items() if k.startswith(prefix + ".")}
        try:
            pipeline = GlobalPipeline.from_dict(meta["pipeline"])
            whitening = PCAWhitening.from_state_dict(meta["whitening"], part("whitening")) \
                if meta.get("whitening") else None
            index = cls(pipeline, whitening, cache_dir)
            index.images = ImageStore.from_state_dict(meta["images"], part("images"))
            index.dense = DenseIndex.from_state_dict(meta["dense"], part("dense")) if meta.get("dense") else None
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexFormatError(f"{directory}: invalid index ({exc.__class__.__name__}: {exc})") from exc
        if index.dense is not None and len(index.dense) != len(index.images):
            raise IndexFormatError(f"{directory}: descriptors and image names disagree")
        return index
