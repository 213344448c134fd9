"""C-FIND latency with 10,000 indexed instances: scanside's Q/R SCP against Orthanc
holding the same files, in one run.

    python bench/qr_bench.py [--studies 50] [--per-study 200] [--repeat 200]
                             [--scanside $CARGO_TARGET_DIR/release/scanside]

Synthetic MR series (small 32x32 slices: the index is what is measured, not the
pixels) are sent with storescu to a daemon (release build) and to Orthanc. Then
a minimal client (tests/e2e/rawdicom.py: TCP_NODELAY, the request in one write, no
parsing of the responses' data sets, so the figure is the server's) runs each
query --repeat times on one association per peer and records the time from
C-FIND-RQ to the final response. Queries: every study; one patient's
study by Patient ID; the series of one study; every instance of one series; one
instance by SOP Instance UID. Goal: scanside p99 under 50 ms for each query.
"""
import argparse
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))
import conftest  # noqa: E402
import synth  # noqa: E402
from conftest import Daemon  # noqa: E402
from orthanc import Orthanc  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
import pydicom  # noqa: E402
import pydicom.filebase  # noqa: E402
import pydicom.filewriter  # noqa: E402
import rawdicom  # noqa: E402

FIND_UID = "1.2.840.10008.5.1.4.1.2.2.1"


def q(level, **kw):
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def encode(ds):
    """An identifier in Explicit VR Little Endian."""
    buf = pydicom.filebase.DicomBytesIO()
    buf.is_implicit_VR, buf.is_little_endian = False, True
    pydicom.filewriter.write_dataset(buf, ds)
    return buf.getvalue()


def c_find(c, ident, msg_id):
    """One C-FIND on a raw association (TCP_NODELAY, no data set parsing): the
    number of pending responses. The request goes in one write."""
    rq = rawdicom.command({0x0002: FIND_UID, 0x0100: 0x0020, 0x0110: msg_id, 0x0700: 0, 0x0800: 0x0000})
    c.send(rawdicom.pdata([(1, True, True, rq)]) + rawdicom.pdata([(1, False, True, ident)]))
    pending, cmd = 0, b""
    while True:
        t, body = c.read_pdu()
        assert t == 4, t
        i = 0
        while i < len(body):
            ln = struct.unpack(">I", body[i:i + 4])[0]
            hdr = body[i + 5]
            if hdr & 1:
                cmd += body[i + 6:i + 4 + ln]
                if hdr & 2:
                    st = rawdicom.status_of(rawdicom.parse_command(cmd))
                    cmd = b""
                    if st in (0xFF00, 0xFF01):
                        pending += 1
                    else:
                        assert st == 0, hex(st)
                        return pending
            i += 4 + ln


def timed(port, aec, queries, repeat):
    c = rawdicom.Conn("127.0.0.1", port)
    t, _ = c.associate(called=aec, calling="BENCHSCU", contexts=[(1, FIND_UID, [rawdicom.EXPLICIT_LE])])
    assert t == 2, "association not accepted"
    out, msg = {}, 1
    for name, ds in queries:
        ident, ts, n = encode(ds), [], 0
        for _ in range(repeat):
            msg += 1
            t0 = time.perf_counter()
            n = c_find(c, ident, msg)
            ts.append(time.perf_counter() - t0)
        ts.sort()
        out[name] = (n, statistics.median(ts) * 1e3, ts[int(0.99 * (len(ts) - 1))] * 1e3)
    c.release()
    return out


def send(port, aec, paths):
    for i in range(0, len(paths), 1000):
        r = subprocess.run(["storescu", "-aec", aec, "127.0.0.1", str(port)] + paths[i:i + 1000],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=int, default=50)
    ap.add_argument("--per-study", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--scanside", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "scanside"))
    a = ap.parse_args()
    conftest.BIN = a.scanside
    os.environ["TCP_NODELAY"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        paths, studies = [], []
        for k in range(a.studies):
            study, series = generate_uid(), generate_uid()
            studies.append((study, series, f"QRB{k:04d}"))
            paths += synth.make_series(os.path.join(tmp, f"s{k}"), n=a.per_study, rows=32, cols=32,
                                       study_uid=study, series_uid=series, patient_id=f"QRB{k:04d}",
                                       description="bench series", seed=k)
        d = Daemon(os.path.join(tmp, "d"), idle_timeout_s=3600)
        d.start(env={"SCANSIDE_LOG": "warn"})
        o = Orthanc(os.path.join(tmp, "orthanc"), extra={"DicomAlwaysAllowFind": True}).start()
        try:
            t0 = time.time()
            send(d.port, "SCANSIDE", paths)
            t_ours = time.time() - t0
            t0 = time.time()
            send(o.port, o.aet, paths)
            t_orthanc = time.time() - t0
            study, series, pid = studies[len(studies) // 2]
            one = pydicom.dcmread(paths[len(paths) // 2 + 7], stop_before_pixels=True)
            queries = [
                ("every study", q("STUDY", StudyInstanceUID="", PatientID="", StudyDate="",
                                  NumberOfStudyRelatedInstances="")),
                ("a patient's study (PatientID)", q("STUDY", PatientID=pid, StudyInstanceUID="")),
                ("the series of a study", q("SERIES", StudyInstanceUID=study, SeriesInstanceUID="",
                                            Modality="", NumberOfSeriesRelatedInstances="")),
                ("every instance of a series", q("IMAGE", StudyInstanceUID=study, SeriesInstanceUID=series,
                                                 SOPInstanceUID="", InstanceNumber="")),
                ("one instance (SOPInstanceUID)", q("IMAGE", StudyInstanceUID=one.StudyInstanceUID,
                                                    SeriesInstanceUID=one.SeriesInstanceUID,
                                                    SOPInstanceUID=one.SOPInstanceUID)),
            ]
            ours = timed(d.port, "SCANSIDE", queries, a.repeat)
            theirs = timed(o.port, o.aet, queries, a.repeat)
        finally:
            d.stop()
            o.stop()
    total = len(paths)
    print(f"{total} instances indexed ({a.studies} studies); stored in {t_ours:.1f} s (scanside), "
          f"{t_orthanc:.1f} s (Orthanc); {a.repeat} runs per query")
    print(f"| query | matches | scanside p50 / p99 (ms) | Orthanc p50 / p99 (ms) | p99 ratio |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for name, _ in queries:
        n, p50, p99 = ours[name]
        n2, o50, o99 = theirs[name]
        worst = max(worst, p99)
        print(f"| {name} | {n} (Orthanc {n2}) | {p50:.1f} / {p99:.1f} | {o50:.1f} / {o99:.1f} | {p99 / o99:.2f} |")
    print(f"worst scanside p99: {worst:.1f} ms (goal < 50 ms): {'met' if worst < 50 else 'NOT met'}")


if __name__ == "__main__":
    main()
