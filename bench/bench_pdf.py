"""PDF parsing throughput: ``curation.pdf.parse_pdf`` against raw ``page.get_text('dict')``.

    python -m bench.bench_pdf            # every born-digital PDF of ../shared/data/pdf, best of 3
    python -m bench.bench_pdf --quick    # docling_tests + scientific_latex, 1 round

Set: the PDFs of ../shared/data/pdf that ``parse_pdf`` turns into a document (scanned,
encrypted and broken files are left out, so both sides do the same pages), read into memory first.
One process, one core. Variants, each over the whole set:

(a) baseline ``pymupdf.open`` + ``page.get_text('dict')`` on every page (default flags: this
    includes every image decoded and re-encoded into the dict);
(a') the same without ``TEXT_PRESERVE_IMAGES`` (text only: what a text extractor pays);
(b) ``parse_pdf(ocr=False, tables=False)``: text (lines from MuPDF's JSON writer), images
    (bytes extracted once per xref), headers/footers, reading order;
(c) ``parse_pdf(ocr=False)``: (b) plus tables: the page's vector paths collected by the same
    text pass (``VECTOR_FLAGS``), the rule gate, and ``curation.pdf_tables`` on the pages the gate
    lets through;
(d) what a user writes for text and tables with pymupdf alone: (a) plus ``page.find_tables()``
    on every page (no layout, no images, no reading order).

Table finders alone, on the gated pages: pymupdf's ``page.find_tables()`` against
``curation.pdf_tables.find_tables`` (with the page's ``get_cdrawings()`` and words), both with
parse_pdf's acceptance check, and how many tables they agree on (box IoU >= 0.9).

Goal from issue 4: overhead of (b)/(c) over (a) <= 15%. OCR is not in these figures (about
10 s per dense 300-dpi page with Tesseract on one core; measured separately with --ocr).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import pymupdf

from bench.report import machine, markdown_table, write_block
from curation.pdf import TEXT_FLAGS, PdfConfig, _path_rects, _table_candidate, parse_pdf
from curation.pdf_tables import find_tables

REPO = Path(__file__).resolve().parents[1]
QUICK_DIRS = ("docling_tests", "scientific_latex")


def load(data_dir: Path, quick: bool) -> list[tuple[str, bytes, int]]:
    """(name, bytes, pages) of every PDF that parses to a document."""
    root = data_dir / "pdf"
    paths = sorted(root.rglob("*.pdf"))
    if quick:
        paths = [p for p in paths if p.relative_to(root).parts[0] in QUICK_DIRS]
    out = []
    for p in paths:
        data = p.read_bytes()
        r = parse_pdf(data, p.name, PdfConfig(ocr=False, tables=False))
        if r.ok:
            out.append((str(p.relative_to(root)), data, r.stats["pages"]))
    return out


def run_dict(docs: list[tuple[str, bytes, int]], flags: int | None = None) -> None:
    for _, data, _ in docs:
        doc = pymupdf.open(stream=data, filetype="pdf")
        for page in doc:
            page.get_text("dict") if flags is None else page.get_text("dict", flags=flags)
        doc.close()


def run_dict_tables(docs: list[tuple[str, bytes, int]]) -> None:
    for _, data, _ in docs:
        doc = pymupdf.open(stream=data, filetype="pdf")
        for page in doc:
            page.get_text("dict")
            page.find_tables()
        doc.close()


def run_parse(docs: list[tuple[str, bytes, int]], config: PdfConfig) -> None:
    for name, data, _ in docs:
        r = parse_pdf(data, name, config)
        assert r.ok, (name, r.reason, r.error)


def speed(docs: list[tuple[str, bytes, int]], repeats: int) -> list[tuple[str, float]]:
    """Seconds of each variant (best of ``repeats`` interleaved rounds)."""
    no_images = pymupdf.TEXTFLAGS_DICT & ~pymupdf.TEXT_PRESERVE_IMAGES
    variants: list[tuple[str, Callable[[], None]]] = [
        ("(a) get_text('dict')", lambda: run_dict(docs)),
        ("(a') get_text('dict'), no images", lambda: run_dict(docs, no_images)),
        ("(b) parse_pdf, tables off", lambda: run_parse(docs, PdfConfig(ocr=False, tables=False))),
        ("(c) parse_pdf (default: tables on)", lambda: run_parse(docs, PdfConfig(ocr=False))),
        ("(d) get_text('dict') + page.find_tables()", lambda: run_dict_tables(docs)),
    ]
    best: dict[str, float] = {}
    for _ in range(repeats):
        for name, fn in variants:
            t0 = time.perf_counter()
            fn()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
    return [(name, best[name]) for name, _ in variants]


def _accepted(cells: list[list[str | None]], min_filled: float = PdfConfig().table_min_filled) -> bool:
    n = sum(len(r) for r in cells)
    filled = sum(1 for r in cells for c in r if c and c.strip())
    return len(cells) >= 2 and len(cells[0]) >= 2 and n > 0 and filled / n >= min_filled


def _iou(a: tuple, b: tuple) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def table_finders(docs: list[tuple[str, bytes, int]]) -> tuple[list[list[str]], str]:
    """Rows of the finder comparison on the gated pages, and a one-line agreement summary."""
    gated = []
    for _, data, _ in docs:
        doc = pymupdf.open(stream=data, filetype="pdf")
        for page in doc:
            if _table_candidate(_path_rects(page.get_cdrawings()), PdfConfig().table_min_rules):
                gated.append(page)
    t0 = time.perf_counter()
    theirs = []
    for page in gated:
        found = page.find_tables()
        theirs.append([tuple(t.bbox) for t in (found.tables if found else []) if _accepted(t.extract())])
    t_theirs = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = []
    for page in gated:
        paths = page.get_cdrawings()
        words = page.get_textpage(flags=TEXT_FLAGS).extractWORDS()
        tabs = find_tables(_path_rects(paths), words, tuple(page.rect), drawings=[p["rect"] for p in paths])
        ours.append([t.bbox for t in tabs if _accepted(t.cells)])
    t_ours = time.perf_counter() - t0
    n_theirs, n_ours = sum(map(len, theirs)), sum(map(len, ours))
    agree = sum(1 for a, b in zip(theirs, ours) for t in a if any(_iou(t, o) >= 0.9 for o in b))
    same_pages = sum(1 for a, b in zip(theirs, ours) if len(a) == len(b) and all(any(_iou(t, o) >= 0.9 for o in b) for t in a))
    rows = [
        ["pymupdf `page.find_tables()`", f"{t_theirs:.2f}", f"{len(gated) / t_theirs:.0f}", str(n_theirs), "1.0x"],
        ["`curation.pdf_tables.find_tables`", f"{t_ours:.2f}", f"{len(gated) / t_ours:.0f}", str(n_ours), f"**{t_theirs / t_ours:.1f}x**"],
    ]
    summary = (f"{len(gated)} gated pages; {agree} of pymupdf's {n_theirs} tables found with box IoU >= 0.9; "
               f"same tables on {same_pages} of {len(gated)} pages")
    return rows, summary


def ocr_seconds(data_dir: Path) -> float:
    """Seconds to parse the one-page scanned Linn brochure with OCR (300 dpi)."""
    data = (data_dir / "pdf/scanned_ocrmypdf/linn.pdf").read_bytes()
    t0 = time.perf_counter()
    r = parse_pdf(data, "linn", PdfConfig(ocr=True))
    assert r.ok and r.stats["ocr_pages"] == 1
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="docling_tests + scientific_latex, 1 round")
    ap.add_argument("--ocr", action="store_true", help="also time one OCR page (needs Tesseract)")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args(argv)
    docs = load(args.data, args.quick)
    pages = sum(n for _, _, n in docs)
    results = speed(docs, 1 if args.quick else 3)
    base = dict(results)["(a) get_text('dict')"]
    base_text = dict(results)["(a') get_text('dict'), no images"]
    tables_s = dict(results)["(c) parse_pdf (default: tables on)"] - dict(results)["(b) parse_pdf, tables off"]
    rows = [
        [name, f"{secs:.2f}", f"{pages / secs:.0f}", f"{secs / base - 1:+.0%}", f"{secs / base_text - 1:+.0%}"]
        for name, secs in results
    ]
    body = [
        f"PDF parsing, {len(docs)} PDFs / {pages} pages of ../shared/data/pdf"
        f"{' (quick: ' + ' + '.join(QUICK_DIRS) + ', 1 round)' if args.quick else ' (born-digital, best of 3)'}; "
        f"{machine()}",
        "",
        markdown_table(["variant", "seconds", "pages/s", "overhead vs (a)", "vs (a')"], rows),
        "",
        "Goal (issue 4): overhead <= 15% over (a). (b) reads the text page's lines through MuPDF's JSON writer "
        "(`curation.pdf.page_lines`, a third of what `extractDICT()` costs) and adds the layout work (blocks split, "
        "headers/footers, column order, image placements from the same text page's image blocks, image bytes "
        "once per xref); (a) includes decoding and re-encoding every image placement, (a') does not. (c) adds "
        "tables: MuPDF collects the vector paths in the same text pass (`TEXT_COLLECT_VECTORS` + "
        "`TEXT_LAZY_VECTORS`; their boxes are read from its block list, `curation.pdf._walk_vectors`), the rule "
        "gate picks the pages that could hold a table, and the lattice finder of `curation.pdf_tables` reads "
        f"them ({tables_s:.2f} s of the difference here, words included). (d) is what text plus tables cost with "
        "pymupdf alone (the table finder runs its own drawing and character extraction on every page): the "
        "baseline a user would otherwise write for the same content, without layout, images or reading order.",
    ]
    finder_rows, summary = table_finders(docs)
    body += [
        "",
        "Table finders alone (same gated pages, same acceptance check: >= 2 x 2, >= 30% of cells filled):",
        "",
        markdown_table(["finder", "seconds", "pages/s", "tables", "speed-up"], finder_rows),
        "",
        summary + ". The tables only one finder reports are vector figures with labels (GeoTopo's "
        "diagrams, a physics diagram, an ASME figure, two form fields), where neither finder's \"table\" is one.",
    ]
    if args.ocr:
        body += ["", f"OCR (Tesseract via pymupdf, 300 dpi, scanned_ocrmypdf/linn.pdf, 1 page): {ocr_seconds(args.data):.1f} s"]
    write_block("pdf", "\n".join(body))


if __name__ == "__main__":
    main()
