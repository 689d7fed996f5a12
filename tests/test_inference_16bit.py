"""A 16-bit PIL image handed to the embedder is prepared like the cached one, not saturated."""

import numpy as np
from PIL import Image

from tskd.data.cache import load_image
from tskd.features.images import prepare_image


def test_16_bit_pil_image_matches_the_cache_path(tmp_path):
    ramp = (np.arange(32 * 16, dtype=np.uint32).reshape(32, 16) * 120).astype(np.uint16)
    img = Image.fromarray(ramp)  # uint16 -> mode I;16
    path = tmp_path / "thermal16.png"
    img.save(path)
    prepared = prepare_image(Image.open(path), (32, 16))
    assert prepared.dtype == np.uint8 and prepared.shape == (32, 16, 3)
    assert prepared.max() < 255 and prepared.min() == 0  # real content, not a white image
    np.testing.assert_array_equal(prepared, np.asarray(load_image(path, (32, 16))))
