"""Backlog drain to Orthanc: scanside's forwarder against DCMTK storescu sending the
same files to a fresh Orthanc, in one run.

    python bench/forward_bench.py [--series 20] [--scanside $CARGO_TARGET_DIR/release/scanside]

A daemon (release build) with Orthanc as [[upstream]] segments --series synthetic
series while Orthanc is down, so their results (SEG, SR, trend picture: 3 objects
each) wait in the outbox. Orthanc is started and the time until every entry is
delivered is the drain time (objects/s, MB/s). Then storescu sends the same result
files, in one association, to a second, fresh Orthanc. Goal: scanside within 1.2x
of storescu's time.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))
import brain  # noqa: E402
import conftest  # noqa: E402
from conftest import Daemon, toml_str  # noqa: E402
from orthanc import Orthanc  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=20)
    ap.add_argument("--scanside", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "scanside"))
    a = ap.parse_args()
    conftest.BIN = a.scanside
    with tempfile.TemporaryDirectory() as tmp:
        o = Orthanc(os.path.join(tmp, "orthanc"))
        d = Daemon(os.path.join(tmp, "d"), upstream=[{
            "ae_title": toml_str(o.aet), "host": '"127.0.0.1"', "port": str(o.port), "batch": "50",
            "retry_initial_s": "0.2", "retry_max_s": "0.5"}])
        d.start(env={"SCANSIDE_LOG": "warn"})
        d.wait_model(timeout=300)
        paths = brain.write_series(os.path.join(tmp, "s"), "t2", "axial", seed=3)
        import pydicom
        from pydicom.uid import generate_uid
        for k in range(a.series):
            # The same head as a new study and series each time (fresh UIDs).
            study, series = generate_uid(), generate_uid()
            out = os.path.join(tmp, f"s{k}")
            os.makedirs(out)
            for p in paths:
                ds = pydicom.dcmread(p)
                ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                ds.PatientID = f"BENCH{k}"
                ds.save_as(os.path.join(out, os.path.basename(p)))
            r = subprocess.run(["storescu", "-aec", "SCANSIDE", "127.0.0.1", str(d.port)]
                               + [os.path.join(out, f) for f in sorted(os.listdir(out))], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
        n = 3 * a.series
        while True:
            e = d.get_json("/api/v1/outbox")[1]
            if len(e) == n:
                break
            time.sleep(0.5)
        files = [os.path.join(d.data_dir, x["path"]) for x in sorted(e, key=lambda x: x["seq"])]
        mb = sum(os.path.getsize(f) for f in files) / 1e6
        o.start()
        t0 = time.time()
        while not all(x["state"] == "delivered" for x in d.get_json("/api/v1/outbox")[1]):
            time.sleep(0.05)
        ours = time.time() - t0
        d.stop()
        o.stop()
        o2 = Orthanc(os.path.join(tmp, "orthanc2")).start()
        t0 = time.time()
        r = subprocess.run(["storescu", "-R", "-aec", o2.aet, "127.0.0.1", str(o2.port)] + files,
                           capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"})
        theirs = time.time() - t0
        assert r.returncode == 0, r.stderr
        assert int(o2.rest("/statistics")["CountInstances"]) == n
        o2.stop()
    print(f"backlog: {n} result objects ({mb:.1f} MB) from {a.series} series")
    print(f"scanside forwarder: {ours:.2f} s ({n / ours:.1f} objects/s, {mb / ours:.1f} MB/s), "
          f"includes up to one back-off ({0.5} s max) before it notices Orthanc is up")
    print(f"storescu:           {theirs:.2f} s ({n / theirs:.1f} objects/s, {mb / theirs:.1f} MB/s)")
    print(f"ratio scanside / storescu: {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
