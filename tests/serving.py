"""The serving loop shared by the test servers (authserver, echo, fake PDP)."""

from http.server import ThreadingHTTPServer


def serve(handler, host, port, ready="READY"):
    """Serve `handler` on host:port; print `ready` once listening (the harness waits for it)."""
    # A reply is written as headers, then body: with Nagle's algorithm the body
    # waits for the peer's delayed ACK, ~40 ms per keep-alive request.
    handler.disable_nagle_algorithm = True
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    print(ready, flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
