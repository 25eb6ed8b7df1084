"""Run a benchmark through an index: index the database, search every query, score."""
from __future__ import annotations

import json
import time
import warnings
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
        query_ms: per query, search time in milliseconds (features from cache excluded).
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


def index_dataset(index, dataset: Dataset, n_jobs: int = 1, verbose: bool = True) -> ExtractionReport:
    """Add the dataset's database images not yet indexed (named by their dataset names) to a
    RetrievalIndex or GlobalIndex."""
    todo = [(p, n) for p, n in zip(dataset.database_paths, dataset.database) if n not in index.images]
    return index.add_images([p for p, _ in todo], [n for _, n in todo], n_jobs=n_jobs, verbose=verbose)


def run_queries(index, dataset: Dataset, verbose: bool = True) -> EvaluationResult:
    """Search every query of ``dataset`` in ``index`` and score the rankings."""
    rankings, times = [], []
    for query in tqdm(dataset.queries, desc=f"{dataset.name} queries", disable=not verbose):
        features = index.query_features(query.path, query.bbox)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a query without features simply ranks nothing
            results = index.search(features)
        times.append((time.perf_counter() - start) * 1e3)
        rankings.append([r.name for r in results])
    return EvaluationResult(dataset.score(rankings), rankings, np.asarray(times))
