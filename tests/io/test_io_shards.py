import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_amalgam.io import (
    DATASET_META,
    LEGACY_DATASET_META,
    ShardWriter,
    check_shards,
    dataset_meta_url,
    encode_image,
    exists,
    inspect_dataset,
    iter_batches,
    join,
    list_shards,
    read_bytes,
    read_dataset_meta,
    read_dataset_meta_bytes,
    read_ids,
    read_shard,
    resolve,
    write_bytes,
)
from ray_amalgam.spec import BadInputError, DatasetMeta, TaskSpec

COLOR = TaskSpec(name="color", kind="multiclass", classes=("red", "green", "blue"))
TAGS = TaskSpec(name="tags", kind="multilabel", labels=("a", "b"))
META = DatasetMeta(tasks=(COLOR, TAGS), image_size=4, source="test")


def _rows(start, stop, size=4):
    return {
        "id": [f"r{i:03d}" for i in range(start, stop)],
        "image": [
            encode_image(np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)) for i in range(start, stop)
        ],
        "color": [i % 3 for i in range(start, stop)],
        "tags": [[i % 2, (i // 2) % 2] for i in range(start, stop)],
    }


def _write(url, batches, num_shards=3, num_rows=None, meta=META, rows_per_group=2):
    with ShardWriter(url, meta, num_shards, rows_per_group=rows_per_group, num_rows=num_rows) as writer:
        for batch in batches:
            writer.write(batch)


def _all_rows(url):
    return pa.concat_tables(read_shard(s) for s in list_shards(url))


@pytest.mark.parametrize("num_rows", [10, None], ids=["contiguous", "round_robin"])
def test_round_trip_with_labels(base_url, num_rows):
    url = join(base_url, "ds")
    expected = _rows(0, 10)
    _write(url, [_rows(0, 4), _rows(4, 10)], num_rows=num_rows)

    shards = list_shards(url)
    assert [s.rsplit("/", 1)[1] for s in shards] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert read_dataset_meta(url) == META.model_copy(update={"num_rows": 10})
    table = _all_rows(url)
    if num_rows is None:
        table = table.sort_by("id")
    assert table.schema.field("color").type == pa.int64()
    assert pa.types.is_list(table.schema.field("tags").type)
    assert table.to_pydict() == expected
    sizes = [pq.ParquetFile(resolve(s)[0].open(resolve(s)[1], "rb")).metadata.num_rows for s in shards]
    assert sorted(sizes) == [3, 3, 4]
    assert check_shards(url, decode_all=True) == 10


def test_column_projection_and_batches(base_url):
    url = join(base_url, "ds")
    _write(url, [_rows(0, 10)], num_rows=10)
    projected = read_shard(list_shards(url)[1], columns=["id", "color"])
    assert projected.column_names == ["id", "color"]
    assert projected.column("id").to_pylist() == ["r003", "r004", "r005"]

    batches = list(iter_batches(url, columns=["id", "tags"], batch_size=4))
    assert [b.num_rows for b in batches] == [4, 4, 2]
    assert all(b.column_names == ["id", "tags"] for b in batches)
    assert [i for b in batches for i in b.column("id").to_pylist()] == [f"r{i:03d}" for i in range(10)]


def test_inspect_reports_shards_rows_and_image_size(base_url):
    url = join(base_url, "ds")
    _write(url, [_rows(0, 5)], num_shards=2, num_rows=5)
    info = inspect_dataset(url)
    assert info["shards"] == 2 and info["rows"] == 5 and info["declared_rows"] == 5
    assert info["image_size"] == [4, 4]
    assert list(info["columns"]) == ["id", "image", "color", "tags"]
    assert [t["name"] for t in info["tasks"]] == ["color", "tags"]


def test_unlabelled_rows_and_empty_shards(base_url):
    url = join(base_url, "ds")
    rows = _rows(0, 2)
    _write(url, [{"id": rows["id"], "image": rows["image"]}], num_shards=3, meta=DatasetMeta(image_size=4))
    assert [read_shard(s).num_rows for s in list_shards(url)] == [1, 1, 0]
    assert read_shard(list_shards(url)[0]).column_names == ["id", "image"]
    assert check_shards(url) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"color": [0, 1, 3, 0]}, r"row 2: column 'color': class index 3 is out of range 0..2"),
        ({"tags": [[0, 1], [1], [0, 0], [1, 1]]}, r"row 1: column 'tags': expected 2 0/1 values \(a, b\), got 1"),
        ({"tags": [[0, 1], [1, 0], [0, 2], [1, 1]]}, r"row 2: column 'tags': expected only 0/1 values"),
        ({"shape": [0, 0, 0, 0]}, r"unknown \['shape'\]"),
    ],
)
def test_writer_validates_labels_and_writes_nothing(base_url, change, message):
    url = join(base_url, "ds")
    with pytest.raises(BadInputError, match=message):
        _write(url, [_rows(0, 4) | change])
    assert not exists(url)


def test_writer_refuses_a_batch_with_other_columns(base_url):
    url = join(base_url, "ds")
    rows = _rows(0, 4)
    del rows["tags"]
    with pytest.raises(BadInputError, match="every batch needs the columns"):
        _write(url, [_rows(0, 4), rows])


@pytest.mark.parametrize("damage", ["garbage", "truncated", "zeroed_middle"])
def test_corrupt_shard_is_named(base_url, damage):
    url = join(base_url, "ds")
    _write(url, [_rows(0, 6)], num_shards=2, num_rows=6)
    good = read_bytes(join(url, "part-00001.parquet"))
    bad = {
        "garbage": b"PAR1 this is not parquet",
        "truncated": good[: len(good) // 2],
        "zeroed_middle": good[:100] + bytes(200) + good[300:],
    }[damage]
    write_bytes(join(url, "part-00001.parquet"), bad)
    with pytest.raises(BadInputError, match=r"part-00001\.parquet: (not a readable|corrupt) Parquet"):
        read_shard(list_shards(url)[1])
    with pytest.raises(BadInputError, match=r"part-00001\.parquet"):
        check_shards(url)
    with pytest.raises(BadInputError, match=r"part-00001\.parquet"):
        list(iter_batches(url, None, 2))


def test_missing_column_is_named(base_url):
    url = join(base_url, "ds")
    write_bytes(join(url, DATASET_META), DatasetMeta(image_size=4).model_dump_json().encode())
    fs, path = resolve(join(url, "part-00000.parquet"))
    with fs.open(path, "wb") as handle:
        pq.write_table(pa.table({"id": ["x"], "pixels": [b"raw"]}), handle)
    with pytest.raises(BadInputError, match=r"part-00000\.parquet: no column 'image'; the shard has columns \['id', 'pixels'\]"):
        check_shards(url)
    with pytest.raises(BadInputError, match=r"part-00000\.parquet: no column 'image'"):
        read_shard(list_shards(url)[0], columns=["image"])


def test_wrong_label_type_is_named(base_url):
    url = join(base_url, "ds")
    meta = DatasetMeta(tasks=(COLOR,), image_size=4)
    write_bytes(join(url, DATASET_META), meta.model_dump_json().encode())
    fs, path = resolve(join(url, "part-00000.parquet"))
    with fs.open(path, "wb") as handle:
        pq.write_table(pa.table({"id": ["x"], "image": _rows(0, 1)["image"], "color": ["red"]}), handle)
    with pytest.raises(BadInputError, match=r"part-00000\.parquet: column 'color' is string, expected integer class indices"):
        check_shards(url)


def test_mixed_image_sizes_name_shard_and_row(base_url):
    url = join(base_url, "ds")
    rows = _rows(0, 6)
    rows["image"][4] = _rows(4, 5, size=5)["image"][0]
    _write(url, [rows], num_shards=2, num_rows=6)
    check_shards(url, sample_rows=1)  # the odd image is not in the sample
    with pytest.raises(BadInputError, match=r"part-00001\.parquet row 1: image is 5x5, expected 4x4"):
        check_shards(url, decode_all=True)


def test_undecodable_image_names_shard_and_row(base_url):
    url = join(base_url, "ds")
    rows = _rows(0, 4)
    rows["image"][1] = b"not an image"
    _write(url, [rows], num_shards=1, num_rows=4)
    with pytest.raises(BadInputError, match=r"part-00000\.parquet row 1: not a decodable image"):
        check_shards(url)


def test_missing_or_invalid_dataset_json(base_url):
    url = join(base_url, "ds")
    with pytest.raises(BadInputError, match=r"ds/_dataset\.json: not found; expected a dataset directory with _dataset\.json"):
        read_dataset_meta(url)
    with pytest.raises(BadInputError, match=r"ds: no part-\*\.parquet shards found"):
        list_shards(url)
    write_bytes(join(url, DATASET_META), b'{"image_size": 0}')
    with pytest.raises(BadInputError, match=r"ds/_dataset\.json: image_size: "):
        read_dataset_meta(url)
    write_bytes(join(url, DATASET_META), b'{"image_size": 4, "format_version": 9}')
    with pytest.raises(BadInputError, match="format_version 9 is not supported; this ray_amalgam reads format_version 1"):
        read_dataset_meta(url)
    write_bytes(join(url, DATASET_META), b"{not json")
    with pytest.raises(BadInputError, match=r"_dataset\.json: not valid JSON at line 1"):
        read_dataset_meta(url)


def test_row_count_mismatch_with_dataset_json(base_url):
    url = join(base_url, "ds")
    _write(url, [_rows(0, 3)], num_shards=1)
    write_bytes(join(url, DATASET_META), META.model_copy(update={"num_rows": 5}).model_dump_json().encode())
    with pytest.raises(BadInputError, match="shards hold 3 rows but _dataset.json says num_rows 5"):
        check_shards(url)


def test_standard_parquet_readers_open_the_dataset_directory(tmp_path):
    import pyarrow.dataset

    url = str(tmp_path / "ds")
    _write(url, [_rows(0, 5)], num_rows=5)
    assert exists(join(url, DATASET_META)) and not exists(join(url, LEGACY_DATASET_META))
    # Readers that follow the Hive/Spark convention skip `_`-prefixed files in the directory.
    table = pyarrow.dataset.dataset(url, format="parquet").to_table()
    assert sorted(table.column("id").to_pylist()) == [f"r{i:03d}" for i in range(5)]
    assert pq.read_table(url).num_rows == 5


def test_datasets_with_the_old_metadata_name_still_read(base_url):
    url = join(base_url, "ds")
    _write(url, [_rows(0, 5)], num_rows=5)
    fs, path = resolve(url)
    fs.mv(f"{path}/{DATASET_META}", f"{path}/{LEGACY_DATASET_META}")
    assert dataset_meta_url(url) == join(url, LEGACY_DATASET_META)
    assert read_dataset_meta(url) == META.model_copy(update={"num_rows": 5})
    assert read_dataset_meta_bytes(url) == read_bytes(join(url, LEGACY_DATASET_META))
    assert check_shards(url) == 5 and inspect_dataset(url)["rows"] == 5
    # Where both exist (an old dataset rewritten in place), the current name wins.
    write_bytes(join(url, DATASET_META), META.model_copy(update={"num_rows": 5, "source": "new"}).model_dump_json().encode())
    assert dataset_meta_url(url) == join(url, DATASET_META) and read_dataset_meta(url).source == "new"
    assert dataset_meta_url(join(base_url, "nothing")) is None
    with pytest.raises(BadInputError, match=r"nothing/_dataset\.json: not found"):
        read_dataset_meta_bytes(join(base_url, "nothing"))


def _copy_shard(url, source, target):
    write_bytes(join(url, target), read_bytes(join(url, source)))


def test_a_shard_copied_under_a_second_name_is_refused_naming_both(base_url):
    url = join(base_url, "ds")
    _write(url, [_rows(0, 6)], num_shards=2, num_rows=6)
    assert check_shards(url) == 6 and len(read_ids(url)) == 6 and inspect_dataset(url)["duplicate_ids"] == 0
    _copy_shard(url, "part-00000.parquet", "part-00002.parquet")
    message = r"ds: 3 id\(s\) occur more than once, e\.g\. 'r000' in part-00000\.parquet and part-00002\.parquet; expected unique ids"
    with pytest.raises(BadInputError, match=message):
        check_shards(url)
    with pytest.raises(BadInputError, match=message):
        read_ids(url)
    info = inspect_dataset(url)
    assert info["rows"] == 9 and info["duplicate_ids"] == 3
    assert info["duplicate_example"] == {"id": "r000", "shards": [join(url, "part-00000.parquet"), join(url, "part-00002.parquet")]}


def test_an_id_repeated_inside_one_shard_is_refused(base_url):
    url = join(base_url, "ds")
    rows = _rows(0, 4)
    rows["id"][3] = rows["id"][1]
    _write(url, [rows], num_shards=1, num_rows=4)
    with pytest.raises(BadInputError, match=r"1 id\(s\) occur more than once, e\.g\. 'r001' 2 times in part-00000\.parquet"):
        check_shards(url)
