"""Interleaved documents as assets: parsed (PDF, HTML, WARC) -> quality -> MinHash clusters (corpus)
-> OCR/grounding samples -> interleaved and OCR/grounding shards (pipelines/documents.py does the work)."""

import io
import json
import time
from collections import Counter

import dagster as dg

from assets.metadata import (
    chat_image_mismatches,
    counter_table,
    histogram_table,
    jpeg_data_uri,
    preview_table,
    rows,
    rows_of,
    run_drops,
    stage_links,
    stage_metadata,
)
from assets.partitions import document_drops, ready_partitions
from assets.resources import BeamResource, StorageResource
from curation import ocr_grounding as og
from curation import pdf as pdfmod
from curation import shards
from curation import storage as fsio
from pipelines import documents as pipe
from pipelines.common import manifest_url, quarantine_url

GROUP = "documents"
EAGER = dg.AutomationCondition.eager()
ONE_JOB = dg.BackfillPolicy.single_run()  # a backfill of many drops: one run, one Beam job per asset
A = pipe.ASSET


class ParseRunConfig(dg.Config):
    """PDF parsing: OCR of scanned pages (None: on when Tesseract is installed), page cap per PDF."""

    ocr: bool | None = None
    max_pages: int | None = None


class MinHashRunConfig(dg.Config):
    """LSH candidates are linked when their estimated Jaccard reaches ``threshold`` (0: no check)."""

    threshold: float = 0.7


class OcrGroundingRunConfig(dg.Config):
    pages_per_doc: int = 2
    dpi: int = 100
    augment: bool = True


class ShardRunConfig(dg.Config):
    samples_per_shard: int = 1000


def _settings(**kw) -> pipe.DocumentSettings:
    return pipe.DocumentSettings(**kw)


def _ready(context: dg.AssetExecutionContext, root: str, upstream: str) -> list[str]:
    return ready_partitions(context, document_drops, root, upstream)


def _ids_unique(kept: list[dict]) -> dg.AssetCheckResult:
    ids = [r["id"] for r in kept]
    return dg.AssetCheckResult(check_name="ids_unique", passed=len(ids) == len(set(ids)),
                               metadata={"duplicate_ids": len(ids) - len(set(ids))})


def _nothing_lost(n_in: int, kept: int, dropped: int) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(check_name="nothing_lost", passed=n_in == kept + dropped,
                               metadata={"in": n_in, "kept": kept, "quarantined": dropped})


def _checks(name: str, *extra: tuple[str, str]) -> list[dg.AssetCheckSpec]:
    specs = [("ids_unique", "no record id appears twice"), ("nothing_lost", "records in == kept + quarantined"), *extra]
    return [dg.AssetCheckSpec(n, asset=name, description=d) for n, d in specs]


def _floats(values) -> list[float]:  # noqa: ANN001
    return [float(v) for v in values if v is not None]








# ----------------------------------------------------------------------------------------------
# per drop


@dg.asset(partitions_def=document_drops, backfill_policy=ONE_JOB, group_name=GROUP, kinds={"beam", "pdf", "html"}, check_specs=_checks("documents_parsed"),
          automation_condition=dg.AutomationCondition.missing() & ~dg.AutomationCondition.in_progress())
def documents_parsed(context: dg.AssetExecutionContext, config: ParseRunConfig, storage: StorageResource,
                     beam_runner: BeamResource) -> dg.MaterializeResult:
    """PDFs (pymupdf), HTML pages and WARC records (trafilatura) as interleaved documents, one element schema."""
    parts = run_drops(context)
    s = _settings(pdf=pdfmod.PdfConfig(ocr=config.ocr, max_pages=config.max_pages))
    inputs = [f for p in parts for f in pipe.drop_inputs(storage.root, p)]
    t0 = time.perf_counter()
    res = pipe.run_parsed(storage.root, parts, s, beam_runner.argv())
    elapsed = time.perf_counter() - t0
    kept, dropped = rows_of(res.manifests.values()), rows_of(res.quarantines.values())
    images = sum(fsio.read_table(u, columns=["sha256"]).num_rows for p in parts
                 if fsio.exists(u := manifest_url(storage.root, A["images"], p)))
    pages = sum(r["n_pages"] or 0 for r in kept if r["kind"] == "pdf")
    md = stage_metadata(len(inputs), kept, dropped, *stage_links(res))
    md["beam_counters"] = dg.MetadataValue.json(dict(res.counters))
    md.update({
        "files_in": dg.MetadataValue.int(len(inputs)),
        "documents_out": dg.MetadataValue.int(len(kept)),
        "pdf_pages": dg.MetadataValue.int(pages),
        "ocr_pages": dg.MetadataValue.int(sum(r["n_ocr_pages"] or 0 for r in kept)),
        "pages_per_s": dg.MetadataValue.float(round(pages / elapsed, 2) if elapsed > 0 else 0.0),
        "kinds": dg.MetadataValue.md(counter_table(Counter(r["kind"] for r in kept), "kind",
                                                   extra=Counter(r["kind"] for r in dropped), extra_name="quarantined")),
        "elements_by_type": dg.MetadataValue.md(counter_table(Counter(
            {"text": sum(r["n_text"] for r in kept), "table": sum(r["n_tables"] for r in kept),
             "image": sum(r["n_images"] for r in kept)}), "element type")),
        "pdf_images_stored": dg.MetadataValue.int(images),
        "preview": dg.MetadataValue.md(preview_table(kept, ("source", "kind", "n_pages", "n_elements", "n_images", "n_chars"))),
    })
    # a WARC file gives several records: every input file must show up in the manifest or quarantine
    seen = {r["source"].split("#", 1)[0] for r in kept + dropped}
    missing = [i["source"] for i in inputs if i["source"] not in seen]
    return dg.MaterializeResult(metadata=md, check_results=[
        _ids_unique(kept),
        dg.AssetCheckResult(check_name="nothing_lost", passed=not missing,
                            metadata={"files_in": len(inputs), "files_missing": dg.MetadataValue.text(", ".join(missing) or "none")}),
    ])


@dg.asset(partitions_def=document_drops, backfill_policy=ONE_JOB, group_name=GROUP, kinds={"beam", "parquet"}, deps=[documents_parsed],
          check_specs=_checks("document_quality"), automation_condition=EAGER)
def document_quality(context: dg.AssetExecutionContext, storage: StorageResource, beam_runner: BeamResource) -> dg.MaterializeResult:
    """OBELICS element and document filters, knowledge density and readability (curation.doc_quality)."""
    parts = run_drops(context)
    res = pipe.run_quality(storage.root, parts, _settings(), beam_runner.argv())
    n_in = len(rows_of(manifest_url(storage.root, A["parsed"], p) for p in parts))
    kept, dropped = rows_of(res.manifests.values()), rows_of(res.quarantines.values())
    element_drops: Counter = Counter()
    for r in kept + dropped:
        element_drops.update(json.loads(r["element_drops"] or "{}"))
    md = stage_metadata(n_in, kept, dropped, *stage_links(res))
    md.update({
        "beam_counters": dg.MetadataValue.json(dict(res.counters)),
        "documents_in": dg.MetadataValue.int(n_in),
        "documents_out": dg.MetadataValue.int(len(kept)),
        "element_drops": dg.MetadataValue.md(counter_table(element_drops, "element:reason")),
        "elements_by_type": dg.MetadataValue.md(counter_table(Counter(
            {"text": sum(r["n_text"] for r in kept), "table": sum(r["n_tables"] for r in kept),
             "image": sum(r["n_images"] for r in kept)}), "element type (kept documents)")),
        "knowledge_density": dg.MetadataValue.md(histogram_table(
            _floats(r["knowledge_density"] for r in kept + dropped), [0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0], "knowledge density")),
        "reading_ease": dg.MetadataValue.md(histogram_table(
            _floats(r["reading_ease"] for r in kept + dropped), [-200, 0, 30, 50, 60, 70, 80, 100, 200], "Flesch reading ease")),
        "languages": dg.MetadataValue.md(counter_table(Counter(r["language"] for r in kept + dropped), "language")),
        "preview": dg.MetadataValue.md(preview_table(kept, ("source", "kind", "n_words", "knowledge_density", "reading_ease"))),
    })
    return dg.MaterializeResult(metadata=md, check_results=[_ids_unique(kept), _nothing_lost(n_in, len(kept), len(dropped))])


# ----------------------------------------------------------------------------------------------
# corpus: MinHash near-duplicates


@dg.asset(group_name=GROUP, kinds={"beam", "parquet"}, deps=[document_quality], automation_condition=EAGER,
          check_specs=_checks("document_minhash_clusters", ("one_representative_per_cluster", "each cluster keeps one document")))
def document_minhash_clusters(context: dg.AssetExecutionContext, config: MinHashRunConfig, storage: StorageResource,
                              beam_runner: BeamResource) -> dg.MaterializeResult:
    """MinHash LSH (word 5-grams, 14 bands x 8 rows) near-duplicate clusters over all drops; one document kept per cluster."""
    parts = _ready(context, storage.root, A["quality"])
    s = _settings(minhash_threshold=config.threshold if config.threshold > 0 else None)
    res = pipe.run_minhash(storage.root, parts, s, beam_runner.argv())
    n_in = sum(len(rows(manifest_url(storage.root, A["quality"], p))) for p in parts)
    murl, qurl = manifest_url(storage.root, A["minhash"], pipe.CORPUS), quarantine_url(storage.root, A["minhash"], pipe.CORPUS)
    kept, dropped = rows(murl), rows(qurl)
    sizes = Counter(r["cluster_size"] for r in kept)
    md = stage_metadata(n_in, kept, dropped, murl, qurl)
    md.update({
        "partitions": dg.MetadataValue.text(", ".join(parts)),
        "beam_counters": dg.MetadataValue.json(dict(res.counters)),
        "clusters": dg.MetadataValue.int(len(kept)),
        "clusters_with_duplicates": dg.MetadataValue.int(sum(1 for r in kept if r["cluster_size"] > 1)),
        "cluster_sizes": dg.MetadataValue.md(counter_table(sizes, "cluster size")),
        "lsh": dg.MetadataValue.text(f"{s.minhash_bands} bands x {s.minhash_rows} rows, threshold ~"
                                     f"{pipe.minhash.lsh_threshold(s.minhash_bands, s.minhash_rows):.3f}, verify >= {s.minhash_threshold}"),
        "est_jaccard_of_duplicates": dg.MetadataValue.md(histogram_table(
            _floats(r["est_jaccard"] for r in dropped), [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0001], "est. Jaccard to representative")),
        "dropped_preview": dg.MetadataValue.md(preview_table(dropped, ("id", "partition", "dup_of", "est_jaccard"))),
    })
    reps = Counter(r["cluster"] for r in kept)
    return dg.MaterializeResult(metadata=md, check_results=[
        _ids_unique(kept), _nothing_lost(n_in, len(kept), len(dropped)),
        dg.AssetCheckResult(check_name="one_representative_per_cluster", passed=max(reps.values(), default=1) == 1
                            and all(r["dup_of"] in {k["id"] for k in kept} for r in dropped)),
    ])


# ----------------------------------------------------------------------------------------------
# per drop: OCR and grounding samples


def _boxes_inside(samples: list[dict]) -> list[str]:
    bad = []
    for r in samples:
        if r["task"] == "grounding":
            x1, y1, x2, y2 = r["box"]
            if not (0 <= x1 <= x2 <= r["width"] and 0 <= y1 <= y2 <= r["height"]):
                bad.append(r["id"])
    return bad


@dg.asset(partitions_def=document_drops, backfill_policy=ONE_JOB, group_name=GROUP, kinds={"beam", "pdf"}, deps=[document_quality, document_minhash_clusters],
          automation_condition=EAGER, check_specs=[
              dg.AssetCheckSpec("ids_unique", asset="ocr_grounding_samples"),
              dg.AssetCheckSpec("boxes_inside_image", asset="ocr_grounding_samples", description="every grounding box lies in its image")])
def ocr_grounding_samples(context: dg.AssetExecutionContext, config: OcrGroundingRunConfig, storage: StorageResource,
                          beam_runner: BeamResource) -> dg.MaterializeResult:
    """Rendered pages of kept PDFs -> OCR (page, region) and grounding (phrase -> box) samples, augmented."""
    parts = run_drops(context)
    s = _settings(pages_per_doc=config.pages_per_doc, grounding=og.GroundingConfig(dpi=config.dpi, augment=config.augment))
    res = pipe.run_ocr_grounding(storage.root, parts, s, beam_runner.argv())
    murl, _ = stage_links(res)
    # every column but the PNG bytes
    samples = [r for u in res.manifests.values() if fsio.exists(u)
               for r in fsio.read_table(u, columns=[f.name for f in pipe.OCR_SAMPLE_SCHEMA if f.name != "image"]).to_pylist()]
    dropped = rows_of(res.quarantines.values())
    pages = {(r["doc_id"], r["page"]) for r in samples}
    bad = _boxes_inside(samples)
    md = {
        "samples": dg.MetadataValue.int(len(samples)),
        "by_task": dg.MetadataValue.md(counter_table(Counter(r["task"] for r in samples), "task")),
        "documents": dg.MetadataValue.int(len({r["doc_id"] for r in samples})),
        "pages_rendered": dg.MetadataValue.int(len(pages)),
        "pages_dropped": dg.MetadataValue.int(len(dropped)),
        "pages_dropped_by_reason": dg.MetadataValue.md(counter_table(Counter(r["reason"] for r in dropped), "reason")),
        "augmentations": dg.MetadataValue.md(counter_table(Counter(
            op["op"] for r in samples if r["id"].endswith("_ocr") for op in json.loads(r["augmentations"] or "[]")), "op (page images)")),
        "manifest": dg.MetadataValue.path(murl),
        "drops": dg.MetadataValue.text(", ".join(parts)),
        "beam_counters": dg.MetadataValue.json(dict(res.counters)),
        "preview": dg.MetadataValue.md(preview_table(samples, ("id", "task", "prompt", "answer"))),
    }
    return dg.MaterializeResult(metadata=md, check_results=[
        _ids_unique(samples),
        dg.AssetCheckResult(check_name="boxes_inside_image", passed=not bad, metadata={"outside": len(bad)}),
    ])


# ----------------------------------------------------------------------------------------------
# corpus: shards


def _thumb(data: bytes, side: int = 96) -> str:
    """A small JPEG data URI (sample previews in the UI)."""
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.thumbnail((side, side))
    return jpeg_data_uri(img)


def sample_markdown(sample: shards.Sample, max_chars: int = 600) -> str:
    """A chat sample as markdown: text parts (cut), image parts as inline thumbnails, in order."""
    obj = json.loads(sample.fields["json"])
    images = [sample.fields[k] for k in sorted(k for k in sample.fields if k.startswith("img"))]
    out = [f"**{obj.get('source')}** (`{sample.key}`)"]
    budget, k = max_chars, 0
    for m in obj["messages"]:
        parts = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
        for part in parts:
            if part["type"] == "image":
                if k < len(images):
                    out.append(f"![img{k:03d}]({_thumb(images[k])})")
                k += 1
            elif budget > 0:
                text = part["text"][:budget]
                budget -= len(text)
                out.append(f"> {m['role']}: " + text.replace("\n", " ") + ("…" if len(part["text"]) > len(text) else ""))
    return "\n\n".join(out)


def _shard_checks(index: shards.ShardIndex, name: str, bad_parts: list[str], n: int) -> list[dg.AssetCheckResult]:
    problems = [x for url in index.tar_urls for x in shards.verify_shard(url)]
    return [
        dg.AssetCheckResult(check_name=f"{name}_shard_integrity", passed=not problems,
                            metadata={"problems": dg.MetadataValue.text("\n".join(problems) or "none")}),
        dg.AssetCheckResult(check_name=f"{name}_image_parts_match", passed=not bad_parts and n == index.num_samples,
                            metadata={"mismatched": len(bad_parts)}),
    ]


@dg.asset(group_name=GROUP, kinds={"webdataset", "parquet"}, deps=[document_minhash_clusters], automation_condition=EAGER,
          check_specs=[dg.AssetCheckSpec("interleaved_shard_integrity", asset="interleaved_shards"),
                       dg.AssetCheckSpec("interleaved_image_parts_match", asset="interleaved_shards",
                                         description="image parts in the messages == image fields of the sample")])
def interleaved_shards(context: dg.AssetExecutionContext, config: ShardRunConfig, storage: StorageResource) -> dg.MaterializeResult:
    """Kept documents as interleaved chat samples (text and images in reading order) in WebDataset shards."""
    parts = _ready(context, storage.root, A["quality"])
    index = pipe.run_interleaved_shards(storage.root, parts, _settings(samples_per_shard=config.samples_per_shard))
    dropped = rows(quarantine_url(storage.root, A["interleaved_shards"], pipe.CORPUS))
    meta = [r for url in index.parquet_urls for r in fsio.read_records(url)]
    n, bad, first = chat_image_mismatches(index)
    md = {
        "shards_url": dg.MetadataValue.path(index.url),
        "version": dg.MetadataValue.text(index.version),
        "samples": dg.MetadataValue.int(index.num_samples),
        "shards": dg.MetadataValue.int(len(index.shards)),
        "bytes": dg.MetadataValue.int(index.total_bytes),
        "images": dg.MetadataValue.int(sum(r["n_images"] for r in meta)),
        "image_parts_dropped": dg.MetadataValue.int(len(dropped)),
        "image_drops_by_reason": dg.MetadataValue.md(counter_table(Counter(r["reason"] for r in dropped), "reason")),
        "kinds": dg.MetadataValue.md(counter_table(Counter(r["kind"] for r in meta), "kind")),
        "partitions": dg.MetadataValue.text(", ".join(parts)),
        "sample_preview": dg.MetadataValue.md("\n\n---\n\n".join(sample_markdown(s) for s in first) or "_empty_"),
    }
    return dg.MaterializeResult(metadata=md, check_results=_shard_checks(index, "interleaved", bad, n))


@dg.asset(group_name=GROUP, kinds={"webdataset", "parquet"}, deps=[ocr_grounding_samples], automation_condition=EAGER,
          check_specs=[dg.AssetCheckSpec(f"{d}_{c}", asset="ocr_grounding_shards") for d in ("ocr", "grounding")
                       for c in ("shard_integrity", "image_parts_match")]
          + [dg.AssetCheckSpec("grounding_answers_are_boxes", asset="ocr_grounding_shards",
                               description="every grounding answer is '[x1, y1, x2, y2]' inside its image")])
def ocr_grounding_shards(context: dg.AssetExecutionContext, config: ShardRunConfig, storage: StorageResource) -> dg.MaterializeResult:
    """OCR and grounding chat samples (image + prompt -> text / box) as datasets 'ocr' and 'grounding'."""
    parts = _ready(context, storage.root, A["ocr_grounding"])
    indexes = pipe.run_ocr_grounding_shards(storage.root, parts, _settings(samples_per_shard=config.samples_per_shard))
    md: dict = {"partitions": dg.MetadataValue.text(", ".join(parts))}
    checks: list[dg.AssetCheckResult] = []
    bad_answers = 0
    for name, index in indexes.items():
        n, bad, first = chat_image_mismatches(index)
        md[f"{name}_shards_url"] = dg.MetadataValue.path(index.url)
        md[f"{name}_samples"] = dg.MetadataValue.int(index.num_samples)
        md[f"{name}_preview"] = dg.MetadataValue.md("\n\n---\n\n".join(sample_markdown(s, 300) for s in first[:2]) or "_empty_")
        checks += _shard_checks(index, name, bad, n)
        if name == "grounding":
            for url in index.parquet_urls:
                for r in fsio.read_records(url):
                    box = json.loads(r["answer"])
                    if not (len(box) == 4 and 0 <= box[0] <= box[2] <= r["width"] and 0 <= box[1] <= box[3] <= r["height"]):
                        bad_answers += 1
    checks.append(dg.AssetCheckResult(check_name="grounding_answers_are_boxes", passed=bad_answers == 0,
                                      metadata={"bad": bad_answers}))
    return dg.MaterializeResult(metadata=md, check_results=checks)


ASSETS = [documents_parsed, document_quality, document_minhash_clusters, ocr_grounding_samples, interleaved_shards,
          ocr_grounding_shards]
# what a drop sensor's job runs first; the rest follows by automation
INGEST_ASSETS = ["documents_parsed"]
