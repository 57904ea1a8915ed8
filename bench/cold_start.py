#!/usr/bin/env python3
"""`make bench-cold-start`: how long Envoy takes from process start to its
first HTTP answer on the listener, with no filter, the no-op wasm floor,
native jwt_authn, and oauth-pep (the demo's configuration, envoy/demo.yaml,
and a 1,000-rule policy, bench/run.py's), for 1 and 2 workers.

Each run starts the pinned Envoy (.venv/bin/envoy, as tests/harness.py does)
and polls the listener with short connects (every 5 ms): a connect, then
`GET <path>` with no token, then the status line. The clock runs from just
before the process is spawned to the first status line read. The answer
counted is any HTTP status: with no token oauth-pep answers 401 without
needing its keys (a key fetch still under way does not delay it, and a 503
would count too: the table shows the statuses seen), the floor, native
(no token: 401) and no filter answer from the direct_response route. A
refused connect, a reset or a timeout is not an answer. Rows are interleaved
(row 1..N, then again) and each figure is the median of --repeats runs.

Config push: the floor and the 1,000-rule row again, with the listener read
from a file (LDS, path_config_source): after the first answer the file is
replaced by one with a new filter configuration (oauth-pep's realm, the
route's body), and the clock runs from the replacement to the first answer
that shows it (--no-push skips these rows).

    .venv/bin/python bench/cold_start.py [--repeats 5] [--workers 1,2] [--only 'NAME;NAME...']
        [--compare OTHER.wasm] [--log-dir DIR] [--no-push] [--keep]

--compare adds the oauth-pep rows run with another .wasm (cmp_demo,
cmp_policy), interleaved with the others. --log-dir keeps each Envoy's log with `--component-log-level wasm:debug`
(timestamps in µs), to see where the time goes. Prints Markdown tables;
--append FILE also appends them to FILE (`make bench` appends them to
bench/RESULTS.md right after bench/run.py has written it; by itself the script
writes nothing into the repository).
"""

import argparse
import contextlib
import datetime
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import harness  # noqa: E402
import run as bench  # noqa: E402  (bench/run.py: its Envoy configurations)
from examples import render  # noqa: E402

DEMO_CLIENTS = dict(harness.DEFAULT_CLIENTS, **{"resource-server": ("rs-secret", "uma_protection"),
                                                "gateway": ("gateway-secret", "backend.read")})
TIMEOUT = 30.0  # a run that gets no answer by then fails the script


def complete(data, whole):
    """The status line is in `data` (whole: the head and a Content-Length body; Envoy closes
    its side only after delayed_close_timeout, 1 s, so the close does not mark the end)."""
    if not whole:
        return b"\r\n" in data
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return True


def first_answer(port, path, deadline, marker=None):
    """Seconds (monotonic) at the first HTTP status line from the listener, and the status.
    marker: bytes the whole answer (head and body) must contain to count."""
    req = ("GET %s HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n" % path).encode()
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.settimeout(2.0)
                s.sendall(req)
                data = b""
                while not complete(data, marker is not None):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if data.startswith(b"HTTP/") and (marker is None or marker in data):
                    return time.monotonic(), int(data.split(b" ", 2)[1])
        except OSError:
            pass
        time.sleep(0.005)
    raise TimeoutError("no answer on port %d within %.0f s" % (port, TIMEOUT))


def demo_bootstrap(auth_port, admin_port, port, wasm):
    """envoy/demo.yaml with this run's ports and the .wasm `wasm` (the file names it relative)."""
    text = render((ROOT / "envoy" / "demo.yaml").read_text(),
                  {"authserver": auth_port, "upstream": harness.free_port(), "listener": port, "admin": admin_port})
    return text.replace("filename: target/wasm32-wasip1/release/oauth_pep.wasm", "filename: %s" % wasm)


def configs(auth, demo_auth, compare=None):
    """name -> (description, path requested, function(admin_port, port) -> bootstrap text).
    compare: another oauth_pep.wasm, for two more rows (its demo and policy rows)."""
    specs = bench.envoy_specs(auth)

    def generated(spec):
        def make(admin_port, port):
            kw = dict(spec)
            b = harness.bootstrap(kw.pop("filter_config"), admin_port, port, harness.free_port(), auth.port,
                                  routes=bench.ROUTES, **kw)
            return json.dumps(b, indent=2) + "\n"
        return make

    rows = {
        "pass": ("no filter", "/r999/1", generated(specs["pass"])),
        "noop": ("no-op wasm filter (floor)", "/r999/1", generated(specs["noop"])),
        "native": ("native jwt_authn (inline JWKS)", "/r999/1", generated(specs["native_cache"])),
        "pep_demo": ("oauth-pep, the demo's config (envoy/demo.yaml)", "/api/1",
                     lambda a, p: demo_bootstrap(demo_auth.port, a, p, harness.WASM)),
        "pep_policy": ("oauth-pep, 1,000-rule policy", "/r999/1", generated(specs["pep_policy"])),
    }
    if compare:
        rows["cmp_demo"] = ("%s, the demo's config" % compare, "/api/1",
                            lambda a, p: demo_bootstrap(demo_auth.port, a, p, compare))
        rows["cmp_policy"] = ("%s, 1,000-rule policy" % compare, "/r999/1",
                              generated(dict(specs["pep_policy"], wasm_path=compare)))
    return rows


def log_args(log_dir, name, workdir):
    """Envoy's logging: warn into the work directory, or with --log-dir the wasm component at
    debug (VM creation and clones) and µs timestamps there."""
    if not log_dir:
        return ["-l", "warn", "--log-path", str(workdir / "envoy.log")]
    return ["-l", "info", "--component-log-level", "wasm:debug", "--log-format",
            "[%Y-%m-%d %H:%M:%S.%f][%t][%l][%n] %v", "--log-path", str(Path(log_dir) / (name + ".log"))]


def measure(name, make, path, concurrency, work, log_dir):
    admin_port, port = harness.free_port(), harness.free_port()
    while port == admin_port:
        port = harness.free_port()
    d = work / ("%s-%d-%d" % (name, concurrency, port))
    d.mkdir(parents=True)
    cfg = d / "envoy.yaml"
    cfg.write_text(make(admin_port, port))
    t0 = time.monotonic()
    with running_envoy(cfg, concurrency, log_dir, "%s-c%d-%d" % (name, concurrency, port), d):
        t1, status = first_answer(port, path, t0 + TIMEOUT)
        return t1 - t0, status


@contextlib.contextmanager
def running_envoy(cfg, concurrency, log_dir, log_name, d):
    """Envoy on `cfg`, its output in d/envoy.out, stopped (killed if it lingers) on exit."""
    argv = [harness.ENVOY_BIN, "-c", str(cfg), "--concurrency", str(concurrency),
            "--base-id", str(random.randint(1, 2**31 - 1)), "--disable-hot-restart",
            *log_args(log_dir, log_name, d)]
    with open(d / "envoy.out", "wb") as out:
        proc = subprocess.Popen(argv, cwd=str(ROOT), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


PUSH_ROWS = {"noop": "no-op wasm filter (floor)", "pep_policy": "oauth-pep, 1,000-rule policy"}


def push_once(spec, concurrency, work, auth_port, tag, log_dir):
    """Envoy with its listener from a file (LDS, path_config_source): seconds from replacing the
    file (a new filter configuration: oauth-pep's realm, and the route's body) to the first
    answer that shows it."""
    admin_port, port = harness.free_port(), harness.free_port()
    while port == admin_port:
        port = harness.free_port()
    d = work / ("push-%s-%d-%d" % (tag, concurrency, port))
    d.mkdir(parents=True)
    lds = d / "lds.json"
    dummy = harness.free_port()

    def bootstrap(version):
        kw = dict(spec)
        fc = kw.pop("filter_config")
        if isinstance(fc, dict):
            fc = dict(fc, realm="push-v%d" % version)
        routes = [{"match": {"prefix": "/"},
                   "direct_response": {"status": 200, "body": {"inline_string": "push-v%d\n" % version}}}]
        return harness.bootstrap(fc, admin_port, port, dummy, auth_port, routes=routes, **kw)

    def write(version):
        listener = bootstrap(version)["static_resources"]["listeners"][0]
        listener["@type"] = "type.googleapis.com/envoy.config.listener.v3.Listener"
        tmp = d / "lds.tmp"
        tmp.write_text(json.dumps({"version_info": str(version), "resources": [listener]}))
        os.replace(tmp, lds)  # Envoy watches for a file moved into place

    b = bootstrap(1)
    del b["static_resources"]["listeners"]
    b["node"] = {"id": "bench", "cluster": "bench"}  # required with xDS
    b["dynamic_resources"] = {"lds_config": {"path_config_source": {"path": str(lds)},
                                             "resource_api_version": "V3"}}
    write(1)
    cfg = d / "envoy.json"
    cfg.write_text(json.dumps(b, indent=2))
    with running_envoy(cfg, concurrency, log_dir, "push-%s-c%d-%d" % (tag, concurrency, port), d):
        first_answer(port, "/r999/1", time.monotonic() + TIMEOUT, b"push-v1")
        t0 = time.monotonic()
        write(2)
        t1, _ = first_answer(port, "/r999/1", t0 + TIMEOUT, b"push-v2")
        return t1 - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", default="1,2", help="','-separated --concurrency values")
    ap.add_argument("--only", default="", help="';'-separated row names (pass, noop, native, pep_demo, pep_policy; "
                    "cmp_demo, cmp_policy with --compare)")
    ap.add_argument("--append", default="", help="append the tables to this Markdown file (make bench: "
                    "bench/RESULTS.md, just written by bench/run.py)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    ap.add_argument("--no-push", action="store_true", help="skip the config-push rows")
    ap.add_argument("--compare", default="", help="another oauth_pep.wasm: rows cmp_demo and cmp_policy run it")
    ap.add_argument("--log-dir", default="", help="keep each Envoy's log (wasm:debug, µs timestamps) here")
    args = ap.parse_args()
    for p in (harness.WASM, bench.NOOP_WASM):
        if not p.exists():
            sys.exit("%s missing (make build / make bench-noop)" % p)
    if args.log_dir:
        Path(args.log_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="oauth-pep-cold-"))
    started = []
    try:
        (work / "as").mkdir()
        (work / "demo-as").mkdir()
        auth = harness.AuthServer.start(work / "as")
        started.append(auth)
        demo_auth = harness.AuthServer.start(work / "demo-as", audience="demo-api", clients=DEMO_CLIENTS)
        started.append(demo_auth)
        demo_auth.uma(resources={"photos": ["view", "edit"]})
        rows = configs(auth, demo_auth, args.compare or None)
        only = [s for s in args.only.split(";") if s]
        if only:
            unknown = set(only) - set(rows)
            if unknown:
                sys.exit("unknown rows: %s (known: %s)" % (", ".join(sorted(unknown)), ", ".join(rows)))
            rows = {k: v for k, v in rows.items() if k in only}
        workers = [int(w) for w in args.workers.split(",")]
        results = {(n, c): [] for n in rows for c in workers}
        pushes = [] if args.no_push else [n for n in PUSH_ROWS if not only or n in only]
        specs = bench.envoy_specs(auth)
        pushed = {(n, c): [] for n in pushes for c in workers}
        statuses = {(n, c): set() for n in rows for c in workers}
        for rep in range(args.repeats):
            for name, (_, path, make) in rows.items():
                for c in workers:
                    secs, status = measure(name, make, path, c, work, args.log_dir)
                    results[(name, c)].append(secs)
                    statuses[(name, c)].add(status)
                    print("  run %d  %-12s workers %d  %6.3f s  (%d)" % (rep + 1, name, c, secs, status), flush=True)
            for name in pushes:
                for c in workers:
                    secs = push_once(specs[name], c, work, auth.port, name, args.log_dir)
                    pushed[(name, c)].append(secs)
                    print("  run %d  push %-7s workers %d  %6.3f s" % (rep + 1, name, c, secs), flush=True)
    finally:
        for p in reversed(started):
            p.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    head = "| first answer after start (s) | " + " | ".join("%d worker%s" % (c, "s" if c > 1 else "")
                                                          for c in workers) + " | min–max | status |"
    lines = [head, "|---|" + "---:|" * len(workers) + "---|---|"]
    for name, (desc, _, _) in rows.items():
        meds = ["%.3f" % statistics.median(results[(name, c)]) for c in workers]
        allr = [x for c in workers for x in results[(name, c)]]
        st = sorted({s for c in workers for s in statuses[(name, c)]})
        lines.append("| %s | %s | %.3f–%.3f | %s |" % (desc, " | ".join(meds), min(allr), max(allr),
                                                      ", ".join(map(str, st))))
    if pushes:
        lines += ["", "| config push (LDS file replaced) to first answer from the new config (s) | " +
                  " | ".join("%d worker%s" % (c, "s" if c > 1 else "") for c in workers) + " | min–max |",
                  "|---|" + "---:|" * len(workers) + "---|"]
        for name in pushes:
            allr = [x for c in workers for x in pushed[(name, c)]]
            lines.append("| %s | %s | %.3f–%.3f |" % (PUSH_ROWS[name], " | ".join(
                "%.3f" % statistics.median(pushed[(name, c)]) for c in workers), min(allr), max(allr)))
    intro = ("Target (issue 22): first answer <= 0.35 s. Median of %d runs each, interleaved; %s; "
             "wasm %d bytes, floor %d bytes." % (
                 args.repeats, datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 harness.WASM.stat().st_size, bench.NOOP_WASM.stat().st_size))
    print()
    print(intro)
    print()
    print("\n".join(lines))
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n## Cold start\n\nGenerated by `bench/cold_start.py` (`make bench`, after the rows above): "
                    "seconds from Envoy's spawn to its first HTTP answer (any status; a request without a "
                    "token), and from an LDS config push to the first answer from the new configuration. "
                    "%s\n\n%s\n" % (intro, "\n".join(lines)))
        print("appended to %s" % args.append)


if __name__ == "__main__":
    main()
