"""Load: 8 simulated scanners (4 DCMTK storescu, 4 pynetdicom) send at once for a
bounded time while a segmentation runs. Every C-STORE is answered 0000, every
acknowledged instance is on disk and indexed, the segmentation finishes and the
daemon stays responsive. The figures (p99 latency, memory over time, against
storescp) come from bench/load_bench.py, not from here."""
import os

import brain
from scanners import run_scanners
from test_segmentation import send, wait_state

SECONDS = float(os.environ.get("SCANSIDE_LOAD_SECONDS", "20"))


def test_eight_scanners_at_once_while_inference_runs(daemon_factory, tmp_path):
    d = daemon_factory(max_associations=16).start()
    d.wait_model()
    brain_series = send(d, brain.write_series(str(tmp_path / "brain"), "t2", "axial", seed=7, patient_id="LOADBRAIN"))
    res = run_scanners(d.port, d.ae, str(tmp_path / "load"), SECONDS)
    assert res.failed == [], res.failed[:10]
    assert len(res.acked) > 8 * 20, f"only {len(res.acked)} instances in {SECONDS}s"
    on_disk = {os.path.basename(f)[:-4] for f in d.spool_files()}
    missing = res.acked - on_disk
    assert not missing, f"{len(missing)} acknowledged instances not on disk"
    job = wait_state(d, brain_series, ("written", "queued", "delivered"), timeout=300)
    assert job["inference"]["volumes_ml"]["whole_tumour"] > 0, job
    assert d.get("/healthz")[0] == 200
    assert d.proc.poll() is None
    print(f"{len(res.acked)} instances from 8 scanners in {SECONDS:.0f}s; "
          f"p50 {1000 * res.p(0.5):.1f} ms, p99 {1000 * res.p(0.99):.1f} ms")
