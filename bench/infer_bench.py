"""One 256x256x176 1 mm series from its last C-STORE to committed results (SEG,
SR, trend picture), stage by stage, per backend, with Python onnxruntime on the
same patches in the same run.

    python bench/infer_bench.py [--scanside $CARGO_TARGET_DIR/release/scanside]

For ort and tract: a daemon (release build) receives the series over DICOM
(storescu), gates, segments, measures and writes its results; we read the job's
stage timings (decode, gate, resample, infer, post, then measure and write from
the job's state times), the time from the last instance stored to results
committed, and the daemon's peak RSS (VmHWM). Then Python's
onnxruntime runs the same number of 64^3 patches with the same thread count, and
the ratio daemon-ort infer / Python onnxruntime is reported. Goals (2-core CPU):
last C-STORE -> results committed under 60 s with ort, ort within 1.1x of Python onnxruntime, peak RSS under
2 GiB.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))
import brain  # noqa: E402
from conftest import Daemon, ort_library  # noqa: E402

MODEL = os.path.join(HERE, "..", "models", "brats-synth-unet", "model.onnx")


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_daemon(workdir, paths, backend, threads):
    d = Daemon(workdir, inference={"backend": f'"{backend}"', "ort_library": json.dumps(ort_library()),
                                   "threads": str(threads)}, release_quiet_s=1)
    d.start(env={"SCANSIDE_LOG": "warn"})
    try:
        d.wait_model(timeout=300)
        t0 = time.time()
        r = subprocess.run(["storescu", "-aec", "SCANSIDE", "127.0.0.1", str(d.port)] + paths,
                           capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"})
        assert r.returncode == 0, r.stderr
        while time.time() - t0 < 1200:
            jobs = d.jobs()
            if jobs and jobs[0]["state"] in ("written", "rejected", "failed"):
                break
            time.sleep(0.2)
        job = d.get_json(f"/api/v1/jobs/{jobs[0]['id']}")[1]
        assert job["state"] == "written", job
        hist = {h["state"]: h["at_ms"] for h in job["history"]}
        stage_ms = dict(job["inference"]["stage_ms"])
        stage_ms["measure"] = hist["measured"] - hist["inferred"]
        stage_ms["write"] = hist["written"] - hist["measured"]
        return {
            "stage_ms": stage_ms,
            "complete_to_inferred_ms": hist["inferred"] - hist["complete"],
            "complete_to_written_ms": hist["written"] - hist["complete"],
            # Includes the series' completion wait (release_quiet_s = 1).
            "last_store_to_written_ms": hist["written"] - job["series"]["last_received_ms"],
            "patches": job["inference"]["patches"],
            "model_grid": job["inference"]["model_grid"],
            "peak_rss_mib": peak_rss_mib(d.proc.pid),
            "whole_tumour_ml": job["inference"]["volumes_ml"]["whole_tumour"],
        }
    finally:
        d.stop()


def python_ort(patches, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(MODEL, so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(1, 1, 64, 64, 64)).astype(np.float32)
    sess.run(None, {"image": x})  # warm-up, as the daemon's session is warm
    t0 = time.perf_counter()
    for _ in range(patches):
        sess.run(None, {"image": x})
    return 1000 * (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scanside", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "scanside"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--backends", default="ort,tract")
    a = ap.parse_args()
    import conftest
    conftest.BIN = a.scanside
    with tempfile.TemporaryDirectory() as d:
        paths = brain.write_series(os.path.join(d, "series"), "t1c", "axial", seed=3, crop_slices=176, matrix=(256, 256))
        true_ml = (brain.synth_volume("t1c", seed=3, noise=0.02)[1] > 0).sum() / 1000
        results = {}
        for backend in a.backends.split(","):
            results[backend] = run_daemon(os.path.join(d, backend), paths, backend, a.threads)
        n = results[next(iter(results))]["patches"]
        py_ms = python_ort(n, a.threads)
    print(f"series: {len(paths)} slices of 256x256 at 1 mm; model grid {results[next(iter(results))]['model_grid']}, "
          f"{n} patches of 64^3; {a.threads} threads; true whole tumour {true_ml:.1f} mL (uncropped)")
    for b, r in results.items():
        s = r["stage_ms"]
        print(f"{b:6s} decode {s['decode']} ms, gate {s.get('gate', 0)} ms, resample {s['resample']} ms, "
              f"infer {s['infer']} ms, post {s['post']} ms, measure {s['measure']} ms, write {s['write']} ms; "
              f"complete->written {r['complete_to_written_ms'] / 1000:.1f} s, "
              f"last C-STORE->written {r['last_store_to_written_ms'] / 1000:.1f} s; "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB; whole tumour {r['whole_tumour_ml']:.1f} mL")
    print(f"python onnxruntime, same {n} patches: {py_ms:.0f} ms")
    if "ort" in results:
        print(f"ratio daemon ort infer / python onnxruntime: {results['ort']['stage_ms']['infer'] / py_ms:.2f}")
    print(json.dumps({"results": results, "python_onnxruntime_ms": py_ms}, indent=1))


if __name__ == "__main__":
    main()
