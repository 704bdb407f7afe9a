"""OCR and grounding samples from PDF pages, with hardening augmentations that move the boxes too.

A page is rendered (``page.get_pixmap(dpi=...)``) and its words (``page_words``: glyphs of
``page.get_text('rawdict')`` with font-metric boxes, as pdftotext draws them) are converted to
absolute pixel coordinates of that render (points x dpi/72), the convention MiMo-VL
and Qwen2.5-VL use for boxes: ``[x1, y1, x2, y2]`` in pixels of the image the model sees.

Samples (plain dicts, image bytes as PNG):

- OCR: image of the page (or of one text block, a "region") -> its text, lines in reading order
  (blocks ordered by ``curation.pdf.reading_order``, lines top to bottom inside a block).
- Grounding: a text phrase (a line, or a word) -> its box. Only phrases that occur once on the
  page are asked for, so the answer is unambiguous.

Augmentations (``augment``), each drawn with its probability from a RNG seeded by the sample id
(``curation.records.seeded_rng``), so a re-run gives the same images and boxes:

| op | image | boxes |
|---|---|---|
| rotation (small angle, canvas expanded) | affine warp, white fill | 4 corners transformed, axis-aligned bounds, clipped |
| perspective (corners pulled inwards) | homography warp, white fill | 4 corners transformed, bounds, clipped |
| occlusion (random grey rectangles) | painted | a box hidden by at least ``occlusion_drop`` of its area is dropped |
| gaussian blur | blurred | unchanged |
| JPEG re-encode | lossy round trip | unchanged |

Geometric ops are applied first (so occluders stay axis-aligned), then occlusion, then blur and
JPEG. Rotations by multiples of 90 degrees use ``Image.transpose`` and are exact; other warps
go through ``Image.transform(PERSPECTIVE)`` with the inverse homography, sampled at pixel centres,
so a box follows the drawn content to within a pixel.
"""

from __future__ import annotations

import io
import math
import random
import re
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pymupdf
from PIL import Image, ImageDraw, ImageFilter

from curation.pdf import reading_order
from curation.records import seeded_rng

WHITE = (255, 255, 255)


@dataclass(frozen=True)
class GroundingConfig:
    """Settings of page rendering, sampling and augmentation."""

    dpi: int = 100
    augment: bool = True
    p_rotate: float = 0.3
    max_rotation_deg: float = 3.0
    p_perspective: float = 0.3
    max_perspective: float = 0.04  # corner shift, fraction of the side
    p_occlude: float = 0.3
    occluders: tuple[int, int] = (1, 3)
    occluder_size: tuple[float, float] = (0.05, 0.2)  # fraction of each side
    occlusion_drop: float = 0.5
    p_blur: float = 0.3
    blur_radius: tuple[float, float] = (0.4, 1.2)
    p_jpeg: float = 0.3
    jpeg_quality: tuple[int, int] = (30, 85)
    grounding_level: str = "line"  # "line" or "word"
    max_grounding: int = 8
    max_regions: int = 2
    min_phrase_chars: int = 3


DEFAULT_CONFIG = GroundingConfig()


# ------------------------------------------------------------------------------- rendering


@dataclass
class PageRender:
    """A rendered page and its words in absolute pixel coordinates of the render."""

    image: Image.Image
    words: list[dict]  # {text, box: [x1, y1, x2, y2] (float px), block, line, word}
    dpi: int


# Poppler's ascent/descent for a font whose descriptor declares none (Ascent/Descent 0 or absurd);
# MuPDF would substitute 0.8/-0.2 there.
UNDECLARED_METRICS = (0.95, -0.35)


def _undeclared_fonts(page: pymupdf.Page) -> set[str]:
    """Base names (subset prefix removed) of the page's fonts whose descriptor gives no usable
    Ascent/Descent (pdfTeX writes 0 for some OpenType-derived Type 1 fonts)."""
    doc = page.parent
    out: set[str] = set()
    for xref, _ext, _type, basefont, *_ in page.get_fonts(full=True):
        desc = doc.xref_get_key(xref, "FontDescriptor")
        if desc[0] != "xref":
            continue  # Type 0 / Type 3 / base-14 fonts: MuPDF's metrics stand
        fd = int(desc[1].split()[0])
        try:
            asc = abs(float(doc.xref_get_key(fd, "Ascent")[1]))
            dsc = abs(float(doc.xref_get_key(fd, "Descent")[1]))
        except ValueError:
            asc = dsc = 0.0
        if not (0 < asc < 3000 and 0 < dsc < 3000):
            out.add(basefont.split("+", 1)[-1])
    return out


def page_words(page: pymupdf.Page, dpi: int, textpage: pymupdf.TextPage | None = None,
               split_ratio: float = 0.15, base_jump: float = 0.5) -> list[dict]:
    """Words of ``page`` with boxes in pixels of a render at ``dpi`` (points x dpi / 72).

    Boxes follow the PDF's font metrics, the convention of pdftotext (poppler) and of the OCR ground
    truths made with it: horizontally the glyphs' advances, vertically each glyph's baseline minus
    ascent and minus descent (times the font size), from the font descriptor (``UNDECLARED_METRICS``
    when it declares none). MuPDF's own word boxes stretch every glyph to at least one em, 12% taller
    than the font's on Computer Modern, which no IoU >= 0.9 match survives. A word is a run of
    non-space glyphs of one line, split where the size changes by more than ``split_ratio`` or the
    baseline moves by more than ``base_jump`` of the size (sub- and superscripts, the small raised 'A'
    of the LaTeX logo: separate words, as in pdftotext; its lowered 'E' stays inside 'TEX'). Vertical and rotated lines keep MuPDF's glyph boxes.
    """
    z = dpi / 72.0
    undeclared = _undeclared_fonts(page)
    raw = page.get_text("rawdict", textpage=textpage)
    out: list[dict] = []
    for bno, block in enumerate(raw["blocks"]):
        for lno, line in enumerate(block.get("lines", [])):
            horizontal = abs(line["dir"][1]) < 1e-3 and line["dir"][0] > 0
            words: list[list[tuple[str, list[float], float, float]]] = []
            current: list[tuple[str, list[float], float, float]] = []
            for span in line["spans"]:
                size = float(span["size"])
                if span["font"] in undeclared:
                    asc, dsc = UNDECLARED_METRICS
                else:
                    asc, dsc = float(span["ascender"]), float(span["descender"])
                for ch in span["chars"]:
                    c = ch["c"]
                    if not c.strip():
                        if current:
                            words.append(current)
                        current = []
                        continue
                    x0, y0, x1, y1 = ch["bbox"]
                    base = float(ch["origin"][1])
                    if horizontal:
                        y0, y1 = base - asc * size, base - dsc * size
                    if current:
                        _, _, pbase, psize = current[-1]
                        if abs(size - psize) > split_ratio * max(size, psize) or abs(base - pbase) > base_jump * max(size, psize):
                            words.append(current)
                            current = []
                    current.append((c, [x0, y0, x1, y1], base, size))
            if current:
                words.append(current)
            for wno, w in enumerate(words):
                boxes = np.array([b for _, b, _, _ in w])
                box = [float(boxes[:, 0].min()) * z, float(boxes[:, 1].min()) * z,
                       float(boxes[:, 2].max()) * z, float(boxes[:, 3].max()) * z]
                out.append({"text": "".join(c for c, _, _, _ in w), "box": box, "block": bno, "line": lno, "word": wno})
    return out


def render_page(page: pymupdf.Page, dpi: int = 100) -> PageRender:
    """Render ``page`` at ``dpi`` (RGB, no alpha) with its words in pixel coordinates."""
    pix = page.get_pixmap(dpi=dpi, alpha=False)
    image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
    return PageRender(image, page_words(page, dpi), dpi)


def line_boxes(words: Sequence[dict]) -> list[dict]:
    """Lines (``{text, box, block, line, words}``) from words, in reading order.

    Blocks are ordered by ``curation.pdf.reading_order`` (columns), lines by their top edge inside
    a block, words left to right inside a line.
    """
    by_line: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for w in words:
        by_line[w["block"], w["line"]].append(w)
    lines = []
    for (block, line), ws in by_line.items():
        ws = sorted(ws, key=lambda w: w["box"][0])
        box = [min(w["box"][0] for w in ws), min(w["box"][1] for w in ws), max(w["box"][2] for w in ws), max(w["box"][3] for w in ws)]
        lines.append({"text": " ".join(w["text"] for w in ws), "box": box, "block": block, "line": line, "words": ws})
    by_block: dict[int, list[dict]] = defaultdict(list)
    for ln in lines:
        by_block[ln["block"]].append(ln)
    blocks = list(by_block)
    bboxes = [
        [min(ln["box"][0] for ln in by_block[b]), min(ln["box"][1] for ln in by_block[b]),
         max(ln["box"][2] for ln in by_block[b]), max(ln["box"][3] for ln in by_block[b])]
        for b in blocks
    ]
    out = []
    for i in reading_order(bboxes):
        out.extend(sorted(by_block[blocks[i]], key=lambda ln: (ln["box"][1], ln["box"][0])))
    return out


# ---------------------------------------------------------------------------- geometry


def homography(src: Sequence[Sequence[float]], dst: Sequence[Sequence[float]]) -> np.ndarray:
    """3x3 matrix H with H @ [x, y, 1] ~ [u, v, 1] for the 4 point pairs src -> dst."""
    a, b = [], []
    for (x, y), (u, v) in zip(src, dst):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b.extend([u, v])
    h = np.linalg.solve(np.asarray(a, float), np.asarray(b, float))
    return np.append(h, 1.0).reshape(3, 3)


def transform_boxes(boxes: np.ndarray, h: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 4) through homography ``h``: 4 corners mapped, axis-aligned bounds, clipped to
    ``size`` (w, h). Returns (boxes, inside) where ``inside`` is False for boxes left empty."""
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    if not len(boxes):
        return boxes, np.zeros(0, bool)
    x1, y1, x2, y2 = boxes.T
    corners = np.stack([np.stack([x1, y1]), np.stack([x2, y1]), np.stack([x2, y2]), np.stack([x1, y2])], 0)  # 4,2,N
    pts = np.concatenate([corners, np.ones((4, 1, len(boxes)))], 1)  # 4,3,N
    mapped = np.einsum("ij,kjn->kin", h, pts)
    xy = mapped[:, :2] / mapped[:, 2:3]
    out = np.stack([xy[:, 0].min(0), xy[:, 1].min(0), xy[:, 0].max(0), xy[:, 1].max(0)], 1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, size[0])
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, size[1])
    inside = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    return out, inside


def warp(image: Image.Image, h: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """Warp ``image`` by homography ``h`` (input -> output pixels) onto a white ``size`` canvas.

    PIL maps each output pixel index (x, y) through the given coefficients and samples there; the
    half-pixel shifts make that the centre of output pixel (x, y) to the point whose pre-image is
    taken in the same continuous coordinates as the boxes (pixel i covers [i, i + 1)).
    """
    shift_out = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1.0]])
    shift_in = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1.0]])
    inv = shift_in @ np.linalg.inv(h) @ shift_out
    inv = inv / inv[2, 2]
    return image.transform(
        size, Image.Transform.PERSPECTIVE, tuple(inv.flatten()[:8]), Image.Resampling.BICUBIC, fillcolor=WHITE
    )


def rotate(image: Image.Image, boxes: np.ndarray, degrees: float) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """Rotate counter-clockwise by ``degrees`` on an expanded canvas; boxes follow.

    Multiples of 90 degrees are exact (``Image.transpose``); other angles warp bicubically.
    """
    w, h = image.size
    rad = math.radians(degrees)
    c, s = math.cos(rad), math.sin(rad)
    if abs(degrees) % 90 == 0:
        c, s = round(c), round(s)
    # y points down, so a visually counter-clockwise turn is x' = c x + s y, y' = -s x + c y
    rot = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1.0]])
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], float) @ rot.T
    x0, y0 = corners[:, 0].min(), corners[:, 1].min()
    size = (int(math.ceil(corners[:, 0].max() - x0 - 1e-9)), int(math.ceil(corners[:, 1].max() - y0 - 1e-9)))
    m = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1.0]]) @ rot
    new_boxes, inside = transform_boxes(boxes, m, size)
    quarter = round(degrees / 90) % 4 if abs(degrees) % 90 == 0 else None
    if quarter is not None:
        ops = {0: None, 1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}
        out = image.copy() if ops[quarter] is None else image.transpose(ops[quarter])
    else:
        out = warp(image, m, size)
    return out, new_boxes, inside


def perspective(
    image: Image.Image, boxes: np.ndarray, dst: Sequence[Sequence[float]]
) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """Map the image corners (tl, tr, br, bl) to the quad ``dst`` on a same-size canvas."""
    w, h = image.size
    hm = homography([(0, 0), (w, 0), (w, h), (0, h)], dst)
    new_boxes, inside = transform_boxes(boxes, hm, (w, h))
    return warp(image, hm, (w, h)), new_boxes, inside


def occlude(
    image: Image.Image, boxes: np.ndarray, rects: Sequence[Sequence[int]], fill: int = 128, drop: float = 0.5
) -> tuple[Image.Image, np.ndarray]:
    """Paint grey ``rects`` [x1, y1, x2, y2]; returns the image and which boxes stay visible
    (hidden fraction of their pixel area below ``drop``)."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    w, h = image.size
    mask = np.zeros((h, w), bool)
    for x1, y1, x2, y2 in rects:
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=(fill, fill, fill))
        mask[max(0, y1):max(0, y2), max(0, x1):max(0, x2)] = True
    visible = np.ones(len(boxes), bool)
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, float).reshape(-1, 4)):
        xa, ya = int(math.floor(x1)), int(math.floor(y1))
        xb, yb = max(int(math.ceil(x2)), xa + 1), max(int(math.ceil(y2)), ya + 1)
        region = mask[max(0, ya):yb, max(0, xa):xb]
        if region.size and region.mean() >= drop:
            visible[i] = False
    return out, visible


def gaussian_blur(image: Image.Image, radius: float) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius))


def jpeg_noise(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


@dataclass
class Augmented:
    image: Image.Image
    boxes: np.ndarray  # (N, 4) float pixels in the augmented image
    visible: np.ndarray  # (N,) bool: False for boxes pushed out of frame or occluded
    ops: list[dict[str, Any]] = field(default_factory=list)


def augment(image: Image.Image, boxes: Sequence[Sequence[float]], rng: random.Random, config: GroundingConfig = DEFAULT_CONFIG) -> Augmented:
    """Apply each hardening op with its probability (module docstring); boxes follow the image."""
    b = np.asarray(boxes, float).reshape(-1, 4)
    visible = np.ones(len(b), bool)
    ops: list[dict[str, Any]] = []
    img = image
    # draw every decision up front so that adding an op later does not reshuffle the others
    do = {k: rng.random() < p for k, p in (
        ("rotate", config.p_rotate), ("perspective", config.p_perspective), ("occlude", config.p_occlude),
        ("blur", config.p_blur), ("jpeg", config.p_jpeg))}
    angle = rng.uniform(-config.max_rotation_deg, config.max_rotation_deg)
    shifts = [(rng.uniform(0, config.max_perspective), rng.uniform(0, config.max_perspective)) for _ in range(4)]
    n_occ = rng.randint(*config.occluders)
    occ = [(rng.uniform(*config.occluder_size), rng.uniform(*config.occluder_size), rng.random(), rng.random()) for _ in range(n_occ)]
    grey = rng.randint(0, 200)
    radius = rng.uniform(*config.blur_radius)
    quality = rng.randint(*config.jpeg_quality)
    if do["rotate"]:
        img, b, inside = rotate(img, b, angle)
        visible &= inside
        ops.append({"op": "rotate", "degrees": round(angle, 3)})
    if do["perspective"]:
        w, h = img.size
        signs = [(1, 1), (-1, 1), (-1, -1), (1, -1)]  # pull each corner towards the centre
        corners = [(0, 0), (w, 0), (w, h), (0, h)]
        dst = [(x + sx * fx * w, y + sy * fy * h) for (x, y), (sx, sy), (fx, fy) in zip(corners, signs, shifts)]
        img, b, inside = perspective(img, b, dst)
        visible &= inside
        ops.append({"op": "perspective", "dst": [[round(x, 2), round(y, 2)] for x, y in dst]})
    if do["occlude"]:
        w, h = img.size
        rects = []
        for fw, fh, fx, fy in occ:
            rw, rh = max(1, int(fw * w)), max(1, int(fh * h))
            x1, y1 = int(fx * (w - rw)), int(fy * (h - rh))
            rects.append([x1, y1, x1 + rw, y1 + rh])
        img, vis = occlude(img, b, rects, fill=grey, drop=config.occlusion_drop)
        visible &= vis
        ops.append({"op": "occlude", "rects": rects})
    if do["blur"]:
        img = gaussian_blur(img, radius)
        ops.append({"op": "blur", "radius": round(radius, 3)})
    if do["jpeg"]:
        img = jpeg_noise(img, quality)
        ops.append({"op": "jpeg", "quality": quality})
    return Augmented(img, b, visible, ops)


# ----------------------------------------------------------------------------- samples


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _int_box(box: Sequence[float], size: tuple[int, int]) -> list[int]:
    w, h = size
    return [max(0, int(math.floor(box[0]))), max(0, int(math.floor(box[1]))),
            min(w, int(math.ceil(box[2]))), min(h, int(math.ceil(box[3])))]


_HAS_ALNUM = re.compile(r"[^\W_]")

OCR_PROMPT = "Read all the text in the image."
GROUNDING_PROMPT = 'Locate the text "{phrase}" in the image and give its bounding box as [x1, y1, x2, y2] in pixels.'


def page_samples(
    render: PageRender, sample_id: str, config: GroundingConfig = DEFAULT_CONFIG, source: str = "", page: int | None = None
) -> list[dict]:
    """OCR and grounding samples of one rendered page (augmented when ``config.augment``).

    Every sample: ``{id, task: 'ocr'|'grounding', source, page, image (PNG bytes), width, height,
    prompt, answer, augmentations}``; grounding samples add ``phrase`` and ``box`` (ints), region
    OCR samples add ``region`` (the crop box in the page image). The page image is shared by the
    page's samples (one bytes object). Random choices come from ``seeded_rng(sample_id)``.
    """
    rng = seeded_rng(sample_id, "ocr_grounding")
    words = render.words
    if config.augment:
        aug = augment(render.image, [w["box"] for w in words], rng, config)
    else:
        aug = Augmented(render.image, np.asarray([w["box"] for w in words], float).reshape(-1, 4), np.ones(len(words), bool))
    moved = [dict(w, box=[float(v) for v in aug.boxes[i]]) for i, w in enumerate(words) if aug.visible[i]]
    lines = line_boxes(moved)
    size = aug.image.size
    png = _png(aug.image)
    base = {"source": source, "page": page, "image": png, "width": size[0], "height": size[1], "augmentations": aug.ops}
    out: list[dict] = []
    if lines:
        out.append(dict(base, id=f"{sample_id}:ocr", task="ocr", prompt=OCR_PROMPT, answer="\n".join(ln["text"] for ln in lines)))
    # region OCR: crops of whole text blocks
    by_block: dict[int, list[dict]] = defaultdict(list)
    for ln in lines:
        by_block[ln["block"]].append(ln)
    blocks = [b for b, ls in by_block.items() if sum(len(ln["text"]) for ln in ls) >= config.min_phrase_chars]
    for k, b in enumerate(sorted(rng.sample(blocks, min(config.max_regions, len(blocks))))):
        ls = by_block[b]
        box = _int_box([min(ln["box"][0] for ln in ls) - 4, min(ln["box"][1] for ln in ls) - 4,
                        max(ln["box"][2] for ln in ls) + 4, max(ln["box"][3] for ln in ls) + 4], size)
        crop = aug.image.crop(box)
        out.append(dict(base, id=f"{sample_id}:region{k}", task="ocr", image=_png(crop), width=crop.width,
                        height=crop.height, region=box, prompt=OCR_PROMPT, answer="\n".join(ln["text"] for ln in ls)))
    # grounding: phrases that occur once on the page (counted before occlusion: a hidden twin
    # still makes the phrase ambiguous for whoever sees the clean page)
    items = lines if config.grounding_level == "line" else [w for ln in lines for w in ln["words"]]
    all_texts = line_boxes(words) if config.grounding_level == "line" else words
    counts: dict[str, int] = defaultdict(int)
    for it in all_texts:
        counts[it["text"]] += 1
    cands = [it for it in items if counts[it["text"]] == 1 and len(it["text"]) >= config.min_phrase_chars
             and _HAS_ALNUM.search(it["text"]) and '"' not in it["text"]]
    for k, it in enumerate(rng.sample(cands, min(config.max_grounding, len(cands)))):
        box = _int_box(it["box"], size)
        out.append(dict(base, id=f"{sample_id}:ground{k}", task="grounding", phrase=it["text"], box=box,
                        prompt=GROUNDING_PROMPT.format(phrase=it["text"]), answer=str(box)))
    return out


# ----------------------------------------------------------------------------- metrics


def levenshtein(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Edit distance (unit costs) of two sequences: strings, or lists of words.

    Myers' bit-parallel algorithm (Hyyrö's formulation) with Python integers as bit vectors:
    O(len(a)) big-integer operations of len(b) bits, ~0.3 s for two 18k-character strings.
    """
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    peq: dict = {}
    for i, c in enumerate(b):
        peq[c] = peq.get(c, 0) | (1 << i)
    mask = (1 << m) - 1
    high = 1 << (m - 1)
    pv, mv, score = mask, 0, m
    for c in a:
        eq = peq.get(c, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | (~(xh | pv) & mask)
        mh = pv & xh
        if ph & high:
            score += 1
        elif mh & high:
            score -= 1
        ph = ((ph << 1) | 1) & mask
        mh = (mh << 1) & mask
        pv = mh | (~(xv | ph) & mask)
        mv = ph & xv
    return score


def normalised_edit_distance(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Edit distance divided by the longer length (0 = equal, 1 = nothing in common)."""
    n = max(len(a), len(b))
    return levenshtein(a, b) / n if n else 0.0


def cer(hypothesis: str, reference: str) -> float:
    """Character error rate: edit distance / reference length, whitespace runs collapsed."""
    hyp, ref = " ".join(hypothesis.split()), " ".join(reference.split())
    return levenshtein(hyp, ref) / max(len(ref), 1)
