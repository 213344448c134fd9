"""Load: 8 simulated scanners (4 storescu, 4 pynetdicom) for a bounded time, against
scanside while it segments brain series, and against DCMTK storescp, in one run.

    python bench/load_bench.py [--scanside PATH] [--seconds 60]

Reports per receiver: C-STOREs answered, failed stores, C-STORE p50/p99 latency as
the senders see it, and the receiver's resident memory sampled every second (at a
quarter, half, three quarters and the end of the run: flat memory means no growth).
storescp as Debian ships it serves one association at a time; the others queue.
scanside fsyncs every instance and runs the gate and a segmentation meanwhile;
storescp (no fsync option) only writes files. Prints Markdown for docs/performance.md.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "e2e"))
import brain  # noqa: E402
from scanners import run_scanners  # noqa: E402
from conftest import ort_library  # noqa: E402
from store_bench import start_scanside, start_storescp, wait_port  # noqa: E402


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def sample(pid, out, stop):
    while not stop.is_set():
        out.append(rss_kib(pid))
        time.sleep(1)


def scenario(server, binary, seconds, root, brains):
    work = tempfile.mkdtemp(prefix="scanside-load-", dir=root)
    try:
        if server == "scanside":
            proc, port = start_scanside(binary, work)
        else:
            proc, port = start_storescp(work)
        wait_port(port)
        # Brain series for scanside to segment while the scanners send.
        feeders = []
        for paths in brains:
            t = threading.Thread(target=subprocess.run, args=(
                ["storescu", "-aet", "MRBRAIN", "-aec", "BENCH", "127.0.0.1", str(port)] + paths,),
                kwargs=dict(capture_output=True))
            t.start()
            feeders.append(t)
        samples, stop = [], threading.Event()
        sampler = threading.Thread(target=sample, args=(proc.pid, samples, stop))
        sampler.start()
        t0 = time.time()
        res = run_scanners(port, "BENCH", os.path.join(work, "senders"), seconds)
        wall = time.time() - t0
        stop.set()
        sampler.join()
        for t in feeders:
            t.join()
        proc.terminate()
        proc.wait(30)
        q = [samples[min(len(samples) - 1, int(f * len(samples)))] / 1024 for f in (0.25, 0.5, 0.75)]
        return dict(stores=len(res.latencies), unique=len(res.acked), failed=len(res.failed),
                    inst_s=len(res.latencies) / wall, p50=1000 * res.p(0.5), p99=1000 * res.p(0.99),
                    rss_q=q + [samples[-1] / 1024], rss_max=max(samples) / 1024)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scanside", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "release", "scanside"))
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--brains", type=int, default=2, help="brain series segmented during the run")
    a = ap.parse_args()
    # The segmentation on ONNX Runtime (the wheel's library), as on a CPU box.
    os.environ.setdefault("ORT_DYLIB_PATH", ort_library())
    data = tempfile.mkdtemp(prefix="scanside-load-data-")
    try:
        brains = [brain.write_series(os.path.join(data, f"b{i}"), "t2", "axial", seed=30 + i,
                                     patient_id=f"LOADB{i}") for i in range(a.brains)]
        print(f"8 scanners (4 storescu, 4 pynetdicom, 128x128 MR) for {a.seconds:.0f} s; "
              f"scanside also segments {a.brains} brain series\n")
        print("| receiver | C-STOREs answered 0000 | distinct instances | failed | inst/s | p50 ms | p99 ms "
              "| RSS MiB at 25/50/75/100% of the run | RSS max MiB |")
        print("|---|---|---|---|---|---|---|---|---|")
        r = {}
        for s in ("scanside", "storescp"):
            x = r[s] = scenario(s, a.scanside, a.seconds, None, brains if s == "scanside" else [])
            rss = " / ".join(f"{v:.0f}" for v in x["rss_q"])
            print(f"| {s} | {x['stores']} | {x['unique']} | {x['failed']} | {x['inst_s']:.0f} | {x['p50']:.1f} | "
                  f"{x['p99']:.1f} | {rss} | {x['rss_max']:.0f} |", flush=True)
        print(f"\nscanside/storescp: throughput {r['scanside']['inst_s'] / r['storescp']['inst_s']:.2f}, "
              f"p99 latency {r['scanside']['p99'] / r['storescp']['p99']:.2f}")
    finally:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
