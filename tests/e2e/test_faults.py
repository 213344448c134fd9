"""Faults, each with "nothing acknowledged is lost" checked: kill -9 at random
points across ingest, inference, result writing and forwarding while the
upstream flaps, then one more start that must finish every job and deliver every
result once per object; a peer that stalls in the TLS handshake loses its slot."""
import collections
import os
import random
import subprocess
import time

import pydicom
from pynetdicom import AE, evt
from pynetdicom.sop_class import (BasicTextSRStorage, EnhancedSRStorage, SecondaryCaptureImageStorage,
                                  SegmentationStorage)

import brain
from conftest import free_port
from test_durability import acknowledged
from test_segmentation import send

ROUNDS = int(os.environ.get("SCANSIDE_FAULT_ROUNDS", "50"))
SERIES = 8


class FlappingPacs:
    """A pynetdicom storage SCP that can be taken down and brought back."""

    def __init__(self):
        self.port, self.server = free_port(), None
        self.got = collections.Counter()
        self.classes = {}

    def up(self):
        if self.server:
            return
        ae = AE(ae_title="FLAPPACS")
        for c in (SegmentationStorage, EnhancedSRStorage, SecondaryCaptureImageStorage, BasicTextSRStorage):
            ae.add_supported_context(c)

        def on_store(event):
            uid = event.request.AffectedSOPInstanceUID
            self.got[uid] += 1
            self.classes[uid] = event.request.AffectedSOPClassUID
            return 0x0000
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, on_store)])

    def down(self):
        if self.server:
            self.server.shutdown()
            self.server = None


def test_kill9_at_random_points_with_a_flapping_upstream_loses_nothing(daemon_factory, tmp_path):
    rng = random.Random(50)
    pacs = FlappingPacs()
    d = daemon_factory(upstream=[{"ae_title": '"FLAPPACS"', "host": '"127.0.0.1"', "port": str(pacs.port),
                                  "retry_initial_s": "0.2", "retry_max_s": "1.0"}])
    series = [brain.write_series(str(tmp_path / f"s{i}"), "t2", "axial", seed=20 + i, patient_id=f"FAULT{i}")
              for i in range(SERIES)]
    uid_of = {p: pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for s in series for p in s}
    pending = [list(s) for s in series]
    acked = set()
    at_kill = collections.Counter()
    for r in range(ROUNDS):
        pacs.up() if rng.random() < 0.6 else pacs.down()
        d.start()
        sender, todo = None, next((p for p in pending if p), None)
        # Each round sends (what is left of) the next series while the jobs of
        # earlier ones are gated, segmented, written and forwarded.
        if todo:
            sender = subprocess.Popen(["storescu", "-v", "-aec", d.ae, "127.0.0.1", str(d.port)] + todo,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(rng.uniform(0.05, 3.0))
        try:
            states = [j["state"] for j in d.jobs()]
            busy = [s for s in states if s not in ("delivered", "rejected", "failed")]
            at_kill.update(busy or ["receiving" if sender else "idle"])
        except OSError:
            pass
        d.kill9()
        if sender:
            out, _ = sender.communicate(timeout=60)
            done = acknowledged(out, todo)
            acked |= {uid_of[f] for f in done}
            todo[:] = [f for f in todo if f not in done]
    # Last start: the link stays up, what was never acknowledged is sent again.
    pacs.up()
    d.start()
    for s in pending:
        if s:
            send(d, s)
            acked |= {uid_of[f] for f in s}
    deadline = time.time() + 300
    while True:
        jobs = d.jobs()
        entries = d.get_json("/api/v1/outbox")[1]
        if (len(jobs) >= SERIES and all(j["state"] == "delivered" for j in jobs) and entries
                and all(e["state"] == "delivered" for e in entries)):
            break
        assert time.time() < deadline, (jobs, [e for e in entries if e["state"] != "delivered"][:5],
                                        d.read_log()[-3000:])
        time.sleep(0.5)
    print(f"{ROUNDS} kills; jobs in flight at the kill: {dict(at_kill)}")
    # Every acknowledged instance is on disk and indexed.
    on_disk = {os.path.basename(f)[:-4] for f in d.spool_files()}
    assert acked <= on_disk, f"{len(acked - on_disk)} acknowledged instances lost"
    assert len(acked) == sum(len(s) for s in series)
    # One job per series, each with its results delivered; a resumed step wrote
    # the same objects again, never a second, different one.
    assert sorted(j["series_instance_uid"] for j in jobs) == sorted(
        pydicom.dcmread(s[0], stop_before_pixels=True).SeriesInstanceUID for s in series)
    assert {e["sop_instance_uid"] for e in entries} <= set(pacs.got)
    segs = [u for u, c in pacs.classes.items() if c == SegmentationStorage]
    assert len(segs) == SERIES, f"{len(segs)} different SEGs for {SERIES} series"
    assert d.tmp_files() == []
    # The kills landed while work was in flight, not only between jobs.
    assert sum(n for s, n in at_kill.items() if s != "idle") >= ROUNDS // 3, at_kill
    pacs.down()
