"""One loaded index queried from many threads gives the serial results; adding
images while queries run is safe: every query sees the index before or after."""
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from cbir.retrieval_index import RetrievalIndex

THREADS = 8


def _results(index, features):
    return [(r.name, r.score, r.inliers) for r in index.search(features, options="sift-sv")]


@pytest.mark.slow
def test_threads_give_serial_results(built_index, ukbench_subset):
    queries = [built_index.query_features(p) for p in ukbench_subset.database_paths[:24]]
    serial = [_results(built_index, q) for q in queries]
    with ThreadPoolExecutor(THREADS) as pool:
        parallel = list(pool.map(lambda q: _results(built_index, q), queries * 3))
    assert parallel == serial * 3


def test_adding_while_searching_gives_before_or_after(small_vocabulary, ukbench_subset, feature_cache_dir):
    paths, names = ukbench_subset.database_paths, ukbench_subset.database
    index = RetrievalIndex("sift-bow", small_vocabulary, cache_dir=feature_cache_dir)
    index.add_images(paths[:30], names[:30], progress=False)
    query = index.query_features(paths[0])
    before = _results(index, query)
    after_index = RetrievalIndex("sift-bow", small_vocabulary, cache_dir=feature_cache_dir)
    after_index.add_images(paths, names, progress=False)
    after = _results(after_index, query)
    seen, stop = [], threading.Event()

    def searcher():
        while not stop.is_set():
            seen.append(_results(index, query))

    threads = [threading.Thread(target=searcher) for _ in range(4)]
    for thread in threads:
        thread.start()
    index.add_images(paths[30:], names[30:], progress=False)
    stop.set()
    for thread in threads:
        thread.join()
    assert seen and all(result in (before, after) for result in seen)
    assert _results(index, query) == after
