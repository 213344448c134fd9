"""Bad input, each with its expected status or rejection, and nothing half-written."""
import os
import socket
import struct
import time

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage, RTPlanStorage

import rawdicom
from conftest import run
from synth import dataset_bytes, make_series

PYDICOM_FILES = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")


@pytest.fixture
def one(tmp_path):
    p = make_series(tmp_path / "one", n=1)[0]
    ds = pydicom.dcmread(p, stop_before_pixels=True)
    return p, ds.SOPInstanceUID, dataset_bytes(p)


def assert_nothing_stored(d):
    assert d.spool_files() == []
    assert d.tmp_files() == []


def test_unknown_calling_ae_is_rejected(daemon_factory, one):
    d = daemon_factory(peers=[("MRSCANNER1", "127.0.0.1")]).start()
    r = run(["storescu", "-aet", "INTRUDER", "-aec", "SCANSIDE", "127.0.0.1", str(d.port), one[0]])
    assert r.returncode != 0
    assert "Calling AE Title Not Recognized" in r.stdout + r.stderr
    ok = run(["storescu", "-aet", "MRSCANNER1", "-aec", "SCANSIDE", "127.0.0.1", str(d.port), one[0]])
    assert ok.returncode == 0, ok.stderr
    assert 'scanside_associations_rejected_total{reason="calling_ae_not_allowed"} 1' in d.metrics()


def test_address_outside_allowlist_is_rejected(daemon_factory, one):
    # Only 10.9.9.0/24 may call: loopback is refused whatever the AE title.
    d = daemon_factory(peers=[("*", "10.9.9.0/24")]).start()
    r = run(["echoscu", "-aec", "SCANSIDE", "127.0.0.1", str(d.port)])
    assert r.returncode != 0
    assert "Calling AE Title Not Recognized" in r.stdout + r.stderr


def test_wrong_called_ae_is_rejected(daemon):
    r = run(["echoscu", "-aec", "NOTUS", "127.0.0.1", str(daemon.port)])
    assert r.returncode != 0
    assert "Called AE Title Not Recognized" in r.stdout + r.stderr
    assert 'reason="called_ae_wrong"' in daemon.metrics()


def test_unsupported_sop_class_not_accepted(daemon):
    # Not an image: nothing the gate could say about it, so refused at negotiation.
    plan = os.path.join(PYDICOM_FILES, "rtplan.dcm")
    r = run(["storescu", "-aec", "SCANSIDE", "127.0.0.1", str(daemon.port), plan])
    assert r.returncode != 0
    assert "No presentation context" in r.stdout + r.stderr
    ae = AE()
    ae.add_requested_context(RTPlanStorage)
    assoc = ae.associate("127.0.0.1", daemon.port, ae_title="SCANSIDE")
    # pynetdicom refuses an association whose every context was rejected.
    assert not assoc.is_established
    assert_nothing_stored(daemon)


def test_unsupported_transfer_syntax_not_accepted(daemon):
    ae = AE()
    ae.add_requested_context(MRImageStorage, [JPEGLSLossless])
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", daemon.port, ae_title="SCANSIDE")
    assert assoc.is_established
    rejected = {cx.context_id: cx.result for cx in assoc.rejected_contexts}
    accepted = [cx.context_id for cx in assoc.accepted_contexts]
    assoc.release()
    assert rejected == {1: 0x04}  # JPEG-LS: transfer syntaxes not supported
    assert accepted == [3]


def raw_store(d, sop_class, sop_uid, data, **kw):
    c = rawdicom.Conn("127.0.0.1", d.port)
    t, _ = c.associate(**kw)
    assert t == 2, "association not accepted"
    rsp = c.store(sop_class, sop_uid, data)
    return c, rsp


def test_truncated_data_set_gets_c000_and_association_stays_usable(daemon, one):
    _, uid, data = one
    c, rsp = raw_store(daemon, rawdicom.MR, uid, data[: len(data) // 2])
    assert rawdicom.status_of(rsp) == 0xC000
    assert b"does not parse" in rsp[0x0902]
    # The same association still works: the full instance is stored now.
    rsp = c.store(rawdicom.MR, uid, data, message_id=2)
    assert rawdicom.status_of(rsp) == 0x0000
    c.release()
    assert len(daemon.spool_files()) == 1 and daemon.tmp_files() == []


def test_sop_instance_uid_differs_from_command(daemon, one):
    _, uid, data = one
    c, rsp = raw_store(daemon, rawdicom.MR, "1.2.3.4.5", data)
    assert rawdicom.status_of(rsp) == 0xC001
    assert b"differs from command" in rsp[0x0902]
    c.release()
    assert_nothing_stored(daemon)


def test_sop_class_differs_from_data_set(daemon, one):
    _, uid, data = one
    enhanced = "1.2.840.10008.5.1.4.1.1.4.1"
    c, rsp = raw_store(daemon, enhanced, uid, data,
                       contexts=[(1, enhanced, [rawdicom.EXPLICIT_LE])])
    assert rawdicom.status_of(rsp) == 0xA900
    c.release()
    assert_nothing_stored(daemon)


def test_uid_with_path_characters_is_refused(daemon, tmp_path):
    p = make_series(tmp_path / "evil", n=1)[0]
    ds = pydicom.dcmread(p)
    ds.SOPInstanceUID = "../../../../tmp/evil"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(p)
    c, rsp = raw_store(daemon, rawdicom.MR, ds.SOPInstanceUID, dataset_bytes(p))
    assert rawdicom.status_of(rsp) == 0xC001
    assert b"not a valid UID" in rsp[0x0902]
    # A valid instance UID but a series UID with path characters.
    ds.SOPInstanceUID = "1.2.3.99"
    ds.SeriesInstanceUID = "1.2/../../x"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(p)
    rsp = c.store(rawdicom.MR, "1.2.3.99", dataset_bytes(p), message_id=2)
    assert rawdicom.status_of(rsp) == 0xC001
    c.release()
    assert_nothing_stored(daemon)
    assert not os.path.exists("/tmp/evil.dcm")


def test_garbage_instead_of_a_pdu(daemon):
    s = socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(200))
    s.settimeout(5)
    try:
        data = s.recv(100)
    except ConnectionResetError:
        data = b""
    s.close()
    # Either an A-ABORT (type 7) or a closed connection; never an A-ASSOCIATE-AC.
    assert data == b"" or data[0] == 0x07
    time.sleep(0.2)
    assert 'reason="bad_pdu"' in daemon.metrics()
    # Still serving.
    assert run(["echoscu", "-aec", "SCANSIDE", "127.0.0.1", str(daemon.port)]).returncode == 0


def test_pdu_larger_than_negotiated_aborts(daemon_factory, one):
    d = daemon_factory(max_pdu_length=16384).start()
    _, uid, data = one
    c = rawdicom.Conn("127.0.0.1", d.port)
    assert c.associate()[0] == 2
    c.send(rawdicom.pdata([(1, True, True, rawdicom.c_store_rq(rawdicom.MR, uid))]))
    c.send(rawdicom.pdata([(1, False, True, data + bytes(40000))]))  # one PDU > 16384
    pdu = c.read_pdu()
    assert pdu is None or pdu[0] == 0x07, pdu
    time.sleep(0.3)
    assert 'reason="pdu_too_large"' in d.metrics()
    assert_nothing_stored(d)


def test_abort_mid_instance_leaves_nothing(daemon, one):
    _, uid, data = one
    c = rawdicom.Conn("127.0.0.1", daemon.port)
    assert c.associate()[0] == 2
    c.send(rawdicom.pdata([(1, True, True, rawdicom.c_store_rq(rawdicom.MR, uid))]))
    c.send(rawdicom.pdata([(1, False, False, data[:3000])]))
    time.sleep(0.3)
    assert len(daemon.tmp_files()) == 1, "the partial instance is being written to tmp"
    c.abort()
    time.sleep(0.5)
    assert_nothing_stored(daemon)


def test_command_split_over_several_pdvs(daemon, one):
    _, uid, data = one
    c = rawdicom.Conn("127.0.0.1", daemon.port)
    assert c.associate()[0] == 2
    cmd = rawdicom.c_store_rq(rawdicom.MR, uid)
    parts = [cmd[:7], cmd[7:30], cmd[30:]]
    c.send(rawdicom.pdata([(1, True, False, parts[0]), (1, True, False, parts[1])]))
    c.send(rawdicom.pdata([(1, True, True, parts[2])]))
    c.send(rawdicom.pdata([(1, False, False, data[:100]), (1, False, True, data[100:])]))
    rsp = c.response()
    assert rawdicom.status_of(rsp) == 0
    c.release()
    assert len(daemon.spool_files()) == 1


def test_disk_below_floor_gets_a700(daemon_factory, one):
    d = daemon_factory(min_free_bytes=1 << 62).start()
    r = run(["storescu", "-v", "-aec", "SCANSIDE", "127.0.0.1", str(d.port), one[0]])
    assert "Refused: OutOfResources" in r.stdout + r.stderr, r.stdout + r.stderr
    assert_nothing_stored(d)
    code, body = d.get_json("/readyz")
    assert code == 503 and body["disk_ok"] is False
    assert 'scanside_instances_refused_total{status="A700"} 1' in d.metrics()


def test_too_many_associations_rejected_transient(daemon_factory):
    d = daemon_factory(max_associations=1).start()
    held = rawdicom.Conn("127.0.0.1", d.port)
    assert held.associate()[0] == 2
    c = rawdicom.Conn("127.0.0.1", d.port)
    t, body = c.associate()
    assert t == 3, "expected A-ASSOCIATE-RJ"
    result, source, reason = body[1], body[2], body[3]
    assert (result, source, reason) == (2, 3, 2)  # transient, provider (presentation), local limit
    held.release()
    time.sleep(0.2)
    assert run(["echoscu", "-aec", "SCANSIDE", "127.0.0.1", str(d.port)]).returncode == 0


def test_idle_association_is_aborted_after_read_timeout(daemon_factory):
    d = daemon_factory(read_timeout_s=1).start()
    c = rawdicom.Conn("127.0.0.1", d.port)
    assert c.associate()[0] == 2
    pdu = c.read_pdu()  # blocks until the daemon gives up on us
    assert pdu is None or pdu[0] == 0x07
    assert 'reason="read_timeout"' in d.metrics()


def test_bogus_element_length_is_refused_fast_and_small(daemon, one):
    """A few KiB claiming a 1 GiB value: refused C000 with the element named, without
    the parser allocating the claimed size (dicom-rs would: 1.2 GB for pydicom's
    SC_rgb_jpeg.dcm before the pre-scan existed)."""
    _, uid, data = one
    # A private OB element after the pixel data, claiming 1 GiB with 64 bytes left.
    evil = data + bytes.fromhex("e17f1010") + b"OB\0\0" + (0x40000000).to_bytes(4, "little") + b"x" * 64
    c, rsp = raw_store(daemon, rawdicom.MR, uid, evil)
    assert rawdicom.status_of(rsp) == 0xC000
    assert b"(7FE1,1010) claims 1073741824" in rsp[0x0902], rsp[0x0902]
    c.release()
    with open(f"/proc/{daemon.proc.pid}/status") as f:
        rss_kib = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    assert rss_kib < 200 * 1024, f"peak RSS {rss_kib} KiB: the claimed length was allocated"
    assert_nothing_stored(daemon)
