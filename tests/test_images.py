"""Reading a user's digit image and preparing it like MNIST: polarity, crop, 20-pixel box, centre of mass, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnist_mlp.data import Split
from mnist_mlp.images import BOX, CENTRE, MIN_EXTENT, ImageError, digit_from_bytes, load_digit, prepare_digit, to_grey


def draw_seven(size: tuple[int, int] = (120, 160), ink: int = 0, paper: int = 255, offset=(0, 0)) -> Image.Image:
    """A thick hand-drawn-looking 7 on a (width, height) greyscale canvas."""
    image = Image.new("L", size, paper)
    dx, dy = offset
    ImageDraw.Draw(image).line([(20 + dx, 30 + dy), (90 + dx, 30 + dy), (45 + dx, 130 + dy)], fill=ink, width=12)
    return image


def bounding_box(digit: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(digit)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


def centre_of_mass(digit: np.ndarray) -> tuple[float, float]:
    d = digit.astype(np.float64)
    return (d.sum(1) * np.arange(28)).sum() / d.sum(), (d.sum(0) * np.arange(28)).sum() / d.sum()


def save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


def test_prepared_digit_is_mnist_like(tmp_path):
    zero = Image.new("L", (150, 200), 255)
    ImageDraw.Draw(zero).ellipse([30, 20, 110, 170], outline=0, width=14)
    digit = load_digit(save(zero, tmp_path / "zero.png"))
    assert digit.shape == (28, 28) and digit.dtype == np.uint8
    assert digit.max() == 255  # the strongest ink is full white, as in MNIST
    assert digit[:3].max() == digit[-3:].max() == digit[:, :3].max() == digit[:, -3:].max() == 0  # black margin
    assert max(bounding_box(digit)) == BOX  # the longer side fills the 20-pixel box
    row, col = centre_of_mass(digit)
    assert abs(row - CENTRE) <= 0.5 and abs(col - CENTRE) <= 0.5  # whole-pixel shift: within half a pixel


def test_centring_never_cuts_ink_off(tmp_path):
    """A 7's heavy bar puts its centre of mass high: the full shift would push its foot out of the frame."""
    digit = load_digit(save(draw_seven(), tmp_path / "seven.png"))
    assert bounding_box(digit)[0] == BOX  # all 20 rows of the digit are still there
    assert centre_of_mass(digit)[0] > CENTRE - 3  # and it is still moved towards the centre


def test_either_polarity_gives_the_same_digit(tmp_path):
    dark_on_light = load_digit(save(draw_seven(ink=0, paper=255), tmp_path / "a.png"))
    light_on_dark = load_digit(save(draw_seven(ink=255, paper=0), tmp_path / "b.png"))
    np.testing.assert_array_equal(dark_on_light, light_on_dark)


def test_position_size_and_colour_do_not_matter(tmp_path):
    reference = load_digit(save(draw_seven(), tmp_path / "ref.png"))
    # The same drawing off-centre on a canvas twice as big, in blue ink on cream paper.
    big = draw_seven(size=(400, 300), offset=(250, 120))
    rgb = Image.merge("RGB", [big.point(lambda v: 20 + v * 230 // 255), big.point(lambda v: 30 + v * 205 // 255),
                              big.point(lambda v: 140 + v * 40 // 255)])  # fmt: skip
    moved = load_digit(save(rgb, tmp_path / "moved.png"))
    assert np.abs(moved.astype(int) - reference.astype(int)).mean() < 3  # same shape, up to contrast rounding


def test_aspect_ratio_is_kept(tmp_path):
    bar = Image.new("L", (50, 200), 255)
    ImageDraw.Draw(bar).rectangle([20, 20, 29, 179], fill=0)  # a 10 × 160 stroke: a "1"
    height, width = bounding_box(load_digit(save(bar, tmp_path / "one.png")))
    assert height == BOX and width <= 3  # 10/160 of 20 pixels, plus resampling fringe


def test_transparent_background_is_paper(tmp_path):
    seven = draw_seven()
    reference = load_digit(save(seven, tmp_path / "ref.png"))
    alpha = seven.point(lambda v: 255 - v)  # opaque where the ink is
    black_ink = Image.merge("LA", [Image.new("L", seven.size, 0), alpha])
    white_ink = Image.merge("LA", [Image.new("L", seven.size, 255), alpha])
    np.testing.assert_array_equal(load_digit(save(black_ink, tmp_path / "black.png")), reference)
    np.testing.assert_array_equal(load_digit(save(white_ink, tmp_path / "white.png")), reference)


def test_exif_orientation_is_applied(tmp_path):
    upright = draw_seven(size=(120, 160))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": the stored pixels are turned the other way
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    from_camera = load_digit(save(stored, tmp_path / "photo.jpg", exif=exif, quality=95))
    reference = load_digit(save(upright, tmp_path / "ref.jpg", quality=95))
    assert np.abs(from_camera.astype(int) - reference.astype(int)).mean() < 3


def test_grey_levels_are_luminance_in_unit_interval():
    grey = to_grey(Image.new("RGB", (3, 2), (255, 255, 255)))
    assert grey.shape == (2, 3) and grey.dtype == np.float32 and np.all(grey == 1.0)


def test_sixteen_bit_greyscale_keeps_its_range(tmp_path):
    eight_bit = np.asarray(draw_seven(), np.uint16)
    Image.fromarray(eight_bit * 257).save(tmp_path / "deep.png")  # 0..65535
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    reference = load_digit(save(draw_seven(), tmp_path / "ref.png"))
    np.testing.assert_array_equal(load_digit(tmp_path / "deep.png"), reference)


def test_real_mnist_digits_are_left_almost_unchanged(mnist_splits: tuple[Split, Split]):
    """MNIST digits are already prepared: doing it again changes few pixels (resampling of the 20-pixel box)."""
    test = mnist_splits[1]
    same = [np.mean(prepare_digit(image / 255.0) == image) for image in test.images[:200]]
    close = [np.abs(prepare_digit(image / 255.0).astype(int) - image).mean() for image in test.images[:200]]
    assert np.mean(same) > 0.9, np.mean(same)  # measured 0.965 over 500 digits
    assert np.mean(close) < 5, np.mean(close)  # mean absolute change in grey levels (of 255)


def dot(size: int, diameter: int) -> Image.Image:
    """A round dot of ink in the middle of a size × size white page: what a tap leaves on a drawing pad."""
    image = Image.new("L", (size, size), 255)
    low = (size - diameter) // 2
    ImageDraw.Draw(image).ellipse([low, low, low + diameter, low + diameter], fill=0)
    return image


def test_a_short_stroke_is_a_digit_where_a_dot_is_a_speck():
    """The speck rule looks at the ink's extent against the picture's shorter side, whatever its resolution."""
    for size in (28, 280, 2800):
        shortest = int(np.ceil(MIN_EXTENT * size))
        stroke = Image.new("L", (size, size), 0)
        ImageDraw.Draw(stroke).line([(size // 2, size // 4), (size // 2, size // 4 + shortest - 1)], fill=255)
        assert prepare_digit(np.asarray(stroke) / 255.0).max() == 255  # a 1, however short, is read
        with pytest.raises(ValueError, match="only a speck"):
            prepare_digit(np.asarray(dot(size, max(1, shortest - 2))) / 255.0)


def test_a_dot_is_reported_as_a_speck(tmp_path):
    path = save(dot(280, 20), tmp_path / "tap.png")
    with pytest.raises(
        ImageError, match=r"tap.png: no digit found: only a speck of ink \(21 px across in a 280×280 image\)"
    ):
        load_digit(path)


def test_bytes_in_memory_are_prepared_like_the_same_file(tmp_path):
    path = save(draw_seven(), tmp_path / "seven.png")
    np.testing.assert_array_equal(digit_from_bytes(path.read_bytes()), load_digit(path))
    with pytest.raises(ValueError, match="not an image"):
        digit_from_bytes(b"plain text")


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def truncated(path: Path, image: Image.Image, fmt: str) -> Path:
    save(image, path, format=fmt)
    return write_bytes(path, path.read_bytes()[: len(path.read_bytes()) // 2])


@pytest.mark.parametrize(
    "make, says",
    [
        (lambda d: d / "missing.png", "no such file"),
        (lambda d: d, "is a folder"),
        (lambda d: write_bytes(d / "empty.png", b""), "empty file (0 bytes)"),
        (lambda d: write_bytes(d / "notes.png", b"not a picture, just text\n"), "not an image"),
        (lambda d: truncated(d / "cut.png", draw_seven(), "PNG"), "damaged or truncated image"),
        (lambda d: truncated(d / "cut.jpg", draw_seven(), "JPEG"), "damaged or truncated image"),
        (lambda d: save(Image.new("L", (50, 50), 255), d / "white.png"), "no digit found"),
        (lambda d: save(Image.new("RGB", (50, 50), (0, 0, 0)), d / "black.png"), "no digit found"),
        (lambda d: save(Image.new("RGBA", (50, 50), (0, 0, 0, 0)), d / "clear.png"), "no digit found"),
        (lambda d: save(draw_seven(ink=240, paper=250), d / "faint.png"), "no digit found"),  # 4% contrast
    ],
    ids=["missing", "folder", "empty", "text", "truncated-png", "truncated-jpeg", "white", "black", "clear", "faint"],
)
def test_bad_images_get_a_message_naming_the_file(tmp_path, make, says):
    path = make(tmp_path)
    with pytest.raises(ImageError) as caught:
        load_digit(path)
    assert says in caught.value.reason
    assert str(caught.value) == f"{path}: {caught.value.reason}" and "\n" not in str(caught.value)


def test_a_huge_image_is_refused_in_one_line_without_pillow_warnings(tmp_path, monkeypatch, recwarn):
    from mnist_mlp import images

    Image.new("L", (300, 200), 255).save(tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 50_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000)  # 60,000 pixels: Pillow would warn (up to 80,000)
    with pytest.raises(ImageError, match="too large: 300×200 pixels"):
        load_digit(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # beyond twice its limit Pillow refuses by itself
    with pytest.raises(ImageError, match="too large: more than 40,000 pixels"):
        load_digit(tmp_path / "big.png")
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_a_real_huge_image_is_refused(tmp_path):
    Image.new("1", (10000, 9000), 1).save(tmp_path / "huge.png")  # 90 megapixels, a few kB as a file
    with pytest.raises(ImageError, match="too large: 10000×9000 pixels"):
        load_digit(tmp_path / "huge.png")
