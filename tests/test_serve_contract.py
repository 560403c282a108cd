"""The HTTP contract of ``facelab serve``, in-process: FastAPI's TestClient against the real
app (routes, key checks, upload limits, error answers, middleware) with the model service
replaced through ``app.dependency_overrides`` by :class:`FakeModels`: uploads are decoded
for real (the server's format allow-list and pixel cap), then every photo gets one face with
fixed probabilities. No server process, no model: what needs a real uvicorn (connection
guard, workers, busy, timeouts dropping batched work, the browser) is in test_serve.py,
test_serve_attack.py and test_browser.py."""
from __future__ import annotations

import asyncio
import io
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest
from PIL import Image

from facelab.serve.app import create_app
from facelab.serve.batching import MicroBatcher
from facelab.serve.errors import image_error
from facelab.serve.routes import get_service
from facelab.serve.service import LoadedModel, Service
from facelab.serve.settings import ServeConfig

KEY = "contract-key-1"
HEADERS = {"X-API-Key": KEY}
NAMES = ("smiling", "glasses")
PROBS = {"smiling": {"no": 0.25, "yes": 0.75}, "glasses": {"no": 0.9, "yes": 0.1}}
LIMIT = 200_000


class FakeModel(LoadedModel):
    """A loaded model without a predictor: ``info`` says what a real one would."""

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "backend": "fake", "labels": list(PROBS[self.name]),
                "batching": self.batcher.stats.to_dict()}


class FakeModels(Service):
    """The model service: real decoding of the upload, then one face with fixed probabilities
    per selected model. ``fail`` / ``delay`` make it raise a bug / take that long."""

    def __init__(self, config: ServeConfig) -> None:
        super().__init__(config)
        self.form_pool = ThreadPoolExecutor(2, thread_name_prefix="test-form")
        self.models = {n: FakeModel(n, f"runs/{n}", None, MicroBatcher(list), "d") for n in NAMES}
        self.fail, self.delay = False, 0.0

    async def analyse(self, data: bytes, models: list[LoadedModel]) -> dict[str, Any]:
        from facelab.images import UPLOAD_FORMATS, ImageError, decode_image

        if self.fail:
            raise RuntimeError("a bug in the model service")
        await asyncio.sleep(self.delay)
        try:
            rgb = decode_image(data, "upload", self.config.max_pixels, formats=UPLOAD_FORMATS)
        except ImageError as exc:
            raise image_error(exc) from None
        h, w = rgb.shape[:2]
        return {"width": w, "height": h, "models": [m.name for m in models],
                "faces": [{"box": [0, 0, w, h], "predictions": {m.name: {"probs": PROBS[m.name]} for m in models}}]}


@pytest.fixture(scope="module")
def photo(celeba_wild: Path) -> bytes:
    """The smallest real photo of the set."""
    return min((celeba_wild / "img_celeba").glob("*.jpg"), key=lambda p: p.stat().st_size).read_bytes()


@pytest.fixture
def fake() -> FakeModels:
    return FakeModels(ServeConfig(runs=NAMES))


def _client(fake: FakeModels, **settings: Any) -> Any:
    from fastapi.testclient import TestClient

    config = ServeConfig(runs=NAMES, api_key=KEY, max_upload_mb=LIMIT / 2**20, max_megapixels=1.0,
                         max_form_parts=4, max_part_header_bytes=1024, **settings)
    fake.config = config
    app = create_app(config)
    app.dependency_overrides[get_service] = lambda: fake
    # no `with`: the lifespan (which loads the real models) does not run
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client(fake: FakeModels) -> Iterator[Any]:
    yield _client(fake)


def _error(r: Any, status: int, code: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json", r.headers
    error = r.json()["error"]
    assert error["code"] == code and error["message"], error
    return str(error["message"])


def _predictions(*names: str) -> dict[str, Any]:
    return {n: {"probs": PROBS[n]} for n in names}


def _form(data: bytes, name: str = "image") -> dict[str, Any]:
    return {"files": {name: ("photo.jpg", data, "image/jpeg")}}


# --------------------------------------------------------------------------- auth

def test_healthz_needs_no_key(client: Any) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert r.json()["models"] == list(NAMES) and set(r.json()["batching"]) == set(NAMES)


def test_api_needs_the_key_in_a_header(client: Any, photo: bytes) -> None:
    for path, kw in (("/api/models", {}), ("/api/predict", _form(photo))):
        call = client.get if path == "/api/models" else client.post
        _error(call(path, **kw), 401, "unauthorized")
        _error(call(path, headers={"X-API-Key": "guess"}, **kw), 401, "unauthorized")
        message = _error(call(f"{path}?api_key={KEY}", **kw), 401, "unauthorized")
        assert "must not be in the URL" in message
        # even with the right header: a URL with the key is refused, not served
        _error(call(f"{path}?api_key={KEY}", headers=HEADERS, **kw), 401, "unauthorized")
        assert call(path, headers=HEADERS, **kw).status_code == 200
        assert call(path, headers={"Authorization": f"Bearer {KEY}"}, **kw).status_code == 200


def test_websocket_key_and_messages(client: Any, photo: bytes) -> None:
    from starlette.websockets import WebSocketDisconnect

    with client.websocket_connect("/api/stream") as ws:
        assert ws.receive_json()["error"]["code"] == "unauthorized"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1008
    with client.websocket_connect(f"/api/stream?api_key={KEY}", headers=HEADERS) as ws:
        assert "must not be in the URL" in ws.receive_json()["error"]["message"]
    with client.websocket_connect("/api/stream?models=glasses", headers=HEADERS) as ws:
        ws.send_bytes(photo)
        assert list(ws.receive_json()["faces"][0]["predictions"]) == ["glasses"]
        ws.send_text('{"models": ["nobody"]}')
        assert ws.receive_json()["error"]["code"] == "unknown_model"
        ws.send_text("not json")
        assert ws.receive_json()["error"]["code"] == "bad_message"
        ws.send_text('{"models": "smiling"}')
        assert ws.receive_json() == {"models": ["smiling"]}
        ws.send_bytes(b"not a photo")
        assert ws.receive_json()["error"]["code"] == "not_an_image"
        ws.send_bytes(photo + os.urandom(LIMIT))
        assert f"limit of {LIMIT} bytes" in ws.receive_json()["error"]["message"]
        ws.send_bytes(photo)  # the stream goes on after bad frames
        assert ws.receive_json()["faces"][0]["predictions"] == _predictions("smiling")


# --------------------------------------------------------------------------- models

def test_models_and_choosing_them_by_name(client: Any, photo: bytes) -> None:
    models = client.get("/api/models", headers=HEADERS).json()["models"]
    assert [m["name"] for m in models] == list(NAMES)
    assert all("run" not in m for m in models)  # no server paths
    both = client.post("/api/predict", headers=HEADERS, **_form(photo)).json()
    assert both["models"] == list(NAMES) and both["faces"][0]["predictions"] == _predictions(*NAMES)
    one = client.post("/api/predict", params={"models": "glasses"}, headers=HEADERS, **_form(photo)).json()
    assert one["models"] == ["glasses"] and one["faces"][0]["predictions"] == _predictions("glasses")
    raw = client.post("/api/predict", params={"models": "smiling"}, content=photo,
                      headers={**HEADERS, "Content-Type": "image/jpeg"})
    assert raw.status_code == 200 and raw.json()["models"] == ["smiling"]
    assert (raw.json()["height"], raw.json()["width"]) == Image.open(io.BytesIO(photo)).size[::-1]
    message = _error(client.post("/api/predict", params={"models": "glasses,nobody"}, headers=HEADERS,
                                 **_form(photo)), 404, "unknown_model")
    assert "nobody" in message and all(n in message for n in NAMES)


# --------------------------------------------------------------------------- limits and errors

def _encoded(photo: bytes, fmt: str, size: tuple[int, int] = (200, 160), **save: Any) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(photo)).convert("RGB").resize(size).save(out, fmt, **save)
    return out.getvalue()


def test_bad_uploads_get_json_errors_and_nothing_touches_the_disk(
        client: Any, photo: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    post = lambda **kw: client.post("/api/predict", headers={**HEADERS, **kw.pop("headers", {})}, **kw)  # noqa: E731
    parts = b"".join(b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\ny\r\n' for _ in range(6)) + b"--b--\r\n"
    big_head = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\nX-Pad: ' + b"p" * 2000 +
                b"\r\n\r\n" + photo + b"\r\n--b--\r\n")
    cases = {
        "not an image": (post(**_form(b"GIF89a? no, just text")), 415, "not_an_image"),
        "TIFF": (post(**_form(_encoded(photo, "TIFF"))), 415, "unsupported_format"),
        "truncated": (post(**_form(photo[: len(photo) // 3])), 400, "bad_image"),
        "too many bytes (form)": (post(**_form(photo + os.urandom(LIMIT))), 413, "upload_too_large"),
        "too many bytes (raw)": (post(content=os.urandom(LIMIT + 1), headers={"Content-Type": "image/jpeg"}),
                                 413, "upload_too_large"),
        "too many pixels": (post(**_form(_encoded(photo, "JPEG", (1200, 1000), quality=20))), 413, "image_too_large"),
        "form without a file": (post(files={"note": (None, "no file")}), 400, "missing_image"),
        "empty body": (post(content=b"", headers={"Content-Type": "image/jpeg"}), 400, "missing_image"),
        "form without a boundary": (post(content=b"x", headers={"Content-Type": "multipart/form-data"}),
                                    400, "bad_form"),
        "too many parts": (post(content=parts, headers={"Content-Type": "multipart/form-data; boundary=b"}),
                           413, "too_many_parts"),
        "huge part headers": (post(content=big_head, headers={"Content-Type": "multipart/form-data; boundary=b"}),
                              413, "part_header_too_large"),
    }
    for what, (r, status, code) in cases.items():
        message = _error(r, status, code)
        if status == 415:
            assert "JPEG, PNG, WebP, BMP or GIF" in message, what
        if code == "upload_too_large":
            assert f"limit of {LIMIT} bytes" in message, what
    assert post(**_form(_encoded(photo, "PNG"))).status_code == 200  # allow-listed formats pass
    assert not list(spool.iterdir()), "an upload was written to disk"


def test_server_errors_and_unknown_routes_are_json(fake: FakeModels, photo: bytes) -> None:
    client = _client(fake, request_timeout=0.2)
    _error(client.get("/no/such/page"), 404, "http_error")
    _error(client.put("/api/predict", headers=HEADERS), 405, "http_error")
    fake.delay = 1.0
    assert "--timeout" in _error(client.post("/api/predict", headers=HEADERS, **_form(photo)), 504, "timeout")
    fake.delay, fake.fail = 0.0, True
    message = _error(client.post("/api/predict", headers=HEADERS, **_form(photo)), 500, "internal_error")
    assert "bug" not in message  # the exception's text stays in the server's log


def test_page_docs_and_security_headers(client: Any) -> None:
    for path in ("/", "/docs", "/healthz", "/api/models", "/static/app.js"):
        r = client.get(path, headers=HEADERS)
        assert r.status_code == 200, path
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert client.get("/api/models", headers=HEADERS).headers["cache-control"] == "no-store"
    assert client.get("/").headers["content-type"].startswith("text/html")
    docs = client.get("/docs").text
    assert "/api/predict" in docs and "<script" not in docs
    assert "/api/predict" in client.get("/openapi.json").json()["paths"]


# --------------------------------------------------------------------------- settings

def test_settings_from_the_environment_and_the_key_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """FACELAB_<SETTING> variables set what is not given; what a --workers process reads back
    (ServeConfig.to_env) is the same settings with the key as a salted digest only."""
    from facelab.errors import ConfigError

    monkeypatch.setenv("FACELAB_MAX_BATCH", "5")
    monkeypatch.setenv("FACELAB_API_KEY", KEY)
    config = ServeConfig(runs=NAMES, cors_origins=("https://example.org",))
    key = config.key()
    assert config.max_batch == 5 and key is not None and key.matches(KEY)
    assert KEY not in repr(config) and KEY not in str(config)
    env = config.to_env()
    assert KEY not in "".join(env.values()) and "FACELAB_API_KEY" not in env and env["FACELAB_API_KEY_DIGEST"]
    monkeypatch.delenv("FACELAB_API_KEY")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    worker = ServeConfig()
    assert worker.model_dump(exclude={"api_key", "api_key_digest"}) == config.model_dump(exclude={"api_key",
                                                                                                 "api_key_digest"})
    worker_key = worker.key()
    assert worker_key is not None and worker_key.matches(KEY) and not worker_key.matches("guess")
    with pytest.raises(ConfigError, match="API key is empty"):
        ServeConfig(runs=NAMES, api_key=" ")
    monkeypatch.setenv("FACELAB_MAX_BATCH", "many")
    with pytest.raises(ConfigError, match="max_batch"):
        ServeConfig()


def test_cli_options_are_the_settings_and_only_given_ones_beat_the_environment(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`facelab serve`'s options are ServeConfig's and ServerOptions' fields: an option given
    wins over FACELAB_<SETTING>, which wins over the default; the old flag names and units
    still work (--max-upload-mb, --timeout, --max-connections, repeated --cors-origin)."""
    from typer.testing import CliRunner

    import facelab.cli.serve_command as serve_command
    from facelab.cli import app
    from facelab.errors import ConfigError, NotFound

    started: list[tuple[ServeConfig, Any]] = []
    monkeypatch.setattr(serve_command, "serve", lambda config, server: started.append((config, server)))
    run = tmp_path / "run"
    run.mkdir()
    (run / "bundle.json").write_text("{}")  # all the CLI checks before the server starts
    monkeypatch.setenv("FACELAB_MAX_BATCH", "5")
    monkeypatch.setenv("FACELAB_MAX_FACES", "3")
    monkeypatch.delenv("FACELAB_API_KEY", raising=False)
    args = ["serve", str(run), "--max-faces", "7", "--max-upload-mb", "2", "--timeout", "3", "--max-connections",
            "9", "--cors-origin", "https://a.example", "--cors-origin", "https://b.example", "--port", "8123",
            "--workers", "2", "--all-faces"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (config, server), = started
    assert config.runs == (str(run),) and config.max_batch == 5 and config.max_faces == 7
    assert config.max_upload_bytes == 2 * 2**20 and config.request_timeout == 3 and config.max_in_flight == 9
    assert config.cors_origins == ("https://a.example", "https://b.example") and config.all_faces
    assert config.max_wait_ms == ServeConfig.model_fields["max_wait_ms"].default and config.key() is None
    assert (server.port, server.workers, server.host) == (8123, 2, "127.0.0.1")

    # (the errors' one-line exit 2 is facelab.cli.main's; test_serve_attack runs the real command)
    monkeypatch.setenv("FACELAB_API_KEY", "")
    result = CliRunner().invoke(app, ["serve", str(run)])
    assert isinstance(result.exception, ConfigError) and "API key is empty" in str(result.exception)
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "nothing")])
    assert isinstance(result.exception, NotFound) and "no bundle.json" in str(result.exception)
    assert len(started) == 1
