"""Paths and atomic I/O on any fsspec URL (local path, file://, s3://, gs://, memory://).

The layout under a storage root is DESIGN.md section 2: landing/, manifests/, quarantine/, shards/,
models/, checkpoints/. Every write goes to a temporary name in the same folder and is renamed into
place, so a crash never leaves a half file that a later run reads as complete.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq


def join(root: str, *parts: str) -> str:
    """Join URL or path parts with '/'."""
    out = root.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for a URL and the path inside it."""
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        return f.read()


@contextlib.contextmanager
def atomic_open(url: str, mode: str = "wb") -> Iterator[Any]:
    """Open ``url`` for writing through a temporary sibling, renamed into place on success."""
    fs, path = filesystem(url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{path.rsplit('/', 1)[-1]}" if parent else f".tmp-{uuid.uuid4().hex}"
    try:
        with fs.open(tmp, mode) as f:
            yield f
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise


def write_bytes(url: str, data: bytes) -> None:
    with atomic_open(url, "wb") as f:
        f.write(data)


def write_json(url: str, obj: Any) -> None:
    """Write JSON with sorted keys (stable bytes for the same content)."""
    write_bytes(url, (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())


def read_json(url: str) -> Any:
    return json.loads(read_bytes(url))


def write_table(url: str, table: pa.Table) -> None:
    """Atomically write a parquet table."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    write_bytes(url, buf.getvalue())


def read_table(url: str, columns: Sequence[str] | None = None) -> pa.Table:
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=list(columns) if columns else None)


def table_digest(url: str, ignore: Sequence[str] = ()) -> str:
    """Hex sha256 of a parquet manifest's content: its rows sorted by every string and integer column,
    as an Arrow IPC stream, without the ``ignore`` columns. Not of the file's bytes: a distributed
    runner writes rows in whatever order its workers finish, and the same rows must give the same
    digest (shard versions and lineage are built from it)."""
    import hashlib

    table = read_table(url)
    table = table.drop_columns([c for c in ignore if c in table.column_names])
    keys = [(f.name, "ascending") for f in table.schema if pa.types.is_string(f.type) or pa.types.is_integer(f.type)]
    table = table.sort_by(keys) if keys and table.num_rows else table
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def write_records(url: str, records: Sequence[dict], schema: pa.Schema | None = None) -> None:
    """Write records (dicts) as parquet; an empty list still writes the schema when given."""
    if not records and schema is None:
        schema = pa.schema([("id", pa.string())])
    table = pa.Table.from_pylist(list(records), schema=schema)
    write_table(url, table)


def read_records(url: str) -> list[dict]:
    return read_table(url).to_pylist()


def ls(url: str, suffix: str = "") -> list[str]:
    """Sorted child URLs of a folder (empty when it does not exist)."""
    fs, path = filesystem(url)
    if not fs.exists(path):
        return []
    protocol = url.split("://", 1)[0] + "://" if "://" in url else ""
    out = []
    for p in fs.ls(path, detail=False):
        name = p.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith(".tmp-"):
            continue
        if suffix and not name.endswith(suffix):
            continue
        out.append(protocol + p if protocol and not p.startswith(protocol) else p)
    return sorted(out)


def local_path(url: str) -> str | None:
    """The local filesystem path of a URL, or None for remote filesystems."""
    if url.startswith("file://"):
        return url[len("file://") :]
    if "://" not in url:
        return os.path.abspath(url)
    return None
