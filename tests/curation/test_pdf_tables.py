"""curation.pdf_tables: the lattice table finder, on drawn grids and on real PDFs against pymupdf's."""

from pathlib import Path

import numpy as np
import pymupdf
import pytest

from curation.pdf import TEXT_FLAGS, _path_rects, _table_candidate
from curation.pdf_tables import _RASTER_MIN, _components, _label, _raster_components, _sweep_components, find_tables

PAGE = (0.0, 0.0, 612.0, 792.0)


def _word(x0: float, y0: float, text: str, w: float = 20.0) -> tuple:
    return (x0, y0, x0 + w, y0 + 10.0, text, 0, 0, 0)


def _grid(xs: list[float], ys: list[float]) -> list[tuple[float, float, float, float]]:
    """Zero-thickness rules of a full grid."""
    return [(xs[0], y, xs[-1], y) for y in ys] + [(x, ys[0], x, ys[-1]) for x in xs]


def test_ruled_grid_cells_in_rows_and_columns():
    rects = _grid([100, 200, 300, 400], [100, 120, 140])
    words = [_word(105, 105, "name"), _word(205, 105, "size"), _word(305, 105, "unit"),
             _word(105, 125, "alpha"), _word(130, 125, "beta"), _word(205, 125, "3"), _word(305, 125, "kg")]
    (table,) = find_tables(rects, words, PAGE)
    assert table.bbox == (100, 100, 400, 140)
    assert table.cells == [["name", "size", "unit"], ["alpha beta", "3", "kg"]]


def test_rules_drawn_as_thin_filled_bars_and_snapped():
    # rules as 0.4 pt bars, one vertical 1 pt off the others' x: one grid after snapping
    h = [(100, y - 0.2, 300, y + 0.2) for y in (100, 120, 140)]
    v = [(100 - 0.2, 100, 100 + 0.2, 140), (201 - 0.2, 100, 201 + 0.2, 120), (200 - 0.2, 120, 200 + 0.2, 140),
         (300 - 0.2, 100, 300 + 0.2, 140)]
    words = [_word(105, 105, "a"), _word(210, 105, "b"), _word(105, 125, "c"), _word(210, 125, "d")]
    (table,) = find_tables(h + v, words, PAGE)
    assert table.cells == [["a", "b"], ["c", "d"]]


def test_merged_cell_spans_columns():
    # header row without the middle rule: one cell over both columns, the slot it covers is None
    rects = [(100, y, 300, y) for y in (100, 120, 140)] + [(100, 100, 100, 140), (300, 100, 300, 140), (200, 120, 200, 140)]
    words = [_word(150, 105, "header"), _word(105, 125, "x"), _word(205, 125, "y")]
    (table,) = find_tables(rects, words, PAGE)
    assert table.cells == [["header", None], ["x", "y"]]


def test_word_across_a_cell_border_is_split():
    rects = _grid([100, 200, 300], [100, 120, 140])
    # "01" drawn as one word whose halves sit in two cells (no space between the cell texts)
    words = [(190.0, 105.0, 210.0, 115.0, "01", 0, 0, 0), _word(105, 125, "x"), _word(205, 125, "y")]
    (table,) = find_tables(rects, words, PAGE)
    assert table.cells[0] == ["0", "1"]


def test_no_table_without_text_or_second_column():
    assert find_tables(_grid([100, 200, 300], [100, 120, 140]), [], PAGE) == []
    assert find_tables(_grid([100, 300], [100, 120, 140]), [_word(105, 105, "a")], PAGE) == []  # one column
    assert find_tables([], [_word(105, 105, "a")], PAGE) == []


def test_booktabs_rules_joined_by_short_verticals_get_an_outline():
    # top/mid/bottom rules with inner vertical rules only: the outline of the touching drawings
    # closes the outer columns (as pymupdf's finder does for LaTeX tables like 2305.03393 p.9)
    rects = [(100, 100, 400, 100), (100, 120, 400, 120), (100, 160, 400, 160), (200, 100, 200, 160), (300, 100, 300, 160)]
    words = [_word(105, 105, "k"), _word(205, 105, "v1"), _word(305, 105, "v2"),
             _word(105, 135, "row"), _word(205, 135, "1"), _word(305, 135, "2")]
    (table,) = find_tables(rects, words, PAGE)
    assert table.bbox == (100, 100, 400, 160)
    assert table.cells == [["k", "v1", "v2"], ["row", "1", "2"]]


# --------------------------------------------------------------------------- grouping touching paths


def _partition(labels) -> set[frozenset[int]]:
    groups: dict[int, set[int]] = {}
    for i, lab in enumerate(np.asarray(labels).tolist()):
        groups.setdefault(lab, set()).add(i)
    return {frozenset(g) for g in groups.values()}


def _brute_components(boxes: np.ndarray, tol: float) -> set[frozenset[int]]:
    """Oracle: every pair tested, union-find in plain Python."""
    parent = list(range(len(boxes)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    b = boxes.tolist()
    for i in range(len(b)):
        for j in range(i + 1, len(b)):
            p, q = b[i], b[j]
            if q[0] <= p[2] + tol and p[0] <= q[2] + tol and p[1] <= q[3] + tol and q[1] <= p[3] + tol:
                parent[find(i)] = find(j)
    return _partition([find(i) for i in range(len(b))])


def test_label_gives_each_component_its_smallest_node():
    # 4-2, 2-0 (a chain reached from its far end), 3-5, 1 and 6 alone
    labels = _label(7, np.array([4, 2, 5]), np.array([2, 0, 3]))
    assert labels.tolist() == [0, 1, 0, 3, 0, 3, 6]
    assert _label(3, np.array([], dtype=int), np.array([], dtype=int)).tolist() == [0, 1, 2]


def _random_boxes(rng: np.random.Generator, n: int, extent: float, size: float, grid: bool) -> np.ndarray:
    xy = rng.uniform(0, extent, (n, 2))
    wh = rng.exponential(size, (n, 2)) * (rng.random((n, 2)) > 0.2)  # a fifth of the sides: zero (rules)
    boxes = np.concatenate([xy, xy + wh], 1)
    return np.round(boxes) if grid else boxes  # integer boxes: gaps of exactly tol


@pytest.mark.parametrize("seed", range(6))
def test_sweep_and_raster_components_match_every_pair_tested(seed: int):
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, 700, extent=[60, 300, 600][seed % 3], size=[0.5, 3, 12][seed % 3], grid=seed % 2 == 0)
    truth = _brute_components(boxes, 3.0)
    assert _partition(_sweep_components(boxes, 3.0)) == truth
    assert _partition(_raster_components(boxes, 3.0)) == truth


def test_raster_components_sweep_regions_where_the_paintings_disagree(monkeypatch):
    # a 45 x 45 lattice of 4 pt boxes 1 pt apart (one component, decided by the paintings), and
    # three boxes 3.2 pt apart (tol 3: no two touch), whose grown boxes meet in neighbouring
    # pixels of the first painting but not in the second: only these three go to the sweep
    ij = np.array([(i, j) for i in range(45) for j in range(45)], dtype=float) * 5 + 100
    lattice = np.concatenate([ij, ij + 4], 1)
    near = np.array([[500.0, 500.0, 510.0, 510.0], [513.2, 500.0, 520.0, 510.0], [500.0, 513.2, 510.0, 520.0]])
    boxes = np.concatenate([lattice, near])
    swept: list[int] = []
    sweep = _sweep_components

    def spy(b: np.ndarray, tol: float) -> np.ndarray:
        swept.append(len(b))
        return sweep(b, tol)

    monkeypatch.setattr("curation.pdf_tables._sweep_components", spy)
    truth = _brute_components(boxes, 3.0)
    assert sorted(len(g) for g in truth) == [1, 1, 1, 2025]
    assert len(boxes) >= _RASTER_MIN
    assert _partition(_components(boxes, 3.0)) == truth
    assert swept == [3]


def test_raster_components_decline_grids_they_cannot_paint():
    boxes = np.array([[0.0, 0.0, 10.0, 10.0], [1e7, 0.0, 1e7 + 10, 10.0]])
    assert _raster_components(boxes, 3.0) is None  # 10 million points wide
    assert _raster_components(np.array([[0.0, 0.0, np.inf, 10.0]]), 3.0) is None
    assert _partition(_components(boxes, 3.0)) == {frozenset({0}), frozenset({1})}


# --------------------------------------------------------------------------- real PDFs vs pymupdf


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


@pytest.mark.parametrize(
    "key, pno",
    [
        ("docling_tests/2305.03393v1-pg9.pdf", 0),  # LaTeX: rules + inner verticals
        ("docling_tests/redp5110_sampled.pdf", 7),  # full grids
        ("docling_tests/redp5110_sampled.pdf", 8),
        ("docling_tests/redp5110_sampled.pdf", 10),
        ("docling_tests/redp5110_sampled.pdf", 11),
        ("docling_tests/normal_4pages.pdf", 1),  # Korean
        ("py_pdf_samples/011-google-doc-document__google-doc-document.pdf", 0),
        ("math_manuals/texlive-science-doc__latex__karnaugh-map__karnaugh-map.pdf", 8),  # four K-maps
    ],
)
def test_same_tables_as_pymupdf_finder(shared_data: Path, key: str, pno: int):
    """Same table boxes (IoU >= 0.9) and grid shapes as ``page.find_tables()`` on real tables."""
    page = pymupdf.open(shared_data / "pdf" / key)[pno]
    ref = [t for t in page.find_tables().tables if t.row_count >= 2 and t.col_count >= 2]
    paths = page.get_cdrawings()
    rects = _path_rects(paths)
    assert _table_candidate(rects, 3)
    words = page.get_textpage(flags=TEXT_FLAGS).extractWORDS()
    ours = find_tables(rects, words, tuple(page.rect), drawings=[p["rect"] for p in paths])
    assert len(ours) == len(ref)
    for r in ref:
        match = [t for t in ours if _iou(t.bbox, r.bbox) >= 0.9]
        assert len(match) == 1, (r.bbox, [t.bbox for t in ours])
        assert (match[0].n_rows, match[0].n_cols) == (r.row_count, r.col_count)


def test_cell_text_keeps_underscores(shared_data: Path):
    """Words keep what per-character boxes lose: pymupdf's finder reads ``FUNCTION ID _``."""
    page = pymupdf.open(shared_data / "pdf/docling_tests/redp5110_sampled.pdf")[7]
    paths = page.get_cdrawings()
    words = page.get_textpage(flags=TEXT_FLAGS).extractWORDS()
    (table,) = find_tables(_path_rects(paths), words, tuple(page.rect), drawings=[p["rect"] for p in paths])
    assert table.cells[0] == ["Column name", "Data type", "Description"]
    assert [row[0] for row in table.cells[1:]] == ["FUNCTION_ID", "USER_NAME", "USAGE", "USER_TYPE"]
    assert table.cells[1][1] == "VARCHAR(30)"
