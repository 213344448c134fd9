"""Gate time per series: a 256x256x176 synthetic brain T1 (MNI ICBM152 anatomy).

    python bench/gate_bench.py [--scanside target/release/scanside] [--runs 5]

Runs `scanside gate` (the daemon's gate: header rules, geometry, volume decode,
image-quality metrics) on the series and reports the time the gate itself measured
and the process wall time, median of the runs. Target: under 2 s on the 2-core VM
(under 5% of the five-minute budget). No peer runs the same checks here (MRIQC
needs FSL/ANTs, which the registries do not carry), so the figure is absolute.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "e2e"))
import brain  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scanside", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "scanside"))
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        paths = brain.write_series(d, "t1", "axial", crop_slices=176, matrix=(256, 256))
        gate_ms, wall_ms = [], []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            r = subprocess.run([a.scanside, "gate", d], capture_output=True, text=True)
            wall_ms.append(1000 * (time.perf_counter() - t0))
            out = json.loads(r.stdout)
            assert out["passed"], out
            gate_ms.append(out["elapsed_ms"])
        print(f"series: {len(paths)} slices of 256x256, 16-bit; gate passed")
        print(f"gate (headers + volume + metrics): median {statistics.median(gate_ms):.0f} ms "
              f"(min {min(gate_ms):.0f}, max {max(gate_ms):.0f}) over {a.runs} runs")
        print(f"process wall time: median {statistics.median(wall_ms):.0f} ms")
        print(f"share of the 300 s budget: {statistics.median(wall_ms) / 3000:.2f}%")


if __name__ == "__main__":
    main()
