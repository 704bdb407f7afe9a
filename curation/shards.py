"""WebDataset shard writer in img2dataset's layout (DESIGN.md section 2).

A dataset version is a folder ``shards/<dataset>/<version>/`` holding, per shard ``NNNNN``:

- ``NNNNN.tar``: the samples, one tar member ``<key>.<ext>`` per field, members of a sample adjacent
  and sorted by extension (what ``webdataset.WebDataset`` expects);
- ``NNNNN.parquet``: one row per sample, ``key`` plus the caller's metadata columns (no bytes);
- ``NNNNN_stats.json``: counts, bytes, sha256 and failures by reason;

and one ``index.json``: shard list (samples, bytes, sha256), parquet schema, sample fields and the
caller's source lineage. ``index.json`` is written last, so a reader that finds it finds complete shards.

Re-running with the same inputs gives the same bytes in every file: tar members carry a fixed mtime,
uid/gid 0, empty owner names and mode 0o644, the member order follows the input, parquet and json are
written deterministically and nothing records the wall-clock time.

Only the shard writer copies sample bytes (DESIGN.md section 2). Two ways to write a version:

- :class:`ShardWriter` / :func:`write_shards`: one sequential writer per version folder at a time;
- the pieces a distributed stage (pipelines/shards.py) runs: :func:`prepare_version` once, then
  :func:`write_shard` for each shard in any order and on any worker (its number decided up front,
  e.g. with :func:`shard_starts`, the rule ShardWriter splits by), then :func:`assemble_index` and
  :func:`finish_version` once, last. Both paths share the code that makes a shard's bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import queue
import re
import tarfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from curation import storage

INDEX_NAME = "index.json"
LATEST_NAME = "LATEST.json"
INDEX_FORMAT_VERSION = 1
DEFAULT_SAMPLES_PER_SHARD = 10_000
DEFAULT_MAX_SHARD_BYTES = 2**30  # 1 GiB: large enough for sequential reads, small enough to shuffle
DEFAULT_MAX_KEY_LEN = 64
MAX_EXT_LEN = 32  # key (64) + '.' + ext (32) fits the 100-byte ustar name field

_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_USTAR_MAX_SIZE = 8**11 - 1  # largest member size a ustar header holds (just under 8 GiB)
_SAFE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_UNSAFE_RUN_RE = re.compile(r"[^A-Za-z0-9_-]+")
_EXT_RE = re.compile(r"[a-z0-9][a-z0-9_-]*(?:\.[a-z0-9][a-z0-9_-]*)*")
_SHARD_FILE_RE = re.compile(r"(\d{5,})(\.tar|\.parquet|_stats\.json)")
_KEY_HASH_CHARS = 12  # 48 bits of blake2b: collisions only matter between keys that sanitize alike


class DuplicateKeyError(ValueError):
    """Two samples of one dataset version map to the same (safe) key."""


@dataclass(frozen=True)
class Sample:
    """One training sample: a key, its fields as ``{extension: bytes}`` and parquet metadata."""

    key: str
    fields: Mapping[str, bytes]
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failure:
    """A record that did not become a sample; counted by reason in the stats of the open shard."""

    key: str
    reason: str


@dataclass(frozen=True)
class ShardInfo:
    """One shard as listed in index.json."""

    name: str
    samples: int
    bytes: int
    sha256: str
    payload_bytes: int
    first_key: str
    last_key: str
    failures: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tar": f"{self.name}.tar",
            "parquet": f"{self.name}.parquet",
            "stats": f"{self.name}_stats.json",
            "samples": self.samples,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "payload_bytes": self.payload_bytes,
            "first_key": self.first_key,
            "last_key": self.last_key,
            "failures": dict(sorted(self.failures.items())),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ShardInfo:
        return cls(
            name=obj["name"],
            samples=int(obj["samples"]),
            bytes=int(obj["bytes"]),
            sha256=obj["sha256"],
            payload_bytes=int(obj["payload_bytes"]),
            first_key=obj["first_key"],
            last_key=obj["last_key"],
            failures=dict(obj.get("failures", {})),
        )


@dataclass(frozen=True)
class ShardIndex:
    """The content of index.json, plus the folder it was read from or written to (``url``).

    The url is not stored in the file, so a copied or moved dataset keeps identical bytes.
    """

    url: str
    dataset: str
    version: str
    shards: tuple[ShardInfo, ...]
    fields: tuple[str, ...]
    schema: tuple[Mapping[str, Any], ...]
    lineage: Mapping[str, Any]
    settings: Mapping[str, Any]
    failures: Mapping[str, int]

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def total_bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    @property
    def tar_urls(self) -> list[str]:
        return [storage.join(self.url, f"{s.name}.tar") for s in self.shards]

    @property
    def parquet_urls(self) -> list[str]:
        return [storage.join(self.url, f"{s.name}.parquet") for s in self.shards]

    @property
    def columns(self) -> list[str]:
        return [c["name"] for c in self.schema]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "webdataset",
            "layout": "img2dataset",
            "format_version": INDEX_FORMAT_VERSION,
            "dataset": self.dataset,
            "version": self.version,
            "num_shards": len(self.shards),
            "num_samples": self.num_samples,
            "total_bytes": self.total_bytes,
            "fields": list(self.fields),
            "schema": [dict(c) for c in self.schema],
            "failures": dict(sorted(self.failures.items())),
            "settings": dict(self.settings),
            "lineage": dict(self.lineage),
            "shards": [s.to_json() for s in self.shards],
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], url: str) -> ShardIndex:
        if obj.get("format_version") != INDEX_FORMAT_VERSION:
            raise ValueError(f"{url}: unsupported index format_version {obj.get('format_version')!r}")
        return cls(
            url=url,
            dataset=obj["dataset"],
            version=obj["version"],
            shards=tuple(ShardInfo.from_json(s) for s in obj["shards"]),
            fields=tuple(obj["fields"]),
            schema=tuple(obj["schema"]),
            lineage=obj.get("lineage", {}),
            settings=obj.get("settings", {}),
            failures=dict(obj.get("failures", {})),
        )


# ---------------------------------------------------------------------------------------------------
# keys and fields


def safe_key(raw: str, max_len: int = DEFAULT_MAX_KEY_LEN) -> str:
    """A WebDataset-safe sample key for ``raw``: only ``[A-Za-z0-9_-]``, at most ``max_len`` chars.

    WebDataset splits a member name at the first '.' of its basename, so a key must hold no '.', '/',
    whitespace or other odd characters. A key that is already safe and short enough is returned as is.
    Otherwise each run of other characters becomes '_', the result is cut to leave room, and
    ``_`` + 12 hex chars of blake2b(raw) are appended. The hash is of the raw key, so two raw keys that
    sanitize alike ("a.b", "a/b") stay distinct, and the rule depends on nothing but ``raw``
    (same key whatever the order or the partitioning of the input). The result is a fixed point.
    """
    if max_len < _KEY_HASH_CHARS + 2:
        raise ValueError(f"max_len must be >= {_KEY_HASH_CHARS + 2}")
    if len(raw) <= max_len and _SAFE_KEY_RE.fullmatch(raw):
        return raw
    digest = hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    digest = digest[:_KEY_HASH_CHARS]
    base = _UNSAFE_RUN_RE.sub("_", raw)[: max_len - _KEY_HASH_CHARS - 1]
    return f"{base}_{digest}" if base else digest


def is_safe_key(key: str, max_len: int = DEFAULT_MAX_KEY_LEN) -> bool:
    return 0 < len(key) <= max_len and _SAFE_KEY_RE.fullmatch(key) is not None


def _check_ext(ext: str) -> None:
    # WebDataset lower-cases extensions on read and treats '_'-prefixed fields as metadata.
    if not isinstance(ext, str) or len(ext) > MAX_EXT_LEN or not _EXT_RE.fullmatch(ext):
        raise ValueError(
            f"invalid field extension {ext!r}: use lower-case [a-z0-9_-] parts joined by '.', "
            f"at most {MAX_EXT_LEN} chars (e.g. 'jpg', 'txt', 'seg.png')"
        )


def _as_bytes(ext: str, data: Any) -> bytes | bytearray | memoryview:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    raise TypeError(f"field {ext!r} must be bytes or str, got {type(data).__name__}")


def _member_bytes(size: int) -> int:
    """Bytes one ustar member takes: header block plus data padded to the block size."""
    return _BLOCK + -(-size // _BLOCK) * _BLOCK


def _tar_bytes(offset: int) -> int:
    """Final tar size once the end-of-archive blocks and the record padding follow ``offset``."""
    end = offset + 2 * _BLOCK
    return -(-end // _RECORD) * _RECORD


def _tarinfo(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = mtime
    ti.mode = 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.type = tarfile.REGTYPE
    return ti


# ---------------------------------------------------------------------------------------------------
# writing


class _HashingSink:
    """Write-only file object: forwards to the shard stream, counts bytes, hashes on a helper thread.

    hashlib and file writes both release the GIL, so hashing on a second thread overlaps the write
    instead of adding to it. Chunks go to the hasher in batches of ~8 MB, so thread hand-offs stay
    rare, and the queue is bounded so a slow hasher cannot pile up sample bytes (<= ~40 MB pending).
    """

    _BATCH_BYTES = 8 << 20

    def __init__(self, f: Any) -> None:
        self._f = f
        self.offset = 0
        self._sha = hashlib.sha256()
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._q: queue.Queue = queue.Queue(maxsize=4)
        self._thread = threading.Thread(target=self._run, name="shard-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        update = self._sha.update
        while (batch := self._q.get()) is not None:
            for chunk in batch:
                update(chunk)

    def write(self, data: bytes) -> int:
        self._f.write(data)
        self._batch.append(data)
        self._batch_bytes += len(data)
        if self._batch_bytes >= self._BATCH_BYTES:
            self._q.put(self._batch)
            self._batch, self._batch_bytes = [], 0
        self.offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self.offset

    def finish(self) -> str:
        if self._batch:
            self._q.put(self._batch)
            self._batch, self._batch_bytes = [], 0
        self._q.put(None)
        self._thread.join()
        return self._sha.hexdigest()


class _OpenShard:
    """The shard being written: its atomic temp file, tar stream and per-shard tallies."""

    def __init__(self, url: str, name: str) -> None:
        self.name = name
        self._cm = storage.atomic_open(url, "wb")
        self._file = self._cm.__enter__()
        self.sink = _HashingSink(self._file)
        # copybufsize large: tarfile copies each member in one read instead of 16 KiB slices.
        self.tar = tarfile.open(fileobj=self.sink, mode="w", format=tarfile.USTAR_FORMAT, copybufsize=1 << 30)
        self.rows: list[dict[str, Any]] = []
        self.field_counts: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.payload_bytes = 0

    def commit(self) -> str:
        """Finish the tar and rename it into place; returns its sha256."""
        self.tar.close()
        digest = self.sink.finish()
        self._cm.__exit__(None, None, None)
        return digest

    def abort(self, exc: BaseException) -> None:
        """Drop the temporary tar (atomic_open removes it when it sees an exception)."""
        with contextlib.suppress(Exception):
            self.sink.finish()
        self._cm.__exit__(type(exc), exc, exc.__traceback__)


class ShardWriter:
    """Write samples into WebDataset shards under ``out_url`` (a version folder).

    A new shard starts when adding the next sample would exceed ``samples_per_shard`` or make the tar
    larger than ``max_shard_bytes`` (exact tar size, headers and padding included; a single sample
    larger than that gets a shard of its own). Keys go through :func:`safe_key`; a key seen twice
    raises :class:`DuplicateKeyError` (keys are tracked in memory for the whole version).

    Metadata columns follow ``metadata_schema`` when given; otherwise the schema is inferred from the
    first shard's rows and kept for all later shards, so every parquet file has the same schema.

    Opening a writer on an existing version removes its index.json first (the old index would no longer
    describe the folder), and closing removes shards left from an earlier, longer run. On an exception
    the open shard's temporary file is deleted and no index.json is written.
    """

    def __init__(
        self,
        out_url: str,
        *,
        dataset_name: str,
        lineage: Mapping[str, Any] | None = None,
        samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
        metadata_schema: pa.Schema | None = None,
        mtime: int = 0,
        max_key_len: int = DEFAULT_MAX_KEY_LEN,
    ) -> None:
        if samples_per_shard < 1:
            raise ValueError("samples_per_shard must be >= 1")
        if max_shard_bytes < _RECORD:
            raise ValueError(f"max_shard_bytes must be >= {_RECORD}")
        if metadata_schema is not None and "key" in metadata_schema.names:
            if metadata_schema.field("key").type != pa.string():
                raise ValueError("metadata_schema column 'key' must be a string")
            metadata_schema = metadata_schema.remove(metadata_schema.get_field_index("key"))
        self.out_url = out_url.rstrip("/")
        self.dataset_name = dataset_name
        self.lineage = dict(lineage or {})
        self.samples_per_shard = samples_per_shard
        self.max_shard_bytes = max_shard_bytes
        self.mtime = int(mtime)
        self.max_key_len = max_key_len
        self._schema: pa.Schema | None = (
            pa.schema([pa.field("key", pa.string(), nullable=False), *metadata_schema])
            if metadata_schema is not None
            else None
        )
        self._started = False
        self._closed = False
        self._shard: _OpenShard | None = None
        self._shards: list[ShardInfo] = []
        self._keys: set[str] = set()
        self._fields: dict[str, int] = {}
        self._pending_failures: dict[str, int] = {}
        self.index: ShardIndex | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> ShardWriter:
        self._start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.abort(exc)
        else:
            self.close()

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        prepare_version(self.out_url)

    def write(self, sample: Sample) -> str:
        """Add one sample; returns the key it got in the tar."""
        if self._closed:
            raise RuntimeError("writer is closed")
        self._start()
        key = safe_key(sample.key, self.max_key_len)
        if key in self._keys:
            raise duplicate_key_error(key, sample.key, self.out_url)
        members = _members(sample, self._schema)
        size = sum(_member_bytes(len(d)) for _, d in members)

        shard = self._shard
        if shard is not None and starts_new_shard(
            len(shard.rows), shard.sink.offset, size, self.samples_per_shard, self.max_shard_bytes
        ):
            self._close_shard()
            shard = None
        if shard is None:
            shard = self._open_shard()

        _add_sample(shard, key, members, sample.metadata, self.mtime)
        self._keys.add(key)
        if len(shard.rows) >= self.samples_per_shard:
            self._close_shard()  # full: commit now rather than at the next sample (a crash keeps it)
        return key

    def add_failure(self, key: str, reason: str) -> None:
        """Count a record that did not make it, under ``reason``, in the stats of the open shard.

        Failures that arrive while no shard is open (before the first sample, or right after a shard
        filled up) go to the next shard; those after the last sample are only counted in index.json.
        ``key`` is accepted for symmetry with Sample and not stored.
        """
        if self._closed:
            raise RuntimeError("writer is closed")
        self._start()
        tally = self._shard.failures if self._shard is not None else self._pending_failures
        tally[reason] = tally.get(reason, 0) + 1

    def close(self) -> ShardIndex:
        """Finish the last shard, remove stale shards of an earlier run, write index.json last."""
        if self._closed:
            assert self.index is not None
            return self.index
        self._start()
        try:
            if self._shard is not None:
                self._close_shard()
        except BaseException as exc:
            self.abort(exc)
            raise
        self.index = assemble_index(
            self.out_url,
            dataset_name=self.dataset_name,
            shards=self._shards,
            fields=self._fields,
            schema=self._schema,
            lineage=self.lineage,
            samples_per_shard=self.samples_per_shard,
            max_shard_bytes=self.max_shard_bytes,
            mtime=self.mtime,
            max_key_len=self.max_key_len,
            extra_failures=self._pending_failures,
        )
        finish_version(self.index)
        self._closed = True
        return self.index

    def abort(self, exc: BaseException | None = None) -> None:
        """Stop without an index: the open shard's temporary tar is removed."""
        self._closed = True
        if self._shard is not None:
            shard, self._shard = self._shard, None
            shard.abort(exc or RuntimeError("shard writer aborted"))

    # -- shards ------------------------------------------------------------------------------------

    def _open_shard(self) -> _OpenShard:
        name = shard_name(len(self._shards))
        self._shard = _OpenShard(storage.join(self.out_url, f"{name}.tar"), name)
        self._shard.failures, self._pending_failures = self._pending_failures, {}
        return self._shard

    def _close_shard(self) -> None:
        shard = self._shard
        assert shard is not None
        if self._schema is None:
            self._schema = _infer_schema(shard.rows)
        self._shard = None
        info = _commit_shard(shard, self._schema, self.out_url)
        for ext, n in shard.field_counts.items():
            self._fields[ext] = self._fields.get(ext, 0) + n
        self._shards.append(info)


def _members(sample: Sample, schema: pa.Schema | None) -> list[tuple[str, bytes | bytearray | memoryview]]:
    """The tar members of ``sample`` as (extension, bytes), sorted by extension, after the checks every
    writer applies (fields present, safe extensions, ustar size, metadata columns in the schema)."""
    if not sample.fields:
        raise ValueError(f"sample {sample.key!r} has no fields")
    members: list[tuple[str, bytes | bytearray | memoryview]] = []
    for ext in sorted(sample.fields):
        _check_ext(ext)
        data = _as_bytes(ext, sample.fields[ext])
        if len(data) > _USTAR_MAX_SIZE:
            raise ValueError(f"field {ext!r} of {sample.key!r} is larger than a ustar member allows")
        members.append((ext, data))
    if "key" in sample.metadata:
        raise ValueError(f"sample {sample.key!r}: metadata must not have a 'key' column")
    if schema is not None:
        extra = set(sample.metadata) - set(schema.names)
        if extra:
            raise ValueError(
                f"sample {sample.key!r}: metadata columns {sorted(extra)} are not in the schema "
                f"{schema.names}; pass metadata_schema with every column"
            )
    return members


def sample_bytes(sample: Sample) -> int:
    """Bytes ``sample`` adds to a tar (headers and padding included): what max_shard_bytes counts."""
    return sum(_member_bytes(len(_as_bytes(ext, data))) for ext, data in sample.fields.items())


def member_bytes(size: int) -> int:
    """Bytes one tar member of ``size`` payload bytes takes (a 512-byte header, data padded to 512)."""
    return _member_bytes(size)


def starts_new_shard(rows: int, offset: int, size: int, samples_per_shard: int, max_shard_bytes: int) -> bool:
    """Whether a sample of ``size`` tar bytes must open a new shard, given the open one has ``rows``
    samples and ``offset`` tar bytes: full, or the tar would pass ``max_shard_bytes`` (an empty shard
    always takes the sample, so one larger than the limit gets a shard of its own)."""
    return rows > 0 and (rows + 1 > samples_per_shard or _tar_bytes(offset + size) > max_shard_bytes)


def shard_starts(sizes: Iterable[int], samples_per_shard: int, max_shard_bytes: int) -> list[int]:
    """Positions where :class:`ShardWriter` opens a new shard when samples of ``sizes`` tar bytes come
    in this order (always starts with 0 when there is a sample)."""
    starts: list[int] = []
    rows = offset = 0
    for i, size in enumerate(sizes):
        if i == 0 or starts_new_shard(rows, offset, size, samples_per_shard, max_shard_bytes):
            starts.append(i)
            rows = offset = 0
        rows += 1
        offset += size
    return starts


def duplicate_key_error(key: str, raw: str, out_url: str, other: str | None = None) -> DuplicateKeyError:
    """The error for a second sample with (safe) key ``key``; ``other`` is the first one's raw key."""
    seen = f" and {other!r}" if other is not None and other != raw else ""
    return DuplicateKeyError(
        f"duplicate sample key {key!r} (raw key {raw!r}{seen}) in {out_url}; "
        "de-duplicate upstream or make the keys unique"
    )


def _add_sample(shard: _OpenShard, key: str, members: Sequence[tuple[str, Any]], metadata: Mapping[str, Any],
                mtime: int) -> None:
    for ext, data in members:
        shard.tar.addfile(_tarinfo(f"{key}.{ext}", len(data), mtime), io.BytesIO(data))
        shard.field_counts[ext] = shard.field_counts.get(ext, 0) + 1
        shard.payload_bytes += len(data)
    shard.rows.append({"key": key, **metadata})


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    columns = {name: [r.get(name) for r in rows] for name in schema.names}
    try:
        return pa.table(columns, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(
            f"shard metadata does not fit the schema {schema}: {exc}; pass metadata_schema to fix the column types"
        ) from exc


def _commit_shard(shard: _OpenShard, schema: pa.Schema, out_url: str) -> ShardInfo:
    """Rename the tar into place, then write its parquet and stats json; the shard's ShardInfo."""
    try:
        table = _table(shard.rows, schema)  # may raise: before the tar is renamed into place
    except BaseException as exc:
        shard.abort(exc)
        raise
    expected = _tar_bytes(shard.sink.offset)
    digest = shard.commit()
    if shard.sink.offset != expected:  # our size accounting drives max_shard_bytes
        raise AssertionError(f"tar size {shard.sink.offset} != predicted {expected}")
    storage.write_table(storage.join(out_url, f"{shard.name}.parquet"), table)
    info = ShardInfo(
        name=shard.name,
        samples=len(shard.rows),
        bytes=shard.sink.offset,
        sha256=digest,
        payload_bytes=shard.payload_bytes,
        first_key=shard.rows[0]["key"] if shard.rows else "",
        last_key=shard.rows[-1]["key"] if shard.rows else "",
        failures=dict(sorted(shard.failures.items())),
    )
    n_failed = sum(shard.failures.values())
    stats = {
        "shard": shard.name,
        "count": info.samples + n_failed,
        "successes": info.samples,
        "failed": n_failed,
        "failures": info.failures,
        "bytes": info.bytes,
        "payload_bytes": info.payload_bytes,
        "sha256": info.sha256,
        "fields": dict(sorted(shard.field_counts.items())),
        "first_key": info.first_key,
        "last_key": info.last_key,
    }
    storage.write_json(storage.join(out_url, f"{shard.name}_stats.json"), stats)
    return info


@dataclass(frozen=True)
class WrittenShard:
    """What one shard writer reports: the shard's index entry and how many members each field had."""

    number: int
    info: ShardInfo
    fields: Mapping[str, int]


def shard_name(number: int) -> str:
    """img2dataset's shard name: the number zero-padded to 5 digits (more digits past 99999)."""
    if number < 0:
        raise ValueError("shard number must be >= 0")
    return f"{number:05d}"


def write_shard(
    items: Iterable[Sample | Failure],
    out_url: str,
    number: int,
    *,
    metadata_schema: pa.Schema,
    mtime: int = 0,
    max_key_len: int = DEFAULT_MAX_KEY_LEN,
) -> WrittenShard:
    """Write one whole shard ``NNNNN.tar`` + ``.parquet`` + ``_stats.json`` of ``items``, in the order
    given, into the version folder ``out_url`` (which :func:`prepare_version` has prepared).

    The bytes come from the same code as :class:`ShardWriter`'s: the same samples in the same order give
    the same files. Failures are counted in this shard's stats. A shard whose items all failed is still
    written (an empty tar), so the numbering a caller assigned up front keeps no gaps. Keys go through
    :func:`safe_key`; a key twice in the shard raises :class:`DuplicateKeyError`. Several writers may run
    at once on one folder, each with its own ``number``; the tar is renamed into place only when complete.
    """
    schema = shard_schema(metadata_schema)
    name = shard_name(number)
    shard = _OpenShard(storage.join(out_url, f"{name}.tar"), name)
    raw_keys: dict[str, str] = {}
    try:
        for item in items:
            if isinstance(item, Failure):
                shard.failures[item.reason] = shard.failures.get(item.reason, 0) + 1
                continue
            key = safe_key(item.key, max_key_len)
            if key in raw_keys:
                raise duplicate_key_error(key, item.key, out_url, raw_keys[key])
            raw_keys[key] = item.key
            _add_sample(shard, key, _members(item, schema), item.metadata, mtime)
    except BaseException as exc:
        shard.abort(exc)
        raise
    info = _commit_shard(shard, schema, out_url)
    return WrittenShard(number=number, info=info, fields=dict(sorted(shard.field_counts.items())))


def shard_schema(metadata_schema: pa.Schema | None) -> pa.Schema:
    """The parquet schema of a shard: ``key`` first, then ``metadata_schema``'s columns (required)."""
    if metadata_schema is None:
        raise ValueError("metadata_schema is required when shards are written independently")
    if "key" in metadata_schema.names:
        if metadata_schema.field("key").type != pa.string():
            raise ValueError("metadata_schema column 'key' must be a string")
        metadata_schema = metadata_schema.remove(metadata_schema.get_field_index("key"))
    return pa.schema([pa.field("key", pa.string(), nullable=False), *metadata_schema])


def prepare_version(out_url: str, latest: str | None = None) -> None:
    """Make ``out_url`` ready for a new write: create it, remove its index.json (it would describe
    shards about to be overwritten) and temporary files a killed run left. With ``latest`` (a
    LATEST.json URL) that points at ``out_url``, remove that pointer too, so a crash before the new
    index never leaves LATEST naming a half-written version. Run once, before any shard writer starts."""
    fs, path = storage.filesystem(out_url)
    fs.makedirs(path, exist_ok=True)
    if latest is not None and storage.exists(latest):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            if storage.read_json(latest).get("url", "").rstrip("/") == out_url.rstrip("/"):
                fs.rm(storage.filesystem(latest)[1])
    if fs.exists(f"{path}/{INDEX_NAME}"):
        fs.rm(f"{path}/{INDEX_NAME}")
    for p in fs.ls(path, detail=False):
        if p.rstrip("/").rsplit("/", 1)[-1].startswith(".tmp-"):
            fs.rm(p)  # leftovers of a killed run


def assemble_index(
    out_url: str,
    *,
    dataset_name: str,
    shards: Sequence[ShardInfo],
    fields: Iterable[str],
    schema: pa.Schema | None,
    lineage: Mapping[str, Any] | None,
    samples_per_shard: int,
    max_shard_bytes: int,
    mtime: int = 0,
    max_key_len: int = DEFAULT_MAX_KEY_LEN,
    extra_failures: Mapping[str, int] | None = None,
) -> ShardIndex:
    """The ShardIndex of a version folder from its shards' infos, in shard order (``schema`` with its
    ``key`` column; None: key only). ``extra_failures`` are failures no shard holds."""
    names = [s.name for s in shards]
    if names != [shard_name(i) for i in range(len(shards))]:
        raise ValueError(f"shards must be numbered 00000, 00001, ... without gaps, got {names[:5]}...")
    failures: dict[str, int] = dict(extra_failures or {})
    for s in shards:
        for reason, n in s.failures.items():
            failures[reason] = failures.get(reason, 0) + n
    schema = schema or pa.schema([pa.field("key", pa.string(), nullable=False)])
    out_url = out_url.rstrip("/")
    return ShardIndex(
        url=out_url,
        dataset=dataset_name,
        version=out_url.rsplit("/", 1)[-1],
        shards=tuple(shards),
        fields=tuple(sorted(fields)),
        schema=tuple(_schema_json(schema)),
        lineage=dict(lineage or {}),
        settings={
            "samples_per_shard": samples_per_shard,
            "max_shard_bytes": max_shard_bytes,
            "tar_format": "ustar",
            "tar_mtime": int(mtime),
            "max_key_len": max_key_len,
        },
        failures=failures,
    )


def finish_version(index: ShardIndex) -> None:
    """Remove shard files numbered past the index (an earlier, longer run), then write index.json:
    the last file of a version, so a reader that finds it finds complete shards."""
    fs, path = storage.filesystem(index.url)
    for p in fs.ls(path, detail=False):
        m = _SHARD_FILE_RE.fullmatch(p.rstrip("/").rsplit("/", 1)[-1])
        if m and int(m.group(1)) >= len(index.shards):
            fs.rm(p)
    storage.write_json(storage.join(index.url, INDEX_NAME), index.to_json())


def _infer_schema(rows: list[dict[str, Any]]) -> pa.Schema:
    """key, then the metadata columns in order of first appearance, types inferred from all rows."""
    names: dict[str, None] = {}
    for r in rows:
        names.update(dict.fromkeys(r))
    names.pop("key", None)
    table = pa.table({n: [r.get(n) for r in rows] for n in names})
    nulls = [f.name for f in table.schema if pa.types.is_null(f.type)]
    if nulls:
        raise ValueError(f"metadata columns {nulls} are all null in the first shard; pass metadata_schema")
    return pa.schema([pa.field("key", pa.string(), nullable=False), *table.schema])


def _schema_json(schema: pa.Schema) -> list[dict[str, Any]]:
    return [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema]


def write_shards(
    samples: Iterable[Sample | Failure],
    out_url: str,
    *,
    dataset_name: str,
    lineage: Mapping[str, Any] | None = None,
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    metadata_schema: pa.Schema | None = None,
    mtime: int = 0,
) -> ShardIndex:
    """Write ``samples`` (and :class:`Failure` values, counted in stats) as shards; see ShardWriter."""
    with ShardWriter(
        out_url,
        dataset_name=dataset_name,
        lineage=lineage,
        samples_per_shard=samples_per_shard,
        max_shard_bytes=max_shard_bytes,
        metadata_schema=metadata_schema,
        mtime=mtime,
    ) as writer:
        for item in samples:
            if isinstance(item, Failure):
                writer.add_failure(item.key, item.reason)
            else:
                writer.write(item)
    assert writer.index is not None
    return writer.index


def shard_dir(root: str, dataset: str, version: str) -> str:
    """``<root>/shards/<dataset>/<version>`` (DESIGN.md section 2)."""
    return storage.join(root, "shards", dataset, version)


def publish_latest(root: str, dataset: str, version: str, url: str) -> None:
    """Point ``shards/<dataset>/LATEST.json`` at a finished version (what the trainer and assets read)."""
    storage.write_json(storage.join(root, "shards", dataset, LATEST_NAME), {"version": version, "url": url})


def write_dataset(samples: Iterable[Sample], root: str, dataset: str, version: str, **kwargs: Any) -> ShardIndex:
    """``write_shards`` into ``shards/<dataset>/<version>/``, then point LATEST.json at it (only once every
    shard and the index are complete: a crash leaves the previous version current)."""
    index = write_shards(samples, shard_dir(root, dataset, version), dataset_name=dataset, **kwargs)
    publish_latest(root, dataset, version, index.url)
    return index


def latest_url(root: str, dataset: str) -> str | None:
    """The newest version folder of ``shards/<dataset>/``, or None when it was never written."""
    latest = storage.join(root, "shards", dataset, LATEST_NAME)
    return storage.read_json(latest)["url"] if storage.exists(latest) else None


def file_sha256(url: str, chunk: int = 1 << 20) -> str:
    """sha256 of a file at any fsspec URL, streamed."""
    fs, path = storage.filesystem(url)
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def input_lineage(urls: Sequence[str], code_version: str | None = None, ignore: Sequence[str] = (),
                  **extra: Any) -> dict[str, Any]:
    """Lineage for index.json: each input manifest with the sha256 of its rows (``storage.table_digest``:
    the same rows written in another order by another runner give the same lineage), plus the code
    version. ``ignore``: columns whose values differ between runs of the same content."""
    out: dict[str, Any] = {"inputs": [{"url": u, "rows_sha256": storage.table_digest(u, ignore)} for u in urls]}
    if code_version is not None:
        out["code_version"] = code_version
    out.update(extra)
    return out


# ---------------------------------------------------------------------------------------------------
# reading and verifying


def _index_url(url: str) -> tuple[str, str]:
    url = url.rstrip("/")
    if url.endswith(".json"):
        return url, url.rsplit("/", 1)[0]
    return storage.join(url, INDEX_NAME), url


def read_index(url: str) -> ShardIndex:
    """Read ``index.json`` of a version folder (``url`` is the folder or the json itself)."""
    index_url, base = _index_url(url)
    return ShardIndex.from_json(storage.read_json(index_url), url=base)


def _split_name(name: str) -> tuple[str, str] | None:
    """(key, extension) the way WebDataset splits a member name: at the first '.' of the basename."""
    base = name.rsplit("/", 1)[-1]
    if "." not in base:
        return None
    key, ext = base.split(".", 1)
    return (name[: len(name) - len(base)] + key, ext)


def iter_samples(shard_url: str, *, with_metadata: bool = False) -> Iterator[Sample]:
    """Samples of one tar in order: adjacent members with the same key grouped (plain tarfile reader).

    With ``with_metadata`` the row of the sibling parquet is attached (without its ``key`` column).
    """
    rows: dict[str, dict[str, Any]] = {}
    if with_metadata:
        for row in storage.read_records(_sibling(shard_url, ".parquet")):
            rows[row.pop("key")] = row
    fs, path = storage.filesystem(shard_url)
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        key: str | None = None
        fields: dict[str, bytes] = {}
        for member in tar:
            if not member.isreg():
                continue
            split = _split_name(member.name)
            if split is None:
                continue
            k, ext = split
            if key is not None and k != key:
                yield Sample(key, fields, rows.get(key, {}))
                fields = {}
            key = k
            extracted = tar.extractfile(member)
            assert extracted is not None
            fields[ext] = extracted.read()
        if key is not None:
            yield Sample(key, fields, rows.get(key, {}))


def _sibling(tar_url: str, suffix: str) -> str:
    if not tar_url.endswith(".tar"):
        raise ValueError(f"not a .tar url: {tar_url}")
    return tar_url[: -len(".tar")] + suffix


class _HashingReader:
    """Read-only file object that hashes and counts what passes through."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.sha = hashlib.sha256()
        self.offset = 0
        self.data_end = 0  # offset just past the last non-NUL byte seen

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.sha.update(data)
        nonzero = len(data.rstrip(b"\0"))
        if nonzero:
            self.data_end = self.offset + nonzero
        self.offset += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def verify_shard(url: str, index: ShardIndex | None = None) -> list[str]:
    """Problems with one shard (empty list when sound), for asset checks.

    Checks: the tar reads to the end with safe, adjacent, non-repeated keys; its parquet has one row per
    sample with the same keys in the same order; its stats json agrees; the tar's size and sha256 match
    the entry in ``index`` (read from the folder when not given). Each problem reads
    ``<name>.tar: <code>: <detail>``, the code one of: tar_unreadable, bad_member, unsafe_key,
    duplicate_key, duplicate_field, parquet_unreadable, parquet_rows_mismatch, parquet_keys_mismatch,
    stats_missing, stats_mismatch, index_missing, not_in_index, samples_mismatch, bytes_mismatch,
    sha256_mismatch.
    """
    name = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".tar")
    problems: list[str] = []
    keys: list[str] = []
    seen: set[str] = set()
    fs, path = storage.filesystem(url)
    reader: _HashingReader | None = None
    try:
        with fs.open(path, "rb") as f:
            reader = _HashingReader(f)
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                fields: set[str] = set()
                for member in tar:
                    split = _split_name(member.name) if member.isreg() else None
                    if split is None:
                        problems.append(f"bad_member: {member.name!r}")
                        continue
                    k, ext = split
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    if len(extracted.read()) != member.size:
                        raise tarfile.ReadError(f"member {member.name!r} is truncated")
                    if not keys or keys[-1] != k:
                        if k in seen:
                            problems.append(f"duplicate_key: {k!r} appears in two places")
                        if not is_safe_key(k):
                            problems.append(f"unsafe_key: {k!r}")
                        keys.append(k)
                        seen.add(k)
                        fields = set()
                    if ext in fields:
                        problems.append(f"duplicate_field: {member.name!r}")
                    fields.add(ext)
                members_end = tar.offset
            reader.drain()
            # tarfile stops quietly at a broken header after the first one: anything but NUL padding
            # after the last member it returned means it did not read the whole archive.
            if reader.data_end > members_end:
                raise tarfile.ReadError(f"unreadable data after offset {members_end}")
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        problems.append(f"tar_unreadable: {exc}")

    try:
        pkeys = storage.read_table(_sibling(url, ".parquet"), columns=["key"]).column("key").to_pylist()
        if len(pkeys) != len(keys):
            problems.append(f"parquet_rows_mismatch: {len(pkeys)} rows, {len(keys)} samples in tar")
        elif pkeys != keys:
            problems.append("parquet_keys_mismatch: parquet keys differ from tar keys")
    except Exception as exc:  # noqa: BLE001 - any failure to read is the finding
        problems.append(f"parquet_unreadable: {exc}")

    actual_bytes = reader.offset if reader is not None else -1
    actual_sha = reader.sha.hexdigest() if reader is not None else ""
    try:
        stats = storage.read_json(_sibling(url, "_stats.json"))
        if (stats.get("successes"), stats.get("bytes"), stats.get("sha256")) != (
            len(keys),
            actual_bytes,
            actual_sha,
        ):
            problems.append("stats_mismatch: stats json disagrees with the tar")
    except (OSError, ValueError) as exc:
        problems.append(f"stats_missing: {exc}")

    if index is None:
        try:
            index = read_index(url.rstrip("/").rsplit("/", 1)[0])
        except (OSError, ValueError, KeyError) as exc:
            problems.append(f"index_missing: {exc}")
    if index is not None:
        entry = next((s for s in index.shards if s.name == name), None)
        if entry is None:
            problems.append(f"not_in_index: {name}")
        else:
            if entry.samples != len(keys):
                problems.append(f"samples_mismatch: index {entry.samples}, tar {len(keys)}")
            if entry.bytes != actual_bytes:
                problems.append(f"bytes_mismatch: index {entry.bytes}, tar {actual_bytes}")
            if entry.sha256 != actual_sha:
                problems.append(f"sha256_mismatch: index {entry.sha256}, tar {actual_sha}")
    return [f"{name}.tar: {p}" for p in problems]


def verify_index(url: str) -> list[str]:
    """Problems with a whole version folder: every listed shard verified, no unlisted shard files.

    Each problem reads ``<file>: <code>: <detail>``, as in :func:`verify_shard`.
    """
    try:
        index = read_index(url)
    except (OSError, ValueError, KeyError) as exc:
        return [f"{INDEX_NAME}: index_missing: {exc}"]
    problems: list[str] = []
    for tar_url in index.tar_urls:
        problems.extend(verify_shard(tar_url, index))
    listed = {s.name for s in index.shards}
    fs, path = storage.filesystem(index.url)
    for p in sorted(fs.ls(path, detail=False)):
        m = _SHARD_FILE_RE.fullmatch(p.rstrip("/").rsplit("/", 1)[-1])
        if m and m.group(1) not in listed:
            problems.append(f"{p.rsplit('/', 1)[-1]}: stale_shard: not listed in {INDEX_NAME}")
    return problems
