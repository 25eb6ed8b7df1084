import os

import numpy as np
import pytest

from bovw.images import ImageOptions, load_image

torch = pytest.importorskip("torch")

from cnn.backbone import Backbone  # noqa: E402
from cnn.options import CHANNELS, LOCAL_LAYERS, BackboneOptions  # noqa: E402

# ImageNet classes of natural landscapes: alp, cliff, promontory, lakeside, seashore, valley, volcano.
LANDSCAPE = {970, 972, 976, 975, 978, 979, 980}


@pytest.fixture(scope="module")
def backbone():
    return Backbone(BackboneOptions(), device="cpu")


def test_weights_load_offline_and_classify_a_real_photo(backbone, data_dir):
    # Holidays 100000 is a view over a green mountain valley.
    image = load_image(os.path.join(data_dir, "holidays", "100000.jpg"), ImageOptions(max_side=0), color=True)
    import cv2
    logits = backbone.feature_maps(cv2.resize(image, (224, 224)))["logits"]
    assert int(np.argmax(logits)) == 979  # valley
    assert set(np.argsort(-logits)[:3].tolist()) <= LANDSCAPE


def test_feature_map_shapes_and_strides(backbone, data_dir):
    image = load_image(os.path.join(data_dir, "ukbench", "ukbench00000.jpg"), ImageOptions(), color=True)
    maps = backbone.feature_maps(image)
    assert maps["local"].shape == (CHANNELS["local"], 15, 20)  # 240x320 at stride 16
    # stride 32; the network's static "same" padding floors the odd 7.5 rows
    assert maps["global"].shape == (CHANNELS["global"], 7, 10)
    assert maps["local"].min() >= 0 and maps["local"].max() <= 6  # after ReLU6


def test_each_local_layer_has_its_channels_and_stride_and_the_head_is_the_global_map(backbone, data_dir):
    image = load_image(os.path.join(data_dir, "ukbench", "ukbench00000.jpg"), ImageOptions(), color=True)
    default = backbone.feature_maps(image)
    for layer, (_, _, stride, channels) in LOCAL_LAYERS.items():
        local = backbone.feature_maps(image, layer)["local"]
        assert local.shape[0] == channels and abs(local.shape[2] - 320 / stride) < 1, layer
        only = backbone.feature_maps(image, layer, local_only=True)  # the blocks after the layer not run
        assert list(only) == ["local"] and np.array_equal(only["local"], local), layer
    np.testing.assert_array_equal(backbone.feature_maps(image, "head")["local"], default["global"])
    np.testing.assert_array_equal(backbone.feature_maps(image, "block11-expand")["local"], default["local"])
    # block 15's output feeds the head conv: not ReLU6-bounded, unlike the expansion and head maps
    assert backbone.feature_maps(image, "block15")["local"].min() < 0


def test_unknown_backbone_is_refused():
    with pytest.raises(ValueError, match="no offline weights"):
        Backbone(BackboneOptions(name="efficientnet-lite2"))


def test_extraction_leaves_the_process_thread_setting_alone(backbone):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        backbone.feature_maps(np.zeros((64, 64, 3), np.uint8))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


_GROWTH_PROBE = """
import numpy as np
from cnn.local_features import conv_local_from_image
def rss_mb():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2 ** 20
rng = np.random.default_rng(0)
for i in range(45):
    if i == 5:
        start = rss_mb()
    h, w = rng.integers(500, 800, size=2)
    conv_local_from_image(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
print(rss_mb() - start)
"""


@pytest.mark.slow
def test_memory_stays_bounded_over_images_of_many_sizes():
    # oneDNN's default primitive cache grew by ~930 MB over these 40 shapes (BLCF builds of photo
    # folders reached 3.7 GB); the backbone bounds it.
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    run = subprocess.run([sys.executable, "-c", _GROWTH_PROBE], capture_output=True, text=True, env=env, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert float(run.stdout) < 400
