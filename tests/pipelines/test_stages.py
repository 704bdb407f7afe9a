"""The Stage abstraction: several drops in one Beam job, counters named <stage>_drop_<reason>, the CLIP
threshold from two combiners (exactly the sort-based one), re-captions joined by key."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from curation import clip_score, storage
from pipelines import image_text as pipe
from pipelines.common import as_partitions, manifest_digest, manifest_url, quarantine_url
from pipelines.generation import EngineSpec

SETTINGS = pipe.ImageTextSettings()


# ----------------------------------------------------------------------------------------------
# The top-fraction threshold in two passes


def _two_pass(scores: list[float], cfg: clip_score.ClipFilterConfig) -> float | None:
    n_keep = clip_score.keep_count(len(scores), cfg)
    if n_keep is None:
        return clip_score.threshold_for(np.array(scores), cfg)
    hist: dict[int, int] = {}
    for x in scores:
        hist[clip_score.score_bucket(x)] = hist.get(clip_score.score_bucket(x), 0) + 1
    bucket, rank = clip_score.boundary_bucket(hist, n_keep)
    values: dict[float, int] = {}
    for x in scores:
        if clip_score.score_bucket(x) == bucket:
            values[x] = values.get(x, 0) + 1
    return clip_score.kth_largest(values, rank)


def test_score_bucket_is_monotone_over_signs_and_exponents() -> None:
    xs = sorted([-1.0, -0.5, -1e-9, -0.0, 0.0, 1e-300, 1e-9, 0.1, 0.30000001, 0.3, 0.9999, 1.0, 7.5])
    buckets = [clip_score.score_bucket(x) for x in xs]
    assert buckets == sorted(buckets)
    assert clip_score.score_bucket(0.3) == clip_score.score_bucket(0.30000001)  # neighbours share a bucket
    assert 0 <= min(buckets) and max(buckets) < 2 ** clip_score.SCORE_BUCKET_BITS


@pytest.mark.parametrize("fraction", [0.01, 0.3, 0.9, 0.999, 1.0])
def test_two_pass_threshold_equals_the_sort(fraction: float) -> None:
    rng = random.Random(7)
    cfg = clip_score.ClipFilterConfig(keep_top_fraction=fraction)
    # CLIP-like scores as float32 values, with heavy ties and a few negatives
    scores = [float(np.float32(rng.gauss(0.25, 0.05))) for _ in range(5000)] + [0.25] * 300 + [-0.1] * 7
    assert _two_pass(scores, cfg) == clip_score.threshold_for(np.array(scores), cfg)
    assert _two_pass([0.5], cfg) == 0.5
    same = [0.2] * 1000  # every score identical: the boundary bucket holds one distinct value
    assert _two_pass(same, cfg) == 0.2


def test_threshold_transform_per_drop_with_assert_that() -> None:
    rng = random.Random(3)
    cfg = clip_score.ClipFilterConfig(keep_top_fraction=0.7)
    records = [{"partition": p, "clip_score": float(np.float32(rng.random()))} for p in ("a", "b") for _ in range(400)]
    records += [{"partition": "c", "clip_score": 0.125}]
    expected = [(p, clip_score.threshold_for(np.array([r["clip_score"] for r in records if r["partition"] == p]), cfg))
                for p in ("a", "b", "c")]
    with TestPipeline(runner="FnApiRunner") as p:
        got = p | beam.Create(records) | pipe.TopFractionThresholds(cfg)
        assert_that(got, equal_to(expected))
    assert expected[2] == ("c", 0.125)
    n_keep_a = sum(r["clip_score"] >= expected[0][1] for r in records if r["partition"] == "a")
    assert n_keep_a == math.ceil(0.7 * 400)


# ----------------------------------------------------------------------------------------------
# Several drops in one job


def _landing(root: Path, shared: Path) -> list[str]:
    coco = [json.loads(x) for x in (shared / "image_caption/coco_mini/captions.jsonl").read_text().splitlines()][:12]
    drops = {"d1": coco[:6], "d2": coco[6:]}
    for name, rows in drops.items():
        d = root / "landing" / "image_text" / name
        d.mkdir(parents=True)
        lines = [{"path": str(shared / "image_caption/coco_mini" / c["image"]), "caption": c["captions"][0]} for c in rows]
        lines.append({"path": str(root / "missing.jpg"), "caption": "a file that is not there"})
        (d / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return sorted(drops)


def test_drops_in_one_job_equal_one_job_per_drop(tmp_path: Path, shared_data: Path) -> None:
    one, each = tmp_path / "one", tmp_path / "each"
    drops = _landing(one, shared_data)
    shutil.copytree(one / "landing", each / "landing")
    res = pipe.run_samples(str(one), drops, SETTINGS)
    for d in drops:
        pipe.run_samples(str(each), d, SETTINGS)
    assert res.partitions == ("d1", "d2") and res.stage == "samples"
    assert res.counters["samples_kept"] == 12 and res.counters["samples_drop_unreadable"] == 2
    assert res.drops_by_reason() == {"unreadable": 2}
    assert res.manifests["d2"] == manifest_url(str(one), "image_text_samples", "d2")
    for d in drops:
        for url in (manifest_url, quarantine_url):
            a, b = url(str(one), "image_text_samples", d), url(str(each), "image_text_samples", d)
            # ids are root-independent, uris are not: compare the content without them
            assert manifest_digest(a, ignore=("uri", "source_key", "error")) == manifest_digest(b, ignore=("uri", "source_key", "error"))
        assert len(storage.read_records(manifest_url(str(one), "image_text_samples", d))) == 6
        assert [r["reason"] for r in storage.read_records(quarantine_url(str(one), "image_text_samples", d))] == ["unreadable"]
    ph = pipe.run_phash(str(one), drops, SETTINGS)
    assert ph.counters == {"phash_kept": 12}
    assert {r["partition"] for r in storage.read_records(manifest_url(str(one), "image_phash", "d1"))} == {"d1"}


def test_stage_refuses_missing_upstream_and_repeated_drops(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="materialize image_text_samples"):
        pipe.run_phash(str(tmp_path), ["nope"], SETTINGS)
    with pytest.raises(ValueError, match="drops given twice"):
        as_partitions(["a", "b", "a"])


def _balanced(root: Path, shared: Path) -> None:
    coco = [json.loads(x) for x in (shared / "image_caption/coco_mini/captions.jsonl").read_text().splitlines()][:5]
    for part, rows in (("d1", coco[:3]), ("d2", coco[3:])):
        recs = [{"id": f"{part}-{i}", "partition": part, "uri": str(shared / "image_caption/coco_mini" / c["image"]),
                 "byte_offset": -1, "byte_size": -1, "caption": c["captions"][0]} for i, c in enumerate(rows)]
        if part == "d2":
            recs.append({"id": "d2-gone", "partition": part, "uri": str(root / "gone.jpg"), "byte_offset": -1,
                         "byte_size": -1, "caption": "A photo whose file was deleted after balancing."})
            recs.append({"id": "d2-trunc", "partition": part, "uri": recs[0]["uri"], "byte_offset": -1, "byte_size": -1,
                         "caption": "A long caption that the engine will TRUNCATE before it ends."})
        storage.write_table(manifest_url(str(root), "metaclip_balanced", part), pa.Table.from_pylist(recs))


def test_recaption_joins_by_key_over_drops(tmp_path: Path, shared_data: Path) -> None:
    _balanced(tmp_path, shared_data)
    s = pipe.ImageTextSettings(recaption_engine=EngineSpec("factory", "scripted_engine:EchoCaptionEngine"))
    res = pipe.run_recaption(str(tmp_path), ["d1", "d2"], s)
    d1 = storage.read_records(manifest_url(str(tmp_path), "recaptions", "d1"))
    d2 = storage.read_records(manifest_url(str(tmp_path), "recaptions", "d2"))
    assert sorted(r["id"] for r in d1) == ["d1-0", "d1-1", "d1-2"]
    assert sorted(r["id"] for r in d2) == ["d2-0", "d2-1", "d2-trunc"]
    for r in d1 + d2:
        if r["id"] == "d2-trunc":
            assert r["recaption_status"] == "truncated" and r["recaption"] is None
        else:  # each answer went back to its own record: the echo carries that record's caption
            assert r["recaption_status"] == "ok" and r["recaption"] == f"A photograph: {r['caption']}"
    q = storage.read_records(quarantine_url(str(tmp_path), "recaptions", "d2"))
    assert [(r["id"], r["stage"], r["reason"]) for r in q] == [("d2-gone", "recaption", "exception_FileNotFoundError")]
    assert storage.read_records(quarantine_url(str(tmp_path), "recaptions", "d1")) == []
    assert res.counters["recaption_kept"] == 5 and res.counters["recaption_rejected_truncated"] == 1
    assert res.plan["engine"] == "factory"


def test_cli_runs_every_drop_of_each_stage_on_the_test_pipeline(tmp_path: Path, shared_data: Path) -> None:
    drops = _landing(tmp_path, shared_data)
    tp = TestPipeline(runner="FnApiRunner")
    pipe.run(["--root", str(tmp_path), "--stages", "samples,phash"], test_pipeline=tp)  # two stages: tp, then a fresh copy
    for d in drops:
        assert len(storage.read_records(manifest_url(str(tmp_path), "image_phash", d))) == 6
