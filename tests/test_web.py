"""The `serve` page (mnist_mlp/web) in a real headless Chromium: drawing with mouse, finger and pen, files
chosen or dropped, and the same probabilities as `predict --json`, with no console errors.

The browser is Debian's `chromium` (.ci/run installs it) or an installed Chrome, driven by Playwright. Outside
CI the tests skip, saying why, when either is missing; in CI (CI=true) they fail instead. The model is
conftest's trained_run: two epochs of real MNIST, so a drawn 1 or 0 must really be read as one.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_mlp.rundir import RunDir
from tests.test_serve import predict_json, serving

pytestmark = pytest.mark.slow  # a training run and a browser: about a minute in all

# Debian's package first; then the Chrome that GitHub's Linux and macOS runners come with.
BROWSERS = [
    "chromium",
    "chromium-browser",
    "google-chrome",
    "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
]
ARTIFACTS_ENV = "MNIST_MLP_ARTIFACTS"  # a folder to copy screenshots into (CI keeps it)
PAD = 280  # the drawing pad's size in CSS pixels (web/style.css)


@pytest.fixture(scope="session")
def browser() -> Iterator:
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "Playwright is not installed (pip install -e '.[dev]')"
    found = [path for path in map(shutil.which, BROWSERS) if path]
    if problem is None and not found:
        problem = "no Chromium (Debian: apt-get install chromium)"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem}: CI must run the browser tests")
        pytest.skip(problem)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=found[0])  # the system's: no browser download
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def url(trained_run: Path) -> Iterator[str]:
    with serving(trained_run) as url:
        yield url


@pytest.fixture
def page(browser, url):
    """The page, loaded, with a list `page.problems` of console errors and warnings and uncaught exceptions,
    which must be empty at the end of the test."""
    context = browser.new_context(viewport={"width": 1200, "height": 1000}, has_touch=True)
    page = context.new_page()
    page.problems = []
    page.on("console", lambda m: m.type in ("error", "warning") and page.problems.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda error: page.problems.append(f"uncaught: {error}"))
    page.goto(url)
    page.wait_for_function("document.getElementById('summary').children.length > 0")  # api/run answered
    yield page
    context.close()
    assert page.problems == [], "the page logged problems"


def along(points: list[tuple[float, float]], step: float = 6.0) -> list[tuple[float, float]]:
    """The polyline through `points`, with a point every `step` pixels: a hand's stream of pointer moves."""
    dense = [points[0]]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        n = max(1, round(math.hypot(x1 - x0, y1 - y0) / step))
        dense += [(x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n) for i in range(1, n + 1)]
    return dense


VERTICAL_STROKE = along([(140, 45), (138, 235)])
CLOSED_LOOP = along([(140 + 62 * math.sin(t), 140 - 92 * math.cos(t)) for t in np.linspace(0, 2 * math.pi, 41)])


def draw(page, points: list[tuple[float, float]], pointer: str = "mouse") -> None:
    """One stroke on the pad, as pointer events of the given kind (Chromium's own input pipeline)."""
    box = page.locator("#pad").bounding_box()
    at = [(box["x"] + x, box["y"] + y) for x, y in points]
    if pointer == "mouse":
        page.mouse.move(*at[0])
        page.mouse.down()
        for x, y in at[1:]:
            page.mouse.move(x, y)
        page.mouse.up()
        return
    cdp = page.context.new_cdp_session(page)
    if pointer == "pen":

        def pen(kind: str, x: float, y: float, buttons: int) -> None:
            event = {"type": kind, "x": x, "y": y, "button": "left", "buttons": buttons, "clickCount": 1}
            cdp.send("Input.dispatchMouseEvent", {**event, "pointerType": "pen"})

        pen("mousePressed", *at[0], 1)
        for x, y in at[1:]:
            pen("mouseMoved", x, y, 1)
        pen("mouseReleased", *at[-1], 0)
    else:
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": at[0][0], "y": at[0][1]}]})
        for x, y in at[1:]:
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


def answered(page) -> int:
    return int(page.get_attribute("body", "data-answered"))


def wait_for_answer(page, before: int) -> dict:
    """Wait until the page has shown an answer after the `before`-th and asks for nothing more; what it shows."""
    page.wait_for_function(
        "n => document.body.dataset.pending === '0' && Number(document.body.dataset.answered) > n", arg=before
    )
    return page.evaluate(
        """() => ({
            digit: document.getElementById('digit').textContent,
            probabilities: [...document.querySelectorAll('#bars li')].map(li => li.dataset.p ?? null),
            status: document.getElementById('status').textContent,
            problem: document.getElementById('status').className === 'problem',
            pointer: document.getElementById('pad').dataset.pointer,
            layers: document.querySelectorAll('#layers figure').length,
            units: document.querySelectorAll('#units figure').length,
        })"""
    )


@pytest.mark.parametrize("pointer", ["mouse", "touch", "pen"])
def test_a_vertical_stroke_reads_as_1(page, pointer):
    before = answered(page)
    draw(page, VERTICAL_STROKE, pointer)
    shown = wait_for_answer(page, before)
    assert shown["pointer"] == pointer  # the page saw this kind of pointer, not a stand-in
    assert shown["digit"] == "1", shown
    assert shown["layers"] == 2 and 1 <= shown["units"] <= 8


def test_the_weights_come_once_per_load_and_each_answer_draws_its_units_from_them(browser, url):
    """An answer names its most active units; their tiles are drawn from GET api/weights, asked for once."""
    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    page = context.new_page()
    asked = []
    page.on("request", lambda request: asked.append(request.url.removeprefix(url)))
    answers = []
    page.on("response", lambda r: r.url.endswith("api/predict") and r.ok and answers.append(r.json()))
    page.goto(url)
    for stroke in (VERTICAL_STROKE, CLOSED_LOOP):
        page.click("#clear")
        draw(page, stroke)
        wait_for_answer(page, answered(page))
    assert asked.count("api/weights") == 1 and asked.count("api/predict") >= 2, asked
    shown = page.evaluate(
        """() => [...document.querySelectorAll('#units figure')].map(figure => {
            const pixels = figure.querySelector('canvas').getContext('2d').getImageData(0, 0, 28, 28).data;
            return { unit: Number(figure.dataset.unit), inked: pixels.some((v, i) => i % 4 < 3 && v < 250) };
        })"""
    )
    assert [s["unit"] for s in shown] == [u["unit"] for u in answers[-1]["top_units"]]
    assert shown and all(s["inked"] for s in shown)  # coloured by weights, not left blank
    context.close()


def test_a_closed_loop_reads_as_0_and_the_page_is_saved_as_a_screenshot(page, tmp_path):
    before = answered(page)
    draw(page, CLOSED_LOOP)
    shown = wait_for_answer(page, before)
    assert shown["digit"] == "0", shown
    probabilities = [float(p) for p in shown["probabilities"]]
    assert max(probabilities) == probabilities[0] and sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    screenshot = page.screenshot(path=tmp_path / "serve-page.png", full_page=True)
    assert screenshot[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get(ARTIFACTS_ENV):
        folder = Path(os.environ[ARTIFACTS_ENV])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "serve-page.png", folder / "serve-page.png")


def drop(page, path: Path) -> None:
    """Drop `path` on the pad the way a file dragged from the desktop arrives: a drop event with its bytes."""
    data = page.evaluate_handle(
        """([name, bytes]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], name, { type: 'image/png' }));
            return transfer;
        }""",
        [path.name, list(path.read_bytes())],
    )
    page.dispatch_event("#pad", "dragover", {"dataTransfer": data})
    page.dispatch_event("#pad", "drop", {"dataTransfer": data})


@pytest.mark.parametrize("how", ["chosen", "dropped"])
def test_real_mnist_test_images_give_their_labels_and_predicts_probabilities(
    page, how, mnist_splits, trained_run, tmp_path, capsys
):
    test = mnist_splits[1]
    files = []
    for i in range(3):  # the first three test images: 7, 2, 1
        files.append(tmp_path / f"test-{i}-label-{test.labels[i]}.png")
        Image.fromarray(test.images[i]).save(files[-1])
    expected = predict_json(capsys, trained_run, *files)
    for i, (path, predicted) in enumerate(zip(files, expected, strict=True)):
        before = answered(page)
        if how == "chosen":
            page.set_input_files("#file", path)
        else:
            drop(page, path)
        shown = wait_for_answer(page, before)
        assert shown["digit"] == str(test.labels[i]) == str(predicted["digit"]), (path.name, shown)
        np.testing.assert_allclose([float(p) for p in shown["probabilities"]], predicted["probabilities"], atol=1e-5)
        assert path.name in shown["status"]


def test_a_dot_is_too_little_ink_and_clear_starts_again(page):
    before = answered(page)
    box = page.locator("#pad").bounding_box()
    page.mouse.click(box["x"] + PAD / 2, box["y"] + PAD / 2)  # a tap: one round dot
    shown = wait_for_answer(page, before)
    assert shown["digit"] == "?" and "Too little ink" in shown["status"] and shown["probabilities"] == [None] * 10
    draw(page, VERTICAL_STROKE)
    assert wait_for_answer(page, answered(page))["digit"] == "1"
    page.click("#clear")
    assert page.text_content("#digit") == "?" and page.locator("#bars li[data-p]").count() == 0
    assert page.get_attribute("body", "data-pending") == "0"


def test_a_file_that_is_not_an_image_shows_the_servers_reason(page, tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("a shopping list, not a picture\n")
    before = answered(page)
    page.set_input_files("#file", path)
    shown = wait_for_answer(page, before)
    assert shown["problem"] and "not an image" in shown["status"] and shown["digit"] == "?"
    # The browser itself logs the 400 response (and the unreadable preview does nothing); nothing else.
    assert len(page.problems) == 1 and "400" in page.problems[0], page.problems
    page.problems.clear()


def test_the_header_names_the_run_and_its_test_accuracy(page, trained_run):
    accuracy = RunDir.open(trained_run).read_metrics()["test_accuracy"]
    header = page.text_content("#run")
    assert header.startswith(f"Run {trained_run.name}: test accuracy {accuracy:.2%}.")
    assert "layers 784-100-100-10" in page.text_content("#summary")
