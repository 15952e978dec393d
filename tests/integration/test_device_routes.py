"""What the relay serves the browser SDKs for device mode, over real HTTP (the whole server
app on a loopback port): analytics-next's settings and classic integration, RudderStack's
source config and ``Heap.min.js``; bad requests answered with a JSON error, never a 500."""

from __future__ import annotations

import base64
import contextlib
import gzip
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from heaprelay.config import Config, Consent, Destination, EventFilter, Role, Source
from heaprelay.device import bundle
from heaprelay.server import build_app
from heaprelay.testing.servers import serve_in_thread
from heaprelay.transform import DestinationSettings

WEB = Source(
    name="web",
    write_key="web-key",
    cors_origins=("https://shop.example",),
    destinations=(
        Destination(
            id="web-heap",
            settings=DestinationSettings(app_id="4242", profile="segment"),
            device_mode=True,
            event_filter=EventFilter("deny", ("Hidden",)),
            consent=(
                Consent("oneTrust", ("C0002",)),
                Consent("custom", ("analytics",), resolution="or"),
                Consent("ketch", ("p1",), legacy=True),
            ),
        ),
        Destination(id="web-other", settings=DestinationSettings(app_id="4343")),
    ),
)
SERVER = Source(
    name="backend",
    write_key="backend-key",
    destinations=(Destination(id="backend", settings=DestinationSettings(app_id="99")),),
)
ORIGIN = {"Origin": "https://shop.example"}


Serve = Callable[..., str]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Starts the relay (no delivery) on a loopback port; its URL."""
    with contextlib.ExitStack() as stack:

        def start(public_url: str | None = None, role: Role = "all") -> str:
            config = Config(
                sources=(WEB, SERVER), data_dir=tmp_path, public_url=public_url, role=role
            )
            return stack.enter_context(serve_in_thread(build_app(config, services=[])))

        yield start


@pytest.fixture
def relay(serve: Serve) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve()) as client:
        yield client


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


# --- analytics-next ------------------------------------------------------------------------


def test_segment_settings_point_at_the_relay_and_name_the_heap_integration(
    relay: httpx.Client,
) -> None:
    r = relay.get("/v1/projects/web-key/settings", headers=ORIGIN)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://shop.example"
    settings = r.json()
    host = relay.base_url.netloc.decode()
    segment_io = settings["integrations"]["Segment.io"]
    assert segment_io == {
        "apiKey": "web-key",
        "apiHost": f"{host}/v1",
        "protocol": "http",
        "unbundledIntegrations": [],
        "addBundledMetadata": True,
        "maybeBundledConfigIds": {},
    }
    heap = settings["integrations"]["Heap"]
    assert heap["appId"] == "4242"
    assert heap["scriptUrl"] == "https://cdn.heapanalytics.com/js/heap-4242.js"
    assert heap["profile"] == "segment"
    assert heap["versionSettings"] == {"version": bundle().version, "componentTypes": ["browser"]}
    assert (heap["type"], heap["bundlingStatus"]) == ("browser", "bundled")
    assert heap["eventFilteringOption"] == "blacklistedEvents"
    assert heap["blacklistedEvents"] == [{"eventName": "Hidden"}]
    assert settings["remotePlugins"] == []
    assert settings["metrics"]["sampleRate"] == 0  # no usage metrics posted anywhere


def test_settings_without_device_mode_only_point_the_sdk_at_the_relay(
    relay: httpx.Client,
) -> None:
    settings = relay.get("/v1/projects/backend-key/settings").json()
    assert list(settings["integrations"]) == ["Segment.io"]
    assert relay.get("/sourceConfig/?writeKey=backend-key").json()["source"]["destinations"] == []


def test_public_url_names_the_relay_behind_a_proxy(serve: Serve) -> None:
    url = serve("https://relay.example/collect")
    settings = httpx.get(f"{url}/v1/projects/web-key/settings").json()
    assert settings["integrations"]["Segment.io"]["apiHost"] == "relay.example/collect/v1"
    assert settings["integrations"]["Segment.io"]["protocol"] == "https"


def test_settings_are_cacheable(relay: httpx.Client) -> None:
    r = relay.get("/v1/projects/web-key/settings")
    assert r.headers["cache-control"] == "public, max-age=300"
    again = relay.get("/v1/projects/web-key/settings", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""


@pytest.mark.parametrize("key", ["nope", "web-key%20", "%E2%9C%93", "x" * 5000, "web-key%2Fx"])
def test_unknown_write_key_is_a_404_json(relay: httpx.Client, key: str) -> None:
    r = relay.get(f"/v1/projects/{key}/settings", headers=ORIGIN)
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert r.json()["code"] in ("unknown_write_key", "not_found")
    assert r.json()["message"]


def test_settings_refuse_cors_to_origins_the_source_does_not_allow(relay: httpx.Client) -> None:
    r = relay.get("/v1/projects/web-key/settings", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    any_origin = relay.get("/v1/projects/backend-key/settings", headers={"Origin": "https://x"})
    assert any_origin.headers["access-control-allow-origin"] == "https://x"


@pytest.mark.parametrize("name", ["heap", "aGVhcA"])
def test_classic_integration_bundle(relay: httpx.Client, name: str) -> None:
    version = bundle().version
    path = f"/next-integrations/integrations/{name}/{version}/{name}.dynamic.js.gz"
    r = relay.get(path, headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200
    assert r.headers["content-encoding"] == "gzip"
    assert r.headers["content-type"].startswith("application/javascript")
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert r.content == bundle().script  # httpx inflated it
    for name_ in ("window.heapDeps", "heapLoader", "heapIntegration", "Heap_RS"):
        assert name_.split(".")[-1].encode() in r.content
    raw = relay.get(path, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in raw.headers
    assert raw.content == bundle().script
    old = relay.get(f"/next-integrations/integrations/{name}/latest/{name}.dynamic.js.gz")
    assert old.headers["cache-control"] == "public, max-age=300"


def test_bundle_is_small() -> None:
    """The issue's goal: under 2 KB gzipped (as served)."""
    b = bundle()
    assert len(b.gzipped) < 2048, f"{len(b.gzipped)} bytes gzipped"
    assert gzip.decompress(b.gzipped) == b.script


# --- RudderStack ----------------------------------------------------------------------------


def test_source_config_by_query_or_basic_auth(relay: httpx.Client) -> None:
    query = "p=npm&v=3.34.1&build=modern&writeKey=web-key&lockIntegrationsVersion=true"
    by_query = relay.get(f"/sourceConfig/?{query}", headers=ORIGIN)
    by_auth = relay.get("/sourceConfig", headers={**basic("web-key"), **ORIGIN})
    assert by_query.status_code == by_auth.status_code == 200
    assert by_query.json() == by_auth.json()
    assert by_query.headers["access-control-allow-origin"] == "https://shop.example"
    source = by_query.json()["source"]
    assert (source["id"], source["writeKey"], source["enabled"]) == ("web", "web-key", True)
    assert source["config"]["statsCollection"]["metrics"]["enabled"] is False
    [dest] = source["destinations"]
    assert dest["id"] == "web-heap"
    assert dest["destinationDefinition"]["name"] == "HEAP"
    assert dest["destinationDefinition"]["displayName"] == "Heap.io"
    config = dest["config"]
    assert (config["appId"], config["connectionMode"], config["useNativeSDK"]) == (
        "4242",
        "device",
        True,
    )
    assert config["eventFilteringOption"] == "blacklistedEvents"
    assert config["blacklistedEvents"] == [{"eventName": "Hidden"}]
    assert config["consentManagement"] == [
        {"provider": "oneTrust", "consents": [{"consent": "C0002"}]},
        {"provider": "custom", "consents": [{"consent": "analytics"}], "resolutionStrategy": "or"},
    ]
    assert config["ketchConsentPurposes"] == [{"purpose": "p1"}]


def test_source_config_preflight(relay: httpx.Client) -> None:
    r = relay.options(
        "/sourceConfig/",
        headers={
            **ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "https://shop.example"
    assert "authorization" in r.headers["access-control-allow-headers"]
    # the preflight carries no write key: any origin that some source allows passes it
    assert relay.options("/sourceConfig/", headers={"Origin": "https://x"}).status_code == 204


@pytest.mark.parametrize(
    ("request_kw", "status", "code"),
    [
        ({"params": {"writeKey": "nope"}}, 404, "unknown_write_key"),
        ({"headers": basic("nope")}, 404, "unknown_write_key"),
        ({}, 401, "missing_write_key"),
        ({"headers": {"Authorization": "Basic !!!"}}, 401, "invalid_auth"),
        ({"headers": {"Authorization": "Bearer x"}}, 401, "missing_write_key"),
    ],
)
def test_source_config_errors_are_json(
    relay: httpx.Client, request_kw: dict[str, object], status: int, code: str
) -> None:
    r = relay.get("/sourceConfig/", **request_kw)  # type: ignore[arg-type]
    assert r.status_code == status
    assert r.json()["code"] == code


@pytest.mark.parametrize(
    "path", ["/js-integrations/Heap.min.js", "/v3/modern/js-integrations/Heap.min.js"]
)
def test_rudderstack_bundle(relay: httpx.Client, path: str) -> None:
    r = relay.get(path)
    assert r.status_code == 200
    assert r.content == bundle().script
    assert b"Heap_RS" in r.content
    assert r.headers["etag"] == f'"{bundle().version}"'
    assert relay.get(path, headers={"If-None-Match": r.headers["etag"]}).status_code == 304


def test_a_worker_serves_no_device_routes(serve: Serve) -> None:
    url = serve(role="worker")
    r = httpx.get(f"{url}/v1/projects/web-key/settings")
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"
