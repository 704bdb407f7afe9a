"""Tests for curation.shards: layout, byte-identical re-runs, splitting, keys, atomicity, verification."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import uuid
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from curation import shards, storage
from curation.shards import (
    DuplicateKeyError,
    Failure,
    Sample,
    ShardWriter,
    input_lineage,
    is_safe_key,
    iter_samples,
    read_index,
    safe_key,
    shard_dir,
    verify_index,
    verify_shard,
    write_shards,
)

LINEAGE = {"inputs": [{"url": "manifests/x/p0.parquet", "sha256": "0" * 64}], "code_version": "test"}


@pytest.fixture(scope="module")
def real_samples(shared_data: Path) -> list[Sample]:
    """24 COCO photos with their first caption and 16 Tux Paint stamps (raw keys are file paths)."""
    root = shared_data / "image_caption"
    out: list[Sample] = []
    with open(root / "coco_mini" / "captions.jsonl") as f:
        for line in list(f)[:24]:
            rec = json.loads(line)
            meta = {"coco_id": rec["coco_id"], "width": rec["width"], "height": rec["height"]}
            out.append(
                Sample(
                    rec["image"],
                    {
                        "jpg": (root / "coco_mini" / rec["image"]).read_bytes(),
                        "txt": rec["captions"][0].encode(),
                        "json": json.dumps(meta, sort_keys=True).encode(),
                    },
                    {"source": "coco", "caption": rec["captions"][0], "width": rec["width"]},
                )
            )
    with open(root / "tuxpaint_stamps" / "captions.jsonl") as f:
        for line in list(f)[:16]:
            rec = json.loads(line)
            out.append(
                Sample(
                    rec["image"],
                    {"png": (root / "tuxpaint_stamps" / rec["image"]).read_bytes(), "txt": rec["caption"].encode()},
                    {"source": "tuxpaint", "caption": rec["caption"], "width": None},
                )
            )
    return out


def small_samples(n: int, size: int = 100, start: int = 0) -> list[Sample]:
    return [Sample(f"s{i:05d}", {"bin": bytes([i % 256]) * size}, {"i": i}) for i in range(start, start + n)]


def tree_hashes(url: str) -> dict[str, str]:
    """sha256 of every file under a folder, by name (temporary files included, so leftovers show)."""
    fs, path = storage.filesystem(url)
    out = {}
    for p in fs.ls(path, detail=False):
        with fs.open(p, "rb") as f:
            out[p.rstrip("/").rsplit("/", 1)[-1]] = hashlib.sha256(f.read()).hexdigest()
    return out


def codes(problems: list[str]) -> set[str]:
    return {p.split(": ")[1] for p in problems}


# ---------------------------------------------------------------------------------------------------
# layout and compatibility


def test_roundtrip_with_webdataset_and_pyarrow(tmp_path: Path, real_samples: list[Sample]) -> None:
    out = shard_dir(str(tmp_path), "image_text", "v1")
    index = write_shards(real_samples, out, dataset_name="image_text", samples_per_shard=16, lineage=LINEAGE)

    assert [s.samples for s in index.shards] == [16, 16, 8]
    assert index.fields == ("jpg", "json", "png", "txt")
    assert index.columns == ["key", "source", "caption", "width"]
    assert sorted(p.name for p in Path(out).iterdir()) == sorted(
        [f"0000{i}{suf}" for i in range(3) for suf in (".tar", ".parquet", "_stats.json")] + ["index.json"]
    )
    assert read_index(out) == index
    assert verify_index(out) == []

    keys = [safe_key(s.key) for s in real_samples]
    got = list(wds.WebDataset(index.tar_urls, shardshuffle=False, empty_check=False))
    assert [g["__key__"] for g in got] == keys
    for g, s in zip(got, real_samples):
        assert {k: v for k, v in g.items() if not k.startswith("__")} == dict(s.fields)

    table = pa.concat_tables(pq.read_table(u) for u in index.parquet_urls)
    assert table.column("key").to_pylist() == keys
    assert table.drop(["key"]).to_pylist() == [dict(s.metadata) for s in real_samples]
    assert [s.num_rows for s in map(pq.read_metadata, index.parquet_urls)] == [16, 16, 8]

    back = [x for u in index.tar_urls for x in iter_samples(u, with_metadata=True)]
    assert back == [Sample(k, dict(s.fields), dict(s.metadata)) for k, s in zip(keys, real_samples)]

    stats = storage.read_json(f"{out}/00002_stats.json")
    assert stats["count"] == stats["successes"] == 8
    assert stats["fields"] == {"png": 8, "txt": 8}
    assert stats["bytes"] == Path(out, "00002.tar").stat().st_size == index.shards[2].bytes
    assert stats["sha256"] == hashlib.sha256(Path(out, "00002.tar").read_bytes()).hexdigest()
    idx = storage.read_json(f"{out}/index.json")
    assert idx["lineage"] == LINEAGE and idx["num_samples"] == 40 and idx["dataset"] == "image_text"


def test_tar_is_plain_ustar_with_fixed_metadata(tmp_path: Path) -> None:
    samples = [
        Sample("b", {"txt": b"hello", "jpg": b"\xff\xd8" * 300}),
        Sample("a", {"json": b"{}", "cls.txt": b"3"}),
    ]
    write_shards(samples, str(tmp_path / "v"), dataset_name="d", mtime=1_700_000_000)
    got = (tmp_path / "v" / "00000.tar").read_bytes()

    # The same members written by tarfile itself: input order of samples, fields sorted by extension.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        jpg = b"\xff\xd8" * 300
        members = [("b", "jpg", jpg), ("b", "txt", b"hello"), ("a", "cls.txt", b"3"), ("a", "json", b"{}")]
        for key, ext, data in members:
            ti = tarfile.TarInfo(f"{key}.{ext}")
            ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = len(data), 1_700_000_000, 0o644, "", ""
            tf.addfile(ti, io.BytesIO(data))
    assert got == buf.getvalue()
    with tarfile.open(tmp_path / "v" / "00000.tar") as tf:
        members = tf.getmembers()
    assert [(m.name, m.mtime, m.mode, m.uid, m.gid, m.uname, m.gname) for m in members] == [
        (n, 1_700_000_000, 0o644, 0, 0, "", "") for n in ["b.jpg", "b.txt", "a.cls.txt", "a.json"]
    ]


def test_reruns_are_byte_identical(tmp_path: Path, real_samples: list[Sample]) -> None:
    first = str(tmp_path / "a" / "v1")
    write_shards(real_samples, first, dataset_name="d", samples_per_shard=16, lineage=LINEAGE)
    h1 = tree_hashes(first)
    write_shards(real_samples, first, dataset_name="d", samples_per_shard=16, lineage=LINEAGE)  # over itself
    write_shards(real_samples, str(tmp_path / "b" / "v1"), dataset_name="d", samples_per_shard=16, lineage=LINEAGE)
    assert len(h1) == 10
    assert tree_hashes(first) == h1
    assert tree_hashes(str(tmp_path / "b" / "v1")) == h1


# ---------------------------------------------------------------------------------------------------
# splitting


@pytest.mark.parametrize(
    ("n", "per_shard", "expected"),
    [(0, 5, []), (1, 5, [1]), (10, 5, [5, 5]), (23, 5, [5, 5, 5, 5, 3]), (4, 1, [1, 1, 1, 1])],
)
def test_split_by_sample_count(tmp_path: Path, n: int, per_shard: int, expected: list[int]) -> None:
    index = write_shards(small_samples(n), str(tmp_path / "v"), dataset_name="d", samples_per_shard=per_shard)
    assert [s.samples for s in index.shards] == expected
    stats = [storage.read_json(str(tmp_path / "v" / f"{s.name}_stats.json")) for s in index.shards]
    assert [st["successes"] for st in stats] == expected
    assert verify_index(str(tmp_path / "v")) == []


@pytest.mark.parametrize(
    ("sizes", "per_shard", "expected_counts", "expected_bytes"),
    [
        # 1,000-byte field = 512 header + 1,024 data: 12 fit under 20,480 with the 1,024 end blocks.
        ([1000] * 30, 100, [12, 12, 6], [20480, 20480, 10240]),
        ([1000] * 30, 5, [5] * 6, [10240] * 6),
        # A sample larger than the limit gets a shard of its own.
        ([100, 30000, 100], 100, [1, 1, 1], [10240, 40960, 10240]),
    ],
)
def test_split_by_shard_bytes(
    tmp_path: Path, sizes: list[int], per_shard: int, expected_counts: list[int], expected_bytes: list[int]
) -> None:
    samples = [Sample(f"k{i}", {"bin": b"x" * n}) for i, n in enumerate(sizes)]
    out = tmp_path / "v"
    index = write_shards(samples, str(out), dataset_name="d", samples_per_shard=per_shard, max_shard_bytes=20480)
    assert [s.samples for s in index.shards] == expected_counts
    assert [s.bytes for s in index.shards] == expected_bytes
    assert [(out / f"{s.name}.tar").stat().st_size for s in index.shards] == expected_bytes


# ---------------------------------------------------------------------------------------------------
# keys


def _h(raw: str) -> str:
    return hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()[:12]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("000000493652", "000000493652"),
        ("abc-DEF_9", "abc-DEF_9"),
        (
            "images/train2017/000000493652.jpg",
            "images_train2017_000000493652_jpg_"
            + _h("images/train2017/000000493652.jpg"),
        ),
        ("a b\tc", "a_b_c_" + _h("a b\tc")),
        ("café.png", "caf_png_" + _h("café.png")),
        ("", _h("")),
        ("x" * 64, "x" * 64),
        ("x" * 65, "x" * 51 + "_" + _h("x" * 65)),
    ],
)
def test_safe_key(raw: str, expected: str) -> None:
    key = safe_key(raw)
    assert key == expected
    assert is_safe_key(key) and len(key) <= 64 and "." not in key
    assert safe_key(key) == key  # fixed point: writing already safe keys changes nothing


def test_safe_key_keeps_sanitized_collisions_apart(real_samples: list[Sample]) -> None:
    raws = ["a.b", "a/b", "a b", "a_b", "a..b"]
    keys = [safe_key(r) for r in raws]
    assert len(set(keys)) == 5 and keys[3] == "a_b"
    assert all(k.startswith("a_b_") for k in keys[:3])
    real = [safe_key(s.key) for s in real_samples]
    assert len(set(real)) == len(real_samples) and all(map(is_safe_key, real))


@pytest.mark.parametrize("second", ["dup", "a_b_" + _h("a.b")])
def test_duplicate_keys_raise_and_leave_no_output(tmp_path: Path, second: str) -> None:
    first = "dup" if second == "dup" else "a.b"
    samples = [Sample(first, {"txt": b"1"}), Sample(second, {"txt": b"2"})]
    with pytest.raises(DuplicateKeyError, match="duplicate sample key"):
        write_shards(samples, str(tmp_path / "v"), dataset_name="d")
    assert tree_hashes(str(tmp_path / "v")) == {}


@pytest.mark.parametrize(
    ("sample", "error"),
    [
        (Sample("k", {"JPG": b"x"}), ValueError),
        (Sample("k", {".jpg": b"x"}), ValueError),
        (Sample("k", {"a/b": b"x"}), ValueError),
        (Sample("k", {"_meta": b"x"}), ValueError),
        (Sample("k", {"": b"x"}), ValueError),
        (Sample("k", {}), ValueError),
        (Sample("k", {"cls": 3}), TypeError),
        (Sample("k", {"txt": b"x"}, {"key": "other"}), ValueError),
    ],
)
def test_invalid_samples_are_rejected(tmp_path: Path, sample: Sample, error: type[Exception]) -> None:
    with pytest.raises(error):
        write_shards([sample], str(tmp_path / "v"), dataset_name="d")
    assert not (tmp_path / "v" / "index.json").exists()


# ---------------------------------------------------------------------------------------------------
# atomicity and re-runs


def _crashing(samples: list[Sample], after: int):
    yield from samples[:after]
    raise RuntimeError("worker died")


@pytest.mark.parametrize(("after", "complete"), [(3, 0), (25, 2), (30, 3)])
def test_crash_leaves_only_complete_shards_and_no_index(tmp_path: Path, after: int, complete: int) -> None:
    out = tmp_path / "v"
    with pytest.raises(RuntimeError, match="worker died"):
        write_shards(_crashing(small_samples(50), after), str(out), dataset_name="d", samples_per_shard=10)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{i:05d}{suf}" for i in range(complete) for suf in (".tar", ".parquet", "_stats.json"))
    for i in range(complete):
        assert codes(verify_shard(str(out / f"{i:05d}.tar"))) == {"index_missing"}
        keys = [s.key for s in iter_samples(str(out / f"{i:05d}.tar"))]
        assert keys == [f"s{j:05d}" for j in range(10 * i, 10 * i + 10)]


def test_rerun_over_existing_version(tmp_path: Path) -> None:
    out = str(tmp_path / "v")
    write_shards(small_samples(50), out, dataset_name="d", samples_per_shard=10)
    old = tree_hashes(out)

    # A crashed re-run: the old index goes first, finished shards are new, untouched old ones stay as they were.
    new_samples = small_samples(50, size=200)
    with pytest.raises(RuntimeError):
        write_shards(_crashing(new_samples, 25), out, dataset_name="d", samples_per_shard=10)
    now = tree_hashes(out)
    assert "index.json" not in now
    assert now["00000.tar"] != old["00000.tar"] and now["00001.tar"] != old["00001.tar"]
    assert {n: now[n] for n in now if n[:5] in {"00002", "00003", "00004"}} == {
        n: old[n] for n in old if n[:5] in {"00002", "00003", "00004"}
    }
    assert codes(verify_index(out)) == {"index_missing"}

    # A shorter successful re-run removes the stale shards beyond its own count.
    index = write_shards(small_samples(15), out, dataset_name="d", samples_per_shard=10)
    assert sorted(tree_hashes(out)) == sorted(
        ["index.json"] + [f"0000{i}{suf}" for i in range(2) for suf in (".tar", ".parquet", "_stats.json")]
    )
    assert index.num_samples == 15 and verify_index(out) == []


def test_memory_filesystem_matches_local_bytes(tmp_path: Path, real_samples: list[Sample]) -> None:
    mem = f"memory://shards-test-{uuid.uuid4().hex}/image_text/v1"
    index = write_shards(real_samples, mem, dataset_name="image_text", samples_per_shard=16, lineage=LINEAGE)
    try:
        assert index.tar_urls[0] == f"{mem}/00000.tar"
        assert read_index(mem) == index and verify_index(mem) == []
        back = [s for u in index.tar_urls for s in iter_samples(u)]
        assert [dict(s.fields) for s in back] == [dict(s.fields) for s in real_samples]
        assert storage.read_table(index.parquet_urls[1]).column("key").to_pylist() == [
            safe_key(s.key) for s in real_samples[16:32]
        ]
        local = str(tmp_path / "v1")
        write_shards(real_samples, local, dataset_name="image_text", samples_per_shard=16, lineage=LINEAGE)
        assert tree_hashes(mem) == tree_hashes(local)
    finally:
        fs = fsspec.filesystem("memory")
        fs.rm(mem.removeprefix("memory://").split("/")[0], recursive=True)


# ---------------------------------------------------------------------------------------------------
# stats, schema, lineage


def test_failures_are_counted_in_the_open_shard(tmp_path: Path) -> None:
    s = small_samples(5)
    stream = [
        Failure("f0", "decode_error"), s[0], s[1],
        Failure("f1", "too_small"), s[2], s[3],
        Failure("f2", "decode_error"),
    ]
    out = str(tmp_path / "v")
    index = write_shards(stream, out, dataset_name="d", samples_per_shard=2)
    # A shard is committed as soon as it is full, so f1 waits for shard 1 and f2 (after the last
    # sample of a full shard) is only counted in the index.
    assert [dict(x.failures) for x in index.shards] == [{"decode_error": 1}, {"too_small": 1}]
    st = storage.read_json(f"{out}/00000_stats.json")
    assert (st["count"], st["successes"], st["failed"]) == (3, 2, 1)
    st = storage.read_json(f"{out}/00001_stats.json")
    assert (st["count"], st["successes"], st["failed"], st["failures"]) == (3, 2, 1, {"too_small": 1})
    assert index.failures == {"decode_error": 2, "too_small": 1}

    # With the shard still open, a trailing failure lands in its stats.
    index = write_shards([s[4], Failure("f3", "decode_error")], str(tmp_path / "u"), dataset_name="d")
    assert [dict(x.failures) for x in index.shards] == [{"decode_error": 1}]

    only = write_shards([Failure("x", "decode_error")], str(tmp_path / "w"), dataset_name="d")
    assert only.shards == () and only.failures == {"decode_error": 1}


def test_metadata_schema_explicit_and_inferred(tmp_path: Path) -> None:
    schema = pa.schema([("i", pa.int32()), ("note", pa.string())])
    index = write_shards(
        small_samples(5), str(tmp_path / "a"), dataset_name="d", samples_per_shard=2, metadata_schema=schema
    )
    assert [dict(c) for c in index.schema] == [
        {"name": "key", "type": "string", "nullable": False},
        {"name": "i", "type": "int32", "nullable": True},
        {"name": "note", "type": "string", "nullable": True},
    ]
    for url in index.parquet_urls:
        assert pq.read_schema(url).names == ["key", "i", "note"]
        assert pq.read_schema(url).field("i").type == pa.int32()

    # Inferred from the first shard, then fixed: a new column or a new type later is an error.
    late_column = small_samples(2) + [Sample("z", {"bin": b"z"}, {"i": 9, "new": 1})]
    with pytest.raises(ValueError, match="not in the schema"):
        write_shards(late_column, str(tmp_path / "b"), dataset_name="d", samples_per_shard=2)
    late_type = small_samples(2) + [Sample("z", {"bin": b"z"}, {"i": "nine"})]
    with pytest.raises(ValueError, match="does not fit the schema"):
        write_shards(late_type, str(tmp_path / "c"), dataset_name="d", samples_per_shard=2)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["00000.parquet", "00000.tar", "00000_stats.json"]
    with pytest.raises(ValueError, match="all null"):
        write_shards([Sample("k", {"bin": b"k"}, {"x": None})], str(tmp_path / "d"), dataset_name="d")


def test_input_lineage_in_index(tmp_path: Path) -> None:
    import pyarrow as pa

    from curation import storage

    manifest, shuffled = tmp_path / "m.parquet", tmp_path / "m2.parquet"
    rows = [{"id": f"r{i}", "n": i} for i in range(5)]
    storage.write_records(str(manifest), rows)
    storage.write_records(str(shuffled), rows[::-1])  # the same rows as another runner writes them
    storage.write_table(str(tmp_path / "m3.parquet"), pa.Table.from_pylist(rows[:4]))
    lineage = input_lineage([str(manifest)], code_version="abc123")
    assert lineage == {
        "inputs": [{"url": str(manifest), "rows_sha256": storage.table_digest(str(manifest))}],
        "code_version": "abc123",
    }
    assert storage.table_digest(str(shuffled)) == storage.table_digest(str(manifest)) != storage.table_digest(str(tmp_path / "m3.parquet"))
    assert manifest.read_bytes() != shuffled.read_bytes()
    with ShardWriter(str(tmp_path / "v"), dataset_name="d", lineage=lineage) as w:
        assert w.write(Sample("a.b", {"txt": b"x"})) == safe_key("a.b")
    assert read_index(str(tmp_path / "v")).lineage == lineage
    assert w.index is not None and w.index.lineage == lineage


# ---------------------------------------------------------------------------------------------------
# verification


# A tar that cannot be read to its end: every count and hash downstream of it disagrees too.
BROKEN_TAR = {"tar_unreadable", "parquet_rows_mismatch", "stats_mismatch", "samples_mismatch", "sha256_mismatch"}


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        ("none", set()),
        ("flip_data_byte", {"sha256_mismatch", "stats_mismatch"}),
        ("flip_header_byte", BROKEN_TAR),
        ("truncate", BROKEN_TAR | {"bytes_mismatch"}),
        ("drop_parquet_row", {"parquet_rows_mismatch"}),
        ("remove_stats", {"stats_missing"}),
    ],
)
def test_verify_shard_detects_tampering(tmp_path: Path, tamper: str, expected: set[str]) -> None:
    out = tmp_path / "v"
    write_shards(small_samples(20, size=700), str(out), dataset_name="d", samples_per_shard=10)
    tar = out / "00001.tar"
    if tamper == "flip_data_byte":
        _flip(tar, 512 + 10)
    elif tamper == "flip_header_byte":
        _flip(tar, 5 * 1536 + 3)  # name field of the 6th member's header
    elif tamper == "truncate":
        tar.write_bytes(tar.read_bytes()[: 4 * 1536 + 700])
    elif tamper == "drop_parquet_row":
        t = pq.read_table(out / "00001.parquet")
        pq.write_table(t.slice(0, 9), out / "00001.parquet")
    elif tamper == "remove_stats":
        (out / "00001_stats.json").unlink()
    assert verify_shard(str(out / "00000.tar")) == []
    assert codes(verify_shard(str(tar))) == expected
    assert codes(verify_index(str(out))) == expected


def test_verify_index_reports_stale_and_missing(tmp_path: Path) -> None:
    out = tmp_path / "v"
    write_shards(small_samples(20), str(out), dataset_name="d", samples_per_shard=10)
    (out / "00007.tar").write_bytes((out / "00000.tar").read_bytes())
    assert verify_index(str(out)) == ["00007.tar: stale_shard: not listed in index.json"]
    (out / "index.json").unlink()
    assert codes(verify_index(str(out))) == {"index_missing"}


def test_write_dataset_publishes_latest_only_when_complete(tmp_path: Path) -> None:
    root = str(tmp_path)
    assert shards.latest_url(root, "demo") is None
    samples = [shards.Sample(f"k{i}", {"txt": f"sample {i}".encode()}) for i in range(3)]
    index = shards.write_dataset(samples, root, "demo", "v-1", samples_per_shard=2)
    assert index.url == shards.shard_dir(root, "demo", "v-1") and index.num_samples == 3
    assert shards.latest_url(root, "demo") == index.url
    assert json.loads((tmp_path / "shards" / "demo" / "LATEST.json").read_text()) == {"version": "v-1", "url": index.url}

    def broken():
        yield samples[0]
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError, match="source died"):
        shards.write_dataset(broken(), root, "demo", "v-2")
    assert shards.latest_url(root, "demo") == index.url  # the failed version never became current


# ---------------------------------------------------------------------------------------------------
# the pieces the Beam shard stage (pipelines/shards.py) is built from

META = pa.schema([("n", pa.int64())])


def _toy(i: int, size: int) -> Sample:
    return Sample(f"k{i:03d}", {"bin": bytes([i % 251]) * size, "txt": f"#{i}"}, {"n": i})


def test_write_shard_and_assemble_index_give_the_writers_bytes(tmp_path: Path) -> None:
    samples = [_toy(i, 700 * (i % 5) + 1) for i in range(11)]
    ref = write_shards(iter(samples), str(tmp_path / "seq" / "v1"), dataset_name="toy", lineage=LINEAGE,
                       samples_per_shard=4, max_shard_bytes=2 * tarfile.RECORDSIZE, metadata_schema=META)
    out = str(tmp_path / "par" / "v1")
    shards.prepare_version(out)
    cuts = shards.shard_starts([shards.sample_bytes(s) for s in samples], 4, 2 * tarfile.RECORDSIZE) + [len(samples)]
    assert cuts[:-1] == [int(s.first_key[1:]) for s in ref.shards]  # ShardWriter cut at the same places
    written = [shards.write_shard(samples[a:b], out, n, metadata_schema=META)
               for n, (a, b) in reversed(list(enumerate(zip(cuts, cuts[1:]))))]  # any order, any worker
    written.sort(key=lambda w: w.number)
    fields: dict[str, int] = {}
    for w in written:
        for ext, n in w.fields.items():
            fields[ext] = fields.get(ext, 0) + n
    index = shards.assemble_index(out, dataset_name="toy", shards=[w.info for w in written], fields=fields,
                                  schema=shards.shard_schema(META), lineage=LINEAGE, samples_per_shard=4,
                                  max_shard_bytes=2 * tarfile.RECORDSIZE)
    shards.finish_version(index)
    assert index == read_index(out)
    assert {p.name: p.read_bytes() for p in Path(out).iterdir()} == {p.name: p.read_bytes() for p in Path(ref.url).iterdir()}


def test_sample_bytes_is_what_the_tar_grows_by() -> None:
    s = _toy(1, 1000)
    assert shards.sample_bytes(s) == shards.member_bytes(1000) + shards.member_bytes(2) == 512 + 1024 + 512 + 512


def test_shard_starts_follow_the_writer_rule() -> None:
    rec = tarfile.RECORDSIZE
    assert shards.shard_starts([], 3, rec) == []
    assert shards.shard_starts([512] * 7, 3, 10 * rec) == [0, 3, 6]
    assert shards.shard_starts([4096, 4096, 4096, 50_000, 10], 10, rec) == [0, 2, 3, 4]  # the big one alone


def test_write_shard_counts_failures_writes_empty_shards_and_rejects_duplicates(tmp_path: Path) -> None:
    out = str(tmp_path / "v1")
    w = shards.write_shard([Failure("a", "http_error"), Failure("b", "http_error")], out, 3, metadata_schema=META)
    assert (w.info.name, w.info.samples, w.info.failures, w.info.bytes) == ("00003", 0, {"http_error": 2}, tarfile.RECORDSIZE)
    assert storage.read_json(f"{out}/00003_stats.json")["count"] == 2
    assert list(iter_samples(f"{out}/00003.tar")) == []
    with pytest.raises(DuplicateKeyError, match="duplicate sample key 'k001'"):
        shards.write_shard([_toy(1, 5), _toy(1, 6)], out, 0, metadata_schema=META)
    assert sorted(p.name for p in Path(out).iterdir()) == ["00003.parquet", "00003.tar", "00003_stats.json"]
    with pytest.raises(ValueError, match="metadata_schema is required"):
        shards.write_shard([_toy(1, 5)], out, 0, metadata_schema=None)  # type: ignore[arg-type]


def test_assemble_index_requires_consecutive_numbers(tmp_path: Path) -> None:
    out = str(tmp_path / "v1")
    infos = [shards.write_shard([_toy(i, 5)], out, n, metadata_schema=META).info for i, n in ((0, 0), (1, 2))]
    with pytest.raises(ValueError, match="without gaps"):
        shards.assemble_index(out, dataset_name="toy", shards=infos, fields=["bin"], schema=None, lineage=None,
                              samples_per_shard=1, max_shard_bytes=tarfile.RECORDSIZE)


def test_prepare_version_unpublishes_only_a_latest_that_points_at_it(tmp_path: Path) -> None:
    root = str(tmp_path)
    v1 = shards.write_dataset([_toy(1, 5)], root, "toy", "v1", metadata_schema=META)
    latest = str(tmp_path / "shards" / "toy" / "LATEST.json")
    shards.prepare_version(shards.shard_dir(root, "toy", "v2"), latest)
    assert shards.latest_url(root, "toy") == v1.url  # another version: the current one stays
    Path(v1.url, ".tmp-leftover-00000.tar").write_bytes(b"x")
    shards.prepare_version(v1.url, latest)
    assert shards.latest_url(root, "toy") is None
    assert sorted(p.name for p in Path(v1.url).iterdir()) == ["00000.parquet", "00000.tar", "00000_stats.json"]
