"""The documents pipeline on real PDFs, HTML pages and WARC files from ../shared/data (read in place
through symlinks), run for real on Beam's local runner: exact outcomes per input, nothing lost,
planted near-duplicates, shards the trainer reads, identical re-runs."""

from __future__ import annotations

import gzip
import json
import os
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from curation import pdf, shards, storage
from pipelines import documents as pipe
from pipelines.common import manifest_url, quarantine_url

DROP = "mix-0001"
SETTINGS = pipe.DocumentSettings(pdf=pdf.PdfConfig(ocr=False))  # scans -> needs_ocr: fast, Tesseract-free
TITAN = "359fee228518d55b921194561e9ca88e428df81940246f8fac7a75398377daea.html.gz"  # Reuters: Titan's map
PDFS = {  # file -> expected outcome (quality stage reason, or "kept")
    "docling_tests/2305.03393v1-pg9.pdf": "kept",
    "docling_tests/ocr_test.pdf": "needs_ocr",
    "py_pdf_samples/001-trivial__minimal-document.pdf": "empty",  # lorem ipsum lines under 4 words
    "py_pdf_samples/003-pdflatex-image__pdflatex-image.pdf": "language_mismatch",  # lorem ipsum
    "py_pdf_samples/005-libreoffice-writer-password__libreoffice-writer-password.pdf": "encrypted",
    "scientific_latex/texlive-publishers-doc__elsarticle__elstest-5p.pdf": "kept",
}


def _layout(root: Path, shared: Path) -> Path:
    drop = root / "landing" / "documents" / DROP
    drop.mkdir(parents=True)
    for rel in PDFS:
        os.symlink(shared / "pdf" / rel, drop / rel.rsplit("/", 1)[-1])
    bench = shared / "web" / "article_extraction_benchmark" / "html"
    os.symlink(bench / TITAN, drop / "titan.html.gz")
    os.symlink(shared / "web" / "wikipedia_duck_docling" / "wiki_duck.html", drop / "wiki_duck.html")
    os.symlink(shared / "web" / "warc_samples" / "example.warc.gz", drop / "example.warc.gz")
    os.symlink(shared / "web" / "warc_samples" / "example-bad.warc.gz.bad", drop / "bad.warc.gz")
    # planted near-duplicate: the Titan article again, one word removed
    page = gzip.decompress((bench / TITAN).read_bytes()).decode("utf-8")
    assert page.count(" spacecraft") == 1
    (drop / "titan-copy.html").write_text(page.replace(" spacecraft", ""), encoding="utf-8")
    (drop / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf\n")
    (drop / "notes.docx").write_bytes(b"PK\x03\x04")
    (drop / "README.txt").write_text("provenance: ../shared/data\n")
    return root


def _run_all(root: str, settings: pipe.DocumentSettings = SETTINGS) -> dict:
    pipe.run_parsed(root, DROP, settings)
    pipe.run_quality(root, DROP, settings)
    pipe.run_minhash(root, [DROP], settings)
    pipe.run_ocr_grounding(root, DROP, settings)
    return {"interleaved": pipe.run_interleaved_shards(root, [DROP], settings),
            **pipe.run_ocr_grounding_shards(root, [DROP], settings)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, dict, float]:
    root = _layout(tmp_path_factory.mktemp("docs"), shared_data)
    t0 = time.perf_counter()
    indexes = _run_all(str(root))
    return root, indexes, time.perf_counter() - t0


def _m(root: Path, asset: str, part: str = DROP) -> list[dict]:
    return storage.read_records(manifest_url(str(root), asset, part))


def _q(root: Path, asset: str, part: str = DROP) -> list[dict]:
    return storage.read_records(quarantine_url(str(root), asset, part))


def _name(source: str) -> str:
    return source.split("/", 1)[1]


def test_parsed_every_input_in_manifest_or_quarantine(corpus) -> None:  # noqa: ANN001
    root, _, _ = corpus
    kept, bad = _m(root, "documents_parsed"), _q(root, "documents_parsed")
    assert sorted((_name(r["source"]), r["kind"]) for r in kept) == [
        ("001-trivial__minimal-document.pdf", "pdf"), ("003-pdflatex-image__pdflatex-image.pdf", "pdf"),
        ("2305.03393v1-pg9.pdf", "pdf"),
        ("example.warc.gz#<urn:uuid:a9c51e3e-0221-11e7-bf66-0242ac120005>", "warc"),
        ("texlive-publishers-doc__elsarticle__elstest-5p.pdf", "pdf"),
        ("titan-copy.html", "html"), ("titan.html.gz", "html"), ("wiki_duck.html", "html")]
    assert sorted((_name(r["source"]).split("#")[0], r["stage"], r["reason"]) for r in bad) == [
        ("005-libreoffice-writer-password__libreoffice-writer-password.pdf", "parsed", "encrypted"),
        ("bad.warc.gz", "parsed", "warc_read_error"),
        ("broken.pdf", "parsed", "unreadable_pdf"),
        ("example.warc.gz", "parsed", "revisit"),
        ("notes.docx", "parsed", "unsupported_format"),
        ("ocr_test.pdf", "parsed", "needs_ocr"),
    ]
    # every file of the drop (README.txt aside) is accounted for
    files = {p.name for p in (root / "landing" / "documents" / DROP).iterdir()} - {"README.txt"}
    assert {_name(r["source"]).split("#")[0] for r in kept + bad} == files
    assert len({r["id"] for r in kept + bad}) == len(kept) + len(bad)
    # one element schema for both parsers, image bytes in the side table (not in the document JSON)
    by_name = {_name(r["source"]): r for r in kept}
    keys = {k for r in kept for e in json.loads(r["document"])["elements"] for k in e}
    assert keys == {"type", "role", "page", "bbox", "text", "image_sha256", "image_ext", "image_width", "image_height",
                    "src", "alt", "caption", "ocr"}
    duck = json.loads(by_name["wiki_duck.html"]["document"])["elements"]
    assert {e["type"] for e in duck} == {"text", "image"} and all(e["src"].startswith("https://") for e in duck if e["type"] == "image")
    paper = json.loads(by_name["2305.03393v1-pg9.pdf"]["document"])
    assert paper["pages"][0]["page"] == 1 and by_name["2305.03393v1-pg9.pdf"]["n_tables"] == 1
    images = storage.read_records(manifest_url(str(root), "documents_parsed_images", DROP))
    img_doc = by_name["003-pdflatex-image__pdflatex-image.pdf"]
    assert [(i["doc_id"], i["ext"], i["width"], i["height"]) for i in images] == [(img_doc["id"], "jpeg", 300, 200)]
    assert images[0]["sha256"] == next(e["image_sha256"] for e in json.loads(img_doc["document"])["elements"] if e["type"] == "image")


def test_quality_reasons(corpus) -> None:  # noqa: ANN001
    root, _, _ = corpus
    kept, bad = _m(root, "document_quality"), _q(root, "document_quality")
    assert len(kept) + len(bad) == len(_m(root, "documents_parsed"))
    assert sorted(_name(r["source"]) for r in kept) == [
        "2305.03393v1-pg9.pdf", "texlive-publishers-doc__elsarticle__elstest-5p.pdf", "titan-copy.html", "titan.html.gz"]
    assert sorted((_name(r["source"]).split("#")[0], r["reason"]) for r in bad) == [
        ("001-trivial__minimal-document.pdf", "empty"),
        ("003-pdflatex-image__pdflatex-image.pdf", "language_mismatch"),
        ("example.warc.gz", "too_few_images"),  # example.com: no picture (OBELICS: >= 1 image per web page)
        ("wiki_duck.html", "too_many_words"),  # 2125 words > OBELICS's 2000
    ]
    titan = next(r for r in kept if r["source"].endswith("titan.html.gz"))
    assert titan["language"] == "en" and 0.02 < titan["knowledge_density"] < 1 and titan["reading_ease"] > 0
    assert json.loads(titan["element_drops"]) == {"text:char_repetition": 1, "text:too_few_words": 1}


def test_minhash_clusters_the_planted_near_duplicate(corpus) -> None:  # noqa: ANN001
    root, _, _ = corpus
    kept, dups = _m(root, "document_minhash_clusters", "all"), _q(root, "document_minhash_clusters", "all")
    assert len(kept) == 3 and len(dups) == 1
    original = next(r for r in _m(root, "document_quality") if r["source"].endswith("titan.html.gz"))
    copy = next(r for r in _m(root, "document_quality") if r["source"].endswith("titan-copy.html"))
    d = dups[0]
    # the original has one word more: it is the representative, the copy its near-duplicate
    assert (d["id"], d["reason"], d["dup_of"], d["cluster_size"], d["is_representative"]) == (
        copy["id"], "near_duplicate", original["id"], 2, False)
    assert 0.9 <= d["est_jaccard"] < 1.0
    rep = next(r for r in kept if r["id"] == original["id"])
    assert rep["is_representative"] and rep["cluster"] == min(original["id"], copy["id"])
    assert {r["cluster_size"] for r in kept if r["id"] != original["id"]} == {1}


def test_ocr_grounding_samples(corpus) -> None:  # noqa: ANN001
    root, _, _ = corpus
    samples, bad = _m(root, "ocr_grounding_samples"), _q(root, "ocr_grounding_samples")
    assert bad == []
    pages = Counter((r["source"].rsplit("/", 1)[-1], r["page"]) for r in samples)
    # the 1-page paper and the first 2 pages of the 4-page one
    assert sorted(pages) == [("2305.03393v1-pg9.pdf", 1), ("texlive-publishers-doc__elsarticle__elstest-5p.pdf", 1),
                             ("texlive-publishers-doc__elsarticle__elstest-5p.pdf", 2)]
    assert Counter(r["task"] for r in samples) == {"ocr": 9, "grounding": 24}
    for r in samples:
        if r["task"] == "grounding":
            x1, y1, x2, y2 = r["box"]
            assert 0 <= x1 < x2 <= r["width"] and 0 <= y1 < y2 <= r["height"]
            assert r["answer"] == f"[{x1}, {y1}, {x2}, {y2}]" and r["phrase"] in r["prompt"]
        assert r["image"][:8] == b"\x89PNG\r\n\x1a\n"


def test_shards_are_chat_samples_the_trainer_reads(corpus) -> None:  # noqa: ANN001
    root, indexes, _ = corpus
    assert {k: v.num_samples for k, v in indexes.items()} == {"interleaved": 3, "ocr": 9, "grounding": 24}
    for name, index in indexes.items():
        assert storage.read_json(str(root / "shards" / name / "LATEST.json")) == {"version": index.version, "url": index.url}
        assert re.fullmatch(r"v-[0-9a-f]{12}", index.version)
        for url in index.tar_urls:
            assert shards.verify_shard(url) == []
            for smp in shards.iter_samples(url):
                obj = json.loads(smp.fields["json"])
                parts = [p for m in obj["messages"] if isinstance(m["content"], list) for p in m["content"]]
                n_images = sum(p["type"] == "image" for p in parts)
                image_fields = sorted(k for k in smp.fields if k != "json")
                assert image_fields == [f"img{i:03d}.{k.rsplit('.', 1)[-1]}" for i, k in enumerate(image_fields)]
                assert n_images == len(image_fields)
                if name == "interleaved":
                    assert [m["role"] for m in obj["messages"]] == ["assistant"] and len(obj["elements"]) == len(parts)
                else:
                    assert [m["role"] for m in obj["messages"]] == ["user", "assistant"] and image_fields == ["img000.png"]
    # the grounding answer is what trainer/rewards.py's grounding reward parses
    rewards = pytest.importorskip("trainer.rewards")
    for smp in shards.iter_samples(indexes["grounding"].tar_urls[0]):
        obj = json.loads(smp.fields["json"])
        assert rewards.parse_box(obj["messages"][-1]["content"]) == tuple(obj["box"]) or \
            list(rewards.parse_box(obj["messages"][-1]["content"])) == obj["box"]
        assert rewards.grounding_reward(obj["messages"][-1]["content"], obj["box"]) == 1.0
    # HTML images that cannot be fetched (no network; a relative path on the local page) are dropped
    # with their reason, and their documents stay
    drops = storage.read_records(quarantine_url(str(root), "interleaved_shards", "all"))
    assert Counter(r["reason"] for r in drops) == {"fetch_error": 1}
    assert drops[0]["src"] == "https://www.sciencealert.com/images/2019-11/titan_geological_map_nasa.jpg"


def test_rerun_gives_identical_outputs(corpus, tmp_path: Path) -> None:  # noqa: ANN001
    """The CLI over the same root: same rows in every manifest, same shard versions."""
    root, indexes, _ = corpus
    assets = ("documents_parsed", "documents_parsed_images", "document_quality", "ocr_grounding_samples")
    before = {a: _m(root, a) for a in assets}
    clusters = _m(root, "document_minhash_clusters", "all")
    pipe.run(["--root", str(root), "--stages", "all", "--no-ocr"])
    for a in assets:
        key = (lambda r: (r["doc_id"], r["sha256"])) if a == "documents_parsed_images" else (lambda r: r["id"])
        assert sorted(_m(root, a), key=key) == sorted(before[a], key=key), a
    assert sorted(_m(root, "document_minhash_clusters", "all"), key=lambda r: r["id"]) == sorted(clusters, key=lambda r: r["id"])
    for name, index in indexes.items():
        assert storage.read_json(str(root / "shards" / name / "LATEST.json"))["version"] == index.version


def test_parser_exception_is_a_dead_letter(tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drop = tmp_path / "landing" / "documents" / DROP
    drop.mkdir(parents=True)
    os.symlink(shared_data / "pdf" / "docling_tests" / "2305.03393v1-pg9.pdf", drop / "ok.pdf")
    os.symlink(shared_data / "pdf" / "py_pdf_samples" / "001-trivial__minimal-document.pdf", drop / "boom.pdf")
    real = pipe.pdf.parse_pdf

    def parse(data: bytes, source: str = "", config=None):  # noqa: ANN001, ANN202
        if source.endswith("boom.pdf"):
            raise RuntimeError("parser crashed")
        return real(data, source, config)

    monkeypatch.setattr(pipe.pdf, "parse_pdf", parse)
    pipe.run_parsed(str(tmp_path), DROP, SETTINGS)
    assert [_name(r["source"]) for r in _m(tmp_path, "documents_parsed")] == ["ok.pdf"]
    bad = _q(tmp_path, "documents_parsed")
    assert [(_name(r["source"]), r["stage"], r["reason"]) for r in bad] == [("boom.pdf", "parsed", "exception_RuntimeError")]
    assert "parser crashed" in bad[0]["error"] and bad[0]["id"] and bad[0]["partition"] == DROP


@pytest.mark.slow
def test_every_shared_pdf_gives_a_document_or_a_reason(tmp_path: Path, shared_data: Path) -> None:
    """All 77 PDFs of ../shared/data/pdf (OCR on where Tesseract is installed)."""
    drop = tmp_path / "landing" / "documents" / "all-pdfs"
    drop.mkdir(parents=True)
    listed = [line.split("\t")[0] for line in (shared_data / "pdf" / "MANIFEST.tsv").read_text().splitlines()[1:] if line]
    for rel in listed:
        os.symlink(shared_data / "pdf" / rel, drop / rel.replace("/", "__"))
    t0 = time.perf_counter()
    pipe.run_parsed(str(tmp_path), "all-pdfs", pipe.DocumentSettings())
    elapsed = time.perf_counter() - t0
    kept, bad = _m(tmp_path, "documents_parsed", "all-pdfs"), _q(tmp_path, "documents_parsed", "all-pdfs")
    assert len(listed) == 77 and len(kept) + len(bad) == 77
    reasons = Counter(r["reason"] for r in bad)
    assert reasons["encrypted"] == 1
    assert set(reasons) <= {"encrypted", "needs_ocr", "no_content", "unreadable_pdf"}
    if pdf.ocr_available():
        assert "needs_ocr" not in reasons
    pages = sum(r["n_pages"] for r in kept)
    print(f"77 PDFs: {len(kept)} documents, {dict(reasons)}, {pages} pages in {elapsed:.1f}s ({pages / elapsed:.1f} pages/s)")


def test_pdf_images_come_from_the_side_table(corpus) -> None:  # noqa: ANN001
    """A PDF's picture reaches its interleaved sample from documents_parsed_images (no re-parse),
    in reading order, as a JPEG the trainer decodes; a missing blob is a counted drop, not a crash."""
    from io import BytesIO

    from PIL import Image

    root, _, _ = corpus
    row = next(r for r in _m(root, "documents_parsed") if r["source"].endswith("003-pdflatex-image__pdflatex-image.pdf"))
    blobs = {r["sha256"]: r["bytes"] for r in _m(root, "documents_parsed_images")}
    sample, dropped = pipe.interleaved_sample(row, pipe.ImageSource(blobs, SETTINGS.fetch), SETTINGS.pdf_quality)
    obj = json.loads(sample.fields["json"])
    kinds = [p["type"] for p in obj["messages"][0]["content"]]
    assert dropped == [] and kinds.count("image") == 1 and sorted(sample.fields) == ["img000.jpg", "json"]
    assert Image.open(BytesIO(sample.fields["img000.jpg"])).size == (300, 200)
    image_prov = next(e for e in obj["elements"] if e["type"] == "image")
    assert image_prov["page"] == 1 and len(image_prov["bbox"]) == 4
    sample, dropped = pipe.interleaved_sample(row, pipe.ImageSource({}, SETTINGS.fetch), SETTINGS.pdf_quality)
    assert [d["reason"] for d in dropped] == ["image_missing"] and sorted(sample.fields) == ["json"]


def test_drop_inputs_and_kinds(tmp_path: Path) -> None:
    drop = tmp_path / "landing" / "documents" / "d1"
    (drop / "sub").mkdir(parents=True)
    for name in ("a.PDF", "b.htm", "c.html.gz", "d.warc.gz", "e.arc", "README.txt", "LICENSE", ".hidden", "pic.png",
                 "sub/f.xhtml", "g.docx"):
        (drop / name).write_bytes(b"x")
    got = [(r["source"], r["kind"]) for r in pipe.drop_inputs(str(tmp_path), "d1")]
    assert got == [("d1/a.PDF", "pdf"), ("d1/b.htm", "html"), ("d1/c.html.gz", "html"), ("d1/d.warc.gz", "warc"),
                   ("d1/e.arc", "warc"), ("d1/g.docx", "unsupported"), ("d1/sub/f.xhtml", "html")]
    assert pipe.list_partitions(str(tmp_path)) == ["d1"]


def test_html_images_fetched_over_http(tmp_path: Path) -> None:
    """Images of a page served on 127.0.0.1 reach the interleaved sample; a 404 and a too-small
    picture are dropped parts with their reasons; the document stays."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from PIL import Image

    site = tmp_path / "site"
    site.mkdir()
    Image.new("RGB", (400, 300), (200, 40, 40)).save(site / "big.jpg", quality=90)
    Image.new("RGB", (40, 40), (0, 0, 0)).save(site / "icon.png")
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        drop = tmp_path / "landing" / "documents" / DROP
        drop.mkdir(parents=True)
        paras = (("The harbour of Brest sees tides of up to 8 metres in spring, and fishermen plan their trips around "
                  "the tables that the port authority publishes every January for the whole year."),
                 ("Because the Moon and the Sun pull together at new and full moon, the range is largest then, and it "
                  "is smallest at the quarter moons, when the two pulls partly cancel each other out."),
                 ("In Roscoff the ferry to Plymouth leaves at high water, so its timetable shifts by about fifty "
                  "minutes from one day to the next, as the tides do."))
        (drop / "page.html").write_text(
            f"<html><body><article><h1>Tides at Brest</h1><p>{paras[0]}</p><img src='{base}/big.jpg' alt='harbour'>"
            f"<p>{paras[1]}</p><img src='{base}/missing.jpg'><p>{paras[2]}</p>"
            f"<img src='{base}/icon.png'><p>Sailors who ignore these tables risk running aground on the sandbanks of the bay.</p>"
            "</article></body></html>")
        root = str(tmp_path)
        pipe.run_parsed(root, DROP, SETTINGS)
        pipe.run_quality(root, DROP, SETTINGS)
        pipe.run_minhash(root, [DROP], SETTINGS)
        index = pipe.run_interleaved_shards(root, [DROP], SETTINGS)
    finally:
        server.shutdown()
    (smp,) = list(shards.iter_samples(index.tar_urls[0]))
    assert sorted(smp.fields) == ["img000.jpg", "json"]
    assert smp.fields["img000.jpg"] == (site / "big.jpg").read_bytes()
    parts = json.loads(smp.fields["json"])["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "text", "image", "text", "text", "text"]
    drops = storage.read_records(quarantine_url(root, "interleaved_shards", "all"))
    assert sorted((d["src"].rsplit("/", 1)[-1], d["reason"], d["error"] if d["reason"] != "http_error" else "") for d in drops) == [
        ("icon.png", "image_too_small", "40x40"), ("missing.jpg", "http_error", "")]
