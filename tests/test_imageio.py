"""Safe image decoding: hostile files are rejected with a reason, every mode ends up RGB."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.errors import UserError
from engine.sources import imageio

pytestmark = pytest.mark.unit


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _halves(w=40, h=20) -> Image.Image:
    """Left half red, right half blue."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2 :] = (0, 0, 255)
    return Image.fromarray(arr)


def make_bad_files(root) -> dict[str, str]:
    """Write one file per hostile case; returns {file name: expected reason keyword}."""
    good = _bytes(_halves(64, 64), "JPEG", quality=95)
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "not_an_image.png").write_bytes(b"hello, I am text pretending to be a PNG\n" * 20)
    (root / "empty.jpg").write_bytes(b"")
    Image.new("1", (8000, 8000)).save(root / "bomb.png")  # 64 Mpx, a few kB on disk
    return {
        "truncated.jpg": "unreadable",
        "not_an_image.png": "not an image",
        "empty.jpg": "empty",
        "bomb.png": "bomb",
    }


def test_hostile_files_rejected_with_reason(tmp_path):
    expected = make_bad_files(tmp_path)
    for name, keyword in expected.items():
        with pytest.raises(imageio.ImageRejected) as e:
            imageio.decode_file(tmp_path / name)
        assert keyword in str(e.value), (name, str(e.value))
        assert "\n" not in str(e.value)


def test_pil_bomb_error_is_caught_beyond_our_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(imageio, "MAX_PIXELS", 10**12)  # let PIL's own guard fire
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    p = tmp_path / "big.png"
    Image.new("L", (100, 100)).save(p)  # 10,000 px > 2 * 1000: DecompressionBombError
    with pytest.raises(imageio.ImageRejected, match="bomb"):
        imageio.decode_file(p)
    Image.new("L", (40, 40)).save(p)  # 1,600 px > 1000: the warning, turned into a rejection
    with pytest.raises(imageio.ImageRejected, match="bomb"):
        imageio.decode_file(p)


def test_modes_become_rgb():
    # alpha composited on white: a fully transparent pixel becomes white
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)
    d = imageio.decode_bytes(_bytes(Image.fromarray(rgba, "RGBA"), "PNG"))
    arr = np.asarray(d.image)
    assert d.image.mode == "RGB"
    assert tuple(arr[0, 0]) == (255, 0, 0) and tuple(arr[1, 1]) == (255, 255, 255)
    # 16-bit greyscale scaled to 8 bits
    g16 = np.array([[0, 65535], [32896, 257 * 10]], np.uint16)
    d = imageio.decode_bytes(_bytes(Image.fromarray(g16), "PNG"))
    arr = np.asarray(d.image)
    assert arr[..., 0].tolist() == [[0, 255], [128, 10]]
    assert (arr[..., 0] == arr[..., 2]).all()
    # CMYK JPEG
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red in CMYK
    arr = np.asarray(imageio.decode_bytes(_bytes(cmyk, "JPEG", quality=95)).image)
    assert arr.shape == (16, 16, 3) and arr[8, 8, 0] > 200 and arr[8, 8, 1] < 60
    # palette with a transparent index
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 255, 0] + [0, 0, 0] * 255)
    p.info["transparency"] = 0
    arr = np.asarray(imageio.decode_bytes(_bytes(p, "PNG", transparency=0)).image)
    assert tuple(arr[0, 0]) == (255, 255, 255)
    # float image: min-max stretched
    f = Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], np.float32), "F")
    arr = np.asarray(imageio.decode_bytes(_bytes(f, "TIFF")).image)
    assert arr[..., 1].tolist() == [[0, 128], [255, 64]]


def test_exif_orientation_applied():
    img = _halves(40, 20)  # stored 40 wide, left red / right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    d = imageio.decode_bytes(_bytes(img, "JPEG", quality=95, exif=exif.tobytes()))
    arr = np.asarray(d.image).astype(int)
    assert d.image.size == (20, 40) and (d.width, d.height) == (20, 40)
    assert arr[5, 10, 0] > 200 and arr[5, 10, 2] < 60  # the red (left) half is now on top
    assert arr[35, 10, 2] > 200 and arr[35, 10, 0] < 60


def test_gif_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    arr = np.asarray(imageio.decode_bytes(buf.getvalue()).image).astype(int)
    assert arr[4, 4, 0] > 200 and arr[4, 4, 2] < 60


def test_discover_and_class(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "deep").mkdir()
    (tmp_path / ".hidden").mkdir()
    for p in ["top.JPG", "cats/a.png", "cats/deep/b.webp", ".hidden/c.png", "cats/notes.txt"]:
        (tmp_path / p).write_bytes(b"x")
    for ext in ["bmp", "tif", "tiff", "gif", "jpeg"]:
        (tmp_path / f"z.{ext}").write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in imageio.discover(tmp_path)]
    assert found == [
        "cats/a.png",
        "cats/deep/b.webp",
        "top.JPG",
        "z.bmp",
        "z.gif",
        "z.jpeg",
        "z.tif",
        "z.tiff",
    ]
    classes = [imageio.class_of(tmp_path / p, tmp_path) for p in found[:3]]
    assert classes == ["cats", "deep", None]


def test_load_upload_checks():
    img = imageio.load_upload(_bytes(_halves(40, 20), "PNG"))
    assert img.mode == "RGB" and img.size == (40, 20)
    with pytest.raises(UserError, match="not an image"):
        imageio.load_upload(b"definitely not an image")
    with pytest.raises(UserError, match="empty"):
        imageio.load_upload(b"")
    with pytest.raises(UserError, match="20:1"):
        imageio.load_upload(_bytes(Image.new("RGB", (420, 20)), "PNG"))


def test_thumbnail_letterboxed():
    t = imageio.thumbnail(_halves(40, 20), 16)
    assert t.shape == (16, 16, 3) and t.dtype == np.uint8
    assert t[0, 8].tolist() == [0, 0, 0]  # border rows above a 2:1 image
    assert t[8, 2, 0] > 200 and t[8, 13, 2] > 200  # red left, blue right
