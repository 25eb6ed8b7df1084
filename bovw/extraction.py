"""Feature extraction over a collection of image files, with cache and error report."""
from __future__ import annotations

import ctypes
import itertools
import pickle
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import cv2
from joblib import Parallel, cpu_count, delayed, effective_n_jobs
from tqdm.auto import tqdm

from bovw.feature_cache import FeatureCache
from bovw.features import LocalFeatures
from bovw.images import ImageReadError

#: ``iter_features`` backends: worker threads of this process, or worker processes (joblib's loky).
BACKENDS = ("threads", "processes")


@dataclass
class ExtractionReport:
    """What happened to each input file.

    Attributes:
        extracted: number of images whose features were computed now.
        cached: number of images whose features came from the cache.
        skipped: (path, reason) of every file that could not be used.
    """

    extracted: int = 0
    cached: int = 0
    skipped: list = field(default_factory=list)

    def summary(self) -> str:
        """Human-readable summary, one line per skipped file."""
        lines = [f"{self.extracted} extracted, {self.cached} from cache, {len(self.skipped)} skipped"]
        lines += [f"  skipped {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


def _extract_one(extract: Callable[[str], LocalFeatures], path: str, cache: FeatureCache | None):
    """Extract one image and cache it at once, so an interrupted build loses nothing done."""
    try:
        features = extract(path)
    except ImageReadError as exc:
        return None, exc.reason
    if cache is not None:
        cache.put(path, features)
    return features, None


@dataclass(frozen=True)
class _CacheSpec:
    """What a worker process needs to open the caller's FeatureCache (which holds a lock and
    cannot be pickled); ``call`` tells one ``iter_features`` call from the next."""

    directory: str
    extractor_key: str
    max_bytes: int | None
    call: int


_calls = itertools.count()
#: The cache a worker process opened for the current call: one per call and process, so that
#: its running size (for ``max_bytes``) is scanned once per call, not once per image.
_worker_cache: dict[_CacheSpec, FeatureCache] = {}


#: glibc ``mallopt`` parameters and the values worker processes set (see ``_keep_freed_memory``).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_WORKER_TRIM_BYTES, _WORKER_MMAP_BYTES = 1 << 30, 32 << 20
_worker_tuned = False


def _keep_freed_memory() -> None:
    """Let this worker process's allocator keep the memory it frees (glibc only).

    SIFT on a 1024-px image allocates ~160 MB of pyramid buffers and frees them at the end;
    glibc gives them back to the system, and the next image faults them in again (about
    40,000 page faults, 15% of the extraction's CPU time). A worker process only extracts,
    so it keeps up to 1 GiB of freed memory instead; the caller's own process is left alone.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt(_M_MMAP_THRESHOLD, _WORKER_MMAP_BYTES)
    mallopt(_M_TRIM_THRESHOLD, _WORKER_TRIM_BYTES)


def _extract_in_worker(extract: Callable[[str], LocalFeatures], path: str, cache: _CacheSpec | None,
                       opencv_threads: int):
    """``_extract_one`` in a worker process: OpenCV limited to its share of the cores (the workers
    already use them all), freed memory kept for the next image, the cache opened once per call."""
    global _worker_tuned
    if not _worker_tuned:
        _keep_freed_memory()
        _worker_tuned = True
    if cv2.getNumThreads() != opencv_threads:
        cv2.setNumThreads(opencv_threads)
    opened = None
    if cache is not None:
        opened = _worker_cache.get(cache)
        if opened is None:
            _worker_cache.clear()
            opened = _worker_cache[cache] = FeatureCache(cache.directory, cache.extractor_key, cache.max_bytes)
    return _extract_one(extract, path, opened)


def _check_picklable(extract: Callable) -> None:
    try:
        pickle.dumps(extract)
    except Exception as exc:  # lambdas, local functions, objects holding locks...
        raise TypeError(
            f"backend='processes' sends the extractor to worker processes, so it must be picklable "
            f"(a module-level function, or functools.partial of one, e.g. "
            f"functools.partial(read_local_features, build), not a lambda): {exc}") from exc


def iter_features(paths: Sequence[str], extract: Callable[[str], LocalFeatures],
                  cache: FeatureCache | None = None, report: ExtractionReport | None = None,
                  n_jobs: int = 1, chunk_size: int = 64,
                  verbose: bool | None = True, backend: str = "threads") -> Iterator[tuple[str, LocalFeatures]]:
    """Yield ``(path, features)`` for every usable image, in input order.

    Unusable files are skipped and recorded in ``report``; cached features are
    reused and new ones stored. Work is done in chunks of ``chunk_size`` images
    by ``n_jobs`` workers, so memory stays bounded; each image is yielded (and
    counted by the progress bar) as soon as it and the ones before it are done.

    Workers are threads of this process by default (OpenCV and Pillow release the
    GIL; any extractor works). With ``backend="processes"`` they are worker
    processes (joblib's loky, started once and kept between calls), each running
    OpenCV on its share of the cores (one SIFT call already spreads over the cores
    in part), keeping the memory it frees for the next image, and storing into
    the cache itself: for SIFT with 2 workers on 2 cores, 252 ms per 1024-px photo
    against 276 ms with threads, 296 against 341 ms per 4032-px photo, with 8-12%
    less CPU (``benchmarks/results/extraction_speed.md``); worker start-up takes
    about 2 s once per run. It needs a picklable ``extract`` (``functools.partial(read_local_features,
    build)``, not a lambda: TypeError otherwise) and should not be used for
    extractors that hold a large model (each worker would get its own copy).
    With one worker (``n_jobs=1``) both backends extract in the calling thread.

    Args:
        paths: image files.
        extract: path -> LocalFeatures, raising ImageReadError for bad files.
        cache: optional feature cache.
        report: filled in as files are processed.
        n_jobs: workers (-1: all cores).
        chunk_size: images per parallel batch.
        verbose: show a progress bar (None: only when stderr is a terminal).
        backend: ``"threads"`` or ``"processes"``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    workers = effective_n_jobs(n_jobs)
    processes = backend == "processes" and workers > 1
    if processes:
        _check_picklable(extract)
        spec = None if cache is None else _CacheSpec(cache.directory, cache.extractor_key, cache.max_bytes,
                                                     next(_calls))
        opencv_threads = max(1, cpu_count() // workers)
        task = lambda path: delayed(_extract_in_worker)(extract, path, spec, opencv_threads)  # noqa: E731
    else:
        task = lambda path: delayed(_extract_one)(extract, path, cache)  # noqa: E731
    return _iter_features(paths, task, cache, report if report is not None else ExtractionReport(),
                          dict(n_jobs=workers, backend="loky") if processes else dict(n_jobs=workers, prefer="threads"),
                          chunk_size, verbose)


def _iter_features(paths, task, cache, report, parallel_options, chunk_size, verbose):
    """The generator of ``iter_features`` (arguments checked there, before the first ``next``)."""
    progress = tqdm(total=len(paths), desc="features", unit="img", disable=None if verbose is None else not verbose,
                    smoothing=0.05, dynamic_ncols=True, leave=False)
    try:
        with Parallel(return_as="generator", **parallel_options) as parallel:
            for start in range(0, len(paths), chunk_size):
                chunk = list(paths[start:start + chunk_size])
                found = [cache.get(p) if cache is not None else None for p in chunk]
                todo = [p for p, f in zip(chunk, found) if f is None]
                computed = parallel(task(p) for p in todo) if todo else iter(())
                for path, features in zip(chunk, found):
                    if features is not None:
                        report.cached += 1
                    else:
                        features, reason = next(computed)
                        if features is None:
                            report.skipped.append((str(path), reason))
                            progress.update()
                            continue
                        report.extracted += 1
                    progress.update()
                    yield str(path), features
                for _ in computed:  # joblib takes the next chunk only once this generator has ended
                    pass
    finally:
        progress.close()
