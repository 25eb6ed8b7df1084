"""Every kind of bad input, through the Python API and the CLI: the documented outcome."""
import logging
import os

import pytest

from bovw.images import ImageReadError
from cbir.cli import main
from cbir.retrieval_index import RetrievalIndex, save_vocabulary
from tests.reliability.corpus import OUTCOMES


def _expected_skips(folder):
    return {os.path.join(folder, n): o.split(": ", 1)[1] for n, o in OUTCOMES.items() if o.startswith("skipped")}


def test_build_indexes_every_good_file_and_names_every_skip(corpus, small_vocabulary, feature_cache_dir):
    folder, paths = corpus
    index = RetrievalIndex("sift-bow", small_vocabulary, cache_dir=feature_cache_dir)
    report = index.add_images(paths, progress=False)
    skipped = dict(report.skipped)
    for path, reason in _expected_skips(folder).items():
        assert reason in skipped[path], (path, skipped.get(path))
    assert "already indexed" in report.skipped[-1][1]  # the duplicate path
    indexed = {os.path.basename(n) for n in index.names}
    assert indexed == {n for n, o in OUTCOMES.items() if o == "indexed"}
    assert len(report.skipped) == len(_expected_skips(folder)) + 1
    summary = report.summary()
    assert all(os.path.basename(p) in summary for p in _expected_skips(folder))
    rotated = index.images.image_sizes[index.names.slots([os.path.join(folder, "exif_rotated.jpg")])[0]]
    assert tuple(rotated) == (320, 240)  # EXIF orientation 6: the 320x240 photo stands upright


def test_adding_to_an_index_keeps_what_was_there(corpus, small_vocabulary, feature_cache_dir):
    folder, paths = corpus
    index = RetrievalIndex("sift-bow", small_vocabulary, cache_dir=feature_cache_dir)
    index.add_images([os.path.join(folder, "photo.jpg")], progress=False)
    before = [(r.name, r.score) for r in index.search(os.path.join(folder, "photo.jpg"))]
    report = index.add_images(paths, progress=False)
    assert any("already indexed" in reason for _, reason in report.skipped)
    assert index.search(os.path.join(folder, "photo.jpg"), top_k=1)[0].name == before[0][0]


@pytest.mark.parametrize("name", sorted(OUTCOMES))
def test_querying_with_each_file(corpus, small_vocabulary, feature_cache_dir, name, caplog):
    folder, paths = corpus
    index = RetrievalIndex("sift-bow", small_vocabulary, cache_dir=feature_cache_dir)
    index.add_images([os.path.join(folder, "photo.jpg"), os.path.join(folder, "cmyk.jpg")], progress=False)
    path = os.path.join(folder, name)
    if OUTCOMES[name].startswith("skipped"):
        with pytest.raises(ImageReadError) as info:
            index.search(path)
        assert OUTCOMES[name].split(": ", 1)[1] in info.value.reason and path in str(info.value)
    elif name == "flat.png":
        with caplog.at_level(logging.WARNING, logger="cbir"):
            assert index.search(path) == []
        assert "flat.png has no features" in caplog.text
    else:
        assert len(index.search(path, top_k=2)) == 2


def test_cli_build_over_the_corpus(corpus, small_vocabulary, tmp_path, capsys):
    folder, paths = corpus
    vocab = str(tmp_path / "vocab")
    save_vocabulary(small_vocabulary, vocab)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(paths) + "\n", encoding="utf-8")
    assert main(["index", f"@{listing}", "-o", str(tmp_path / "idx"), "--vocab", vocab, "--cache", ""]) == 0
    err = capsys.readouterr().err
    for path, reason in _expected_skips(folder).items():
        assert f"skipped {path}: " in err and reason in err
    for name, reason in (("truncated.jpg", "corrupt or truncated"), ("missing.jpg", "no such file")):
        assert main(["query", os.path.join(folder, name), "--index", str(tmp_path / "idx"), "--cache", ""]) == 1
        assert f"{name}: {reason}" in capsys.readouterr().err
