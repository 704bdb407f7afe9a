"""Decode and validate image bytes; failures are values on the result, never exceptions.

The format is sniffed from the magic bytes (never from a file extension: web crawls and even test
suites hold JPEGs named ``.png``), then Pillow opens the bytes with *only* that format's plugin.
``inspect_image`` reads the header (size, mode, EXIF orientation, frame count) without decoding
pixels, so size and decompression-bomb checks cost microseconds and allocate nothing.
``decode_image`` adds the full decode of the first frame, applies the EXIF orientation and
returns an 8-bit RGB image (transparency flattened onto white).

Reasons (``ImageInfo.reason``), checked in this order; the first that applies wins:

| reason | when | checked on |
|---|---|---|
| ``empty`` | zero bytes | bytes |
| ``unknown_format`` | magic bytes of no known format (random bytes, HTML error pages) | bytes |
| ``format_not_allowed`` | known format not in ``ImageLimits.formats`` (e.g. HEIF: needs a plugin) | bytes |
| ``decode_error`` | Pillow cannot parse the header, or the pixel data is corrupt or truncated | header, pixels |
| ``decompression_bomb`` | width x height > ``max_pixels`` (before any pixel buffer exists) | header |
| ``too_large`` | longer side > ``max_side`` | header |
| ``too_small`` | shorter side < ``min_side`` | header |
| ``aspect_ratio`` | longer / shorter side > ``max_aspect`` | header |

``error`` holds ``"ExcType: message"`` for ``decode_error`` (and Pillow's own bomb error).

Defaults (``ImageLimits``) are chosen for image-caption pairs, not for images inside documents:

- ``min_side=64``: OBELICS uses 150 px for images in web documents, where small images are mostly
  icons and logos. Caption datasets are the image itself; 150 would drop 289 of the 538 Tux Paint
  clip-art stamps in the sample data (all real, captioned objects), 64 drops 73 (the tiny ones:
  candy, pens, bullets). 64 px also keeps every image at >= 2x2 merged 28-px patches of a
  Qwen2-VL-style encoder without more than a 2x upscale.
- ``max_side=20000``: OBELICS.
- ``max_aspect=3.0``: OBELICS uses 2 for documents. 3 keeps 2:1 and 21:9 photos and most panoramas
  (no COCO photo in the sample exceeds 2.5) and drops banners, rulers and separators (728x90 =
  8.1, 468x60 = 7.8), which are junk for captioning and degenerate patch grids in a VLM.
- ``max_pixels=89_478_485``: Pillow's own ``Image.MAX_IMAGE_PIXELS`` (about 256 MiB as RGBA), set
  here explicitly and enforced by this module, so nothing depends on a process-wide global. Pillow
  itself still raises ``DecompressionBombError`` at ``Image.open`` above twice its global (and
  warns above it); that error is reported as ``decompression_bomb`` too, so a ``max_pixels`` above
  2 x 89,478,485 is capped by Pillow unless the global is raised.

Conversions to RGB in ``decode_image``: alpha (RGBA, LA, PA, P with a transparent palette entry or
an RGBA palette, L/RGB with a tRNS colour) is composited onto white, since captioned subjects on
transparent backgrounds (clip art) would otherwise turn black; CMYK (Pillow handles Adobe-inverted
CMYK and YCCK JPEGs in the decoder) and L/P/1/LAB/YCbCr convert directly; 16-bit greyscale
(``I;16*``, ``I``) is scaled by 255/65535 instead of Pillow's clipping, which would turn most of
it white; ``F`` is clipped to 0..255 as Pillow does. Animations (GIF, APNG, WebP, MPO) give their
first frame; ``n_frames`` records how many there are.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageOps

from curation.records import KEEP, Verdict, drop

# Pillow's plugin name for each sniffed format; images are opened with exactly this plugin.
PIL_FORMATS: dict[str, str] = {
    "jpeg": "JPEG",
    "png": "PNG",
    "gif": "GIF",
    "webp": "WEBP",
    "bmp": "BMP",
    "tiff": "TIFF",
    "avif": "AVIF",
    "heif": "HEIF",  # only with the pillow-heif plugin registered; not allowed by default
}

DEFAULT_FORMATS: frozenset[str] = frozenset({"jpeg", "png", "gif", "webp", "bmp", "tiff", "avif"})

_ORIENTATION_TAG = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that transpose width and height

# ISO-BMFF brands (ftyp box) of the HEIF family. AVIF first: a file may list both.
_AVIF_BRANDS = {b"avif", b"avis"}
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
_BMP_DIB_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}


def sniff_format(data: bytes) -> str | None:
    """The image format from the magic bytes, or None if unknown.

    Returns one of jpeg, png, gif, webp, bmp, tiff, avif, heif.
    """
    head = bytes(data[:32])
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # TIFF and BigTIFF
        return "tiff"
    # "BM" alone is too weak (two ASCII letters): also require a known DIB header size.
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_DIB_SIZES:
        return "bmp"
    if head[4:8] == b"ftyp" and len(head) >= 12:
        box_size = int.from_bytes(head[:4], "big")
        box = bytes(data[8 : max(12, min(box_size, 256))])
        brands = {box[i : i + 4] for i in range(0, len(box) - 3, 4)} - {b"\x00\x00\x00\x00"}
        if head[8:12] in _AVIF_BRANDS or brands & _AVIF_BRANDS:
            return "avif"
        if head[8:12] in _HEIF_BRANDS or brands & _HEIF_BRANDS:
            return "heif"
    return None


@dataclass(frozen=True)
class ImageLimits:
    """Acceptance limits; see the module docstring for why these defaults."""

    min_side: int = 64
    max_side: int = 20_000
    max_aspect: float = 3.0
    max_pixels: int = 89_478_485
    formats: frozenset[str] = field(default=DEFAULT_FORMATS)


DEFAULT_LIMITS = ImageLimits()


@dataclass(frozen=True)
class ImageInfo:
    """What we learned about an image; ``ok`` False means rejected, with ``reason`` (and ``error``).

    ``width``/``height`` are the stored pixel grid; ``oriented_width``/``oriented_height`` are the
    size after applying the EXIF orientation (what a viewer shows and what ``decode_image`` returns).
    ``mode`` is Pillow's mode of the stored image (before conversion to RGB).
    """

    ok: bool
    reason: str | None = None
    error: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    orientation: int = 1
    oriented_width: int | None = None
    oriented_height: int | None = None
    n_frames: int = 1

    @property
    def verdict(self) -> Verdict:
        """The filter outcome, datatrove style: ``keep, reason = info.verdict``."""
        return KEEP if self.ok else drop(self.reason or "decode_error")

    def as_record(self) -> dict:
        """Flat columns for a manifest row."""
        return {
            "image_ok": self.ok,
            "image_reason": self.reason,
            "image_error": self.error,
            "image_format": self.format,
            "width": self.oriented_width,
            "height": self.oriented_height,
            "image_mode": self.mode,
            "n_frames": self.n_frames,
        }


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _orientation(img: Image.Image) -> int:
    """EXIF orientation 1..8 from the header; 1 when absent or unreadable."""
    # PngImageFile.getexif() decodes the whole image when the eXIf chunk was not in the header.
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        value = int(img.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # malformed EXIF must not reject an otherwise good image
        return 1
    return value if 1 <= value <= 8 else 1


def _n_frames(img: Image.Image) -> int:
    try:
        return int(getattr(img, "n_frames", 1))
    except Exception:  # a broken later frame: the first frame may still decode
        return 1


def check_size(width: int, height: int, limits: ImageLimits = DEFAULT_LIMITS) -> str | None:
    """The size reason (decompression_bomb, too_large, too_small, aspect_ratio) or None."""
    if width * height > limits.max_pixels:
        return "decompression_bomb"
    short, long = min(width, height), max(width, height)
    if long > limits.max_side:
        return "too_large"
    if short < limits.min_side:
        return "too_small"
    if long > limits.max_aspect * short:
        return "aspect_ratio"
    return None


def open_image(
    data: bytes, limits: ImageLimits = DEFAULT_LIMITS
) -> tuple[Image.Image | None, ImageInfo]:
    """Sniff, open (header only) and check the limits; the image is lazy (pixels not decoded).

    Returns ``(None, info)`` with ``info.ok`` False when rejected. The caller owns the image.
    """
    if not data:
        return None, ImageInfo(ok=False, reason="empty")
    fmt = sniff_format(data)
    if fmt is None:
        return None, ImageInfo(ok=False, reason="unknown_format")
    if fmt not in limits.formats:
        return None, ImageInfo(ok=False, reason="format_not_allowed", format=fmt)
    try:
        img = Image.open(io.BytesIO(data), formats=[PIL_FORMATS[fmt]])
    except Image.DecompressionBombError as exc:  # Pillow's own hard limit (2x its global)
        return None, ImageInfo(ok=False, reason="decompression_bomb", error=_error(exc), format=fmt)
    except Exception as exc:  # UnidentifiedImageError, SyntaxError, struct.error, plugin missing...
        return None, ImageInfo(ok=False, reason="decode_error", error=_error(exc), format=fmt)
    width, height = img.size
    orientation = _orientation(img)
    ow, oh = (height, width) if orientation in _SWAPS_AXES else (width, height)
    info = ImageInfo(
        ok=True,
        format=fmt,
        width=width,
        height=height,
        mode=img.mode,
        orientation=orientation,
        oriented_width=ow,
        oriented_height=oh,
        n_frames=_n_frames(img),
    )
    reason = check_size(ow, oh, limits)
    if reason is not None:
        img.close()
        return None, replace(info, ok=False, reason=reason)
    return img, info


def inspect_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> ImageInfo:
    """Header-only validation: format, size, mode, orientation, frames; no pixel decode.

    A corrupt pixel stream is only found by ``decode_image``.
    """
    img, info = open_image(data, limits)
    if img is not None:
        img.close()
    return info


def _sixteen_bit_to_l(img: Image.Image) -> Image.Image:
    # Pillow's convert clips I;16 at 255 (most of a 16-bit image turns white); scale instead.
    arr = np.asarray(img, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(arr * (255.0 / 65535.0)), 0, 255).astype(np.uint8), "L")


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB; transparency is composited onto white (see the module docstring)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I"):
        img = _sixteen_bit_to_l(img)
    elif img.mode == "F":
        img = img.convert("L")
    if img.has_transparency_data:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")


def decode_image(
    data: bytes, limits: ImageLimits = DEFAULT_LIMITS
) -> tuple[Image.Image | None, ImageInfo]:
    """Validate, decode the first frame, apply EXIF orientation, convert to RGB.

    Returns ``(rgb_image, info)``, or ``(None, info)`` with ``info.reason`` set.
    """
    img, info = open_image(data, limits)
    if img is None:
        return None, info
    # No close() here: it would destroy the pixels that to_rgb may return as is; the source is an
    # in-memory buffer, so there is no file handle to leak.
    try:
        img.load()
        try:
            # After load: PNG's eXIf chunk may sit after the pixel data.
            ImageOps.exif_transpose(img, in_place=True)
        except Exception:  # unreadable EXIF: keep the stored orientation
            pass
        rgb = to_rgb(img)
    except Exception as exc:  # truncated or corrupt data; MemoryError on absurd frames
        return None, replace(info, ok=False, reason="decode_error", error=_error(exc))
    return rgb, replace(info, oriented_width=rgb.width, oriented_height=rgb.height)
