import numpy as np
import pyarrow as pa
import pytest

from ray_amalgam.io import (
    SYNTH_TASKS,
    check_shards,
    decode_image,
    join,
    list_shards,
    read_shard,
    render_sample,
    synthesize,
)
from ray_amalgam.spec import BadInputError


def _table(url):
    return pa.concat_tables(read_shard(s) for s in list_shards(url))


def test_synth_tasks_cover_the_contract():
    by_name = {t.name: t for t in SYNTH_TASKS}
    assert set(by_name) == {"shape", "color", "size", "position", "background", "attributes"}
    assert by_name["attributes"].kind == "multilabel"
    assert by_name["attributes"].labels == ("border", "second_object", "rotated", "striped")
    assert all(by_name[n].kind == "multiclass" for n in ("shape", "color", "size", "position", "background"))


def test_same_seed_same_data_for_any_shard_count(base_url):
    urls = {name: join(base_url, name) for name in ("one", "three", "other")}
    synthesize(urls["one"], 40, 1, seed=3)
    three_meta = synthesize(urls["three"], 40, 3, seed=3)
    synthesize(urls["other"], 40, 1, seed=4)
    assert len(list_shards(urls["three"])) == 3
    assert three_meta.num_rows == 40 and three_meta.source == "synth seed=3"
    one, three, other = (_table(urls[name]) for name in ("one", "three", "other"))
    assert one.equals(three)
    assert one.column("id").to_pylist()[:2] == ["synth-3-0", "synth-3-1"]
    assert other.column("image").to_pylist() != one.column("image").to_pylist()


def test_render_sample_is_deterministic_and_in_range():
    counts = {t.name: np.zeros(t.num_outputs, dtype=int) for t in SYNTH_TASKS}
    for index in range(300):
        pixels, labels = render_sample(7, index, image_size=24)
        assert pixels.shape == (24, 24, 3) and pixels.dtype == np.uint8
        for task in SYNTH_TASKS:
            if task.kind == "multiclass":
                counts[task.name][labels[task.name]] += 1
            else:
                assert set(labels[task.name]) <= {0, 1} and len(labels[task.name]) == task.num_outputs
                counts[task.name] += labels[task.name]
    # every class and every attribute occurs, none dominates
    for name, count in counts.items():
        assert count.min() > 0.1 * 300 / len(count), (name, count)
    again, labels_again = render_sample(7, 5, image_size=24)
    first, labels_first = render_sample(7, 5, image_size=24)
    np.testing.assert_array_equal(again, first)
    assert labels_again == labels_first
    assert not np.array_equal(render_sample(7, 6, image_size=24)[0], first)


def test_images_are_not_trivial():
    pixels = np.stack([render_sample(0, i)[0] for i in range(20)]).astype(float)
    assert pixels.std(axis=(1, 2, 3)).min() > 5  # textured, not flat
    assert np.abs(pixels[0] - pixels[1]).mean() > 10


def test_two_thousand_images_in_four_shards(tmp_path):
    url = str(tmp_path / "synth")
    seen = []
    meta = synthesize(url, 2000, 4, seed=0, progress=seen.append)
    assert meta.num_rows == 2000 and meta.image_size == 32
    assert [read_shard(s, ["id"]).num_rows for s in list_shards(url)] == [500, 500, 500, 500]
    assert seen[-1] == 2000 and seen == sorted(seen)
    assert check_shards(url) == 2000
    first = read_shard(list_shards(url)[0], ["image"]).column("image")[0].as_py()
    assert decode_image(first).shape == (32, 32, 3)


@pytest.mark.parametrize(("kwargs", "message"), [({"num_samples": 0}, "number of samples"), ({"image_size": 8}, "image size")])
def test_bad_arguments(tmp_path, kwargs, message):
    args = {"out_url": str(tmp_path / "s"), "num_samples": 4, "num_shards": 1, "seed": 0} | kwargs
    with pytest.raises(BadInputError, match=message):
        synthesize(**args)
