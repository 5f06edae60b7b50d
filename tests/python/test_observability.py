"""What monitoring tools read: ``GET /metrics`` parsed with Prometheus' own text parser
(``prometheus_client.parser``), and the OpenTelemetry trace of a request whose first attempt
fails and falls back, received over OTLP/HTTP (JSON) by a small collector here and decoded with
the official OpenTelemetry protobuf definitions (``opentelemetry-proto``).

The gateway here is its own deployment (``deploy`` from conftest, any ``LUMEN_TEST_RUNTIME``) with
``otel_exporter_otlp_endpoint`` pointing at the collector, so the session's shared gateway stays
untraced.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from prometheus_client.parser import text_string_to_metric_families

from conftest import RUNTIME, Deployment, Server, create_key, deploy, gateway_env


class Collector:
    """An OTLP/HTTP receiver on 127.0.0.1:0: keeps every ``POST /v1/traces`` body."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with outer.lock:
                    outer.posts.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def traces(self) -> list[ExportTraceServiceRequest]:
        with self.lock:
            posts = list(self.posts)
        out = []
        for path, headers, body in posts:
            assert path == "/v1/traces", path
            assert headers["content-type"].startswith("application/json"), headers
            out.append(decode_otlp_json(body))
        return out

    def stop(self) -> None:
        self.server.shutdown()


def decode_otlp_json(body: bytes) -> ExportTraceServiceRequest:
    """OTLP/JSON writes trace and span ids as hex (the OTLP spec's one departure from the
    protobuf JSON mapping, which uses base64 for bytes): turn them into base64, then parse with
    the official message type. Unknown fields are errors."""
    doc = json.loads(body)
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for field in ("traceId", "spanId", "parentSpanId"):
                    if field in span:
                        span[field] = base64.b64encode(bytes.fromhex(span[field])).decode()
    return json_format.Parse(json.dumps(doc), ExportTraceServiceRequest())


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def traced(mock_server: Server, admin_token: str, log_dir: Path, tmp_path_factory: pytest.TempPathFactory, collector: Collector) -> Iterator[Deployment]:
    env = gateway_env(mock_server, admin_token)
    env["SPIN_VARIABLE_OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.url
    env["SPIN_VARIABLE_OTEL_ALLOWED_HOST"] = collector.url
    d = deploy("lumen-otel", env, log_dir, tmp_path_factory.mktemp("lumen-otel-state"))
    yield d
    d.stop()


@pytest.fixture(scope="module")
def otel_admin(traced: Deployment, admin_token: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=traced.admin.url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30) as c:
        yield c


def scrape(admin: httpx.Client) -> dict[tuple[str, frozenset], float]:
    r = admin.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: dict[tuple[str, frozenset], float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def val(m: dict, name: str, **labels: str) -> float:
    return m.get((name, frozenset(labels.items())), 0.0)


def chat(client: httpx.Client, key: str, text: str, headers: dict[str, str] | None = None, **lumen: object) -> httpx.Response:
    body: dict = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    if lumen:
        body["lumen"] = lumen
    return client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}", **(headers or {})})


def test_metrics_parse_and_count_the_requests_made(traced: Deployment, otel_admin: httpx.Client) -> None:
    anonymous = httpx.get(f"{traced.client.url}/metrics", timeout=30)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{traced.client.url}/healthz", timeout=30).json() == {"status": "ok"}
    assert httpx.get(f"{traced.client.url}/readyz", timeout=30).status_code == 200

    key = create_key(otel_admin, "metrics")["key"]
    before = scrape(otel_admin)
    prompt = completion = 0
    cost = 0.0
    with httpx.Client(base_url=traced.client.url, timeout=60) as client:
        for i in range(3):
            r = chat(client, key, f"metrics {i} {secrets.token_hex(4)} [mock tokens={3 + i}]")
            assert r.status_code == 200, r.text
            usage = r.json()["usage"]
            prompt += usage["prompt_tokens"]
            completion += usage["completion_tokens"]
            cost += float(r.headers["x-lumen-cost"])
        failed = chat(client, key, f"metrics fail {secrets.token_hex(4)} [mock status=500 only=openai]", retries=0, fallbacks=False)
        assert failed.status_code >= 500, failed.text
    after = scrape(otel_admin)

    def delta(name: str, **labels: str) -> float:
        return val(after, name, **labels) - val(before, name, **labels)

    m = {"model": "gpt-4o-mini"}
    assert delta("lumen_requests_total", **m) == 4
    assert delta("lumen_request_errors_total", **m) == 1
    assert delta("lumen_prompt_tokens_total", **m) == prompt
    assert delta("lumen_completion_tokens_total", **m) == completion == 3 + 4 + 5
    assert delta("lumen_cost_usd_total", **m) == pytest.approx(cost, abs=1e-9)
    assert ("lumen_saved_usd_total", frozenset(m.items())) in after
    mp = {"model": "gpt-4o-mini", "provider": "openai"}
    assert delta("lumen_today_requests_total", outcome="ok", **mp) == 3
    assert delta("lumen_today_requests_total", outcome="upstream_error", **mp) == 1
    assert delta("lumen_today_request_duration_seconds_count", **mp) == 4
    assert val(after, "lumen_today_request_duration_seconds_bucket", le="+Inf", **mp) == val(
        after, "lumen_today_request_duration_seconds_count", **mp
    )
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for (name, labels), v in after.items()
        if name == "lumen_today_request_duration_seconds_bucket" and dict(labels).get("provider") == "openai"
        and dict(labels).get("model") == "gpt-4o-mini"
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets), "histogram buckets are cumulative"
    # The failed attempt left a health record: the breaker is closed after one failure.
    assert val(after, "lumen_provider_breaker_open", provider="openai", model="gpt-4o-mini") == 0
    assert ("lumen_provider_up", frozenset({"provider": "openai", "model": "gpt-4o-mini"}.items())) in after
    assert val(after, "lumen_metrics_window_truncated") == 0


def test_a_failed_attempt_and_its_fallback_reach_the_collector(traced: Deployment, otel_admin: httpx.Client, collector: Collector, mock_server: Server) -> None:
    key = create_key(otel_admin, "traces")["key"]
    trace_id = secrets.token_hex(16)
    client_span = secrets.token_hex(8)
    marker = f"trace {secrets.token_hex(6)}"
    with httpx.Client(base_url=traced.client.url, timeout=60) as client:
        r = chat(client, key, f"{marker} [mock status=502 only=openai]", headers={"traceparent": f"00-{trace_id}-{client_span}-01"}, retries=0)
    assert r.status_code == 200, r.text
    assert r.headers["x-lumen-fallbacks"] == "openai/gpt-4o-mini=error_502, azure/gpt-4o-mini=ok"

    # Exported after the response is finished: wait for it.
    spans: list[Span] = []
    resource = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not spans:
        for req in collector.traces():
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    got = [s for s in ss.spans if s.trace_id.hex() == trace_id]
                    if got:
                        spans, resource = got, rs.resource
        time.sleep(0.1)
    assert spans, f"no trace {trace_id} reached the collector ({len(collector.posts)} posts)"
    assert {"key": "service.name", "value": {"stringValue": "lumen"}} in json_format.MessageToDict(resource)["attributes"]

    by_name: dict[str, list[Span]] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    assert sorted(by_name) == ["auth", "lumen.request", "route", "settle", "upstream"], sorted(by_name)
    (root,) = by_name["lumen.request"]
    (auth,) = by_name["auth"]
    (route,) = by_name["route"]
    (settle,) = by_name["settle"]
    assert root.parent_span_id.hex() == client_span, "the root continues the client's traceparent"
    assert root.kind == Span.SPAN_KIND_SERVER
    assert auth.parent_span_id == root.span_id and settle.parent_span_id == root.span_id
    assert route.parent_span_id == auth.span_id
    ids = [s.span_id for s in spans]
    assert len(set(ids)) == len(ids)

    def attrs(s: Span) -> dict[str, object]:
        out = {}
        for a in s.attributes:
            kind = a.value.WhichOneof("value")
            out[a.key] = getattr(a.value, kind)
        return out

    assert attrs(root)["http.response.status_code"] == 200
    assert attrs(root)["lumen.provider"] == "azure"
    failed, fallback = sorted(by_name["upstream"], key=lambda s: attrs(s)["lumen.attempt"])
    for s in (failed, fallback):
        assert s.parent_span_id == root.span_id
        assert s.kind == Span.SPAN_KIND_CLIENT
        assert root.start_time_unix_nano <= s.start_time_unix_nano <= s.end_time_unix_nano
    fa, fb = attrs(failed), attrs(fallback)
    assert (fa["lumen.provider"], fa["lumen.model"], fa["http.response.status_code"], fa["lumen.outcome"]) == ("openai", "gpt-4o-mini", 502, "error_502")
    assert failed.status.code == Status.STATUS_CODE_ERROR
    assert (fb["lumen.provider"], fb["lumen.model"], fb["http.response.status_code"], fb["lumen.outcome"]) == ("azure", "gpt-4o-mini", 200, "ok")
    assert fallback.status.code == Status.STATUS_CODE_OK
    assert fb["lumen.latency_ms"] > 0 and "lumen.time_to_headers_ms" in fb
    assert failed.end_time_unix_nano <= fallback.start_time_unix_nano
    assert auth.end_time_unix_nano <= failed.start_time_unix_nano
    assert settle.end_time_unix_nano <= root.end_time_unix_nano

    # Each upstream request carried a traceparent of this trace, naming its attempt's span.
    recorded = httpx.get(f"{mock_server.url}/mock/requests", params={"full": "1"}, timeout=30).json()
    mine = [q for q in recorded if marker in json.dumps(q.get("body"))]
    assert len(mine) == 2, mine
    parents = []
    for q in mine:
        headers = {k.lower(): v for k, v in q["headers"].items()}
        version, tid, parent, flags = headers["traceparent"].split("-")
        assert (version, tid, flags) == ("00", trace_id, "01")
        parents.append(parent)
    assert parents == [failed.span_id.hex(), fallback.span_id.hex()]
