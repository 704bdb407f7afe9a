"""Shards as a Beam stage (DESIGN.md sections 2 and 2b): deterministic assignment, one writer per shard,
the index written last.

    index = (records
             | "Shards" >> WriteShards(out_url, dataset_name="image_text", metadata_schema=SCHEMA,
                                       source=ShardSource(to_sample, size=expected_bytes)))

``records`` are whatever a track has: references whose bytes the writer loads (image_text), or rows
that already carry their bytes (a joined clip, a built document sample). A :class:`ShardSource` says
how to get a record's key, its expected tar bytes and its :class:`~curation.shards.Sample` (or a
:class:`~curation.shards.Failure`, counted by reason in the stats of the record's shard).

How a record finds its shard, without any worker or side input seeing more than a bucket, a shard
or one key per shard:

1. Key: ``safe_key(key)`` and the expected size of every record (the size only counts tar bytes,
   so it is cheap to carry; a record's payload stays with it and is not part of steps 2-4).
2. Buckets: key ranges from an approximate-quantiles combine over the keys (any split works: it only
   balances step 3, the ranks below do not depend on it). A Count per bucket, turned into global rank
   offsets, is a side input of at most ``num_buckets`` entries.
3. Rank: one worker per bucket sorts its (key, size) pairs, raises :class:`DuplicateKeyError` on a
   repeated key (equal keys share a bucket) and gives each its global rank in key order.
4. Split: ranks fall into blocks of ``samples_per_shard``; one worker per block applies
   :class:`~curation.shards.ShardWriter`'s own rule (:func:`~curation.shards.shard_starts`) to the
   block's sizes in rank order: a new shard when the next sample would make the tar pass
   ``max_shard_bytes``. The first key of every shard goes into one sorted list, the only per-shard
   side input; a shard's number is its position in that list, so numbering is consecutive (00000,
   00001, ...) by construction.
5. Write: each record is keyed by its shard number (a bisect in that list), grouped, and one writer
   per shard sorts its records by key, loads them and writes tar + parquet + stats json
   (:func:`~curation.shards.write_shard`, the same code as ShardWriter).
6. Index: the writers' ShardInfos are combined; index.json, then LATEST.json, are written last. A
   ``prepare`` step runs before any writer (they take its output as a side input): it removes the old
   index.json, temporary files of a killed run, and a LATEST.json that points at this version, so a
   crash before the new index never leaves LATEST naming a half-written folder.

max_shard_bytes: a shard never exceeds it, except a single sample larger than the limit, which gets a
shard of its own (ShardWriter's rule). Because blocks restart at every ``samples_per_shard``-th rank,
a block whose samples overflow the byte limit ends with a shorter shard: with the limit binding, the
stage writes at most one shard per block more than the sequential ShardWriter would. When the byte
limit does not bind (the defaults), both give the same shards and the same bytes. The sizes are the
source's expectation; a sample whose bytes turn out larger makes its tar larger, never moves it.

Failures keep the slot their record was given, as in img2dataset (a shard is samples_per_shard inputs,
successes plus failures): a shard can hold fewer samples, and one whose records all failed is an empty
tar, so numbers keep no gaps. Same inputs give the same assignment, so a re-run, on any runner and
any number of workers, writes byte-identical tars, parquets, stats and index.
"""

from __future__ import annotations

import bisect
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.transforms.stats import ApproximateQuantiles

from curation import shards, storage
from curation.shards import Failure, Sample, ShardIndex, WrittenShard
from pipelines.common import read_manifests  # noqa: F401 - the shard stages' reader, re-exported

DEFAULT_NUM_BUCKETS = 1024  # rank workers; at 10^9 records about 10^6 (key, size) pairs each


class ShardSource:
    """How the shard stage reads a track's records.

    ``to_sample(record)`` returns the Sample (or a Failure with a reason) and runs in the writer of the
    record's shard, once. ``key(record)`` is the raw sample key (default ``record["id"]``, or the key of a
    Sample). ``size(record)`` is the tar bytes the sample will take (:func:`curation.shards.sample_bytes`);
    by default the sample is built to measure it, which suits records that carry their bytes; give it
    for references whose bytes are expensive to load (e.g. from a byte count column). With no
    ``to_sample`` the records are Samples already.
    """

    def __init__(self, to_sample: Callable[[Any], Sample | Failure] | None = None, *,
                 key: Callable[[Any], str] | None = None, size: Callable[[Any], int] | None = None) -> None:
        self._to_sample, self._key, self._size = to_sample, key, size

    def setup(self) -> None:
        """Called once per worker before any record (subclasses load clients or models here)."""

    def key(self, record: Any) -> str:
        if self._key is not None:
            return self._key(record)
        return record.key if isinstance(record, Sample) else record["id"]

    def sample(self, record: Any) -> Sample | Failure:
        return record if self._to_sample is None else self._to_sample(record)

    def size(self, record: Any) -> int:
        if self._size is not None:
            return int(self._size(record))
        built = self.sample(record)
        return 0 if isinstance(built, Failure) else shards.sample_bytes(built)

    def load(self, records: Iterable[Any]) -> Iterator[Sample | Failure]:
        """The samples of one shard's records, in the order given."""
        for r in records:
            yield self.sample(r)


class _KeyRecords(beam.DoFn):
    """record -> (safe key, raw key, expected size, record)."""

    def __init__(self, source: ShardSource, max_key_len: int) -> None:
        self.source, self.max_key_len = source, max_key_len

    def setup(self) -> None:
        self.source.setup()

    def process(self, record: Any) -> Iterator[tuple[str, str, int, Any]]:
        raw = self.source.key(record)
        yield shards.safe_key(raw, self.max_key_len), raw, self.source.size(record), record


def _bucket(item: tuple[str, str, int, Any], bounds: Sequence[str]) -> tuple[int, tuple[str, str, int]]:
    key, raw, size, _ = item
    return bisect.bisect_right(bounds, key), (key, raw, size)


def _inner_bounds(quantiles: Sequence[str]) -> list[str]:
    # quantiles[0] and [-1] are the min and max key: only the cut points between them split buckets
    return sorted(set(quantiles[1:-1]))


def _offsets(counts: Mapping[int, int]) -> dict[int, int]:
    """Global rank of each bucket's first key: buckets are key ranges, so their order is key order."""
    out, total = {}, 0
    for b in sorted(counts):
        out[b] = total
        total += counts[b]
    return out


class _RankBucket(beam.DoFn):
    """(bucket, [(key, raw, size)]) -> (block, (rank, key, size)) per record, in global key order."""

    def __init__(self, samples_per_shard: int, out_url: str) -> None:
        self.samples_per_shard, self.out_url = samples_per_shard, out_url

    def process(self, element: tuple[int, Iterable[tuple[str, str, int]]], offsets: Mapping[int, int]):
        bucket, items = element
        rank = offsets[bucket]
        prev: tuple[str, str, int] | None = None
        for item in sorted(items):
            if prev is not None and prev[0] == item[0]:
                Metrics.counter("shards", "duplicate_keys").inc()
                raise shards.duplicate_key_error(item[0], item[1], self.out_url, prev[1])
            yield rank // self.samples_per_shard, (rank, item[0], item[2])
            rank += 1
            prev = item


def _block_starts(element: tuple[int, Iterable[tuple[int, str, int]]], samples_per_shard: int,
                  max_shard_bytes: int) -> Iterator[str]:
    """First key of each shard of one block (ShardWriter's rule over the block's sizes in rank order)."""
    _, items = element
    ordered = sorted(items)
    for i in shards.shard_starts((size for _, _, size in ordered), samples_per_shard, max_shard_bytes):
        yield ordered[i][1]


class _SortedList(beam.CombineFn):
    """All elements as one sorted list: used only on shard start keys (one per shard)."""

    def create_accumulator(self) -> list:
        return []

    def add_input(self, acc: list, x: Any) -> list:
        acc.append(x)
        return acc

    def merge_accumulators(self, accs: Iterable[list]) -> list:
        return [x for a in accs for x in a]

    def extract_output(self, acc: list) -> list:
        return sorted(acc)


def _assign(item: tuple[str, str, int, Any], starts: Sequence[str]) -> tuple[int, tuple[str, Any]]:
    key, _, _, record = item
    return bisect.bisect_right(starts, key) - 1, (key, record)


def _prepare(out_url: str, latest: str | None) -> bool:
    shards.prepare_version(out_url, latest)
    return True


class _WriteShard(beam.DoFn):
    """(shard number, [(key, record)]) -> WrittenShard: loads one shard's samples and writes its files."""

    def __init__(self, source: ShardSource, out_url: str, dataset: str, metadata_schema: pa.Schema,
                 mtime: int, max_key_len: int) -> None:
        self.source, self.out_url, self.dataset = source, out_url, dataset
        self.metadata_schema, self.mtime, self.max_key_len = metadata_schema, mtime, max_key_len

    def setup(self) -> None:
        self.source.setup()

    def process(self, element: tuple[int, Iterable[tuple[str, Any]]], prepared: bool) -> Iterator[WrittenShard]:
        assert prepared  # the side input only orders this after prepare_version
        number, items = element
        # a group arrives in any order: sorting by key makes the tar's member order the input's id order
        records = [r for _, r in sorted(items, key=lambda kv: kv[0])]
        written = shards.write_shard(self.source.load(records), self.out_url, number,
                                     metadata_schema=self.metadata_schema, mtime=self.mtime, max_key_len=self.max_key_len)
        Metrics.counter("shards", f"{self.dataset}_shards_written").inc()
        Metrics.counter("shards", f"{self.dataset}_samples_written").inc(written.info.samples)
        Metrics.counter("shards", f"{self.dataset}_bytes_written").inc(written.info.bytes)
        for reason, n in written.info.failures.items():
            Metrics.counter("shards", f"{self.dataset}_failed_{reason}").inc(n)
        yield written


class WriteShards(beam.PTransform):
    """records -> a one-element PCollection holding the ShardIndex of ``out_url`` (a version folder),
    written as the module docstring describes; with ``publish_root``, LATEST.json of
    ``shards/<dataset_name>/`` under it points at ``out_url`` once index.json is written."""

    def __init__(
        self,
        out_url: str,
        *,
        dataset_name: str,
        metadata_schema: pa.Schema,
        source: ShardSource | None = None,
        lineage: Mapping[str, Any] | None = None,
        samples_per_shard: int = shards.DEFAULT_SAMPLES_PER_SHARD,
        max_shard_bytes: int = shards.DEFAULT_MAX_SHARD_BYTES,
        mtime: int = 0,
        max_key_len: int = shards.DEFAULT_MAX_KEY_LEN,
        publish_root: str | None = None,
        num_buckets: int = DEFAULT_NUM_BUCKETS,
    ) -> None:
        super().__init__()
        if samples_per_shard < 1:
            raise ValueError("samples_per_shard must be >= 1")
        if max_shard_bytes < tarfile.RECORDSIZE:
            raise ValueError(f"max_shard_bytes must be >= {tarfile.RECORDSIZE}")
        if num_buckets < 1:
            raise ValueError("num_buckets must be >= 1")
        shards.shard_schema(metadata_schema)  # fail at construction, not in a worker
        self.out_url = out_url.rstrip("/")
        self.dataset_name, self.metadata_schema = dataset_name, metadata_schema
        self.source = source or ShardSource()
        self.lineage = dict(lineage or {})
        self.samples_per_shard, self.max_shard_bytes = samples_per_shard, max_shard_bytes
        self.mtime, self.max_key_len = int(mtime), max_key_len
        self.publish_root, self.num_buckets = publish_root, num_buckets

    def _latest(self) -> str | None:
        if self.publish_root is None:
            return None
        return storage.join(self.publish_root, "shards", self.dataset_name, shards.LATEST_NAME)

    def expand(self, records):  # noqa: ANN001, ANN201 - Beam's signature
        spp, max_bytes, out_url = self.samples_per_shard, self.max_shard_bytes, self.out_url
        keyed = records | "Key" >> beam.ParDo(_KeyRecords(self.source, self.max_key_len))

        bounds = (keyed | "Keys" >> beam.Map(lambda t: t[0])
                  | "Quantiles" >> ApproximateQuantiles.Globally(self.num_buckets + 1)
                  | "Bounds" >> beam.Map(_inner_bounds))
        bucketed = keyed | "Bucket" >> beam.Map(_bucket, beam.pvalue.AsSingleton(bounds))
        offsets = (bucketed | "CountPerBucket" >> beam.combiners.Count.PerKey()
                   | "CountsToDict" >> beam.combiners.ToDict()
                   | "Offsets" >> beam.Map(_offsets))
        ranked = (bucketed | "GroupBuckets" >> beam.GroupByKey()
                  | "Rank" >> beam.ParDo(_RankBucket(spp, out_url), beam.pvalue.AsSingleton(offsets)))
        starts = (ranked | "GroupBlocks" >> beam.GroupByKey()
                  | "SplitBlocks" >> beam.FlatMap(_block_starts, spp, max_bytes)
                  | "ShardStarts" >> beam.CombineGlobally(_SortedList()))

        prepared = (records.pipeline | "Version" >> beam.Create([out_url])
                    | "Prepare" >> beam.Map(_prepare, self._latest()))
        written = (keyed | "Assign" >> beam.Map(_assign, beam.pvalue.AsSingleton(starts))
                   | "GroupShards" >> beam.GroupByKey()
                   | "Write" >> beam.ParDo(_WriteShard(self.source, out_url, self.dataset_name, self.metadata_schema,
                                                       self.mtime, self.max_key_len),
                                           beam.pvalue.AsSingleton(prepared)))
        # small: one ShardInfo (name, counts, sha256) per shard, not per record: 10^9 samples at the
        # default 10^4 per shard are 10^5 infos, a few MB, gathered once to write index.json
        return (written | "CombineInfos" >> beam.combiners.ToList()
                | "Index" >> beam.Map(_finalize, self._index_args(), beam.pvalue.AsSingleton(prepared)))

    def _index_args(self) -> dict[str, Any]:
        return {"out_url": self.out_url, "dataset_name": self.dataset_name, "schema": shards.shard_schema(self.metadata_schema),
                "lineage": self.lineage, "samples_per_shard": self.samples_per_shard,
                "max_shard_bytes": self.max_shard_bytes, "mtime": self.mtime, "max_key_len": self.max_key_len,
                "publish_root": self.publish_root}


def _finalize(written: Sequence[WrittenShard], args: Mapping[str, Any], prepared: bool) -> ShardIndex:
    """index.json from the combined shard infos (after every writer, and after prepare even when there
    are no shards), then LATEST.json."""
    assert prepared
    ordered = sorted(written, key=lambda w: w.number)
    fields: dict[str, int] = {}
    for w in ordered:
        for ext, n in w.fields.items():
            fields[ext] = fields.get(ext, 0) + n
    index = shards.assemble_index(
        args["out_url"], dataset_name=args["dataset_name"], shards=[w.info for w in ordered], fields=fields,
        schema=args["schema"], lineage=args["lineage"], samples_per_shard=args["samples_per_shard"],
        max_shard_bytes=args["max_shard_bytes"], mtime=args["mtime"], max_key_len=args["max_key_len"])
    shards.finish_version(index)
    if args["publish_root"] is not None:
        shards.publish_latest(args["publish_root"], index.dataset, index.version, index.url)
    return index
