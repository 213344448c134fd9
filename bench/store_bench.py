"""C-STORE throughput, latency and memory: scanside against DCMTK storescp, one run.

    python bench/store_bench.py [--scanside target/release/scanside] [--quick]

Both receivers get the same files from DCMTK storescu, one association and four in
parallel. scanside fsyncs every file, its directory and its index before it answers;
storescp (DCMTK 3.6.7) has no fsync option, so it is measured without one: the ratio
is against a receiver that does less. Latency is per C-STORE as storescu sees it
(request sent -> response read), taken from its verbose log lines as they arrive.
Prints a Markdown table; docs/performance.md keeps the figures.
"""
import argparse
import concurrent.futures
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "e2e"))
from synth import make_series  # noqa: E402

os.environ["TCP_NODELAY"] = "1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening")


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def start_scanside(binary, work):
    port, http = free_port(), free_port()
    cfg = os.path.join(work, "scanside.toml")
    with open(cfg, "w") as f:
        f.write(f"""
[dicom]
ae_title = "BENCH"
listen = "127.0.0.1:{port}"
max_associations = 16
[[dicom.allowed_peers]]
ae_title = "*"
address = "127.0.0.1"
[storage]
data_dir = "{work}/data"
min_free_bytes = 1048576
[http]
listen = "127.0.0.1:{http}"
""")
    p = subprocess.Popen([binary, "run", "--config", cfg], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=dict(os.environ, SCANSIDE_LOG="warn"))
    return p, port


def start_storescp(work):
    port = free_port()
    out = os.path.join(work, "out")
    os.makedirs(out)
    p = subprocess.Popen(["storescp", "-aet", "BENCH", "+B", "-od", out, str(port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return p, port


def send(port, files, latencies, lock):
    """One storescu association; records per-instance latency from its log lines."""
    p = subprocess.Popen(["storescu", "-v", "-aec", "BENCH", "127.0.0.1", str(port)] + files,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    sent_at, ok = None, 0
    for line in p.stdout:
        if "Sending Store Request" in line:
            sent_at = time.perf_counter()
        elif "Received Store Response" in line and sent_at is not None:
            with lock:
                latencies.append(time.perf_counter() - sent_at)
            ok += "Success" in line
            sent_at = None
    p.wait()
    return ok


def scenario(server, binary, files, assocs, root):
    work = tempfile.mkdtemp(prefix="scanside-bench-", dir=root)
    try:
        proc, port = start_scanside(binary, work) if server == "scanside" else start_storescp(work)
        wait_port(port)
        chunks = [files[i::assocs] for i in range(assocs)]
        lat, lock = [], threading.Lock()
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(assocs) as ex:
            ok = sum(ex.map(lambda c: send(port, c, lat, lock), chunks))
        wall = time.perf_counter() - t0
        rss = peak_rss_kib(proc.pid)
        proc.terminate()
        proc.wait(20)
        assert ok == len(files), f"{server}: {ok}/{len(files)} stored"
        size = sum(os.path.getsize(f) for f in files)
        lat.sort()
        return dict(inst_s=len(files) / wall, mb_s=size / wall / 1e6,
                    p50_ms=1000 * statistics.median(lat), p99_ms=1000 * lat[int(0.99 * (len(lat) - 1))],
                    rss_mib=rss / 1024, wall_s=wall)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scanside", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "scanside"))
    ap.add_argument("--quick", action="store_true", help="smaller sets, for a smoke run")
    ap.add_argument("--receiver-root", default=None,
                    help="where the receivers write (default: the temp dir; /dev/shm makes "
                         "fsync free and shows the cost of everything but durability)")
    a = ap.parse_args()
    data = tempfile.mkdtemp(prefix="scanside-bench-data-")
    try:
        big_n, small_n = (44, 200) if a.quick else (176, 1000)
        sets = {
            f"{big_n}-slice 256x256 16-bit MR": make_series(os.path.join(data, "big"), n=big_n, rows=256, cols=256),
            f"{small_n} small instances (64x64)": sum(
                (make_series(os.path.join(data, f"small{i}"), n=small_n // 10, rows=64, cols=64, seed=i)
                 for i in range(10)), []),
        }
        where = a.receiver_root or tempfile.gettempdir()
        print(f"receivers write under {where}\n")
        print("| set | associations | receiver | inst/s | MB/s | p50 ms | p99 ms | peak RSS MiB |")
        print("|---|---|---|---|---|---|---|---|")
        ratios = []
        for name, files in sets.items():
            for assocs in (1, 4):
                r = {s: scenario(s, a.scanside, files, assocs, a.receiver_root) for s in ("scanside", "storescp")}
                for s in ("scanside", "storescp"):
                    x = r[s]
                    print(f"| {name} | {assocs} | {s} | {x['inst_s']:.0f} | {x['mb_s']:.1f} | "
                          f"{x['p50_ms']:.2f} | {x['p99_ms']:.2f} | {x['rss_mib']:.1f} |", flush=True)
                ratios.append((name, assocs, r["scanside"]["inst_s"] / r["storescp"]["inst_s"]))
        print()
        for name, assocs, ratio in ratios:
            print(f"- {name}, {assocs} association(s): scanside/storescp throughput = {ratio:.2f}")
    finally:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
