"""DICOM TLS on our side (DCMTK echoscu/storescu with +tls), client certificates
per peer, HTTPS for the API, and certificates reloaded on SIGHUP."""
import http.client
import os
import signal
import ssl
import time
import urllib.request

import pytest

from conftest import free_port, run, toml_str
from pki import issue, make_ca, make_pki
from synth import make_series


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(str(tmp_path_factory.mktemp("pki")))


def tls_section(pki, port, client_ca=True):
    s = (f'[dicom.tls]\nlisten = "127.0.0.1:{port}"\ncert_file = {toml_str(pki("server.crt"))}\n'
         f'key_file = {toml_str(pki("server.key"))}\n')
    if client_ca:
        s += f'client_ca_file = {toml_str(pki("ca.crt"))}\n'
    return s


def tls_daemon(daemon_factory, pki, peers=None, **kw):
    port = free_port()
    d = daemon_factory(peers=peers or [("*", "127.0.0.1")], extra=tls_section(pki, port), **kw)
    d.tls_port = port
    return d.start()


def echo(d, *tls, aet="ECHOSCU", port=None):
    return run(["echoscu", "-aet", aet, "-aec", d.ae, *tls, "127.0.0.1", str(port or d.tls_port)], timeout=30)


def with_cert(pki, name, ca="ca"):
    return ["+tls", pki(f"{name}.key"), pki(f"{name}.crt"), "+cf", pki(f"{ca}.crt")]


def test_echoscu_and_storescu_over_tls_with_a_client_certificate(daemon_factory, pki, tmp_path):
    d = tls_daemon(daemon_factory, pki)
    r = echo(d, *with_cert(pki, "client"))
    assert r.returncode == 0, r.stdout + r.stderr
    paths = make_series(tmp_path / "s", n=5)
    r = run(["storescu", "-aec", d.ae, *with_cert(pki, "client"), "127.0.0.1", str(d.tls_port)] + paths)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(d.spool_files()) == 5
    # The plain port still answers; the TLS port wants TLS.
    assert echo(d, port=d.port).returncode == 0
    assert echo(d).returncode != 0
    m = d.metrics()
    assert 'scanside_associations_accepted_total 3' in m, m


def test_a_client_certificate_from_another_ca_or_expired_is_refused(daemon_factory, pki):
    d = tls_daemon(daemon_factory, pki)
    for name, ca in (("stranger", "ca"), ("expired", "ca")):
        r = echo(d, *with_cert(pki, name, ca))
        assert r.returncode != 0, (name, r.stdout + r.stderr)
    # The server's certificate checked against a CA that did not sign it: refused by the client.
    r = echo(d, *with_cert(pki, "client", ca="other"))
    assert r.returncode != 0
    assert 'reason="tls_handshake"' in d.metrics()
    assert d.proc.poll() is None
    assert echo(d, *with_cert(pki, "client")).returncode == 0


def test_peers_can_be_held_to_tls_and_to_a_client_certificate(daemon_factory, pki):
    d = tls_daemon(daemon_factory, pki, peers=[("PLAIN", "127.0.0.1"), ("TLSWS", "127.0.0.1", "tls"),
                                                ("MUTUAL", "127.0.0.1", "mutual_tls")])
    anonymous = ["+tla", "+cf", pki("ca.crt")]
    # tls: refused on the plain port, accepted over TLS without a client certificate.
    assert echo(d, aet="TLSWS", port=d.port).returncode != 0
    assert echo(d, *anonymous, aet="TLSWS").returncode == 0
    # mutual_tls: over TLS without a certificate it is aborted; with one it is in.
    r = echo(d, *anonymous, aet="MUTUAL")
    assert r.returncode != 0, r.stdout + r.stderr
    assert 'reason="client_certificate_required"' in d.metrics()
    assert echo(d, *with_cert(pki, "client"), aet="MUTUAL").returncode == 0
    # any: both ways.
    assert echo(d, aet="PLAIN", port=d.port).returncode == 0
    assert echo(d, *anonymous, aet="PLAIN").returncode == 0


def test_sighup_reloads_the_certificates(daemon_factory, pki, tmp_path):
    # The daemon's own copies, replaced in place as a renewal would.
    import shutil
    own = tmp_path / "own"
    own.mkdir()
    for n in ("server.crt", "server.key"):
        shutil.copy(pki(n), own / n)
    port = free_port()
    extra = (f'[dicom.tls]\nlisten = "127.0.0.1:{port}"\ncert_file = {toml_str(own / "server.crt")}\n'
             f'key_file = {toml_str(own / "server.key")}\n')
    d = daemon_factory(extra=extra).start()
    d.tls_port = port
    anon = lambda ca: ["+tla", "+cf", ca]  # noqa: E731
    assert echo(d, *anon(pki("ca.crt"))).returncode == 0
    # A new certificate from a new CA, then SIGHUP.
    newdir = str(tmp_path / "new")
    os.makedirs(newdir)
    with open(os.path.join(newdir, "ext"), "w") as f:
        f.write(open(pki("ext")).read())
    make_ca(newdir, "ca2")
    issue(newdir, "ca2", "server")
    shutil.copy(os.path.join(newdir, "server.crt"), own / "server.crt")
    shutil.copy(os.path.join(newdir, "server.key"), own / "server.key")
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while echo(d, *anon(os.path.join(newdir, "ca2.crt"))).returncode != 0:
        assert time.time() < deadline, d.read_log()
        time.sleep(0.3)
    assert echo(d, *anon(pki("ca.crt"))).returncode != 0
    # A broken key file: the reload is refused with its key, the certificate in force stays.
    with open(own / "server.key", "w") as f:
        f.write("not a key\n")
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while "dicom.tls.key_file" not in d.read_log():
        assert time.time() < deadline, d.read_log()
        time.sleep(0.2)
    assert echo(d, *anon(os.path.join(newdir, "ca2.crt"))).returncode == 0


def test_the_api_over_https_and_its_config_rules(daemon_factory, pki, tmp_path):
    extra = (f'[http.tls]\ncert_file = {toml_str(pki("server.crt"))}\n'
             f'key_file = {toml_str(pki("server.key"))}\n')
    d = daemon_factory(extra=extra, http_token="a-token-of-24-characters")
    d.start(wait=False)
    ctx = ssl.create_default_context(cafile=pki("ca.crt"))
    deadline = time.time() + 30
    while True:
        try:
            with urllib.request.urlopen(f"https://localhost:{d.http_port}/healthz", context=ctx, timeout=5) as r:
                assert r.status == 200
                break
        except OSError:
            assert time.time() < deadline and d.proc.poll() is None, d.read_log()
            time.sleep(0.2)
    # Plain HTTP on the HTTPS port gets no HTTP answer (a TLS alert, then the close).
    with pytest.raises((OSError, http.client.HTTPException)):
        urllib.request.urlopen(f"http://127.0.0.1:{d.http_port}/healthz", timeout=5)
    # A state change over HTTPS still needs the token.
    req = urllib.request.Request(f"https://localhost:{d.http_port}/api/v1/outbox/X/1/replay",
                                 method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, context=ctx, timeout=5)
    assert e.value.code == 401
    # Serving the API beyond loopback without TLS is a config error naming the key.
    cfg = tmp_path / "open.toml"
    text = open(d.config_path).read().replace(f'listen = "127.0.0.1:{d.http_port}"', 'listen = "0.0.0.0:8080"')
    text = text[:text.index("[http.tls]")]
    cfg.write_text(text)
    r = run([os.environ.get("SCANSIDE_BIN", "scanside"), "check-config", str(cfg)])
    assert r.returncode != 0 and "http.listen" in r.stdout + r.stderr, r.stdout + r.stderr


def test_tls_config_errors_name_their_keys(daemon_factory, pki, tmp_path):
    d = daemon_factory(peers=[("WS", "127.0.0.1", "mutual_tls")])
    text = open(d.config_path).read()
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    r = run([os.environ.get("SCANSIDE_BIN", "scanside"), "check-config", str(cfg)])
    assert r.returncode != 0 and "dicom.allowed_peers[0].transport" in r.stdout + r.stderr, r.stdout + r.stderr
    cfg.write_text(text + tls_section(pki, 2762).replace(pki("server.key"), pki("client.key")))
    r = run([os.environ.get("SCANSIDE_BIN", "scanside"), "check-config", str(cfg)])
    assert r.returncode != 0 and "dicom.tls.key_file" in r.stdout + r.stderr, r.stdout + r.stderr
    cfg.write_text(text + tls_section(pki, 2762).replace(pki("ca.crt"), str(tmp_path / "missing.pem")))
    r = run([os.environ.get("SCANSIDE_BIN", "scanside"), "check-config", str(cfg)])
    assert r.returncode != 0 and "dicom.tls.client_ca_file" in r.stdout + r.stderr, r.stdout + r.stderr


def test_a_peer_stalled_in_the_tls_handshake_loses_its_slot(daemon_factory, pki):
    import socket
    d = tls_daemon(daemon_factory, pki, max_associations=1, read_timeout_s=1)
    stalled = socket.create_connection(("127.0.0.1", d.tls_port))
    stalled.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, then nothing
    time.sleep(0.3)
    # The slot (shared by both listeners) is held while the handshake waits ...
    r = echo(d, port=d.port)
    assert r.returncode != 0 and "Association Rejected" in r.stdout + r.stderr, r.stdout + r.stderr
    # ... and given back once the read timeout has passed.
    deadline = time.time() + 10
    while (r := echo(d, *with_cert(pki, "client"))).returncode != 0:
        assert time.time() < deadline, r.stdout + r.stderr + d.read_log()
        time.sleep(0.3)
    assert 'reason="tls_handshake_timeout"' in d.metrics()
    stalled.close()
