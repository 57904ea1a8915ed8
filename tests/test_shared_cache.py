"""The process-wide introspection table through a real Envoy: tokens that share a
set keep their answers (sets of four ways, not one slot each), its fills and
evictions are counted, and answers survive a configuration change that does not
change what an answer means (a policy edit pushed as a new listener through
Envoy's file-based LDS) while a change that does (another audience) asks again.

The authorization server is tests/authserver.py: it counts the /introspect
calls per token (`/_test/stats`). Per-worker caches are off where a test must
see the shared table answer (`token_cache_bytes: 0`); a new filter
configuration starts new per-worker caches anyway.
"""

import json
import os

import harness

ENTRY_BYTES = 1024
REALM = "shared-cache-test"


def issuer(a, **over):
    return harness._overridden({
        "issuer": a.issuer, "audiences": ["api"], "upstream": "authserver",
        "introspection": {"endpoint": a.url("/introspect"), "client_id": "pep",
                          "client_secret": "pep-secret"}}, over)


def shared(env, event):
    return harness.wasm_stats(env).get("oauth_pep.cache_%s.cache.introspection_shared" % event, 0)


def test_four_tokens_of_one_set_all_keep_their_answers(start_envoy, authserver):
    """A table of four slots is one set of four ways: four tokens all stay, on
    both workers. Direct-mapped (main before this change), four tokens in four
    slots share one with probability 1 - 4!/4^4 = 91%, and each shared slot
    costs introspections on every round."""
    cfg = {"realm": REALM, "issuers": [issuer(authserver)], "token_cache_bytes": 0,
           "rejected_cache_bytes": 0, "introspection_cache_bytes": 4 * ENTRY_BYTES,
           "introspection_cache_entry_bytes": ENTRY_BYTES}
    env = start_envoy(cfg, concurrency=2, customize=harness.with_stats_tags)
    tokens = [authserver.opaque() for _ in range(4)]
    for round_ in range(3):
        for token in tokens:
            r = harness.send_raw(env, "/", token=token)
            assert r.status == 200, (round_, r)
    assert authserver.introspections() == 4, authserver.stats()["introspect_by_token"]
    harness.wait_until(lambda: shared(env, "fills") == 4, 10, what="4 fills")
    assert shared(env, "evictions") == 0
    assert shared(env, "hits") >= 8
    # A fifth token in a full set takes the way of an answer closest to
    # expiry: one eviction, counted, no fill; its own answer is then shared.
    fifth = authserver.opaque()
    for _ in range(3):
        assert harness.send_raw(env, "/", token=fifth).status == 200
    harness.wait_until(lambda: shared(env, "evictions") == 1, 10, what="one eviction")
    assert shared(env, "fills") == 4
    assert authserver.introspections() == 5
    # With the demo's stats_tags, a `cache` label.
    harness.wait_until(lambda: env.prometheus().get(
        ("oauth_pep_cache_fills", (("cache", "introspection_shared"),))) == 4, 10, what="labelled fills")


# ------------------------------------------------- configuration changes (LDS)


def lds_listener(cfg, env_ports, wasm):
    """The listener of harness.bootstrap for `cfg`, as an LDS resource."""
    admin, port, upstream, authserver = env_ports
    b = harness.bootstrap(cfg, admin, port, upstream, authserver, wasm_path=wasm)
    (listener,) = b["static_resources"]["listeners"]
    listener["@type"] = "type.googleapis.com/envoy.config.listener.v3.Listener"
    return listener


def push(lds_dir, listener):
    """Writes the LDS file and moves it into place: the watched directory sees
    the move and Envoy loads it."""
    tmp = lds_dir / "lds.tmp"
    tmp.write_text(json.dumps({"resources": [listener]}))
    os.replace(tmp, lds_dir / "lds.json")


def test_a_policy_edit_keeps_the_answers_and_an_audience_change_asks_again(
        start_envoy, authserver, echo, wasm, tmp_path):
    lds_dir = tmp_path / "lds"
    lds_dir.mkdir()
    ports = {}

    def dynamic_listener(b):
        (listener,) = b["static_resources"].pop("listeners")
        listener["@type"] = "type.googleapis.com/envoy.config.listener.v3.Listener"
        ports["listener"] = listener["address"]["socket_address"]["port_value"]
        ports["admin"] = b["admin"]["address"]["socket_address"]["port_value"]
        (lds_dir / "lds.json").write_text(json.dumps({"resources": [listener]}))
        b["node"] = {"id": "oauth-pep-test", "cluster": "oauth-pep-test"}  # required by file LDS
        b["dynamic_resources"] = {"lds_config": {"resource_api_version": "V3", "path_config_source": {
            "path": str(lds_dir / "lds.json"), "watched_directory": {"path": str(lds_dir)}}}}

    first = {"realm": REALM, "issuers": [issuer(authserver)]}
    env = start_envoy(first, concurrency=2, customize=dynamic_listener)
    env_ports = (ports["admin"], ports["listener"], echo.port, authserver.port)
    token = authserver.opaque()
    assert harness.send_raw(env, "/", token=token).status == 200
    assert authserver.introspections(token) == 1
    assert harness.send_raw(env, "/flip").status == 401

    def pushed(cfg, flip_status):
        updates = env.stats().get("listener_manager.lds.update_success", 0)
        push(lds_dir, lds_listener(cfg, env_ports, wasm))
        harness.wait_until(lambda: env.stats().get("listener_manager.lds.update_success", 0) > updates,
                           20, what="LDS update")
        # The new filter configuration answers new connections once the
        # listener is warm: /flip tells which one answered.
        harness.wait_until(lambda: harness.send_raw(env, "/flip").status == flip_status, 20,
                           what="the new configuration in use")

    # A policy edit, a public path and another callout timeout: nothing an
    # answer's acceptance depends on. The new configuration (new per-worker
    # caches) reads the answer from shared data: no second introspection.
    second = {"realm": REALM, "policy": {"GET /??": "read"}, "public_paths": ["/flip"],
              "issuers": [issuer(authserver, introspection={
                  "endpoint": authserver.url("/introspect"), "client_id": "pep",
                  "client_secret": "pep-secret", "timeout_ms": 2500})]}
    pushed(second, 200)
    hits = shared(env, "hits")
    for _ in range(4):  # new connections: both workers
        assert harness.send_raw(env, "/", token=token).status == 200
    assert authserver.introspections(token) == 1
    assert shared(env, "hits") > hits

    # Another accepted audience: answers checked under the old list are not
    # this configuration's, so it asks again (once per process).
    third = dict(second, public_paths=[], issuers=[issuer(authserver, audiences=["api", "api2"])])
    pushed(third, 401)
    for _ in range(4):
        assert harness.send_raw(env, "/", token=token).status == 200
    assert authserver.introspections(token) == 2
