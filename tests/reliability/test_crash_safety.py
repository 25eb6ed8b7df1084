"""A save interrupted anywhere leaves the previous index loadable and unchanged;
an interrupted build resumes from the feature cache."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import index.persistence as persistence
import cbir.retrieval_index
from cbir.retrieval_index import RetrievalIndex

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def saved_pair(built_index, ukbench_subset, tmp_path):
    """An index saved at ``directory`` and a changed copy (one image removed) to save over it."""
    directory = str(tmp_path / "idx")
    built_index.save(directory)
    changed = RetrievalIndex.load(directory, cache_dir=built_index.cache_dir)
    changed.remove([ukbench_subset.database[0]])
    return directory, changed


def _names(directory):
    return list(RetrievalIndex.load(directory).names)


def _count_writes(changed, tmp_path):
    calls = []
    original = np.save

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    np.save = counting
    try:
        changed.save(str(tmp_path / "probe"))
    finally:
        np.save = original
    return len(calls)


def test_oserror_at_every_write_leaves_the_old_index(saved_pair, tmp_path, monkeypatch):
    directory, changed = saved_pair
    before = _names(directory)
    n_writes = _count_writes(changed, tmp_path)
    original_save, original_replace = np.save, os.replace
    for failing in range(n_writes + 1):  # each array write, then the manifest's replace
        calls = []

        def flaky_save(*args, **kwargs):
            calls.append(1)
            if len(calls) == failing + 1:
                raise OSError(28, "No space left on device")
            return original_save(*args, **kwargs)

        def flaky_replace(src, dst):
            if failing == n_writes:
                raise OSError(5, "Input/output error")
            return original_replace(src, dst)

        monkeypatch.setattr(np, "save", flaky_save)
        monkeypatch.setattr(persistence.os, "replace", flaky_replace)
        with pytest.raises(OSError):
            changed.save(directory)
        monkeypatch.undo()
        assert _names(directory) == before
        assert not [f for f in os.listdir(directory) if f.endswith(".tmp")]
    changed.save(directory)
    assert _names(directory) == list(changed.names)


CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import index.persistence as persistence
    from cbir.retrieval_index import RetrievalIndex
    directory, kill_at = sys.argv[1], int(sys.argv[2])
    index = RetrievalIndex.load(directory)
    index.remove([index.names[0]])
    calls = []
    original_save, original_replace = np.save, os.replace
    def save(*args, **kwargs):
        calls.append(1)
        if len(calls) == kill_at:
            handle = args[0]
            handle.write(b"partial")
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return original_save(*args, **kwargs)
    def replace(src, dst):
        if kill_at == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        return original_replace(src, dst)
    np.save = save
    persistence.os.replace = replace
    index.save(directory)
""")


def test_killed_mid_save_leaves_the_old_index(saved_pair, tmp_path):
    directory, changed = saved_pair
    before = _names(directory)
    n_writes = _count_writes(changed, tmp_path)
    for kill_at in [0, 1, n_writes // 2, n_writes]:  # 0: just before the manifest is replaced
        result = subprocess.run([sys.executable, "-c", CHILD, directory, str(kill_at)], cwd=REPO,
                                capture_output=True, timeout=120)
        assert result.returncode == -9, result.stderr.decode()[-500:]
        assert _names(directory) == before
    changed.save(directory)  # the next save cleans the orphans of the killed ones
    assert _names(directory) == list(changed.names)


def test_interrupted_build_resumes_from_the_feature_cache(small_vocabulary, ukbench_subset, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    paths, names = ukbench_subset.database_paths, ukbench_subset.database
    original = cbir.retrieval_index.read_local_features
    done = []

    def interrupted(build, path):
        if len(done) == 40:
            raise KeyboardInterrupt
        done.append(path)
        return original(build, path)

    monkeypatch.setattr(cbir.retrieval_index, "read_local_features", interrupted)
    index = RetrievalIndex("sift-bow", small_vocabulary, cache_dir=cache)
    with pytest.raises(KeyboardInterrupt):
        index.add_images(paths, names, progress=False)
    monkeypatch.undo()
    resumed = RetrievalIndex("sift-bow", small_vocabulary, cache_dir=cache)
    report = resumed.add_images(paths, names, progress=False)
    assert report.cached == 40 and report.extracted == len(paths) - 40
