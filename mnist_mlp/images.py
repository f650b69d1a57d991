"""A user's digit image (PNG, JPEG, any size, colour or grey, either polarity) prepared the way MNIST was.

MNIST digits are light ink on a black background, scaled to fit a 20×20 box with their aspect ratio
kept, and placed in a 28×28 image so that the centre of mass of the ink sits at pixel (14, 14) (the
mean over the test set: 13.99, 14.01). `prepare_digit` does the same to any greyscale picture: find
the background from the border, make the ink light on dark, stretch it to the full range, crop it,
scale it and centre it.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_mlp.errors import UserError, first_line

SIZE = 28  # MNIST images are SIZE × SIZE
BOX = 20  # the digit's longer side, in pixels
CENTRE = 14.0  # where the ink's centre of mass goes (row and column)
MIN_CONTRAST = 0.1  # ink must differ from the background by this much of the full range
NOISE_FLOOR = 0.1  # after stretching, fainter pixels are background (paper grain, JPEG ringing)
MIN_EXTENT = 0.1  # ink spanning less than this share of the picture's shorter side is a speck, not a digit
MAX_PIXELS = 50_000_000  # larger pictures are refused before decoding (a 12-megapixel photo has 12_000_000)


class ImageError(UserError):
    """One image file could not be read or holds no digit; `reason` says why, without the file name."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


class BlankImage(ValueError):
    """The picture holds no digit: nothing stands out from the background, or only a speck does."""


def load_digit(path: str | Path) -> np.ndarray:
    """Read an image file and return it prepared like MNIST: uint8 [28, 28], light ink on black."""
    path = Path(path)
    grey = to_grey(read_image(path))
    try:
        return prepare_digit(grey)
    except ValueError as exc:
        raise ImageError(path, str(exc)) from None


def digit_from_bytes(data: bytes) -> np.ndarray:
    """load_digit for an image already in memory (an upload); ValueError says what is wrong with it
    (BlankImage when it holds no digit)."""
    return prepare_digit(to_grey(decode_image(data)))


def read_image(path: Path) -> Image.Image:
    """Read and fully decode an image (upright, per its EXIF orientation), or raise ImageError."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except IsADirectoryError:
        raise ImageError(path, "is a folder, not an image file") from None
    except OSError as exc:
        raise ImageError(path, f"cannot read the file ({exc.strerror or exc})") from None
    if not data:
        raise ImageError(path, "empty file (0 bytes), not an image")
    try:
        return decode_image(data)
    except ValueError as exc:
        raise ImageError(path, str(exc)) from None


def decode_image(data: bytes) -> Image.Image:
    """Fully decode image bytes (upright, per the EXIF orientation); ValueError saying what is wrong."""
    if not data:
        raise ValueError("empty (0 bytes), not an image")
    try:
        with warnings.catch_warnings():  # Pillow warns of large pictures on the terminal; checked below instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        with image:
            size = image.size
            if size[0] * size[1] <= MAX_PIXELS:
                image.load()  # decode now: a truncated or corrupt file fails here, not later
                return ImageOps.exif_transpose(image)
    except UnidentifiedImageError:
        raise ValueError("not an image: not a format Pillow reads (expected PNG or JPEG)") from None
    except Image.DecompressionBombError:  # beyond twice Pillow's own limit it refuses before we can look
        raise ValueError(f"too large: more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels; scale it down") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # what Pillow raises for damaged files
        raise ValueError(f"damaged or truncated image ({first_line(exc)})") from None
    raise ValueError(f"too large: {size[0]}×{size[1]} pixels (at most {MAX_PIXELS:,}); scale it down")


def to_grey(image: Image.Image) -> np.ndarray:
    """Luminance in [0, 1] as float32 [H, W]; transparent pixels take the colour opposite to the ink."""
    if image.mode == "I" or image.mode.startswith("I;16"):  # 16-bit greyscale PNG: L would saturate at 255
        return np.asarray(image, np.float32) / 65535.0
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), np.float32) / 255.0
        grey = np.asarray(rgba.convert("L"), np.float32) / 255.0  # the colour, alpha ignored
        if alpha.max() == 0.0:
            return np.zeros_like(grey)  # fully transparent: blank
        # Opaque pixels carry the drawing; lay them over a background that contrasts with their mean.
        ink_is_dark = np.average(grey, weights=alpha) < 0.5
        background = 1.0 if ink_is_dark else 0.0
        return alpha * grey + (1.0 - alpha) * background
    return np.asarray(image.convert("L"), np.float32) / 255.0


def prepare_digit(grey: np.ndarray) -> np.ndarray:
    """Greyscale [H, W] in [0, 1] (either polarity) to an MNIST-like uint8 [28, 28]; BlankImage if no digit."""
    ink = light_ink_on_dark(grey)
    rows, cols = np.nonzero(ink)
    extent = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
    if extent < MIN_EXTENT * min(grey.shape):  # a dot or a stray tap, scaled up, would look like any digit
        height, width = grey.shape
        raise BlankImage(f"no digit found: only a speck of ink ({extent} px across in a {width}×{height} image)")
    digit = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    digit = fit_in_box(digit, BOX)
    return np.rint(centre_by_mass(digit, SIZE, CENTRE) * 255.0).astype(np.uint8)


def light_ink_on_dark(grey: np.ndarray) -> np.ndarray:
    """The ink's strength in [0, 1] on a 0 background, whichever way round the picture was drawn.

    The border's median brightness is the background: a light border means dark ink on light paper,
    which is inverted. Then the background maps to 0, the strongest ink to 1, and faint noise to 0.
    """
    background = float(np.median(border(grey)))
    if background > 0.5:
        grey, background = 1.0 - grey, 1.0 - background
    peak = float(grey.max())
    if peak - background < MIN_CONTRAST:
        raise BlankImage("no digit found: the image is blank (no marks that stand out from the background)")
    ink = np.clip((grey - background) / (peak - background), 0.0, 1.0)
    ink[ink < NOISE_FLOOR] = 0.0
    return ink


def border(grey: np.ndarray) -> np.ndarray:
    """The pixels of the outermost rows and columns."""
    return np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])


def fit_in_box(digit: np.ndarray, box: int) -> np.ndarray:
    """Scale so the longer side is `box` pixels, keeping the aspect ratio; ink peaks at 1 again after."""
    height, width = digit.shape
    scale = box / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL wants (width, height)
    # Bilinear (a triangle filter as wide as the scale when shrinking): smooth edges and, unlike
    # Lanczos, no ghost lines beside the strokes.
    resized = np.asarray(Image.fromarray(digit.astype(np.float32)).resize(size, Image.Resampling.BILINEAR))
    return np.minimum(resized / resized.max(), 1.0)


def centre_by_mass(digit: np.ndarray, size: int, centre: float) -> np.ndarray:
    """Paste `digit` into a size × size black image with its centre of mass at (centre, centre).

    The shift is rounded to whole pixels and held back where it would push ink past the edge (a 7's
    heavy bar would otherwise cut off its foot).
    """
    height, width = digit.shape
    mass = digit.sum()
    row_mass = float((digit.sum(axis=1) * np.arange(height)).sum() / mass)
    col_mass = float((digit.sum(axis=0) * np.arange(width)).sum() / mass)
    top = min(max(round(centre - row_mass), 0), size - height)
    left = min(max(round(centre - col_mass), 0), size - width)
    canvas = np.zeros((size, size), np.float32)
    canvas[top : top + height, left : left + width] = digit
    return canvas
