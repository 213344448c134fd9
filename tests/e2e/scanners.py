"""Simulated scanners for load: half DCMTK storescu processes, half pynetdicom
associations, all sending at once until a deadline. Shared by tests/e2e/test_load.py
(no failed store, nothing lost) and bench/load_bench.py (latency, memory)."""
import os
import subprocess
import threading
import time

import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from synth import make_series

os.environ["TCP_NODELAY"] = "1"


class Result:
    def __init__(self):
        self.lock = threading.Lock()
        self.latencies = []  # seconds, every C-STORE answered
        self.failed = []  # (sender, status or error)
        self.acked = set()  # SOP Instance UIDs answered 0000

    def ok(self, uid, dt):
        with self.lock:
            self.latencies.append(dt)
            self.acked.add(uid)

    def fail(self, who, why):
        with self.lock:
            self.failed.append((who, why))

    def p(self, q):
        v = sorted(self.latencies)
        return v[min(len(v) - 1, int(q * (len(v) - 1)))] if v else float("nan")


def storescu_sender(i, port, called, files, uids, deadline, res):
    """Sends `files` again and again (one association each pass) until the deadline."""
    while time.time() < deadline:
        p = subprocess.Popen(["storescu", "-v", "-aet", f"MRSCU{i}", "-aec", called, "127.0.0.1", str(port)] + files,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        current, sent_at = None, None
        for line in p.stdout:
            if line.startswith("I: Sending file: "):
                current = line.split(": ", 2)[2].strip()
            elif "Sending Store Request" in line:
                sent_at = time.perf_counter()
            elif "Received Store Response" in line and sent_at is not None:
                if "(Success)" in line:
                    res.ok(uids[current], time.perf_counter() - sent_at)
                else:
                    res.fail(f"storescu{i}", line.strip())
                sent_at = None
        if p.wait() != 0:
            res.fail(f"storescu{i}", f"exit {p.returncode}")


def pynetdicom_sender(i, port, called, template, deadline, res):
    """New instances (new UIDs) of one small series, one association per 20."""
    ae = AE(ae_title=f"MRNET{i}")
    ae.add_requested_context(MRImageStorage, "1.2.840.10008.1.2.1")
    while time.time() < deadline:
        a = ae.associate("127.0.0.1", port, ae_title=called)
        if not a.is_established:
            res.fail(f"pynetdicom{i}", "association not established")
            time.sleep(0.2)
            continue
        series = generate_uid()
        for ds in template:
            ds.SeriesInstanceUID = series
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            t = time.perf_counter()
            st = a.send_c_store(ds)
            dt = time.perf_counter() - t
            if st and st.Status == 0x0000:
                res.ok(ds.SOPInstanceUID, dt)
            else:
                res.fail(f"pynetdicom{i}", st.Status if st else "no response")
        a.release()


def run_scanners(port, called, workdir, seconds, n=8):
    """n scanners (n/2 storescu, n/2 pynetdicom) for `seconds`; returns a Result."""
    res = Result()
    deadline = time.time() + seconds
    threads = []
    for i in range(n):
        if i % 2 == 0:
            files = make_series(os.path.join(workdir, f"scu{i}"), n=20, rows=128, cols=128, seed=100 + i,
                                patient_id=f"LOAD{i}")
            uids = {f: pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
            t = threading.Thread(target=storescu_sender, args=(i, port, called, files, uids, deadline, res))
        else:
            files = make_series(os.path.join(workdir, f"net{i}"), n=20, rows=128, cols=128, seed=100 + i,
                                patient_id=f"LOAD{i}")
            template = [pydicom.dcmread(f) for f in files]
            t = threading.Thread(target=pynetdicom_sender, args=(i, port, called, template, deadline, res))
        threads.append(t)
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    return res
