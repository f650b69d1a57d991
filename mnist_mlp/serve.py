"""`mnist-mlp serve`: a local page to draw a digit and watch a trained run read it, and the JSON API it uses.

    GET  /              the page: web/index.html, app.js and style.css, served from the package (no network)
    GET  /api/run       the run served: its name, where the weights came from, test accuracy, config summary
    GET  /api/weights   the first layer's weights, unit by unit: the page fetches them once and draws the
                        most active units' from them
    POST /api/predict   image bytes (PNG or JPEG) as the body: `predict --json`'s fields and what the page draws

An upload is prepared by images.digit_from_bytes (the code `predict` runs on files) and classified by the MLP
that predict.load_model restores, so the page, the API and `predict` give the same answer for the same picture.
The standard library's threading server is enough for one person's browser and a few scripts on one machine.
"""

from __future__ import annotations

import errno
import gzip
import json
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import urlsplit

import numpy as np
import tensorflow as tf

from mnist_mlp.device import CPU
from mnist_mlp.errors import UserError
from mnist_mlp.images import BlankImage, digit_from_bytes
from mnist_mlp.model import MLP, forward, softmax, to_rows
from mnist_mlp.predict import answer, load_model
from mnist_mlp.rundir import RunDir

MAX_BODY = 5 * 1024 * 1024  # bytes; a larger upload is refused (413) before any of it is read
# After a 413 the body is read and dropped, up to this many bytes, so that clients which send all of it
# before they read the answer (Python's http.client, for one) get the 413 rather than a broken pipe.
DISCARD_LIMIT = 64 * 1024 * 1024
TOP_UNITS = 8  # the most active first-layer units, whose incoming weights the page draws
# Activations and weights go to the page with this many significant digits: beyond what its two-decimal labels
# and colour scales show, and JSON then prints 0.0497 rather than float32's 0.04969999939203262.
SIGNIFICANT_DIGITS = 4
READ_TIMEOUT = 30  # seconds a client may stall mid-request before its connection is dropped

# URL path: (file in mnist_mlp/web, Content-Type)
PAGE = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
RUN_INFO, WEIGHTS, PREDICT = "/api/run", "/api/weights", "/api/predict"


def short(values: np.ndarray) -> list[float]:
    """`values` as a flat list of floats rounded to SIGNIFICANT_DIGITS significant digits."""
    return [float(f"{v:.{SIGNIFICANT_DIGITS}g}") for v in np.asarray(values, np.float64).ravel().tolist()]


class Inspector:
    """A trained MLP that answers one prepared image with its inner workings; callable from many threads."""

    def __init__(self, model: MLP):
        self.model = model
        # GET /api/weights: unit j's 784 incoming weights (column j of W^1), row after row of the image. They
        # never change, so the page fetches them once rather than with every answer.
        self.first_layer = {"layer": 1, "weights": [short(column) for column in model.W[0].numpy().T]}
        self._lock = threading.Lock()

    def look(self, image: np.ndarray) -> dict:
        """`predict --json`'s fields for uint8 [28, 28] `image`, plus the image, every hidden layer's
        activations and the TOP_UNITS most active first-layer units."""
        with self._lock, tf.device(CPU):  # one forward pass at a time, on the CPU (load_model's device)
            H, logits = forward(self.model, to_rows(image[None], self.model.W[0].dtype))
            probabilities = softmax(logits)[0].numpy()  # ŷ = σ(logits), as predict_proba
            hidden = [h[0].numpy() for h in H[1:]]  # H^1 … H^{L-1} for this one image
        first = hidden[0]
        top = [int(j) for j in np.argsort(-first, kind="stable")[:TOP_UNITS] if first[j] > 0]
        return {
            **answer(probabilities),
            "error": None,
            "blank": False,
            "image": image.ravel().tolist(),  # 784 grey levels, row after row
            "hidden": [short(h) for h in hidden],
            "top_units": [{"unit": j, "activation": short(first[j])[0]} for j in top],
        }


def blank_answer(reason: str) -> dict:
    """What a picture with no digit gets: the reason, and nothing classified."""
    return {"digit": None, "probability": None, "probabilities": None, "error": reason, "blank": True,
            "image": None, "hidden": None, "top_units": None}  # fmt: skip


def describe_run(run: RunDir, source: str, model: MLP) -> dict:
    """GET /api/run: what the page shows at the top."""
    config, metrics = run.read_config(), finished_metrics(run)
    train = config.train
    summary = {
        "layers": "-".join(str(n) for n in model.sizes),
        "init": config.model.init,
        "epochs": metrics.get("epochs", train.epochs),
        "batch": train.batch_size,
        "learning rate": f"{train.learning_rate:g}, ×{train.lr_decay:g} every {train.lr_decay_epochs} epochs",
        "L1 λ": f"{train.l1:g}",
        "seed": config.seed,
    }
    return {
        "name": run.path.resolve().name,
        "path": str(run.path),
        "weights": source,
        "finished": bool(metrics),
        "test_accuracy": metrics.get("test_accuracy"),
        "summary": summary,
        "config": config.to_dict(),
    }


def finished_metrics(run: RunDir) -> dict:
    """metrics.json, or {} for a run that has not finished (interrupted, or still training)."""
    if not run.metrics_file.is_file():
        return {}
    try:
        return run.read_metrics()
    except ValueError:
        raise UserError(f"{run.metrics_file}: malformed (not JSON)") from None


class Server(ThreadingHTTPServer):
    """One thread per connection; holds the model, the run's description and the page's files."""

    daemon_threads = True  # Ctrl-C does not wait for open connections
    request_queue_size = 64  # connections waiting to be accepted; socketserver's 5 reset a burst of 20

    def __init__(self, host: str, port: int, inspector: Inspector, run_info: dict):
        self.inspector, self.run_info = inspector, run_info
        # The weights, encoded once: about 0.7 MB of JSON for 784-100, a third of that gzipped (as browsers take it).
        self.weights_json = json_bytes(inspector.first_layer)
        self.weights_gzip = gzip.compress(self.weights_json)
        web = resources.files("mnist_mlp") / "web"
        self.page = {path: ((web / name).read_bytes(), kind) for path, (name, kind) in PAGE.items()}
        try:
            self.address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]  # IPv4 or IPv6
            super().__init__((host, port), Handler)
        except OSError as exc:
            hint = "; pass another --port (0: any free one)" if exc.errno == errno.EADDRINUSE else ""
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}){hint}") from None

    def handle_error(self, request, client_address) -> None:
        """A client that hung up or stalled is its own business; anything else is a bug worth a traceback."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def make_server(run: RunDir, host: str = "127.0.0.1", port: int = 8000) -> Server:
    """A server for `run` (finished or interrupted), bound and ready for serve_forever()."""
    model, source = load_model(run)
    return Server(host, port, Inspector(model), describe_run(run, source, model))


def json_bytes(document: dict) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header takes gzip (`gzip`, `gzip;q=0.8`; not `gzip;q=0`)."""
    for item in accept_encoding.lower().split(","):
        name, _, params = item.strip().partition(";")
        if name.strip() in ("gzip", "*"):
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


class Handler(BaseHTTPRequestHandler):
    server: Server
    server_version = "mnist-mlp"
    timeout = READ_TIMEOUT

    def do_GET(self) -> None:
        """Every method goes through route(), which answers 405 where the path takes another."""
        self.route()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def route(self) -> None:
        path, method = urlsplit(self.path).path, self.command
        reads = (*self.server.page, RUN_INFO, WEIGHTS)
        allowed = "POST" if path == PREDICT else "GET, HEAD" if path in reads else None
        if allowed is None:
            self.send_error_json(HTTPStatus.NOT_FOUND, f"no such page: {path}")
        elif method not in allowed.split(", "):
            self.send_error_json(HTTPStatus.METHOD_NOT_ALLOWED, f"{path} takes {allowed}, not {method}", allowed)
        elif path == PREDICT:
            self.predict()
        elif path == RUN_INFO:
            self.send_json(HTTPStatus.OK, self.server.run_info)
        elif path == WEIGHTS and accepts_gzip(self.headers.get("Accept-Encoding", "")):
            self.send(HTTPStatus.OK, self.server.weights_gzip, "application/json", encoding="gzip")
        elif path == WEIGHTS:
            self.send(HTTPStatus.OK, self.server.weights_json, "application/json")
        else:
            self.send(HTTPStatus.OK, *self.server.page[path])

    def predict(self) -> None:
        length = self.headers.get("Content-Length")
        if length is None:
            self.send_error_json(HTTPStatus.LENGTH_REQUIRED, "send the image bytes with a Content-Length header")
            return
        if not (length.isascii() and length.isdigit()):
            self.send_error_json(HTTPStatus.BAD_REQUEST, f"Content-Length is not a byte count: {length!r}")
            return
        if int(length) > MAX_BODY:
            self.close_connection = True  # the body must not be taken for the next request
            self.send_error_json(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the image is {int(length):,} bytes; the limit is {MAX_BODY:,}"
            )
            self.discard(int(length))
            return
        data = self.rfile.read(int(length))
        try:
            image = digit_from_bytes(data)
        except BlankImage as exc:
            self.send_json(HTTPStatus.OK, blank_answer(str(exc)))
        except ValueError as exc:
            self.send_error_json(HTTPStatus.BAD_REQUEST, str(exc))
        else:
            self.send_json(HTTPStatus.OK, self.server.inspector.look(image))

    def discard(self, length: int) -> None:
        """Read and drop up to `length` bytes of the body (at most DISCARD_LIMIT), a chunk at a time."""
        left = min(length, DISCARD_LIMIT)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                return
            left -= len(chunk)

    def send_json(self, status: HTTPStatus, document: dict, allow: str | None = None) -> None:
        self.send(status, json_bytes(document), "application/json", allow)

    def send_error_json(self, status: HTTPStatus, message: str, allow: str | None = None) -> None:
        self.send_json(status, {"error": message}, allow)

    def send(
        self, status: HTTPStatus, body: bytes, kind: str, allow: str | None = None, encoding: str | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")  # a retrained run in the same folder shows at once
        if allow:
            self.send_header("Allow", allow)
        if encoding:
            self.send_header("Content-Encoding", encoding)
            self.send_header("Vary", "Accept-Encoding")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        """Quiet: the page asks for a prediction every few strokes; the terminal keeps only the URL line."""
