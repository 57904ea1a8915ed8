#!/usr/bin/env python3
"""A small replay of the fleet model (README, "Running a fleet"): N Envoy
instances (two workers each) behind a random load balancer, Zipf token
popularity, with and without `fleet_cache` (etcd 3.4 with auth on, as
tests/test_fleet_cache.py starts it); prints the introspections the
authorization server saw, and the added latency of a fleet hit and of a
fleet miss (medians of sequential requests on one instance).

Everything on 127.0.0.1, started here and stopped at the end. Not part of
`make bench` (it needs etcd); run it on an idle machine:

    .venv/bin/python bench/fleet_replay.py [--instances 3] [--tokens 300] [--requests 3000]
"""

import argparse
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import harness  # noqa: E402
import test_fleet_cache as fleet  # noqa: E402  (its Etcd and configuration)


def zipf_sequence(tokens, requests, s=1.1, seed=7):
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) ** s for i in range(len(tokens))]
    return rng.choices(tokens, weights=weights, k=requests), rng


def replay(envs, authserver, tokens, requests):
    sequence, rng = zipf_sequence(tokens, requests)
    picks = [rng.randrange(len(envs)) for _ in sequence]
    replay.distinct = len(set(sequence))
    before = authserver.introspections()
    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(lambda p: envs[p[0]].get("/api", token=p[1]).status_code,
                                 zip(picks, sequence)))
    assert set(statuses) == {200}, set(statuses)
    return authserver.introspections() - before


def median_ms(fn, n):
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--latency-samples", type=int, default=40)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fleet-replay-"))
    started = []
    try:
        auth = harness.AuthServer.start(tmp)
        started.append(auth)
        echo = harness.Echo.start(tmp)
        started.append(echo)
        etcd = fleet.Etcd(tmp)
        started.append(etcd)

        def start(cfg, n):
            envs = []
            for i in range(n):
                env = harness.Envoy.start(cfg, tmp / ("envoy-%d-%d" % (len(started), i)), echo.port, auth.port,
                                          clusters={"etcd": etcd.port}, concurrency=2, env=fleet.ENV,
                                          host_env_keys=list(fleet.ENV))
                started.append(env)
                envs.append(env)
            return envs

        with_fleet = fleet.config(auth, etcd)
        # One client address sends everything: the introspection budget's
        # per-address share would refuse the replay's new tokens.
        with_fleet["issuers"][0]["introspection"]["budget"] = {"per_second": 100000}
        without = dict(with_fleet)
        without.pop("fleet_cache")
        results = {}
        for name, cfg in (("without", without), ("with", with_fleet)):
            envs = start(cfg, args.instances)
            if name == "with":
                for env in envs:
                    harness.wait_until(lambda: harness.wasm_stats(env).get(
                        "oauth_pep.callouts.kind.fleet_cache.outcome.ok", 0) >= 1, 15, what="etcd authenticated")
            tokens = [auth.opaque(sub="u%d" % i) for i in range(args.tokens)]
            results[name] = replay(envs, auth, tokens, args.requests)
            if name == "with":
                a, b = envs[0], envs[1]
                # Per-process hit (the baseline), fleet hit (B's first
                # request for a token A wrote), miss (a new token: read, lease
                # or not, claim, then the introspection).
                cached = tokens[0]
                per_process = median_ms(lambda: b.get("/api", token=cached), args.latency_samples)
                fresh = [auth.opaque() for _ in range(args.latency_samples)]
                for t in fresh:
                    a.get("/api", token=t)
                for t in fresh:
                    fleet.wait_written(etcd, auth.issuer, t)
                it = iter(fresh)
                fleet_hit = median_ms(lambda: b.get("/api", token=next(it)), args.latency_samples)
                new = iter([auth.opaque() for _ in range(args.latency_samples)])
                miss = median_ms(lambda: b.get("/api", token=next(new)), args.latency_samples)
            else:
                env = envs[0]
                new = iter([auth.opaque() for _ in range(args.latency_samples)])
                miss_without = median_ms(lambda: env.get("/api", token=next(new)), args.latency_samples)
            for env in envs:
                env.stop()
        print("instances=%d tokens=%d requests=%d (Zipf s=1.1, random instance)" % (
            args.instances, args.tokens, args.requests))
        print("distinct tokens in the replay: %d" % replay.distinct)
        print("introspections without fleet_cache: %d" % results["without"])
        print("introspections with fleet_cache:    %d" % results["with"])
        print("median ms: per-process hit %.1f, fleet hit %.1f, miss with fleet %.1f, miss without %.1f" % (
            per_process, fleet_hit, miss, miss_without))
        print("added: fleet hit +%.1f ms over a per-process hit; miss +%.1f ms over a miss without" % (
            fleet_hit - per_process, miss - miss_without))
    finally:
        for thing in reversed(started):
            thing.stop()


if __name__ == "__main__":
    main()
