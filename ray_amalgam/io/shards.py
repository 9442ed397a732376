"""Datasets as Parquet shards on any fsspec URL.

Layout: `<url>/_dataset.json` (DatasetMeta) and `<url>/part-00000.parquet`, ... with columns
`id` (string), `image` (PNG/JPEG bytes) and optional label columns named after tasks:
multiclass -> int64 class index, multilabel -> list<int8> of 0/1 in the task's label order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ray_amalgam.io.fs import committed_directory, exists, file_sizes, join, read_bytes, resolve, write_bytes
from ray_amalgam.io.images import decode_batch
from ray_amalgam.io.metafile import load_versioned, manifest_json
from ray_amalgam.spec import (
    DATASET_FORMAT_VERSION,
    BadInputError,
    DatasetMeta,
    TaskSpec,
    dump_spec_json,
)

DATASET_META = "_dataset.json"
"""The dataset's metadata file. Its leading underscore makes directory readers that follow the
Hive/Spark convention (pyarrow.dataset, Spark, DuckDB, pandas, Ray Data) skip it: under a plain
name they try to read it as Parquet and fail."""
LEGACY_DATASET_META = "dataset.json"
"""The metadata file's name in datasets written before `_dataset.json`; still read."""
ID = "id"
IMAGE = "image"
_SHARD_GLOB = "part-*.parquet"


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def label_type(task: TaskSpec) -> pa.DataType:
    """The Arrow type of a task's label column."""
    return pa.int64() if task.kind == "multiclass" else pa.list_(pa.int8())


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _check_class_indices(where: str, values: np.ndarray, task: TaskSpec, first_row: int) -> None:
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise BadInputError(f"{where}: column '{task.name}': expected integer class indices, got {values.dtype}")
    bad = (values < 0) | (values >= task.num_outputs)
    if bad.any():
        i = int(np.argmax(bad))
        raise BadInputError(
            f"{where} row {first_row + i}: column '{task.name}': class index {values[i]} is out of range 0..{task.num_outputs - 1}"
        )


def _check_label_lengths(where: str, lengths: np.ndarray, task: TaskSpec, first_row: int) -> None:
    bad = lengths != task.num_outputs
    if bad.any():
        i = int(np.argmax(bad))
        raise BadInputError(
            f"{where} row {first_row + i}: column '{task.name}': expected {task.num_outputs} 0/1 values "
            f"({', '.join(task.labels)}), got {lengths[i]}"
        )


def _check_label_bits(where: str, matrix: np.ndarray, task: TaskSpec, first_row: int) -> None:
    if matrix.size and not (np.issubdtype(matrix.dtype, np.integer) or matrix.dtype == np.bool_):
        raise BadInputError(f"{where}: column '{task.name}': expected 0/1 integers, got {matrix.dtype}")
    bad = ((matrix != 0) & (matrix != 1)).any(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise BadInputError(f"{where} row {first_row + i}: column '{task.name}': expected only 0/1 values, got {matrix[i].tolist()}")


def _label_array(where: str, task: TaskSpec, values: Sequence[Any], first_row: int) -> pa.Array:
    """Validate one batch of a label column and convert it to its Arrow type."""
    if task.kind == "multiclass":
        indices = np.asarray(values)
        _check_class_indices(where, indices, task, first_row)
        return pa.array(indices.astype(np.int64), type=pa.int64())
    _check_label_lengths(where, np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values)), task, first_row)
    matrix = np.asarray(values).reshape(len(values), task.num_outputs)
    _check_label_bits(where, matrix, task, first_row)
    offsets = pa.array(np.arange(0, matrix.size + 1, task.num_outputs, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.astype(np.int8).ravel()))


class ShardWriter:
    """Stream rows into `num_shards` Parquet shards, committed atomically with `_dataset.json` on exit.

    Rows go to shards in contiguous chunks when `num_rows` is known up front (shard order = row
    order), otherwise round-robin. At most `rows_per_group` rows per shard are buffered.
    """

    def __init__(
        self,
        url: str,
        meta: DatasetMeta,
        num_shards: int,
        rows_per_group: int = 1024,
        num_rows: int | None = None,
    ) -> None:
        if num_shards < 1:
            raise BadInputError(f"{url}: number of shards must be at least 1, got {num_shards}")
        if rows_per_group < 1:
            raise ValueError(f"rows_per_group must be at least 1, got {rows_per_group}")
        self.url = url
        self.meta = meta
        self.num_shards = num_shards
        self.rows_per_group = rows_per_group
        self.num_rows = num_rows
        self.rows_written = 0
        self._schema: pa.Schema | None = None
        self._pending: dict[int, list[pa.Table]] = {}
        self._writers: dict[int, pq.ParquetWriter] = {}
        self._directory = committed_directory(url, DATASET_META)
        self._tmp_url = ""

    def __enter__(self) -> ShardWriter:
        self._tmp_url = self._directory.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            try:
                self._finish()
            except BaseException as error:
                self._abort(type(error), error, error.__traceback__)
                raise
            self._directory.__exit__(None, None, None)
        else:
            self._abort(exc_type, exc, tb)

    def write(self, rows: dict[str, Sequence[Any]]) -> None:
        """Append a batch given as column name -> values (same length for every column)."""
        if not self._tmp_url:
            raise RuntimeError("ShardWriter.write needs an open `with ShardWriter(...)` block")
        table = self._to_table(rows)
        if table.num_rows == 0:
            return
        shard_ids = self._shard_ids(table.num_rows)
        for shard in np.unique(shard_ids).tolist():
            self._pending.setdefault(shard, []).append(table.take(np.flatnonzero(shard_ids == shard)))
            self._flush(shard, final=False)
        self.rows_written += table.num_rows

    def _shard_ids(self, count: int) -> np.ndarray:
        index = self.rows_written + np.arange(count)
        if self.num_rows is None:
            return index % self.num_shards
        if index[-1] >= self.num_rows:
            raise ValueError(f"{self.url}: more rows written than the {self.num_rows} declared")
        bounds = np.arange(self.num_shards + 1) * self.num_rows // self.num_shards
        return np.searchsorted(bounds, index, side="right") - 1

    def _columns_schema(self, columns: Sequence[str]) -> pa.Schema:
        tasks = {t.name: t for t in self.meta.tasks}
        missing = [c for c in (ID, IMAGE) if c not in columns]
        unknown = [c for c in columns if c not in (ID, IMAGE) and c not in tasks]
        if missing or unknown:
            raise BadInputError(
                f"{self.url}: rows must have columns 'id', 'image' and label columns named after the dataset's tasks "
                f"{list(tasks)}; missing {missing}, unknown {unknown}"
            )
        fields = [pa.field(ID, pa.string()), pa.field(IMAGE, pa.binary())]
        fields += [pa.field(t.name, label_type(t)) for t in self.meta.tasks if t.name in columns]
        return pa.schema(fields)

    def _to_table(self, rows: dict[str, Sequence[Any]]) -> pa.Table:
        if self._schema is None:
            self._schema = self._columns_schema(list(rows))
        elif set(rows) != set(self._schema.names):
            raise BadInputError(f"{self.url}: every batch needs the columns {self._schema.names}, got {list(rows)}")
        lengths = {name: len(values) for name, values in rows.items()}
        if len(set(lengths.values())) > 1:
            raise BadInputError(f"{self.url}: columns of one batch differ in length: {lengths}")
        arrays = []
        for field in self._schema:
            if field.name in (ID, IMAGE):
                try:
                    arrays.append(pa.array(rows[field.name], type=field.type))
                except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
                    raise BadInputError(f"{self.url}: column '{field.name}': expected {field.type} values ({_first_line(error)})") from None
            else:
                arrays.append(_label_array(self.url, self.meta.task(field.name), rows[field.name], self.rows_written))
        return pa.Table.from_arrays(arrays, schema=self._schema)

    def _writer(self, shard: int) -> pq.ParquetWriter:
        if shard not in self._writers:
            fs, path = resolve(join(self._tmp_url, shard_name(shard)))
            self._writers[shard] = pq.ParquetWriter(path, self._schema, filesystem=fs, use_dictionary=False)
        return self._writers[shard]

    def _flush(self, shard: int, final: bool) -> None:
        """Write whole row groups of the buffered rows (all of them when `final`)."""
        if not self._pending.get(shard):
            return
        pending = pa.concat_tables(self._pending[shard])
        ready = pending.num_rows if final else pending.num_rows // self.rows_per_group * self.rows_per_group
        if ready:
            self._writer(shard).write_table(pending.slice(0, ready), row_group_size=self.rows_per_group)
        self._pending[shard] = [pending.slice(ready)] if ready < pending.num_rows else []

    def _finish(self) -> None:
        if self.num_rows is not None and self.rows_written != self.num_rows:
            raise ValueError(f"{self.url}: {self.rows_written} rows written but {self.num_rows} declared")
        if self._schema is None:
            self._schema = self._columns_schema([ID, IMAGE, *(t.name for t in self.meta.tasks)])
        for shard in range(self.num_shards):
            self._flush(shard, final=True)
            self._writer(shard).close()
        self._writers.clear()
        meta = self.meta.model_copy(update={"num_rows": self.rows_written})
        write_bytes(join(self._tmp_url, DATASET_META), manifest_json(json.loads(dump_spec_json(meta)), file_sizes(self._tmp_url)))

    def _abort(self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        for writer in self._writers.values():
            with contextlib.suppress(Exception):
                writer.close()
        self._writers.clear()
        self._directory.__exit__(exc_type, exc, tb)


def dataset_meta_url(url: str) -> str | None:
    """URL of a dataset's metadata file: `_dataset.json`, or the older `dataset.json` where only
    that exists; None if the directory has neither."""
    for name in (DATASET_META, LEGACY_DATASET_META):
        meta_url = join(url, name)
        if exists(meta_url):
            return meta_url
    return None


def _require_meta_url(url: str) -> str:
    meta_url = dataset_meta_url(url)
    if meta_url is None:
        raise BadInputError(
            f"{join(url, DATASET_META)}: not found; expected a dataset directory with {DATASET_META} and "
            "part-*.parquet shards (made by `ray-amalgam data synth` or `data pack`)"
        )
    return meta_url


def read_dataset_meta(url: str) -> DatasetMeta:
    """The dataset's metadata (`_dataset.json`, or the older `dataset.json`), validated;
    BadInputError naming the file if missing or invalid."""
    return load_versioned(DatasetMeta, _require_meta_url(url), DATASET_FORMAT_VERSION)


def read_dataset_meta_bytes(url: str) -> bytes:
    """The metadata file's raw content (whichever name it has), e.g. to fingerprint the data."""
    return read_bytes(_require_meta_url(url))


def list_shards(url: str) -> list[str]:
    """Shard URLs of a dataset, in order; BadInputError if there are none."""
    fs, path = resolve(url)
    names = sorted(posixpath.basename(p) for p in fs.glob(posixpath.join(path, _SHARD_GLOB)))
    if not names:
        raise BadInputError(f"{url}: no {_SHARD_GLOB} shards found; expected a dataset directory")
    return [join(url, name) for name in names]


@contextlib.contextmanager
def _open_shard(shard_url: str, columns: Sequence[str] | None) -> Iterator[pq.ParquetFile]:
    """An open shard whose schema holds `columns`; Arrow/IO failures while it is used name the shard."""
    fs, path = resolve(shard_url)
    try:
        handle = fs.open(path, "rb")
    except FileNotFoundError:
        raise BadInputError(f"{shard_url}: shard not found") from None
    with handle:
        try:
            shard = pq.ParquetFile(handle)
        except (pa.ArrowException, OSError) as error:
            raise BadInputError(f"{shard_url}: not a readable Parquet file ({_first_line(error)})") from None
        names = shard.schema_arrow.names
        for column in columns or ():
            if column not in names:
                raise BadInputError(f"{shard_url}: no column '{column}'; the shard has columns {names}")
        try:
            yield shard
        except (pa.ArrowException, OSError) as error:
            raise BadInputError(f"{shard_url}: corrupt Parquet data ({_first_line(error)})") from None


def read_shard(shard_url: str, columns: list[str] | None = None) -> pa.Table:
    """One whole shard, only `columns` if given."""
    with _open_shard(shard_url, columns) as shard:
        return shard.read(columns=columns)


def iter_shard_batches(shard_url: str, columns: list[str], batch_size: int) -> Iterator[pa.RecordBatch]:
    """One shard's rows in order, `batch_size` at a time (the last may be shorter), streaming."""
    with _open_shard(shard_url, columns) as shard:
        yield from shard.iter_batches(batch_size=batch_size, columns=columns)


def iter_batches(url: str, columns: list[str] | None = None, batch_size: int = 256) -> Iterator[pa.Table]:
    """Tables of `batch_size` rows (the last may be shorter) over all shards in order, streaming."""
    pending: list[pa.RecordBatch] = []
    count = 0
    schema: pa.Schema | None = None
    first_shard = ""
    for shard_url in list_shards(url):
        with _open_shard(shard_url, columns) as shard:
            shard_schema = shard.schema_arrow if columns is None else pa.schema([shard.schema_arrow.field(c) for c in columns])
            if schema is None:
                schema, first_shard = shard_schema, shard_url
            elif not shard_schema.equals(schema):
                raise BadInputError(f"{shard_url}: columns {shard_schema} differ from those of {first_shard} ({schema})".replace("\n", "; "))
            for batch in shard.iter_batches(batch_size=batch_size, columns=columns):
                pending.append(batch)
                count += batch.num_rows
                while count >= batch_size:
                    table = pa.Table.from_batches(pending, schema=schema)
                    yield table.slice(0, batch_size)
                    rest = table.slice(batch_size)
                    pending, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(pending, schema=schema)


def _task_summary(task: TaskSpec) -> dict[str, Any]:
    return {"name": task.name, "kind": task.kind, "names": list(task.names)}


@dataclass(frozen=True)
class DuplicateIds:
    """Ids that occur more than once in a dataset: how many, and one of them with its shards."""

    count: int
    """Distinct ids that occur more than once."""
    example: str
    shards: tuple[str, ...]
    """The shard URLs holding `example`, once per occurrence (a shard repeats if it holds it twice)."""

    def describe(self) -> str:
        names = [posixpath.basename(s) for s in self.shards]
        where = f"{len(names)} times in {names[0]}" if len(set(names)) == 1 else "in " + " and ".join(names)
        return f"{self.count} id(s) occur more than once, e.g. '{self.example}' {where}"


def _duplicate_ids(shard_urls: Sequence[str], ids: Sequence[pa.ChunkedArray]) -> DuplicateIds | None:
    """The repeated ids among the id columns of `shard_urls` (same order), if any."""
    column = pa.chunked_array([c.cast(pa.string()) for c in ids], type=pa.string())
    shard = np.repeat(np.arange(len(ids)), [len(c) for c in ids])
    table = pa.table({ID: column, "shard": shard})
    counts = table.group_by(ID, use_threads=False).aggregate([("shard", "count")])
    repeated = counts.filter(pc.greater(counts["shard_count"], 1))
    if repeated.num_rows == 0:
        return None
    example = repeated[ID][0].as_py()
    holders = table.filter(pc.equal(table[ID], example))["shard"].to_pylist()
    return DuplicateIds(repeated.num_rows, example, tuple(shard_urls[i] for i in holders))


def _refuse_duplicates(url: str, shard_urls: Sequence[str], ids: Sequence[pa.ChunkedArray]) -> None:
    # Exactly-once training, the teacher-output store and every join by id assume unique ids.
    duplicates = _duplicate_ids(shard_urls, ids)
    if duplicates is not None:
        raise BadInputError(f"{url}: {duplicates.describe()}; expected unique ids (is a shard copied under a second name?)")


def read_ids(url: str) -> list[str]:
    """Every row's id, in shard order; BadInputError naming the shards if an id repeats."""
    shard_urls = list_shards(url)
    ids = [read_shard(shard_url, [ID]).column(ID) for shard_url in shard_urls]
    _refuse_duplicates(url, shard_urls, ids)
    return [i for column in ids for i in column.to_pylist()]


def count_rows(shard_urls: Sequence[str]) -> int:
    """The shards' rows, from their Parquet footers."""
    total = 0
    for shard_url in shard_urls:
        with _open_shard(shard_url, None) as shard:
            total += shard.metadata.num_rows
    return total


def inspect_dataset(url: str) -> dict[str, Any]:
    """What `ray-amalgam data inspect` shows: shards, rows, columns, image size, repeated ids, tasks."""
    meta = read_dataset_meta(url)
    shards = list_shards(url)
    rows = 0
    columns: dict[str, str] = {}
    image_size: list[int] | None = None
    ids = []
    for shard_url in shards:
        with _open_shard(shard_url, [ID, IMAGE]) as shard:
            rows += shard.metadata.num_rows
            columns = columns or {field.name: str(field.type) for field in shard.schema_arrow}
            ids.append(shard.read(columns=[ID]).column(ID))
            if image_size is None and shard.metadata.num_rows:
                first = next(shard.iter_batches(batch_size=1, columns=[IMAGE]))
                height, width = decode_batch(first.column(0).to_pylist(), shard_url).shape[1:3]
                image_size = [height, width]
    duplicates = _duplicate_ids(shards, ids)
    return {
        "url": url,
        "shards": len(shards),
        "rows": rows,
        "declared_rows": meta.num_rows,
        "columns": columns,
        "image_size": image_size,
        "declared_image_size": meta.image_size,
        "duplicate_ids": 0 if duplicates is None else duplicates.count,
        "duplicate_example": None if duplicates is None else {"id": duplicates.example, "shards": list(duplicates.shards)},
        "tasks": [_task_summary(t) for t in meta.tasks],
        "source": meta.source,
    }


def _check_schema(shard_url: str, schema: pa.Schema, meta: DatasetMeta) -> list[TaskSpec]:
    """Check id/image/label column types; return the tasks whose labels the shard carries."""
    def expect(ok: bool, column: str, expected: str) -> None:
        if not ok:
            raise BadInputError(f"{shard_url}: column '{column}' is {schema.field(column).type}, expected {expected}")

    expect(pa.types.is_string(schema.field(ID).type) or pa.types.is_large_string(schema.field(ID).type), ID, "string")
    image_type = schema.field(IMAGE).type
    expect(pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type), IMAGE, "binary image bytes")
    carried = [t for t in meta.tasks if t.name in schema.names]
    for task in carried:
        kind = schema.field(task.name).type
        if task.kind == "multiclass":
            expect(pa.types.is_integer(kind), task.name, "integer class indices (multiclass)")
        else:
            is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
            expect(is_list and (pa.types.is_integer(kind.value_type) or pa.types.is_boolean(kind.value_type)),
                   task.name, "list of 0/1 integers (multilabel)")
    return carried


def _check_labels(shard_url: str, table: pa.Table, tasks: Sequence[TaskSpec]) -> None:
    for task in tasks:
        column = table.column(task.name)
        if column.null_count:
            row = int(np.argmax(column.is_null().to_numpy(zero_copy_only=False)))
            raise BadInputError(f"{shard_url} row {row}: column '{task.name}': label is missing (null)")
        if task.kind == "multiclass":
            _check_class_indices(shard_url, column.to_numpy(), task, 0)
        else:
            flat = column.combine_chunks()
            _check_label_lengths(shard_url, pc.list_value_length(flat).to_numpy(), task, 0)
            matrix = flat.flatten().to_numpy(zero_copy_only=False).reshape(len(flat), task.num_outputs)
            _check_label_bits(shard_url, matrix, task, 0)


def check_shards(url: str, decode_all: bool = False, sample_rows: int = 16) -> int:
    """Validate every shard: schema, label values, unique ids, and image decoding/size (first
    `sample_rows` rows per shard, or every row with `decode_all`). Returns the number of rows."""
    meta = read_dataset_meta(url)
    meta_name = posixpath.basename(dataset_meta_url(url) or DATASET_META)
    total = 0
    shard_urls = list_shards(url)
    ids = []
    for shard_url in shard_urls:
        with _open_shard(shard_url, [ID, IMAGE]) as shard:
            tasks = _check_schema(shard_url, shard.schema_arrow, meta)
            if tasks:
                _check_labels(shard_url, shard.read(columns=[t.name for t in tasks]), tasks)
            ids.append(shard.read(columns=[ID]).column(ID))
            limit = shard.metadata.num_rows if decode_all else min(sample_rows, shard.metadata.num_rows)
            row = 0
            for batch in shard.iter_batches(batch_size=256, columns=[IMAGE]):
                if row >= limit:
                    break
                images = batch.column(0).slice(0, limit - row).to_pylist()
                decode_batch(images, shard_url, first_row=row, size=meta.image_size)
                row += len(images)
            total += shard.metadata.num_rows
    # Before the row count: a shard copied under a second name would otherwise read as a count mismatch.
    _refuse_duplicates(url, shard_urls, ids)
    if meta.num_rows is not None and total != meta.num_rows:
        raise BadInputError(f"{url}: shards hold {total} rows but {meta_name} says num_rows {meta.num_rows}")
    return total


def holdout_mask(ids: Sequence[str], fraction: float) -> np.ndarray:
    """Rows held out for evaluation, chosen by a hash of the id (stable across runs and shard counts)."""
    buckets = [int(hashlib.sha1(i.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF for i in ids]
    return np.asarray(buckets) < fraction
