#!/usr/bin/env python3
"""`make bench-rss`: Envoy's resident memory while 100,000 distinct valid
tokens go through oauth-pep with 2 workers (issue 22: the memory must level
off within the caches' budgets plus an allowance, as a curve, not one point).

One Envoy (the pinned one, --concurrency 2, the filter's default
configuration: the token cache's budget is per worker) and the test
authorization server start; TOTAL ES256 tokens with distinct `jti`s are
minted, then sent in CHUNKS chunks by wrk (-t2 -c16, bench/once.lua: every
token once; a thread that is done repeats its last token, a cache hit, until
wrk's duration ends), and after each chunk the resident set (VmRSS) of
the Envoy processes is read, with the token cache's entries and evictions
from Envoy's stats.

    .venv/bin/python bench/rss_curve.py [--total 100000] [--chunks 20] [--append bench/RESULTS.md]

Prints a Markdown table (and appends it to the file --append names).
"""

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import harness  # noqa: E402
from run import PATH, ROUTES, Tokens, pep_config  # noqa: E402

ONCE = ROOT / "bench" / "once.lua"


def group_rss_kib(pgid):
    """VmRSS of the processes in `pgid` named envoy (not the Python launcher)."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid or not comm.startswith("envoy"):
                continue
            with open("/proc/%s/status" % d) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total


def stats(env, names):
    text = env.admin("/stats").text
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        for wanted in names:
            if name.endswith(wanted):
                try:
                    out[wanted] = out.get(wanted, 0) + int(value)
                except ValueError:
                    pass
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--total", type=int, default=100000)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--append", default="")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="oauth-pep-rss-"))
    started = []
    try:
        auth = harness.AuthServer.start(work)
        started.append(auth)
        tok = Tokens(auth, work)
        t0 = time.monotonic()
        tokens = [tok.jwt("ES256") for _ in range(args.total)]
        print("minted %d tokens in %.0f s" % (len(tokens), time.monotonic() - t0), flush=True)
        env = harness.Envoy.start(filter_config=pep_config(auth), workdir=work / "envoy",
                                  upstream_port=harness.free_port(), authserver_port=auth.port,
                                  routes=ROUTES, concurrency=2, log_level="warn")
        started.append(env)
        env.wait_status(PATH, 200, token=tokens[0], timeout=30)
        pgid = env.proc.pid
        rows = [(0, 0, group_rss_kib(pgid), {})]
        size = len(tokens) // args.chunks
        for c in range(args.chunks):
            chunk = tokens[c * size:(c + 1) * size]
            f = work / "chunk.tokens"
            f.write_text("\n".join(chunk) + "\n")
            # wrk's main thread waits out -d even when the script's threads
            # stop early, so -d is sized for ~1,000 requests/s at least.
            seconds = max(3, -(-len(chunk) // 1000))
            argv = ["wrk", "-t2", "-c16", "-d%ds" % seconds, "-s", str(ONCE), env.url(PATH), "--", str(f), "2"]
            out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
            non2xx = 0
            for line in out.splitlines():
                if "Non-2xx" in line:
                    non2xx = int(line.split(":")[1])
            time.sleep(0.5)
            s = stats(env, ["oauth_pep.cache_evictions.cache.tokens", "oauth_pep.cache_misses.cache.tokens"])
            rows.append(((c + 1) * size, non2xx, group_rss_kib(pgid), s))
            print("  %6d tokens  RSS %7.1f MiB  %s" % ((c + 1) * size, rows[-1][2] / 1024, s), flush=True)
        if not env.alive():
            raise SystemExit("Envoy died during the run")
    finally:
        for p in reversed(started):
            p.stop()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["", "## Memory: 100,000 distinct valid tokens through 2 workers", "",
             "`bench/rss_curve.py` (%s, %d ES256 tokens in %d chunks, each token sent once by "
             "`wrk -t2 -c16`, the filter's default configuration, Envoy `--concurrency 2`). RSS is the "
             "Envoy process's VmRSS after each chunk; misses and evictions are the token cache's, "
             "summed over the workers." % (when, args.total, args.chunks), "",
             "| tokens sent | RSS MiB | token cache misses | evictions | non-2xx |",
             "|---:|---:|---:|---:|---:|"]
    for sent, non2xx, rss, s in rows:
        lines.append("| %d | %.1f | %s | %s | %d |" % (
            sent, rss / 1024, s.get("oauth_pep.cache_misses.cache.tokens", "–"),
            s.get("oauth_pep.cache_evictions.cache.tokens", "–"), non2xx))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(args.append, "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
