"""Signed over-the-air model updates, through the real CLI and through an HTTP
update server on loopback: a good bundle installs and serves the next job; a
tampered, wrongly signed, incompatible, mis-hashed, golden-failing or truncated
one is refused with its reason and the model in service stays; rollback brings
the previous one back. Bundles are signed with minisign (the real tool)."""
import hashlib
import http.server
import os
import shutil
import subprocess
import tarfile
import threading
import time

import pydicom
import pytest

import brain
from conftest import BIN, run, toml_str
from test_segmentation import ROOT, send, wait_state

MODEL = os.path.join(ROOT, "models", "brats-synth-unet")
FINAL = ("written", "failed")


def keypair(d, name):
    pub, key = os.path.join(d, f"{name}.pub"), os.path.join(d, f"{name}.key")
    r = run(["minisign", "-G", "-W", "-p", pub, "-s", key])
    assert r.returncode == 0, r.stderr
    return pub, key


def make_bundle(d, name, key, version="1.0.1", edit=None):
    """A bundle tar of the shipped model with its manifest edited, signed with `key`."""
    folder = os.path.join(d, name, "brats-synth-unet")
    shutil.copytree(MODEL, folder)
    path = os.path.join(folder, "manifest.toml")
    text = open(path).read().replace('version = "1.0.0"', f'version = "{version}"', 1)
    if edit:
        text = edit(text)
    open(path, "w").write(text)
    tar = os.path.join(d, f"{name}.tar")
    with tarfile.open(tar, "w") as t:
        t.add(folder, arcname="brats-synth-unet")
    r = run(["minisign", "-S", "-s", key, "-m", tar, "-t", f"scanside model {name}"])
    assert r.returncode == 0, r.stderr
    return tar


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("bundles"))
    keys = os.path.join(d, "keys")
    os.makedirs(keys)
    pub, key = keypair(keys, "release")
    _, other = keypair(d, "stranger")  # its .pub is not in the trusted folder
    b = {"keys": keys, "good": make_bundle(d, "good", key)}
    b["tampered"] = make_bundle(d, "tampered", key)
    with open(b["tampered"], "r+b") as f:  # a flipped byte of the ONNX, after signing
        data = bytearray(f.read())
        data[len(data) // 2] ^= 0x01
        f.seek(0)
        f.write(data)
    b["wrong_key"] = make_bundle(d, "wrong_key", other)
    b["incompatible"] = make_bundle(
        d, "incompatible", key, edit=lambda t: t.replace('compatible = "scanside-model-1"', 'compatible = "other-box-2"'))
    b["bad_hash"] = make_bundle(
        d, "bad_hash", key, edit=lambda t: t.replace('sha256 = "3', 'sha256 = "4', 1))
    b["golden_fails"] = make_bundle(
        d, "golden_fails", key, edit=lambda t: t.replace("voxel_counts = [346035, 3783, 17432, 1390]",
                                                         "voxel_counts = [300000, 23783, 37432, 7390]"))
    return b


def ota_daemon(factory, bundles, **ota):
    settings = {"trusted_keys_dir": toml_str(bundles["keys"]), **ota}
    d = factory(ota=settings).start()
    d.wait_model()
    return d


def model_version(d):
    return d.get_json("/readyz")[1]["model"]["version"]


def wait_version(d, version, timeout=60):
    deadline = time.time() + timeout
    while (v := model_version(d)) != version:
        assert time.time() < deadline, f"model {v}, want {version}\n{d.read_log()[-3000:]}"
        time.sleep(0.2)


def install(d, bundle, *extra):
    return run([BIN, "model", "install", "--config", d.config_path, bundle, *extra], timeout=300)


REFUSALS = {
    "tampered": ("signature", "does not match the bundle"),
    "wrong_key": ("signature", "not trusted"),
    "incompatible": ("compatible", '"other-box-2"'),
    "bad_hash": ("manifest", "sha256"),
    "golden_fails": ("golden", "label counts"),
}


def test_cli_refuses_each_bad_bundle_installs_a_good_one_and_rolls_back(daemon_factory, bundles, tmp_path):
    d = ota_daemon(daemon_factory, bundles)
    assert model_version(d) == "1.0.0"
    for name, (step, why) in REFUSALS.items():
        r = install(d, bundles[name])
        assert r.returncode == 1, (name, r.stdout, r.stderr)
        assert f"refused at {step}" in r.stderr and why in r.stderr, (name, r.stderr)
        assert not os.path.exists(os.path.join(d.data_dir, "models", "active")), name
    assert model_version(d) == "1.0.0"
    # Nothing installed yet: nothing to roll back to.
    r = run([BIN, "model", "rollback", "--config", d.config_path])
    assert r.returncode == 1 and "no previous model" in r.stderr

    r = install(d, bundles["good"])
    assert r.returncode == 0, r.stderr
    assert '"version": "1.0.1"' in r.stdout
    wait_version(d, "1.0.1")
    # The next job runs on it, and its results name the exact version and hash.
    sha = hashlib.sha256(open(os.path.join(MODEL, "model.onnx"), "rb").read()).hexdigest()
    job = wait_state(d, send(d, brain.write_series(str(tmp_path / "s"), "t1c", "axial", seed=5)), FINAL)
    assert job["state"] == "written", job
    assert job["inference"]["model"].endswith("1.0.1") and job["inference"]["model_sha256"] == sha
    seg, texts = None, []
    for root, _, files in os.walk(os.path.join(d.data_dir, "results")):
        for f in files:
            if not f.endswith(".dcm"):
                continue
            ds = pydicom.dcmread(os.path.join(root, f), stop_before_pixels=True)
            seg = ds if ds.Modality == "SEG" else seg
            if ds.Modality == "SR":
                ds.walk(lambda _, el: texts.append(str(el.value)) if el.keyword == "TextValue" else None)
    alg = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert alg.AlgorithmVersion == "1.0.1" and sha in alg.AlgorithmParameters
    assert f"brats-synth-unet 1.0.1 (sha256 {sha})" in texts, texts
    # A bad bundle after a good one leaves the good one in service.
    assert install(d, bundles["tampered"]).returncode == 1
    assert model_version(d) == "1.0.1"

    r = run([BIN, "model", "rollback", "--config", d.config_path])
    assert r.returncode == 0 and '"to":"factory"' in r.stdout.replace(" ", ""), r.stdout + r.stderr
    wait_version(d, "1.0.0")
    r = run([BIN, "model", "rollback", "--config", d.config_path])  # and forward again
    assert r.returncode == 0, r.stderr
    wait_version(d, "1.0.1")
    # The health check after boot tests the model in service.
    r = run([BIN, "selftest", "--config", d.config_path], timeout=300)
    assert r.returncode == 0 and '"version": "1.0.1"' in r.stdout, r.stderr
    # Every install and rollback, refused ones included, is in the audit trail.
    audit = open(os.path.join(d.data_dir, "audit", "audit.log")).read()
    changes = [line for line in audit.splitlines() if 'csd-code="110131"' in line]
    # refusals, the early rollback, the good install, tampered, two rollbacks
    assert len(changes) == len(REFUSALS) + 1 + 1 + 1 + 2, len(changes)
    assert sum('EventOutcomeIndicator="0"' in c for c in changes) == 3
    assert any(f"model brats-synth-unet 1.0.1 sha256:{sha}" in c and "model installed" in c for c in changes)


class UpdateServer:
    """A loopback HTTP server offering one bundle (path -> bytes); `cut` sends
    only part of a body after announcing its full length, then closes."""

    def __init__(self, tls=None):
        self.files, self.cut = {}, set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 3] if self.path in server.cut else body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls:  # (certificate, key): HTTPS
            import ssl
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def offer(self, path, tar, cut=False):
        self.files[path] = open(tar, "rb").read()
        self.files[path + ".minisig"] = open(tar + ".minisig", "rb").read()
        (self.cut.add if cut else self.cut.discard)(path)

    def close(self):
        self.httpd.shutdown()


def wait_metric(d, text, timeout=60):
    deadline = time.time() + timeout
    while text not in d.metrics():
        assert time.time() < deadline, d.metrics()[-1500:] + d.read_log()[-3000:]
        time.sleep(0.2)


def test_the_daemon_pulls_from_an_update_server_and_refuses_a_truncated_download(daemon_factory, bundles):
    srv = UpdateServer()
    try:
        srv.offer("/scanside/model.tar", bundles["good"], cut=True)
        # The CLI from a URL: the cut-off download is refused, nothing changes.
        d = ota_daemon(daemon_factory, bundles, update_url=toml_str(srv.url + "/scanside/model.tar"),
                       check_interval_s="1")
        r = install(d, srv.url + "/scanside/model.tar")
        assert r.returncode == 1 and "download truncated after" in r.stderr, r.stderr
        wait_metric(d, 'scanside_ota_pulls_total{outcome="download_failed"}')
        assert "download truncated" in d.read_log()
        assert model_version(d) == "1.0.0"
        # A signed bundle that fails a check is refused once, not fetched again.
        srv.offer("/scanside/model.tar", bundles["golden_fails"])
        wait_metric(d, 'scanside_ota_pulls_total{outcome="refused"} 1')
        wait_metric(d, 'scanside_ota_pulls_total{outcome="refused_before"}')
        assert model_version(d) == "1.0.0"
        # The whole bundle: installed by the pull, then it is up to date.
        srv.offer("/scanside/model.tar", bundles["good"])
        wait_metric(d, 'scanside_ota_pulls_total{outcome="installed"} 1')
        wait_version(d, "1.0.1")
        wait_metric(d, 'scanside_ota_pulls_total{outcome="up_to_date"}')
        # And the CLI from a URL with an unknown path says so.
        r = install(d, srv.url + "/nothing.tar")
        assert r.returncode == 1 and "HTTP 404" in r.stderr, r.stderr
    finally:
        srv.close()


def test_https_update_server_must_chain_to_the_site_ca(daemon_factory, bundles, tmp_path):
    from pki import make_pki
    pki = make_pki(str(tmp_path / "pki"))
    srv = UpdateServer(tls=(pki("server.crt"), pki("server.key")))
    try:
        srv.offer("/m.tar", bundles["good"])
        d = daemon_factory(ota={"trusted_keys_dir": toml_str(bundles["keys"]),
                                "ca_file": toml_str(pki("other.crt"))}).start()
        d.wait_model()
        r = install(d, srv.url + "/m.tar")
        assert r.returncode == 1 and "TLS" in r.stderr, r.stderr
        assert model_version(d) == "1.0.0"
        d.settings["ota"]["ca_file"] = toml_str(pki("ca.crt"))
        d.write_config()
        r = install(d, srv.url + "/m.tar")
        assert r.returncode == 0, r.stderr
        wait_version(d, "1.0.1")
    finally:
        srv.close()


def test_an_install_without_trusted_keys_is_refused_by_its_key(daemon_factory, bundles):
    d = daemon_factory().start()
    r = install(d, bundles["good"])
    assert r.returncode == 1 and "ota.trusted_keys_dir is not set" in r.stderr, r.stderr
    bad = os.path.join(d.dir, "bad.toml")
    open(bad, "w").write(open(d.config_path).read() + '\n[ota]\nupdate_url = "ftp://x/y"\n')
    r = run([BIN, "check-config", bad])
    assert r.returncode == 2 and "ota.update_url" in r.stderr, r.stderr
