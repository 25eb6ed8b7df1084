"""Feature extraction over a collection of image files, with cache and error report."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from joblib import Parallel, delayed
from tqdm.auto import tqdm

from bovw.feature_cache import FeatureCache
from bovw.features import LocalFeatures
from bovw.images import ImageReadError


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


def iter_features(paths: Sequence[str], extract: Callable[[str], LocalFeatures],
                  cache: FeatureCache | None = None, report: ExtractionReport | None = None,
                  n_jobs: int = 1, chunk_size: int = 64,
                  verbose: bool | None = True) -> Iterator[tuple[str, LocalFeatures]]:
    """Yield ``(path, features)`` for every usable image, in input order.

    Unusable files are skipped and recorded in ``report``; cached features are
    reused and new ones stored. Work is done in chunks of ``chunk_size`` images
    by ``n_jobs`` threads (OpenCV releases the GIL), so memory stays bounded;
    each image is yielded (and counted by the progress bar) as soon as it and the
    ones before it are done.

    Args:
        paths: image files.
        extract: path -> LocalFeatures, raising ImageReadError for bad files.
        cache: optional feature cache.
        report: filled in as files are processed.
        n_jobs: worker threads (-1: all cores).
        chunk_size: images per parallel batch.
        verbose: show a progress bar (None: only when stderr is a terminal).
    """
    report = report if report is not None else ExtractionReport()
    progress = tqdm(total=len(paths), desc="features", unit="img", disable=None if verbose is None else not verbose,
                    smoothing=0.05, dynamic_ncols=True, leave=False)
    with Parallel(n_jobs=n_jobs, prefer="threads", return_as="generator") as parallel:
        for start in range(0, len(paths), chunk_size):
            chunk = list(paths[start:start + chunk_size])
            found = [cache.get(p) if cache is not None else None for p in chunk]
            todo = [p for p, f in zip(chunk, found) if f is None]
            computed = parallel(delayed(_extract_one)(extract, p, cache) for p in todo) if todo else iter(())
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
    progress.close()
