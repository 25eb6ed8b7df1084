import os
import shutil

import numpy as np
import pytest

from bovw.feature_cache import FeatureCache
from cnn import feature_maps
from cnn.feature_maps import FeatureMapExtractor


class FakeBackbone:
    """Deterministic float32 maps that float16 cannot hold exactly; counts its calls."""

    def __init__(self):
        self.calls = 0

    def feature_maps(self, image):
        self.calls += 1
        seed = int(image.sum()) % 2 ** 32
        rng = np.random.default_rng(seed)
        return {"local": (rng.random((4, 3, 5)) * 6).astype(np.float32),
                "global": (rng.random((8, 2, 3)) * 6).astype(np.float32), "logits": np.zeros(10, np.float32)}


@pytest.fixture
def fake(monkeypatch):
    backbone = FakeBackbone()
    monkeypatch.setattr(feature_maps, "get_backbone", lambda *args, **kwargs: backbone)
    return backbone


@pytest.fixture
def images(data_dir, tmp_path):
    paths = []
    for i in (0, 4):
        paths.append(str(tmp_path / f"img{i}.jpg"))
        shutil.copy(os.path.join(data_dir, "ukbench", f"ukbench{i:05d}.jpg"), paths[-1])
    return paths


def cache_files(directory):
    return [os.path.join(d, f) for d, _, files in os.walk(directory) for f in files]


def test_cached_maps_come_back_without_the_network(fake, images, tmp_path):
    cache_dir = str(tmp_path / "cache")
    first = [FeatureMapExtractor(cache_dir=cache_dir)(p) for p in images]
    assert fake.calls == 2 and len(cache_files(cache_dir)) == 2
    assert all(f.endswith(".npz") for f in cache_files(cache_dir))
    again = [FeatureMapExtractor(cache_dir=cache_dir)(p) for p in images]  # a new extractor, same folder
    assert fake.calls == 2
    for maps, cached, path in zip(first, again, images):
        assert set(cached) == {"local", "global", "image_size"} and cached["image_size"].tolist() == [240, 320]
        direct = FakeBackbone().feature_maps(FeatureMapExtractor().image(path))
        for name in ("local", "global"):
            assert cached[name].dtype == np.float32 and np.array_equal(cached[name], maps[name])
            assert np.allclose(cached[name], direct[name], rtol=1e-3, atol=0)  # float16 round trip
    assert not np.allclose(first[0]["local"], first[1]["local"])


def test_without_a_cache_nothing_is_written(fake, images, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("wrote to a feature cache")

    monkeypatch.setattr(FeatureCache, "put_arrays", refuse)
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    extractor = FeatureMapExtractor()
    for _ in range(2):
        extractor(images[0])
    assert fake.calls == 2 and extractor.cache is None and sorted(os.listdir(tmp_path)) == before


def test_real_backbone_maps_survive_the_cache(images, tmp_path):
    """EfficientNet-Lite0 on one 320x240 image: the cached maps equal the network's to float16 precision."""
    extractor = FeatureMapExtractor(cache_dir=str(tmp_path / "cache"))
    maps = extractor(images[0])
    direct = extractor.backbone.feature_maps(extractor.image(images[0]))
    assert maps["local"].shape == (672, 15, 20) and maps["global"].shape == (1280, 7, 10)
    for name in ("local", "global"):
        assert np.allclose(maps[name], direct[name], rtol=1e-3, atol=1e-3)
    cached = FeatureMapExtractor(cache_dir=str(tmp_path / "cache"))(images[0])
    assert np.array_equal(cached["local"], maps["local"])


def test_multi_scale_maps_share_the_single_scale_cache_and_decode_once(fake, images, tmp_path, monkeypatch):
    """Scales (1, 0.5): the scale-1 maps are the single-scale extractor's cache entries, the other scale
    gets its own; an image is decoded once for all of its scales, and not at all once cached."""
    from cnn.feature_maps import MultiScaleMaps
    cache_dir = str(tmp_path / "cache")
    single = FeatureMapExtractor(cache_dir=cache_dir)(images[0])
    half = FakeBackbone().feature_maps(FeatureMapExtractor(scale=0.5).image(images[0]))["global"]
    decoded = []
    original = FeatureMapExtractor.decode
    monkeypatch.setattr(FeatureMapExtractor, "decode", lambda self, path: decoded.append(path) or original(self, path))
    maps = MultiScaleMaps(scales=(1.0, 0.5), cache_dir=cache_dir)(images[0])["global"]
    assert np.array_equal(maps[0], single["global"]) and fake.calls == 2 and decoded == [images[0]]
    assert np.allclose(maps[1], half, rtol=1e-3, atol=0) and not np.allclose(maps[1], maps[0])
    again = MultiScaleMaps(scales=(1.0, 0.5), cache_dir=cache_dir)(images[0])["global"]
    assert fake.calls == 2 and decoded == [images[0]] and all(np.array_equal(a, b) for a, b in zip(again, maps))
