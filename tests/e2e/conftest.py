"""Fixtures: a real scanside daemon on free loopback ports, real peers around it."""
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

BIN = os.environ.get("SCANSIDE_BIN", "scanside")
# DCMTK 3.6.7 sets TCP_NODELAY only when asked (DESIGN.md section 5).
os.environ["TCP_NODELAY"] = "1"


def ort_library():
    """libonnxruntime from the onnxruntime wheel (the daemon loads it at run time)."""
    import glob
    import onnxruntime
    capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
    libs = sorted(glob.glob(os.path.join(capi, "libonnxruntime.so*")))
    assert libs, f"no libonnxruntime in {capi}"
    return libs[0]


def toml_str(v):
    return json.dumps(str(v))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, workdir, **overrides):
        self.dir = str(workdir)
        self.data_dir = os.path.join(self.dir, "data")
        self.port = free_port()
        self.http_port = free_port()
        self.ae = "SCANSIDE"
        self.config_path = os.path.join(self.dir, "scanside.toml")
        self.log_path = os.path.join(self.dir, "scanside.log")
        self.settings = dict(
            max_associations=8, read_timeout_s=30, max_pdu_length=65536,
            min_free_bytes=1 << 20, idle_timeout_s=60, release_quiet_s=1,
            peers=[("*", "127.0.0.1")], gate={},
            inference={"backend": '"ort"', "ort_library": toml_str(ort_library())},
            upstream=[], http_token=None, move_destinations=[], storage={}, ota={},
            extra="",
        )
        self.settings.update(overrides)
        self.proc = None
        os.makedirs(self.dir, exist_ok=True)
        self.write_config()

    def write_config(self):
        s = self.settings
        gate = "".join(f"{k} = {v}\n" for k, v in s["gate"].items())
        inference = "".join(f"{k} = {v}\n" for k, v in s["inference"].items())
        # A peer is (AE, address) or (AE, address, transport).
        peers = "".join(
            f'[[dicom.allowed_peers]]\nae_title = "{p[0]}"\naddress = "{p[1]}"\n'
            + (f'transport = "{p[2]}"\n' if len(p) > 2 else "") for p in s["peers"])
        upstream = "".join("[[upstream]]\n" + "".join(f"{k} = {v}\n" for k, v in u.items()) + "\n"
                           for u in s["upstream"])
        moves = "".join(f'[[qr.move_destinations]]\nae_title = "{ae}"\nhost = "127.0.0.1"\nport = {port}\n'
                        for ae, port in s["move_destinations"])
        storage = "".join(f"{k} = {v}\n" for k, v in s["storage"].items())
        ota = "[ota]\n" + "".join(f"{k} = {v}\n" for k, v in s["ota"].items()) if s["ota"] else ""
        with open(self.config_path, "w") as f:
            f.write(f"""
[dicom]
ae_title = "{self.ae}"
listen = "127.0.0.1:{self.port}"
max_associations = {s['max_associations']}
read_timeout_s = {s['read_timeout_s']}
max_pdu_length = {s['max_pdu_length']}
{peers}
[storage]
data_dir = "{self.data_dir}"
min_free_bytes = {s['min_free_bytes']}
{storage}
[series]
idle_timeout_s = {s['idle_timeout_s']}
release_quiet_s = {s['release_quiet_s']}

[http]
listen = "127.0.0.1:{self.http_port}"
{'token = ' + toml_str(s['http_token']) if s['http_token'] else ''}

[gate]
{gate}
[inference]
{inference}
{upstream}
{moves}
{ota}
{s['extra']}""")

    def start(self, env=None, wait=True, watchdog_pid=False):
        e = dict(os.environ)
        e.setdefault("SCANSIDE_LOG", "info")
        e.update(env or {})
        self.log = open(self.log_path, "a")
        argv = [BIN, "run", "--config", self.config_path]
        if watchdog_pid:
            # systemd sets WATCHDOG_PID to the service's pid; exec keeps the shell's.
            argv = ["sh", "-c", 'WATCHDOG_PID=$$ exec "$0" "$@"'] + argv
        for attempt in range(3):
            self.proc = subprocess.Popen(argv,
                                         stdout=self.log, stderr=subprocess.STDOUT, env=e)
            if not wait:
                return self
            try:
                self.wait_ready()
                return self
            except RuntimeError:
                # A port free_port() found can be taken by another process before the
                # daemon binds it: pick new ones and start again.
                if attempt == 2 or "Address already in use" not in self.read_log():
                    raise
                self.port, self.http_port = free_port(), free_port()
                self.write_config()
        return self

    def wait_ready(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.read_log()}")
            try:
                code, _ = self.get("/healthz")
                if code == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("daemon did not become ready:\n" + self.read_log())

    def get(self, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
                body = r.read().decode()
                return r.status, body
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def post(self, path, token=None):
        """POST with an optional bearer token: (status, JSON body)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", method="POST", data=b"")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def get_json(self, path):
        code, body = self.get(path)
        return code, json.loads(body)

    def wait_model(self, timeout=60):
        """/readyz once the model has loaded or failed to load."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            code, body = self.get_json("/readyz")
            if body["model"]["loaded"] or body["model"]["error"]:
                return code, body
            time.sleep(0.1)
        raise AssertionError(f"model neither loaded nor failed: {body}")

    def metrics(self):
        return self.get("/metrics")[1]

    def jobs(self):
        return self.get_json("/api/v1/jobs")[1]

    def wait_jobs(self, n, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            j = self.jobs()
            if len(j) >= n:
                return j
            time.sleep(0.1)
        raise AssertionError(f"expected {n} jobs, have {self.jobs()}")

    def spool_files(self):
        out = []
        for root, _, files in os.walk(os.path.join(self.data_dir, "spool")):
            out += [os.path.join(root, f) for f in files]
        return out

    def tmp_files(self):
        d = os.path.join(self.data_dir, "tmp")
        return os.listdir(d) if os.path.isdir(d) else []

    def stop(self, timeout=20):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout)
        return self.proc.returncode if self.proc else None

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def read_log(self):
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""


@pytest.fixture
def daemon_factory(tmp_path):
    made = []

    def make(**overrides):
        d = Daemon(tmp_path / f"d{len(made)}", **overrides)
        made.append(d)
        return d

    yield make
    for d in made:
        if d.proc and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory().start()


def run(cmd, **kw):
    """Runs an outside tool; returns CompletedProcess with text output."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)
