"""Interleaved documents (PDF, HTML, WARC) as Beam pipelines, runnable without Dagster.

    python -m pipelines.documents --root ./data --stages all
    python -m pipelines.documents --root ./data --stages parsed,quality --partitions pdf-2025-01 --no-ocr

| stage | scope | reads | writes |
|---|---|---|---|
| parsed | per drop | landing/documents/<drop>/*.pdf, *.html, *.htm (.gz), *.warc, *.arc (.gz) | manifests/documents_parsed/<drop>.parquet, manifests/documents_parsed_images/<drop>.parquet |
| quality | per drop | documents_parsed | manifests/document_quality/<drop>.parquet |
| minhash | corpus | document_quality (all drops) | manifests/document_minhash_clusters/all.parquet |
| ocr_grounding | per drop | document_quality, document_minhash_clusters, the landing PDFs | manifests/ocr_grounding_samples/<drop>.parquet |
| interleaved_shards | corpus | document_quality, document_minhash_clusters, documents_parsed_images | shards/interleaved/<version>/ |
| ocr_grounding_shards | corpus | ocr_grounding_samples | shards/ocr/<version>/, shards/grounding/<version>/ |

Every rejected file, record, document, page or image part goes to quarantine/<asset>/<partition>.parquet
with ``stage``, ``reason`` and ``error``; a file that makes a parser raise becomes a dead letter there
(reason ``exception_<Type>``) instead of failing the run.

**One element schema.** ``curation.pdf`` and ``curation.html`` describe elements differently (PDF:
``type`` text|image|table, ``page``, ``bbox``, ``image_sha256``...; HTML: ``role``, ``src``,
``width``/``height``). ``normalise_elements`` maps both onto one schema, which the ``document``
JSON column of every manifest holds::

    {type: 'text'|'image'|'table', role: 'paragraph'|'heading'|'list'|'table'|'quote'|'code'|'caption'|None,
     page: int|None (1-based, PDF), bbox: [x0, y0, x1, y1]|None (PDF points), text: str|None,
     image_sha256, image_ext, image_width, image_height (PDF images; width/height also from HTML attributes),
     src, alt, caption (HTML images), ocr: bool (PDF text read by Tesseract)}

``type 'table'`` is a grid found by the PDF table finder (markdown text). HTML tables stay
``type 'text'`` with ``role 'table'``: trafilatura also marks layout tables that hold ordinary
paragraphs, and ``curation.doc_quality`` measures them as prose on purpose; both kinds get the
table bounds of the element filter. Image bytes never sit in the document JSON: PDF images are
written once, at parse time, to the side table ``documents_parsed_images`` (sha256, doc_id, ext,
width, height, bytes), so the shard writer neither re-parses PDFs nor loses images; HTML images are
URLs, fetched by the shard writer (``curation.ingest.fetch_url`` for http(s), the storage layer for
``file://`` and paths), and a failed fetch drops that image part (quarantined with its reason).

**Ids.** ``content_id(file bytes, drop-relative path)`` for PDF and HTML files, and
``content_id(record content id, drop-relative path#WARC-Record-ID)`` for WARC records: stable across
re-runs and storage roots, distinct for the same bytes in two places (the MinHash stage pairs those).

**Quality.** HTML/WARC documents use OBELICS's document bounds (``curation.doc_quality`` defaults).
PDFs use the same bounds without ``max_words`` and the image-count bounds (``PDF_QUALITY``): a paper
has thousands of words and often no picture, and OBELICS's bounds were set for web pages.

**MinHash.** Signatures are computed a batch at a time (``BatchElements``: the tokeniser and hashes
are vectorised), band keys are grouped with one ``GroupByKey`` over (band, key), every bucket gives
its pairs (verified with ``jaccard_estimate >= minhash_threshold`` when set), documents with an
identical signature are a star to the smallest id before the band search, and components and one
representative per component come from the distributed dedup (``pipelines.dedup``; the in-memory
engine is ``curation.minhash.near_duplicates``). Representative (``minhash.representative_key``):
the document with the most text characters, then the smallest id. Non-representatives go to
quarantine with reason ``near_duplicate`` and ``dup_of``.
"""

from __future__ import annotations

import gzip
import io
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics

from curation import (
    doc_quality,
    html,
    ingest,
    minhash,
    ocr_grounding,
    pdf,
    shards,
    storage,
)
from curation.records import content_id
from pipelines import dedup
from pipelines.common import (
    KeepIds,
    Split,
    Stage,
    StageResult,
    WriteManifest,
    accept,
    cli_plan,
    content_version,
    dead_letter_to_quarantine,
    format_exception,
    landing_drops,
    manifest_url,
    quarantine_schema,
    quarantine_url,
    quarantined,
    read_manifests,
    reject,
    run_pipeline,
    split_dofn,
    track_cli,
)

TRACK = "documents"
STAGES = ("parsed", "quality", "minhash", "ocr_grounding", "interleaved_shards", "ocr_grounding_shards")
CORPUS = "all"
ASSET = {
    "parsed": "documents_parsed",
    "images": "documents_parsed_images",
    "quality": "document_quality",
    "minhash": "document_minhash_clusters",
    "ocr_grounding": "ocr_grounding_samples",
    "interleaved_shards": "interleaved_shards",
    "ocr_grounding_shards": "ocr_grounding_shards",
}
PDF_EXTS = (".pdf",)
HTML_EXTS = (".html", ".htm", ".xhtml", ".html.gz", ".htm.gz")
WARC_EXTS = (".warc", ".warc.gz", ".arc", ".arc.gz")
# documentation a drop may carry (provenance, licence) and the resources of its HTML pages (pictures,
# style sheets, scripts: the pages point at them): not inputs, skipped without a record
DOC_FILES = ("readme", "license", "licence", "notice", "copying")
RESOURCE_EXTS = tuple(f".{e}" for e in ingest.IMAGE_EXTS) + (".svg", ".css", ".js", ".woff", ".woff2", ".ico")
# image formats the trainer decodes as they are (trainer/data.py IMAGE_EXTS); others become PNG
TRAINER_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")

PARSED_SCHEMA = pa.schema([
    ("id", pa.string()), ("partition", pa.string()), ("source", pa.string()), ("file", pa.string()),
    ("kind", pa.string()), ("url", pa.string()), ("warc_record_id", pa.string()), ("title", pa.string()),
    ("lang", pa.string()), ("n_pages", pa.int32()), ("n_elements", pa.int32()), ("n_text", pa.int32()),
    ("n_tables", pa.int32()), ("n_images", pa.int32()), ("n_chars", pa.int64()), ("n_ocr_pages", pa.int32()),
    ("parse_stats", pa.string()), ("parse_warning", pa.string()), ("document", pa.string()),
])
IMAGE_SCHEMA = pa.schema([
    ("sha256", pa.string()), ("doc_id", pa.string()), ("ext", pa.string()), ("width", pa.int32()),
    ("height", pa.int32()), ("bytes", pa.binary()),
])
QUALITY_FIELDS = [
    ("n_words", pa.int64()), ("special_ratio", pa.float64()), ("char_repetition", pa.float64()),
    ("word_repetition", pa.float64()), ("language", pa.string()), ("language_prob", pa.float64()),
    ("stopword_ratio", pa.float64()), ("knowledge_density", pa.float64()), ("reading_ease", pa.float64()),
    ("grade_level", pa.float64()), ("element_drops", pa.string()), ("n_elements_in", pa.int32()),
]
QUALITY_SCHEMA = pa.schema(list(PARSED_SCHEMA) + [pa.field(n, t) for n, t in QUALITY_FIELDS])
CLUSTER_SCHEMA = pa.schema([
    ("id", pa.string()), ("partition", pa.string()), ("kind", pa.string()), ("n_chars", pa.int64()),
    ("cluster", pa.string()), ("cluster_size", pa.int32()), ("representative", pa.string()),
    ("is_representative", pa.bool_()), ("est_jaccard", pa.float64()), ("dup_of", pa.string()),
])
OCR_SAMPLE_SCHEMA = pa.schema([
    ("id", pa.string()), ("doc_id", pa.string()), ("partition", pa.string()), ("task", pa.string()),
    ("source", pa.string()), ("page", pa.int32()), ("image", pa.binary()), ("width", pa.int32()),
    ("height", pa.int32()), ("prompt", pa.string()), ("answer", pa.string()), ("phrase", pa.string()),
    ("box", pa.list_(pa.int32())), ("region", pa.list_(pa.int32())), ("augmentations", pa.string()),
])
PAGE_QUARANTINE_SCHEMA = quarantine_schema(pa.schema([
    ("id", pa.string()), ("doc_id", pa.string()), ("partition", pa.string()), ("source", pa.string()),
    ("page", pa.int32())]))
PART_QUARANTINE_SCHEMA = quarantine_schema(pa.schema([
    ("id", pa.string()), ("doc_id", pa.string()), ("partition", pa.string()), ("source", pa.string()),
    ("src", pa.string()), ("image_sha256", pa.string()), ("page", pa.int32())]))

# PDFs: OBELICS's bounds without the word cap and the image-count bounds (module docstring).
PDF_QUALITY = replace(doc_quality.DEFAULT_DOC_CONFIG, max_words=None, min_images=0, max_images=None)


@dataclass(frozen=True)
class DocumentSettings:
    """Knobs of the track; Dagster config and CLI flags map onto it."""

    pdf: pdf.PdfConfig = field(default_factory=pdf.PdfConfig)  # ocr=None: on when Tesseract is installed
    html: html.HtmlConfig = field(default_factory=html.HtmlConfig)
    quality: doc_quality.DocQualityConfig = doc_quality.DEFAULT_DOC_CONFIG  # HTML and WARC documents
    pdf_quality: doc_quality.DocQualityConfig = PDF_QUALITY
    minhash_threshold: float | None = 0.7  # verify band collisions; None: every collision links
    minhash_bands: int = minhash.BANDS
    minhash_rows: int = minhash.ROWS
    minhash_ngram: int = minhash.NGRAM
    minhash_seed: int = minhash.SEED
    minhash_hashfunc: str = "poly"
    minhash_batch: int = 256
    max_bucket_pairs: int = 64  # buckets larger than this are verified against their first member only
    pages_per_doc: int = 2
    grounding: ocr_grounding.GroundingConfig = field(default_factory=ocr_grounding.GroundingConfig)
    fetch: ingest.FetchLimits = field(default_factory=lambda: ingest.FetchLimits(timeout_s=5.0, retries=1))
    samples_per_shard: int = 1000
    max_shard_bytes: int = shards.DEFAULT_MAX_SHARD_BYTES

    @property
    def num_perm(self) -> int:
        return self.minhash_bands * self.minhash_rows


def list_partitions(root: str) -> list[str]:
    """Drop folders under landing/documents/ (sorted)."""
    return landing_drops(root, TRACK)


def file_kind(name: str) -> str | None:
    """'pdf', 'html', 'warc'; None for drop documentation and page resources; 'unsupported' otherwise."""
    low = name.lower().rsplit("/", 1)[-1]
    if low.startswith(".") or low.split(".", 1)[0] in DOC_FILES or low.endswith(RESOURCE_EXTS):
        return None
    if low.endswith(PDF_EXTS):
        return "pdf"
    if low.endswith(HTML_EXTS):
        return "html"
    if low.endswith(WARC_EXTS):
        return "warc"
    return "unsupported"


def drop_inputs(root: str, partition: str) -> list[dict]:
    """Input files of a drop: ``{file (URL), source (drop-relative path), kind, partition}``, sorted."""
    drop = storage.join(root, "landing", TRACK, partition)
    fs, path = storage.filesystem(drop)
    if not fs.exists(path):
        raise FileNotFoundError(f"drop not found: {drop}")
    protocol = root.split("://", 1)[0] + "://" if "://" in root else ""
    base = path.rstrip("/")
    out = []
    for p in sorted(fs.find(path)):
        rel = p[len(base) + 1:] if p.startswith(base + "/") else p.rsplit("/", 1)[-1]
        kind = file_kind(rel)
        if kind is None:
            continue
        url = protocol + p if protocol and not p.startswith(protocol) else p
        out.append({"file": url, "source": f"{partition}/{rel}", "kind": kind, "partition": partition})
    return out


def file_url(url: str) -> str:
    """A URL that resolves relative links of an HTML file: file:///abs/path for local files."""
    if "://" in url:
        return url
    import pathlib

    return pathlib.Path(url).resolve().as_uri()


# ----------------------------------------------------------------------------------------------
# element normalisation


def _element(type_: str, **kw) -> dict:
    el = dict.fromkeys(("role", "page", "bbox", "text", "image_sha256", "image_ext", "image_width", "image_height",
                        "src", "alt", "caption"))
    el["type"] = type_
    el["ocr"] = False
    el.update({k: v for k, v in kw.items() if v is not None})
    return el


def normalise_elements(doc: dict, kind: str) -> list[dict]:
    """Elements of a ``curation.pdf`` or ``curation.html`` document in the one schema (module docstring)."""
    out = []
    for e in doc.get("elements", []):
        t = e.get("type")
        if kind == "pdf":
            if t == "image":
                out.append(_element("image", page=e.get("page"), bbox=e.get("bbox"), image_sha256=e.get("image_sha256"),
                                    image_ext=e.get("image_ext"), image_width=e.get("image_width"),
                                    image_height=e.get("image_height")))
            else:
                out.append(_element("table" if t == "table" else "text", role="table" if t == "table" else "paragraph",
                                    page=e.get("page"), bbox=e.get("bbox"), text=e.get("text"), ocr=bool(e.get("ocr"))))
        else:
            if t == "image":
                out.append(_element("image", src=e.get("src"), alt=e.get("alt") or e.get("title"), caption=e.get("caption"),
                                    image_width=e.get("width"), image_height=e.get("height")))
            else:
                out.append(_element("text", role=e.get("role") or "paragraph", text=e.get("text")))
    return out


def document_text(elements: Sequence[dict]) -> str:
    """All text of a document (text and table elements, image captions): what MinHash reads."""
    parts = []
    for e in elements:
        if e.get("type") in ("text", "table") and e.get("text"):
            parts.append(e["text"])
        elif e.get("type") == "image" and e.get("caption"):
            parts.append(e["caption"])
    return "\n\n".join(parts)


def _counts(elements: Sequence[dict]) -> dict:
    return {
        "n_elements": len(elements),
        "n_text": sum(e["type"] == "text" for e in elements),
        "n_tables": sum(e["type"] == "table" for e in elements),
        "n_images": sum(e["type"] == "image" for e in elements),
        "n_chars": sum(len(e.get("text") or "") for e in elements if e["type"] in ("text", "table")),
    }


# ----------------------------------------------------------------------------------------------
# parsed


class ParseFile(beam.DoFn):
    """One input file -> documents (a WARC gives one per record), image rows, or quarantine rows."""

    def __init__(self, settings: DocumentSettings) -> None:
        self.settings = settings

    def _bad(self, rec: dict, reason: str, error: str | None = None, **extra) -> beam.pvalue.TaggedOutput:
        row = dict(rec, **extra)
        row.setdefault("id", content_id(row["source"].encode(), "quarantine"))
        return reject(row, TRACK, "parsed", reason, error)

    def process(self, rec: dict) -> Iterator:
        kind = rec["kind"]
        if kind == "unsupported":
            yield self._bad(rec, "unsupported_format", rec["source"].rsplit(".", 1)[-1] if "." in rec["source"] else None)
        elif kind == "pdf":
            yield from self._pdf(rec)
        elif kind == "html":
            yield from self._html(rec)
        else:
            yield from self._warc(rec)

    def _pdf(self, rec: dict) -> Iterator:
        data = storage.read_bytes(rec["file"])
        doc_id = content_id(data, rec["source"])
        t0 = time.perf_counter()
        res = pdf.parse_pdf(data, rec["source"], self.settings.pdf)
        Metrics.distribution(TRACK, "pdf_parse_ms").update(int(1000 * (time.perf_counter() - t0)))
        stats = json.dumps(res.stats, sort_keys=True)
        if not res.ok:
            yield self._bad(rec, res.reason or "unreadable_pdf", res.error, id=doc_id, parse_stats=stats)
            return
        d = res.document
        elements = normalise_elements(d, "pdf")
        for sha, blob in sorted(d["images"].items()):
            el = next(e for e in elements if e["image_sha256"] == sha)
            yield beam.pvalue.TaggedOutput("images", {"sha256": sha, "doc_id": doc_id, "partition": rec["partition"], "ext": el["image_ext"],
                                                      "width": el["image_width"], "height": el["image_height"], "bytes": blob})
        Metrics.counter(TRACK, "pages_parsed").inc(len(d["pages"]))
        yield self._row(rec, doc_id, elements, n_pages=d["n_pages"], pages=d["pages"], stats=stats, warning=res.error,
                        n_ocr_pages=sum(1 for p in d["pages"] if p["ocr"]))

    def _html(self, rec: dict) -> Iterator:
        data = storage.read_bytes(rec["file"])
        if rec["source"].lower().endswith(".gz"):
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError) as exc:
                yield self._bad(rec, "unreadable_gzip", format_exception(exc))
                return
        doc_id = content_id(data, rec["source"])
        url = file_url(rec["file"])
        doc, reason = html.html_to_document(data, url, self.settings.html)
        if doc is None:
            yield self._bad(rec, reason or "no_main_content", None, id=doc_id, url=url)
            return
        yield self._row(rec, doc_id, normalise_elements(doc, "html"), url=url, title=doc.get("title"), lang=doc.get("lang"))

    def _warc(self, rec: dict) -> Iterator:
        for res in html.iter_warc(rec["file"], self.settings.html):
            rid = res.get("warc_record_id") or res.get("offset")
            key = rec["source"] if rid is None else f"{rec['source']}#{rid}"  # None: the file is unreadable
            extra = {"url": res.get("url"), "warc_record_id": res.get("warc_record_id")}
            if res["document"] is None:
                yield self._bad(dict(rec, source=key), res["reason"] or "warc_read_error", res.get("error"),
                                id=content_id(key.encode(), "warc"), **extra)
                continue
            doc = res["document"]
            doc_id = content_id(doc["id"].encode(), key)
            yield self._row(dict(rec, source=key), doc_id, normalise_elements(doc, "html"), title=doc.get("title"),
                            lang=doc.get("lang"), **extra)

    def _row(self, rec: dict, doc_id: str, elements: list[dict], *, n_pages: int | None = None, pages: list | None = None,
             stats: str | None = None, warning: str | None = None, n_ocr_pages: int = 0, url: str | None = None,
             title: str | None = None, lang: str | None = None, warc_record_id: str | None = None) -> dict:
        Metrics.counter(TRACK, f"documents_{rec['kind']}").inc()
        document = {"title": title, "lang": lang, "url": url, "pages": pages or [], "elements": elements}
        return {"id": doc_id, "partition": rec["partition"], "source": rec["source"], "file": rec["file"], "kind": rec["kind"],
                "url": url, "warc_record_id": warc_record_id, "title": title, "lang": lang, "n_pages": n_pages,
                **_counts(elements), "n_ocr_pages": n_ocr_pages, "parse_stats": stats, "parse_warning": warning,
                "document": json.dumps(document, ensure_ascii=False, sort_keys=True)}


def _first_by_id(kv: tuple[str, Iterable[dict]]) -> Iterator:
    """One document per id; a repeated id (the same WARC record twice in one file) is quarantined."""
    _id, recs = kv
    recs = sorted(recs, key=lambda r: r["source"])
    yield recs[0]
    for r in recs[1:]:
        yield reject(r, TRACK, "parsed", "duplicate_id", f"same id as {recs[0]['source']}")


def parse_inputs(p, root: str, partitions: Sequence[str], settings: DocumentSettings):  # noqa: ANN001
    """The input files of every given drop, spread over workers (one element per file)."""
    inputs = [f for part in partitions for f in drop_inputs(root, part)]
    return p | "Inputs" >> beam.Create(inputs) | "Spread" >> beam.Reshuffle()


class Parse(beam.PTransform):
    """Files -> documents (one per id), quarantine rows, and the images the PDFs hold (a side manifest)."""

    def __init__(self, settings: DocumentSettings) -> None:
        super().__init__()
        self.settings = settings

    def expand(self, files):
        r = files | "Parse" >> beam.ParDo(ParseFile(self.settings)).with_outputs(
            "quarantine", "images", main="ok").with_exception_handling(dead_letter_tag="dead")
        dead = r["dead"] | "DeadLetters" >> beam.FlatMap(dead_letter_to_quarantine("parsed"))
        dead = dead | "DeadIds" >> beam.Map(lambda q: dict(q, id=q.get("id") or content_id(q.get("source", "").encode(), "quarantine")))
        uniq = (r["ok"] | "KeyById" >> beam.Map(lambda d: (d["id"], d)) | "GroupById" >> beam.GroupByKey()
                | "FirstById" >> beam.FlatMap(_first_by_id).with_outputs("quarantine", main="ok"))
        images = (r["images"] | "KeyImage" >> beam.Map(lambda i: ((i["doc_id"], i["sha256"]), i))
                  | "GroupImage" >> beam.GroupByKey() | "OneImage" >> beam.Map(lambda kv: next(iter(kv[1]))))
        bad = (r["quarantine"], dead, uniq.quarantine) | "AllBad" >> beam.Flatten()
        return uniq.ok, bad, {ASSET["images"]: (images, IMAGE_SCHEMA)}


PARSED = Stage(TRACK, "parsed", ASSET["parsed"], None, (), lambda root, s: Parse(s), source=parse_inputs,
               schema=lambda root, parts: PARSED_SCHEMA)


run_parsed = PARSED.runner("Parse every file of the given drops (PDF with pymupdf, HTML with trafilatura, WARC record by record).")


# ----------------------------------------------------------------------------------------------
# quality


class CurateDocument(beam.DoFn):
    """Element filters, then document filters (``curation.doc_quality.curate_document``)."""

    def __init__(self, settings: DocumentSettings) -> None:
        self.settings = settings

    def process(self, row: dict) -> Iterator:
        document = json.loads(row["document"])
        config = self.settings.pdf_quality if row["kind"] == "pdf" else self.settings.quality
        filtered, verdict, stats, drops = doc_quality.curate_document({"elements": document["elements"]}, config)
        for reason, n in drops.items():
            Metrics.counter(TRACK, f"element_drop_{reason}").inc(n)
        document["elements"] = filtered["elements"]
        out = dict(row, **_counts(document["elements"]), n_elements_in=row["n_elements"],
                   element_drops=json.dumps(dict(sorted(drops.items()))), document=json.dumps(document, ensure_ascii=False, sort_keys=True),
                   **{k: stats.get(k) for k, _ in QUALITY_FIELDS if k in stats})
        yield accept(out, TRACK, "quality") if verdict.keep else reject(out, TRACK, "quality", verdict.reason)


QUALITY = Stage(TRACK, "quality", ASSET["quality"], ASSET["parsed"], (), lambda root, s: Split("Curate", CurateDocument(s)),
                schema=lambda root, parts: QUALITY_SCHEMA)


run_quality = QUALITY.runner("Element and document quality filters of the given drops.")


# ----------------------------------------------------------------------------------------------
# minhash (corpus)


class Signatures(beam.DoFn):
    """A batch of documents -> one slim row per document with its signature (``sig``, uint32 bytes)
    and ``bands``, whether any band key is set (a document without shingles never pairs)."""

    def __init__(self, settings: DocumentSettings) -> None:
        self.s = settings

    def process(self, batch: list[dict]) -> Iterator:
        s = self.s
        sig = minhash.signatures([r["text"] for r in batch], num_perm=s.num_perm, seed=s.minhash_seed,
                                 ngram=s.minhash_ngram, hashfunc=s.minhash_hashfunc)
        keys = minhash.band_keys(sig, s.minhash_bands, s.minhash_rows)
        Metrics.counter(TRACK, "minhash_documents").inc(len(batch))
        for r, row_sig, row_keys in zip(batch, sig, keys):
            yield {"id": r["id"], "partition": r["partition"], "kind": r["kind"], "n_chars": r["n_chars"],
                   "sig": row_sig.astype(np.uint32).tobytes(), "bands": bool(row_keys.any())}


def band_records(head: tuple[str, bytes], settings: DocumentSettings) -> Iterator[tuple[str, tuple[str, bytes]]]:
    """(id, signature) -> one (band:key, (id, signature)) record per band; key 0 (no shingles) never pairs."""
    doc_id, blob = head
    keys = minhash.band_keys(_sig(blob)[None, :], settings.minhash_bands, settings.minhash_rows)[0]
    for b, k in enumerate(keys.tolist()):
        if k:
            yield f"{b}:{k:016x}", (doc_id, blob)


def _sig(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.uint32)


def bucket_pairs(kv: tuple[str, Iterable[tuple[str, bytes]]], threshold: float | None, max_pairs: int) -> Iterator[tuple[str, str]]:
    """Pairs (a, b), a < b, of one LSH bucket: every pair (verified) for small buckets, else a star
    from the smallest id; without a threshold a star is enough (the components are the same)."""
    members = sorted(dict(kv[1]).items())
    if len(members) < 2:
        return
    if threshold is None or len(members) > max_pairs:
        first_id, first_sig = members[0]
        for other_id, other_sig in members[1:]:
            if threshold is None or minhash.jaccard_estimate(_sig(first_sig), _sig(other_sig)) >= threshold:
                yield first_id, other_id
        return
    for i in range(len(members)):
        for j in range(i + 1, len(members)):
            if minhash.jaccard_estimate(_sig(members[i][1]), _sig(members[j][1])) >= threshold:
                yield members[i][0], members[j][0]


def choose_representative(kv: tuple[str, Iterable]) -> Iterator:
    """One component (``dedup.Member``s whose attrs are the slim documents) -> its rows: the
    representative (``minhash.representative_key``: most text characters, then smallest id) is
    kept, every other member goes to quarantine as ``near_duplicate`` of it."""
    cluster, members = kv
    members = sorted((m.attrs for m in members), key=minhash.representative_key)
    rep = members[0]
    size = len(members)
    rep_sig = _sig(rep["sig"])
    for d in members:
        is_rep = d is rep
        j = None if size == 1 else float(minhash.jaccard_estimate(rep_sig, _sig(d["sig"])))
        row = {"id": d["id"], "partition": d["partition"], "kind": d["kind"], "n_chars": d["n_chars"], "cluster": cluster,
               "cluster_size": size, "representative": rep["id"], "is_representative": is_rep, "est_jaccard": j,
               "dup_of": None if is_rep else rep["id"]}
        if is_rep:
            yield row
        else:
            Metrics.counter(TRACK, "near_duplicates").inc()
            yield beam.pvalue.TaggedOutput("quarantine", quarantined(
                row, "minhash", "near_duplicate", f"near duplicate of {rep['id']} (est. Jaccard {j:.3f})"))


def _minhash_input(row: dict) -> dict:
    document = json.loads(row["document"])
    text = document_text(document["elements"])
    return {"id": row["id"], "partition": row["partition"], "kind": row["kind"], "n_chars": len(text), "text": text}


def run_minhash(root: str, partitions: Sequence[str], settings: DocumentSettings, argv: Sequence[str] = (), test_pipeline=None):  # noqa: ANN001
    """MinHash LSH near-duplicate clusters over every drop's quality-passed documents."""
    srcs = [manifest_url(root, ASSET["quality"], p) for p in partitions]
    missing = [s for s in srcs if not storage.exists(s)]
    if missing:
        raise FileNotFoundError(f"minhash: document_quality manifests missing: {missing}")
    s = settings

    def build(p):  # noqa: ANN001
        docs = (read_manifests(p, srcs, "Read", columns=["id", "partition", "kind", "document"])
                | "Texts" >> beam.Map(_minhash_input)
                | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=s.minhash_batch))
        slim = docs | "Signatures" >> beam.ParDo(Signatures(s))
        # Identical signatures (a page copied m times) are a star of m - 1 edges; only the head of
        # each signature enters the band buckets, so a hot bucket never holds the copies.
        same = (slim | "WithShingles" >> beam.Filter(lambda d: d["bands"])
                | "Signature" >> beam.Map(lambda d: (d["id"], d["sig"]))
                | "Identical" >> dedup.StarOfIdentical(None, counter="identical_signature_edges"))
        pairs = (same.heads | "BandKeys" >> beam.FlatMap(band_records, s)
                 | "Buckets" >> beam.GroupByKey()
                 | "Pairs" >> beam.FlatMap(bucket_pairs, s.minhash_threshold, s.max_bucket_pairs))
        edges = (same.star, pairs) | "Edges" >> beam.Flatten()
        nodes = slim | "Nodes" >> beam.Map(lambda d: (d["id"], {k: d[k] for k in ("id", "partition", "kind", "n_chars", "sig")}))
        out = ({"nodes": nodes, "edges": edges} | "Components" >> dedup.GroupComponents()
               | "Representatives" >> beam.FlatMap(choose_representative).with_outputs("quarantine", main="ok"))
        out.ok | "WriteManifest" >> WriteManifest(manifest_url(root, ASSET["minhash"], CORPUS), CLUSTER_SCHEMA)
        out.quarantine | "WriteQuarantine" >> WriteManifest(quarantine_url(root, ASSET["minhash"], CORPUS), quarantine_schema(CLUSTER_SCHEMA))

    result = run_pipeline(argv, build, test_pipeline)
    return StageResult.corpus(TRACK, "minhash", ASSET["minhash"], root, partitions, result, {
        "bands": s.minhash_bands, "rows": s.minhash_rows, "ngram": s.minhash_ngram, "threshold": s.minhash_threshold})


# ----------------------------------------------------------------------------------------------
# ocr_grounding (per drop)


class PageSamples(beam.DoFn):
    """Kept PDF document -> OCR and grounding samples of its first ``pages_per_doc`` pages.

    Pages read by Tesseract at parse time (``scanned_page``) are skipped: OCR output is no gold for
    OCR training. A page without words in its text layer is ``no_words``.
    """

    def __init__(self, settings: DocumentSettings) -> None:
        self.settings = settings

    def process(self, row: dict) -> Iterator:
        import pymupdf

        s = self.settings
        document = json.loads(row["document"])
        pages = sorted(document.get("pages") or [], key=lambda pg: pg["page"])[: s.pages_per_doc]
        base = {"doc_id": row["id"], "partition": row["partition"], "source": row["source"]}
        doc = pymupdf.open(stream=storage.read_bytes(row["file"]), filetype="pdf")
        try:
            for pg in pages:
                pid = f"{row['id']}_p{pg['page']:04d}"
                bad = dict(base, id=pid, page=pg["page"])
                if pg.get("ocr"):
                    yield reject(bad, TRACK, "ocr_grounding", "scanned_page")
                    continue
                render = ocr_grounding.render_page(doc.load_page(pg["page"] - 1), s.grounding.dpi)
                if not render.words:
                    yield reject(bad, TRACK, "ocr_grounding", "no_words")
                    continue
                samples = ocr_grounding.page_samples(render, pid, s.grounding, row["source"], pg["page"])
                if not samples:
                    yield reject(bad, TRACK, "ocr_grounding", "no_samples")
                    continue
                Metrics.counter(TRACK, "pages_rendered").inc()
                for smp in samples:
                    Metrics.counter(TRACK, f"samples_{smp['task']}").inc()
                    yield {**base, "id": smp["id"].replace(":", "_"), "task": smp["task"], "page": pg["page"],
                           "image": smp["image"], "width": smp["width"], "height": smp["height"], "prompt": smp["prompt"],
                           "answer": smp["answer"], "phrase": smp.get("phrase"), "box": smp.get("box"),
                           "region": smp.get("region"), "augmentations": json.dumps(smp.get("augmentations") or [])}
        finally:
            doc.close()


def kept_pdf_documents(p, root: str, partitions: Sequence[str], settings: DocumentSettings):  # noqa: ANN001
    """Quality-passed PDFs of the given drops that MinHash kept (a join by id, no side input)."""
    qsrcs = [manifest_url(root, ASSET["quality"], part) for part in partitions]
    csrc = manifest_url(root, ASSET["minhash"], CORPUS)
    for src in (*qsrcs, csrc):
        if not storage.exists(src):
            raise FileNotFoundError(f"ocr_grounding: {src} missing")
    wanted = frozenset(partitions)
    pdfs = (read_manifests(p, qsrcs, "ReadQuality", columns=["id", "partition", "source", "file", "kind", "document"])
            | "PdfOnly" >> beam.Filter(lambda r: r["kind"] == "pdf"))
    kept = (read_manifests(p, [csrc], "ReadClusters", columns=["id", "partition"])
            | "TheseDrops" >> beam.FlatMap(lambda r: [r["id"]] if r["partition"] in wanted else []))
    return {"records": pdfs, "keep": kept} | "KeptOnly" >> KeepIds()


OCR_GROUNDING = Stage(TRACK, "ocr_grounding", ASSET["ocr_grounding"], None, (), lambda root, s: Split("Pages", PageSamples(s)),
                      source=kept_pdf_documents, schema=lambda root, parts: OCR_SAMPLE_SCHEMA,
                      fixed_quarantine_schema=PAGE_QUARANTINE_SCHEMA)


run_ocr_grounding = OCR_GROUNDING.runner("OCR and grounding samples from the pages of the kept PDFs of the given drops.")


# ----------------------------------------------------------------------------------------------
# shards (corpus)


def trainer_image(data: bytes, ext: str | None) -> tuple[bytes, str, int, int]:
    """(bytes, ext, width, height) the trainer can decode: kept as they are in a format Pillow reads
    (JPEG, PNG, WebP, GIF, BMP, TIFF), else re-encoded as PNG (JPEG 2000, JBIG2 from PDFs; via MuPDF
    when Pillow cannot open them). Raises ValueError for bytes nothing decodes."""
    from PIL import Image

    fmt_ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        if img.format in fmt_ext:
            return data, fmt_ext[img.format], img.width, img.height
        out = io.BytesIO()
        img.convert("RGBA" if "A" in img.getbands() else "RGB").save(out, format="PNG")
        return out.getvalue(), "png", img.width, img.height
    except Exception as exc:  # not something Pillow reads: try MuPDF (JPX, JBIG2 streams it extracted)
        import pymupdf

        try:
            pix = pymupdf.Pixmap(data)
            if pix.alpha or pix.n > 3:
                pix = pymupdf.Pixmap(pymupdf.csRGB, pix)
            return pix.tobytes("png"), "png", pix.width, pix.height
        except Exception:
            raise ValueError(f"undecodable image ({ext}): {exc}") from exc


@dataclass
class ImageSource:
    """Image bytes of one drop: PDF images from the side table; HTML images fetched by URL."""

    pdf_images: dict[str, bytes]
    limits: ingest.FetchLimits

    def fetch(self, el: dict) -> bytes:
        if el.get("image_sha256"):
            blob = self.pdf_images.get(el["image_sha256"])
            if blob is None:
                raise ingest.FetchError("image_missing", f"{el['image_sha256']} not in documents_parsed_images")
            return blob
        src = el.get("src") or ""
        if src.startswith(("http://", "https://")):
            return ingest.fetch_url(src, self.limits)
        try:
            return storage.read_bytes(src)
        except FileNotFoundError as exc:
            raise ingest.FetchError("fetch_error", f"{src}: not found") from exc
        except Exception as exc:
            raise ingest.FetchError("fetch_error", f"{src}: {format_exception(exc)}") from exc


def interleaved_sample(row: dict, images: ImageSource, config: doc_quality.DocQualityConfig) -> tuple[shards.Sample, list[dict]]:
    """One kept document -> a chat sample (one assistant turn of text and image parts in reading
    order; tables as text; an HTML image's caption as a text part after it) and the image parts it
    had to drop, with reasons (fetch failures, undecodable bytes, sizes outside the image bounds)."""
    document = json.loads(row["document"])
    content: list[dict] = []
    prov: list[dict] = []
    fields: dict[str, bytes] = {}
    dropped: list[dict] = []
    blobs: list[tuple[bytes, str]] = []
    for k, el in enumerate(document["elements"]):
        where = {"element": k, "page": el.get("page"), "bbox": el.get("bbox")}
        if el["type"] in ("text", "table"):
            if el.get("text"):
                content.append({"type": "text", "text": el["text"]})
                prov.append({"type": el["type"], "role": el.get("role"), **where})
            continue
        try:
            raw = images.fetch(el)
            data, ext, w, h = trainer_image(raw, el.get("image_ext"))
        except ingest.FetchError as exc:
            dropped.append({**where, "src": el.get("src"), "image_sha256": el.get("image_sha256"), "reason": exc.reason,
                            "error": str(exc)[:500]})
            continue
        except ValueError as exc:
            dropped.append({**where, "src": el.get("src"), "image_sha256": el.get("image_sha256"),
                            "reason": "undecodable_image", "error": str(exc)[:500]})
            continue
        verdict = doc_quality.check_image_element({"type": "image", "image_width": w, "image_height": h}, config)
        if not verdict.keep:  # HTML images: their size is known only now
            dropped.append({**where, "src": el.get("src"), "image_sha256": el.get("image_sha256"), "reason": verdict.reason,
                            "error": f"{w}x{h}"})
            continue
        blobs.append((data, ext))
        content.append({"type": "image"})
        prov.append({"type": "image", "src": el.get("src"), "image_sha256": el.get("image_sha256"), "width": w, "height": h, **where})
        if el.get("caption"):
            content.append({"type": "text", "text": el["caption"]})
            prov.append({"type": "text", "role": "caption", **where})
    width = max(3, len(str(max(len(blobs) - 1, 0))))
    for i, (data, ext) in enumerate(blobs):
        fields[f"img{i:0{width}d}.{ext}"] = data
    obj = {"id": row["id"], "source": row["source"], "kind": row["kind"], "url": row.get("url"), "title": document.get("title"),
           "messages": [{"role": "assistant", "content": content}], "elements": prov}
    fields["json"] = json.dumps(obj, ensure_ascii=False, sort_keys=True).encode()
    meta = {"partition": row["partition"], "source": row["source"], "kind": row["kind"], "n_text_parts":
            sum(1 for c in content if c["type"] == "text"), "n_images": len(blobs), "n_image_drops": len(dropped),
            "n_chars": row.get("n_chars")}
    return shards.Sample(key=row["id"], fields=fields, metadata=meta), dropped


INTERLEAVED_META = pa.schema([("partition", pa.string()), ("source", pa.string()), ("kind", pa.string()),
                              ("n_text_parts", pa.int32()), ("n_images", pa.int32()), ("n_image_drops", pa.int32()),
                              ("n_chars", pa.int64())])


def _shard_inputs(root: str, partitions: Sequence[str], asset: str) -> list[str]:
    srcs = [manifest_url(root, asset, p) for p in partitions]
    missing = [s for s in srcs if not storage.exists(s)]
    if missing:
        raise FileNotFoundError(f"{asset} manifests missing: {missing}")
    return srcs


def _needed_images(row: dict) -> Iterator[tuple[tuple[str, str], tuple[str, str]]]:
    """((drop, image sha256), (drop, doc id)) for each PDF image a kept document uses."""
    if row["kind"] != "pdf":
        return
    for sha in sorted({e["image_sha256"] for e in json.loads(row["document"])["elements"] if e.get("image_sha256")}):
        yield (row["partition"], sha), (row["partition"], row["id"])


def _route_images(element: tuple[tuple[str, str], dict]) -> Iterator[tuple[tuple[str, str], tuple[str, bytes]]]:
    """(drop, sha256) -> {img, need} joined: the image's bytes to each document that needs them."""
    (_, sha), joined = element
    blob = next(iter(joined["img"]), None)
    if blob is None:
        return  # not in documents_parsed_images: the sample builder drops the part as image_missing
    for doc in sorted(set(joined["need"])):
        yield doc, (sha, blob)


class _InterleavedSamples(beam.DoFn):
    """(drop, doc id) -> {doc, blobs} joined: the chat sample of a kept representative, and its
    dropped image parts to the 'dropped' output (quarantine/interleaved_shards/all.parquet)."""

    def __init__(self, settings: DocumentSettings) -> None:
        self.settings = settings

    def process(self, element: tuple[tuple[str, str], dict]):
        (part, _), joined = element
        source = ImageSource(dict(joined["blobs"]), self.settings.fetch)
        for r in joined["doc"]:
            config = self.settings.pdf_quality if r["kind"] == "pdf" else self.settings.quality
            sample, dropped = interleaved_sample(r, source, config)
            for d in dropped:
                Metrics.counter("interleaved_shards", f"image_drop_{d['reason']}").inc()
                yield beam.pvalue.TaggedOutput("dropped", {
                    "id": f"{r['id']}_e{d['element']:04d}", "doc_id": r["id"], "partition": part, "source": r["source"],
                    "src": d.get("src"), "image_sha256": d.get("image_sha256"), "page": d.get("page"),
                    "stage": "interleaved_shards", "reason": d["reason"], "error": d.get("error")})
            yield sample


def _drop_of(filename: str) -> str:
    return filename.rstrip("/").rsplit("/", 1)[-1].removesuffix(".parquet")


def run_interleaved_shards(root: str, partitions: Sequence[str], settings: DocumentSettings,
                           dataset: str = "interleaved", argv: Sequence[str] = (),
                           test_pipeline=None) -> shards.ShardIndex:  # noqa: ANN001
    """Kept representative documents as interleaved chat samples; dropped image parts go to
    quarantine/interleaved_shards/all.parquet.

    One Beam job: documents are joined to the representatives by id and to their PDF images by
    (drop, sha256), each sample is built where its document lands, and the shard stage
    (pipelines/shards.py) writes them sorted by id, one writer per shard."""
    from pipelines.shards import ShardSource, WriteShards

    qsrcs = _shard_inputs(root, partitions, ASSET["quality"])
    csrc = manifest_url(root, ASSET["minhash"], CORPUS)
    if not storage.exists(csrc):
        raise FileNotFoundError(f"interleaved_shards: {csrc} missing")
    isrcs = [u for u in (manifest_url(root, ASSET["images"], p) for p in partitions) if storage.exists(u)]
    srcs = [*qsrcs, csrc, *isrcs]
    version = content_version(srcs, dataset, settings.quality, settings.pdf_quality, settings.fetch)
    out_url = shards.shard_dir(root, dataset, version)
    lineage = shards.input_lineage(srcs)

    def build(p):  # noqa: ANN001
        docs = read_manifests(p, qsrcs, "ReadQuality")
        reps = (read_manifests(p, [csrc], "ReadClusters") | "RepIds" >> beam.Map(lambda r: r["id"])
                | "Distinct" >> beam.Distinct())
        docs_by_id = docs | "DocsById" >> beam.Map(lambda r: (r["id"], r))
        kept = ({"doc": docs_by_id, "rep": reps | "RepsById" >> beam.Map(lambda i: (i, True))}
                | "JoinReps" >> beam.CoGroupByKey()
                | "Kept" >> beam.FlatMap(lambda kv: [((d["partition"], d["id"]), d) for d in kv[1]["doc"]]
                                         if list(kv[1]["rep"]) else []))
        images = (p | "ImageUrls" >> beam.Create(isrcs)
                  | "ReadImages" >> beam.io.ReadAllFromParquet(columns=["sha256", "bytes"], with_filename=True)
                  | "KeyImages" >> beam.Map(lambda fr: ((_drop_of(fr[0]), fr[1]["sha256"]), fr[1]["bytes"])))
        need = kept | "NeededImages" >> beam.FlatMap(lambda kv: _needed_images(kv[1]))
        blobs = ({"img": images, "need": need} | "JoinImages" >> beam.CoGroupByKey()
                 | "RouteImages" >> beam.FlatMap(_route_images))
        built = ({"doc": kept, "blobs": blobs}
                 | "JoinBlobs" >> beam.CoGroupByKey()
                 | "Build" >> beam.ParDo(_InterleavedSamples(settings)).with_outputs("dropped", main="samples"))
        built.dropped | "WriteDropped" >> WriteManifest(quarantine_url(root, ASSET["interleaved_shards"], CORPUS),
                                                        PART_QUARANTINE_SCHEMA)
        built.samples | "Shards" >> WriteShards(
            out_url, dataset_name=dataset, metadata_schema=INTERLEAVED_META, source=ShardSource(), lineage=lineage,
            samples_per_shard=settings.samples_per_shard, max_shard_bytes=settings.max_shard_bytes, publish_root=root)

    run_pipeline(argv, build, test_pipeline)
    return shards.read_index(out_url)


OCR_META = pa.schema([("doc_id", pa.string()), ("partition", pa.string()), ("source", pa.string()), ("page", pa.int32()),
                      ("task", pa.string()), ("width", pa.int32()), ("height", pa.int32()), ("answer", pa.string())])


def ocr_grounding_sample(r: dict) -> shards.Sample:
    """A chat sample: user = [image, prompt], assistant = the answer (text, or the box as
    '[x1, y1, x2, y2]' in pixels of the image: the format trainer/rewards.py's grounding reward parses)."""
    obj = {"id": r["id"], "task": r["task"], "source": r["source"], "page": r["page"], "doc_id": r["doc_id"],
           "box": r["box"], "region": r["region"], "phrase": r["phrase"], "augmentations": json.loads(r["augmentations"] or "[]"),
           "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r["prompt"]}]},
                        {"role": "assistant", "content": r["answer"]}]}
    return shards.Sample(key=r["id"], fields={"json": json.dumps(obj, ensure_ascii=False, sort_keys=True).encode(),
                                              "img000.png": r["image"]},
                         metadata={k: r[k] for k in ("doc_id", "partition", "source", "page", "task", "width", "height", "answer")})


def run_ocr_grounding_shards(root: str, partitions: Sequence[str], settings: DocumentSettings, argv: Sequence[str] = (),
                             test_pipeline=None) -> dict[str, shards.ShardIndex]:  # noqa: ANN001
    """OCR samples -> dataset 'ocr', grounding samples -> dataset 'grounding' (each with LATEST.json),
    one Beam job, each dataset through the shard stage (pipelines/shards.py)."""
    from pipelines.shards import ShardSource, WriteShards

    srcs = _shard_inputs(root, partitions, ASSET["ocr_grounding"])
    lineage = shards.input_lineage(srcs)
    out_urls = {dataset: shards.shard_dir(root, dataset, content_version(srcs, dataset, settings.grounding, settings.pages_per_doc))
                for dataset in ("ocr", "grounding")}

    def build(p):  # noqa: ANN001
        rows = read_manifests(p, srcs)
        for dataset, out_url in out_urls.items():  # rows carry their page image: the sample is built in its writer
            label = dataset.title()
            (rows | f"{label}Rows" >> beam.Filter(lambda r, task: r["task"] == task, dataset)
             | f"{label}Shards" >> WriteShards(out_url, dataset_name=dataset, metadata_schema=OCR_META,
                                               source=ShardSource(ocr_grounding_sample), lineage=lineage,
                                               samples_per_shard=settings.samples_per_shard,
                                               max_shard_bytes=settings.max_shard_bytes, publish_root=root))

    run_pipeline(argv, build, test_pipeline)
    return {dataset: shards.read_index(out_url) for dataset, out_url in out_urls.items()}


# ----------------------------------------------------------------------------------------------
# CLI


def run(argv: Sequence[str] | None = None, test_pipeline=None) -> None:  # noqa: ANN001
    """Command-line entry point (the same functions Dagster's assets call)."""
    parser = track_cli("python -m pipelines.documents", __doc__, TRACK, STAGES)
    parser.add_argument("--ocr", dest="ocr", action="store_true", default=None, help="OCR scanned pages (default: if Tesseract is installed)")
    parser.add_argument("--no-ocr", dest="ocr", action="store_false", help="scanned PDFs go to quarantine as needs_ocr")
    parser.add_argument("--pages-per-doc", type=int, default=2, help="pages rendered per PDF for OCR/grounding samples")
    parser.add_argument("--no-augment", action="store_true", help="OCR/grounding pages without hardening augmentations")
    parser.add_argument("--minhash-threshold", type=float, default=0.7, help="verify LSH candidates (<= 0: no verification)")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    args, beam_argv = parser.parse_known_args(argv)
    stages, partitions = cli_plan(parser, args, STAGES, TRACK, list_partitions)
    settings = DocumentSettings(
        pdf=pdf.PdfConfig(ocr=args.ocr), pages_per_doc=args.pages_per_doc,
        grounding=ocr_grounding.GroundingConfig(augment=not args.no_augment),
        minhash_threshold=args.minhash_threshold if args.minhash_threshold > 0 else None,
        samples_per_shard=args.samples_per_shard)
    per_drop = {"parsed": run_parsed, "quality": run_quality, "ocr_grounding": run_ocr_grounding}
    for stage in stages:
        if stage in per_drop:
            per_drop[stage](args.root, partitions, settings, beam_argv, test_pipeline=test_pipeline)  # every drop in one Beam job
        elif stage == "minhash":
            run_minhash(args.root, partitions, settings, beam_argv, test_pipeline=test_pipeline)
        elif stage == "interleaved_shards":
            index = run_interleaved_shards(args.root, partitions, settings, argv=beam_argv, test_pipeline=test_pipeline)
            print(json.dumps({"dataset": "interleaved", "url": index.url, "samples": index.num_samples}))
        else:
            for name, index in run_ocr_grounding_shards(args.root, partitions, settings, beam_argv, test_pipeline=test_pipeline).items():
                print(json.dumps({"dataset": name, "url": index.url, "samples": index.num_samples}))


if __name__ == "__main__":
    run()
