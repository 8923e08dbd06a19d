"""The demo's applications, in the spirit of Istio's Bookinfo: ``python -m meshcore.demo.apps ROLE``.

- ``productpage``: the front page; calls ``details`` and ``reviews`` and answers JSON with
  what they said (a failed call is reported in ``errors``, the page still answers 200, as
  Bookinfo's does);
- ``details``: a book's details;
- ``reviews --version v1|v2|v3``: reviews; v2 and v3 call ``ratings`` for the stars (v2
  black, v3 red), v1 does not;
- ``ratings``: the stars.

Plain standard-library servers (threads) that know nothing of meshcore: they reach each
other by service name through the ``HTTP_PROXY`` of their environment (their sidecar's
HTTP proxy listener), as any application would. Each prints one readiness line.

Like Bookinfo's, they forward the trace context and request id of the request they serve
on the calls it makes (:data:`PROPAGATED`): a sidecar cannot tell which outgoing call
belongs to which incoming request, the application can, so that one page view is one trace.
"""

from __future__ import annotations

import argparse
import http.server
import json
import signal
import sys
import urllib.error
import urllib.request
from typing import Any

__all__ = ["PROPAGATED", "main"]

PROPAGATED = (
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-request-id",
)
"""The headers copied from the request served to the calls made for it (Istio's list, in part)."""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    role = ""
    version = "v1"
    opener = urllib.request.build_opener()  # HTTP_PROXY from the environment, as usual

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        """No access log: the sidecars log."""

    def answer(self, status: int, data: dict[str, Any]) -> None:
        body = (json.dumps(data) + "\n").encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def call(self, url: str, errors: list[str]) -> Any:
        """GET ``url`` through the mesh; None (and a line in ``errors``) if it failed."""
        forwarded = {name: value for name in PROPAGATED if (value := self.headers.get(name)) is not None}
        try:
            request = urllib.request.Request(url, headers=forwarded)  # noqa: S310 - http:// URLs of this file
            with self.opener.open(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            errors.append(f"{url}: HTTP {err.code} {err.read().decode(errors='replace').strip()[:80]}")
        except (urllib.error.URLError, OSError, ValueError) as err:
            errors.append(f"{url}: {getattr(err, 'reason', err)}")
        return None

    def do_GET(self) -> None:
        errors: list[str] = []
        if self.role == "productpage":
            details = self.call("http://details/details/0", errors)
            reviews = self.call("http://reviews/reviews/0", errors)
            errors += [f"reviews: {e}" for e in (reviews or {}).get("errors", [])]
            self.answer(200, {"product": 0, "details": details, "reviews": reviews, "errors": errors})
        elif self.role == "details":
            self.answer(200, {"id": 0, "author": "William Shakespeare", "year": 1595, "type": "paperback"})
        elif self.role == "ratings":
            self.answer(200, {"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}})
        else:
            out: dict[str, Any] = {
                "id": 0,
                "version": self.version,
                "reviews": ["An extremely entertaining play."],
            }
            if self.version != "v1":
                ratings = self.call("http://ratings/ratings/0", errors)
                out["stars"] = {"colour": "black" if self.version == "v2" else "red", "ratings": ratings}
            out["errors"] = errors
            self.answer(200, out)


def main(argv: list[str] | None = None) -> int:
    """Serve one application until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m meshcore.demo.apps")
    parser.add_argument("role", choices=["productpage", "details", "reviews", "ratings"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", default="v1", choices=["v1", "v2", "v3"])
    args = parser.parse_args(argv)
    handler = type("Handler", (_Handler,), {"role": args.role, "version": args.version})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    server.daemon_threads = True

    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"{args.role} {args.version} listening on 127.0.0.1:{args.port}", flush=True)  # noqa: T201 - readiness
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
