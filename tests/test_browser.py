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
def playwright() -> Iterator[object]:
    """One Playwright driver for the module (a second sync driver cannot start beside it)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make setup does)")
    with sync_api.sync_playwright() as p:
        yield p


def launch(playwright, work: Path, video: Path):  # noqa: ANN001, ANN201 - Playwright types
    """Headless Chromium whose fake webcam plays ``video``."""
    return playwright.chromium.launch_persistent_context(
        str(work / "profile"), executable_path=str(CHROMIUM), headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--no-first-run", "--use-fake-device-for-media-stream",
              "--use-fake-ui-for-media-stream", f"--use-file-for-fake-video-capture={video}"],
        viewport={"width": 1200, "height": 900})


@pytest.fixture(scope="module")
def browser(playwright, celeba_wild: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    work = tmp_path_factory.mktemp("chromium")
    video = write_y4m(sorted((celeba_wild / "img_celeba").glob("*.jpg"))[1], work / "face.y4m")
    context = launch(playwright, work, video)
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
    page.wait_for_function(f"() => !document.querySelector('#results [data-model=\"{model_name(celeba_run)}\"]') "
                           f"&& document.querySelector('#results [data-model=\"{model_name(binary_run)}\"]')",
                           timeout=60_000)  # an arrow function: a bare expression would need eval (CSP)
    assert not errors, errors
    page.close()


def test_webcam_labels_over_live_video(browser, page_server: str, celeba_run: Path, artifacts_dir: Path) -> None:
    from facelab.predict import model_name

    page = browser.new_page()
    page.goto(page_server)
    page.wait_for_selector("#models input", timeout=30_000)
    page.click("#camera")
    page.wait_for_function("() => Number(document.querySelector('#live-labels').dataset.frames || 0) >= 3",
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


# --------------------------------------------------------------------------- face-embed, strangers

PEOPLE = [f"s{i}" for i in range(1, 7)]   # the known people (photos 1-8)
STRANGER = "s33"                          # never enrolled
BROWSER_KEY = "browser+key/42=="          # not a subprotocol token as it is: the page sends it base64url


@pytest.fixture(scope="module")
def people_run(orl_faces: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A face-embed identity model of 6 ORL people (open set: strangers are 'unknown')."""
    from facelab import people
    from facelab.data import load_source

    folder = tmp_path_factory.mktemp("browser-people")
    for name in PEOPLE:
        (folder / name).mkdir()
        for k in range(1, 9):
            (folder / name / f"{k}.pgm").symlink_to(orl_faces / name / f"{k}.pgm")
    cfg = people.FaceEmbedConfig(valid_fraction=0.25, seed=0)
    return people.train_face_embed(load_source(folder), cfg, tmp_path_factory.mktemp("runs") / "people",
                                   progress=False)


@pytest.fixture(scope="module")
def stranger_png(orl_faces: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stranger's ORL photo as PNG (PGM is not an upload format), enlarged 3x."""
    from PIL import Image

    out = tmp_path_factory.mktemp("stranger") / "stranger.png"
    img = Image.open(orl_faces / STRANGER / "1.pgm").convert("RGB")
    img.resize((img.width * 3, img.height * 3)).save(out)
    return out


@pytest.fixture(scope="module")
def people_server(people_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server([people_run], tmp_path_factory.mktemp("browser-people-serve"),
                        "--api-key", BROWSER_KEY) as url:
        yield url


@pytest.fixture(scope="module")
def stranger_browser(playwright, stranger_png: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Chromium whose fake webcam plays the stranger's photo."""
    work = tmp_path_factory.mktemp("chromium-stranger")
    context = launch(playwright, work, write_y4m(stranger_png, work / "stranger.y4m"))
    yield context
    context.close()


def test_face_embed_stranger_upload_webcam_and_errors(stranger_browser, people_server: str, people_run: Path,
                                                      stranger_png: Path, tmp_path: Path,
                                                      artifacts_dir: Path) -> None:
    """A server with an API key and a face-embed model: the page takes the key, a
    stranger's photo shows 'unknown' (a decision with no probability of its own), a
    non-image shows the server's error, starting the webcam clears the photo's results and
    keeps streaming frames of the stranger (the key goes as a WebSocket subprotocol), and
    the page never throws nor breaks its Content-Security-Policy."""
    from facelab.predict import model_name

    page = stranger_browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    page.on("console", lambda m: problems.append(f"console: {m.text}")  # e.g. a CSP violation
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    page.goto(people_server)
    page.wait_for_selector("#keybox:not([hidden])", timeout=30_000)
    page.fill("#apikey", BROWSER_KEY)
    page.click("#savekey")
    page.wait_for_selector("#models input", timeout=30_000)

    page.set_input_files("#file", str(stranger_png))
    page.wait_for_selector("#results [data-testid=unknown]", timeout=60_000)
    text = page.inner_text("#results")
    assert f"{model_name(people_run)}: unknown" in text, text
    assert page.inner_text("#status") == "1 face(s)"
    page.screenshot(path=str(artifacts_dir / "serve-stranger.png"), full_page=True)

    not_image = tmp_path / "notes.jpg"
    not_image.write_text("a text file with a photo's name")
    page.set_input_files("#file", str(not_image))
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert "not an image" in page.inner_text("#error")
    assert page.inner_text("#status") == "error"

    page.set_input_files("#file", str(stranger_png))
    page.wait_for_selector("#results .face", timeout=60_000)
    page.click("#camera")
    page.wait_for_function("() => Number(document.querySelector('#live-labels').dataset.frames || 0) >= 3",
                           timeout=90_000)
    assert page.locator("#results .face").count() == 0  # the photo's results are gone
    live = page.inner_text("#live-labels")
    assert f"{model_name(people_run)}: unknown" in live, live
    assert page.locator("#error").is_hidden()
    page.screenshot(path=str(artifacts_dir / "serve-stranger-webcam.png"))
    page.click("#camera")
    assert not problems, problems
    page.close()


def test_overlay_labels_stay_inside_the_picture(browser, page_server: str) -> None:
    """A face at the right edge: its label is drawn shifted left, not cut off."""
    page = browser.new_page()
    page.goto(page_server)
    page.wait_for_selector("#models input", timeout=30_000)
    page.evaluate("""() => {
        const c = document.querySelector('#canvas'); c.width = 300; c.height = 200;
        drawFaces(c.getContext('2d'), [{box: [250, 80, 298, 140], landmarks: [],
          predictions: {m: {probs: {Smiling: 0.9}, decision: ['Smiling'], top: 'Smiling'}}}], 1);
    }""")
    # the label (wider than the 50 px to the right edge) starts left of the box, inside the picture
    inside = page.evaluate("""() => { const c = document.querySelector('#canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, 80).data;
        let minX = c.width; for (let i = 3; i < d.length; i += 4) { if (d[i] > 0) { minX = Math.min(minX, (i >> 2) % c.width); } }
        return minX; }""")
    assert inside < 250, inside
    page.close()
