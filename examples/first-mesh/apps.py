"""The applications of "Your first mesh" (docs/first-mesh.md): ``python apps.py ROLE ...``.

- ``backend --port P --version V``: answers every GET with ``backend V``;
- ``frontend --port P --backend URL``: answers every GET by calling ``URL`` (through the
  ``HTTP_PROXY`` of its environment, as any application would) and returning
  ``frontend -> <what the backend said>``; a failed call is a 502 with the reason.

Plain standard-library servers (threads): applications that know nothing of meshcore. The
test mesh of meshcore's own tests (tests/test_mesh_e2e.py) runs them too.
"""

from __future__ import annotations

import argparse
import http.server
import sys
import urllib.error
import urllib.request


class _Quiet(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        """No access log: the proxies log."""

    def answer(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def backend(version: str) -> type[http.server.BaseHTTPRequestHandler]:
    """A handler that answers ``backend VERSION``."""

    class Backend(_Quiet):
        def do_GET(self) -> None:
            self.answer(200, f"backend {version}\n")

    return Backend


def frontend(url: str) -> type[http.server.BaseHTTPRequestHandler]:
    """A handler that calls ``url`` (through HTTP_PROXY) and says what it answered."""
    opener = urllib.request.build_opener()  # HTTP_PROXY from the environment, as usual

    class Frontend(_Quiet):
        def do_GET(self) -> None:
            try:
                with opener.open(url, timeout=10) as response:
                    said = response.read().decode()
            except (urllib.error.URLError, OSError) as err:
                self.answer(502, f"frontend: backend failed: {err}\n")
                return
            self.answer(200, f"frontend -> {said.strip()}\n")

    return Frontend


def main(argv: list[str]) -> int:
    """Serve one application until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["backend", "frontend"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", default="v1")
    parser.add_argument("--backend", default="http://backend/")
    args = parser.parse_args(argv)
    handler = backend(args.version) if args.role == "backend" else frontend(args.backend)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    server.daemon_threads = True
    print(f"{args.role} listening on 127.0.0.1:{args.port}", flush=True)  # noqa: T201 - the readiness line
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
