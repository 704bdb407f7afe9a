"""Shards as a Beam stage (pipelines/shards.py): consecutive numbering, exact counts, the byte limit,
byte-identical re-runs on 1 and 2 workers, failures by reason, duplicate keys, index written last."""

from __future__ import annotations

import json
import os
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pytest

from curation import shards, storage
from pipelines.common import run_pipeline
from pipelines.shards import ShardSource, WriteShards

SCHEMA = pa.schema([("id", pa.string()), ("n", pa.int64())])
VERSION = "v-test"


def record(i: int, size: int = 100) -> dict:
    # ids out of order on purpose: the stage sorts by key
    return {"id": f"s{(i * 7919) % 1000:04d}", "n": i, "size": size}


def to_sample(rec: dict) -> shards.Sample | shards.Failure:
    if rec.get("fail"):
        return shards.Failure(rec["id"], rec["fail"])
    if rec.get("crash"):
        raise RuntimeError("loader crashed")
    payload = bytes([rec["n"] % 251]) * rec["size"]
    return shards.Sample(rec["id"], {"bin": payload, "txt": f"#{rec['n']}"}, {"id": rec["id"], "n": rec["n"]})


def expected_size(rec: dict) -> int:
    return shards.member_bytes(rec["size"]) + shards.member_bytes(len(f"#{rec['n']}"))


def run_stage(root: Path, records: list[dict], argv: tuple[str, ...] = (), version: str = VERSION,
              **kwargs) -> shards.ShardIndex:
    out = shards.shard_dir(str(root), "toy", version)

    def build(p):  # noqa: ANN001
        (p | beam.Create(records, reshuffle=False)
         | WriteShards(out, dataset_name="toy", metadata_schema=SCHEMA, lineage={"inputs": ["x"]},
                       source=ShardSource(to_sample, size=expected_size), publish_root=str(root), **kwargs))

    run_pipeline(argv, build)
    return shards.read_index(out)


def sequential(root: Path, records: list[dict], **kwargs) -> shards.ShardIndex:
    samples = [to_sample(r) for r in sorted(records, key=lambda r: r["id"])]
    return shards.write_shards(iter(samples), shards.shard_dir(str(root), "toy", VERSION), dataset_name="toy",
                               lineage={"inputs": ["x"]}, metadata_schema=SCHEMA, **kwargs)


def files(folder: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def test_numbering_counts_and_bytes_match_the_sequential_writer(tmp_path: Path) -> None:
    records = [record(i) for i in range(23)]
    index = run_stage(tmp_path / "stage", records, samples_per_shard=5)
    assert [s.name for s in index.shards] == ["00000", "00001", "00002", "00003", "00004"]
    assert [s.samples for s in index.shards] == [5, 5, 5, 5, 3]
    keys = [r["key"] for url in index.parquet_urls for r in storage.read_records(url)]
    assert keys == sorted(r["id"] for r in records)
    assert shards.verify_index(index.url) == []
    ref = sequential(tmp_path / "seq", records, samples_per_shard=5)
    assert files(index.url) == files(ref.url)  # tars, parquets, stats and index.json
    latest = storage.read_json(str(tmp_path / "stage" / "shards" / "toy" / "LATEST.json"))
    assert latest == {"version": VERSION, "url": index.url}


def test_rerun_and_two_workers_give_identical_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the SDK worker processes import this module to unpickle to_sample
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    records = [record(i, size=50 + (i * 397) % 3000) for i in range(40)]
    settings = {"samples_per_shard": 6, "max_shard_bytes": 2 * 10240}
    first = run_stage(tmp_path / "a", records, **settings)
    again = run_stage(tmp_path / "a", records, **settings)  # over the first run's files
    multi = run_stage(tmp_path / "b", records, ("--runner=FnApiRunner", "--direct_running_mode=multi_processing",
                                                "--direct_num_workers=2"), **settings)
    assert files(first.url) == files(again.url) == files(multi.url)
    assert len(first.shards) > 7  # the byte limit split some blocks


def test_max_shard_bytes_splits_blocks_with_the_writers_rule(tmp_path: Path) -> None:
    limit = 2 * 10240
    sizes = [3000, 5000, 9000, 100, 40000, 200, 7000, 7000, 7000, 300, 10, 10, 6000]
    records = [record(i, size=s) for i, s in enumerate(sizes)]
    index = run_stage(tmp_path, records, samples_per_shard=4, max_shard_bytes=limit)
    ordered = sorted(records, key=lambda r: r["id"])
    expected: list[list[str]] = []
    for b in range(0, len(ordered), 4):  # blocks of samples_per_shard ranks, split by ShardWriter's rule
        block = ordered[b:b + 4]
        cuts = shards.shard_starts([expected_size(r) for r in block], 4, limit) + [len(block)]
        expected += [[r["id"] for r in block[i:j]] for i, j in zip(cuts, cuts[1:])]
    got = [[r["key"] for r in storage.read_records(u)] for u in index.parquet_urls]
    assert got == expected
    assert [s.name for s in index.shards] == [shards.shard_name(i) for i in range(len(expected))]
    for s in index.shards:
        assert s.bytes <= limit or s.samples == 1  # only a sample over the limit alone passes it
    assert any(s.bytes > limit and s.samples == 1 for s in index.shards)
    assert shards.verify_index(index.url) == []


def test_failures_keep_their_slot_and_are_counted_by_reason(tmp_path: Path) -> None:
    records = [record(i) for i in range(10)]
    ordered = sorted(records, key=lambda r: r["id"])
    for r in ordered[3:6]:  # shard 00001 (ranks 3-5) fails entirely
        r["fail"] = "file_not_found"
    ordered[0]["fail"] = "http_error"
    index = run_stage(tmp_path, records, samples_per_shard=3)
    assert [s.samples for s in index.shards] == [2, 0, 3, 1]
    assert index.shards[0].failures == {"http_error": 1}
    assert index.shards[1].failures == {"file_not_found": 3}
    assert index.failures == {"file_not_found": 3, "http_error": 1}
    stats = storage.read_json(f"{index.url}/00001_stats.json")
    assert (stats["count"], stats["successes"], stats["failed"]) == (3, 0, 3)
    assert shards.verify_index(index.url) == []


def test_duplicate_keys_raise(tmp_path: Path) -> None:
    records = [record(i) for i in range(6)] + [dict(record(2), n=99)]
    with pytest.raises(shards.DuplicateKeyError, match="duplicate sample key 's0838'"):
        run_stage(tmp_path, records)
    assert not (tmp_path / "shards" / "toy" / VERSION / "index.json").exists()


def test_crash_before_the_index_leaves_no_latest_on_a_half_version(tmp_path: Path) -> None:
    records = [record(i) for i in range(8)]
    good = run_stage(tmp_path, records, samples_per_shard=2)
    latest = tmp_path / "shards" / "toy" / "LATEST.json"
    assert json.loads(latest.read_text())["version"] == VERSION
    crashing = [dict(r, crash=True) if i == 5 else r for i, r in enumerate(records)]
    with pytest.raises(Exception, match="loader crashed"):
        run_stage(tmp_path, crashing, samples_per_shard=2)
    assert not Path(good.url, "index.json").exists()
    assert not latest.exists()  # it pointed at the version being rewritten
    assert not [p for p in Path(good.url).iterdir() if p.name.startswith(".tmp-")]


def test_no_records_give_an_empty_index(tmp_path: Path) -> None:
    index = run_stage(tmp_path, [])
    assert (index.shards, index.num_samples) == ((), 0)
    assert [c["name"] for c in index.schema] == ["key", "id", "n"]


def test_image_text_run_shards_loads_references_and_counts_missing_files(tmp_path: Path, shared_data: Path) -> None:
    import hashlib

    from pipelines import image_text as it

    photos = sorted((shared_data / "image_caption" / "coco_mini").rglob("*.jpg"))[:5]
    rows = []
    for i, f in enumerate(photos):
        data = f.read_bytes()
        rows.append({"id": hashlib.sha256(data).hexdigest()[:32], "partition": f"d{i % 2}", "source_key": f.name,
                     "uri": str(f), "byte_offset": None, "byte_size": None, "caption": f"a photo {i}",
                     "sha256": hashlib.sha256(data).hexdigest(), "n_bytes": len(data), "format": "jpeg", "width": 9,
                     "height": 9, "phash": str(i), "clip_score": 0.25, "metaclip_entries": ["cat"],
                     "recaption": "a cat" if i == 2 else None, "recaption_model": "m" if i == 2 else None,
                     "recaption_status": "ok" if i == 2 else None})
    rows.append(dict(rows[0], id="f" * 32, partition="d1", uri=str(tmp_path / "gone.jpg")))
    for part in ("d0", "d1"):
        storage.write_records(str(tmp_path / "manifests" / "recaptions" / f"{part}.parquet"),
                              [r for r in rows if r["partition"] == part])
    index = it.run_shards(str(tmp_path), ["d0", "d1"], it.ImageTextSettings(samples_per_shard=2))
    assert index.failures == {"file_not_found": 1} and index.num_samples == 5
    assert [s.samples for s in index.shards] == [2, 2, 1]  # the missing file keeps its slot in the last shard
    ok = sorted(rows[:-1], key=lambda r: r["id"])
    ref = shards.write_shards((it._shard_sample(r, Path(r["uri"]).read_bytes()) for r in ok), str(tmp_path / "ref"),
                              dataset_name="image_text", samples_per_shard=2, metadata_schema=it.SHARD_METADATA_SCHEMA)
    assert [s.sha256 for s in index.shards] == [s.sha256 for s in ref.shards]
    assert shards.verify_index(index.url) == []
