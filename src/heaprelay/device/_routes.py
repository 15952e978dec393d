"""The device-mode routes (see the package docstring)."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from heaprelay.config import Source
from heaprelay.device._bundle import bundle
from heaprelay.device._settings import rudderstack_config, segment_settings
from heaprelay.ingest import basic_user

#: Settings are read on every page load: browsers and proxies may keep them this long.
SETTINGS_MAX_AGE: Final = 300
_IMMUTABLE: Final = "public, max-age=31536000, immutable"
_JS: Final = "application/javascript; charset=utf-8"
_MAX_ANSWERS: Final = 1024

Endpoint = Callable[[Request], Awaitable[Response]]


def device_routes(sources: tuple[Source, ...], public_url: str | None = None) -> list[BaseRoute]:
    """The routes analytics-next and RudderStack's JS SDK fetch. ``public_url``: the relay as
    browsers reach it (behind a proxy); ``None``: each request's own scheme and host."""
    by_key = {s.write_key: s for s in sources}
    # (route, write key, base URL) -> (JSON body, ETag). The configuration does not change
    # while the server runs; the base URL comes from the request's Host, so the cache is
    # bounded (emptied when full) rather than grown by whatever hosts clients send.
    answers: dict[tuple[str, str, str], tuple[bytes, str]] = {}

    def base_of(request: Request) -> str:
        return public_url.rstrip("/") if public_url else str(request.base_url).rstrip("/")

    def cors(request: Request, source: Source | None) -> dict[str, str]:
        origin = request.headers.get("origin")
        candidates = (source,) if source is not None else sources
        if origin is None or not any(s.allows_origin(origin) for s in candidates):
            return {}
        return {"access-control-allow-origin": origin, "vary": "Origin"}

    async def segment(request: Request) -> Response:
        source = by_key.get(request.path_params["write_key"])
        if source is None:
            return _unknown_key(cors(request, None))
        base = base_of(request)
        answer = answers.get(("segment", source.write_key, base))
        if answer is None:
            answer = _json_answer(segment_settings(source, base, bundle().version))
            remember(("segment", source.write_key, base), answer)
        return _cached_json(request, answer, cors(request, source))

    def remember(key: tuple[str, str, str], answer: tuple[bytes, str]) -> None:
        if len(answers) >= _MAX_ANSWERS:
            answers.clear()
        answers[key] = answer

    async def rudderstack(request: Request) -> Response:
        if request.method == "OPTIONS":
            return _preflight(cors(request, None))
        key = request.query_params.get("writeKey") or None
        if key is None:
            try:
                key = basic_user(request.headers.get("authorization"))
            except ValueError as exc:
                return _error(401, "invalid_auth", str(exc), cors(request, None))
        if key is None:
            return _error(
                401,
                "missing_write_key",
                "no write key: send it as ?writeKey=KEY or as the HTTP Basic user name",
                cors(request, None),
            )
        source = by_key.get(key)
        if source is None:
            return _unknown_key(cors(request, None))
        base = base_of(request)
        answer = answers.get(("rudderstack", source.write_key, base))
        if answer is None:
            answer = _json_answer(rudderstack_config(source, base))
            remember(("rudderstack", source.write_key, base), answer)
        return _cached_json(request, answer, cors(request, source))

    async def segment_bundle(request: Request) -> Response:
        current = request.path_params["version"] == bundle().version
        return _script(request, _IMMUTABLE if current else f"public, max-age={SETTINGS_MAX_AGE}")

    async def rudderstack_bundle(request: Request) -> Response:
        return _script(request, f"public, max-age={SETTINGS_MAX_AGE}")

    get = ["GET", "HEAD"]
    classic = "/next-integrations/integrations/{name}/{version}/{name}.dynamic.js.gz"
    return [
        Route("/v1/projects/{write_key}/settings", segment, methods=get),
        Route("/sourceConfig", rudderstack, methods=[*get, "OPTIONS"]),
        Route("/sourceConfig/", rudderstack, methods=[*get, "OPTIONS"]),
        # heap, or aGVhcA when analytics-next is loaded with obfuscate: true
        *(
            Route(classic.replace("{name}", name), segment_bundle, methods=get)
            for name in ("heap", "aGVhcA")
        ),
        # destSDKBaseURL = {relay}/js-integrations (or any path ending so, e.g. the one
        # lockIntegrationsVersion rewrites /v3/modern/js-integrations to)
        Route("/js-integrations/Heap.min.js", rudderstack_bundle, methods=get),
        Route("/{prefix:path}/js-integrations/Heap.min.js", rudderstack_bundle, methods=get),
    ]


def _script(request: Request, cache_control: str) -> Response:
    """The integration, gzipped when the client takes it (every browser does)."""
    b = bundle()
    headers = {
        "cache-control": cache_control,
        "etag": f'"{b.version}"',
        "vary": "Accept-Encoding",
        "access-control-allow-origin": "*",
    }
    if request.headers.get("if-none-match") == headers["etag"]:
        return Response(status_code=304, headers=headers)
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["content-encoding"] = "gzip"
        return Response(b.gzipped, headers=headers, media_type=_JS)
    return Response(b.script, headers=headers, media_type=_JS)


def _json_answer(body: Mapping[str, Any]) -> tuple[bytes, str]:
    data = orjson.dumps(body)
    return data, '"' + hashlib.sha256(data).hexdigest()[:16] + '"'


def _cached_json(request: Request, answer: tuple[bytes, str], headers: dict[str, str]) -> Response:
    data, etag = answer
    headers = {**headers, "cache-control": f"public, max-age={SETTINGS_MAX_AGE}", "etag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, headers=headers, media_type="application/json")


def _preflight(headers: dict[str, str]) -> Response:
    if not headers:
        return _error(403, "origin_not_allowed", "this origin is not allowed", {})
    headers = {
        **headers,
        "access-control-allow-methods": "GET, HEAD, OPTIONS",
        "access-control-allow-headers": "authorization, accept, content-type",
        "access-control-max-age": "7200",
    }
    return Response(status_code=204, headers=headers)


def _unknown_key(headers: dict[str, str]) -> Response:
    return _error(404, "unknown_write_key", "no source has this write key", headers)


def _error(status: int, code: str, message: str, headers: dict[str, str]) -> Response:
    body = orjson.dumps({"code": code, "message": message})
    return Response(body, status_code=status, headers=headers, media_type="application/json")
