"""sd_notify, configuration CLI, HTTP side channel."""
import os
import socket
import subprocess
import time

from conftest import BIN, run

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def test_sd_notify_ready_and_watchdog(daemon_factory, tmp_path):
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(10)
    d = daemon_factory()
    d.start(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}, wait=False, watchdog_pid=True)
    seen = []
    deadline = time.time() + 10
    while time.time() < deadline and not ("READY=1" in seen and "WATCHDOG=1" in seen):
        try:
            seen += s.recv(4096).decode().split("\n")
        except socket.timeout:
            break
    assert "READY=1" in seen, seen
    assert "WATCHDOG=1" in seen, seen
    # While the store opens (it may rebuild its index), systemd is asked to wait.
    assert seen.index("EXTEND_TIMEOUT_USEC=30000000") < seen.index("READY=1"), seen
    assert any(x.startswith("STATUS=listening as SCANSIDE") for x in seen), seen
    # READY only after the listeners are bound: the DICOM port answers now.
    assert run(["echoscu", "-aec", "SCANSIDE", "127.0.0.1", str(d.port)]).returncode == 0
    # The status line is kept current for `systemctl status`.
    deadline = time.time() + 10
    while time.time() < deadline and not any("instances stored; " in x and "series open" in x for x in seen):
        try:
            seen += s.recv(4096).decode().split("\n")
        except socket.timeout:
            break
    assert any(x.startswith("STATUS=0 instances stored; 0 series open") for x in seen), seen
    d.stop()
    rest = []
    s.settimeout(2)
    try:
        while True:
            rest += s.recv(4096).decode().split("\n")
    except socket.timeout:
        pass
    assert "STOPPING=1" in rest, rest


def device_layer(d):
    """firmware-config/device.toml with the image's model folder pointed at the
    repository's copy (the bundle the model recipe installs there)."""
    text = open(os.path.join(ROOT, "firmware-config", "device.toml")).read()
    assert "/usr/share/scanside/models/brats-synth-unet" in text
    path = os.path.join(str(d), "device.toml")
    with open(path, "w") as f:
        f.write(text.replace("/usr/share/scanside/models/brats-synth-unet",
                             os.path.abspath(os.path.join(ROOT, "models", "brats-synth-unet"))))
    return path


def test_check_config_accepts_the_shipped_files(tmp_path):
    fc = os.path.join(ROOT, "firmware-config")
    r = run([BIN, "check-config", os.path.join(fc, "default.toml")])
    assert r.returncode == 0, r.stderr
    layers = [os.path.join(fc, "default.toml"), device_layer(tmp_path)]
    r = run([BIN, "check-config", *layers])
    assert r.returncode == 0, r.stderr
    # Each example site over the device layers, its certificate paths pointed
    # at real PEM files (on a box they sit on the data partition).
    from pki import make_pki
    pki = make_pki(str(tmp_path / "tls"))
    sites = sorted(os.listdir(os.path.join(fc, "sites")))
    assert len(sites) >= 2
    for name in sites:
        text = open(os.path.join(fc, "sites", name)).read()
        for a, b in (("hub-ca.pem", "ca.crt"), ("box.pem", "server.crt"), ("box.key", "server.key")):
            text = text.replace(f"/var/lib/scanside/tls/{a}", pki(b))
        site = tmp_path / name
        site.write_text(text)
        r = run([BIN, "check-config", *layers, str(site)])
        assert r.returncode == 0, (name, r.stderr)
        assert "secret" not in text.lower().replace("no secrets", "") and "token =" not in text, name


def test_layered_config_site_over_defaults(daemon_factory, tmp_path):
    """The defaults file < the site file: the site's keys win, its allowlist
    replaces the defaults', and an error names the key and the file that set it."""
    from conftest import free_port
    fc = os.path.join(ROOT, "firmware-config")
    port, http = free_port(), free_port()
    site = tmp_path / "site.toml"
    site.write_text(f"""
[dicom]
ae_title = "SITE_A"
listen = "127.0.0.1:{port}"
[[dicom.allowed_peers]]
ae_title = "MR1"
address = "127.0.0.1"
[storage]
data_dir = "{tmp_path / 'data'}"
min_free_bytes = 1048576
[http]
listen = "127.0.0.1:{http}"
""")
    defaults = os.path.join(fc, "default.toml")
    p = subprocess.Popen([BIN, "run", "--config", defaults, "--config", str(site)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20
        while run(["echoscu", "-aet", "MR1", "-aec", "SITE_A", "127.0.0.1", str(port)]).returncode != 0:
            assert time.time() < deadline and p.poll() is None
            time.sleep(0.2)
        # the default's "any title from 127.0.0.1" is gone: the site's list replaced it
        assert run(["echoscu", "-aet", "OTHER", "-aec", "SITE_A", "127.0.0.1", str(port)]).returncode != 0
    finally:
        p.terminate()
        p.wait(20)
    bad = tmp_path / "bad-site.toml"
    bad.write_text("[series]\nidle_timeot_s = 3\n")
    r = run([BIN, "check-config", defaults, str(bad)])
    assert r.returncode == 2 and "series.idle_timeot_s" in r.stderr and f"set in {bad}" in r.stderr, r.stderr


def test_check_config_names_every_bad_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("""
[dicom]
ae_title = "THIS_TITLE_IS_TOO_LONG"
listen = "0.0.0.0:11112"
[[dicom.allowed_peers]]
ae_title = "MRSCANNER1"
address = "10.1.2.0/99"
[storage]
data_dir = "/var/lib/scanside"
[http]
listen = "nowhere"
""")
    r = run([BIN, "check-config", str(bad)])
    assert r.returncode != 0
    for key in ["dicom.ae_title", "dicom.allowed_peers[0].address", "http.listen"]:
        assert key in r.stderr, r.stderr
    unknown = tmp_path / "unknown.toml"
    unknown.write_text(open(os.path.join(ROOT, "firmware-config", "default.toml")).read()
                       .replace("[series]", "[series]\nidle_timout_s = 3"))
    r = run([BIN, "check-config", str(unknown)])
    assert r.returncode != 0 and "series.idle_timout_s" in r.stderr and "unknown field" in r.stderr
    r = run([BIN, "check-config", str(tmp_path / "missing.toml")])
    assert r.returncode != 0 and "cannot read" in r.stderr


def test_run_refuses_a_bad_config_with_its_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(open(os.path.join(ROOT, "firmware-config", "default.toml")).read()
                   .replace("max_associations = 8", "max_associations = 0"))
    r = run([BIN, "run", "--config", str(bad)], timeout=20)
    assert r.returncode != 0 and "dicom.max_associations" in r.stderr


def test_schema_is_fresh():
    r = run([BIN, "config-schema"])
    with open(os.path.join(ROOT, "firmware-config", "scanside.schema.json")) as f:
        assert r.stdout == f.read(), "regenerate firmware-config/scanside.schema.json"


def test_embedded_default_runs_on_loopback(tmp_path):
    # The README's first command: `scanside run` with no config, from a fresh directory.
    p = subprocess.Popen([BIN, "run"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 15
        ok = False
        while time.time() < deadline and not ok:
            ok = run(["echoscu", "-aec", "SCANSIDE", "127.0.0.1", "11112"]).returncode == 0
            time.sleep(0.1)
        assert ok, "embedded default not answering on 127.0.0.1:11112"
        assert os.path.isdir(tmp_path / "scanside-data" / "spool")
    finally:
        p.terminate()
        out = p.communicate(timeout=20)[0]
    assert p.returncode == 0, out


def test_http_errors_are_specific(daemon):
    code, body = daemon.get_json("/api/v1/jobs/0123456789abcdef")
    assert code == 404 and "no job with id" in body["error"]
    code, body = daemon.get_json("/api/v1/jobs/../../etc")
    assert code in (400, 404)
    code, body = daemon.get_json("/api/v1/series/1.2/../3")
    assert code in (400, 404)
    code, body = daemon.get_json("/nope")
    assert code == 404 and "no such resource" in body["error"]
    code, body = daemon.wait_model()
    assert code == 200 and body["ready"] and body["store_open"] and body["model_loaded"]
    m = daemon.metrics()
    for name in ["scanside_associations_accepted_total", "scanside_instances_stored_total",
                 "scanside_bytes_stored_total", "scanside_c_store_seconds_bucket",
                 "scanside_disk_free_bytes", "scanside_series_completed_total"]:
        assert name in m, name


def stage_root(root):
    """A staged root as the image lays it out: the host's systemd units (targets),
    ours in /usr/lib/systemd/system, the binaries they run in /usr/bin."""
    import shutil
    units = root / "usr" / "lib" / "systemd" / "system"
    shutil.copytree("/usr/lib/systemd/system", units, symlinks=True)
    for f in ("scanside.service", "scanside.socket", "scanside-healthcheck.service"):
        shutil.copy(os.path.join(ROOT, "systemd", f), units / f)
    (root / "usr" / "bin").mkdir(parents=True, exist_ok=True)
    os.symlink("usr/bin", root / "bin")
    shutil.copy(BIN, root / "usr" / "bin" / "scanside")
    for tool in ("rauc", "kill"):
        assert shutil.which(tool), f"{tool} is needed"
        shutil.copy(shutil.which(tool), root / "usr" / "bin" / tool)
    (root / "etc").mkdir(exist_ok=True)
    for f in ("passwd", "group"):
        shutil.copy(f"/etc/{f}", root / "etc" / f)
    return root


def test_systemd_units_verify_and_are_hardened(tmp_path):
    import re
    import shutil
    assert shutil.which("systemd-analyze"), "systemd-analyze is needed"
    unit = open(os.path.join(ROOT, "systemd", "scanside.service")).read()
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "User=scanside" in unit
    check = open(os.path.join(ROOT, "systemd", "scanside-healthcheck.service")).read()
    lines = [line for line in check.splitlines() if line.startswith("ExecStart=")]
    assert "selftest" in lines[0] and "mark-good" in lines[1], lines
    # verify on a staged root: any output at all is a failure.
    root = stage_root(tmp_path / "root")
    r = run(["systemd-analyze", "verify", f"--root={root}",
             "scanside.service", "scanside.socket", "scanside-healthcheck.service"])
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
    # Exposure as systemd rates it (lower is better); target <= 2.0.
    r = run(["systemd-analyze", "security", "--offline=true", f"--root={root}", "scanside.service"])
    m = re.search(r"Overall exposure level for scanside.service: ([0-9.]+)", r.stdout + r.stderr)
    assert m and float(m.group(1)) <= 2.0, r.stdout[-2000:] + r.stderr
    # The user and the directories, created in the staged root.
    r = run(["systemd-sysusers", f"--root={root}", os.path.join(ROOT, "systemd", "sysusers.d", "scanside.conf")])
    assert r.returncode == 0, r.stderr
    assert "scanside:" in (root / "etc" / "passwd").read_text()
    r = run(["systemd-tmpfiles", f"--root={root}", "--create",
             os.path.join(ROOT, "systemd", "tmpfiles.d", "scanside.conf")])
    assert r.returncode == 0, r.stderr
    assert oct((root / "var" / "lib" / "scanside").stat().st_mode & 0o777) == "0o750"
    site = root / "var" / "lib" / "scanside" / "site.toml"
    assert site.read_text() == "" and oct(site.stat().st_mode & 0o777) == "0o640"
    # The unit's configuration layers: the empty site file over the image's two.
    layers = [a for a in unit.split("ExecStart=")[1].split("\n")[0].split() if a.startswith("/") and "toml" in a]
    assert layers[-1] == "/var/lib/scanside/site.toml" and len(layers) == 3, layers
    staged = [os.path.join(ROOT, "firmware-config", "default.toml"), device_layer(tmp_path), str(site)]
    assert [os.path.basename(p) for p in layers] == ["default.toml", "device.toml", "site.toml"]
    r = run([BIN, "check-config", *staged])
    assert r.returncode == 0, r.stderr


def test_sigterm_drains_an_open_association(daemon, tmp_path):
    import rawdicom
    from synth import dataset_bytes, make_series
    p = make_series(tmp_path / "s", n=1)[0]
    import pydicom
    uid = pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
    c = rawdicom.Conn("127.0.0.1", daemon.port)
    assert c.associate()[0] == 2
    daemon.proc.terminate()
    time.sleep(0.5)
    assert daemon.proc.poll() is None, "exited while an association was open"
    # New associations are no longer accepted...
    assert run(["echoscu", "-aec", "SCANSIDE", "127.0.0.1", str(daemon.port)]).returncode != 0
    # ...but the open one finishes its work.
    rsp = c.store(rawdicom.MR, uid, dataset_bytes(p))
    assert rawdicom.status_of(rsp) == 0
    c.release()
    assert daemon.proc.wait(15) == 0
    assert len(daemon.spool_files()) == 1


def test_the_daemon_takes_the_dicom_socket_systemd_passes(daemon_factory, tmp_path):
    """systemd-socket-activate binds the port and passes it as fd 3 (LISTEN_FDS);
    the daemon serves DICOM on it instead of [dicom] listen."""
    import pydicom
    import synth
    from conftest import free_port
    d = daemon_factory()  # its config names another port: the passed socket wins
    port = free_port()
    env = ["-E", "SCANSIDE_LOG=info"]
    with open(d.log_path, "a") as log:
        p = subprocess.Popen(["systemd-socket-activate", "-l", f"127.0.0.1:{port}"] + env +
                             [os.path.abspath(BIN), "run", "--config", d.config_path],
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 10
        while True:
            # The first connection starts the daemon; it answers on the passed socket.
            r = run(["echoscu", "-aec", "SCANSIDE", "127.0.0.1", str(port)])
            if r.returncode == 0:
                break
            assert time.time() < deadline, r.stdout + r.stderr + d.read_log()
            time.sleep(0.2)
        paths = synth.make_series(str(tmp_path / "s"), n=5)
        r = run(["storescu", "-aec", "SCANSIDE", "127.0.0.1", str(port)] + paths)
        assert r.returncode == 0, r.stdout + r.stderr
        series = pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID
        deadline = time.time() + 10
        while not any(j["series_instance_uid"] == series for j in d.jobs()):
            assert time.time() < deadline, d.read_log()
            time.sleep(0.2)
        assert "passed by systemd (socket activation)" in d.read_log()
        # dicom.listen was not bound.
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", d.port)) != 0
    finally:
        p.terminate()
        p.wait(20)


def test_sighup_applies_a_good_allowlist_and_keeps_the_old_config_on_a_bad_one(daemon_factory):
    import signal
    d = daemon_factory(peers=[("MRA", "127.0.0.1")]).start()
    echo = lambda aet: run(["echoscu", "-aet", aet, "-aec", "SCANSIDE", "127.0.0.1", str(d.port)])  # noqa: E731

    def reload_and_wait(count, outcome):
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while f'scanside_config_reloads_total{{outcome="{outcome}"}} {count}' not in d.metrics():
            assert time.time() < deadline, d.read_log()[-2000:]
            time.sleep(0.1)

    assert echo("MRA").returncode == 0
    assert echo("MRB").returncode != 0
    d.settings["peers"] = [("MRA", "127.0.0.1"), ("MRB", "127.0.0.1")]
    d.settings["storage"] = {"retention": '"7d"'}  # not live: named as needing a restart
    d.write_config()
    reload_and_wait(1, "applied")
    assert echo("MRB").returncode == 0
    log = d.read_log()
    assert "configuration reloaded" in log and "take effect at the next restart" in log and "storage" in log
    # A bad file: refused with its key, and the running allowlist stays.
    with open(d.config_path, "a") as f:
        f.write('\n[qr]\nbogus = 1\n')
    reload_and_wait(1, "refused")
    assert "qr.bogus" in d.read_log() or "bogus" in d.read_log()
    assert echo("MRB").returncode == 0 and echo("MRA").returncode == 0
    assert echo("MRC").returncode != 0


def test_sighup_applies_upstreams_and_gate_thresholds(daemon_factory, tmp_path):
    """Thresholds and upstreams change without a restart: a series the old gate
    refuses passes the new one, and its results go to the upstream just added."""
    import signal
    import brain
    from orthanc import Orthanc
    from test_forward import upstream, wait_outbox
    from test_segmentation import send, wait_state
    o = Orthanc(tmp_path / "orthanc").start()
    try:
        d = daemon_factory(gate={"min_slices": 500}).start()
        d.wait_model()
        done = ("rejected", "written", "queued", "delivered", "failed")
        first = wait_state(d, send(d, brain.write_series(str(tmp_path / "a"), "t2", "axial", seed=1)), done)
        assert first["state"] == "rejected", first
        d.settings["gate"] = {}
        d.settings["upstream"] = [upstream(o)]
        d.write_config()
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while 'scanside_config_reloads_total{outcome="applied"} 1' not in d.metrics():
            assert time.time() < deadline, d.read_log()[-2000:]
            time.sleep(0.1)
        log = d.read_log()
        assert 'applied=["upstream", "gate"]' in log, log[-2000:]
        assert "take effect at the next restart" not in log
        second = wait_state(d, send(d, brain.write_series(str(tmp_path / "b"), "t2", "axial", seed=2)),
                            ("queued", "delivered", "failed"))
        assert second["state"] in ("queued", "delivered"), second
        entries = wait_outbox(d, lambda e: all(x["state"] == "delivered" for x in e))
        assert {e["job_id"] for e in entries} == {second["id"]}
        assert set(o.instances()) == {e["sop_instance_uid"] for e in entries}
    finally:
        o.stop()
