#!/usr/bin/env python3
"""A fake policy decision point for integration tests (stdlib only).

Speaks both AuthZEN 1.0 (POST /access/v1/evaluation) and OPA's Data API
(POST /v1/data/<anything>). The decision follows the request path being asked
about (resource.id / input.path):

  /pdp/allow...      permit
  /pdp/deny...       deny
  /pdp/undefined...  OPA: {} (undefined document); AuthZEN: deny
  anything else      deny

POST /_test/require {"claims": {name: value, ...}} makes a permit also need
those claim values (AuthZEN subject.properties, OPA input.claims), as a PDP
deciding on `iss` or `acr` would; {} (the default) needs none.

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
require = {}


def field(doc, outer, inner):
    obj = doc.get(outer)
    return obj.get(inner, "") if isinstance(obj, dict) else ""


def meets(claims, required):
    """Whether `claims` (a dict, else none) has every required value."""
    claims = claims if isinstance(claims, dict) else {}
    return all(claims.get(k) == v for k, v in required.items())


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
        if self.path == "/_test/require":
            claims = json.loads(raw or b"{}").get("claims") or {}
            with lock:
                require.clear()
                require.update(claims)
            self.reply(200, {"require": claims})
            return
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
        with lock:
            required = dict(require)
        if self.path == "/access/v1/evaluation":
            path = str(field(doc, "resource", "id"))
            claims = field(doc, "subject", "properties")
            self.reply(200, {"decision": path.startswith("/pdp/allow") and meets(claims, required)})
        else:
            path = str(field(doc, "input", "path"))
            if path.startswith("/pdp/undefined"):
                self.reply(200, {})
            else:
                claims = field(doc, "input", "claims")
                self.reply(200, {"result": path.startswith("/pdp/allow") and meets(claims, required)})

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
