"""Image decoding on real photographs (shipped with matplotlib) in varied modes, formats,
sizes and EXIF orientations."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datadream.config import DataConfig
from datadream.data.fewshot import build_manifest
from datadream.data.images import list_images, load_rgb


def sample_photo(name: str) -> Path:
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        pytest.skip("matplotlib (a test extra) is not installed")
    path = Path(spec.origin).parent / "mpl-data" / "sample_data" / name
    if not path.is_file():
        pytest.skip(f"{name} not shipped by this matplotlib")
    return path


@pytest.fixture()
def photo() -> Image.Image:
    with Image.open(sample_photo("grace_hopper.jpg")) as image:
        return image.convert("RGB")


def with_orientation(image: Image.Image, orientation: int, path: Path) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes())
    return path


def test_exif_orientation_is_applied(tmp_path, photo):
    # Orientation 6: the stored pixels must be rotated 90° clockwise to be upright.
    stored = photo.transpose(Image.Transpose.ROTATE_90)
    path = with_orientation(stored, 6, tmp_path / "rotated.jpg")
    loaded = load_rgb(path)
    assert loaded.size == photo.size
    reference = load_rgb(with_orientation(photo, 1, tmp_path / "upright.jpg"))
    diff = sum(abs(a - b) for a, b in zip(loaded.resize((16, 16)).tobytes(), reference.resize((16, 16)).tobytes()))
    assert diff / (16 * 16 * 3) < 12  # same picture, up to JPEG re-encoding


@pytest.mark.parametrize(
    "mode, fmt",
    [("RGB", "JPEG"), ("L", "PNG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("P", "GIF"),
     ("RGB", "WEBP"), ("RGB", "BMP"), ("RGB", "TIFF"), ("I;16", "PNG"), ("LA", "PNG")],
)
def test_every_mode_and_format_becomes_rgb(tmp_path, photo, mode, fmt):
    image = photo.resize((61, 47))  # odd sizes on purpose
    if mode == "I;16":  # 16-bit greyscale, using the full 16-bit range
        image = Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257)
    else:
        image = image.convert(mode)
    path = tmp_path / f"photo.{fmt.lower()}"
    image.save(path, format=fmt)
    loaded = load_rgb(path)
    assert loaded.mode == "RGB" and loaded.size == (61, 47)
    assert len(set(loaded.getdata())) > 10, "picture content lost in conversion"


def test_transparent_pixels_become_white(tmp_path):
    path = sample_photo("Minduka_Present_Blue_Pack.png")
    with Image.open(path) as original:
        assert "A" in original.getbands() or "transparency" in original.info
        alpha = original.convert("RGBA").getchannel("A")
    loaded = load_rgb(path)
    transparent = [i for i, a in enumerate(alpha.getdata()) if a == 0]
    assert transparent, "sample has no transparent pixel"
    assert all(loaded.getdata()[i] == (255, 255, 255) for i in transparent[:200])


def test_mixed_real_folder_builds_a_manifest(tmp_path, photo):
    cls = tmp_path / "train" / "person"
    cls.mkdir(parents=True)
    photo.save(cls / "a.jpg")
    photo.convert("CMYK").save(cls / "b.jpeg")
    photo.convert("RGBA").save(cls / "c.PNG")  # upper-case extension
    with_orientation(photo.transpose(Image.Transpose.ROTATE_270), 8, cls / "d.jpg")
    (cls / "notes.txt").write_text("not an image")
    (cls / ".hidden.jpg").write_bytes(b"junk")
    assert [p.name for p in list_images(cls)] == ["a.jpg", "b.jpeg", "c.PNG", "d.jpg"]
    manifest = build_manifest(DataConfig(train=str(tmp_path / "train"), shots=4))
    assert len(manifest.classes[0].images) == 4
