#!/usr/bin/env python3
"""`make demo-uma`: a client walking seed 001's UMA 2.0 flows and seed 003's
upstream OAuth through a running `make demo`, printing every HTTP exchange.

  (a) GET /photos/1 without an RPT -> 401 with a permission ticket -> the
      uma-ticket grant at the AS -> an RPT -> 200 (no claims gathering: the
      scope "view" has no policy);
  (b) GET /vault/diary -> 401 with a ticket -> need_info (the scope "open"
      carries seed 001's policy, country=US and city=NY) -> the claims
      gathering page, filled in as a browser would -> redirect with a new
      ticket -> an RPT -> 200;
  (c) GET /backend/reports with the client's access token -> the upstream
      (the echo) receives the gateway's own token, of client "gateway", and
      the client's token moved to x-client-authorization.

The client learns the AS from the 401 (`as_uri`) and its endpoints from
`/.well-known/uma2-configuration`, as a UMA client does. Exits 1 at the first
answer that is not what the flow expects, 0 when every step was.

    python demo/uma_walkthrough.py [--gateway http://127.0.0.1:10000]
        [--issuer http://127.0.0.1:9000] [--client demo-client:demo-secret]
"""

import argparse
import base64
import json
import re
import sys
import urllib.parse
from html.parser import HTMLParser

import requests

UMA_GRANT = "urn:ietf:params:oauth:grant-type:uma-ticket"
# Where a real client would get the user's browser back; the walkthrough reads
# the new ticket from the redirect instead of serving this URL.
CLAIMS_REDIRECT_URI = "https://client.example/claims-callback"
# The demo's upstream OAuth client (demo/run.py, envoy/demo.yaml `clients.backend`).
GATEWAY_CLIENT = "gateway"
TIMEOUT = 10
# Tokens, tickets and request ids: long runs of base64url/hex characters with a digit
# (names like introspection_endpoint_auth_methods_supported have none).
TOKENISH = re.compile(r"[A-Za-z0-9_\-.]{24,}")
# Headers every request through Envoy carries: left out of the echo's answer.
ECHO_NOISE = {"host", "user-agent", "accept", "accept-encoding", "x-forwarded-proto", "x-request-id",
              "x-envoy-expected-rq-timeout-ms", "content-length"}


class Deviation(Exception):
    """An answer the flow does not expect."""


def expect(cond, what):
    if not cond:
        raise Deviation(what)


def short(text):
    """Long tokens and tickets shortened to their ends, so exchanges fit a line."""
    def cut(m):
        t = m.group(0)
        return t[:8] + "…" + t[-6:] if any(c.isdigit() for c in t) else t

    return TOKENISH.sub(cut, text)


def show_body(r, fields):
    """The body: JSON indented (only `fields` of an object when given; the
    echo's noise headers left out), else its text on one line."""
    ctype = r.headers.get("content-type", "")
    if "json" in ctype:
        try:
            doc = r.json()
        except ValueError:
            return "    " + short(r.text[:300])
        if isinstance(doc, dict) and fields:
            rest = len(set(doc) - set(fields))
            doc = {k: doc[k] for k in fields if k in doc}
            if rest:
                doc["…"] = "%d more fields" % rest
        if isinstance(doc, dict) and isinstance(doc.get("headers"), dict) and "path" in doc:
            doc = {k: v for k, v in doc.items() if k != "body" or v}
            doc["headers"] = {k: v for k, v in doc["headers"].items() if k not in ECHO_NOISE}
        return "\n".join("    " + short(line) for line in json.dumps(doc, indent=2, ensure_ascii=False).splitlines())
    text = " ".join(r.text.split())
    return "    " + short(text[:300] + ("…" if len(text) > 300 else ""))


def exchange(method, url, headers=None, form=None, auth=None, show=("www-authenticate", "location"), fields=None):
    """One HTTP exchange, printed: request line, the headers and form the
    client set, then the status, `show` response headers and the body."""
    headers = dict(headers or {})
    print("  > %s %s" % (method, short(url)))
    if auth:
        print("  > authorization: Basic base64(%s:***)" % auth[0])
    for k, v in headers.items():
        print("  > %s: %s" % (k.lower(), short(v)))
    if form:
        print("  > content-type: application/x-www-form-urlencoded")
        print("  >   " + short("&".join("%s=%s" % kv for kv in form.items())))
    try:
        r = requests.request(method, url, headers=headers, data=form, auth=auth, timeout=TIMEOUT,
                             allow_redirects=False)
    except requests.RequestException as e:
        raise Deviation("%s %s failed: %s (is `make demo` running?)" % (method, url, e))
    print("  < %d %s" % (r.status_code, r.reason))
    for k in show:
        if k in r.headers:
            print("  < %s: %s" % (k, short(r.headers[k])))
    if r.content:
        print(show_body(r, fields))
    print()
    return r


def step(label, text):
    print("[%s] %s" % (label, text))


def challenge(r):
    """The UMA challenge's parameters (UMA 2.0 Grant §3.2)."""
    www = r.headers.get("www-authenticate", "")
    expect(r.status_code == 401 and www.startswith("UMA "),
           "expected 401 with WWW-Authenticate: UMA ..., got %d %r" % (r.status_code, www))
    params = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', www[4:]))
    expect({"realm", "as_uri", "ticket"} <= set(params), "the UMA challenge lacks realm, as_uri or ticket: %r" % www)
    return params


def jwt_claims(bearer):
    """The payload of the JWT in an `Authorization: Bearer` value (not
    verified: the walkthrough only shows whose token it is)."""
    expect(bearer and bearer.startswith("Bearer "), "expected a Bearer token, got %r" % bearer)
    parts = bearer[len("Bearer "):].split(".")
    expect(len(parts) == 3, "the token is not a JWT")
    try:
        return json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        raise Deviation("the token's payload is not base64url JSON")


class FormReader(HTMLParser):
    """The first form's method, action and inputs (name -> value)."""

    def __init__(self):
        super().__init__()
        self.method, self.action, self.inputs, self.seen = None, None, {}, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form" and not self.seen:
            self.seen, self.method, self.action = True, (a.get("method") or "get").lower(), a.get("action")
        elif tag == "input" and self.seen and a.get("name"):
            self.inputs[a["name"]] = a.get("value") or ""


class Walkthrough:
    def __init__(self, gateway, issuer, client):
        self.gateway, self.issuer, self.client = gateway.rstrip("/"), issuer.rstrip("/"), client
        self.metadata = None

    def as_metadata(self, as_uri):
        """The AS's UMA metadata, fetched once."""
        if self.metadata is None:
            step("as", "The client reads the authorization server's UMA metadata from as_uri")
            r = exchange("GET", as_uri + "/.well-known/uma2-configuration", show=(),
                         fields=("issuer", "token_endpoint", "permission_endpoint", "claims_interaction_endpoint",
                                 "resource_registration_endpoint", "grant_types_supported"))
            expect(r.status_code == 200, "uma2-configuration: %d" % r.status_code)
            self.metadata = r.json()
            expect("token_endpoint" in self.metadata, "the metadata has no token_endpoint")
        return self.metadata

    def rpt_request(self, ticket):
        return exchange("POST", self.metadata["token_endpoint"], auth=self.client,
                        form={"grant_type": UMA_GRANT, "ticket": ticket}, show=())

    def ticket_from_gateway(self, label, path):
        step(label, "The client calls GET %s without an RPT: the gateway asks the AS's permission "
                    "endpoint for a ticket (with its PAT) and answers 401 UMA" % path)
        params = challenge(exchange("GET", self.gateway + path))
        expect(params["as_uri"] == self.issuer, "as_uri is %r, expected %r" % (params["as_uri"], self.issuer))
        return params

    def call_with_rpt(self, label, path, rpt):
        step(label, "The client calls GET %s again, with the RPT: the gateway introspects it and finds "
                    "the permission" % path)
        r = exchange("GET", self.gateway + path, headers={"Authorization": "Bearer " + rpt})
        expect(r.status_code == 200, "expected 200 with the RPT, got %d" % r.status_code)
        expect(r.json().get("path") == path, "the upstream saw another path: %r" % r.json().get("path"))

    def without_claims(self):
        print("== (a) seed 001 without claims gathering: resource \"photos\", GET /photos/1 needs scope \"view\"\n")
        params = self.ticket_from_gateway("a1", "/photos/1")
        self.as_metadata(params["as_uri"])
        step("a2", "The client redeems the ticket at the token endpoint (uma-ticket grant, its own "
                   "credentials); \"view\" has no policy, so the AS issues an RPT")
        r = self.rpt_request(params["ticket"])
        expect(r.status_code == 200 and "access_token" in r.json(), "expected an RPT, got %d" % r.status_code)
        self.call_with_rpt("a3", "/photos/1", r.json()["access_token"])

    def with_claims(self):
        print("== (b) seed 001 with claims gathering: resource \"vault\", GET /vault/diary needs scope \"open\", "
              "whose policy wants country=US and city=NY\n")
        params = self.ticket_from_gateway("b1", "/vault/diary")
        self.as_metadata(params["as_uri"])
        step("b2", "The client redeems the ticket: the AS needs claims first (need_info, a new ticket, "
                   "and where to send the user)")
        r = self.rpt_request(params["ticket"])
        expect(r.status_code == 403 and r.json().get("error") == "need_info",
               "expected 403 need_info, got %d %s" % (r.status_code, r.text[:200]))
        need = r.json()
        expect(need.get("ticket") and need.get("redirect_user"), "need_info without ticket or redirect_user")
        expect(need["ticket"] != params["ticket"], "need_info did not give a new ticket")

        step("b3", "The user's browser opens the claims gathering URL (ticket and claims_redirect_uri "
                   "added): a form asks for country and city")
        sep = "&" if "?" in need["redirect_user"] else "?"
        url = need["redirect_user"] + sep + urllib.parse.urlencode(
            {"ticket": need["ticket"], "claims_redirect_uri": CLAIMS_REDIRECT_URI})
        r = exchange("GET", url, show=("content-type",))
        expect(r.status_code == 200, "the claims gathering page: %d" % r.status_code)
        form = FormReader()
        form.feed(r.text)
        expect(form.seen and {"country", "city"} <= set(form.inputs),
               "the page has no form asking for country and city")
        expect(form.method == "get", "the claims form's method is %r, the walkthrough submits GET" % form.method)

        step("b4", "The user fills in country=US, city=NY and submits: the AS sends the browser back to "
                   "claims_redirect_uri with a new ticket")
        fields = dict(form.inputs, country="US", city="NY")
        # A GET form's submission: its action (default: the page) with the fields as the query.
        action = urllib.parse.urlsplit(urllib.parse.urljoin(url, form.action or ""))
        r = exchange("GET", action._replace(query=urllib.parse.urlencode(fields)).geturl(), show=("location",))
        location = r.headers.get("location", "")
        expect(r.status_code in (302, 303) and location.startswith(CLAIMS_REDIRECT_URI),
               "expected a redirect to %s, got %d %r" % (CLAIMS_REDIRECT_URI, r.status_code, location))
        ticket = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query).get("ticket", [""])[0]
        expect(ticket and ticket != need["ticket"], "the redirect carries no new ticket")

        step("b5", "The client redeems the new ticket: the claims satisfy the policy, the AS issues an RPT")
        r = self.rpt_request(ticket)
        expect(r.status_code == 200 and "access_token" in r.json(),
               "expected an RPT, got %d %s" % (r.status_code, r.text[:200]))
        self.call_with_rpt("b6", "/vault/diary", r.json()["access_token"])

    def upstream_oauth(self):
        print("== (c) seed 003, upstream OAuth: GET /backend/reports with the client's token; the gateway "
              "sends the upstream its own token (client \"%s\")\n" % GATEWAY_CLIENT)
        step("c1", "The client gets an access token by client credentials")
        r = exchange("GET", self.issuer + "/.well-known/openid-configuration", show=(),
                     fields=("issuer", "token_endpoint"))
        expect(r.status_code == 200 and "token_endpoint" in r.json(), "discovery: %d" % r.status_code)
        r = exchange("POST", r.json()["token_endpoint"], auth=self.client, form={"grant_type": "client_credentials"},
                     show=())
        expect(r.status_code == 200 and "access_token" in r.json(), "expected a token, got %d" % r.status_code)
        token = r.json()["access_token"]
        caller = jwt_claims("Bearer " + token)

        step("c2", "The client calls GET /backend/reports with it: the gateway checks it (scope \"read\"), "
                   "sends its own token in Authorization and the caller's in x-client-authorization; "
                   "the echo shows what the upstream got")
        r = exchange("GET", self.gateway + "/backend/reports", headers={"Authorization": "Bearer " + token})
        expect(r.status_code == 200, "expected 200, got %d" % r.status_code)
        got = r.json()["headers"]
        sent = got.get("authorization", "")
        gateway = jwt_claims(sent)
        print("  upstream's authorization: the token of client_id=%r, scope=%r (the caller's: client_id=%r)"
              % (gateway.get("client_id"), gateway.get("scope"), caller.get("client_id")))
        print("  upstream's x-client-authorization: %s\n" % short(got.get("x-client-authorization", "(none)")))
        expect(sent != "Bearer " + token, "the upstream received the caller's token, not the gateway's")
        expect(gateway.get("client_id") == GATEWAY_CLIENT,
               "the upstream's token is of client %r, expected %r" % (gateway.get("client_id"), GATEWAY_CLIENT))
        expect(got.get("x-client-authorization") == "Bearer " + token,
               "the caller's token was not moved to x-client-authorization")
        expect(got.get("x-oauth-client-id") == caller.get("client_id"),
               "the identity headers do not name the caller")

        step("c3", "Outside /backend there is no upstream OAuth: GET /api/hello passes the caller's own token on")
        r = exchange("GET", self.gateway + "/api/hello", headers={"Authorization": "Bearer " + token})
        expect(r.status_code == 200, "expected 200, got %d" % r.status_code)
        expect(r.json()["headers"].get("authorization") == "Bearer " + token,
               "the upstream of /api did not get the caller's token")
        print("  upstream's authorization: the caller's token, as sent\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway", default="http://127.0.0.1:10000", help="the demo's Envoy listener")
    ap.add_argument("--issuer", default="http://127.0.0.1:9000", help="the demo's authorization server")
    ap.add_argument("--client", default="demo-client:demo-secret", help="the UMA client, ID:SECRET")
    args = ap.parse_args(argv)
    cid, _, secret = args.client.partition(":")
    w = Walkthrough(args.gateway, args.issuer, (cid, secret))
    try:
        w.without_claims()
        w.with_claims()
        w.upstream_oauth()
    except Deviation as e:
        print("DEVIATION: %s" % e, flush=True)
        return 1
    print("OK: (a) ticket -> RPT -> 200, (b) ticket -> need_info -> claims -> new ticket -> RPT -> 200, "
          "(c) the upstream received the gateway's token", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
