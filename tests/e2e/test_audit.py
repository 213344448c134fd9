"""The audit trail: IHE ATNA-style records (RFC 5424 syslog around DICOM audit
messages) for associations, received studies, queries, retrieves, token failures,
configuration reloads and model changes; kept on the box and sent to a syslog
receiver (TCP, octet counting) whenever it is reachable."""
import base64
import os
import re
import signal
import socket
import stat
import threading
import time
import xml.etree.ElementTree as ET

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from conftest import free_port, run
from synth import make_series

HEADER = re.compile(r"^<85>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \S+ scanside \d+ DICOM\+RFC3881 - (<AuditMessage>.*</AuditMessage>)$")


class SyslogReceiver:
    """A TCP syslog receiver (RFC 6587 octet counting) on loopback."""

    def __init__(self, port):
        self.port = port
        self.records = []
        self.sock = None
        self.conns = []

    def start(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(4)
        threading.Thread(target=self._accept, args=(self.sock,), daemon=True).start()
        return self

    def stop(self):
        """Closes the listener and every connection, as a receiver that goes down.
        shutdown() first: a close() alone leaves the accept() blocked in the other
        thread holding the listening socket open."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        time.sleep(0.2)

    def _accept(self, sock):
        while True:
            try:
                c, _ = sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._read, args=(c, sock), daemon=True).start()

    def _read(self, c, listener):
        buf = b""
        with c:
            c.settimeout(0.5)
            while listener.fileno() != -1:
                try:
                    chunk = c.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                while b" " in buf:
                    n, rest = buf.split(b" ", 1)
                    assert n.isdigit(), buf[:80]
                    if len(rest) < int(n):
                        break
                    self.records.append(rest[:int(n)].decode())
                    buf = rest[int(n):]


def parse(record):
    m = HEADER.match(record)
    assert m, record[:200]
    return ET.fromstring(m.group(1))


def event(msg):
    e = msg.find("EventIdentification")
    codes = [e.find("EventID").get("csd-code")]
    if e.find("EventTypeCode") is not None:
        codes.append(e.find("EventTypeCode").get("csd-code"))
    return tuple(codes), e.get("EventActionCode"), e.get("EventOutcomeIndicator")


def wait_for(pred, what, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_audit_trail_records_each_event_and_reaches_the_receiver(daemon_factory, tmp_path):
    rx = SyslogReceiver(free_port()).start()
    d = daemon_factory(http_token="a-token-of-24-characters", extra=f'[audit]\nsyslog = "127.0.0.1:{rx.port}"\n').start()
    paths = make_series(tmp_path / "s", n=4, patient_id="AUDIT42")
    study = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
    r = run(["storescu", "-aet", "MRSCANNER", "-aec", d.ae, "127.0.0.1", str(d.port)] + paths)
    assert r.returncode == 0, r.stderr
    # Refused: a wrong called AE title.
    assert run(["echoscu", "-aec", "NOTUS", "127.0.0.1", str(d.port)]).returncode != 0
    ae = AE(ae_title="RADWS")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    a = ae.associate("127.0.0.1", d.port, ae_title=d.ae)
    assert a.is_established
    q = pydicom.Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.PatientID = "AUDIT42"
    q.StudyInstanceUID = ""
    assert [s.Status for s, _ in a.send_c_find(q, StudyRootQueryRetrieveInformationModelFind)][-1] == 0
    a.release()
    assert d.post("/api/v1/outbox/X/1/replay", token="wrong")[0] == 401
    d.proc.send_signal(signal.SIGHUP)

    def by_event():
        got = {}
        for rec in rx.records:
            m = parse(rec)
            got.setdefault(event(m)[0], []).append(m)
        return got

    want = {("110100", "110120"), ("110114", "110122"), ("110113", "110126"), ("110104",), ("110112",),
            ("110113", "110128")}
    got = wait_for(lambda: (g := by_event()) and want <= set(g) and g, f"events {want}")
    # Received instances: one record for the study, with the patient and the count.
    (rcv,) = [m for m in got[("110104",)] if m.find("EventIdentification").get("EventActionCode") == "C"]
    objs = {o.find("ParticipantObjectIDTypeCode").get("csd-code"): o
            for o in rcv.findall("ParticipantObjectIdentification")}
    assert objs["110180"].get("ParticipantObjectID") == study
    assert objs["110180"].find("SOPClass").get("NumberOfInstances") == "4"
    assert objs["2"].get("ParticipantObjectID") == "AUDIT42"
    src = [p for p in rcv.findall("ActiveParticipant") if p.get("UserID") == "MRSCANNER"]
    assert src and src[0].get("NetworkAccessPointID") == "127.0.0.1"
    # The query carries its identifier.
    qry = got[("110112",)][0]
    ident = base64.b64decode(qry.find("ParticipantObjectIdentification/ParticipantObjectQuery").text)
    assert b"AUDIT42" in ident
    # The refused association and the wrong token are failures (outcome 4).
    refused = got[("110113", "110126")]
    assert any(event(m)[2] == "4" for m in refused)
    tokens = [m for m in got[("110114", "110122")] if event(m)[2] == "4"]
    assert tokens and "token" in tokens[0].find("EventIdentification/EventOutcomeDescription").text
    # The same records are on the box, in a file only the daemon's user can read.
    path = os.path.join(d.data_dir, "audit", "audit.log")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    on_disk = open(path).read().splitlines()
    assert set(rx.records) <= set(on_disk)

    # The receiver goes away: records are kept, and go once it is back.
    rx.stop()
    n = len(rx.records)
    assert run(["echoscu", "-aet", "WHILEDOWN", "-aec", d.ae, "127.0.0.1", str(d.port)]).returncode == 0
    wait_for(lambda: "WHILEDOWN" in open(path).read(), "the record on disk")
    wait_for(lambda: d.get_json("/readyz")[1]["audit"]["link"] == "down", "link down")
    assert not any("WHILEDOWN" in r for r in rx.records[n:])
    rx2 = SyslogReceiver(rx.port).start()
    wait_for(lambda: any("WHILEDOWN" in r for r in rx2.records), "the kept record to arrive", timeout=60)
    assert d.get_json("/readyz")[1]["audit"]["link"] == "up"
    # Stop is recorded too, and sent before the daemon exits.
    assert d.stop() == 0
    wait_for(lambda: any(event(parse(r))[0] == ("110100", "110121") for r in rx2.records), "application stop")
    rx2.stop()


def test_model_changes_from_the_cli_are_audited(daemon_factory, tmp_path):
    d = daemon_factory()
    # No trusted keys: an install is refused, and the refusal is in the trail.
    bundle = tmp_path / "b.tar"
    bundle.write_bytes(b"not a bundle")
    (tmp_path / "b.tar.minisig").write_text("untrusted comment: x\nnot a signature\n")
    r = run([os.environ.get("SCANSIDE_BIN", "scanside"), "model", "install", str(bundle),
             "--config", d.config_path])
    assert r.returncode != 0
    r = run([os.environ.get("SCANSIDE_BIN", "scanside"), "model", "rollback", "--config", d.config_path])
    assert r.returncode != 0
    lines = open(os.path.join(d.data_dir, "audit", "audit.log")).read().splitlines()
    msgs = [parse(line) for line in lines]
    changes = [m for m in msgs if event(m)[0] == ("110113", "110131")]
    assert len(changes) == 2 and all(event(m)[2] == "4" for m in changes)
    descr = [m.find("EventIdentification/EventOutcomeDescription").text for m in changes]
    assert "model install refused" in descr[0] and "model rollback refused" in descr[1], descr
