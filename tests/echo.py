#!/usr/bin/env python3
"""Echo upstream for oauth-pep tests and the demo.

    python tests/echo.py --port N

Any method and path -> 200 JSON
    {"method": ..., "path": ... (with query), "headers": {lowercased: value}, "body": ...}
A repeated header's values are joined with ", ". A HEAD answer has no body; it
carries the Authorization header received in X-Echo-Authorization. The body is decoded as
UTF-8 (invalid bytes replaced). Prints READY on stdout once listening.
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler

from serving import serve


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "oauth-pep-test-echo/1"
    quiet = False

    def log_message(self, fmt, *args):
        if not self.quiet:
            sys.stderr.write("echo: %s %s\n" % (self.address_string(), fmt % args))

    def _read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until an empty line
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                out += self.rfile.read(size)
                self.rfile.readline(65537)  # CRLF after the chunk
            return bytes(out)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self):
        body = self._read_body()
        headers = {}
        for name, value in self.headers.items():
            k = name.lower()
            headers[k] = headers[k] + ", " + value if k in headers else value
        out = json.dumps({
            "method": self.command,
            "path": self.path,
            "headers": headers,
            "body": body.decode("utf-8", "replace"),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        if self.command == "HEAD":
            # A HEAD answer has no body: what the upstream received that
            # tests look for goes in a header instead.
            self.send_header("X-Echo-Authorization", self.headers.get("Authorization") or "-")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _handle


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--quiet", action="store_true", help="no access log on stderr")
    args = ap.parse_args(argv)
    Echo.quiet = args.quiet
    serve(Echo, args.host, args.port, "READY")


if __name__ == "__main__":
    main()
