"""The series gate through the real interface: series sent with DCMTK storescu, the
decision read back from /api/v1/jobs/{id} and /metrics."""
import os
import time

import pytest

from conftest import run
from synth import make_series

N, SIZE = 104, 192  # 104 mm coverage, 192 mm field of view: just inside the defaults


def send_and_decide(daemon, paths, timeout=30):
    r = run(["storescu", "-aec", "SCANSIDE", "127.0.0.1", str(daemon.port)] + paths)
    assert r.returncode == 0, r.stdout + r.stderr
    deadline = time.time() + timeout
    while time.time() < deadline:
        for j in daemon.jobs():
            if j["state"] in ("gated", "rejected"):
                return daemon.get_json(f"/api/v1/jobs/{j['id']}")[1]
        time.sleep(0.1)
    raise AssertionError(f"no gate decision: {daemon.jobs()}")


def codes(job):
    return [r["code"] for s in job["gate"]["stages"] for r in s["reasons"]]


def facts(job, stage):
    return next(s["facts"] for s in job["gate"]["stages"] if s["stage"] == stage)


T2 = dict(description="AX T2 TSE", acquisition="2D", spacing=3.0, n=50)
FLAIR = dict(description="AX FLAIR", acquisition="2D", spacing=3.0, n=50)


def t2_tags(i, ds):
    ds.ScanningSequence, ds.SequenceVariant = "SE", "SK"
    ds.RepetitionTime, ds.EchoTime = 4000, 100
    del ds.InversionTime


def flair_tags(i, ds):
    ds.ScanningSequence, ds.SequenceVariant = ["SE", "IR"], "SK"
    ds.RepetitionTime, ds.EchoTime, ds.InversionTime = 9000, 120, 2500


def t1c_tags(i, ds):
    ds.ContrastBolusAgent = "Gadobutrol"


CASES = {
    "t1_axial": (dict(), None, "t1", "axial"),
    "t1_sagittal": (dict(iop=(0, 1, 0, 0, 0, -1)), None, "t1", "sagittal"),
    "t1_coronal": (dict(iop=(1, 0, 0, 0, 0, -1)), None, "t1", "coronal"),
    "t1_post": (dict(description="T1 MPRAGE"), t1c_tags, "t1_post", "axial"),
    "t2": (T2, t2_tags, "t2", "axial"),
    "flair": (FLAIR, flair_tags, "flair", "axial"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_good_series_pass(daemon, tmp_path, case):
    kw, tweak, seq, plane = CASES[case]
    kw = dict(kw)
    n = kw.pop("n", N)
    paths = make_series(tmp_path / case, n=n, rows=SIZE, cols=SIZE, tweak=tweak, **kw)
    job = send_and_decide(daemon, paths)
    assert job["state"] == "gated", codes(job)
    assert job["gate"]["passed"] and codes(job) == []
    assert facts(job, "header")["sequence_class"] == seq
    assert facts(job, "geometry")["plane"] == plane
    assert "scanside_gate_passed_total 1" in daemon.metrics()


def orientation_flip(i, ds):
    if i == 7:
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]


def localizer(i, ds):
    ds.SeriesDescription = "3-plane localizer"


DEGRADED = {
    "missing_slice": (dict(), "drop", "missing_slice"),
    "thick_slices": (dict(spacing=3.0, n=40), None, "slices_too_thick"),
    "inconsistent_orientation": (dict(), orientation_flip, "multiple_orientations"),
    "localizer": (dict(), localizer, "localizer_description"),
    "cropped_coverage": (dict(n=60), None, "insufficient_coverage"),
    "too_few_slices": (dict(n=12, spacing=1.0), None, "too_few_slices"),
    "low_resolution": (dict(pixel_spacing=2.0, ), None, "inplane_resolution_too_coarse"),
}


@pytest.mark.parametrize("case", sorted(DEGRADED))
def test_degraded_series_refused_with_its_code(daemon, tmp_path, case):
    kw, tweak, code = DEGRADED[case]
    kw = dict(kw)
    n = kw.pop("n", N)
    paths = make_series(tmp_path / case, n=n, rows=SIZE, cols=SIZE,
                        tweak=None if tweak == "drop" else tweak, images_in_acquisition=False, **kw)
    if tweak == "drop":
        os.remove(paths.pop(50))
    job = send_and_decide(daemon, paths)
    assert job["state"] == "rejected"
    assert codes(job)[0] == code, codes(job)
    reason = job["gate"]["stages"][-1]["reasons"][0]
    assert reason["message"] and isinstance(reason["values"], dict)
    assert f'scanside_gate_refusals_total{{code="{code}"}} 1' in daemon.metrics()
    assert any(h["state"] == "rejected" and code in h["note"] for h in job["history"])


def test_decision_survives_restart_and_reopen_regates(daemon_factory, tmp_path):
    d = daemon_factory().start()
    paths = make_series(tmp_path / "s", n=N, rows=SIZE, cols=SIZE, images_in_acquisition=False)
    held_back = paths.pop(50)
    job = send_and_decide(d, paths)
    assert job["state"] == "rejected" and codes(job)[0] == "missing_slice"
    d.kill9()
    d.start()
    assert d.get_json(f"/api/v1/jobs/{job['id']}")[1]["state"] == "rejected"
    # The missing slice arrives late: the series reopens, completes again, passes.
    assert run(["storescu", "-aec", "SCANSIDE", "127.0.0.1", str(d.port), held_back]).returncode == 0
    deadline = time.time() + 20
    while time.time() < deadline:
        j = d.get_json(f"/api/v1/jobs/{job['id']}")[1]
        if j["state"] == "gated":
            break
        time.sleep(0.1)
    assert j["state"] == "gated" and j["reopened"] == 1 and j["instance_count"] == N
