"""Two methods on one benchmark, as a report a person reads (``cbir compare``).

The report is a folder: ``README.md`` (summary table: score, queries won, query
time, index bytes per image; then the queries where each method wins most),
``scatter.png`` (per-query score of one method against the other) and one picture
strip per listed query (the query, then each method's top results, relevant ones
framed green, junk grey, others red).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from bovw.images import ImageOptions, ImageReadError, load_image
from cbir.evaluate import EvaluationResult, run_queries
from cbir.visualize import fit_height, stack_rows
from index.datasets import Dataset

#: Saved arrays that hold the collection (the rest are learned parts: vocabulary, embeddings, whitening).
COLLECTION_PARTS = ("names.", "inverted_file.", "images.", "dense.")
GREEN, RED, GREY = (46, 125, 50), (198, 40, 40), (150, 150, 150)


@dataclass
class MethodRun:
    """One method's run over a benchmark.

    Attributes:
        label: how the report names it (``INDEX:PIPELINE``).
        result: rankings, scores and query times.
        per_query: (n_queries,) each query's AP or N-S count.
        bytes_per_image: bytes of the index's collection arrays per image (learned parts excluded).
    """

    label: str
    result: EvaluationResult
    per_query: np.ndarray
    bytes_per_image: float


def run_method(label: str, index, dataset: Dataset, options=None, progress: bool | None = None) -> MethodRun:
    """Search every query of ``dataset`` in ``index`` (with ``options``: a pipeline name or None)."""
    result = run_queries(index, dataset, options, progress=progress)
    per_image = index.info()["bytes_per_image"]
    return MethodRun(label, result, np.asarray(dataset.per_query(result.rankings), np.float64),
                     sum(v for k, v in per_image.items() if _unsharded(k).startswith(COLLECTION_PARTS)))


def _unsharded(key: str) -> str:
    """A saved array's key without the shard prefix of a sharded index (``shard0001.images.words``)."""
    return key.split(".", 1)[1] if key.startswith("shard") else key


def write_report(directory: str, dataset: Dataset, a: MethodRun, b: MethodRun, image_path: Callable[[str], str],
                 listed: int = 5, top: int = 5) -> str:
    """Write the comparison report of ``a`` and ``b`` into ``directory``.

    Args:
        directory: output folder (created).
        dataset: the benchmark both ran on.
        a, b: the two runs.
        image_path: database or query name -> its image file.
        listed: queries listed where each method wins most.
        top: results per method in each strip.

    Returns:
        the path of ``README.md``.
    """
    os.makedirs(directory, exist_ok=True)
    metric = dataset.metric if dataset.metric in a.result.scores else "M"
    unit = "N-S count (0-4)" if dataset.metric == "N-S" else "AP"
    scatter(os.path.join(directory, "scatter.png"), a, b, unit)
    lines = [f"# {a.label} against {b.label} on {dataset.name} ({len(dataset.queries)} queries)", "",
             f"| method | {metric} | queries won | ties | query ms median | p95 | index bytes per image |",
             "|---|---|---|---|---|---|---|"]
    ties = int(np.sum(np.isclose(a.per_query, b.per_query)))
    for run, other in ((a, b), (b, a)):
        won = int(np.sum(run.per_query > other.per_query + 1e-9))
        lines.append(f"| {run.label} | {run.result.scores[metric]:.4f} | {won} | {ties} | "
                     f"{np.median(run.result.query_ms):.1f} | {np.percentile(run.result.query_ms, 95):.1f} | "
                     f"{run.bytes_per_image:,.0f} |")
    lines += ["", f"![per-query {unit}](scatter.png)", "",
              "Query times exclude decoding and extraction (`cbir.evaluate.run_queries`); bytes count the "
              "collection's arrays (postings, keypoints, signatures, descriptors), not the learned parts.", ""]
    for run, other, tag in ((a, b, "a"), (b, a, "b")):
        gain = run.per_query - other.per_query
        order = [int(i) for i in np.argsort(-gain, kind="stable")[:listed] if gain[i] > 1e-9]
        lines += [f"## Where {run.label} wins most", ""]
        if not order:
            lines += ["No query.", ""]
        for rank, query in enumerate(order, 1):
            name = f"wins-{tag}-{rank}.jpg"
            strip(os.path.join(directory, name), dataset, query, (a, b), image_path, top)
            lines += [f"{rank}. `{dataset.queries[query].name}`: {unit} {a.per_query[query]:.3f} ({a.label}) against "
                      f"{b.per_query[query]:.3f} ({b.label})", "", f"   ![{dataset.queries[query].name}]({name})", ""]
    path = os.path.join(directory, "README.md")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines))
    return path


def scatter(path: str, a: MethodRun, b: MethodRun, unit: str) -> None:
    """Per-query scores, ``a`` across and ``b`` up; coinciding queries drawn as one larger point."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot
    points, counts = np.unique(np.round(np.c_[a.per_query, b.per_query], 3), axis=0, return_counts=True)
    figure, axes = pyplot.subplots(figsize=(5, 5), dpi=100)
    axes.scatter(points[:, 0], points[:, 1], s=12 * np.sqrt(counts), alpha=0.5, color="#1565c0")
    high = max(1.0, float(points.max()))
    axes.plot([0, high], [0, high], color="#999", lw=1)
    axes.set_xlabel(f"{a.label} ({unit})")
    axes.set_ylabel(f"{b.label} ({unit})")
    axes.set_title(f"{np.sum(b.per_query > a.per_query + 1e-9)} queries above the line, "
                   f"{np.sum(a.per_query > b.per_query + 1e-9)} below")
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)


def strip(path: str, dataset: Dataset, query: int, runs: tuple[MethodRun, ...], image_path: Callable[[str], str],
          top: int, height: int = 140) -> None:
    """One row per run: the query, then its ``top`` results framed by relevance; JPEG at ``path``."""
    positives, junk = dataset.relevant(query)
    rows = []
    for run in runs:
        ranking = dataset.cleaned(run.result.rankings)[query][:top]
        tiles = [_tile(dataset.queries[query].path, height, (21, 101, 192), run.label)]
        tiles += [_tile(image_path(n), height, GREEN if n in positives else GREY if n in junk else RED,
                        f"{i}. {os.path.basename(n)}") for i, n in enumerate(ranking, 1)]
        rows.append(np.concatenate(tiles, axis=1))
    cv2.imwrite(path, np.ascontiguousarray(stack_rows(rows, 255)[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 85])


def _tile(path: str, height: int, color: tuple[int, int, int], label: str, border: int = 5) -> np.ndarray:
    """(height + 18, w, 3) uint8 RGB: the image scaled to ``height`` inside a ``color`` frame, a label under it."""
    try:
        image, _ = fit_height(load_image(path, ImageOptions(max_side=2 * height), color=True), height)
    except ImageReadError:
        image = np.full((height, height, 3), 200, np.uint8)
    framed = cv2.copyMakeBorder(image, border, border, border, border, cv2.BORDER_CONSTANT, value=color)
    caption = np.full((18, framed.shape[1], 3), 255, np.uint8)
    cv2.putText(caption, label[:28], (2, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.pad(np.concatenate([framed, caption], axis=0), ((0, 0), (0, 4), (0, 0)), constant_values=255)
