"""Decoding: every odd file of real corpora becomes RGB or a reason, never an exception."""

import glob
import io
import os

import numpy as np
import pytest

from fashion_ray.media import ERROR_REASONS, decode_image, decode_jpegs, jpeg_for_device
from helpers import ROOT, SAMPLE_CORPUS, bad_file_catalogue, scanless_jpeg

CATALOGUE = bad_file_catalogue()


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_catalogue_decodes_or_names_reason(name):
    data, expected = CATALOGUE[name]
    out = decode_image(data, max_pixels=50_000_000, max_side=None)
    assert out.error == expected, out.detail
    if expected is None:
        assert out.image.dtype == np.uint8 and out.image.ndim == 3 and out.image.shape[2] == 3
    else:
        assert out.error in ERROR_REASONS and out.detail and out.image is None


def test_exif_orientation_applied():
    out = decode_image(CATALOGUE["exif_rotated.jpg"][0], max_pixels=10**8, max_side=None)
    assert (out.width, out.height) == (48, 64)
    assert out.image.shape == (64, 48, 3)


def test_16bit_gray_keeps_its_gradient():
    img = decode_image(CATALOGUE["gray16.png"][0], max_pixels=10**8, max_side=None).image
    # the file holds a 0..65535 ramp: it must come out as a full 0..255 gray ramp, not clipped
    row = img[0, :, 0].astype(int)
    assert np.array_equal(img[..., 0], img[..., 2])
    assert row[0] == 0 and row[-1] >= 254 and (np.diff(row) >= 0).all()


def test_transparent_png_composited_on_white():
    img = decode_image(CATALOGUE["alpha.png"][0], max_pixels=10**8, max_side=None).image
    assert (img == 255).all()


def test_palette_transparency_is_composited_in_the_palette(tmp_path):
    """Every palette entry's alpha on white, as an RGBA composite gives it (it cost 1.3 GB at
    8000x8000 through RGBA): the same pixels, and the decode's peak memory bounded."""
    import subprocess
    import sys

    from PIL import Image

    rng = np.random.default_rng(3)
    indexes = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    palette = rng.integers(0, 256, 768, dtype=np.uint8)
    alpha = rng.integers(0, 256, 200, dtype=np.uint8)  # entries past 200 are opaque
    img = Image.fromarray(indexes, "P")
    img.putpalette(palette.tobytes())
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=alpha.tobytes())
    got = decode_image(buf.getvalue(), max_pixels=10**6, max_side=None).image.astype(int)
    a = np.concatenate([alpha, np.full(56, 255, np.uint8)])[indexes][..., None] / 255
    expected = np.round(palette.reshape(-1, 3)[indexes] * a + 255 * (1 - a))
    assert np.abs(got - expected).max() <= 1
    script = (
        "import resource; from fashion_ray.bench.serving import palette_png; "
        "from fashion_ray.media import decode_image; data = palette_png(8000); "
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        "image = decode_image(data, max_pixels=64_000_000, max_side=1280).image; "
        "print(image.shape, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)"
    )
    shape, peak_mb = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.rsplit(" ", 1)
    assert shape == "(1280, 1280, 3)" and int(peak_mb) < 600, peak_mb  # 1,295 MB through RGBA


def test_working_resolution_and_scale():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (400, 200), (10, 20, 30)).save(buf, format="PNG")
    out = decode_image(buf.getvalue(), max_pixels=10**8, max_side=100)
    assert out.image.shape == (50, 100, 3) and (out.width, out.height) == (400, 200) and out.scale == 0.25


def test_pixel_limit_is_checked_before_decoding():
    out = decode_image(CATALOGUE["exif_rotated.jpg"][0], max_pixels=1000, max_side=None)
    assert out.error == "too_large" and "3072" in out.detail


SAMPLE_JPEGS = sorted(glob.glob(os.path.join(SAMPLE_CORPUS, "*.jpg")))


def test_only_plain_complete_jpegs_are_left_to_the_device_decoder():
    sizes = {os.path.basename(p): jpeg_for_device(open(p, "rb").read(), 10**8) for p in SAMPLE_JPEGS}
    assert sizes == {
        "astronaut.jpg": (512, 512),
        "camera.jpg": (512, 512),  # camera.jpg is grayscale
        "grace_hopper.jpg": (512, 600),
        "two_people.jpg": (1024, 512),
    }
    for name, (data, _) in CATALOGUE.items():  # truncated, CMYK, EXIF-rotated, not JPEG: decoded on the CPU
        assert jpeg_for_device(data, 10**8) is None, name
    assert jpeg_for_device(open(SAMPLE_JPEGS[0], "rb").read(), max_pixels=512 * 512 - 1) is None
    assert jpeg_for_device(scanless_jpeg(), 10**8) == (64, 48)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("max_side", [None, 300])
def test_batched_jpeg_decode_matches_the_cpu_decoder(device, max_side):
    payloads = [open(p, "rb").read() for p in SAMPLE_JPEGS] + [scanless_jpeg()]
    images = decode_jpegs(payloads, [jpeg_for_device(data, 10**8) for data in payloads], max_side, device)
    assert images[-1] is None  # the decoder's failure on one file leaves the others decoded
    for data, image in zip(payloads, images[:-1]):
        expected = decode_image(data, max_pixels=10**8, max_side=max_side).image
        assert image.dtype == np.uint8 and image.shape == expected.shape
        difference = np.abs(image.astype(int) - expected)
        if device == "cpu":  # the same libjpeg-turbo; the resize within one level of PIL's
            assert difference.max() <= 1
        else:  # nvJPEG's IDCT and chroma upsampling differ from libjpeg's by a few levels at edges
            assert difference.mean() < 2.0
