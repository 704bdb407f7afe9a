"""PDF -> interleaved document (text, tables and images in reading order); failures are values.

``parse_pdf(data, source, config)`` returns a ``ParseResult``: a document, or a quarantine reason.

Document schema (a plain dict, JSON-serialisable except ``images``)::

    {id, source, n_pages, pages: [{page, width, height, ocr}],  # parsed pages, size in points
     elements: [{type: 'text'|'image'|'table', page (1-based), bbox: [x0, y0, x1, y1] (points),
                 text? (text, table markdown), image_sha256?, image_ext?, image_width?, image_height?,
                 ocr? (True on OCR text)}],
     images: {sha256: bytes}}                                    # bytes never sit in element rows

Reasons (``ParseResult.reason``): ``unreadable_pdf`` (not a PDF, broken xref/pages that MuPDF
cannot repair, or every page failed), ``encrypted`` (needs a password and the empty one does not
open it), ``needs_ocr`` (a scanned page and OCR off or Tesseract missing), ``no_content`` (pages,
but no text, table or image on any of them).

Per page, in this order:

1. Text blocks and lines of MuPDF's text page (``page_lines``: read from its JSON writer, at a
   third of the cost of ``extractDICT()``), one text page per page for text, table rules, cell
   words and image placements. It keeps image blocks (placement and size only: image bytes come
   from the xref table, read once per document, not decoded per placement) where the page has
   image resources, and no ligatures (``ﬁ`` -> ``fi``, as pdftotext does); a block is split
   where its lines lie side by side more than ``block_split_gap`` apart. Lines of a block are
   joined with a space, or with nothing after a hyphen (``compu-`` + ``ter`` -> ``compu-ter``:
   the hyphen is kept, since it may be a real compound). Whitespace-only blocks are dropped.
2. Scanned pages: fewer than ``scanned_max_chars`` text characters and images covering at least
   ``scanned_min_image_cover`` of the page. With OCR on, the page is rendered and read by
   Tesseract (``page.get_textpage_ocr(full=True)``, blocks rebuilt by ``blocks_from_words``),
   and those blocks replace the empty text layer; the scan image itself is dropped when OCR found
   text (it *is* the text) and kept as a picture otherwise (ImageMagick-style photo pages). With
   OCR off the document gets ``needs_ocr``: a document with a silently missing page is worse than
   a quarantined one.
3. Tables: ``curation.pdf_tables.find_tables``, the lattice method of pymupdf's
   ``page.find_tables()`` (rules -> snapped/joined edges -> crossings -> cells -> tables) with cell
   text from the page's words instead of pymupdf's per-character Python objects: about 10x faster than
   pymupdf's finder on the gated sample pages, the same boxes and grid shapes on the real tables,
   and cell text that keeps what character boxes lose (``FUNCTION_ID``, not ``FUNCTION ID _``).
   The rules come from the text pass itself: the text page is built with ``VECTOR_FLAGS``, so
   MuPDF adds a vector block per rectangular part of every path (flagged as such) and one for the
   rest of the path, held back until the next text line starts (``_walk_vectors`` reads their
   boxes; ``page_lines`` joins back the text blocks they, and image blocks, split). A second pass with
   ``get_cdrawings()``, which interprets the page again and builds a Python dict per path item,
   cost as much as the rest of the table work; it stays as the fallback for a MuPDF whose block
   layout ``_vector_layout_ok`` does not recognise. The finder only runs on pages whose rules
   could form a table (and never where the JSON shows too few rectangles for it, without reading
   the blocks): at least ``table_min_rules`` axis-parallel rules (lines, thin
   rectangles, box edges) with the same extent (the rows of a grid, or booktabs' top/mid/bottom
   rules); 148 of the 564 born-digital sample pages. A found table is kept when it has at least
   2 rows and 2 columns and ``table_min_filled`` of its cells hold text (vector diagrams with
   labels also form grids, whose "cells" are mostly empty); it becomes one element with GitHub
   markdown text, and the text blocks it covers are removed.
4. Images: every placement of every image xref on the page (see ``_placements``: the image
   blocks of the text page, the placement list that ``page.get_image_rects`` reads from a text
   page of its own, matched to xrefs without decoding), its whole box clipped to the page,
   with the raw bytes of ``doc.extract_image(xref)``, read once per xref (JPEG/JPX stay as
   stored; MuPDF writes other encodings, e.g. Flate, JBIG2, CCITT, as PNG; nothing is
   re-rendered). Inline images are skipped: in the sample data they are glyph bitmaps, rules and
   bullets (638 of them, none a picture). Images under ``min_image_px`` pixels a side are spacers.
5. Headers, footers, page numbers: text lines inside the top or bottom band (``hf_band`` of the
   page height) are peeled off from the page edge inwards while they qualify: (a) a bare page
   number (``7``, ``- 7 -``, ``Page 7``, ``7-45``, ``vii``, ``3 / 10``), (b) text whose key
   (lowercased, page-number tokens removed, other digits -> ``#``) appears in the same band on at
   least ``hf_min_repeat`` pages, (c) top band only: a one-line running head that starts or ends
   with a page number (``Optimized Table Tokenization ... 9``; footnotes start with their number,
   so the bottom band does without this rule). The first line that does not qualify stops the
   peeling, so a section number or body line that reaches into the band is kept; (b) and (c)
   apply only on pages that also have text outside the bands.
6. Reading order: ``reading_order`` below, over text, table and image boxes together, so images
   and tables sit where they stand in the flow; columns run right to left on pages whose letters
   are mostly Hebrew or Arabic. Tables are not searched on such pages: pymupdf's cell text comes
   out in visual order there, i.e. reversed.

Known limits: form-like pages (label/value pairs side by side, e.g. docling's right_to_left_03)
are read column by column, not row by row; text drawn as vector outlines has no text layer and
is neither text nor "scanned".
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import re
import struct
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pymupdf

from curation.pdf_tables import find_tables

from curation.records import KEEP, Verdict, content_id, drop

Line = tuple[tuple[float, float, float, float], str]  # a text line: bbox, text

# dict flags without TEXT_PRESERVE_IMAGES (images come from the xref table) and without
# TEXT_PRESERVE_LIGATURES (expand ﬁ/ﬂ, as pdftotext does)
TEXT_FLAGS = (
    pymupdf.TEXT_PRESERVE_WHITESPACE | pymupdf.TEXT_MEDIABOX_CLIP | pymupdf.TEXT_CID_FOR_UNKNOWN_UNICODE
)
# the same, plus the page's vector paths as blocks (for the table finder), held back until a new
# line so that they never split a text line
VECTOR_FLAGS = TEXT_FLAGS | pymupdf.TEXT_COLLECT_VECTORS | pymupdf.TEXT_LAZY_VECTORS


@dataclass(frozen=True)
class PdfConfig:
    """Settings of ``parse_pdf`` (lengths in PDF points, 1/72 inch)."""

    ocr: bool | None = None  # None: on when Tesseract and the language data are installed
    ocr_language: str = "eng"
    ocr_dpi: int = 300
    tables: bool = True
    table_min_rules: int = 3
    table_min_filled: float = 0.3
    drop_headers_footers: bool = True
    hf_band: float = 0.14  # 2305.03393 p.9 (LNCS): running head ends at 13% of the page height
    hf_min_repeat: int = 2
    min_gutter: float = 8.0  # narrowest column gap; AMT handbook: 9.5 pt, LaTeX two-column: 12-24 pt
    # a block's lines further apart sideways are split into separate blocks: bullets and section
    # numbers sit 11-12 pt from their text, AASTeX line numbers 22 pt, side-by-side captions 137 pt
    block_split_gap: float = 18.0
    scanned_max_chars: int = 10
    scanned_min_image_cover: float = 0.5
    min_image_px: int = 8
    max_pages: int | None = None


DEFAULT_CONFIG = PdfConfig()


@dataclass
class ParseResult:
    """A parsed document, or the reason it goes to quarantine.

    ``error``: the exception text behind ``unreadable_pdf``, or, on a document, the last page that
    failed and was skipped. ``stats``: counts such as ``pages``, ``scanned_pages``, ``ocr_pages``,
    ``tables``, ``headers_footers``, ``page_errors``, ``images_failed`` (bytes that did not
    extract), ``images_unmatched`` (placements of same-size images that no digest resolved).
    """

    document: dict[str, Any] | None
    reason: str | None = None
    error: str | None = None
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.document is not None

    @property
    def verdict(self) -> Verdict:
        return KEEP if self.ok else drop(self.reason or "unreadable_pdf")


# ------------------------------------------------------------------------------------- OCR


@functools.lru_cache(maxsize=8)
def tessdata_dir(language: str = "eng") -> str | None:
    """Tesseract's language-data folder when ``<language>.traineddata`` is there, else None.

    Cached: ``pymupdf.get_tessdata`` runs ``tesseract --list-langs`` in a subprocess each call.
    """
    try:
        path = pymupdf.get_tessdata()
    except Exception:  # RuntimeError: Tesseract not installed
        return None
    langs = language.split("+")
    if path and all(os.path.exists(os.path.join(path, f"{lang}.traineddata")) for lang in langs):
        return path
    return None


def ocr_available(language: str = "eng") -> bool:
    """True when ``parse_pdf`` can OCR scanned pages in ``language``."""
    return tessdata_dir(language) is not None


# ------------------------------------------------------------------------- reading order


def _merge_intervals(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _gaps(extents: list[tuple[float, float]], min_gutter: float) -> list[tuple[float, float]]:
    """Vertical white strips at least ``min_gutter`` wide between merged x-extents."""
    return [(a[1], b[0]) for a, b in zip(extents, extents[1:]) if b[0] - a[1] >= min_gutter]


def _same_columns(
    xs: Sequence[tuple[float, float]],
    region: list[int],
    region_x: list[tuple[float, float]],
    band_x: list[tuple[float, float]],
    union_x: list[tuple[float, float]],
    min_gutter: float,
) -> bool:
    """True when ``band`` continues the columns of ``region``: together they keep a gutter, and
    every gutter of either one survives (in part) in the union, so neither crosses the other's.
    ``region_x``, ``band_x``, ``union_x``: the merged x-extents of the region, the band and both."""
    union = _gaps(union_x, min_gutter)
    if not union:
        return False
    own = _gaps(region_x, min_gutter)
    if own:  # a region with columns must keep them (in part: the next band may be narrower)
        return all(any(min(b, ub) > max(a, ua) for ua, ub in union) for a, b in own)
    # a region without columns yet (one band) joins a band with columns only if none of its boxes
    # reaches into the band's gutters (a heading above one column, not a title over all of them)
    return not any(min(b, xs[i][1]) > max(a, xs[i][0]) for a, b in _gaps(band_x, min_gutter) for i in region)


def _bands(boxes: Sequence[Sequence[float]], ids: Sequence[int], tol: float) -> list[list[int]]:
    """Split ``ids`` into horizontal bands separated by white strips spanning the whole width."""
    bands: list[list[int]] = []
    bottom = float("-inf")
    for i in sorted(ids, key=lambda i: (boxes[i][1], boxes[i][0])):
        if bands and boxes[i][1] < bottom - tol:
            bands[-1].append(i)
            bottom = max(bottom, boxes[i][3])
        else:
            bands.append([i])
            bottom = boxes[i][3]
    return bands


def _order(
    boxes: Sequence[Sequence[float]],
    xs: Sequence[tuple[float, float]],
    ids: list[int],
    rtl: bool,
    min_gutter: float,
    tol: float,
) -> list[int]:
    if len(ids) <= 1:
        return list(ids)
    # Regions: consecutive bands stay together while their boxes, taken together, keep a column
    # gutter (a full-width title or figure closes the region; a band with text in one column only,
    # as at the end of a paper, does not).
    regions: list[list[int]] = []
    extents: list[list[tuple[float, float]]] = []  # each region's merged x-extents, kept as it grows
    for band in _bands(boxes, ids, tol):
        band_x = _merge_intervals([xs[i] for i in band])
        if regions:
            union_x = _merge_intervals(extents[-1] + band_x)
            if _same_columns(xs, regions[-1], extents[-1], band_x, union_x, min_gutter):
                regions[-1].extend(band)
                extents[-1] = union_x
                continue
        regions.append(list(band))
        extents.append(band_x)
    out: list[int] = []
    for region, region_x in zip(regions, extents):
        gutters = _gaps(region_x, min_gutter)
        if not gutters:  # one band without columns: top to bottom, then left to right
            out.extend(sorted(region, key=lambda i: (boxes[i][1], boxes[i][0])))
            continue
        cuts = [(a + b) / 2 for a, b in gutters]
        columns: list[list[int]] = [[] for _ in range(len(cuts) + 1)]
        for i in region:
            columns[sum(xs[i][0] >= c for c in cuts)].append(i)
        if rtl:
            columns.reverse()
        for col in columns:  # each column may hold its own bands and columns (sub-figures, tables)
            out.extend(_order(boxes, xs, col, rtl, min_gutter, tol))
    return out


def reading_order(
    boxes: Sequence[Sequence[float]],
    rtl: bool = False,
    min_gutter: float = 8.0,
    tol: float = 1.0,
    soft: Sequence[bool] | None = None,
) -> list[int]:
    """Indices of ``boxes`` ([x0, y0, x1, y1], y down) in reading order, column by column.

    Column detection from x-extents, a recursive XY-cut that does not cut columns at coincidental
    horizontal gaps:

    1. Bands: sort boxes by top edge; a box starts a new band when it begins below everything so
       far (``tol`` of overlap is ignored), i.e. bands are separated by white strips that span the
       whole width.
    2. Regions: walk the bands top to bottom and add a band to the current region while the
       union of their x-extents still has a gap of at least ``min_gutter`` (a column gutter) and
       the region's gutters survive in it; a one-band region without gutters joins a band with
       columns only if none of its boxes reaches into the band's gutters. Two columns whose
       paragraph breaks happen to line up stay one region, and so do a heading above one column
       and a band with text in one column only; a full-width title, figure or paragraph (which
       covers the gutter) starts a new region.
    3. A region with gutters is cut at the middle of each gutter into columns, read left to right
       (right to left when ``rtl``), and each column is ordered by the same procedure (a column may
       itself hold a two-part figure); a region without gutter (one band) is read top to bottom,
       then left to right.

    ``soft`` marks boxes (images) that may bleed into a gutter or margin: only the middle third of
    their width counts as their x-extent, so a figure that overhangs its column by less than a
    third of its width stays in that column, while a full-width figure still closes the region.
    """
    xs: list[tuple[float, float]] = []
    for i, b in enumerate(boxes):
        if soft is not None and soft[i]:
            c, q = (b[0] + b[2]) / 2, (b[2] - b[0]) / 6
            xs.append((c - q, c + q))
        else:
            xs.append((b[0], b[2]))
    return _order(boxes, xs, list(range(len(boxes))), rtl, min_gutter, tol)


_RTL_CHARS = re.compile(r"[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufeff]")
_LETTERS = re.compile(r"[^\W\d_]")


def is_rtl(text: str, sample: int = 4000) -> bool:
    """True when most letters (of the first ``sample`` characters) are Hebrew or Arabic script."""
    text = text[:sample]
    if not _RTL_CHARS.search(text):  # the common case, without counting every letter
        return False
    return len(_RTL_CHARS.findall(text)) * 2 > len(_LETTERS.findall(text))


# ---------------------------------------------------------------- headers, footers, page numbers

_PAGE_TOKEN = re.compile(
    r"^[(\[\-–—]*(\d{1,4}|[ivxlcdm]{1,7})([\-–—./:]\d{1,4})*[)\]\-–—.]*$|^(page|seite|p\.|of|/|[-–—|])$",
    re.IGNORECASE,
)


def _is_page_token(tok: str) -> bool:
    return bool(_PAGE_TOKEN.match(tok))


def is_page_number(text: str) -> bool:
    """A bare page number: ``7``, ``- 7 -``, ``Page 7``, ``7-45``, ``vii``, ``3 / 10``, ``Page 3 of 10``."""
    toks = text.split()
    return bool(toks) and all(_is_page_token(t) for t in toks) and any(re.search(r"\d|^[ivxlcdm]+$", t, re.I) for t in toks)


def header_key(text: str) -> str:
    """Key under which running headers/footers repeat: page numbers out, digits -> '#'."""
    toks = [t for t in unicodedata.normalize("NFKC", text).lower().split() if not _is_page_token(t)]
    return re.sub(r"\d", "#", " ".join(toks))


def _is_running_head(text: str) -> bool:
    """One line of at most 16 words that starts or ends with a page number."""
    toks = text.split()
    return 2 <= len(toks) <= 16 and (_is_page_token(toks[0]) or _is_page_token(toks[-1]))


# --------------------------------------------------------------------------------- pages


def _join_lines(lines: list[str]) -> str:
    parts: list[str] = []
    for s in lines:
        if parts and parts[-1].endswith("-"):
            parts[-1] += s
        else:
            parts.append(s)
    return " ".join(parts)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_SCALE = 1000.0  # MuPDF's JSON writer prints coordinates as integers: keep 1/1000 pt
# a vector block as MuPDF's JSON writer prints it (flags only, no box: see _walk_vectors)
_JSON_VECTOR = re.compile(rb'\{"type":"vector"[^}]*\}')


def _json_bytes(textpage: pymupdf.TextPage, scale: float) -> bytes:
    """MuPDF's JSON of a text page, coordinates multiplied by ``scale``."""
    buf = pymupdf.mupdf.fz_new_buffer(16384)
    out = pymupdf.mupdf.FzOutput(buf)
    pymupdf.mupdf.fz_print_stext_page_as_json(out, textpage.this, scale)
    out.fz_close_output()
    return bytes(pymupdf.mupdf.fz_buffer_storage_memoryview(buf))


def _page_json(textpage: pymupdf.TextPage) -> dict | None:
    """The text page as written by MuPDF's JSON writer (coordinates in 1/``_JSON_SCALE`` pt), or
    None where it does not parse. Vector blocks become ``0`` in the block list: a figure-heavy
    page has thousands, whose dicts would cost more to parse than the text (``_walk_vectors`` reads
    them from the block list instead). ``vector_rects``: how many of them are rectangles."""
    data = _json_bytes(textpage, _JSON_SCALE)
    rects = 0
    if b'"type":"vector"' in data:
        rects = data.count(b'"rectangle":1')  # quotes inside line text are escaped: no false hits
        data = _JSON_VECTOR.sub(b"0", data)
    try:
        raw = json.loads(data)
    except ValueError:  # not seen on the sample PDFs
        return None
    raw["vector_rects"] = rects
    return raw


# MuPDF's stext device (stext-device.c): a line this far off the last baseline (in font sizes)
# starts a new paragraph; between BASE_MAX_DIST and this, only when indented and not a bullet
_PARAGRAPH_DIST = 1.5
_BASE_MAX_DIST = 0.8
# plausible_bullet() of stext-device.c (digits included: numbered lists)
_BULLETS = frozenset(
    "0123456789*\u00b7\u2022\u2023\u2043\u204c\u204d\u2219\u25c9\u25cb\u25cf\u25d8\u25e6"
    "\u2619\u261a\u261b\u261c\u261d\u261e\u261f\u2765\u2767\u29be\u29bf"
    "\u2660\u2661\u2662\u2663\u2664\u2665\u2666\u2667"
    "\U0001f446\U0001f447\U0001f448\U0001f449\U0001fbc1\U0001fbc2\U0001fbc3\ufffd"
    + "".join(map(chr, range(0x1F597, 0x1F5A4)))  # the sideways and backhand pointing indexes
)


def _continues(prev: dict, line: dict) -> bool:
    """Whether MuPDF, had no vectors or images been drawn between them, would have put ``line``
    (the first line of a block that follows vector or image blocks) into the block that ends with
    ``prev``: its paragraph rule, with the lines' first-character origins for the pen (the last
    character's origin, which MuPDF uses, is not in the JSON). On the 564 sample pages this
    reproduces the blocks of a text page without vectors on every docling test page, and without
    images on every page; where it does not, it joins pieces of formulas that MuPDF splits at
    fraction bars (numerator and denominator)."""
    size = line.get("font", {}).get("size", 0) / _JSON_SCALE
    if size <= 0 or prev.get("wmode", 0) != line.get("wmode", 0):
        return False
    base = abs(line["y"] - prev["y"]) / _JSON_SCALE / size
    if base < _BASE_MAX_DIST:
        return True
    if base <= _PARAGRAPH_DIST:
        return not ((line["x"] - prev["x"]) / _JSON_SCALE > 0.5 and prev.get("text", "")[:1] not in _BULLETS)
    return False


def page_lines(textpage: pymupdf.TextPage) -> dict:
    """Text blocks and lines of a text page, shaped like ``extractDICT()`` but with one span per
    line: ``{'blocks': [{'type': 0, 'lines': [{'bbox', 'spans': [{'text'}]}]}], 'vector_rects': n}``
    (``n``: the page's rectangular vector blocks, on a ``VECTOR_FLAGS`` text page).

    Written by MuPDF's own JSON writer (line text and line box, no per-span dicts) and read with
    ``json.loads``: a third of the cost of ``extractDICT()``, which builds a Python dict per span
    with fonts, colours and origins that the parser never reads (0.18 s instead of 0.6 s on the
    564 sample pages). Line boxes are MuPDF's glyph boxes; ``extractDICT()`` re-derives them from
    the fonts' ascender and descender, so the two differ in height by up to a point or two.
    Lines of zero width or height (only zero-size glyphs) are dropped, as ``extractDICT()`` drops
    them. Zero-width characters inside a line, which it drops too, stay: combining marks of
    formulas (the stroke of a ``≠``, and stray vector arrows of TeX accents that MuPDF writes
    into a neighbouring line). On the sample PDFs 8 of 12,506 elements get another text this way
    or from a formula grouped differently.
    Lone surrogates become U+FFFD, as there.

    On a text page with lazily collected vectors (``VECTOR_FLAGS``) or with images
    (``TEXT_PRESERVE_IMAGES``), MuPDF starts a new text block wherever vectors or an image were
    drawn before a new line (a shaded code listing, a form field, an inline figure); such a block
    is joined back to the text block before them where MuPDF's own paragraph rule would have kept
    it there (``_continues``). Where the JSON does not parse, the lines come from
    ``extractDICT()`` (its spans joined) and ``vector_rects`` is None.
    """
    text_blocks, n_rects = _page_text(textpage)
    blocks = [
        {"type": 0, "lines": [{"bbox": box, "spans": [{"text": text}]} for box, text in lines]}
        for lines in text_blocks
    ]
    return {"blocks": blocks, "vector_rects": n_rects}


def _page_text(textpage: pymupdf.TextPage) -> tuple[list[list[Line]], int | None]:
    """The text blocks of a text page as lists of (bbox, text) lines, and how many rectangular
    vector blocks it holds (see ``page_lines``); from ``extractDICT()`` (count None) where the JSON
    does not parse (not seen on the sample PDFs; the dict is slower but always well-formed)."""
    raw = _page_json(textpage)
    if raw is None:
        return _dict_lines(textpage.extractDICT()), None
    return _json_lines(raw), raw["vector_rects"]


def _dict_lines(page_dict: dict) -> list[list[Line]]:
    """The text blocks of an ``extractDICT()``-shaped page as lists of (bbox, text) lines."""
    return [
        [(line["bbox"], "".join(span["text"] for span in line["spans"])) for line in b["lines"]]
        for b in page_dict["blocks"]
        if b.get("type", 0) == 0
    ]


def _json_lines(raw: dict) -> list[list[Line]]:
    """The text blocks of ``_page_json`` as lists of (bbox, text) lines (see ``page_lines``)."""
    k = 1.0 / _JSON_SCALE
    blocks: list[list[Line]] = []
    prev: dict | None = None  # last line of the last text block (MuPDF's pen for the paragraph rule)
    after_graphic = False
    for b in raw.get("blocks", ()):
        if not isinstance(b, dict) or b.get("type") == "image":  # a vector (see _page_json) or an image
            after_graphic = True
            continue
        if b.get("type") != "text" or not b.get("lines"):
            continue
        lines: list[Line] = []
        for line in b["lines"]:
            r = line["bbox"]
            if r["w"] <= 0 or r["h"] <= 0:  # only zero-size glyphs (dots of a TikZ figure)
                continue
            x, y = r["x"] * k, r["y"] * k
            text = line.get("text", "")
            if not text.isascii():
                text = _LONE_SURROGATE.sub("\ufffd", text)
            lines.append(((x, y, x + r["w"] * k, y + r["h"] * k), text))
        if after_graphic and prev is not None and _continues(prev, b["lines"][0]):
            blocks[-1].extend(lines)
        else:
            blocks.append(lines)
        prev = b["lines"][-1]
        after_graphic = False
    return blocks


# fz_stext_block of MuPDF 1.28 (include/mupdf/fitz/structured-text.h): int type, int id,
# fz_rect bbox, a 32-byte union (vector blocks: uint32 flags, uint32 argb), prev, next
_BLOCK = struct.Struct("<ii4fI28xQQ")
_VECTOR_IS_RECTANGLE = 2  # FZ_STEXT_VECTOR_IS_RECTANGLE
_VECTOR_CONTINUES = 4  # FZ_STEXT_VECTOR_CONTINUES


def _walk_vectors(
    textpage: pymupdf.TextPage,
) -> tuple[list[tuple[float, float, float, float]], list[list[float]]]:
    """(rects, paths) of the text page's vector blocks, read straight from MuPDF's block list.

    pymupdf's SWIG proxies do not expose the union that holds a vector block's flags, and the
    JSON writer prints the flags but not the box; so each block is read as the public C struct
    (one ``struct.unpack`` per block, a third of the cost of three proxy attribute reads).
    ``_vector_layout_ok`` checks this layout against the proxies and the JSON before first use.
    """
    first = textpage.this.m_internal.first_block
    addr = int(first.this) if first is not None else 0
    rects: list[tuple[float, float, float, float]] = []
    paths: list[list[float]] = []
    unpack, read = _BLOCK.unpack, ctypes.string_at
    size, vector = _BLOCK.size, pymupdf.mupdf.FZ_STEXT_BLOCK_VECTOR
    open_path = False
    while addr:
        kind, _, x0, y0, x1, y1, flags, _, addr = unpack(read(addr, size))
        if kind != vector:
            continue
        if flags & _VECTOR_IS_RECTANGLE:
            rects.append((x0, y0, x1, y1))
        if open_path:
            u = paths[-1]
            if x0 < u[0]:
                u[0] = x0
            if y0 < u[1]:
                u[1] = y0
            if x1 > u[2]:
                u[2] = x1
            if y1 > u[3]:
                u[3] = y1
        else:
            paths.append([x0, y0, x1, y1])
        open_path = bool(flags & _VECTOR_CONTINUES)
    return rects, paths


@functools.cache
def _vector_layout_ok() -> bool:
    """Whether ``_walk_vectors`` reads this MuPDF's blocks right: on a page with a stroked rule,
    a filled box and a curve, its types, boxes and order must match pymupdf's proxies, and its
    flags the JSON writer's. If not (another MuPDF), tables fall back to ``get_cdrawings()``."""
    try:
        doc = pymupdf.open()
        page = doc.new_page()
        page.insert_text((72, 72), "cell", fontsize=11)
        page.draw_line((72, 80), (300, 80), width=1)
        page.draw_rect(pymupdf.Rect(72, 100, 200, 140), fill=(0.8, 0.8, 0.8), color=None)
        page.draw_circle((400, 400), 30)
        tp = page.get_textpage(flags=VECTOR_FLAGS)
        proxies = []
        b = tp.this.m_internal.first_block
        while b is not None:
            if b.type == pymupdf.mupdf.FZ_STEXT_BLOCK_VECTOR:
                r = b.bbox
                proxies.append((r.x0, r.y0, r.x1, r.y1))
            b = b.next
        raw = json.loads(_json_bytes(tp, 1.0))
        flags = [(v["rectangle"], v["continues"]) for v in raw["blocks"] if v["type"] == "vector"]
        rects, paths = _walk_vectors(tp)
        expect = [box for box, (rect, _) in zip(proxies, flags) if rect]
        return len(proxies) == 3 and flags == [(1, 0), (1, 0), (0, 0)] and rects == expect and len(paths) == 3
    except Exception:  # noqa: BLE001 - any surprise means: do not read the structs
        return False


def _text_blocks(page_dict: dict, gap: float = 18.0) -> list[tuple[list[float], str, int]]:
    """(bbox, text, number of lines) of each text block of an ``extractDICT()``-shaped page,
    split into side-by-side parts (``_block_parts``)."""
    return [part for lines in _dict_lines(page_dict) for part in _block_parts(lines, gap)]


def _block_parts(lines: Iterable[Line], gap: float) -> list[tuple[list[float], str, int]]:
    """(bbox, text, number of lines) of one text block's parts.

    MuPDF sometimes puts lines of neighbouring columns into one block: two captions side by side,
    or a manuscript's line numbers interleaved with the text lines. Each line joins the first part
    of its block whose x-range it overlaps or nears within ``gap``, else starts a new part.
    """
    groups: list[tuple[list[float], list[str]]] = []
    for (x0, y0, x1, y1), text in lines:
        text = text.strip()
        if not text:
            continue
        for box, texts in groups:
            if x0 - box[2] < gap and box[0] - x1 < gap:
                box[:] = [min(box[0], x0), min(box[1], y0), max(box[2], x1), max(box[3], y1)]
                texts.append(text)
                break
        else:
            groups.append(([float(x0), float(y0), float(x1), float(y1)], [text]))
    return [(box, _join_lines(texts), len(texts)) for box, texts in groups]


_ALNUM = re.compile(r"[^\W_]")


def _ocr_blocks(page: pymupdf.Page, textpage: pymupdf.TextPage, gap: float) -> list[tuple[list[float], str, int]]:
    """Blocks of an OCR text page (see ``blocks_from_words``)."""
    return blocks_from_words(page.get_text("words", textpage=textpage), gap)


def blocks_from_words(words: Sequence[tuple], gap: float) -> list[tuple[list[float], str, int]]:
    """(bbox, text, n_lines) blocks from ``page.get_text('words')`` tuples of an OCR text page.

    Tesseract's page segmentation can run a line across both columns of a narrow-gutter page (the
    2-column Linn brochure), usually through a noise token in the gutter (``_``, ``.``). So
    one-character words without a letter or digit are dropped (bullets go with them), Tesseract's
    lines are cut wherever two words are more than ``gap`` apart, and the pieces of each Tesseract
    block regroup side by side as in ``_text_blocks``. On linn.pdf at 300 dpi this takes the
    character error rate against the gold transcription from 0.33 to 0.02.
    """
    lines: dict[tuple[int, int], list[tuple]] = defaultdict(list)
    for w in words:
        if len(w[4]) > 1 or _ALNUM.search(w[4]):
            lines[w[5], w[6]].append(w)
    blocks: dict[int, list[dict]] = defaultdict(list)
    for (bno, _), ws in sorted(lines.items()):
        ws.sort(key=lambda w: w[0])
        pieces = [[ws[0]]]
        for w in ws[1:]:
            if w[0] - pieces[-1][-1][2] > gap:
                pieces.append([])
            pieces[-1].append(w)
        for piece in pieces:
            bbox = (min(w[0] for w in piece), min(w[1] for w in piece), max(w[2] for w in piece), max(w[3] for w in piece))
            blocks[bno].append({"bbox": bbox, "spans": [{"text": " ".join(w[4] for w in piece)}]})
    return _text_blocks({"blocks": [{"type": 0, "lines": ls} for _, ls in sorted(blocks.items())]}, gap)


def _path_rects(paths: Sequence[dict], tol: float = 3.0) -> list[tuple[float, float, float, float]]:
    """Axis-parallel lines, rectangles and rectangular quads of ``get_cdrawings()`` paths as boxes
    (a line is a box of zero thickness)."""
    out = []
    for path in paths:
        items = path["items"]
        if path.get("closePath") and items and items[0][0] == "l" and items[-1][0] == "l":
            items = [*items, ("l", items[-1][2], items[0][1])]
        for item in items:
            kind = item[0]
            if kind == "l":
                (x0, y0), (x1, y1) = item[1], item[2]
                if abs(x1 - x0) <= tol or abs(y1 - y0) <= tol:
                    out.append((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
            elif kind == "re":
                x0, y0, x1, y1 = item[1]
                out.append((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
            elif kind == "qu":
                (ax, ay), (bx, by), (cx, cy), (dx, dy) = item[1]  # ul, ur, ll, lr
                if abs(ay - by) <= tol and abs(cy - dy) <= tol and abs(ax - cx) <= tol and abs(bx - dx) <= tol:
                    xs, ys = (ax, bx, cx, dx), (ay, by, cy, dy)
                    out.append((min(xs), min(ys), max(xs), max(ys)))
    return out


def _table_candidate(rects: Sequence[Sequence[float]], min_rules: int) -> bool:
    """Cheap gate: ``min_rules`` axis-parallel rules with the same extent (see module docstring)."""
    groups: Counter = Counter()
    for x0, y0, x1, y1 in rects:
        w, h = x1 - x0, y1 - y0
        if h <= 2 and w >= 8:  # horizontal rule
            groups["h", round(x0 / 2), round(x1 / 2)] += 1
        elif w <= 2 and h >= 8:  # vertical rule
            groups["v", round(y0 / 2), round(y1 / 2)] += 1
        elif w >= 8 and h >= 8:  # a box: two rules each way
            groups["h", round(x0 / 2), round(x1 / 2)] += 2
            groups["v", round(y0 / 2), round(y1 / 2)] += 2
    return any(n >= min_rules for n in groups.values())


def _table_markdown(cells: list[list[str | None]]) -> str:
    def fmt(c: str | None) -> str:
        return " ".join((c or "").split()).replace("|", "\\|")

    rows = ["| " + " | ".join(fmt(c) for c in row) + " |" for row in cells]
    sep = "|" + "|".join("---" for _ in cells[0]) + "|"
    return "\n".join([rows[0], sep, *rows[1:]])


def _tables(
    page: pymupdf.Page, textpage: pymupdf.TextPage, vectors: bool, config: PdfConfig, n_rects: int | None = None
) -> list[tuple[list[float], str]]:
    """Tables of a page; ``vectors``: ``textpage`` holds the page's vector paths, ``n_rects`` of
    them rectangles (None: not counted)."""
    if vectors and n_rects is not None and 2 * n_rects < config.table_min_rules:
        return []  # each rectangle adds at most 2 to a rule group of the gate: it cannot pass
    if vectors:  # collected by the text pass
        rects, drawings = _walk_vectors(textpage)
    else:  # a second pass over the page
        paths = page.get_cdrawings()
        rects = _path_rects(paths)
        drawings = [p["rect"] for p in paths]
    if not _table_candidate(rects, config.table_min_rules):
        return []
    out = []
    for tab in find_tables(rects, textpage.extractWORDS(), tuple(page.rect), drawings=drawings):
        if tab.n_rows < 2 or tab.n_cols < 2:
            continue
        n = sum(len(r) for r in tab.cells)
        filled = sum(1 for r in tab.cells for c in r if c and c.strip())
        if n and filled / n >= config.table_min_filled:
            out.append(([float(v) for v in tab.bbox], _table_markdown(tab.cells)))
    return out


def _area(b: Sequence[float]) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _inter(a: Sequence[float], b: Sequence[float]) -> float:
    return _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


@dataclass
class _Page:
    number: int
    width: float
    height: float
    items: list[dict] = field(default_factory=list)  # elements before header removal and ordering
    rtl: bool = False
    ocr: bool = False


class _Images:
    """Image bytes per xref, extracted once per document."""

    def __init__(self, doc: pymupdf.Document):
        self.doc = doc
        self.cache: dict[int, tuple[str, str, int, int] | None] = {}
        self.blobs: dict[str, bytes] = {}
        self.errors = 0

    def get(self, xref: int) -> tuple[str, str, int, int] | None:
        if xref not in self.cache:
            try:
                info = self.doc.extract_image(xref)
                data = info.get("image") if info else None
            except Exception:
                info, data = None, None
            if not data:
                self.errors += 1
                self.cache[xref] = None
            else:
                sha = hashlib.sha256(data).hexdigest()
                self.blobs[sha] = data
                self.cache[xref] = (sha, info.get("ext", "bin"), int(info.get("width", 0)), int(info.get("height", 0)))
        return self.cache[xref]


Placement = tuple[tuple[int, ...], tuple[float, float, float, float], list[float]]
_UNIT_RECT = pymupdf.mupdf.FzRect(pymupdf.mupdf.FzRect.Fixed_UNIT)


def _placements(
    textpage: pymupdf.TextPage, imglist: list, prect: pymupdf.Rect, config: PdfConfig
) -> list[Placement]:
    """(candidate xrefs, whole placement box, box clipped to the page) of every image placement,
    from the image blocks of the page's text page (built with ``TEXT_PRESERVE_IMAGES`` where the
    page has image resources ``imglist``, ``page.get_images(full=True)``).

    ``page.get_image_info(xrefs=True)`` (and ``get_image_rects``, built on it) interpret the page
    again and find xrefs by decoding every image of the page to an MD5 digest, which is most of
    the cost of image-heavy pages (0.5 s for one 300-dpi scan). Placements are matched to xrefs by
    pixel size and bits per component instead, which both the image block and the xref list
    carry; placements whose size fits no xref are inline images and skipped. Placements that fit
    several xrefs are resolved by digest later, and only if the page's images are kept.
    The box is the image's whole unit square under its matrix, as ``get_image_info`` reports it
    (MuPDF clips the block's own bbox to the clip path when the text page clips to the media box).
    """
    if not imglist:
        return []
    by_key: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    for item in imglist:
        if item[0] not in by_key[int(item[2]), int(item[3]), int(item[4])]:
            by_key[int(item[2]), int(item[3]), int(item[4])].append(item[0])
    out: list[Placement] = []
    image = pymupdf.mupdf.FZ_STEXT_BLOCK_IMAGE
    b = textpage.this.m_internal.first_block
    while b is not None:
        if b.type == image:
            block = pymupdf.mupdf.FzStextBlock(b)
            img = block.i_image()
            w, h = img.w(), img.h()
            cands = by_key.get((w, h, img.bpc()))
            # no candidates: an inline image (glyph bitmaps, rules, bullets in the sample data)
            if cands and min(w, h) >= config.min_image_px:
                q = pymupdf.mupdf.fz_transform_rect(_UNIT_RECT, block.i_transform())
                whole = (q.x0, q.y0, q.x1, q.y1)
                r = pymupdf.Rect(whole) & prect
                if not (r.is_empty or r.is_infinite):
                    out.append((tuple(cands), whole, [r.x0, r.y0, r.x1, r.y1]))
        b = b.next
    return out


def _image_elements(
    page: pymupdf.Page, placements: list[Placement], images: _Images, stats: Counter
) -> list[dict]:
    by_box: dict[tuple[float, ...], list[int]] = defaultdict(list)
    if any(len(c) > 1 for c, _, _ in placements):  # same-size images: pay for the digests
        for info in page.get_image_info(xrefs=True):
            by_box[tuple(info["bbox"])].append(info.get("xref", 0))
    out = []
    for cands, whole, bbox in placements:
        if len(cands) == 1:
            xref = cands[0]
        else:  # the first digest match at the same box (two placements may share one)
            at = by_box.get(whole, [])
            xref = next((x for x in at if x in cands), 0)
            if xref:
                at.remove(xref)
            else:
                stats["images_unmatched"] += 1
        got = images.get(xref) if xref else None
        if got is None:
            continue
        sha, ext, w, h = got
        out.append(
            {
                "type": "image",
                "bbox": bbox,
                "image_sha256": sha,
                "image_ext": ext,
                "image_width": w,
                "image_height": h,
            }
        )
    return out


def _n_chars(blocks: list[tuple[list[float], str, int]]) -> int:
    return sum(len("".join(t.split())) for _, t, _ in blocks)


def _read_page(page: pymupdf.Page, images: _Images, config: PdfConfig, ocr: bool, stats: Counter) -> _Page | str:
    """Elements of one page (unordered), or 'needs_ocr'."""
    rect = page.rect
    p = _Page(page.number + 1, float(rect.width), float(rect.height))
    # one interpretation of the page for text blocks, table rules and cells, image placements
    vectors = config.tables and _vector_layout_ok()
    imglist = page.get_images(full=True)
    flags = VECTOR_FLAGS if vectors else TEXT_FLAGS
    if imglist:  # image blocks for _placements (only then: inline images would split text blocks)
        flags |= pymupdf.TEXT_PRESERVE_IMAGES
    textpage = page.get_textpage(flags=flags)
    text_blocks, n_rects = _page_text(textpage)
    blocks = [part for lines in text_blocks for part in _block_parts(lines, config.block_split_gap)]
    placements = _placements(textpage, imglist, rect, config)
    page_area = _area(rect) or 1.0
    cover = sum(_area(b) for _, _, b in placements) / page_area
    ocr_text = False
    if cover >= config.scanned_min_image_cover and _n_chars(blocks) < config.scanned_max_chars:
        stats["scanned_pages"] += 1
        if not ocr:
            return "needs_ocr"
        tp = page.get_textpage_ocr(
            flags=TEXT_FLAGS, language=config.ocr_language, dpi=config.ocr_dpi, full=True,
            tessdata=tessdata_dir(config.ocr_language),
        )
        ocr_blocks = _ocr_blocks(page, tp, config.min_gutter)
        stats["ocr_pages"] += 1
        if _n_chars(ocr_blocks) >= config.scanned_max_chars:
            blocks, placements, ocr_text = ocr_blocks, [], True  # the scan is the text
    p.rtl = is_rtl(" ".join(t for _, t, _ in blocks[:50]))
    # pymupdf's table cells come out in visual order, which reverses right-to-left text
    tables = (
        _tables(page, textpage, vectors, config, n_rects)
        if config.tables and not ocr_text and not p.rtl else []
    )
    for bbox, md in tables:
        stats["tables"] += 1
        p.items.append({"type": "table", "bbox": bbox, "text": md})
    for bbox, text, n_lines in blocks:
        a = _area(bbox)
        if tables and a > 0 and any(_inter(bbox, tb) >= 0.5 * a for tb, _ in tables):
            continue  # this text is in a table's cells
        item = {"type": "text", "bbox": bbox, "text": text, "_lines": n_lines}
        if ocr_text:
            item["ocr"] = True
        p.items.append(item)
    p.items.extend(_image_elements(page, placements, images, stats))
    p.ocr = ocr_text
    return p


def _line_groups(items: list[dict]) -> list[list[dict]]:
    """Items grouped into visual lines (vertical overlap of at least half the lower height)."""
    groups: list[list[dict]] = []
    g0 = g1 = 0.0  # vertical extent of the last group
    for it in sorted(items, key=lambda it: it["bbox"][1]):
        y0, y1 = it["bbox"][1], it["bbox"][3]
        if groups and min(y1, g1) - max(y0, g0) >= 0.5 * min(y1 - y0, g1 - g0):
            groups[-1].append(it)
            g0, g1 = min(g0, y0), max(g1, y1)
        else:
            groups.append([it])
            g0, g1 = y0, y1
    return groups


def _drop_headers_footers(pages: list[_Page], config: PdfConfig, stats: Counter) -> None:
    """Peel header lines off the top and footer lines off the bottom of each page.

    Text lines inside the band are examined from the page edge inwards and dropped while they
    qualify (module docstring, step 5); the first line that does not qualify stops the peeling,
    so a section number or a body line that happens to sit in the band is never reached.
    """

    def in_band(it: dict, pg: _Page, top: bool) -> bool:
        if it["type"] != "text":
            return False
        if top:
            return it["bbox"][3] <= config.hf_band * pg.height
        return it["bbox"][1] >= (1 - config.hf_band) * pg.height

    seen: dict[tuple[bool, str], set[int]] = defaultdict(set)
    for pg in pages:
        for it in pg.items:
            for top in (True, False):
                if in_band(it, pg, top):
                    key = header_key(it["text"])
                    if key:
                        seen[top, key].add(pg.number)

    def repeated(it: dict, top: bool) -> bool:
        key = header_key(it["text"])
        return bool(key) and len(seen.get((top, key), ())) >= config.hf_min_repeat

    for pg in pages:
        # Repeated text is a running header only next to body content: a page whose only text sits
        # in a band (a title page, rotated one-line pages) keeps it.
        body = any(not in_band(it, pg, True) and not in_band(it, pg, False) for it in pg.items)
        drop_ids: set[int] = set()
        groups = _line_groups([it for it in pg.items if it["type"] == "text"])
        for top in (True, False):
            for line in groups if top else reversed(groups):
                if not all(in_band(it, pg, top) for it in line):
                    break
                joined = " ".join(it["text"] for it in sorted(line, key=lambda it: it["bbox"][0]))
                single = all(it["_lines"] == 1 for it in line)
                if is_page_number(joined) or all(is_page_number(it["text"]) for it in line) or (
                    body
                    and (all(repeated(it, top) or is_page_number(it["text"]) for it in line)
                         or (top and single and _is_running_head(joined)))
                ):
                    drop_ids.update(id(it) for it in line)
                else:
                    break
        if drop_ids:
            stats["headers_footers"] += len(drop_ids)
            pg.items = [it for it in pg.items if id(it) not in drop_ids]


def _open(data: bytes) -> tuple[pymupdf.Document | None, str | None, str | None]:
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except Exception as exc:  # FileDataError, EmptyFileError, RuntimeError from MuPDF
        return None, "unreadable_pdf", f"{type(exc).__name__}: {exc}"
    if doc.needs_pass and not doc.authenticate(""):
        doc.close()
        return None, "encrypted", None
    return doc, None, None


def parse_pdf(data: bytes, source: str = "", config: PdfConfig | None = None) -> ParseResult:
    """Parse PDF bytes into an interleaved document (see module docstring); never raises."""
    config = config or DEFAULT_CONFIG
    stats: Counter = Counter()
    doc, reason, error = _open(data)
    if doc is None:
        return ParseResult(None, reason, error, dict(stats))
    try:
        ocr = ocr_available(config.ocr_language) if config.ocr is None else (config.ocr and ocr_available(config.ocr_language))
        try:
            n_pages = doc.page_count
        except Exception as exc:
            return ParseResult(None, "unreadable_pdf", f"{type(exc).__name__}: {exc}", dict(stats))
        limit = n_pages if config.max_pages is None else min(n_pages, config.max_pages)
        images = _Images(doc)
        pages: list[_Page] = []
        last_error = None
        for pno in range(limit):
            try:
                got = _read_page(doc.load_page(pno), images, config, ocr, stats)
            except Exception as exc:  # a broken page: skip it, keep the rest of the document
                stats["page_errors"] += 1
                last_error = f"page {pno + 1}: {type(exc).__name__}: {exc}"
                continue
            if isinstance(got, str):
                return ParseResult(None, got, None, dict(stats))
            pages.append(got)
        if not pages:
            return ParseResult(None, "unreadable_pdf", last_error or "no pages", dict(stats))
        if config.drop_headers_footers:
            _drop_headers_footers(pages, config, stats)
        elements: list[dict] = []
        for pg in pages:
            order = reading_order(
                [it["bbox"] for it in pg.items],
                rtl=pg.rtl,
                min_gutter=config.min_gutter,
                soft=[it["type"] == "image" for it in pg.items],
            )
            w, h = pg.width, pg.height
            for i in order:
                it = dict(pg.items[i])
                it.pop("_lines", None)
                it["page"] = pg.number
                # text may overflow the page (a long verbatim line): provenance stays on the page
                x0, y0, x1, y1 = it["bbox"]
                it["bbox"] = [round(min(max(x0, 0.0), w), 2), round(min(max(y0, 0.0), h), 2),
                              round(min(max(x1, 0.0), w), 2), round(min(max(y1, 0.0), h), 2)]
                elements.append(it)
        stats["pages"] = len(pages)
        stats["images_failed"] = images.errors
        if not elements:
            return ParseResult(None, "no_content", None, dict(stats))
        used = {e["image_sha256"] for e in elements if e["type"] == "image"}
        document = {
            "id": content_id(data, source),
            "source": source,
            "n_pages": n_pages,
            "pages": [
                {"page": pg.number, "width": round(pg.width, 2), "height": round(pg.height, 2), "ocr": pg.ocr}
                for pg in pages
            ],
            "elements": elements,
            "images": {k: v for k, v in images.blobs.items() if k in used},
        }
        return ParseResult(document, None, last_error, dict(stats))
    except Exception as exc:  # anything MuPDF raises past the page level
        return ParseResult(None, "unreadable_pdf", f"{type(exc).__name__}: {exc}", dict(stats))
    finally:
        doc.close()


def to_markdown(document: dict, page_breaks: bool = False) -> str:
    """Markdown preview: paragraphs, tables as markdown, images as ``![](sha256.ext)``."""
    parts: list[str] = []
    page = None
    for el in document["elements"]:
        if page_breaks and el["page"] != page:
            if page is not None:
                parts.append(f"<!-- page {el['page']} -->")
            page = el["page"]
        if el["type"] == "image":
            parts.append(f"![]({el['image_sha256']}.{el['image_ext']})")
        else:
            parts.append(el["text"])
    return "\n\n".join(parts) + ("\n" if parts else "")
