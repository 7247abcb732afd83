"""The gate in front of the service: who may call it, and a request body read in full first.

Per request, in this order: a request id (the client's ``X-Request-ID`` when it is sane), the
Host header against ``allowed_hosts`` (DNS rebinding), the API key (``X-API-Key`` or
``Authorization: Bearer``, compared in constant time), then the whole body under
``max_request_mb`` and ``body_timeout_s``. Only then does the app see the request, so a slow
upload never holds a concurrency slot. Every answer carries ``X-Request-ID`` and is logged as
one JSON line; errors are JSON and never show a path or a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vitft.deploy.serve_input import BadInput

log = logging.getLogger(__name__)
access_log = logging.getLogger("vitft.serve.access")

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
LINGER_S = 5.0  # how long a refused upload may go on sending before its connection is closed
OPEN_PATHS = ("/health", "/ready", "/")  # liveness probes and the page's HTML need no key
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class Access:
    api_key: str | None = None
    allowed_hosts: tuple[str, ...] = LOCAL_HOSTS


class ClientGone(Exception):
    """The client disconnected before its body was in."""


def host_of(header: str) -> str:
    """``Host`` header -> host name, without the port ("[::1]:8000" -> "::1")."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def key_of(headers: dict[bytes, bytes]) -> bytes | None:
    """The API key a request carries, from ``X-API-Key`` or ``Authorization: Bearer``."""
    if b"x-api-key" in headers:
        return headers[b"x-api-key"].strip()
    scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" and token.strip() else None


async def send_json(
    send: Callable,
    status: int,
    doc: dict,
    extra: list | None = None,
    drain: Callable | None = None,
) -> None:
    """Send a JSON answer; with ``drain``, await it between the answer and the end of the response.

    A server that closes a socket with unread request bytes sends a TCP reset, and the client's
    stack may then drop the answer before the client reads it: an upload refused before its body
    was read would see "connection reset" instead of its 413. So the answer goes out first and
    the rest of the body is read and dropped (``drain``) before the connection closes.
    """
    body = json.dumps(doc).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
    )
    await send({"type": "http.response.body", "body": body, "more_body": drain is not None})
    if drain is not None:
        await drain()
        await send({"type": "http.response.body", "body": b""})


async def discard_body(receive: Callable, seconds: float) -> None:
    """Read and drop what is left of a request body, for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = await asyncio.wait_for(receive(), left)
        except asyncio.TimeoutError:
            return
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return


class Gate:
    """ASGI middleware: request id, Host check, API key, body read in full, log and metrics.

    ``observe(path, status, seconds)`` is called once per HTTP request, whatever answered it.
    """

    def __init__(
        self,
        app: Any,
        access: Access,
        max_bytes: int,
        body_timeout_s: float,
        observe: Callable[[str, int, float], None] | None = None,
        max_buffered: int = 0,
    ):
        self.app = app
        self.max_buffered = max_buffered  # body bytes of all requests in progress; 0: no cap
        self.buffered = 0
        self.access = access
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s
        self.observe = observe
        self._key = access.api_key.encode() if access.api_key else None

    def refusal(self, scope: dict, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        """(status, reason) when the request may not go further, before its body is read."""
        allowed = self.access.allowed_hosts
        host = host_of(headers.get(b"host", b"").decode("latin-1"))
        if "*" not in allowed and host not in allowed:
            return 400, f"Host {host[:100]!r} is not in allowed_hosts (add it to serve it there)"
        if self._key is not None and scope["path"] not in OPEN_PATHS:
            given = key_of(headers)
            if given is None or not hmac.compare_digest(given, self._key):
                return 401, "missing or wrong API key: send X-API-Key or Authorization: Bearer"
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes > 0:
            return 413, self._too_big()
        return None

    def _linger(self, receive: Callable) -> Callable:
        return lambda: discard_body(receive, min(LINGER_S, self.body_timeout_s))

    def _too_big(self) -> str:
        return f"request body over max_request_mb={self.max_bytes / 1e6:g} MB"

    async def read_body(self, receive: Callable, held: list[int]) -> bytes:
        """The whole body, within ``max_bytes`` and ``body_timeout_s`` (chunked bodies too);
        ``held[0]`` counts its bytes in ``buffered`` until the caller gives them back."""
        deadline = time.monotonic() + self.body_timeout_s
        chunks, seen = [], 0
        while True:
            left = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.001))
            except asyncio.TimeoutError as err:
                raise BadInput(
                    408, f"request body not in after body_timeout_s={self.body_timeout_s:g} s"
                ) from err
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            seen += len(chunk)
            held[0] += len(chunk)
            self.buffered += len(chunk)
            if seen > self.max_bytes > 0:
                raise BadInput(413, self._too_big())
            if self.buffered > self.max_buffered > 0:
                raise BadInput(
                    503, f"uploads in progress over max_uploads_mb={self.max_buffered / 1e6:g}"
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        headers = dict(scope.get("headers", []))
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        sent: dict[str, Any] = {"status": 499}  # 499: the client left before an answer

        async def tagged(message: dict) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self._serve(scope, receive, tagged, headers, rid)
        except ClientGone:
            pass
        except Exception:  # noqa: BLE001  (logged here with its id; the client gets JSON)
            log.exception("request %s failed", rid)
            if sent["status"] == 499:
                detail = f"internal error; see the server log for request id {rid}"
                await send_json(tagged, 500, {"detail": detail, "request_id": rid})
        finally:
            self._record(scope, sent["status"], time.perf_counter() - t0, rid)

    async def _serve(
        self, scope: dict, receive: Callable, send: Callable, headers: dict, rid: str
    ) -> None:
        refused = self.refusal(scope, headers)
        if refused is not None:
            status, reason = refused
            extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
            doc = {"detail": reason, "request_id": rid}
            return await send_json(send, status, doc, extra, self._linger(receive))
        held = [0]
        try:
            await self._serve_body(scope, receive, send, rid, held)
        finally:
            self.buffered -= held[0]

    async def _serve_body(
        self, scope: dict, receive: Callable, send: Callable, rid: str, held: list[int]
    ) -> None:
        try:
            body = await self.read_body(receive, held)
        except BadInput as err:
            retry = [(b"retry-after", b"1")] if err.status == 503 else []
            doc = {"detail": err.reason, "request_id": rid}
            drain = self._linger(receive) if err.status in (413, 503) else None  # 408: it stalled
            return await send_json(send, err.status, doc, retry, drain)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only a disconnect comes

        await self.app(scope, replay, send)

    def _record(self, scope: dict, status: int, seconds: float, rid: str) -> None:
        if self.observe is not None:
            self.observe(scope["path"], status, seconds)
        client = scope.get("client") or ("", 0)
        line = {
            "request_id": rid,
            "method": scope.get("method"),
            "path": scope["path"][:200],
            "status": status,
            "ms": round(seconds * 1000, 2),
            "client": client[0],
            **scope["state"].get("log", {}),
        }
        access_log.info(json.dumps(line))
