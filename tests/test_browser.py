"""The web page in a real Chromium (Playwright, /usr/bin/chromium), served by a real server:
a photo uploaded and its prediction shown; the webcam path with Chromium's fake camera
playing a real face photo, and labels drawn over the live video."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from facelab.bundle import read_bundle
from test_serve import running_server

CHROMIUM = Path("/usr/bin/chromium")


def write_y4m(photo: Path, out: Path, size: tuple[int, int] = (640, 480), frames: int = 10) -> Path:
    """A Y4M video (I420) that shows ``photo`` letterboxed into ``size`` (even sides)."""
    import cv2

    from facelab.images import read_image

    w, h = size
    rgb = read_image(photo)
    scale = min(w / rgb.shape[1], h / rgb.shape[0])
    small = cv2.resize(rgb, (int(rgb.shape[1] * scale) // 2 * 2, int(rgb.shape[0] * scale) // 2 * 2),
                       interpolation=cv2.INTER_AREA)
    canvas = np.full((h, w, 3), 40, np.uint8)
    y0, x0 = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    canvas[y0:y0 + small.shape[0], x0:x0 + small.shape[1]] = small
    yuv = cv2.cvtColor(canvas, cv2.COLOR_RGB2YUV_I420).tobytes()  # Y plane, then U, then V
    with open(out, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + yuv)
    return out


@pytest.fixture(scope="module")
def page_server(celeba_run: Path, binary_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server([celeba_run, binary_run], tmp_path_factory.mktemp("browser-serve")) as url:
        yield url


@pytest.fixture(scope="module")
def browser(celeba_wild: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make setup does)")
    work = tmp_path_factory.mktemp("chromium")
    video = write_y4m(sorted((celeba_wild / "img_celeba").glob("*.jpg"))[1], work / "face.y4m")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(work / "profile"), executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--use-fake-device-for-media-stream",
                  "--use-fake-ui-for-media-stream", f"--use-file-for-fake-video-capture={video}"],
            viewport={"width": 1200, "height": 900})
        yield context
        context.close()


def _labels(run: Path) -> list[str]:
    return list(read_bundle(run)[1]["task"]["labels"])


def test_photo_upload_shows_predictions(browser, page_server: str, celeba_run: Path, binary_run: Path,
                                        celeba_wild: Path, artifacts_dir: Path) -> None:
    from facelab.predict import model_name

    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(page_server)
    page.wait_for_selector("#models input", timeout=30_000)
    assert page.locator("#models input").count() == 2
    photo = sorted((celeba_wild / "img_celeba").glob("*.jpg"))[0]
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#results .face", timeout=60_000)
    text = page.inner_text("#results")
    assert model_name(celeba_run) in text and model_name(binary_run) in text
    assert any(label in text for label in _labels(celeba_run))
    page.screenshot(path=str(artifacts_dir / "serve-photo.png"), full_page=True)

    # only the binary model: the page asks for that one alone
    page.locator(f"#models input[value='{model_name(celeba_run)}']").uncheck()
    page.set_input_files("#file", [])
    page.set_input_files("#file", str(photo))
    page.wait_for_function(f"!document.querySelector('#results [data-model=\"{model_name(celeba_run)}\"]') "
                           f"&& document.querySelector('#results [data-model=\"{model_name(binary_run)}\"]')",
                           timeout=60_000)
    assert not errors, errors
    page.close()


def test_webcam_labels_over_live_video(browser, page_server: str, celeba_run: Path, artifacts_dir: Path) -> None:
    from facelab.predict import model_name

    page = browser.new_page()
    page.goto(page_server)
    page.wait_for_selector("#models input", timeout=30_000)
    page.click("#camera")
    page.wait_for_function("Number(document.querySelector('#live-labels').dataset.frames || 0) >= 3",
                           timeout=90_000)
    live = page.inner_text("#live-labels")
    assert model_name(celeba_run) in live, live
    assert any(label in live for label in _labels(celeba_run)), live
    assert page.locator("#video").is_visible()
    # the overlay canvas has something drawn on it (boxes and label backgrounds)
    drawn = page.evaluate("""() => { const c = document.querySelector('#canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) { if (d[i] > 0) n++; } return n; }""")
    assert drawn > 500
    page.screenshot(path=str(artifacts_dir / "serve-webcam.png"))
    page.click("#camera")  # stop
    page.close()
