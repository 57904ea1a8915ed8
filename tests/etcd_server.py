"""One etcd 3.4 (Debian's etcd-server, `make setup`) on 127.0.0.1 for the
fleet cache and revocation tests: a free port, a temporary data directory,
auth on, root, and the gateway's user whose role may read and write under
PREFIX only. Stopped by the fixture that started it."""

import os
import shutil
import subprocess

import pytest

import harness

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
PREFIX = "/pep-test/"
USER, PASSWORD = "pep", "pep-etcd-password"
FLEET_KEY = "fleet-key-0123456789abcdef-0123456789"

needs_etcd = pytest.mark.skipif(not os.path.exists(ETCD), reason="etcd-server is not installed (make setup)")


class Etcd:
    def __init__(self, tmpdir):
        self.port, self.peer = harness.free_port(), harness.free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.data = tmpdir / ("etcd-%d" % self.port)
        argv = [ETCD, "--name", "t", "--data-dir", self.data,
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", "http://127.0.0.1:%d" % self.peer,
                "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % self.peer,
                "--initial-cluster", "t=http://127.0.0.1:%d" % self.peer]
        self.proc = harness.Proc("etcd", argv, tmpdir / ("etcd-%d.log" % self.port))
        harness.wait_until(lambda: harness.port_accepts(self.port), 20, what="etcd listening")
        harness.wait_until(lambda: self.ctl("endpoint", "health", root=False).returncode == 0, 20,
                           what="etcd healthy")
        for args in (["user", "add", "root:rootpw"], ["user", "add", "%s:%s" % (USER, PASSWORD)],
                     ["role", "add", "pep"],
                     ["role", "grant-permission", "pep", "--prefix=true", "readwrite", PREFIX],
                     ["user", "grant-role", USER, "pep"], ["auth", "enable"]):
            r = self.ctl(*args, root=False)
            assert r.returncode == 0, r.stderr

    def ctl(self, *args, root=True, value=None):
        argv = [ETCDCTL, "--endpoints", self.url, "--dial-timeout", "2s", "--command-timeout", "3s"]
        if root:
            argv += ["--user", "root:rootpw"]
        return subprocess.run(argv + [str(a) for a in args], input=value, capture_output=True,
                              timeout=15, env=dict(os.environ, ETCDCTL_API="3"))

    def put(self, key, value):
        r = self.ctl("put", key, "--", value)
        assert r.returncode == 0, r.stderr

    def get(self, key):
        r = self.ctl("get", key, "--print-value-only")
        assert r.returncode == 0, r.stderr
        return r.stdout.rstrip(b"\n")

    def keys(self, prefix=PREFIX):
        r = self.ctl("get", prefix, "--prefix", "--keys-only")
        return [k for k in r.stdout.decode().split("\n") if k]

    def stop(self):
        self.proc.stop()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    if not os.path.exists(ETCD):
        pytest.skip("etcd-server is not installed (make setup)")
    e = Etcd(tmp_path_factory.mktemp("etcd"))
    yield e
    e.stop()
