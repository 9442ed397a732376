import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from ray_amalgam.io import (
    check_shards,
    decode_image,
    join,
    list_shards,
    pack_folder,
    read_dataset_meta,
    read_shard,
)
from ray_amalgam.spec import BadInputError


def _save(path, width, height, value, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (value, 255 - value, 40)).save(path, format=fmt)


def _table(url):
    return pa.concat_tables(read_shard(s) for s in list_shards(url))


def test_pack_nested_folder_keeps_bytes(tmp_path, base_url):
    src = tmp_path / "photos"
    _save(src / "a" / "x.png", 16, 16, 10)
    _save(src / "a" / "b" / "y.JPG", 16, 16, 100, fmt="jpeg")
    _save(src / "z.jpeg", 16, 16, 200, fmt="jpeg")
    (src / "notes.txt").write_text("not an image")
    url = join(base_url, "packed")
    seen = []
    meta = pack_folder(str(src), url, num_shards=2, progress=seen.append)

    assert meta.image_size == 16 and meta.num_rows == 3 and meta.tasks == ()
    assert read_dataset_meta(url) == meta
    assert len(list_shards(url)) == 2 and seen == [3]
    table = _table(url)
    assert table.column_names == ["id", "image"]
    assert table.column("id").to_pylist() == ["a/b/y.JPG", "a/x.png", "z.jpeg"]
    assert table.column("image")[1].as_py() == (src / "a" / "x.png").read_bytes()
    assert check_shards(url, decode_all=True) == 3


def test_pack_resizes_mixed_sizes_with_centre_crop(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    wide = Image.new("RGB", (40, 20), (0, 0, 255))
    wide.paste((255, 0, 0), (0, 0, 10, 20))  # left and right margins fall outside the centre crop
    wide.paste((0, 255, 0), (30, 0, 40, 20))
    wide.save(src / "wide.png")
    _save(src / "small.png", 12, 12, 0)
    url = str(tmp_path / "packed")
    meta = pack_folder(str(src), url, num_shards=1, image_size=8)
    assert meta.image_size == 8
    table = _table(url)
    assert table.column("id").to_pylist() == ["small.png", "wide.png"]
    images = [decode_image(b) for b in table.column("image").to_pylist()]
    assert [i.shape for i in images] == [(8, 8, 3), (8, 8, 3)]
    assert images[1][..., 2].min() > 200 and images[1][..., :2].max() < 40  # only the blue centre is left
    assert check_shards(url, decode_all=True) == 2


def test_pack_mixed_sizes_without_resize_names_file(tmp_path):
    src = tmp_path / "photos"
    _save(src / "a.png", 16, 16, 0)
    _save(src / "b.png", 12, 12, 0)
    url = str(tmp_path / "packed")
    with pytest.raises(BadInputError, match=r"photos/b\.png: image is 12x12, expected 16x16 .*--image-size"):
        pack_folder(str(src), url, num_shards=1)
    assert not (tmp_path / "packed").exists()


def test_pack_non_square_without_resize(tmp_path):
    src = tmp_path / "photos"
    _save(src / "a.png", 16, 10, 0)
    with pytest.raises(BadInputError, match=r"a\.png: image is 16x10; .*square.*--image-size"):
        pack_folder(str(src), str(tmp_path / "packed"), num_shards=1)


def test_pack_empty_missing_or_broken_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(BadInputError, match=r"empty: no \.jpg/\.jpeg/\.png images found"):
        pack_folder(str(tmp_path / "empty"), str(tmp_path / "out"), num_shards=1)
    with pytest.raises(BadInputError, match=r"missing: not a directory"):
        pack_folder(str(tmp_path / "missing"), str(tmp_path / "out"), num_shards=1)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(BadInputError, match=r"broken/bad\.png: not a decodable image"):
        pack_folder(str(tmp_path / "broken"), str(tmp_path / "out"), num_shards=1, image_size=8)
    assert not (tmp_path / "out").exists()


def test_pack_grayscale_png_decodes_as_rgb(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    Image.fromarray(np.full((8, 8), 90, dtype=np.uint8)).save(src / "g.png")
    url = str(tmp_path / "packed")
    pack_folder(str(src), url, num_shards=1)
    assert decode_image(_table(url).column("image")[0].as_py()).shape == (8, 8, 3)
