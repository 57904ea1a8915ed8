#!/usr/bin/env python3
"""A fake policy decision point for integration tests (stdlib only).

Speaks both AuthZEN 1.0 (POST /access/v1/evaluation) and OPA's Data API
(POST /v1/data/<anything>). The decision follows the request path being asked
about (resource.id / input.path):

  /pdp/allow...      permit
  /pdp/deny...       deny
  /pdp/undefined...  OPA: {} (undefined document); AuthZEN: deny
  anything else      deny

GET /stats returns {"calls": n, "last": <last request body>} so tests can tell
cached decisions from fresh ones and check what the filter sent.

    python3 tests/fake_pdp.py --port N     # prints READY once listening
"""

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler

from serving import serve

lock = threading.Lock()
stats = {"calls": 0, "last": None}


def field(doc, outer, inner):
    obj = doc.get(outer)
    return obj.get(inner, "") if isinstance(obj, dict) else ""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, doc):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/stats":
            with lock:
                self.reply(200, dict(stats))
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self):
        # Read the body even when refusing, or it would be parsed as the next
        # request on this keep-alive connection.
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path != "/access/v1/evaluation" and not self.path.startswith("/v1/data/"):
            self.reply(404, {"error": "not found"})
            return
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        with lock:
            stats["calls"] += 1
            stats["last"] = doc
        if not isinstance(doc, dict):
            self.reply(400, {"error": "body is not a JSON object"})
            return
        if self.path == "/access/v1/evaluation":
            path = str(field(doc, "resource", "id"))
            self.reply(200, {"decision": path.startswith("/pdp/allow")})
        else:
            path = str(field(doc, "input", "path"))
            if path.startswith("/pdp/undefined"):
                self.reply(200, {})
            else:
                self.reply(200, {"result": path.startswith("/pdp/allow")})

    def log_message(self, fmt, *args):
        sys.stderr.write("fake_pdp: " + fmt % args + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args()
    serve(Handler, args.host, args.port, "READY")


if __name__ == "__main__":
    main()
