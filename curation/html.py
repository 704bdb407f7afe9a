"""HTML (and WARC/ARC) to interleaved documents: main content, images in reading order, no boilerplate.

A document is the interleaved form every document stage reads (PDFs produce the same shape)::

    {"id", "source": "html", "url", "title", "lang", "elements": [...], "n_text", "n_images"}
    text element:  {"type": "text", "text": str, "role": "paragraph"|"heading"|"list"|"table"|"quote"|"code"}
    image element: {"type": "image", "src": absolute URL, "alt", "title", "caption", "width", "height"}

Main-content extraction is trafilatura's (``bare_extraction`` with images kept), chosen after
measuring it on ``shared/data/web/article_extraction_benchmark`` against resiliparse,
readability-lxml and jusText (``bench/bench_html.py``; figures in README): trafilatura with
``favor_precision`` had the best F1 there. Its XML body (``p``, ``head``, ``list``, ``table``,
``quote``, ``code``, ``graphic``) is walked in document order; a block that holds an image is split
around it so the image stays where it stood in the flow.

trafilatura keeps only ``src``/``alt``/``title`` of an image and drops ``<figcaption>``; both matter
for interleaved VLM data (captions are the best-aligned text on a page, and the HTML size
attributes let the image-size filter act before any download), so every kept image is looked up
again in the page's own DOM (by its resolved URL) to add ``caption``, ``width`` and ``height``.
URLs are resolved against ``<base href>`` when the page has one, else against the page URL.

Failures are values (img2dataset style): ``html_to_document`` returns ``(document, None)`` or
``(None, reason)`` with reasons ``empty_html``, ``not_html``, ``no_main_content``,
``extraction_error``. ``iter_warc`` adds ``warc_read_error``, ``not_html``, ``http_status``,
``empty_payload``, ``digest_mismatch`` and ``revisit``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urljoin

from curation.records import content_id

ROLES = {"p": "paragraph", "head": "heading", "list": "list", "table": "table", "quote": "quote", "code": "code"}
# trafilatura XML containers whose children are laid out on separate lines / cells.
_LINE_TAGS = {"item", "row", "lb", "p", "head"}
_CELL = "\x1f"  # cell separator inside a table row, rendered as " | " between non-empty cells
_WS = re.compile(r"[ \t\r\f\v\u00a0]+")
# Invisible format characters that pages use as spacers (a line of only U+200B is not text).
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200e\u200f\u2060\ufeff\u00ad"))
_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_\-:.]+)""", re.I)
_HTML_SNIFF = re.compile(rb"<\s*(!doctype\s+html|html|head|body|div|p|article|title)[\s>/]", re.I)


@dataclass(frozen=True)
class HtmlConfig:
    """Extraction settings; defaults are the measured best on the article benchmark (README).

    - ``favor_precision=True``: trafilatura's stricter mode; on the 181 benchmark pages it raised
      shingle F1 from 0.960 to 0.964 (less boilerplate, barely less recall).
    - ``include_tables=True``: tables are content (scores, specifications); kept as text rows
      with cells joined by `` | ``.
    - ``include_comments=False``: reader comments are not the page's content.
    - ``dedupe_images=True``: the same image URL twice in one document is decoration (icons,
      spacers, share buttons); only its first place is kept.
    """

    favor_precision: bool = True
    include_tables: bool = True
    include_images: bool = True
    include_comments: bool = False
    dedupe_images: bool = True


DEFAULT_HTML_CONFIG = HtmlConfig()


def _decode(data: bytes, content_type: str | None = None) -> str:
    """Bytes to text: charset of the HTTP header, else of a ``<meta>``, else UTF-8 (replacing errors)."""
    candidates: list[str] = []
    if content_type and "charset=" in content_type.lower():
        candidates.append(content_type.lower().split("charset=", 1)[1].split(";")[0].strip(" \"'"))
    m = _CHARSET.search(data[:4096])
    if m:
        candidates.append(m.group(1).decode("ascii", "ignore"))
    candidates.append("utf-8")
    for enc in candidates:
        try:
            return data.decode(enc)
        except (LookupError, UnicodeDecodeError):
            continue
    return data.decode("utf-8", errors="replace")


def _clean(text: str) -> str:
    """Collapse spaces inside lines, join table cells with `` | ``, drop empty lines, strip."""
    lines = []
    for line in text.translate(_INVISIBLE).split("\n"):
        cells = (_WS.sub(" ", c).strip() for c in line.split(_CELL))
        line = " | ".join(c for c in cells if c)
        if line:
            lines.append(line)
    return "\n".join(lines)


def _walk(el: Any, out: list) -> None:
    """Flatten a trafilatura XML block into text pieces and ``graphic`` elements, in order."""
    if el.tag in ("graphic", "figcaption"):
        out.append(el)  # figcaption: a caption trafilatura kept; it goes to its image, not the text
    else:
        if el.tag in _LINE_TAGS:
            out.append("\n")
        elif el.tag == "cell":
            out.append(_CELL)
        if el.text:
            out.append(el.text)
        for child in el:
            _walk(child, out)
        if el.tag in _LINE_TAGS:
            out.append("\n")
    if el.tail:
        out.append(el.tail)


def _page_info(tree: Any, url: str | None) -> tuple[str | None, str | None, str | None, dict[str, dict]]:
    """(base URL, title, lang, image index by resolved URL) from the page's own DOM."""
    base = url
    for b in tree.iter("base"):
        href = b.get("href")
        if href:
            base = urljoin(url or "", href.strip())
            break
    title = None
    for meta in tree.iter("meta"):
        if (meta.get("property") or meta.get("name") or "").lower() in ("og:title", "twitter:title"):
            title = _clean(meta.get("content") or "") or None
            if title:
                break
    if title is None:
        t = next(tree.iter("title"), None)
        title = _clean(t.text_content()) if t is not None else None
    root = tree.getroottree().getroot()
    lang = (root.get("lang") or root.get("xml:lang") or "").strip() or None

    index: dict[str, dict] = {}
    for img in tree.iter("img"):
        caption = None
        fig = next((a for a in img.iterancestors() if a.tag == "figure"), None)
        if fig is not None:
            fc = next(fig.iter("figcaption"), None)
            if fc is not None:
                caption = _clean(fc.text_content()) or None
        info = {"caption": caption, "width": _int_attr(img.get("width")), "height": _int_attr(img.get("height"))}
        # trafilatura picks data-src, src or a data-src* attribute: index every candidate
        for attr, value in img.attrib.items():
            if (attr == "src" or attr.startswith("data-src")) and value.strip():
                index.setdefault(_resolve(value, base), info)
    return base, title or None, lang, index


def _int_attr(value: str | None) -> int | None:
    m = re.match(r"\s*(\d+)\s*(px)?\s*$", value or "")
    return int(m.group(1)) if m else None


def _resolve(src: str, base: str | None) -> str:
    src = src.strip()
    if (base or "").startswith("file:"):
        # a saved page's protocol-relative links ("//host/x.jpg", which trafilatura resolves to
        # "file://host/x.jpg") point at the web, not at the disk
        if src.startswith("//"):
            return "https:" + src
        if src.startswith("file://") and not src.startswith(("file:///", "file://localhost/")):
            return "https:" + src[len("file:"):]
    if base:
        return urljoin(base, src)
    return re.sub(r"^//", "https://", src)


def html_to_document(
    html: str | bytes,
    url: str | None = None,
    config: HtmlConfig = DEFAULT_HTML_CONFIG,
    *,
    content_type: str | None = None,
) -> tuple[dict | None, str | None]:
    """One HTML page to ``(document, None)``, or ``(None, reason)`` (module docstring)."""
    import lxml.html
    import trafilatura

    raw = html.encode("utf-8", "surrogatepass") if isinstance(html, str) else bytes(html)
    if not raw.strip():
        return None, "empty_html"
    if not _HTML_SNIFF.search(raw[:65536]):
        return None, "not_html"
    text = html if isinstance(html, str) else _decode(raw, content_type)
    try:
        # two parses: trafilatura prunes the tree it is given, and the image index needs the
        # untouched DOM (figcaptions, sizes)
        page = lxml.html.document_fromstring(text.encode("utf-8", "replace"), parser=_parser())
        base, title, lang, index = _page_info(page, url)
        result = trafilatura.bare_extraction(
            text,
            url=base,
            favor_precision=config.favor_precision,
            include_comments=config.include_comments,
            include_tables=config.include_tables,
            include_images=config.include_images,
            include_formatting=False,
            include_links=False,
            with_metadata=False,
        )
    except Exception as exc:  # a page the parsers cannot handle is a quarantine record, not a crash
        logging.getLogger(__name__).debug("extraction failed for %s: %r", url, exc)
        return None, "extraction_error"
    if result is None or result.body is None:
        return None, "no_main_content"

    elements = _body_elements(result.body, base, index, config)
    if not any(e["type"] == "text" for e in elements):
        return None, "no_main_content"
    return {
        "id": content_id(raw, url or ""),
        "source": "html",
        "url": url,
        "title": title,
        "lang": lang,
        "elements": elements,
        "n_text": sum(e["type"] == "text" for e in elements),
        "n_images": sum(e["type"] == "image" for e in elements),
    }, None


def _body_elements(body: Any, base: str | None, index: dict[str, dict], config: HtmlConfig) -> list[dict]:
    """trafilatura's XML body to elements; a block holding images is split around them."""
    elements: list[dict] = []
    seen_src: set[str] = set()
    for block in body:
        role = ROLES.get(block.tag, "paragraph")
        pieces: list = []
        _walk(block, pieces)
        buf: list[str] = []
        last_image: dict | None = None

        def flush() -> None:
            text = _clean("".join(buf))
            buf.clear()
            if text:
                elements.append({"type": "text", "text": text, "role": role})

        for piece in pieces:
            if isinstance(piece, str):
                buf.append(piece)
            elif piece.tag == "figcaption":
                caption = _clean(" ".join(piece.itertext())) or None
                if last_image is None:
                    buf.append(f"\n{caption or ''}\n")
                elif not last_image["caption"]:
                    last_image["caption"] = caption
            else:
                flush()
                src = _resolve(piece.get("src") or "", base)
                # data: URIs, or the same picture again; file:// only on a page that is a local file
                # itself (a crawled page must never point the image fetcher at the local disk)
                local = src.startswith("file://") and (base or "").startswith("file://")
                if not (src.startswith(("http://", "https://")) or local) or (config.dedupe_images and src in seen_src):
                    continue
                seen_src.add(src)
                info = index.get(src, {})
                last_image = {
                    "type": "image",
                    "src": src,
                    "alt": _clean(piece.get("alt") or "") or None,
                    "title": _clean(piece.get("title") or "") or None,
                    "caption": info.get("caption"),
                    "width": info.get("width"),
                    "height": info.get("height"),
                }
                elements.append(last_image)
        flush()
    return elements


def _parser():
    import lxml.html

    # recover=True: real pages are rarely valid; huge_tree for pages with very deep nesting; the
    # text is already decoded, so the bytes handed over are UTF-8 whatever a <meta> claims
    return lxml.html.HTMLParser(recover=True, huge_tree=True, remove_comments=True, encoding="utf-8")


def document_text(doc: dict, sep: str = "\n\n") -> str:
    """The document's text elements joined (what MinHash and the text filters read)."""
    return sep.join(e["text"] for e in doc["elements"] if e["type"] == "text")


def document_markdown(doc: dict) -> str:
    """Markdown preview: headings as ``##``, images as ``![alt](src)`` with their caption below."""
    out: list[str] = []
    for e in doc["elements"]:
        if e["type"] == "image":
            out.append(f"![{e.get('alt') or ''}]({e['src']})" + (f"\n*{e['caption']}*" if e.get("caption") else ""))
        elif e.get("role") == "heading":
            out.append(f"## {e['text']}")
        elif e.get("role") == "list":
            out.append("\n".join(f"- {line}" for line in e["text"].split("\n")))
        else:
            out.append(e["text"])
    return "\n\n".join(out)


# ----------------------------------------------------------------------------------------------
# WARC / ARC input

# Record types that are bookkeeping, not content: skipped without a record.
_SKIP_TYPES = {"warcinfo", "request", "metadata", "conversion", "continuation"}
_HTML_TYPES = ("text/html", "application/xhtml+xml")


def _is_html(content_type: str | None, payload: bytes) -> bool:
    ct = (content_type or "").split(";")[0].strip().lower()
    if ct in _HTML_TYPES:
        return True
    if ct and ct not in ("text/plain", "application/octet-stream", "unk", "unknown"):
        return False
    # missing or generic type: sniff the payload, as browsers do
    return bool(_HTML_SNIFF.search(payload[:4096]))


def iter_warc(source: str | IO[bytes], config: HtmlConfig = DEFAULT_HTML_CONFIG) -> Iterator[dict]:
    """Documents from a WARC or ARC file (plain or gzip), one result dict per content record.

    ``source`` is an fsspec URL or an open binary file. Each result has ``url``, ``warc_record_id``,
    ``warc_date``, ``warc_type``, ``offset``, ``http_status``, ``content_type``, and either a
    ``document`` (``reason`` None) or a ``reason`` (``document`` None; ``error`` holds details).
    Response and resource records are converted; revisit records have no payload (``revisit``);
    warcinfo, request and metadata records are skipped. Digests are verified: a record whose block
    or payload digest fails is ``digest_mismatch`` (truncated or corrupted capture). A file that
    cannot be read further yields one last result with ``warc_read_error``.
    """
    from warcio.archiveiterator import ArchiveIterator

    if isinstance(source, str):
        from curation import storage

        fs, path = storage.filesystem(source)
        with fs.open(path, "rb") as fh:
            yield from iter_warc(fh, config)
        return

    it = ArchiveIterator(source, arc2warc=True, check_digests=True)
    while True:
        try:
            record = next(it)
        except StopIteration:
            return
        except Exception as exc:  # ArchiveLoadFailed, gzip/zlib errors, bad chunking
            yield _warc_result(None, reason="warc_read_error", error=f"{type(exc).__name__}: {str(exc).strip()[:300]}")
            return
        rtype = record.rec_type
        if rtype in _SKIP_TYPES:
            continue
        headers = record.rec_headers
        http = record.http_headers
        base = {
            "url": headers.get_header("WARC-Target-URI"),
            "warc_record_id": headers.get_header("WARC-Record-ID"),
            "warc_date": headers.get_header("WARC-Date"),
            "warc_type": rtype,
            "offset": None,  # filled after the payload is read (asking first would consume it)
            "http_status": int(http.get_statuscode()) if http is not None and http.get_statuscode() else None,
            "content_type": (http.get_header("Content-Type") if http is not None else None)
            or (headers.get_header("Content-Type") if rtype == "resource" else None),
        }
        payload, read_error = b"", None
        if rtype != "revisit":
            try:
                payload = record.content_stream().read()
            except Exception as exc:  # broken chunked / compressed transfer encodings
                read_error = f"{type(exc).__name__}: {exc}"
        try:
            base["offset"] = it.get_record_offset()
        except Exception:  # the offset is provenance only; a broken member must not hide the record
            pass
        if rtype == "revisit":
            yield _warc_result(base, reason="revisit")
            continue
        if read_error is not None:
            yield _warc_result(base, reason="warc_read_error", error=read_error)
            continue
        checker = record.digest_checker
        if checker is not None and checker.passed is False:
            yield _warc_result(base, reason="digest_mismatch", error="; ".join(checker.problems))
            continue
        if base["http_status"] is not None and base["http_status"] != 200:
            yield _warc_result(base, reason="http_status", error=str(base["http_status"]))
            continue
        if not payload.strip():
            yield _warc_result(base, reason="empty_payload")
            continue
        if not _is_html(base["content_type"], payload):
            yield _warc_result(base, reason="not_html", error=base["content_type"])
            continue
        doc, reason = html_to_document(payload, base["url"], config, content_type=base["content_type"])
        if doc is not None:
            doc["warc_record_id"] = base["warc_record_id"]
        yield _warc_result(base, document=doc, reason=reason)


def _warc_result(base: dict | None, *, document: dict | None = None, reason: str | None = None, error: str | None = None) -> dict:
    out = dict(base) if base else dict.fromkeys(
        ("url", "warc_record_id", "warc_date", "warc_type", "offset", "http_status", "content_type")
    )
    out.update(document=document, reason=reason, error=error)
    return out


# ----------------------------------------------------------------------------------------------
# Evaluation against gold article bodies (bench/bench_html.py and the tests)

_TOKEN = re.compile(r"\w+")


def _shingle_counts(text: str, n: int) -> dict[tuple[str, ...], int]:
    toks = _TOKEN.findall(text or "")
    counts: dict[tuple[str, ...], int] = {}
    for i in range(max(1, len(toks) - n + 1)):
        sh = tuple(toks[i : i + n])
        if sh:
            counts[sh] = counts.get(sh, 0) + 1
    return counts


def match_counts(gold: str, pred: str, n: int = 1) -> tuple[int, int, int]:
    """(tp, fp, fn) over ``\\w+`` token n-grams of two texts, as multisets (n=1: bag of tokens)."""
    g, p = _shingle_counts(gold, n), _shingle_counts(pred, n)
    tp = sum(min(c, p.get(k, 0)) for k, c in g.items())
    return tp, sum(p.values()) - tp, sum(g.values()) - tp


def token_f1(gold: str, pred: str) -> float:
    """Bag-of-tokens F1 of one extraction (1.0 when both are empty)."""
    tp, fp, fn = match_counts(gold, pred, 1)
    if tp + fp + fn == 0:
        return 1.0
    return 2 * tp / (2 * tp + fp + fn)


def benchmark_scores(golds: list[str], preds: list[str], n: int = 4) -> dict[str, float]:
    """Scores of the article-extraction benchmark's published table (its evaluation, restated).

    Per page, (tp, fp, fn) over ``\\w+`` token ``n``-gram shingles (n=4) as multisets; precision and
    recall are averaged over pages (a page with nothing predicted has no precision; an empty page
    with an empty prediction scores 1), and F1 is the harmonic mean of the two averages. Also
    ``token_f1``: the mean over pages of bag-of-tokens F1.
    """
    precisions, recalls, f1s = [], [], []
    for gold, pred in zip(golds, preds, strict=True):
        tp, fp, fn = match_counts(gold, pred, n)
        if fp == fn == 0:
            precisions.append(1.0)
            recalls.append(1.0)
        else:
            if tp + fp:
                precisions.append(tp / (tp + fp))
            if tp + fn:
                recalls.append(tp / (tp + fn))
        f1s.append(token_f1(gold, pred))
    p = sum(precisions) / len(precisions) if precisions else 0.0
    r = sum(recalls) / len(recalls) if recalls else 0.0
    return {
        "f1": 2 * p * r / (p + r) if p + r else 0.0,
        "precision": p,
        "recall": r,
        "token_f1": sum(f1s) / len(f1s) if f1s else 0.0,
    }
