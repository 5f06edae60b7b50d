"""The admin dashboard (``/app/dashboard``, component ``dashboard``) against a fresh lumen-host.

The module starts its own gateway (fresh KV state, the session's mock upstream), makes real
requests with two keys on two models, then:

* checks the static file server over plain HTTP: content type, length, cache headers, ETag, an
  OpenAI-shaped 404 for unknown files and for every path-traversal attempt;
* (marker ``browser``) drives Debian's headless Chromium with selenium: a wrong token is refused,
  the right one signs in without ever reaching a URL, the charts are drawn with exactly the
  usage the admin API reports, the request log lists every request id, provider health and the
  audit chain are shown and verified; a screenshot goes to ``target/test-artifacts/dashboard.png``.

``scripts/test.sh`` runs the browser test as its own step; Chromium must be installed (packages
``chromium`` and ``chromium-driver``; ``.ci/run`` installs them). ``LUMEN_SKIP_BROWSER=1`` skips
it explicitly on a machine without them.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from conftest import (
    REPO,
    UPSTREAM_KEY,
    Server,
    create_key,
    deploy,
)

CHROMIUM = os.environ.get("LUMEN_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LUMEN_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = REPO / "target" / "test-artifacts"
SCREENSHOT = ARTIFACTS / "dashboard.png"
PAGE = "/app/dashboard"
# The first palette colour of dashboard.js: the "Requests" bars of the by-model and by-key charts.
REQUESTS_RGB = (0x4F, 0x46, 0xE5)


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dash_token() -> str:
    return "adm_" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def dash_gateway(mock_server: Server, dash_token: str, log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A gateway of its own, so the dashboard shows this module's requests and nothing else
    (under the runtime ``LUMEN_TEST_RUNTIME`` names; see conftest.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPIN_VARIABLE_")}
    env["SPIN_VARIABLE_ADMIN_TOKEN"] = dash_token
    for name, path in [("OPENAI", "/v1"), ("AZURE", ""), ("ANTHROPIC", "/v1"), ("GEMINI", "/v1beta"), ("VLLM", "/v1"), ("RUNPOD", "/v2/qwen"), ("TOGETHER", "/v1")]:
        env[f"SPIN_VARIABLE_{name}_BASE_URL"] = f"{mock_server.url}{path}"
        env[f"SPIN_VARIABLE_{name}_ALLOWED_HOST"] = mock_server.url
        env[f"SPIN_VARIABLE_{name}_API_KEY"] = UPSTREAM_KEY
    d = deploy("lumen-host-dashboard", env, log_dir, tmp_path_factory.mktemp("dashboard-state"))
    yield d.client
    d.stop()


@pytest.fixture(scope="module")
def dash_admin(dash_gateway: Server, dash_token: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=dash_gateway.url, headers={"Authorization": f"Bearer {dash_token}"}, timeout=30) as c:
        yield c


def chat(gateway: Server, key: str, model: str, prompt: str, stream: bool = False) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream}
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)


@pytest.fixture(scope="module")
def traffic(dash_gateway: Server, dash_admin: httpx.Client) -> dict:
    """Real requests: key alpha on gpt-4o-mini (one streamed, one that falls back from openai to
    azure), key beta on claude-3-5-haiku (one that fails). Returns the keys and request ids."""
    suffix = secrets.token_hex(3)
    alpha = create_key(dash_admin, f"alpha-{suffix}")
    beta = create_key(dash_admin, f"beta-{suffix}")
    calls = [
        (alpha, "gpt-4o-mini", "hello [mock tokens=40]", False, 200),
        (alpha, "gpt-4o-mini", "again [mock tokens=25]", False, 200),
        (alpha, "gpt-4o-mini", "a stream [mock tokens=30]", True, 200),
        (alpha, "gpt-4o-mini", "openai is down [mock status=503 only=openai]", False, 200),
        (beta, "claude-3-5-haiku", "bonjour [mock tokens=60]", False, 200),
        (beta, "claude-3-5-haiku", "encore [mock tokens=20]", False, 200),
        (beta, "claude-3-5-haiku", "this one breaks [mock status=500]", False, 502),
    ]
    ids = []
    for key, model, prompt, stream, status in calls:
        r = chat(dash_gateway, key["key"], model, prompt, stream)
        assert r.status_code == status, f"{model} {prompt!r}: {r.status_code} {r.text[:300]}"
        ids.append(r.headers["x-request-id"])
    return {"alpha": alpha, "beta": beta, "request_ids": ids}


# ----------------------------------------------------------------------------- plain HTTP checks


def raw_get(server: Server, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """GET with the path sent byte for byte (no client-side normalisation of ``..``)."""
    host, port = server.addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_page_and_assets_have_type_length_and_cache_headers(dash_gateway: Server) -> None:
    status, h, body = raw_get(dash_gateway, PAGE)
    assert status == 200
    assert h["content-type"] == "text/html; charset=utf-8"
    assert int(h["content-length"]) == len(body) > 0
    assert h["cache-control"] == "no-cache"
    assert "frame-ancestors 'none'" in h["content-security-policy"]
    assert h["x-content-type-options"] == "nosniff"
    assert b'id="sign-in-form"' in body

    status, h, body = raw_get(dash_gateway, f"{PAGE}/vendor/chart.js/chart.umd.min.js")
    assert status == 200
    assert h["content-type"] == "text/javascript; charset=utf-8"
    assert h["cache-control"] == "public, max-age=300"
    assert int(h["content-length"]) == len(body) > 100_000
    assert body.startswith(b"/*!\n * Chart.js v4.")

    status, h, body = raw_get(dash_gateway, f"{PAGE}/vendor/chart.js/LICENSE.md")
    assert status == 200 and b"MIT License" in body

    status, h2, _ = raw_get(dash_gateway, f"{PAGE}/dashboard.css")
    assert status == 200 and h2["content-type"] == "text/css; charset=utf-8"
    status, h3, body = raw_get(dash_gateway, f"{PAGE}/dashboard.css", {"If-None-Match": h2["etag"]})
    assert status == 304 and body == b"" and h3["etag"] == h2["etag"]

    for path in ["/app", "/app/"]:
        status, h, _ = raw_get(dash_gateway, path)
        assert (status, h["location"]) == (302, PAGE), path


@pytest.mark.parametrize(
    "path",
    [
        "/app/dashboard/../../spin.toml",
        "/app/dashboard/../spin.toml",
        "/app/../spin.toml",
        "/app/dashboard/%2e%2e/%2e%2e/spin.toml",
        "/app/dashboard/%2E%2E%2F%2E%2E%2Fspin.toml",
        "/app/dashboard/..%2f..%2fspin.toml",
        "/app/dashboard/..%5c..%5cspin.toml",
        "/app/dashboard/vendor/../../../Cargo.toml",
        "/app/dashboard/.gitignore",
        "/app/dashboard//etc/passwd",
        "/app/dashboard/nope.js",
        "/app/dashboard/index.html/x",
        "/app/dashboard/vendor",
        "/app/elsewhere",
    ],
)
def test_unknown_files_and_traversal_get_openai_shaped_404(dash_gateway: Server, path: str) -> None:
    status, h, body = raw_get(dash_gateway, path)
    assert status == 404, (path, body[:200])
    assert h["content-type"] == "application/json"
    assert int(h["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("invalid_request_error", "unknown_route")
    assert b"spin_manifest_version" not in body and b"root:" not in body


def test_only_get_is_served(dash_gateway: Server) -> None:
    r = httpx.post(f"{dash_gateway.url}{PAGE}", data={"token": "x"})
    assert r.status_code == 405
    assert r.headers["allow"] == "GET"
    assert r.json()["error"]["code"] == "method_not_allowed"


# ------------------------------------------------------------------------------- in Chromium


def chromium_driver():
    """Debian's Chromium through its chromedriver, headless, offline, with a fresh profile."""
    if os.environ.get("LUMEN_SKIP_BROWSER") == "1":
        pytest.skip("LUMEN_SKIP_BROWSER=1")
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: install Debian's chromium and chromium-driver "
            "(apt-get install chromium chromium-driver; .ci/run does), or set LUMEN_SKIP_BROWSER=1",
            pytrace=False,
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="lumen-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1000",
        "--force-device-scale-factor=1", "--lang=en-US",
    ]:
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager (which would try to download one) never runs.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    return driver, profile


def wait_for(driver, predicate, what: str, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate(driver)
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}; page state "
                        f"{driver.execute_script('return document.body.dataset.state')!r}", pytrace=False)
        time.sleep(0.1)


# Chart data as the page drew it: labels and datasets of each Chart.js instance.
CHART_DATA_JS = """
const out = {};
for (const [id, c] of Object.entries(window.lumenDashboard.charts)) {
  out[id] = {labels: c.data.labels, datasets: c.data.datasets.map(d => ({label: d.label, data: d.data}))};
}
return out;
"""

# Pixel statistics of a canvas: how many pixels are painted, and how many are (close to) `rgb`.
CANVAS_PIXELS_JS = """
const [id, rgb] = arguments;
const canvas = document.getElementById(id);
const {data} = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
let painted = 0, matching = 0;
for (let i = 0; i < data.length; i += 4) {
  if (data[i + 3] > 0) painted++;
  if (data[i + 3] > 200 && Math.abs(data[i] - rgb[0]) < 8 && Math.abs(data[i + 1] - rgb[1]) < 8
      && Math.abs(data[i + 2] - rgb[2]) < 8) matching++;
}
return {painted, matching, width: canvas.width, height: canvas.height};
"""


def by_label(chart: dict, dataset: str) -> dict:
    ds = next(d for d in chart["datasets"] if d["label"] == dataset)
    return dict(zip(chart["labels"], ds["data"]))


@pytest.mark.browser
def test_dashboard_in_chromium(dash_gateway: Server, dash_admin: httpx.Client, dash_token: str, traffic: dict) -> None:
    from selenium.webdriver.common.by import By

    alpha, beta = traffic["alpha"], traffic["beta"]
    # What the admin API says: the page must draw exactly this.
    api_model = {}
    api_key = {}
    for key in (alpha, beta):
        usage = dash_admin.get("/admin/usage", params={"key_id": key["id"], "group_by": "model"}).json()
        for row in usage["data"]:
            m = api_model.setdefault(row["model"], {"requests": 0, "cost_usd": 0.0})
            m["requests"] += row["requests"]
            m["cost_usd"] += row["cost_usd"]
        api_key[key["name"]] = usage["total"]["requests"]
    assert api_model.keys() == {"gpt-4o-mini", "claude-3-5-haiku"}, api_model
    assert api_model["gpt-4o-mini"]["requests"] == 4 and api_model["claude-3-5-haiku"]["requests"] == 3, api_model
    assert api_key == {alpha["name"]: 4, beta["name"]: 3}
    head = dash_admin.get("/admin/audit/head").json()

    driver, profile = chromium_driver()
    try:
        driver.get(f"{dash_gateway.url}{PAGE}")
        body = driver.find_element(By.TAG_NAME, "body")
        assert body.get_attribute("data-state") == "signed-out"

        # A wrong token is refused and nothing is shown.
        driver.find_element(By.ID, "token").send_keys("adm_wrong")
        driver.find_element(By.ID, "sign-in-button").click()
        wait_for(driver, lambda d: d.find_element(By.ID, "sign-in-error").text, "the sign-in error")
        assert "not valid" in driver.find_element(By.ID, "sign-in-error").text
        assert not driver.find_element(By.ID, "main").is_displayed()

        # The right one signs in; the page loads the admin API and draws.
        driver.find_element(By.ID, "token").clear()
        driver.find_element(By.ID, "token").send_keys(dash_token)
        driver.find_element(By.ID, "sign-in-button").click()
        wait_for(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "ready", "the dashboard to load")
        assert driver.find_element(By.ID, "load-error").get_attribute("hidden") is not None, \
            driver.find_element(By.ID, "load-error").text

        # The token never reaches a URL: not the page's, not any request the page made.
        assert driver.current_url == f"{dash_gateway.url}{PAGE}"
        urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert any("/admin/usage" in u for u in urls), urls
        assert not [u for u in urls if dash_token in u]
        assert dash_token not in driver.page_source

        charts = driver.execute_script(CHART_DATA_JS)
        assert set(charts) == {"chart-day", "chart-model", "chart-key"}

        model_requests = by_label(charts["chart-model"], "Requests")
        assert model_requests == {m: v["requests"] for m, v in api_model.items()}
        model_spend = by_label(charts["chart-model"], "Spend (USD)")
        for m, v in api_model.items():
            assert model_spend[m] == pytest.approx(v["cost_usd"]) and model_spend[m] > 0, m

        assert by_label(charts["chart-key"], "Requests") == api_key

        day = charts["chart-day"]
        today = time.strftime("%m-%d", time.gmtime())
        assert day["labels"][-1] == today and len(day["labels"]) == 14
        per_model_today = {d["label"]: d["data"][-1] for d in day["datasets"] if d["label"] != "Spend (USD)"}
        assert per_model_today == {m: v["requests"] for m, v in api_model.items()}
        assert by_label(day, "Spend (USD)")[today] == pytest.approx(sum(v["cost_usd"] for v in api_model.values()))

        # The canvases really are painted, with the bars' colour in the bar charts.
        for canvas in ["chart-day", "chart-model", "chart-key"]:
            px = driver.execute_script(CANVAS_PIXELS_JS, canvas, list(REQUESTS_RGB))
            assert px["width"] > 200 and px["height"] > 100, (canvas, px)
            assert px["painted"] > 0.02 * px["width"] * px["height"], (canvas, px)
            assert px["matching"] > 200, (canvas, px)

        assert driver.find_element(By.ID, "kpi-requests").text == "7"
        assert driver.find_element(By.ID, "kpi-errors").text == "1 error"

        # Request log: every request id, the two providers of gpt-4o-mini (openai, and azure after
        # the 503s), the failed claude request; no content column.
        log = driver.find_element(By.ID, "log").text
        for rid in traffic["request_ids"]:
            assert rid in log, rid
        headers = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "#log th")]
        assert {"Time", "Request", "Key", "Model", "Provider", "Cost", "Outcome"} <= set(headers), headers
        assert not {"messages", "content", "prompt"} & {h.lower() for h in headers}
        routes = driver.find_element(By.ID, "routes").text
        assert "azure" in routes and "openai" in routes and "anthropic" in routes, routes
        failures = driver.find_element(By.ID, "fallbacks").text
        assert "claude-3-5-haiku" in failures and "upstream_error" in failures, failures

        # Provider health: openai's gpt-4o-mini saw the 503s.
        health_rows = {
            tuple(td.text for td in row.find_elements(By.TAG_NAME, "td")[:2]): row.text
            for row in driver.find_elements(By.CSS_SELECTOR, "#health tbody tr")
        }
        assert ("openai", "gpt-4o-mini") in health_rows and ("anthropic", "claude-3-5-haiku") in health_rows, health_rows
        assert "closed" in health_rows[("anthropic", "claude-3-5-haiku")] or "open" in health_rows[("anthropic", "claude-3-5-haiku")]

        # Audit head as the API reports it, and the verify button.
        assert driver.find_element(By.ID, "audit-hash").text == head["hash"]
        driver.find_element(By.ID, "audit-verify").click()
        wait_for(driver, lambda d: "chain intact" in d.find_element(By.ID, "audit-result").text, "the audit verification")

        # The screenshot, the whole page.
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, min(max(height + 20, 1000), 4000))
        driver.execute_script("window.scrollTo(0, 0)")
        wait_for(driver, lambda d: d.execute_script(CANVAS_PIXELS_JS, "chart-day", list(REQUESTS_RGB))["matching"] > 0, "the resized chart")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(SCREENSHOT)), SCREENSHOT
        assert SCREENSHOT.stat().st_size > 20_000

        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "adm_wrong" not in e["message"]
                  and "/admin/keys - Failed to load resource: the server responded with a status of 401" not in e["message"]]
        assert not severe, severe

        # A reload keeps the session (sessionStorage, this tab only), still with a clean URL.
        driver.refresh()
        wait_for(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "ready", "the reloaded dashboard")
        assert driver.current_url == f"{dash_gateway.url}{PAGE}"
        assert driver.find_element(By.ID, "kpi-requests").text == "7"

        # Signing out forgets the token.
        driver.find_element(By.ID, "sign-out").click()
        assert driver.execute_script("return sessionStorage.length") == 0
        assert driver.find_element(By.ID, "sign-in").is_displayed()
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# Rewrites the admin API's answers in the page (before any page script runs) so optional fields
# have values the test can check: `saved_usd` on usage rows and `route` on records (the API
# reports both itself, from the routes the mock made: these fixed values replace them), and
# `fallbacks`, `saved_usd` and an unknown `region` on records (fields the API does not have yet).
FUTURE_FIELDS_JS = """
const realFetch = window.fetch.bind(window);
window.fetch = async (input, init) => {
  const res = await realFetch(input, init);
  const url = String(input);
  if (!res.ok || !url.includes('/admin/usage')) return res;
  const body = await res.clone().json();
  if (url.includes('/admin/usage/records')) {
    body.data = body.data.map(r => Object.assign({}, r, {
      route: 'model=' + r.model + '; tier=lumen/auto; score=0.12; reason=cheapest model that clears the floor',
      fallbacks: r.provider === 'azure' ? ['openai/gpt-4o-mini=error_503', 'openai/gpt-4o-mini=error_503'] : [],
      saved_usd: 0.25,
      region: 'eu-west',
    }));
  } else {
    body.data = body.data.map(row => Object.assign({}, row, {saved_usd: 0.5 * row.requests}));
    body.total = Object.assign({}, body.total, {saved_usd: 0.5 * body.total.requests});
  }
  return new Response(JSON.stringify(body), {status: res.status, headers: res.headers});
};
"""


def sign_in(driver, url: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "sign-in-button").click()
    wait_for(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "ready", "the dashboard to load")


@pytest.mark.browser
def test_dashboard_shows_fields_the_api_adds_later(dash_gateway: Server, dash_token: str, traffic: dict) -> None:
    from selenium.webdriver.common.by import By

    driver, profile = chromium_driver()
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": FUTURE_FIELDS_JS})
        sign_in(driver, f"{dash_gateway.url}{PAGE}", dash_token)

        # Saved by routing: the card appears with the usage rows' total (7 requests × $0.50).
        assert driver.find_element(By.ID, "kpi-saved-card").is_displayed()
        assert driver.find_element(By.ID, "kpi-saved").text == "$3.50"
        charts = driver.execute_script(CHART_DATA_JS)
        assert by_label(charts["chart-model"], "Saved (USD)") == {"gpt-4o-mini": 2.0, "claude-3-5-haiku": 1.5}

        # Routes: tier and reason from the records' `route`; the note about missing routes is gone.
        routes = driver.find_element(By.ID, "routes").text
        assert "lumen/auto" in routes and "cheapest model that clears the floor" in routes, routes
        assert not driver.find_element(By.ID, "routes-note").is_displayed()

        # Fallbacks: the attempts of the request azure served after openai's 503s.
        fallbacks = driver.find_element(By.ID, "fallbacks").text
        assert "openai/gpt-4o-mini=error_503, openai/gpt-4o-mini=error_503" in fallbacks, fallbacks
        assert "azure" in fallbacks

        # The log shows every field a record has, known or not.
        headers = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "#log th")]
        assert {"route", "fallbacks", "saved_usd", "region"} <= set(headers), headers
        assert "eu-west" in driver.find_element(By.ID, "log").text
        assert driver.find_element(By.ID, "load-error").get_attribute("hidden") is not None
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
