"""The series gate through the real interface: series sent with DCMTK storescu, the
decision read back from /api/v1/jobs/{id} and /metrics."""
import os
import time

import pytest

import brain
from conftest import run
from synth import make_series

N, SIZE = 104, 192  # phantom series (synth.py): 104 mm coverage, 192 mm field of view


# Passed the gate: gated, or already segmented after it.
PASSED = ("gated", "inferred", "measured", "written")


def send_and_decide(daemon, paths, timeout=30):
    """Sends a series with storescu and returns its job once the gate decided."""
    import pydicom
    series = pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID
    r = run(["storescu", "-aec", "SCANSIDE", "127.0.0.1", str(daemon.port)] + paths)
    assert r.returncode == 0, r.stdout + r.stderr
    deadline = time.time() + timeout
    while time.time() < deadline:
        for j in daemon.jobs():
            if j["series_instance_uid"] == series and j["state"] in PASSED + ("rejected",):
                return daemon.get_json(f"/api/v1/jobs/{j['id']}")[1]
        time.sleep(0.1)
    raise AssertionError(f"no gate decision for {series}: {daemon.jobs()}")


def codes(job):
    return [r["code"] for s in job["gate"]["stages"] for r in s["reasons"]]


def facts(job, stage):
    return next(s["facts"] for s in job["gate"]["stages"] if s["stage"] == stage)


SEQUENCE_CLASS = {"t1": "t1", "t1c": "t1_post", "t2": "t2", "flair": "flair"}
GOOD = {(c, o): SEQUENCE_CLASS[c] for c in SEQUENCE_CLASS for o in ("axial", "sagittal", "coronal")}


@pytest.mark.parametrize("contrast,orientation", sorted(GOOD))
def test_synthetic_brain_passes(daemon, tmp_path, contrast, orientation):
    paths = brain.write_series(str(tmp_path / "s"), contrast, orientation)
    job = send_and_decide(daemon, paths)
    assert job["state"] in PASSED, codes(job)
    assert job["gate"]["passed"] and codes(job) == []
    assert [s["stage"] for s in job["gate"]["stages"]] == ["header", "geometry", "quality"]
    assert facts(job, "header")["sequence_class"] == GOOD[(contrast, orientation)]
    assert facts(job, "geometry")["plane"] == orientation
    q = facts(job, "quality")
    assert q["snr"] > 8 and q["fber"] > 20 and q["zero_fraction"] < 0.01
    assert "scanside_gate_passed_total 1" in daemon.metrics()
    assert job["notice_sop_instance_uid"] is None, "an accepted series gets no notice"


DEGRADED = {
    "missing_slice": (dict(drop_slice=90), "missing_slice"),
    "thick_slices": (dict(slice_thickness=3), "slices_too_thick"),  # 3 mm in a 3D T1
    "inconsistent_orientation": (dict(flip_one=True), "multiple_orientations"),
    "localizer": (dict(localizer=True), "localizer_description"),
    "cropped_coverage": (dict(crop_slices=60), "insufficient_coverage"),
    "heavy_noise": (dict(noise=0.12), "low_snr"),
    "skull_stripped": (dict(skull_strip=True), "skull_stripped_or_zero_filled"),
    "low_resolution": (dict(pixel_spacing=2.0), "inplane_resolution_too_coarse"),
    "low_field": (dict(field_strength=0.5), "low_field_strength"),
}


@pytest.mark.parametrize("case", sorted(DEGRADED))
def test_degraded_series_refused_with_its_code(daemon, tmp_path, case):
    kw, code = DEGRADED[case]
    paths = brain.write_series(str(tmp_path / case), "t1", "axial", **kw)
    job = send_and_decide(daemon, paths)
    assert job["state"] == "rejected"
    assert code in codes(job), codes(job)
    reason = next(r for r in job["gate"]["stages"][-1]["reasons"] if r["code"] == code)
    assert reason["message"] and isinstance(reason["values"], dict)
    assert f'scanside_gate_refusals_total{{code="{code}"}} 1' in daemon.metrics()
    assert any(h["state"] == "rejected" and code in h["note"] for h in job["history"])
    check_notice(daemon, job, paths[0], reason["message"])


def check_notice(daemon, job, source_path, message):
    """The refusal's Basic Text SR: valid for dciodvfy, in the source's study, and
    saying the reason in plain words (read back with pydicom and highdicom)."""
    import highdicom
    import pydicom
    assert job["notice"]["kind"] == "not_processed_notice"
    path = os.path.join(daemon.data_dir, job["notice"]["path"])
    r = run(["dciodvfy", path])
    # Only dciodvfy's DICOMDIR hints may remain (they concern the source's own
    # empty Type 2 attributes, which the notice copies as they are).
    out = "\n".join(l for l in (r.stdout + r.stderr).splitlines() if "needed to build DICOMDIR" not in l)
    assert "BasicTextSR" in out and "Error" not in out and "Warning" not in out, out
    sr, src = pydicom.dcmread(path), pydicom.dcmread(source_path, stop_before_pixels=True)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.11"
    assert sr.SOPInstanceUID == job["notice_sop_instance_uid"]
    assert sr.StudyInstanceUID == src.StudyInstanceUID and sr.PatientID == src.PatientID
    assert sr.SeriesInstanceUID != src.SeriesInstanceUID
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    items = highdicom.sr.ContentSequence.from_sequence(sr.ContentSequence)
    texts = [i.TextValue for i in items]
    assert any(message in t for t in texts), texts
    assert "not processed" in texts[0]
    refs = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert refs.SeriesInstanceUID == src.SeriesInstanceUID


def test_phantom_headers_pass_the_header_stages(daemon, tmp_path):
    """The transport tests' phantom (synth.py) has a T1 header and head geometry but
    no anatomy: it passes header and geometry, and the quality stage sees through it."""
    paths = make_series(tmp_path / "p", n=N, rows=SIZE, cols=SIZE)
    job = send_and_decide(daemon, paths)
    stages = {s["stage"]: s["passed"] for s in job["gate"]["stages"]}
    assert stages["header"] and stages["geometry"]
    assert facts(job, "header")["sequence_class"] == "t1"


def test_decision_survives_restart_and_reopen_regates(daemon_factory, tmp_path):
    d = daemon_factory().start()
    paths = brain.write_series(str(tmp_path / "s"), "t1", "axial")
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
        if j["state"] in PASSED:
            break
        time.sleep(0.1)
    assert j["state"] in PASSED and j["reopened"] == 1 and j["instance_count"] == len(paths) + 1


def test_enhanced_mr_geometry_from_functional_groups(daemon, tmp_path):
    """nibabel's Philips MPRAGE: 176 frames with full per-frame functional groups and
    all-zero pixels. Header and geometry pass (from the functional groups); the
    quality stage refuses the empty image."""
    import gzip
    import shutil
    import nibabel
    src = os.path.join(os.path.dirname(nibabel.__file__), "nicom", "tests", "data", "philips_mprage.dcm.gz")
    dst = str(tmp_path / "mprage.dcm")
    with gzip.open(src) as f, open(dst, "wb") as g:
        shutil.copyfileobj(f, g)
    job = send_and_decide(daemon, [dst])
    assert job["completion_reason"] == "expected_count"  # one multi-frame instance
    stages = {s["stage"]: s for s in job["gate"]["stages"]}
    assert stages["header"]["passed"] and stages["geometry"]["passed"]
    assert stages["geometry"]["facts"]["slices"] == 176
    assert codes(job) == ["skull_stripped_or_zero_filled"]


def test_scanner_history_flags_an_outlier(daemon_factory, tmp_path):
    d = daemon_factory(gate={"scanner_min_history": 3}).start()
    for seed in range(3):
        job = send_and_decide(d, brain.write_series(str(tmp_path / f"s{seed}"), "t1", seed=seed))
        assert job["state"] in PASSED and facts(job, "quality")["warnings"] == []
    # Same scanner, noisier but still acceptable: passes, and is flagged against history.
    job = send_and_decide(d, brain.write_series(str(tmp_path / "noisy"), "t1", seed=0, noise=0.06))
    assert job["state"] in PASSED
    warnings = facts(job, "quality")["warnings"]
    assert any(w["code"] == "scanner_outlier" and w["metric"] == "snr" for w in warnings), warnings
    assert warnings[0]["series_seen"] == 3
