"""Reading images from user folders: listing, hashing, and decoding to RGB the same way in
every stage (EXIF orientation applied, any PIL mode converted)."""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from datadream.errors import UserError

log = logging.getLogger(__name__)

# No stage needs more than this many pixels on an image's shorter side (adaptation crops 512,
# the classifier 224): a larger image is decoded at a reduced size (JPEG: by the decoder itself,
# without ever holding the full image), so a 120-megapixel shot costs tens of MB, not 1.4 GB.
LARGE_PIXELS = 40_000_000
KEEP_SHORT_SIDE = 2048
_reported: set[str] = set()

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder` (recursively), hidden entries skipped, in a stable order."""
    found = [
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_rgb(path: Path, sha256: str | None = None) -> Image.Image:
    """Decode, apply the EXIF orientation, and convert to 8-bit RGB. Transparent pixels are
    composited on white (dropping alpha would expose whatever colour they happen to hold). With
    `sha256`, the bytes decoded are the bytes checked: a file changed since it was recorded is an
    error, not a silent input."""
    try:
        source = path
        if sha256 is not None:
            data = Path(path).read_bytes()
            if hashlib.sha256(data).hexdigest() != sha256:
                raise UserError(f"image {path} differs from the sha256 recorded for it (changed or damaged since it"
                                " was written); restore it, or for a synthetic image delete it and run"
                                " `datadream synthesize RUN` to generate it again")
            source = io.BytesIO(data)
        with warnings.catch_warnings():
            # Large images are handled below; PIL's warning would only repeat itself per read.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as opened:
                original = opened.size
                factor = _reduction(original)
                if factor > 1 and opened.format == "JPEG":
                    opened.draft(opened.mode, (original[0] // factor, original[1] // factor))
                opened.load()
                left = round(opened.width * factor / original[0])  # what the decoder did not reduce
                image = opened
                if left > 1:
                    image = opened.reduce(left)
                    image.info["exif"] = opened.getexif().tobytes()  # the orientation is applied below
                image = ImageOps.exif_transpose(image)
        if factor > 1 and str(path) not in _reported:
            _reported.add(str(path))
            log.warning("%s is %dx%d pixels: decoded at 1/%d of that (no stage needs more)", path, *original, factor)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"unreadable image {path}: {err}; replace or remove the file") from None
    return to_rgb(image)


def _reduction(size: tuple[int, int]) -> int:
    """The power-of-two reduction (1 for ordinary images) that keeps the shorter side at least
    KEEP_SHORT_SIDE pixels."""
    width, height = size
    factor = 1
    if width * height <= LARGE_PIXELS:
        return factor
    while min(width, height) // (factor * 2) >= KEEP_SHORT_SIDE and factor < 8:
        factor *= 2
    return factor


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in {"I", "I;16", "I;16B", "I;16L", "F"}:
        # 16-bit and float greyscale: rescale to 8 bits instead of clipping at 255.
        image = image.convert("F")
        low, high = image.getextrema()
        scale = 255.0 / (high - low) if high > low else 0.0
        image = image.point(lambda v: (v - low) * scale).convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")
