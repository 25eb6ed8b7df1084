"""Run a benchmark through an index: index the database, search every query, score."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from bovw.extraction import ExtractionReport
from index.datasets import Dataset


@dataclass
class EvaluationResult:
    """Scores and timings of one benchmark run.

    Attributes:
        scores: metric name -> value (mAP, N-S, or revisitop E/M/H).
        rankings: per query, database names best first.
        query_ms: per query, search time in milliseconds from its extracted features
            (decoding and extraction excluded; quantization and ranking included).
        report: what happened to the database images.
    """

    scores: dict
    rankings: list
    query_ms: np.ndarray
    report: ExtractionReport = field(default_factory=ExtractionReport)

    def write_rankings(self, dataset: Dataset, path: str) -> None:
        """One JSON object per line: ``{"query": name, "ranking": [db names...]}``."""
        with open(path, "w", encoding="utf-8") as handle:
            for query, ranking in zip(dataset.queries, self.rankings):
                handle.write(json.dumps({"query": query.name, "ranking": ranking}) + "\n")


def index_dataset(index, dataset: Dataset, n_jobs: int = 1, progress: bool | None = None) -> ExtractionReport:
    """Add the dataset's database images not yet indexed (named by their dataset names) to a
    searchable index; an index without a root gets the dataset's folder as its root, so that
    its names lead to the files (``cbir query``, ``cbir serve``)."""
    if index.root is None and len(index) == 0:
        index.root = os.path.realpath(dataset.root)
    todo = [(p, n) for p, n in zip(dataset.database_paths, dataset.database) if n not in index]
    return index.add_images([p for p, _ in todo], [n for _, n in todo], n_jobs=n_jobs, progress=progress)


def run_queries(index, dataset: Dataset, options=None, progress: bool | None = None) -> EvaluationResult:
    """Search every query of ``dataset`` in ``index`` and score the rankings.

    Args:
        index: a searchable index holding the dataset's database.
        dataset: queries (with optional boxes) and ground truth.
        options: search options or a pipeline name built like the index (default: the index's).
        progress: progress bar (None: only on a terminal).
    """
    options = index.search_options(options)
    rankings, times = [], []
    for query in tqdm(dataset.queries, desc=f"{dataset.name} queries", disable=None if progress is None else not progress):
        features = index.query_views(query.path, query.bbox, options.query_rotations)
        start = time.perf_counter()
        results = index.search(features, options=options)
        times.append((time.perf_counter() - start) * 1e3)
        rankings.append([r.name for r in results])
    return EvaluationResult(dataset.score(rankings), rankings, np.asarray(times))
