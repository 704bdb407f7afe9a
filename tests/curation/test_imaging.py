"""curation.imaging: sniffing, header checks and decoding on real files and generated fixtures."""

from __future__ import annotations

import collections
import io
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from curation.imaging import (
    DEFAULT_LIMITS,
    ImageLimits,
    decode_image,
    inspect_image,
    sniff_format,
)

ND = "near_dup"
BAIONA = f"{ND}/ocrmypdf_baiona"


def read(shared_data: Path, rel: str) -> bytes:
    return (shared_data / rel).read_bytes()


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG signature + IHDR claiming width x height (RGB, 8 bit) + a tiny IDAT: no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))


# ------------------------------------------------------------------------------------- sniffing


@pytest.mark.parametrize(
    "rel, expected",
    [
        (f"{ND}/imagededup_tests/base_images/ukbench09380.jpg", "jpeg"),
        # byte-identical JPEG data under wrong extensions: the extension is never trusted
        (f"{ND}/imagededup_tests/formats_images/ukbench09380.bmp", "jpeg"),
        (f"{ND}/imagededup_tests/formats_images/ukbench09380.png", "jpeg"),
        (f"{ND}/imagededup_tests/formats_images/ukbench09380.jpeg", "jpeg"),
        (f"{ND}/imagededup_tests/formats_images/ukbench09380.webp", "webp"),
        (f"{ND}/imagededup_tests/mixed_images/ukbench09268_corrupt.jpg", None),
        (f"{BAIONA}/baiona_alpha.png", "png"),
        (f"{BAIONA}/baiona_cmyk.jpg", "jpeg"),
        ("video/clips/imageio-binaries__newtonscradle.gif", "gif"),
        (f"{ND}/README.md", None),
        (f"{ND}/groups_real.json", None),
    ],
)
def test_sniff_real_files(shared_data, rel, expected):
    assert sniff_format(read(shared_data, rel)) == expected


@pytest.mark.parametrize(
    "fmt, expected", [("BMP", "bmp"), ("TIFF", "tiff"), ("GIF", "gif"), ("WEBP", "webp"), ("PNG", "png")]
)
def test_sniff_and_decode_generated_formats(fmt, expected):
    data = encode(Image.new("RGB", (96, 80), (10, 200, 30)), fmt)
    assert sniff_format(data) == expected
    img, info = decode_image(data)
    assert info.ok and info.format == expected and img.size == (96, 80) and img.mode == "RGB"


@pytest.mark.skipif(not features.check("avif"), reason="Pillow built without AVIF")
def test_sniff_and_decode_avif():
    data = encode(Image.new("RGB", (96, 80), (10, 200, 30)), "AVIF")
    assert sniff_format(data) == "avif"
    img, info = decode_image(data)
    assert info.ok and img.size == (96, 80)


def test_sniff_heif_brand_and_not_allowed_by_default():
    data = struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic" + b"\x00" * 64
    assert sniff_format(data) == "heif"
    assert inspect_image(data).reason == "format_not_allowed"


@pytest.mark.parametrize(
    "data",
    [
        b"BM" + bytes(30),  # "BM" with no valid DIB header size
        b"<!DOCTYPE html><html>404</html>",
        random.Random(0).randbytes(4096),
        b"\xff\xd8",  # two bytes of a JPEG SOI, no marker
    ],
)
def test_sniff_unknown(data):
    assert sniff_format(data) is None
    assert inspect_image(data).reason == "unknown_format"


# --------------------------------------------------------------------------------- real images


def test_corrupt_jpeg_is_unknown_format(shared_data):
    # The imagededup "corrupt" file is random bytes with a .jpg name: no JPEG magic at all.
    img, info = decode_image(read(shared_data, f"{ND}/imagededup_tests/mixed_images/ukbench09268_corrupt.jpg"))
    assert img is None
    assert (info.ok, info.reason, info.format) == (False, "unknown_format", None)


def test_wrong_extension_decodes_like_the_original(shared_data):
    ref, _ = decode_image(read(shared_data, f"{ND}/imagededup_tests/base_images/ukbench09380.jpg"))
    img, info = decode_image(read(shared_data, f"{ND}/imagededup_tests/formats_images/ukbench09380.png"))
    assert info.format == "jpeg"
    assert np.array_equal(np.asarray(img), np.asarray(ref))


def test_webp_real(shared_data):
    img, info = decode_image(read(shared_data, f"{ND}/imagededup_tests/formats_images/ukbench09380.webp"))
    assert (info.ok, info.format, info.mode, img.size) == (True, "webp", "RGB", (640, 480))


def test_real_exif_orientation_6(shared_data):
    # ukbench09268.jpg is stored 640x480 with EXIF orientation 6 (rotate 90 degrees clockwise).
    data = read(shared_data, f"{ND}/imagededup_tests/base_images/ukbench09268.jpg")
    info = inspect_image(data)
    assert (info.width, info.height, info.orientation) == (640, 480, 6)
    assert (info.oriented_width, info.oriented_height) == (480, 640)
    img, dinfo = decode_image(data)
    assert img.size == (480, 640) and (dinfo.oriented_width, dinfo.oriented_height) == (480, 640)
    stored = Image.open(io.BytesIO(data)).convert("RGB").transpose(Image.Transpose.ROTATE_270)
    assert np.array_equal(np.asarray(img), np.asarray(stored))


@pytest.mark.parametrize(
    "name, mode",
    [
        ("baiona.png", "RGB"),
        ("baiona_alpha.png", "RGBA"),
        ("baiona_cmyk.jpg", "CMYK"),
        ("baiona_color.jpg", "RGB"),
        ("baiona_colormapped.png", "P"),
        ("baiona_gray.png", "L"),
    ],
)
def test_baiona_encodings_to_rgb(shared_data, name, mode):
    img, info = decode_image(read(shared_data, f"{BAIONA}/{name}"))
    assert (info.ok, info.mode, img.mode, img.size) == (True, mode, "RGB", (640, 682))
    ref = np.asarray(decode_image(read(shared_data, f"{BAIONA}/baiona.png"))[0]).astype(int)
    arr = np.asarray(img).astype(int)
    if mode == "L":
        assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
        ref = ref.mean(axis=2, keepdims=True)
    # CMYK decoded with the wrong polarity (Adobe inverted) would be ~200 levels off.
    assert np.abs(arr - ref).mean() < 3.0


@pytest.mark.parametrize(
    "name, mode",
    [
        ("animals__amphibians__frog-1.png", "RGBA"),
        ("plants__flowers__flower1.png", "P"),  # palette with a transparent index
        ("animals__insects__bee.png", "LA"),
    ],
)
def test_transparent_clipart_on_white(shared_data, name, mode):
    data = read(shared_data, f"image_caption/tuxpaint_stamps/images/{name}")
    src = Image.open(io.BytesIO(data)).convert("RGBA")
    assert src.getpixel((0, 0))[3] == 0  # the corner is transparent in the file
    img, info = decode_image(data)
    assert info.mode == mode and img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255)
    alpha = np.asarray(src)[..., 3]
    assert (np.asarray(img)[alpha == 0] == 255).all()


def test_tuxpaint_reasons_with_default_limits(shared_data):
    folder = shared_data / "image_caption/tuxpaint_stamps/images"
    reasons = collections.Counter(inspect_image(p.read_bytes()).reason for p in sorted(folder.glob("*.png")))
    assert reasons == {None: 452, "too_small": 73, "aspect_ratio": 13}


def test_coco_all_ok_with_default_limits(shared_data):
    folder = shared_data / "image_caption/coco_mini/images"
    infos = [inspect_image(p.read_bytes()) for p in sorted(folder.rglob("*.jpg"))]
    assert len(infos) == 239 and all(i.ok for i in infos)
    assert collections.Counter(i.mode for i in infos) == {"RGB": 238, "L": 1}


def test_real_animated_gif_first_frame(shared_data):
    data = read(shared_data, "video/clips/imageio-binaries__newtonscradle.gif")
    info = inspect_image(data)
    assert (info.format, info.mode, info.n_frames, info.width, info.height) == ("gif", "P", 36, 200, 150)
    img, _ = decode_image(data)
    first = Image.open(io.BytesIO(data)).convert("RGB")
    assert np.array_equal(np.asarray(img), np.asarray(first))


# ---------------------------------------------------------------------------- generated fixtures


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_generated(orientation):
    img = Image.new("RGB", (200, 100), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 100, 100))  # left half red
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(img, "JPEG", exif=exif.tobytes(), quality=95)
    info = inspect_image(data)
    swapped = orientation in (5, 6, 7, 8)
    assert info.orientation == orientation
    assert (info.width, info.height) == (200, 100)
    assert (info.oriented_width, info.oriented_height) == ((100, 200) if swapped else (200, 100))
    out, dinfo = decode_image(data)
    assert out.size == (dinfo.oriented_width, dinfo.oriented_height) == (info.oriented_width, info.oriented_height)
    if orientation == 6:  # rotate 90 degrees clockwise: the left (red) half ends up on top
        assert out.getpixel((50, 20))[0] > 200 and out.getpixel((50, 180))[2] > 200


@pytest.mark.parametrize(
    "size, reason",
    [
        ((63, 100), "too_small"),
        ((64, 64), None),
        ((64, 192), None),  # aspect exactly 3.0 is allowed
        ((64, 193), "aspect_ratio"),
        ((1, 1), "too_small"),
        ((400, 100), "aspect_ratio"),
    ],
)
def test_size_limits_generated(size, reason):
    data = encode(Image.new("RGB", size, (128, 128, 128)), "PNG")
    assert inspect_image(data).reason == reason
    img, info = decode_image(data)
    assert info.reason == reason and (img is None) == (reason is not None)


def test_header_claiming_huge_png_is_a_bomb_without_decoding():
    # 100k x 100k RGB would be 30 GB: Pillow refuses at open (2x its limit); no pixels exist.
    info = inspect_image(png_header(100_000, 100_000))
    assert (info.ok, info.reason, info.format) == (False, "decompression_bomb", "png")
    img, dinfo = decode_image(png_header(100_000, 100_000))
    assert img is None and dinfo.reason == "decompression_bomb"


def test_our_max_pixels_is_enforced_from_the_header():
    limits = ImageLimits(max_pixels=1_000_000)
    data = png_header(2_000, 1_000)  # no real pixel data: decoding it would be a decode_error
    info = inspect_image(data, limits)
    assert (info.reason, info.width, info.height) == ("decompression_bomb", 2_000, 1_000)
    assert decode_image(data, limits)[1].reason == "decompression_bomb"
    assert inspect_image(data, DEFAULT_LIMITS).ok  # header-only: within default limits
    assert decode_image(data, DEFAULT_LIMITS)[1].reason == "decode_error"


def test_too_large_side():
    assert inspect_image(png_header(25_000, 2_000)).reason == "too_large"


@pytest.mark.parametrize("rel", ["image_caption/coco_mini/images/val2017/000000000139.jpg", f"{BAIONA}/baiona.png"])
def test_truncated_file_is_decode_error(shared_data, rel):
    data = read(shared_data, rel)
    cut = data[: len(data) // 2]
    assert inspect_image(cut).ok  # the header is intact
    img, info = decode_image(cut)
    assert img is None
    assert (info.ok, info.reason) == (False, "decode_error")
    assert "truncated" in info.error.lower() or "EOF" in info.error


def test_empty_bytes():
    assert inspect_image(b"").reason == "empty"
    assert tuple(inspect_image(b"").verdict) == (False, "empty")
    assert decode_image(b"") == (None, inspect_image(b""))


def test_format_not_allowed(shared_data):
    data = read(shared_data, f"{ND}/imagededup_tests/formats_images/ukbench09380.png")  # JPEG inside
    info = inspect_image(data, ImageLimits(formats=frozenset({"png"})))
    assert (info.reason, info.format) == ("format_not_allowed", "jpeg")


def test_sixteen_bit_grey_is_scaled_not_clipped():
    arr = np.array([[0, 128 * 257, 65535, 1000]] * 64, dtype=np.uint16).repeat(16, axis=1)
    data = encode(Image.fromarray(arr, "I;16"), "PNG")
    img, info = decode_image(data)
    assert info.mode.startswith("I")
    out = np.asarray(img)
    assert [int(out[0, 16 * i, 0]) for i in range(4)] == [0, 128, 255, 4]


def test_palette_with_transparent_index_and_cmyk_generated():
    p = Image.new("P", (80, 80), 1)
    p.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    p.paste(0, (0, 0, 40, 80))
    img, _ = decode_image(encode(p, "PNG", transparency=0))
    assert img.getpixel((10, 10)) == (255, 255, 255) and img.getpixel((60, 10)) == (200, 10, 10)
    cmyk = Image.new("CMYK", (80, 80), (0, 255, 255, 0))  # pure red in CMYK
    img, info = decode_image(encode(cmyk, "JPEG", quality=95))
    r, g, b = img.getpixel((40, 40))
    assert info.mode == "CMYK" and r > 230 and g < 25 and b < 25


def test_as_record_columns(shared_data):
    info = inspect_image(read(shared_data, f"{ND}/imagededup_tests/base_images/ukbench09268.jpg"))
    assert tuple(info.verdict) == (True, None)
    assert info.as_record() == {
        "image_ok": True,
        "image_reason": None,
        "image_error": None,
        "image_format": "jpeg",
        "width": 480,
        "height": 640,
        "image_mode": "RGB",
        "n_frames": 1,
    }
