"""The demo's dashboard in a real browser (Debian's chromium and chromium-driver, through Selenium).

The page is what the control plane's admin server serves, scripts and all (nothing from a
CDN: the browser runs with no network but loopback). It saves a screenshot of the page in
its temporary folder; with ``MESHCORE_SCREENSHOT=1`` it saves it as the README's picture,
docs/images/dashboard.png (that is how the committed one was taken), so that a plain test
run leaves the checkout as it was.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _demo import start_demo, strays

selenium = pytest.importorskip("selenium", reason="the browser test needs selenium (the test extras)")
from selenium import webdriver  # noqa: E402 - after the check above
from selenium.webdriver.chrome.service import Service  # noqa: E402 - after the check above

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "images" / "dashboard.png"
SERVICES = {"client", "productpage", "details", "reviews", "ratings"}

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None or shutil.which("chromedriver") is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)",
)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    options.add_argument("--proxy-server=direct://")  # loopback only, whatever the environment says
    options.binary_location = shutil.which("chromium") or ""
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or ""))
    try:
        yield driver
    finally:
        driver.quit()


# The page redraws every second: read what it shows in one script, never element by element
# (an element found before a redraw is stale after it).
_EDGES = (
    "return [...document.querySelectorAll('svg#graph g.edge')]"
    ".map(e => ['source', 'target', 'rps', 'error-rate', 'rate-4xx'].map(a => e.getAttribute('data-' + a)))"
)
_SERVICES = "return [...document.querySelectorAll('svg#graph g.service')].map(g => g.dataset.service)"
_TRACES = (
    "return [...document.querySelectorAll('#traces details.waterfall')]"
    ".map(t => [...t.querySelectorAll('.trace-row')].map(r => [r.dataset.service, +r.dataset.depth]))"
)
_PROXIES = "return [...document.querySelectorAll('#proxies tbody tr')].map(r => r.innerText)"


def _edges(driver: webdriver.Chrome) -> dict[tuple[str, str], float]:
    """Requests a second by edge."""
    return {(source, target): float(rps) for source, target, rps, _, _ in driver.execute_script(_EDGES)}


def _errors(driver: webdriver.Chrome) -> dict[tuple[str, str], tuple[float, float]]:
    """The shares of 5xx and 4xx answers by edge."""
    return {
        (source, target): (float(rate_5xx), float(rate_4xx))
        for source, target, _, rate_5xx, rate_4xx in driver.execute_script(_EDGES)
    }


def _until(what: str, check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"no {what} after {timeout:g}s"
        time.sleep(0.2)


def test_the_dashboard_shows_the_mesh_and_a_canary_shift_live(
    tmp_path: Path, browser: webdriver.Chrome
) -> None:
    with start_demo(tmp_path) as run:
        run.wait_for("Ctrl-C stops everything.")
        browser.get(run.dashboard)
        wanted = {
            ("client", "productpage"),
            ("productpage", "details"),
            ("productpage", "reviews-v1"),
            ("productpage", "reviews-v2"),
            ("reviews-v2", "ratings"),
        }
        _until("edges of the 90/10 canary", lambda: wanted <= set(_edges(browser)), 15)
        assert set(browser.execute_script(_SERVICES)) == SERVICES
        edges = _edges(browser)
        assert all(rps > 0 for rps in edges.values()), edges
        rows = browser.execute_script(_PROXIES)
        assert len(rows) == 6, rows
        assert all("SYNCED" in row for row in rows), rows
        resources = browser.execute_script("return document.getElementById('resources').innerText")
        assert "VirtualService default/reviews" in resources
        # shift the canary: reviews v3 takes everything, within 10 s on the page
        shifted = run.tour("shift", "reviews", "v3", "100")
        assert shifted.returncode == 0, shifted.stdout + shifted.stderr
        assert "reviews now v1 0%, v2 0%, v3 100%" in shifted.stdout
        _until(
            "reviews-v3 taking the traffic",
            lambda: (
                _edges(browser).get(("productpage", "reviews-v3"), 0) > 0
                and _edges(browser).get(("reviews-v3", "ratings"), 0) > 0
            ),
            10,
        )

        # the recent traces: one page view is one trace, drawn as a waterfall of several services
        def a_whole_trace() -> bool:
            return any(
                {"productpage", "details"} <= {service for service, _ in rows}
                and any(service.startswith("reviews-") for service, _ in rows)
                and max(depth for _, depth in rows) >= 3  # sidecar → app → sidecar → sidecar
                for rows in browser.execute_script(_TRACES)
            )

        _until("a trace across the mesh in the waterfall", a_whole_trace, 10)
        shot = SCREENSHOT if os.environ.get("MESHCORE_SCREENSHOT") == "1" else tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000  # a picture, not an empty page
        # break ratings: the edge into ratings goes 100% 5xx within 10 s
        broken = run.tour("break", "ratings", "--percent", "100")
        assert broken.returncode == 0, broken.stdout + broken.stderr
        _until(
            "the calls to ratings failing",
            lambda: _errors(browser).get(("reviews-v3", "ratings"), (0, 0))[0] > 0.9,
            10,
        )
        # deny a caller: details refuses the front page, its edge goes 4xx within 10 s
        denied = run.tour("deny", "productpage", "details")
        assert denied.returncode == 0, denied.stdout + denied.stderr
        _until(
            "details refusing the front page",
            lambda: _errors(browser).get(("productpage", "details"), (0, 0))[1] > 0.5,
            10,
        )
        run.process.send_signal(signal.SIGINT)  # Ctrl-C
        status, counts = run.finish()
        assert status == 0, run.text
        assert counts["failed"] == 0, run.text  # a broken ratings or a refused details degrade the page only
        assert strays(run.workdir) == []
