"""Forwarding upstream: results reach Orthanc (the hub PACS, on loopback) exactly
as stored, wait durably while the link is down (through kill -9), and an object
the destination refuses is dead-lettered with the reason while the rest go on."""
import glob
import io
import json
import os
import struct
import time

import pydicom
import pytest

import brain
from conftest import free_port, run, toml_str
from orthanc import Orthanc
from pki import make_pki
from test_segmentation import send, wait_state


TOKEN = "test-token-0123456789abcdef"
# With an upstream a finished job is queued, then delivered once every object is.
FINAL = ("queued", "delivered", "failed")


def test_changes_over_http_need_the_configured_token(daemon):
    status, body = daemon.post("/api/v1/outbox/HUB/1/replay")
    assert status == 403 and "http.token" in body["error"]


def dataset_bytes(b):
    """The data set of a Part 10 file: what follows the meta group."""
    assert b[128:132] == b"DICM" and b[132:136] == b"\x02\x00\x00\x00"
    (n,) = struct.unpack("<I", b[140:144])
    return b[144 + n:]


def upstream(o, **kw):
    u = {"ae_title": toml_str(o.aet), "host": '"127.0.0.1"', "port": str(o.port),
         "retry_initial_s": "0.5", "retry_max_s": "2.0"}
    u.update(kw)
    return u


def wait_outbox(d, done, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        e = d.get_json("/api/v1/outbox")[1]
        if e and done(e):
            return e
        time.sleep(0.3)
    raise AssertionError(json.dumps(d.get_json("/api/v1/outbox")[1])[:3000] + d.read_log()[-3000:])


def wait_job(d, job, state, timeout=10):
    """The job once it is in `state` (the forwarder moves it after delivering)."""
    deadline = time.time() + timeout
    while (j := d.get_json(f"/api/v1/jobs/{job['id']}")[1])["state"] != state:
        assert time.time() < deadline, j
        time.sleep(0.2)
    return j


def all_delivered(entries):
    return all(x["state"] == "delivered" for x in entries)


def test_results_arrive_in_orthanc_as_stored(daemon_factory, tmp_path):
    o = Orthanc(tmp_path / "orthanc").start()
    try:
        d = daemon_factory(upstream=[upstream(o)]).start()
        d.wait_model()
        paths = brain.write_series(str(tmp_path / "s"), "t2", "axial", seed=3)
        job = wait_state(d, send(d, paths), FINAL)
        assert job["state"] in ("queued", "delivered")
        entries = wait_outbox(d, all_delivered)
        assert sorted(e["kind"] for e in entries) == ["seg", "sr", "trend_picture"]
        j = wait_job(d, job, "delivered")
        assert [h["state"] for h in j["history"]][-3:] == ["written", "queued", "delivered"]
        held = o.instances()
        assert set(held) == {e["sop_instance_uid"] for e in entries}
        for e in entries:
            ours = open(os.path.join(d.data_dir, e["path"]), "rb").read()
            theirs = held[e["sop_instance_uid"]]
            if e["kind"] == "trend_picture":
                # No sequence: the bytes are the same.
                assert dataset_bytes(theirs) == dataset_bytes(ours)
            # Orthanc (DCMTK) re-encodes sequences of undefined length with explicit
            # lengths; every element and the pixel data must still be equal.
            a, b = (pydicom.dcmread(io.BytesIO(x)) for x in (ours, theirs))
            assert a == b, e["kind"]
            assert a.PixelData == b.PixelData if "PixelData" in a else True
        status, ready = d.get_json("/readyz")
        up = ready["upstreams"][o.aet]
        assert up["link"] == "up" and up["pending"] == 0 and up["dead_letters"] == 0
        m = d.metrics()
        assert f'scanside_outbox_delivered_total{{destination="{o.aet}"}} 3' in m
        assert f'scanside_upstream_up{{destination="{o.aet}"}} 1' in m
    finally:
        o.stop()


def test_link_down_through_two_kill_9_then_everything_once_in_order(daemon_factory, tmp_path):
    """A backlog of 200+ objects (two series forwarded as received, and their
    results) waits through two kill -9; then each arrives once, in commit order."""
    o = Orthanc(tmp_path / "orthanc")  # not started: the link is down
    d = daemon_factory(upstream=[upstream(o, forward_sources="true")]).start()
    d.wait_model()
    sent = []
    for seed in (3, 5):
        paths = brain.write_series(str(tmp_path / f"s{seed}"), "t2", "axial", seed=seed,
                                   patient_id=f"FWD{seed}", slice_thickness=1.25)
        job = wait_state(d, send(d, paths), FINAL)
        assert job["state"] in ("queued", "delivered")
        sent += [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths]
        sent += job["results"]
    total = len(sent)
    assert total >= 200
    entries = wait_outbox(d, lambda e: len(e) == total)
    assert all(x["state"] == "pending" for x in entries)
    assert sum(x["kind"] == "source" for x in entries) == total - 6
    deadline = time.time() + 30
    while d.get_json("/readyz")[1]["upstreams"][o.aet]["link"] != "down":
        assert time.time() < deadline, d.get_json("/readyz")[1]
        time.sleep(0.3)
    ready = d.get_json("/readyz")[1]["upstreams"][o.aet]
    assert ready["pending"] == total and ready["last_error"]
    assert f'scanside_outbox_pending{{destination="{o.aet}"}} {total}' in d.metrics()
    d.kill9()
    d.start()
    time.sleep(1.5)
    d.kill9()
    d.start()
    o.start()
    try:
        entries = wait_outbox(d, all_delivered)
        assert sorted(e["sop_instance_uid"] for e in entries) == sorted(sent)
        held = o.instances()
        assert set(held) == set(sent)
        assert int(o.rest("/statistics")["CountInstances"]) == total
        # Commit order per destination: delivery times follow the sequence, and a
        # job's sources go before its results.
        by_seq = sorted(entries, key=lambda e: e["seq"])
        times = [e["delivered_ms"] for e in by_seq]
        assert times == sorted(times)
        for job_id in {e["job_id"] for e in entries}:
            kinds = [e["kind"] for e in by_seq if e["job_id"] == job_id]
            assert kinds.index("seg") > max(i for i, k in enumerate(kinds) if k == "source")
        # A forwarded source arrives as received.
        src = next(e for e in entries if e["kind"] == "source")
        ours = open(os.path.join(d.data_dir, src["path"]), "rb").read()
        assert dataset_bytes(held[src["sop_instance_uid"]]) == dataset_bytes(ours)
    finally:
        o.stop()


def test_an_object_the_destination_refuses_is_dead_lettered_with_the_reason(daemon_factory, tmp_path):
    """A pynetdicom SCP that takes SR and Secondary Capture but not Segmentation."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import EnhancedSRStorage, SecondaryCaptureImageStorage
    got = []

    def on_store(event):
        got.append(event.dataset.SOPInstanceUID)
        return 0x0000

    ae = AE(ae_title="NOSEGPACS")
    ae.add_supported_context(EnhancedSRStorage)
    ae.add_supported_context(SecondaryCaptureImageStorage)
    port = free_port()
    scp = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        d = daemon_factory(http_token=TOKEN,
                           upstream=[{"ae_title": '"NOSEGPACS"', "host": '"127.0.0.1"', "port": str(port),
                                      "max_tries": "2", "retry_initial_s": "0.3", "retry_max_s": "1.0"}]).start()
        d.wait_model()
        paths = brain.write_series(str(tmp_path / "s"), "t2", "axial", seed=3)
        job = wait_state(d, send(d, paths), FINAL)
        entries = wait_outbox(d, lambda e: len(e) == 3 and all(x["state"] != "pending" for x in e))
        by_kind = {e["kind"]: e for e in entries}
        assert by_kind["seg"]["state"] == "dead" and by_kind["seg"]["tries"] == 2
        assert "accepts no presentation context" in by_kind["seg"]["last_error"]
        assert by_kind["sr"]["state"] == by_kind["trend_picture"]["state"] == "delivered"
        assert sorted(got) == sorted([by_kind["sr"]["sop_instance_uid"], by_kind["trend_picture"]["sop_instance_uid"]])
        ready = d.get_json("/readyz")[1]["upstreams"]["NOSEGPACS"]
        assert ready["dead_letters"] == 1 and ready["pending"] == 0
        assert 'scanside_outbox_dead_letters_total{destination="NOSEGPACS"} 1' in d.metrics()
        assert job["state"] in ("queued", "delivered")
        # Replay needs the token; after the destination is fixed it delivers.
        seg = by_kind["seg"]
        replay = f"/api/v1/outbox/NOSEGPACS/{seg['seq']}/replay"
        assert d.post(replay)[0] == 401
        assert d.post(replay, token="wrong-token-wrong-token")[0] == 401
        assert d.post(f"/api/v1/outbox/NOSEGPACS/{by_kind['sr']['seq']}/replay", token=TOKEN)[0] == 409
        scp.shutdown()
        from pynetdicom.sop_class import SegmentationStorage
        ae.add_supported_context(SegmentationStorage)
        scp = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        status, body = d.post(replay, token=TOKEN)
        assert status == 200 and body["state"] == "pending", body
        wait_outbox(d, all_delivered)
        assert seg["sop_instance_uid"] in got
        assert d.get_json("/readyz")[1]["upstreams"]["NOSEGPACS"]["dead_letters"] == 0
    finally:
        scp.shutdown()


def test_bad_upstream_config_names_the_key(tmp_path):
    from conftest import BIN, run
    cfg = tmp_path / "c.toml"
    cfg.write_text(open(os.path.join(os.path.dirname(__file__), "..", "..", "firmware-config", "default.toml")).read()
                   + '\n[[upstream]]\nae_title = "HUB"\nhost = "h"\nport = 0\n'
                   + '\n[[upstream]]\nae_title = "HUB"\nhost = "h"\nport = 104\nmax_tries = 0\n')
    r = run([BIN, "check-config", str(cfg)])
    assert r.returncode != 0
    for key in ("upstream[0].port", "upstream[1].ae_title", "upstream[1].max_tries"):
        assert key in r.stdout + r.stderr, (key, r.stdout + r.stderr)


def test_a_verified_sr_from_an_edit_is_forwarded(daemon_factory, tmp_path):
    """A person's edit comes back; the verified SR and its picture go upstream."""
    from test_results import edited_seg, result_files, store_one
    o = Orthanc(tmp_path / "orthanc").start()
    try:
        d = daemon_factory(upstream=[upstream(o)]).start()
        d.wait_model()
        paths = brain.write_series(str(tmp_path / "s"), "t2", "axial", seed=3, patient_id="FWDEDIT")
        job = wait_state(d, send(d, paths), FINAL)
        seg, _ = edited_seg(result_files(d, job)["seg"], paths, "Oedema", "BINARY", "native")
        p = str(tmp_path / "edited.dcm")
        seg.save_as(p)
        store_one(d.port, p)
        entries = wait_outbox(d, lambda e: len(e) == 5 and all_delivered(e), timeout=180)
        kinds = sorted(e["kind"] for e in entries)
        assert kinds == ["seg", "sr", "trend_picture", "trend_picture", "verified_sr"], kinds
        vsr = next(e for e in entries if e["kind"] == "verified_sr")
        held = o.instances()
        assert vsr["sop_instance_uid"] in held
        ds = pydicom.dcmread(io.BytesIO(held[vsr["sop_instance_uid"]]), stop_before_pixels=True)
        assert ds.VerificationFlag == "VERIFIED"
        # The returned SEG itself is the viewer's, not ours: it is not forwarded.
        assert seg.SOPInstanceUID not in held
    finally:
        o.stop()


def files_under(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def test_retention_removes_only_delivered_data_and_a_full_disk_loses_nothing(daemon_factory, tmp_path):
    from test_qr import FIND, assoc, find, query
    o = Orthanc(tmp_path / "orthanc").start()
    d = daemon_factory(upstream=[upstream(o, forward_sources="true")],
                       storage={"retention": '"3s"'}).start()
    d.wait_model()
    # A: delivered everywhere, then removed after the retention time.
    a_paths = brain.write_series(str(tmp_path / "a"), "t2", "axial", seed=3, patient_id="RET1")
    a_job = wait_state(d, send(d, a_paths), FINAL)
    assert a_job["state"] in ("queued", "delivered")
    wait_outbox(d, lambda e: len(e) == len(a_paths) + 3 and all_delivered(e))
    a_study = pydicom.dcmread(a_paths[0], stop_before_pixels=True).StudyInstanceUID
    deadline = time.time() + 30
    while not d.get_json(f"/api/v1/jobs/{a_job['id']}")[1].get("evicted_at_ms"):
        assert time.time() < deadline, d.read_log()[-2000:]
        time.sleep(0.3)
    assert d.spool_files() == []
    assert not glob.glob(os.path.join(d.data_dir, "results", a_study, "*", "*.dcm"))
    m = d.metrics()
    # Sources, SEG/SR/picture, the label volume and the picture's PNG and SVG.
    assert f"scanside_retention_removed_files_total {len(a_paths) + 3 + 3}" in m
    q = assoc(d)
    try:
        final, ids = find(q, query("STUDY", StudyInstanceUID=a_study))
        assert final.Status == 0 and ids == []
    finally:
        q.release()
    # The hub has it all; the box keeps the job row and the patient's history.
    assert int(o.rest("/statistics")["CountInstances"]) == len(a_paths) + 3
    assert d.get_json(f"/api/v1/jobs/{a_job['id']}")[1]["state"] == "delivered"
    # B: the link is down, so B is never removed however old it gets.
    o.stop()
    b_paths = brain.write_series(str(tmp_path / "b"), "t2", "axial", seed=5, patient_id="RET2")
    b_job = wait_state(d, send(d, b_paths), FINAL)
    time.sleep(5)
    assert not d.get_json(f"/api/v1/jobs/{b_job['id']}")[1].get("evicted_at_ms")
    before = files_under(d.data_dir + "/spool") | files_under(d.data_dir + "/results")
    assert len(before) == len(b_paths) + 3
    # The disk floor: a quota-like reserve above what is free refuses new data
    # (A700) with a status line and a metric, and nothing stored is touched.
    d.stop()
    d.settings["min_free_bytes"] = 1 << 62
    d.write_config()
    d.start()
    c_paths = brain.write_series(str(tmp_path / "c"), "t2", "axial", seed=7, patient_id="RET3")
    r = run(["storescu", "-v", "-aec", "SCANSIDE", "127.0.0.1", str(d.port), c_paths[0]])
    assert "Refused: OutOfResources" in r.stdout + r.stderr, r.stdout + r.stderr
    status, ready = d.get_json("/readyz")
    assert status == 503 and not ready["disk_ok"] and "A700" in ready["disk"]
    assert "scanside_disk_refusing 1" in d.metrics()
    assert files_under(d.data_dir + "/spool") | files_under(d.data_dir + "/results") == before
    # Space again and the link back: B is delivered, and only then removed.
    d.stop()
    d.settings["min_free_bytes"] = 1 << 20
    d.write_config()
    o.start()
    try:
        d.start()
        assert "scanside_disk_refusing 0" in d.metrics()
        wait_outbox(d, all_delivered)
        deadline = time.time() + 30
        while not d.get_json(f"/api/v1/jobs/{b_job['id']}")[1].get("evicted_at_ms"):
            assert time.time() < deadline, d.read_log()[-2000:]
            time.sleep(0.3)
        held = o.instances()
        for p in b_paths:
            sop = pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
            assert dataset_bytes(held[sop]) == dataset_bytes(before[next(k for k in before if sop in k)])
    finally:
        o.stop()


def test_storage_commitment_counts_an_object_delivered_only_once_committed(daemon_factory, tmp_path):
    o = Orthanc(tmp_path / "orthanc")
    d = daemon_factory(upstream=[upstream(o, storage_commitment="true", commitment_timeout_s="3")])
    # First Orthanc does not know our AE, so it cannot send its report back.
    o.start()
    try:
        d.start()
        d.wait_model()
        paths = brain.write_series(str(tmp_path / "s"), "t2", "axial", seed=3, patient_id="COMMIT1")
        job = wait_state(d, send(d, paths), FINAL)
        deadline = time.time() + 60
        while int(o.rest("/statistics")["CountInstances"]) < 3:
            assert time.time() < deadline, d.get_json("/api/v1/outbox")[1]
            time.sleep(0.3)
        time.sleep(2)
        entries = d.get_json("/api/v1/outbox")[1]
        assert len(entries) == 3 and not any(e["state"] == "delivered" for e in entries), entries
        assert d.get_json(f"/api/v1/jobs/{job['id']}")[1]["state"] == "queued"
        assert d.get_json("/readyz")[1]["upstreams"][o.aet]["pending"] == 3
    finally:
        o.stop()
    # Now it knows where to report: after the wait runs out the objects go again,
    # and the N-EVENT-REPORT makes them delivered.
    o.configure({"DicomModalities": {"scanside": [d.ae, "127.0.0.1", d.port]}})
    o.start()
    try:
        entries = wait_outbox(d, all_delivered, timeout=120)
        assert len(entries) == 3 and all(e["commitment_uid"] is None for e in entries)
        wait_job(d, job, "delivered")
        assert int(o.rest("/statistics")["CountInstances"]) == 3
    finally:
        o.stop()


def test_forwarding_over_tls_checks_the_hub_certificate(daemon_factory, tmp_path):
    pki = make_pki(str(tmp_path / "pki"))
    o = Orthanc(tmp_path / "orthanc", extra={
        "DicomTlsEnabled": True, "DicomTlsCertificate": pki("server.crt"),
        "DicomTlsPrivateKey": pki("server.key"), "DicomTlsTrustedCertificates": pki("ca.crt"),
        "DicomTlsRemoteCertificateRequired": False}).start()
    try:
        # A CA the hub's certificate does not chain to: nothing goes, and the
        # link state says why.
        d = daemon_factory(upstream=[upstream(o, tls=f'{{ ca_file = {toml_str(pki("other.crt"))}, '
                                                  f'server_name = "localhost" }}')]).start()
        d.wait_model()
        paths = brain.write_series(str(tmp_path / "s"), "t2", "axial", seed=3, patient_id="TLS1")
        job = wait_state(d, send(d, paths), FINAL)
        deadline = time.time() + 30
        while not (up := d.get_json("/readyz")[1]["upstreams"][o.aet])["last_error"]:
            assert time.time() < deadline, up
            time.sleep(0.3)
        assert up["link"] == "down" and "TLS" in up["last_error"], up
        assert int(o.rest("/statistics")["CountInstances"]) == 0
        d.stop()
        # The right CA: delivered, element-equal.
        d.settings["upstream"] = [upstream(o, tls=f'{{ ca_file = {toml_str(pki("ca.crt"))}, '
                                                   f'server_name = "localhost" }}')]
        d.write_config()
        d.start()
        entries = wait_outbox(d, all_delivered)
        assert len(entries) == 3
        held = o.instances()
        for e in entries:
            ours = open(os.path.join(d.data_dir, e["path"]), "rb").read()
            assert pydicom.dcmread(io.BytesIO(held[e["sop_instance_uid"]])) == pydicom.dcmread(io.BytesIO(ours))
        wait_job(d, job, "delivered")
    finally:
        o.stop()


def test_a_bad_tls_file_names_the_key(tmp_path):
    from conftest import BIN
    cfg = tmp_path / "c.toml"
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    cfg.write_text(open(os.path.join(os.path.dirname(__file__), "..", "..", "firmware-config", "default.toml")).read()
                   + '\n[[upstream]]\nae_title = "HUB"\nhost = "h"\nport = 104\n'
                   + f'tls = {{ ca_file = {toml_str(tmp_path / "missing.pem")} }}\n'
                   + '\n[[upstream]]\nae_title = "HUB2"\nhost = "h"\nport = 104\n'
                   + f'tls = {{ ca_file = {toml_str(tmp_path / "junk.pem")}, cert_file = "x.pem" }}\n')
    r = run([BIN, "check-config", str(cfg)])
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "upstream[0].tls.ca_file" in out and "missing.pem" in out, out
    assert "upstream[1].tls.ca_file" in out, out


def test_orthanc_refusing_seg_dead_letters_it_through_storage_commitment(daemon_factory, tmp_path):
    """Orthanc 1.10 cannot refuse a known SOP class at C-STORE: a Lua filter drops
    the SEG yet answers 0000. Storage commitment catches it: Orthanc reports the
    SEG as failed, so it is sent again and, after max_tries, dead-lettered with
    the reason, while SR and picture are delivered. Fixed Orthanc + replay: in."""
    lua = tmp_path / "refuse_seg.lua"
    lua.write_text("function ReceivedInstanceFilter(dicom, origin, info)\n"
                   "  return dicom.SOPClassUID ~= '1.2.840.10008.5.1.4.1.1.66.4'\nend\n")
    o = Orthanc(tmp_path / "orthanc")
    d = daemon_factory(http_token=TOKEN, upstream=[upstream(
        o, storage_commitment="true", max_tries="2", retry_initial_s="0.3", retry_max_s="1.0")])
    modality = {"DicomModalities": {"scanside": [d.ae, "127.0.0.1", d.port]}}
    o.configure({**modality, "LuaScripts": [str(lua)]})
    o.start()
    try:
        d.start()
        d.wait_model()
        paths = brain.write_series(str(tmp_path / "s"), "t2", "axial", seed=3, patient_id="REFUSE1")
        job = wait_state(d, send(d, paths), FINAL)
        entries = wait_outbox(d, lambda e: len(e) == 3 and all(x["state"] in ("delivered", "dead") for x in e))
        by_kind = {e["kind"]: e for e in entries}
        seg = by_kind["seg"]
        assert seg["state"] == "dead" and seg["tries"] == 2
        assert "storage commitment failed" in seg["last_error"], seg
        assert by_kind["sr"]["state"] == by_kind["trend_picture"]["state"] == "delivered"
        assert set(o.instances()) == {by_kind["sr"]["sop_instance_uid"], by_kind["trend_picture"]["sop_instance_uid"]}
        assert d.get_json(f"/api/v1/jobs/{job['id']}")[1]["state"] == "queued"
        assert d.get_json("/readyz")[1]["upstreams"][o.aet]["dead_letters"] == 1
    finally:
        o.stop()
    o.configure(modality)
    o.start()
    try:
        status, body = d.post(f"/api/v1/outbox/{o.aet}/{seg['seq']}/replay", token=TOKEN)
        assert status == 200 and body["state"] == "pending", body
        wait_outbox(d, all_delivered)
        assert seg["sop_instance_uid"] in o.instances()
        wait_job(d, job, "delivered")
    finally:
        o.stop()


def test_a_destination_that_takes_only_implicit_vr_gets_re_encoded_objects(daemon_factory, tmp_path):
    """The transfer syntax is chosen from what the destination accepts: our
    explicit VR results go to an implicit-VR-only PACS re-encoded, values equal."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import EnhancedSRStorage, SecondaryCaptureImageStorage, SegmentationStorage
    from pydicom.uid import ImplicitVRLittleEndian
    from test_qr import same_values
    got = {}

    def on_store(event):
        ds = event.dataset
        got[ds.SOPInstanceUID] = (event.context.transfer_syntax, ds)
        return 0x0000

    ae = AE(ae_title="IMPLICITPACS")
    for c in (EnhancedSRStorage, SecondaryCaptureImageStorage, SegmentationStorage):
        ae.add_supported_context(c, [ImplicitVRLittleEndian])
    port = free_port()
    scp = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        d = daemon_factory(upstream=[{"ae_title": '"IMPLICITPACS"', "host": '"127.0.0.1"', "port": str(port)}]).start()
        d.wait_model()
        paths = brain.write_series(str(tmp_path / "s"), "t2", "axial", seed=3)
        wait_state(d, send(d, paths), FINAL)
        entries = wait_outbox(d, lambda e: len(e) == 3 and all_delivered(e))
        for e in entries:
            ts, theirs = got[e["sop_instance_uid"]]
            assert ts == ImplicitVRLittleEndian
            ours = pydicom.dcmread(os.path.join(d.data_dir, e["path"]))
            assert ours.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
            assert same_values(theirs, ours), e["kind"]
    finally:
        scp.shutdown()
