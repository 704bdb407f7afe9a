"""The documents asset group through Dagster, for real: a tiny drop of real PDFs and HTML pages
(read in place from ../shared/data through symlinks), an ephemeral instance, every asset and check."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from assets import documents
from assets.partitions import document_drops
from assets.resources import BeamResource, StorageResource
from curation import shards, storage
from pipelines.common import manifest_url, quarantine_url

DROP = "docs-0001"
PDFS = ["docling_tests/2305.03393v1-pg9.pdf", "py_pdf_samples/003-pdflatex-image__pdflatex-image.pdf",
        "py_pdf_samples/005-libreoffice-writer-password__libreoffice-writer-password.pdf"]


def _root(tmp_path: Path, shared: Path) -> Path:
    drop = tmp_path / "landing" / "documents" / DROP
    drop.mkdir(parents=True)
    for rel in PDFS:
        os.symlink(shared / "pdf" / rel, drop / rel.rsplit("/", 1)[-1])
    os.symlink(shared / "web" / "warc_samples" / "example.warc.gz", drop / "example.warc.gz")
    # a local page with a local picture (file:// image, fetched by the shard writer)
    from PIL import Image

    Image.new("RGB", (320, 240), (30, 120, 200)).save(drop / "chart.png")
    (drop / "page.html").write_text(
        "<html><head><title>Tides</title></head><body><article><h1>Tides on the Atlantic coast</h1>"
        "<p>The tides at the harbour of Brest rise by up to 8 metres during spring tides, and the local fishermen plan "
        "their trips around the tables published by the port authority every year in January.</p>"
        "<figure><img src='chart.png' width='320' height='240' alt='tide chart'><figcaption>Tide heights in March 2024."
        "</figcaption></figure><p>Because the Moon and the Sun pull together at new and full moon, the range is largest "
        "then, and it is smallest at the quarter moons, when the two pulls partly cancel each other out.</p>"
        "<p>Sailors who ignore these tables risk running aground on the sandbanks near the entrance of the bay.</p>"
        "</article></body></html>")
    return tmp_path


def test_documents_assets_materialize(tmp_path: Path, shared_data: Path) -> None:
    root = _root(tmp_path, shared_data)
    resources = {"storage": StorageResource(root=str(root)), "beam_runner": BeamResource()}
    run_config = {"ops": {"documents_parsed": {"config": {"ocr": False}},
                          "ocr_grounding_samples": {"config": {"pages_per_doc": 1}}}}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(document_drops.name, [DROP])
        per_drop = ["documents_parsed", "document_quality"]
        r1 = dg.materialize(documents.ASSETS, selection=per_drop, partition_key=DROP, instance=instance,
                            resources=resources, run_config={"ops": {"documents_parsed": run_config["ops"]["documents_parsed"]}})
        r2 = dg.materialize(documents.ASSETS, selection=["document_minhash_clusters"], instance=instance, resources=resources)
        r3 = dg.materialize(documents.ASSETS, selection=["ocr_grounding_samples"], partition_key=DROP, instance=instance,
                            resources=resources, run_config={"ops": {"ocr_grounding_samples": run_config["ops"]["ocr_grounding_samples"]}})
        r4 = dg.materialize(documents.ASSETS, selection=["interleaved_shards", "ocr_grounding_shards"], instance=instance,
                            resources=resources)
        for r in (r1, r2, r3, r4):
            assert r.success
            for ev in r.get_asset_check_evaluations():
                assert ev.passed, (ev.asset_key, ev.check_name, ev.metadata)
        checks = [ev.check_name for r in (r1, r2, r3, r4) for ev in r.get_asset_check_evaluations()]
        assert len(checks) == 16

        mats = {}
        for r in (r1, r2, r3, r4):
            for ev in r.get_asset_materialization_events():
                mats[ev.asset_key.path[-1]] = ev.materialization.metadata

    parsed = mats["documents_parsed"]
    # 3 PDFs + 1 HTML + the WARC's 2 content records (a response and a revisit)
    assert parsed["files_in"].value == 5
    assert parsed["records_out"].value == 4 and parsed["records_dropped"].value == 2
    assert "| parsed | encrypted | 1 |" in parsed["drops_by_reason"].value
    assert "| parsed | revisit | 1 |" in parsed["drops_by_reason"].value
    assert parsed["pdf_pages"].value == 2 and parsed["pdf_images_stored"].value == 1
    quality = mats["document_quality"]
    assert quality["documents_in"].value == 4 and quality["documents_out"].value == 2
    assert "| quality | language_mismatch | 1 |" in quality["drops_by_reason"].value  # the lorem-ipsum pdflatex page
    assert "| quality | too_few_images | 1 |" in quality["drops_by_reason"].value  # example.com has no picture
    assert "knowledge density" in quality["knowledge_density"].value
    assert mats["document_minhash_clusters"]["clusters"].value == 2
    og = mats["ocr_grounding_samples"]
    assert og["pages_rendered"].value == 1 and og["samples"].value == 11  # page + 2 regions + 8 grounding
    inter = mats["interleaved_shards"]
    assert inter["samples"].value == 2 and inter["images"].value == 1 and inter["image_parts_dropped"].value == 0
    assert "data:image/jpeg;base64," in inter["sample_preview"].value
    ogs = mats["ocr_grounding_shards"]
    assert ogs["ocr_samples"].value == 3 and ogs["grounding_samples"].value == 8

    latest = storage.read_json(str(root / "shards" / "interleaved" / "LATEST.json"))
    index = shards.read_index(latest["url"])
    html_sample = next(s for url in index.tar_urls for s in shards.iter_samples(url) if json.loads(s.fields["json"])["kind"] == "html")
    assert sorted(html_sample.fields) == ["img000.png", "json"]
    parts = json.loads(html_sample.fields["json"])["messages"][0]["content"]
    assert [p["type"] for p in parts][:4] == ["text", "text", "image", "text"]
    assert parts[3]["text"] == "Tide heights in March 2024."
    assert storage.read_records(quarantine_url(str(root), "interleaved_shards", "all")) == []
    assert len(storage.read_records(manifest_url(str(root), "ocr_grounding_samples", DROP))) == 11


@pytest.mark.slow
def test_demo_documents(tmp_path: Path) -> None:
    """The demo drops from the pikepdf and trafilatura sdists (pip download: PyPI), materialized."""
    from assets import demo_documents
    from curation import pdf

    root = str(tmp_path / "data")
    drops = demo_documents.prepare(root, tmp_path / "cache")
    assert drops == ["pdf-2025-01", "web-2025-01"] and demo_documents.prepare(root, tmp_path / "cache") == drops
    assert (tmp_path / "data" / "landing" / "documents" / "pdf-2025-01" / "README.txt").exists()
    with dg.instance_for_test() as instance:
        summary = demo_documents.materialize(root, drops, instance, {"storage": StorageResource(root=root),
                                                                      "beam_runner": BeamResource()})
    assert summary["files in"] == 23
    reasons = {k: v for k, v in summary["drops by reason"].items() if not k.startswith("interleaved_shards:")}
    assert reasons["documents_parsed:encrypted"] == 1 and reasons["documents_parsed:unreadable_pdf"] == 1
    assert reasons["documents_parsed:http_status"] == 1  # the WARC's 404
    if pdf.ocr_available():  # figures of the README (scans OCR'd by Tesseract)
        assert reasons["document_minhash_clusters:near_duplicate"] == 3
        assert (summary["interleaved samples"], summary["ocr samples"], summary["grounding samples"]) == (7, 15, 40)
