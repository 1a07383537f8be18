"""Thumbnail generation with Pillow: pure, blocking functions run in a worker thread.

Defences against hostile images: only a few well-known decoders are enabled,
the pixel count is checked from the header before anything is decoded, and
thumbnails are never larger than the original (no upscaling).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

# Decoders we let Pillow use; everything else is "cannot thumbnail".
FORMATS = ("JPEG", "PNG", "GIF", "WEBP")
THUMBNAILABLE_TYPES = ("image/jpeg", "image/jpg", "image/png", "image/gif", "image/webp")
# 32 megapixels: bigger images are refused before decoding (decompression bombs).
MAX_PIXELS = 32_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

# The spec's recommended sizes; requests are rounded up to one of these.
THUMBNAIL_SIZES: tuple[tuple[int, int, str], ...] = (
    (32, 32, "crop"),
    (96, 96, "crop"),
    (320, 240, "scale"),
    (640, 480, "scale"),
    (800, 600, "scale"),
)


class ThumbnailError(Exception):
    pass


class ImageTooLarge(ThumbnailError):
    pass


@dataclass(slots=True, frozen=True)
class Thumbnail:
    data: bytes
    content_type: str
    width: int
    height: int


def choose_size(width: int, height: int, method: str) -> tuple[int, int, str]:
    """The smallest configured size covering the request, preferring the same method."""
    same = [s for s in THUMBNAIL_SIZES if s[2] == method] or list(THUMBNAIL_SIZES)
    covering = [s for s in same if s[0] >= width and s[1] >= height]
    if covering:
        return min(covering, key=lambda s: s[0] * s[1])
    # Nothing is big enough with this method: try any method before settling for the largest.
    covering = [s for s in THUMBNAIL_SIZES if s[0] >= width and s[1] >= height]
    if covering:
        return min(covering, key=lambda s: s[0] * s[1])
    return max(same, key=lambda s: s[0] * s[1])


def image_size(data_path: str) -> tuple[int, int]:
    """Dimensions read from the header only (no pixel decoding)."""
    try:
        with Image.open(data_path, formats=FORMATS) as im:
            return int(im.width), int(im.height)
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(str(e)) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ThumbnailError(str(e)) from None


def generate(data_path: str, width: int, height: int, method: str) -> Thumbnail:
    """Make a thumbnail of at most (width, height) ('scale') or exactly that aspect ('crop')."""
    try:
        with Image.open(data_path, formats=FORMATS) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ImageTooLarge("image has too many pixels")
            src_format = im.format
            if src_format == "JPEG":
                # Let the JPEG decoder downscale while decoding: far less memory and time.
                im.draft("RGB", (width, height))
            im.seek(0)
            frame = im.convert("RGBA" if _has_alpha(im) else "RGB")
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(str(e)) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ThumbnailError(str(e)) from None

    if method == "crop":
        frame = _crop(frame, width, height)
    else:
        frame.thumbnail((width, height), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if src_format == "JPEG" and frame.mode == "RGB":
        frame.save(out, "JPEG", quality=80, optimize=True)
        content_type = "image/jpeg"
    else:
        frame.save(out, "PNG", optimize=True)
        content_type = "image/png"
    return Thumbnail(out.getvalue(), content_type, frame.width, frame.height)


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)


def _crop(im: Image.Image, width: int, height: int) -> Image.Image:
    ratio = max(width / im.width, height / im.height)
    if ratio < 1:
        im = im.resize(
            (max(1, round(im.width * ratio)), max(1, round(im.height * ratio))), Image.Resampling.LANCZOS
        )
        crop_w, crop_h = min(width, im.width), min(height, im.height)
    else:
        # Never upscale: cut the largest region with the requested aspect ratio instead.
        aspect = width / height
        crop_w = min(im.width, round(im.height * aspect))
        crop_h = min(im.height, round(im.width / aspect))
    left = (im.width - crop_w) // 2
    top = (im.height - crop_h) // 2
    return im.crop((left, top, left + crop_w, top + crop_h))
