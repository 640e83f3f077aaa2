"""The report in a real browser: headless Chromium opens the file, decodes the plots, shows the tables.

The page carries a small script that, on load, writes each image's decoded size into
`data-natural-width`/`data-natural-height` and the number of decoded images into
`<body data-images-decoded>`; `chromium --dump-dom` prints the DOM after that ran, so the test
reads what the browser decoded without injecting anything. A screenshot checks the page is painted
(not blank) with the variants' plot colours in it. Chromium must be installed (.ci/run does it):
if it is missing these tests fail, they do not skip.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

import pytest
from report_support import BENCH_JSON, SWEEP_DIR, image_pngs, outline, png_size

from kaiser.report import load, render
from kaiser.report.plots import Figure, colour

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Headless, as root, on a machine without network: no sandbox, no GPU, nothing in the background.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
)
_profiles = itertools.count()


def chromium() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        f"headless Chromium not found (looked for {', '.join(BROWSERS)}): the report's browser test needs it; "
        "`make test` installs Debian's `chromium` (python3 src/kaiser/systools.py test)",
        pytrace=False,
    )


def browse(tmp_path: Path, page: Path, *args: str) -> str:
    """Run Chromium on `page` with a fresh profile; its stdout."""
    profile = tmp_path / f"profile-{next(_profiles)}"
    cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, f"{' '.join(cmd)}: exit {done.returncode}\n{done.stderr[-2000:]}"
    return done.stdout


def dump_dom(tmp_path: Path, page: Path) -> str:
    # The virtual-time budget lets the load event (and our script) run before the DOM is printed.
    dom = browse(tmp_path, page, "--virtual-time-budget=5000", "--dump-dom")
    assert "<body" in dom, dom[:500]
    return dom


def write_page(tmp_path: Path, name: str, html: str) -> Path:
    path = tmp_path / name
    path.write_text(html, encoding="utf-8")
    return path


def assert_images_decoded(dom: str, expected: int) -> None:
    o = outline(dom)
    assert o.body_attrs.get("data-images") == str(expected), o.body_attrs
    assert o.body_attrs.get("data-images-decoded") == str(expected), o.body_attrs
    for img, png in zip(o.images, image_pngs(o), strict=True):
        width, height = png_size(png)
        assert img["data-natural-width"] == str(width) and img["data-natural-height"] == str(height), img["alt"]


@pytest.fixture(scope="module")
def bench_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bench-report")
    return write_page(tmp, "report.html", render(load(BENCH_JSON)))


def test_bench_report_in_chromium(tmp_path: Path, bench_page: Path) -> None:
    dom = dump_dom(tmp_path, bench_page)
    assert_images_decoded(dom, 3)
    o = outline(dom)
    assert len(o.tables["runs"]) == 8 and len(o.tables["per-syscall"]) == 6 and len(o.tables["params"]) == 15
    assert o.tables["runs"][0][:2] == ["nopti", "on"]
    assert "How to read this" in " ".join(o.text)


def test_sweep_report_in_chromium(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    shutil.copytree(SWEEP_DIR, out)
    page = write_page(tmp_path, "sweep.html", render(load(out)))
    dom = dump_dom(tmp_path, page)
    assert_images_decoded(dom, 4)
    o = outline(dom)
    assert len(o.tables["configurations"]) == 24 and len(o.tables["summary"]) == 8


def test_a_broken_image_is_seen_as_broken(tmp_path: Path) -> None:
    """The check above can fail: an image that does not decode reports naturalWidth 0."""
    res = load(BENCH_JSON)
    good = Figure("good", "good", "a real plot", render_one_png())
    bad = Figure("bad", "bad", "not a PNG", b"\x89PNG\r\n\x1a\n broken")
    dom = dump_dom(tmp_path, write_page(tmp_path, "broken.html", render(res, figs=[good, bad])))
    o = outline(dom)
    assert o.body_attrs["data-images"] == "2" and o.body_attrs["data-images-decoded"] == "1"
    widths = {img["alt"]: img["data-natural-width"] for img in o.images}
    assert widths["bad"] == "0" and int(widths["good"]) > 0


def render_one_png() -> bytes:
    from kaiser.report.plots import variant_bars

    fig = variant_bars(load(BENCH_JSON))
    assert fig is not None
    return fig.png


def test_screenshot_is_painted(tmp_path: Path, bench_page: Path) -> None:
    import numpy as np
    from PIL import Image

    shot = tmp_path / "report.png"
    browse(tmp_path, bench_page, "--window-size=1280,2200", f"--screenshot={shot}")
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    assert pixels.shape == (2200, 1280, 3)
    white = np.count_nonzero(pixels.min(axis=2) > 245)
    assert white < 0.95 * pixels.shape[0] * pixels.shape[1], "the page is (almost) blank"

    def near(hex_colour: str) -> int:
        want = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
        return int(np.count_nonzero(np.abs(pixels - want).sum(axis=2) < 30))

    # the plots' lines and bars, in the variants' colours
    for variant in ("linux", "kaiser-rfc", "fixed-trampoline"):
        assert near(colour(variant)) > 2000, variant
