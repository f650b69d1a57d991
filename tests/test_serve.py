"""`mnist-mlp serve`'s HTTP API: the same answers as `predict`, what the page draws, and 4xx for bad requests.

The server runs in a thread of the test process, on a free port, in front of conftest's untrained run.
"""

from __future__ import annotations

import gzip
import http.client
import io
import json
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image, ImageDraw

import mnist_mlp
from mnist_mlp import cli
from mnist_mlp.errors import UserError
from mnist_mlp.images import load_digit
from mnist_mlp.predict import load_model
from mnist_mlp.rundir import SAVED_MODEL, RunDir
from mnist_mlp.serve import MAX_BODY, PAGE, SIGNIFICANT_DIGITS, TOP_UNITS, accepts_gzip, make_server
from tests.conftest import child_env


@contextmanager
def serving(run: Path) -> Iterator[str]:
    """`run` served on a free local port by a thread of this process; yields the page's URL."""
    server = make_server(RunDir.open(run), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def url(random_run) -> Iterator[str]:
    with serving(random_run) as url:
        yield url


def request(url: str, path: str, method: str = "GET", body: bytes | None = None, headers=None):
    """(status, headers, JSON or bytes) of one request; `headers` replace the computed Content-Length."""
    where = urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    is_json = response.getheader("Content-Type") == "application/json"
    return response.status, response.headers, json.loads(data) if is_json else data


def post_image(url: str, data: bytes):
    return request(url, "/api/predict", "POST", data)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def scribble(seed: int, size: int = 120) -> Image.Image:
    """Dark strokes on white paper, different for every seed: something for a model to classify."""
    rng = np.random.default_rng(seed)
    image = Image.new("L", (size, size), 255)
    points = [tuple(int(v) for v in rng.integers(15, size - 15, 2)) for _ in range(5)]
    ImageDraw.Draw(image).line(points, fill=0, width=9)
    return image


def predict_json(capsys, run: Path, *files: Path) -> list[dict]:
    """`mnist-mlp predict RUN FILES --json`, one dict per file."""
    status = cli.main(["predict", str(run), *map(str, files), "--json"])
    out = capsys.readouterr().out
    assert status == 0, out
    return [json.loads(line) for line in out.splitlines()]


def assert_same_answer(served: dict, predicted: dict) -> None:
    assert served["digit"] == predicted["digit"] and served["error"] is None
    np.testing.assert_allclose(served["probabilities"], predicted["probabilities"], atol=1e-5)
    assert served["probability"] == pytest.approx(predicted["probability"], abs=1e-5)


def test_predict_answers_like_predict_json_and_shows_the_networks_insides(url, random_run, tmp_path, capsys):
    path = tmp_path / "digit.png"
    scribble(0).save(path)
    status, headers, served = post_image(url, path.read_bytes())
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert_same_answer(served, predict_json(capsys, random_run, path)[0])
    assert served["blank"] is False and served["probability"] == served["probabilities"][served["digit"]]
    assert sum(served["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    # What the page draws: the prepared image, every hidden layer, the most active first-layer units.
    image = np.array(served["image"], np.uint8).reshape(28, 28)
    np.testing.assert_array_equal(image, load_digit(path))  # predict's own preparation
    model, _ = load_model(RunDir.open(random_run))
    W, W0 = [w.numpy() for w in model.W], [b.numpy()[:, 0] for b in model.W0]
    h1 = np.maximum(W[0].T @ (image.reshape(-1) / 255.0) + W0[0], 0)  # H^1 = φ((W^1)ᵀ X + W0^1)
    h2 = np.maximum(W[1].T @ h1 + W0[1], 0)
    np.testing.assert_allclose(served["hidden"][0], h1, rtol=5e-4, atol=1e-6)  # 4 significant digits
    np.testing.assert_allclose(served["hidden"][1], h2, rtol=5e-4, atol=1e-6)
    units = served["top_units"]
    assert [u["unit"] for u in units] == list(np.argsort(-h1, kind="stable")[: len(units)])
    assert len(units) == min(TOP_UNITS, int((h1 > 0).sum())) and all(u["activation"] > 0 for u in units)
    for unit in units:
        assert set(unit) == {"unit", "activation"}  # their weights: GET /api/weights, once
        assert unit["activation"] == pytest.approx(h1[unit["unit"]], rel=5e-4)


def significant_digits(value: float) -> int:
    return len(f"{abs(value):e}".split("e")[0].replace(".", "").rstrip("0")) if value else 0


def test_an_answer_carries_floats_only_to_four_significant_digits(url, tmp_path):
    """What the page can show, and JSON then prints short: 134 KB per stroke before, a few KB now."""
    body = png(scribble(3))
    status, _, served = post_image(url, body)
    assert status == 200 and served["digit"] is not None
    floats = [v for layer in served["hidden"] for v in layer] + [u["activation"] for u in served["top_units"]]
    assert floats and max(map(significant_digits, floats)) <= SIGNIFICANT_DIGITS
    assert any(significant_digits(v) == SIGNIFICANT_DIGITS for v in floats)  # rounded, not truncated further
    assert len(json.dumps(served, separators=(",", ":"))) < 8_000


def test_the_first_layers_weights_come_once_unit_by_unit_to_four_significant_digits(url, random_run):
    status, headers, served = request(url, "/api/weights")
    assert status == 200 and headers["Content-Type"] == "application/json" and served["layer"] == 1
    model, _ = load_model(RunDir.open(random_run))
    W1 = model.W[0].numpy()
    weights = np.array(served["weights"])
    assert weights.shape == (W1.shape[1], 784)  # unit j: column j of W^1, row after row of the image
    np.testing.assert_allclose(weights, W1.T, rtol=5e-4, atol=0)
    assert max(significant_digits(w) for w in weights.ravel()[:5000]) <= SIGNIFICANT_DIGITS


def test_a_browser_gets_the_weights_gzipped_a_script_as_plain_json(url):
    where = urlsplit(url)
    bodies = {}
    for accept in ("gzip, deflate, br, zstd", None):
        connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
        connection.request("GET", "/api/weights", headers={"Accept-Encoding": accept} if accept else {})
        response = connection.getresponse()
        bodies[accept] = (response.getheader("Content-Encoding"), response.read())
        connection.close()
    (encoding, zipped), (plain_encoding, plain) = bodies.values()
    assert encoding == "gzip" and plain_encoding is None
    assert gzip.decompress(zipped) == plain and len(zipped) < len(plain) / 2


@pytest.mark.parametrize(
    "header, takes",
    [("gzip", True), ("deflate, gzip;q=0.8", True), ("*", True), ("", False), ("br, deflate", False),
     ("gzip;q=0", False), ("identity", False)],
)  # fmt: skip
def test_accept_encoding_is_read_as_http_means_it(header, takes):
    assert accepts_gzip(header) is takes


def test_jpeg_and_dark_on_light_or_light_on_dark_all_work(url, random_run, tmp_path, capsys):
    files = [tmp_path / "a.jpg", tmp_path / "b.png"]
    scribble(1).save(files[0], quality=95)
    Image.fromarray(255 - np.asarray(scribble(2))).save(files[1])
    for path, predicted in zip(files, predict_json(capsys, random_run, *files), strict=True):
        status, _, served = post_image(url, path.read_bytes())
        assert status == 200
        assert_same_answer(served, predicted)


def test_twenty_requests_at_once_each_get_their_own_answer(url, random_run, tmp_path, capsys):
    files = []
    for seed in range(20):
        files.append(tmp_path / f"{seed}.png")
        scribble(seed).save(files[-1])
    expected = predict_json(capsys, random_run, *files)
    assert len({e["digit"] for e in expected}) > 1  # different answers, so a mix-up would show
    start = threading.Barrier(len(files))

    def ask(path: Path):
        data = path.read_bytes()
        start.wait()  # all twenty threads send together
        return post_image(url, data)

    with ThreadPoolExecutor(len(files)) as pool:
        answers = list(pool.map(ask, files))
    for (status, _, served), predicted in zip(answers, expected, strict=True):
        assert status == 200
        assert_same_answer(served, predicted)


@pytest.mark.parametrize(
    "image",
    [Image.new("L", (280, 280), 255), Image.new("RGBA", (280, 280), (0, 0, 0, 0))],
    ids=["white", "transparent"],
)
def test_a_blank_picture_is_reported_blank_not_classified(url, image):
    status, _, served = post_image(url, png(image))
    assert status == 200 and served["blank"] is True and served["digit"] is None
    assert served["probabilities"] is None and served["error"].startswith("no digit found")


def test_a_dot_is_too_little_ink_to_classify(url):
    canvas = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(canvas).ellipse([130, 130, 150, 150], fill=0)  # a tap on the page's pad
    status, _, served = post_image(url, png(canvas))
    assert status == 200 and served["blank"] is True and "speck" in served["error"]


@pytest.mark.parametrize(
    "body, says",
    [
        (b"", "empty (0 bytes), not an image"),
        (b"GIF? no, just some text\n", "not an image"),
        (png(scribble(0))[:300], "damaged or truncated image"),
    ],
    ids=["empty", "text", "truncated"],
)
def test_bad_bodies_get_400_with_a_json_error(url, body, says):
    status, _, served = post_image(url, body)
    assert status == 400 and list(served) == ["error"] and says in served["error"]


def test_a_body_over_5_mb_gets_413(url):
    status, _, served = post_image(url, b"\0" * (MAX_BODY + 1))
    assert status == 413 and "limit is 5,242,880" in served["error"]


def test_413_comes_from_the_content_length_before_the_body_is_read(url):
    # The header promises 1 GB and three bytes follow: only an answer that does not wait for the body arrives.
    status, _, served = request(url, "/api/predict", "POST", b"abc", {"Content-Length": str(10**9)})
    assert status == 413 and "1,000,000,000 bytes" in served["error"]


def test_a_post_without_content_length_gets_411(url):
    where = urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    connection.putrequest("POST", "/api/predict")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 411 and "Content-Length" in json.loads(response.read())["error"]
    connection.close()


@pytest.mark.parametrize(
    "method, path, status, allow",
    [
        ("GET", "/nothing-here", 404, None),
        ("POST", "/api/nope", 404, None),
        ("GET", "/api/predict", 405, "POST"),
        ("PUT", "/api/predict", 405, "POST"),
        ("POST", "/", 405, "GET, HEAD"),
        ("DELETE", "/api/run", 405, "GET, HEAD"),
        ("POST", "/api/weights", 405, "GET, HEAD"),
    ],
)
def test_unknown_paths_get_404_and_wrong_methods_405(url, method, path, status, allow):
    got, headers, served = request(url, path, method)
    assert got == status and "error" in served and headers["Allow"] == allow


def test_the_page_is_served_from_the_package_and_fetches_nothing_from_elsewhere(url):
    for path, (name, kind) in PAGE.items():
        status, headers, body = request(url, path)
        assert status == 200 and headers["Content-Type"] == kind
        assert body == (Path(mnist_mlp.__file__).parent / "web" / name).read_bytes()
        assert b"http:" not in body and b"https:" not in body and b"//cdn" not in body  # no network needed
    status, headers, body = request(url, "/", "HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_run_info_names_the_run_and_its_weights(url, random_run):
    status, _, info = request(url, "/api/run")
    assert status == 200 and info["name"] == "run" and info["weights"] == str(random_run / SAVED_MODEL)
    assert info["finished"] is False and info["test_accuracy"] is None  # no metrics.json in this run
    assert info["summary"]["layers"] == "784-100-100-10" and info["config"]["model"]["hidden"] == [100, 100]


def test_an_interrupted_run_is_served_from_its_last_checkpoint(random_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(random_run, run)
    shutil.rmtree(run / SAVED_MODEL)
    path = tmp_path / "digit.png"
    scribble(3).save(path)
    with serving(run) as url:
        info = request(url, "/api/run")[2]
        status, _, served = post_image(url, path.read_bytes())
    assert info["weights"] == f"{run / 'checkpoints' / 'epoch-0001'} (the last checkpoint: epoch 1; no saved_model yet)"
    assert status == 200
    assert_same_answer(served, predict_json(capsys, random_run, path)[0])  # the same weights either way


def test_a_port_in_use_or_an_unknown_host_is_one_clear_error(random_run):
    with serving(random_run) as url, pytest.raises(UserError) as caught:
        make_server(RunDir.open(random_run), "127.0.0.1", urlsplit(url).port)
    port = urlsplit(url).port
    assert (
        str(caught.value)
        == f"cannot listen on 127.0.0.1:{port} (Address already in use); pass another --port (0: any free one)"
    )
    with pytest.raises(UserError, match=r"^cannot listen on no-such-host\.invalid:0 \([^;]+\)$"):
        make_server(RunDir.open(random_run), "no-such-host.invalid", 0)


def test_a_content_length_that_is_not_a_number_gets_400(url):
    status, _, served = request(url, "/api/predict", "POST", b"abc", {"Content-Length": "²"})
    assert status == 400 and "not a byte count" in served["error"]


@pytest.mark.slow  # a second process importing TensorFlow: 10 to 40 s here
def test_serve_command_prints_its_url_and_stops_on_ctrl_c(random_run):
    """A real `mnist-mlp serve` process: the URL line, a working page, then SIGINT: one line, exit 130."""
    env = child_env(PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "mnist_mlp", "serve", str(random_run), "--port", "0"]
    # As in a terminal: SIGINT at its default, even when these tests run as a background job that ignores it.
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        line = child.stdout.readline()  # blocks until the server listens (TensorFlow starts first)
        assert line.startswith(f"serving {random_run} ({random_run / SAVED_MODEL}) at http://127.0.0.1:"), line
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url + "api/run", timeout=60) as response:
            assert json.load(response)["name"] == "run"
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130 and out == "" and err == "interrupted\n"
