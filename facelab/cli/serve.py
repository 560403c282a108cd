"""CLI commands of the serve stage (see facelab/serve/)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from facelab.errors import ConfigError


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app`."""
    app.command("serve")(serve_cmd)


def serve_cmd(
    runs: list[Path] = typer.Argument(..., help="One or more run folders (each becomes a model)."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 = every interface)."),
    port: int = typer.Option(8000, help="TCP port."),
    backend: str = typer.Option("auto", help="auto (ONNX Runtime when possible), onnx or torch."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="FACELAB_API_KEY", show_envvar=True,
                                          help="Require this key on /api/* (X-API-Key header; WebSocket: that "
                                               "header or subprotocol facelab.key.<base64url key>). Empty: "
                                               "an error."),
    max_upload_mb: float = typer.Option(10.0, help="Largest upload in MB."),
    max_megapixels: float = typer.Option(40.0, help="Largest image in megapixels."),
    timeout: float = typer.Option(30.0, help="Request timeout in seconds."),
    cors_origin: list[str] = typer.Option([], "--cors-origin", help="Allow this origin (CORS; off by default)."),
    max_batch: int = typer.Option(32, help="Most face crops per model call."),
    max_wait_ms: float = typer.Option(4.0, help="Longest wait for a batch to fill, in ms."),
    threads: int = typer.Option(0, help="Detection threads (0 = CPU cores)."),
    model_threads: int = typer.Option(1, help="Threads per ONNX Runtime model call (0 = one per core)."),
    all_faces: bool = typer.Option(False, "--all-faces",
                                   help="Every face of an image, even when the run keeps only the largest."),
    max_connections: int = typer.Option(256, help="Requests handled at once; one more gets a JSON 503 "
                                                   "'busy' with Retry-After (/healthz is always answered)."),
    max_idle_connections: int = typer.Option(1024, help="Connections without a request in progress kept at once "
                                                       "per process; one more closes the oldest idle one "
                                                       "(never-served first)."),
    header_timeout: float = typer.Option(10.0, help="Seconds to send a whole request head (408 and close after)."),
    body_timeout: float = typer.Option(10.0, help="Longest pause in a request body, in seconds (close after)."),
    keep_alive: int = typer.Option(10, help="Seconds an idle keep-alive connection stays open."),
    max_header_kb: int = typer.Option(32, help="Largest request head in KiB (431 above)."),
    max_form_parts: int = typer.Option(8, help="Most parts in a multipart upload (413 above)."),
    max_part_header_bytes: int = typer.Option(4096, help="Largest headers of one form part in bytes (413 above)."),
    omp_threads: int = typer.Option(1, help="OpenMP threads per operation (the server's parallelism comes "
                                           "from concurrent requests; more threads fight over the cores)."),
    workers: int = typer.Option(1, help="Server processes (each loads the models; detection holds the GIL, "
                                        "so one process uses about one core)."),
    log_level: str = typer.Option("info", help="uvicorn log level: critical, error, warning, info or debug."),
    access_log: bool = typer.Option(False, "--access-log", help="Log one line per request (off: it costs "
                                                               "CPU under load)."),
) -> None:
    """Serve RUNS over HTTP: JSON API, live-video WebSocket and a web page at /."""
    os.environ["OMP_NUM_THREADS"] = str(omp_threads)  # before the detector's OpenMP runtime loads
    from facelab.bundle import bundle_dir_of
    from facelab.serve.app import ServeConfig, serve

    if api_key is None and os.environ.get("FACELAB_API_KEY") == "":
        api_key = ""  # click reads an empty variable as unset: that must not mean "no authentication"
    for run in runs:
        bundle_dir_of(run)  # fail before the server starts, with a clear message
    config = ServeConfig(runs=tuple(str(r) for r in runs), backend=backend, api_key=api_key,
                         max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                         max_pixels=int(max_megapixels * 1e6), request_timeout=timeout,
                         cors_origins=tuple(cors_origin), max_batch=max_batch, max_wait_ms=max_wait_ms,
                         threads=threads, model_threads=model_threads, all_faces=all_faces,
                         max_in_flight=max_connections, max_idle_connections=max_idle_connections,
                         header_timeout=header_timeout, body_timeout=body_timeout, keep_alive_timeout=keep_alive,
                         max_header_bytes=max_header_kb * 1024, max_form_parts=max_form_parts,
                         max_part_header_bytes=max_part_header_bytes)
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    typer.echo(f"facelab serve: http://{host}:{port}/  (API docs: /docs"
               f"{', API key required' if config.key() else ''})")
    serve(config, host=host, port=port, log_level=log_level, access_log=access_log, workers=workers)
