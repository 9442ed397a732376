import numpy as np
import pytest
import torch

from ray_amalgam.io import decode_batch, decode_image, encode_image, to_tensor
from ray_amalgam.spec import BadInputError


def _image(height=6, width=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_png_round_trip_is_exact():
    array = _image()
    data = encode_image(array)
    assert data[:4] == b"\x89PNG"
    decoded = decode_image(data)
    assert decoded.dtype == np.uint8 and decoded.shape == (6, 5, 3)
    np.testing.assert_array_equal(decoded, array)


def test_jpeg_round_trip_is_close():
    array = np.full((8, 8, 3), (200, 40, 90), dtype=np.uint8)
    decoded = decode_image(encode_image(array, format="jpeg"))
    assert decoded.shape == (8, 8, 3)
    assert np.abs(decoded.astype(int) - array).max() < 12


def test_grayscale_image_decodes_to_rgb():
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    Image.new("L", (4, 3), 77).save(buffer, format="png")
    decoded = decode_image(buffer.getvalue())
    assert decoded.shape == (3, 4, 3) and (decoded == 77).all()


def test_undecodable_bytes_are_bad_input():
    with pytest.raises(BadInputError, match=r"not a decodable image \(\d+ bytes in no image format PIL reads\)"):
        decode_image(b"definitely not an image")
    truncated = encode_image(_image(32, 32))[:60]
    with pytest.raises(BadInputError):
        decode_image(truncated)


def test_decode_batch_stacks_and_names_bad_row():
    images = [encode_image(_image(seed=i)) for i in range(3)]
    batch = decode_batch(images, "shard-a")
    assert batch.shape == (3, 6, 5, 3)
    with pytest.raises(BadInputError, match=r"^shard-a row 12: not a decodable image"):
        decode_batch(images[:2] + [b"junk"], "shard-a", first_row=10)


def test_decode_batch_refuses_mixed_sizes():
    images = [encode_image(_image()), encode_image(_image(7, 5))]
    with pytest.raises(BadInputError, match=r"^where row 1: image is 5x7, expected 5x6"):
        decode_batch(images, "where")


def test_to_tensor_layout_and_normalisation():
    batch = np.zeros((2, 4, 3, 3), dtype=np.uint8)
    batch[1, :, :, 0] = 255
    tensor = to_tensor(batch, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))
    assert tensor.shape == (2, 3, 4, 3) and tensor.dtype == torch.float32 and tensor.is_contiguous()
    assert torch.allclose(tensor[1, 0], torch.ones(4, 3))
    assert torch.allclose(tensor[0, 1], torch.full((4, 3), -2.0))
