"""Ruled tables of a PDF page: the lattice method over vector rules, cell text from words.

``find_tables(rects, words, page_rect, drawings=...)`` takes what ``parse_pdf`` has for a page
(the rectangular vector blocks of its text page as boxes: rules and boxes, or the axis-parallel
lines and rectangles of ``page.get_cdrawings()``; the bboxes of the whole paths; the words of
``TextPage.extractWORDS()``) and returns ``Table(bbox, cells)`` rows. It follows the method
pymupdf's ``page.find_tables()`` borrowed from pdfplumber (Nurminen's thesis): rules -> edges, edges snapped and joined, edge crossings, smallest closed cells between
crossings, cells that share corners -> one table. What differs, and why:

- pymupdf first turns every character of the page into a Python dict (``make_chars``: 74% of its
  time on the sample PDFs) and reads cell text back from those characters. Here cell text comes
  from the page's words (C-level ``extractWORDS``), assigned to a cell by their centre; a word
  that straddles a cell border is split at the border by its share of characters (a word
  drawn across two cells without a space between them is rare in ruled tables).
- Touching drawings are joined into connected groups (the components of the touch graph, found
  pair by pair, or on plot pages with thousands of paths from two paintings of the page, see
  ``_raster_components``), and a group holding text gets its outline as edges (pymupdf's
  ``clean_graphics`` grows one box greedily over everything it touches, which turns a page-sized
  background into a "table").
- Edge building, snapping, joining, outlines and crossings are numpy array operations.

Settings mirror pymupdf's defaults (3 pt snap, join and intersection tolerances, 3 pt shortest
edge). ``bench/bench_pdf.py`` compares both finders on every gated page of ../shared/data/pdf
(about 10x faster, the same tables on 141 of 154 pages, the rest labelled vector figures), and
``tests/curation/test_pdf_tables.py`` checks the real tables against ``page.find_tables()``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class TableSettings:
    """Tolerances in PDF points (pymupdf's/pdfplumber's defaults)."""

    snap: float = 3.0  # rules this close on the cross axis are one line
    join: float = 3.0  # collinear rules with gaps up to this are one edge
    intersection: float = 3.0  # a rule ending this close to another still crosses it
    min_edge: float = 3.0  # shorter edges are dropped (dots, glyph-like strokes)


@dataclass
class Table:
    """A found table: ``bbox`` and ``cells`` (rows x columns; None where a merged cell spans)."""

    bbox: Box
    cells: list[list[str | None]]

    @property
    def n_rows(self) -> int:
        return len(self.cells)

    @property
    def n_cols(self) -> int:
        return len(self.cells[0]) if self.cells else 0


def _segments(rects: np.ndarray, page_rect: Box, snap: float) -> tuple[np.ndarray, np.ndarray]:
    """Edges of the rectangles: horizontal (y, x0, x1) and vertical (x, y0, y1).

    A rectangle at most ``snap`` thick is one rule along its middle (a stroked line or a filled
    bar); any other gives its four sides (boxes, cell shading).
    """
    px0, py0, px1, py1 = page_rect
    r = rects.copy()
    r[:, 0] = np.clip(r[:, 0], px0, px1)
    r[:, 2] = np.clip(r[:, 2], px0, px1)
    r[:, 1] = np.clip(r[:, 1], py0, py1)
    r[:, 3] = np.clip(r[:, 3], py0, py1)
    w, h = r[:, 2] - r[:, 0], r[:, 3] - r[:, 1]
    hbar = (h <= snap) & (h < w)
    vbar = (w <= snap) & (w < h) & ~hbar
    box = ~hbar & ~vbar & (w > 0) & (h > 0)
    ym = (r[:, 1] + r[:, 3]) / 2
    xm = (r[:, 0] + r[:, 2]) / 2
    hs = np.concatenate([
        np.stack([ym[hbar], r[hbar, 0], r[hbar, 2]], 1),
        np.stack([r[box, 1], r[box, 0], r[box, 2]], 1),
        np.stack([r[box, 3], r[box, 0], r[box, 2]], 1),
    ])
    vs = np.concatenate([
        np.stack([xm[vbar], r[vbar, 1], r[vbar, 3]], 1),
        np.stack([r[box, 0], r[box, 1], r[box, 3]], 1),
        np.stack([r[box, 2], r[box, 1], r[box, 3]], 1),
    ])
    return hs, vs


def _touching_pairs(b: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of boxes sorted by left edge that touch within ``tol``.

    Sweep over x: a block of boxes is compared only with the later boxes that start before the
    block's rightmost edge, in blocks of 256 to bound memory on figure-heavy pages.
    """
    n = len(b)
    rows, cols = [], []
    for start in range(0, n, 256):
        blk = b[start:start + 256]
        stop = int(np.searchsorted(b[:, 0], blk[:, 2].max() + tol, side="right"))
        cand = b[start:stop]
        touch = (
            (cand[None, :, 0] <= blk[:, None, 2] + tol) & (blk[:, None, 0] <= cand[None, :, 2] + tol)
            & (blk[:, None, 1] <= cand[None, :, 3] + tol) & (cand[None, :, 1] <= blk[:, None, 3] + tol)
        )
        i, j = np.nonzero(touch)
        keep = j > i  # each pair once (a block also meets itself), no self-loops
        rows.append(i[keep] + start)
        cols.append(j[keep] + start)
    return np.concatenate(rows), np.concatenate(cols)


def _label(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of the graph with edges (i, j): each node's label is the smallest
    node of its component.

    Min-label hooking with pointer jumping (Shiloach-Vishkin style), a few array passes: on the
    small graphs of ordinary pages a tenth of scipy's ``connected_components`` set-up cost.
    Labels only decrease and never exceed their node, so the loop ends; it ends when every edge
    has equal labels at both ends.
    """
    lab = np.arange(n)
    while True:
        li, lj = lab[i], lab[j]
        low = np.minimum(li, lj)
        new = lab.copy()
        np.minimum.at(new, li, low)  # hook the roots of both ends to the smaller one
        np.minimum.at(new, lj, low)
        while True:
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, lab):
            return lab
        lab = new


def _sweep_components(boxes: np.ndarray, tol: float) -> np.ndarray:
    """Group label of each box: components of the touch (within ``tol``) graph, pair by pair."""
    order = np.argsort(boxes[:, 0], kind="stable")
    i, j = _touching_pairs(boxes[order], tol)
    out = np.empty(len(boxes), dtype=np.int64)
    out[order] = _label(len(boxes), i, j)
    return out


def _paint(shape: tuple[int, int], y0: np.ndarray, x0: np.ndarray, y1: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """Mask of the pixels inside any of the boxes ``[y0, y1] x [x0, x1]`` (inclusive pixel
    ranges): corner marks of a 2-D difference array, summed along both axes."""
    h, w = shape
    size = (h + 1) * (w + 1)
    up = np.concatenate([y0 * (w + 1) + x0, (y1 + 1) * (w + 1) + x1 + 1])
    down = np.concatenate([y0 * (w + 1) + x1 + 1, (y1 + 1) * (w + 1) + x0])
    d = (np.bincount(up, minlength=size) - np.bincount(down, minlength=size)).astype(np.int32)
    d = d.reshape(h + 1, w + 1)
    np.cumsum(d, 0, out=d)
    np.cumsum(d, 1, out=d)
    return d[:h, :w] > 0


_RASTER_MIN = 1500  # boxes; below this many the pair sweep is cheaper than painting the page
_RASTER_MAX_PIXELS = 4_000_000
_EIGHT = np.ones((3, 3), dtype=bool)


def _raster_components(boxes: np.ndarray, tol: float) -> np.ndarray | None:
    """``_sweep_components``' labels (as a partition) from two paintings of the boxes, each grown
    by ``tol / 2`` on every side (two boxes touch within ``tol`` iff the grown ones meet), on a
    grid of ``tol / 3`` pixels; None where the grid would be too large.

    - Every pixel a grown box touches, joined edge to edge: two boxes that meet share a pixel,
      so each true component lies in one region (regions may hold several components).
    - Only the pixels a grown box covers whole, joined edge or corner to edge or corner: pixels
      that meet belong to boxes that meet, so each such region lies in one true component. A
      grown box is at least ``tol`` wide, three pixels, so it covers at least one pixel whole.
    A first-kind region whose boxes all fall into one second-kind region is therefore exactly one
    component; the boxes of any other region are grouped by the pair sweep. On the sample
    PDFs' plot pages (5,000 paths, 400,000 touching pairs, one or two components) no region needs
    the sweep, and this takes a quarter of its time.
    """
    n = len(boxes)
    if not np.isfinite(boxes).all():
        return None
    res, half, eps = tol / 3, tol / 2, 1e-3 * tol  # eps: float noise kept on the safe side
    lo, hi = boxes[:, :2] - half - eps, boxes[:, 2:] + half + eps
    origin = lo.min(0)
    k0 = np.floor((lo - origin) / res).astype(np.intp)
    k1 = np.floor((hi - origin) / res).astype(np.intp)
    w, h = (k1.max(0) + 1).tolist()
    if w * h > _RASTER_MAX_PIXELS:
        return None
    regions, _ = ndimage.label(_paint((h, w), k0[:, 1], k0[:, 0], k1[:, 1], k1[:, 0]))
    touched = regions[k0[:, 1], k0[:, 0]]
    s0 = np.ceil((boxes[:, :2] - half + eps - origin) / res).astype(np.intp)
    s1 = np.floor((boxes[:, 2:] + half - eps - origin) / res).astype(np.intp) - 1
    whole = (s0 <= s1).all(1)
    cores, n_cores = ndimage.label(_paint((h, w), s0[whole, 1], s0[whole, 0], s1[whole, 1], s1[whole, 0]), _EIGHT)
    core = np.arange(n) + n_cores + 1  # a box covering no pixel whole is its own core
    core[whole] = cores[s0[whole, 1], s0[whole, 0]]
    pairs = np.unique(touched * (n + n_cores + 1) + core)
    n_cores_in = np.bincount(pairs // (n + n_cores + 1))
    mixed = n_cores_in[touched] > 1
    out = touched.astype(np.int64)
    if mixed.any():
        out[mixed] = _sweep_components(boxes[mixed], tol) + int(touched.max()) + 1
    return out


def _components(boxes: np.ndarray, tol: float) -> np.ndarray:
    """Group label of each box: connected components of the touch (within ``tol``) graph."""
    if len(boxes) >= _RASTER_MIN:
        labels = _raster_components(boxes, tol)
        if labels is not None:
            return labels
    return _sweep_components(boxes, tol)


def _outlines(rects: np.ndarray, text: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Outline edges of each group of touching rectangles that holds text (e.g. a table whose
    rules stop short of its sides, or booktabs rules joined by short vertical ones)."""
    empty = np.empty((0, 3))
    if len(rects) < 2 or not len(text):
        return empty, empty
    labels = _components(rects, tol)
    order = np.argsort(labels, kind="stable")
    lab = labels[order]
    starts = np.r_[0, np.nonzero(np.diff(lab))[0] + 1]
    sizes = np.diff(np.r_[starts, len(lab)])
    g = rects[order]
    boxes = np.stack([
        np.minimum.reduceat(g[:, 0], starts), np.minimum.reduceat(g[:, 1], starts),
        np.maximum.reduceat(g[:, 2], starts), np.maximum.reduceat(g[:, 3], starts),
    ], 1)
    # a lone rectangle's own sides are already edges
    boxes = boxes[(sizes >= 2) & (boxes[:, 2] - boxes[:, 0] > tol) & (boxes[:, 3] - boxes[:, 1] > tol)]
    if not len(boxes):
        return empty, empty
    inside = (
        (text[None, :, 0] < boxes[:, None, 2]) & (text[None, :, 2] > boxes[:, None, 0])
        & (text[None, :, 1] < boxes[:, None, 3]) & (text[None, :, 3] > boxes[:, None, 1])
    ).any(1)
    x0, y0, x1, y1 = boxes[inside].T
    hs = np.concatenate([np.stack([y0, x0, x1], 1), np.stack([y1, x0, x1], 1)])
    vs = np.concatenate([np.stack([x0, y0, y1], 1), np.stack([x1, y0, y1], 1)])
    return hs, vs


def _merge(segs: np.ndarray, snap: float, join: float, min_len: float) -> list[Box]:
    """Snap positions within ``snap`` to their mean, join collinear pieces with gaps <= ``join``.

    Positions chain into one line while consecutive sorted positions are at most ``snap`` apart
    (as pdfplumber clusters them); each line's pieces, sorted by start, join while a piece starts
    within ``join`` of the furthest end so far.
    """
    if not len(segs):
        return []
    segs = segs[np.argsort(segs[:, 0], kind="stable")]
    line = np.r_[0, np.cumsum(np.diff(segs[:, 0]) > snap)]
    pos = np.bincount(line, weights=segs[:, 0]) / np.bincount(line)
    segs = segs[np.lexsort((segs[:, 1], line))]
    line = np.sort(line, kind="stable")
    # furthest end so far within each line: offset lines apart so one running max serves all
    span = float(np.abs(segs[:, 1:]).max()) * 2 + join + 1
    reach = np.maximum.accumulate(segs[:, 2] + line * span) - line * span
    new = np.r_[True, (line[1:] != line[:-1]) | (segs[1:, 1] > reach[:-1] + join)]
    starts = np.nonzero(new)[0]
    out = np.stack([pos[line[starts]], np.minimum.reduceat(segs[:, 1], starts), np.maximum.reduceat(segs[:, 2], starts)], 1)
    out = out[out[:, 2] - out[:, 1] >= min_len]
    return [tuple(x) for x in out.tolist()]


def _cells(hs: list[Box], vs: list[Box], tol: float) -> list[Box]:
    """Smallest closed cells: for each crossing, the nearest crossing below and right that close a box."""
    if not hs or not vs:
        return []
    h = np.array(hs)
    v = np.array(vs)
    hit = (
        (v[:, None, 1] <= h[None, :, 0] + tol) & (v[:, None, 2] >= h[None, :, 0] - tol)
        & (v[:, None, 0] >= h[None, :, 1] - tol) & (v[:, None, 0] <= h[None, :, 2] + tol)
    )
    vi, hi = np.nonzero(hit)
    if not len(vi):
        return []
    on_v: dict[tuple[float, float], set[int]] = defaultdict(set)
    on_h: dict[tuple[float, float], set[int]] = defaultdict(set)
    for i, j in zip(vi.tolist(), hi.tolist()):
        pt = (vs[i][0], hs[j][0])
        on_v[pt].add(i)
        on_h[pt].add(j)
    col: dict[float, list[float]] = defaultdict(list)
    row: dict[float, list[float]] = defaultdict(list)
    for x, y in on_v:
        col[x].append(y)
        row[y].append(x)
    for ys in col.values():
        ys.sort()
    for xs in row.values():
        xs.sort()
    cells: list[Box] = []
    for (x, y), vset in sorted(on_v.items()):
        hset = on_h[(x, y)]
        rights = [x2 for x2 in row[y] if x2 > x and on_h[(x2, y)] & hset]
        if not rights:
            continue
        found = False
        for y2 in col[x]:
            if y2 <= y or not (on_v[(x, y2)] & vset):
                continue
            for x2 in rights:
                br = (x2, y2)
                if br in on_v and on_v[br] & on_v[(x2, y)] and on_h[br] & on_h[(x, y2)]:
                    cells.append((x, y, x2, y2))
                    found = True
                    break
            if found:
                break
    return cells


def _group(cells: list[Box]) -> list[list[Box]]:
    """Cells sharing a corner belong to one table."""
    owner: dict[tuple[float, float], int] = {}
    parent = list(range(len(cells)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, (x0, y0, x1, y1) in enumerate(cells):
        for corner in ((x0, y0), (x0, y1), (x1, y0), (x1, y1)):
            j = owner.setdefault(corner, i)
            a, b = find(i), find(j)
            if a != b:
                parent[a] = b
    groups: dict[int, list[Box]] = defaultdict(list)
    for i, c in enumerate(cells):
        groups[find(i)].append(c)
    return sorted(groups.values(), key=lambda g: min((c[1], c[0]) for c in g))


def _cell_texts(cells: list[Box], words: Sequence[tuple], tol: float = 3.0) -> list[str]:
    """Text of each cell: its words (centre inside; straddling words split by character share)."""
    pieces: list[list[tuple[float, float, str]]] = [[] for _ in cells]
    if not cells:
        return []
    c = np.array(cells)
    for w in words:
        x0, y0, x1, y1, text = w[0], w[1], w[2], w[3], w[4]
        cy = (y0 + y1) / 2
        cand = np.nonzero((c[:, 1] <= cy) & (cy < c[:, 3]) & (c[:, 0] < x1) & (c[:, 2] > x0))[0]
        if not len(cand):
            continue
        if len(cand) == 1 or x1 - x0 <= 0:
            cx = (x0 + x1) / 2
            k = next((int(k) for k in cand if c[k, 0] <= cx < c[k, 2]), None)
            if k is not None:
                pieces[k].append((cy, x0, text))
            continue
        # a word across cell borders: characters go to the cell holding their (even-width) centre
        n = len(text)
        step = (x1 - x0) / n
        for k in sorted(cand.tolist(), key=lambda k: c[k, 0]):
            chars = [text[i] for i in range(n) if c[k, 0] <= x0 + (i + 0.5) * step < c[k, 2]]
            if chars:
                pieces[k].append((cy, max(x0, c[k, 0]), "".join(chars)))
    out = []
    for ps in pieces:
        ps.sort()
        lines: list[list[tuple[float, float, str]]] = []
        for p in ps:  # same line: centres within tol
            if lines and p[0] - lines[-1][0][0] <= tol:
                lines[-1].append(p)
            else:
                lines.append([p])
        out.append(" ".join(t for ln in lines for _, _, t in sorted(ln, key=lambda q: q[1])))
    return out


def find_tables(
    rects: Sequence[Sequence[float]],
    words: Sequence[tuple],
    page_rect: Sequence[float],
    settings: TableSettings | None = None,
    drawings: Sequence[Sequence[float]] | None = None,
) -> list[Table]:
    """Ruled tables on a page from its rectangles and words.

    ``rects``: (x0, y0, x1, y1) of the page's rectangular vector paths (MuPDF's ``is-rect``
    vector blocks, or the lines/rectangles of ``get_cdrawings()``: rules, boxes, cell fills);
    ``words``: ``extractWORDS()`` tuples; ``drawings``: bboxes of whole drawings for the outline
    step (default: ``rects``; one per path is cheaper on figure-heavy pages).
    A table has at least two distinct left and right cell borders and text inside its box;
    rows are the distinct cell tops, columns the distinct cell lefts (pymupdf's grid), and a
    slot no cell starts in (a merged cell's continuation) is None.
    """
    s = settings or TableSettings()
    prect = (float(page_rect[0]), float(page_rect[1]), float(page_rect[2]), float(page_rect[3]))
    boxes = np.array(rects, dtype=float).reshape(-1, 4)
    if not len(boxes):
        return []
    words = [w for w in words if str(w[4]).strip()]
    text = np.array([w[:4] for w in words], dtype=float).reshape(-1, 4)
    hs, vs = _segments(boxes, prect, s.snap)
    groups = boxes if drawings is None else np.array(drawings, dtype=float).reshape(-1, 4)
    oh, ov = _outlines(groups, text, s.snap)
    hs = _merge(np.concatenate([hs, oh]), s.snap, s.join, s.min_edge)
    vs = _merge(np.concatenate([vs, ov]), s.snap, s.join, s.min_edge)
    tables: list[Table] = []
    for group in _group(_cells(hs, vs, s.intersection)):
        x0s = sorted({c[0] for c in group})
        if len(x0s) < 2 or len({c[2] for c in group}) < 2:
            continue
        bbox = (min(c[0] for c in group), min(c[1] for c in group), max(c[2] for c in group), max(c[3] for c in group))
        inside = (text[:, 0] < bbox[2]) & (text[:, 2] > bbox[0]) & (text[:, 1] < bbox[3]) & (text[:, 3] > bbox[1])
        if not inside.any():
            continue
        near = [w for w, keep in zip(words, inside.tolist()) if keep]
        texts = dict(zip(group, _cell_texts(group, near)))
        rows: dict[float, dict[float, str]] = defaultdict(dict)
        for cell in group:
            rows[cell[1]][cell[0]] = texts[cell]
        grid = [[r.get(x) for x in x0s] for _, r in sorted(rows.items())]
        tables.append(Table(bbox, grid))
    return tables
