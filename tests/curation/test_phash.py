"""curation.phash: bit-exact with imagehash, batched == single, draft path, near-dup quality on real data."""

from __future__ import annotations

import io
import json
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageOps

from curation.phash import (
    DEFAULT_THRESHOLD,
    hamming,
    phash_bytes,
    phash_image,
    phash_many,
    phash_pixels,
    to_hash_pixels,
    to_hex,
)

# A spread of real files: COCO photos (train/val, one greyscale), Tux Paint clip art (RGBA, P with
# transparency, LA), near_dup (CMYK JPEG, palette/grey PNG, WebP, JPEG named .png, EXIF-rotated).
FILES = [
    *[
        f"image_caption/coco_mini/images/val2017/{n}.jpg"
        for n in ("000000000139", "000000000802", "000000011813", "000000012280")
        + ("000000018575", "000000019221", "000000020247", "000000022192")
    ],
    *[
        f"image_caption/coco_mini/images/train2017/{n}.jpg"
        for n in ("000000000790", "000000030752", "000000037666", "000000054718", "000000063217", "000000069468")
    ],
    "image_caption/tuxpaint_stamps/images/animals__amphibians__frog-1.png",
    "image_caption/tuxpaint_stamps/images/plants__flowers__flower1.png",
    "image_caption/tuxpaint_stamps/images/animals__insects__bee.png",
    "image_caption/tuxpaint_stamps/images/clothes__t_jacket.png",
    "image_caption/tuxpaint_stamps/images/seasonal__halloween__skull.png",
    "near_dup/ocrmypdf_baiona/baiona.png",
    "near_dup/ocrmypdf_baiona/baiona_alpha.png",
    "near_dup/ocrmypdf_baiona/baiona_cmyk.jpg",
    "near_dup/ocrmypdf_baiona/baiona_color.jpg",
    "near_dup/ocrmypdf_baiona/baiona_colormapped.png",
    "near_dup/ocrmypdf_baiona/baiona_gray.png",
    "near_dup/imagededup_tests/base_images/ukbench09268.jpg",
    "near_dup/imagededup_tests/formats_images/ukbench09380.png",
    "near_dup/imagededup_tests/formats_images/ukbench09380.webp",
    "near_dup/imagededup_tests/ukbench00120_gray.jpg",
    "near_dup/imagededup_tests/mixed_images/ukbench00120_resize.jpg",
    "near_dup/standard_images_two_sources/skimage/camera.png",
    "near_dup/standard_images_two_sources/skimage/hubble_deep_field.jpg",
    "near_dup/standard_images_two_sources/imageio_binaries/coins.png",
    "near_dup/skimage_registration_pairs/OriginalX75Y75.png",
    "near_dup/derived_coco_mini/variants/000000000139__gray320.png",
    "near_dup/derived_coco_mini/variants/000000000139__jpegq25.jpg",
    "video/clips/imageio-binaries__newtonscradle.gif",
]

# imagehash itself triggers this Pillow warning on palette PNGs with byte transparency (Tux Paint).
pytestmark = pytest.mark.filterwarnings("ignore:Palette images with Transparency:UserWarning")

TRANSFORMS = ("resize50", "jpegq25", "crop85", "hflip", "gray320", "pad_bottom")


def imagehash_int(img: Image.Image) -> int:
    return int(str(imagehash.phash(img)), 16)


def synthetic_pixels() -> list[np.ndarray]:
    """Degenerate 32x32 inputs where DCT coefficients tie with the median."""
    x = np.arange(32)
    return [
        np.zeros((32, 32), np.uint8),
        np.full((32, 32), 255, np.uint8),
        np.tile((x % 2 * 255).astype(np.uint8), (32, 1)),  # vertical stripes
        ((x[:, None] + x[None, :]) % 2 * 255).astype(np.uint8),  # checkerboard
        np.tile((x * 8).astype(np.uint8), (32, 1)),  # horizontal ramp
        np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8),
    ]


@pytest.fixture(scope="module")
def real(shared_data) -> dict[str, bytes]:
    return {rel: (shared_data / rel).read_bytes() for rel in FILES}


@pytest.mark.parametrize("rel", FILES)
def test_bit_exact_with_imagehash(real, rel):
    data = real[rel]
    expected = imagehash_int(Image.open(io.BytesIO(data)))
    assert phash_image(Image.open(io.BytesIO(data))) == expected
    assert phash_bytes(data, draft=False) == expected
    assert to_hex(expected) == str(imagehash.phash(Image.open(io.BytesIO(data))))


def test_batched_equals_single_and_imagehash(real):
    imgs = [Image.open(io.BytesIO(real[rel])) for rel in FILES]
    pixels = [to_hash_pixels(im) for im in imgs] + synthetic_pixels()
    batched = phash_pixels(np.stack(pixels))
    assert batched.dtype == np.uint64 and batched.shape == (len(pixels),)
    singles = [int(phash_pixels(p)[0]) for p in pixels]
    expected = [imagehash_int(Image.open(io.BytesIO(real[rel]))) for rel in FILES]
    expected += [imagehash_int(Image.fromarray(p, "L")) for p in synthetic_pixels()]
    assert [int(h) for h in batched] == singles == expected
    # constant images: all AC coefficients are 0 = the median; only a positive DC bit can be set
    assert singles[len(FILES) : len(FILES) + 2] == [0, 1 << 63]


def test_phash_many_no_draft_equals_imagehash(real):
    hashes, errors = phash_many([real[rel] for rel in FILES], draft=False)
    assert errors == [None] * len(FILES)
    assert [int(h) for h in hashes] == [imagehash_int(Image.open(io.BytesIO(real[rel]))) for rel in FILES]


def test_draft_close_to_full_decode_on_coco(shared_data):
    paths = sorted((shared_data / "image_caption/coco_mini/images").rglob("*.jpg"))
    datas = [p.read_bytes() for p in paths]
    fast, errors = phash_many(datas)
    full, _ = phash_many(datas, draft=False)
    assert not any(errors)
    dist = hamming(fast, full)
    assert len(dist) == 239
    # Measured: 191/239 (79.9%) identical, mean 0.46 bits, max 4 (draft to >= 64 px, luma only).
    assert dist.max() <= 4 and dist.mean() < 0.6 and (dist == 0).mean() > 0.7
    assert [phash_bytes(d) for d in datas[:10]] == [int(h) for h in fast[:10]]


def test_non_jpeg_is_never_drafted(real):
    for rel in FILES:
        if not rel.endswith((".png", ".webp", ".gif")) or rel.endswith("ukbench09380.png"):
            continue
        assert phash_bytes(real[rel]) == phash_bytes(real[rel], draft=False)


def test_mirror_hash_equals_hash_of_mirrored_image(real):
    imgs = [Image.open(io.BytesIO(real[rel])) for rel in FILES]
    both = phash_pixels(np.stack([to_hash_pixels(im) for im in imgs]), mirror=True)
    assert both.shape == (len(FILES), 2)
    assert [int(h) for h in both[:, 0]] == [phash_image(im) for im in imgs]
    assert [int(h) for h in both[:, 1]] == [imagehash_int(ImageOps.mirror(im)) for im in imgs]


def test_exif_option(real):
    data = real["near_dup/imagededup_tests/base_images/ukbench09268.jpg"]  # EXIF orientation 6
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert phash_bytes(data, draft=False, exif=True) == imagehash_int(upright)
    assert phash_bytes(data, draft=False) == imagehash_int(Image.open(io.BytesIO(data)))
    assert hamming(phash_bytes(data, exif=True), phash_bytes(data)) > DEFAULT_THRESHOLD


def test_phash_many_failures_are_values(real):
    good = real["near_dup/ocrmypdf_baiona/baiona_color.jpg"]
    datas = [good, b"", np.random.default_rng(1).bytes(3000), good[: len(good) // 3], good]
    hashes, errors = phash_many(datas)
    assert hashes.shape == (5,)
    assert errors[0] is None and errors[4] is None
    assert errors[1] == "ValueError: unknown_format" and errors[2] == "ValueError: unknown_format"
    assert errors[3].startswith("OSError") and "truncated" in errors[3]
    assert [int(h) for h in hashes] == [phash_bytes(good), 0, 0, 0, phash_bytes(good)]
    with pytest.raises(ValueError, match="unknown_format"):
        phash_bytes(b"not an image")
    empty, no_errors = phash_many([])
    assert empty.shape == (0,) and empty.dtype == np.uint64 and no_errors == []


def test_max_pixels_guard(real):
    data = real["near_dup/ocrmypdf_baiona/baiona.png"]  # 640 x 682
    _, errors = phash_many([data], max_pixels=640 * 682 - 1)
    assert errors == ["ValueError: decompression_bomb: 640x682"]


def test_hamming():
    assert hamming(0, 2**64 - 1) == 64
    assert hamming(0b1011, 0b0001) == 2
    a = np.array([0, 1, 2**63], dtype=np.uint64)
    assert hamming(a, np.uint64(0)).tolist() == [0, 1, 1]
    assert hamming(a[:, None], a[None, :]).tolist() == [[0, 1, 1], [1, 0, 2], [1, 2, 0]]
    h1 = imagehash.hex_to_hash("ffd8c0c0c0c0c0c0")
    h2 = imagehash.hex_to_hash("0fd8c0c0c0c0c0c1")
    assert hamming(int(str(h1), 16), int(str(h2), 16)) == h1 - h2 == 5


# ------------------------------------------------------------------------ near-dup quality


def derived_groups(shared_data: Path) -> tuple[Path, list[dict]]:
    root = shared_data / "near_dup/derived_coco_mini"
    return root, [json.loads(line) for line in (root / "groups.jsonl").read_text().splitlines() if line.strip()]


def derived_distances(shared_data: Path, draft: bool) -> dict[str, np.ndarray]:
    """Per transformation: distance(original, variant) and the flip-invariant distance for hflip."""
    root, groups = derived_groups(shared_data)
    out: dict[str, list[int]] = {t: [] for t in (*TRANSFORMS, "hflip_mirror")}
    for g in groups:
        paths = [g["original"]] + [g["variants"][t] for t in TRANSFORMS]
        hashes, errors = phash_many([(root / p).read_bytes() for p in paths], draft=draft, mirror=True)
        assert not any(errors)
        for t, h in zip(TRANSFORMS, hashes[1:, 0]):
            out[t].append(int(hamming(hashes[0, 0], h)))
        out["hflip_mirror"].append(int(hamming(hashes[0, 1], hashes[1 + TRANSFORMS.index("hflip"), 0])))
    return {t: np.array(v) for t, v in out.items()}


@pytest.fixture(scope="module")
def derived_full(shared_data):
    return derived_distances(shared_data, draft=False)


@pytest.fixture(scope="module")
def derived_draft(shared_data):
    return derived_distances(shared_data, draft=True)


# (original, variant) pairs within k, out of 40, for k = 4, 6, 8, 10 (full decode = imagehash).
RECALL_FULL = {
    "resize50": [40, 40, 40, 40],
    "jpegq25": [40, 40, 40, 40],
    "crop85": [0, 0, 2, 5],
    "hflip": [0, 0, 0, 0],
    "gray320": [40, 40, 40, 40],
    "pad_bottom": [0, 0, 0, 1],
    "hflip_mirror": [40, 40, 40, 40],
}


@pytest.mark.parametrize("transform", list(RECALL_FULL))
def test_recall_per_transformation_full_decode(derived_full, transform):
    d = derived_full[transform]
    assert len(d) == 40
    assert [int((d <= k).sum()) for k in (4, 6, 8, 10)] == RECALL_FULL[transform]


@pytest.mark.parametrize("transform", list(RECALL_FULL))
def test_recall_per_transformation_draft_at_default_k(derived_draft, transform):
    assert DEFAULT_THRESHOLD == 10
    assert int((derived_draft[transform] <= DEFAULT_THRESHOLD).sum()) == RECALL_FULL[transform][-1]


def all_items(shared_data: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Group, path and (hash, mirrored hash) of every derived and real near-dup file that decodes."""
    root, groups = derived_groups(shared_data)
    items = [("coco:" + g["group"], root / p) for g in groups for p in (g["original"], *g["variants"].values())]
    nd = shared_data / "near_dup"
    for g in json.loads((nd / "groups_real.json").read_text()):
        items += [(g["group"], nd / m["path"]) for m in g["members"]]
    hashes, errors = phash_many([p.read_bytes() for _, p in items], mirror=True)
    bad = [str(p.relative_to(nd)) for (_, p), e in zip(items, errors) if e]
    assert bad == ["imagededup_tests/mixed_images/ukbench09268_corrupt.jpg"]
    keep = [i for i, e in enumerate(errors) if e is None]
    return [items[i][0] for i in keep], [str(items[i][1].relative_to(nd)) for i in keep], hashes[keep]


@pytest.fixture(scope="module")
def items(shared_data):
    return all_items(shared_data)


def test_precision_is_one_at_default_k(items):
    groups, paths, hashes = items
    assert len(paths) == 329
    g = np.array(groups)
    cross = g[:, None] != g[None, :]
    d = hamming(hashes[:, None, 0], hashes[None, :, 0])
    assert int((cross & (d <= DEFAULT_THRESHOLD)).sum()) == 0
    assert int(d[cross].min()) == 16  # the margin: closest pair of different photos
    # flip-invariant matching: exactly one false pair, two different ultrasound frames whose
    # symmetric black cone mask dominates the hash
    dm = np.minimum(d, hamming(hashes[:, None, 1], hashes[None, :, 0]))
    hits = np.nonzero(cross & (dm <= DEFAULT_THRESHOLD))
    fp = sorted({tuple(sorted((paths[i], paths[j]))) for i, j in zip(*hits)})
    reg = "skimage_registration_pairs/"
    assert fp == [(reg + "TransformedX-130Y130.png", reg + "TransformedX130Y130.png")]


# Real groups: which members are within the default k of the group's first member (draft decode).
REAL_WITHIN_K = {
    "ukbench00120": {
        "mixed_images/ukbench00120.jpg": True,
        "ukbench00120_hflip.jpg": False,
        "ukbench00120_resize.jpg": True,
        "ukbench00120_rotation.jpg": False,
        "ukbench00120_gray.jpg": True,
    },
    "ukbench09380": {f"ukbench09380.{ext}": True for ext in ("bmp", "jpeg", "png", "webp")},
    "baiona": {
        f"baiona_{v}": True for v in ("alpha.png", "cmyk.jpg", "color.jpg", "colormapped.png", "gray.png")
    },
    "std_chelsea": {"imageio_binaries/chelsea.png": True},
    "std_hubble_deep_field": {"imageio_binaries/hubble_deep_field.png": True},
    "registration_X130Y130": {"TransformedX130Y130.png": False},
    "registration_X75Y75": {"TransformedX75Y75.png": False},
}


@pytest.mark.parametrize("group", list(REAL_WITHIN_K))
def test_real_groups(items, group):
    groups, paths, hashes = items
    idx = [i for i, g in enumerate(groups) if g == group]
    first = hashes[idx[0], 0]
    got = {}
    for i in idx[1:]:
        key = next(k for k in REAL_WITHIN_K[group] if paths[i].endswith(k))
        got[key] = bool(hamming(first, hashes[i, 0]) <= DEFAULT_THRESHOLD)
    assert got == REAL_WITHIN_K[group]



def test_flatten_alpha_makes_resized_cutouts_match(shared_data) -> None:
    """Transparent cut-outs: the colour under alpha=0 is undefined, so a resized copy can hash far
    away unless transparency is composited onto white first (what the pipeline does)."""
    import io

    from PIL import Image

    from curation import phash as ph

    src = shared_data / "image_caption/tuxpaint_stamps/images/animals__amphibians__frog.png"
    img = Image.open(src)
    buf = io.BytesIO()
    img.resize((img.width * 3 // 5, img.height * 3 // 5), Image.Resampling.LANCZOS).save(buf, "PNG")
    a, b = src.read_bytes(), buf.getvalue()
    assert ph.hamming(ph.phash_bytes(a), ph.phash_bytes(b)) > 10
    assert ph.hamming(ph.phash_bytes(a, flatten_alpha=True), ph.phash_bytes(b, flatten_alpha=True)) <= 2
    opaque = (shared_data / "image_caption/coco_mini/images/val2017/000000000139.jpg").read_bytes()
    assert ph.phash_bytes(opaque, flatten_alpha=True) == ph.phash_bytes(opaque)
