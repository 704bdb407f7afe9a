"""Ingest image-caption pairs from the layouts users drop, as references (no bytes copied).

Supported inputs inside a drop folder (any fsspec URL), recognised by file name:

| input | layout |
|---|---|
| ``*.tar`` | WebDataset / img2dataset shards: ``key.jpg|png|webp|...`` + ``key.txt`` (caption) + optional ``key.json`` |
| ``*.parquet``, ``*.jsonl`` | one row per pair: an image ``path`` (relative to the table, or absolute) or ``url``, and a ``caption`` (or ``text``) |
| images with sidecars | ``name.jpg`` + ``name.txt`` (the caption; first line) or ``name.json`` with a ``caption`` key |

Each pair becomes a reference record: where the bytes live (``uri`` + ``byte_offset``/``byte_size`` for
tar members) and the caption. Bytes stay in place until the shard writer copies them (DESIGN.md 2).
Pairs with a missing image or caption become records with ``status='error'`` and a reason, so they
reach quarantine instead of vanishing. URLs are fetched with size and time limits by ``fetch_url``.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.parquet as pq
import requests

from curation import storage

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
CAPTION_KEYS = ("caption", "text", "txt")
IMAGE_KEYS = ("path", "image", "file", "url")


@dataclass(frozen=True)
class FetchLimits:
    """Limits for URL downloads: bytes, seconds per request, retries on connection errors/5xx."""

    max_bytes: int = 20 * 1024 * 1024
    timeout_s: float = 10.0
    retries: int = 2
    user_agent: str = "vlm-curate/0.1 (+image-text curation)"


class FetchError(Exception):
    """A URL that could not be fetched; ``reason`` is the quarantine reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def fetch_url(url: str, limits: FetchLimits = FetchLimits(), session: requests.Session | None = None) -> bytes:
    """Download ``url`` with a byte cap and timeouts; raise FetchError with a reason on failure."""
    sess = session or requests.Session()
    last: Exception | None = None
    for _ in range(limits.retries + 1):
        try:
            with sess.get(url, stream=True, timeout=limits.timeout_s, headers={"User-Agent": limits.user_agent}) as r:
                if r.status_code >= 500:
                    last = FetchError("http_error", f"HTTP {r.status_code} for {url}")
                    continue
                if r.status_code != 200:
                    raise FetchError("http_error", f"HTTP {r.status_code} for {url}")
                declared = r.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > limits.max_bytes:
                    raise FetchError("too_many_bytes", f"{url} declares {declared} bytes > {limits.max_bytes}")
                chunks, total = [], 0
                for chunk in r.iter_content(64 * 1024):
                    total += len(chunk)
                    if total > limits.max_bytes:
                        raise FetchError("too_many_bytes", f"{url} exceeds {limits.max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except FetchError:
            raise
        except requests.Timeout as e:
            last = FetchError("fetch_timeout", f"{url}: {e}")
        except requests.RequestException as e:
            last = FetchError("fetch_error", f"{url}: {e}")
    assert last is not None
    raise last


def _ref(source_key: str, uri: str, caption: str | None, *, offset: int = -1, size: int = -1,
         extra: dict | None = None, error: str | None = None) -> dict:
    rec = {
        "source_key": source_key,
        "uri": uri,
        "byte_offset": offset,
        "byte_size": size,
        "caption": caption,
        "extra": json.dumps(extra or {}, sort_keys=True, ensure_ascii=False),
        "reason": None,
        "error": None,
    }
    if caption is None or not str(caption).strip():
        rec["reason"], rec["error"] = "missing_caption", "no caption found for this image"
    if error:
        rec["reason"], rec["error"] = error.split(":", 1)[0], error
    return rec


def iter_tar(url: str) -> Iterator[dict]:
    """References into a WebDataset tar: one per key with an image member."""
    fs, path = storage.filesystem(url)
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    order: list[str] = []
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        texts: dict[str, bytes] = {}
        for m in tar:
            if not m.isfile():
                continue
            base = m.name.rsplit("/", 1)[-1]
            prefix = m.name[: len(m.name) - len(base)]
            key, _, ext = base.partition(".")
            key = prefix + key
            if key not in groups:
                groups[key] = {}
                order.append(key)
            groups[key][ext.lower()] = m
            if ext.lower() in ("txt", "json"):
                data = tar.extractfile(m)
                texts[f"{key}.{ext.lower()}"] = data.read() if data else b""
    for key in order:
        members = groups[key]
        image_ext = next((e for e in members if e in IMAGE_EXTS), None)
        meta = {}
        if f"{key}.json" in texts:
            try:
                meta = json.loads(texts[f"{key}.json"])
            except ValueError:
                meta = {"json_error": "unparseable json sidecar"}
        caption = texts[f"{key}.txt"].decode("utf-8", "replace").strip() if f"{key}.txt" in texts else meta.get("caption")
        if image_ext is None:
            yield _ref(f"{url}#{key}", url, caption, extra=meta, error="missing_image: tar key without an image member")
            continue
        m = members[image_ext]
        yield _ref(f"{url}#{m.name}", url, caption, offset=m.offset_data, size=m.size, extra=meta)


def iter_table(url: str) -> Iterator[dict]:
    """References from a parquet or JSONL table of (path|url, caption)."""
    base = url.rsplit("/", 1)[0]
    if url.endswith(".parquet"):
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as f:
            rows = pq.read_table(f).to_pylist()
    else:
        rows = []
        for i, line in enumerate(storage.read_bytes(url).decode("utf-8").splitlines()):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                yield _ref(f"{url}#L{i + 1}", url, None, error=f"bad_row: line {i + 1}: {e}")
    for i, row in enumerate(rows):
        image = next((row[k] for k in IMAGE_KEYS if row.get(k)), None)
        caption = next((row[k] for k in CAPTION_KEYS if row.get(k)), None)
        extra = {k: v for k, v in row.items() if k not in IMAGE_KEYS and k not in CAPTION_KEYS}
        key = f"{url}#{i}"
        if image is None:
            yield _ref(key, url, caption, extra=extra, error="missing_image: row has no path or url")
        elif "://" in str(image) or str(image).startswith("/"):
            yield _ref(key, str(image), caption, extra=extra)
        else:
            yield _ref(key, storage.join(base, str(image)), caption, extra=extra)


def iter_folder_images(url: str, names: list[str]) -> Iterator[dict]:
    """References to loose images in a folder, captions from sidecar .txt/.json files."""
    by_stem: dict[str, set[str]] = {}
    for n in names:
        stem, _, ext = n.rpartition(".")
        if stem:
            by_stem.setdefault(stem, set()).add(ext.lower())
    for stem in sorted(by_stem):
        exts = by_stem[stem]
        images = sorted(e for e in exts if e in IMAGE_EXTS)
        for ext in images:
            img_url = storage.join(url, f"{stem}.{ext}")
            caption, meta = None, {}
            if "txt" in exts:
                text = storage.read_bytes(storage.join(url, f"{stem}.txt")).decode("utf-8", "replace")
                caption = text.strip().splitlines()[0].strip() if text.strip() else None
            elif "json" in exts:
                try:
                    meta = json.loads(storage.read_bytes(storage.join(url, f"{stem}.json")))
                    caption = next((meta.get(k) for k in CAPTION_KEYS if meta.get(k)), None)
                except ValueError:
                    meta = {"json_error": "unparseable json sidecar"}
            yield _ref(img_url, img_url, caption, extra=meta)


def discover(drop_url: str) -> list[tuple[str, str]]:
    """The inputs of a drop, as sorted (kind, url) pairs: kind in tar, table, folder.

    A drop that holds tables (parquet/jsonl) reads its images through them: loose images in such a
    drop are what the tables point at, not separate inputs.
    """
    fs, root = storage.filesystem(drop_url)
    if not fs.exists(root):
        raise FileNotFoundError(f"drop not found: {drop_url}")
    protocol = drop_url.split("://", 1)[0] + "://" if "://" in drop_url else ""
    out: list[tuple[str, str]] = []
    for dirpath, _dirs, files in sorted(fs.walk(root)):
        dir_url = protocol + dirpath if protocol and not dirpath.startswith(protocol) else dirpath
        loose = []
        for name in sorted(files):
            if name.startswith("."):
                continue
            low = name.lower()
            if low.endswith(".tar"):
                out.append(("tar", storage.join(dir_url, name)))
            elif low.endswith((".parquet", ".jsonl")):
                out.append(("table", storage.join(dir_url, name)))
            else:
                loose.append(name)
        if any(n.rsplit(".", 1)[-1].lower() in IMAGE_EXTS for n in loose):
            out.append(("folder", dir_url))
    if any(kind == "table" for kind, _ in out):
        out = [(kind, url) for kind, url in out if kind != "folder"]
    return sorted(out)


def iter_source(kind: str, url: str) -> Iterator[dict]:
    """References of one discovered input."""
    if kind == "tar":
        yield from iter_tar(url)
    elif kind == "table":
        yield from iter_table(url)
    elif kind == "folder":
        fs, path = storage.filesystem(url)
        names = [p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if fs.isfile(p)]
        yield from iter_folder_images(url, names)
    else:
        raise ValueError(f"unknown input kind {kind!r}")


def load_bytes(ref: dict, limits: FetchLimits = FetchLimits()) -> bytes:
    """The image bytes a reference points at (a file, a byte range of a tar, or a URL)."""
    uri = ref["uri"]
    if uri.startswith(("http://", "https://")):
        return fetch_url(uri, limits)
    fs, path = storage.filesystem(uri)
    if ref.get("byte_offset", -1) is not None and ref.get("byte_offset", -1) >= 0:
        with fs.open(path, "rb") as f:
            f.seek(ref["byte_offset"])
            return f.read(ref["byte_size"])
    with fs.open(path, "rb") as f:
        return f.read()
