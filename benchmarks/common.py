"""Helpers shared by the benchmark scripts: data paths, machine description, result files."""
from __future__ import annotations

import datetime
import os
import platform
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(REPO, "..", "shared", "data")
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")

#: For each benchmark set, the set whose images train what must not see the evaluated one.
OTHER = {"holidays": "ukbench", "ukbench": "holidays"}


def benchmark_datasets(data: str) -> dict:
    """``{"holidays": Holidays-811, "ukbench": UKBench-1000}`` from the shared data folder."""
    from index.datasets import holidays, ukbench
    return {"holidays": holidays(os.path.join(data, "holidays")), "ukbench": ukbench(os.path.join(data, "ukbench"))}


def machine() -> str:
    """One line: CPU count, platform, Python, date."""
    return (f"{os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}, "
            f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}")


def write_result(name: str, body: str) -> str:
    """Write ``benchmarks/results/<name>.md`` with the command line and machine; returns its path."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.md")
    command = "python -m benchmarks." + os.path.splitext(os.path.basename(sys.argv[0]))[0] + \
        (" " + " ".join(sys.argv[1:]) if len(sys.argv) > 1 else "")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"Command: `{command}`\n\nMachine: {machine()}\n\n{body}\n")
    return path


def shared_index_row(label: str, pipeline, options, datasets: dict, indexes: dict, new_index, jobs: int) -> str:
    """One markdown row: ``pipeline`` searched with ``options`` on every dataset, one index per dataset.

    Pipelines that differ only in how they search share the index built for the first
    one (``new_index(pipeline)`` -> empty index); the row holds each dataset's score
    and the query time median and p95 (ms), datasets in ``datasets`` order.
    """
    import numpy as np

    from cbir.evaluate import index_dataset, run_queries
    cells, medians, p95s = [], [], []
    for name, dataset in datasets.items():
        if name not in indexes:
            indexes[name] = new_index(pipeline)
            index_dataset(indexes[name], dataset, n_jobs=jobs, progress=False)
        result = run_queries(indexes[name], dataset, options, progress=False)
        (_, score), = result.scores.items()
        cells.append(f"{score:.4f}")
        medians.append(f"{np.median(result.query_ms):.1f}")
        p95s.append(f"{np.percentile(result.query_ms, 95):.1f}")
    return f"| {label} | {' | '.join(cells)} | {' / '.join(medians)} | {' / '.join(p95s)} |"
