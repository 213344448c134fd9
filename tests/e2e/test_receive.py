"""C-ECHO and C-STORE through real peers: DCMTK echoscu/storescu and pynetdicom."""
import concurrent.futures
import hashlib
import os
import time

import pydicom
from pynetdicom import AE
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import MRImageStorage

from conftest import run
from synth import dataset_bytes, make_series


def sha(b):
    return hashlib.sha256(b).hexdigest()


def stored_by_sop(daemon):
    out = {}
    for p in daemon.spool_files():
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        out[ds.SOPInstanceUID] = p
    return out


def assert_all_stored_identical(daemon, paths):
    stored = stored_by_sop(daemon)
    for p in paths:
        uid = pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
        assert uid in stored, f"{uid} not in the spool"
        assert sha(dataset_bytes(stored[uid])) == sha(dataset_bytes(p)), f"{uid} differs"


def series_uid(paths):
    return pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID


def test_echoscu(daemon):
    r = run(["echoscu", "-v", "-aec", "SCANSIDE", "127.0.0.1", str(daemon.port)])
    assert r.returncode == 0, r.stderr
    assert "Received Echo Response (Success)" in r.stdout + r.stderr
    assert 'scanside_associations_accepted_total 1' in daemon.metrics()


def test_storescu_one_association_completes_on_expected_count(daemon, tmp_path):
    paths = make_series(tmp_path / "s", n=30)
    r = run(["storescu", "-aec", "SCANSIDE", "127.0.0.1", str(daemon.port)] + paths)
    assert r.returncode == 0, r.stderr
    assert_all_stored_identical(daemon, paths)
    jobs = daemon.wait_jobs(1)
    assert jobs[0]["series_instance_uid"] == series_uid(paths)
    assert [h["state"] for h in jobs[0]["history"]][:2] == ["received", "complete"]
    assert jobs[0]["completion_reason"] == "expected_count"
    assert jobs[0]["instance_count"] == 30
    code, detail = daemon.get_json(f"/api/v1/jobs/{jobs[0]['id']}")
    assert code == 200 and detail["series"]["instance_count"] == 30
    assert "complete" in detail["stage_timings_ms"]
    code, s = daemon.get_json(f"/api/v1/series/{series_uid(paths)}")
    assert code == 200 and len(s["instances"]) == 30
    m = daemon.metrics()
    assert "scanside_instances_stored_total 30" in m
    assert 'scanside_series_completed_total{reason="expected_count"} 1' in m
    assert not daemon.tmp_files()


def test_four_storescu_in_parallel(daemon, tmp_path):
    series = [make_series(tmp_path / f"s{i}", n=25, images_in_acquisition=False, seed=i) for i in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda p: run(["storescu", "-aec", "SCANSIDE", "127.0.0.1", str(daemon.port)] + p), series))
    for r in results:
        assert r.returncode == 0, r.stderr
    for paths in series:
        assert_all_stored_identical(daemon, paths)
    jobs = daemon.wait_jobs(4)
    assert sorted(j["series_instance_uid"] for j in jobs) == sorted(series_uid(p) for p in series)
    # No expected count in these headers: each completes after its association's release.
    assert {j["completion_reason"] for j in jobs} == {"association_released"}
    assert all(j["instance_count"] == 25 for j in jobs)


def pynetdicom_send(port, paths, release=True, ae_title="PYNETDICOM"):
    ae = AE(ae_title=ae_title)
    # Our files are Explicit VR Little Endian; proposing only that keeps pynetdicom
    # from re-encoding, so the stored data set can be compared byte for byte.
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="SCANSIDE")
    assert assoc.is_established
    statuses = [assoc.send_c_store(pydicom.dcmread(p)).Status for p in paths]
    if release:
        assoc.release()
    else:
        assoc.abort()
    return statuses


def test_pynetdicom_same_files_twice_stored_once(daemon, tmp_path):
    paths = make_series(tmp_path / "s", n=12, images_in_acquisition=False)
    assert pynetdicom_send(daemon.port, paths) == [0] * 12
    assert_all_stored_identical(daemon, paths)
    daemon.wait_jobs(1)
    # The same instances again: stored once, answered success.
    assert pynetdicom_send(daemon.port, paths) == [0] * 12
    assert len(daemon.spool_files()) == 12
    assert "scanside_instances_duplicate_total 12" in daemon.metrics()
    assert daemon.jobs()[0]["instance_count"] == 12


def test_idle_timeout_completes_an_aborted_series(daemon_factory, tmp_path):
    d = daemon_factory(idle_timeout_s=2, release_quiet_s=1).start()
    paths = make_series(tmp_path / "s", n=5, images_in_acquisition=False)
    assert pynetdicom_send(d.port, paths, release=False) == [0] * 5
    time.sleep(1.0)
    assert d.jobs() == [], "an aborted association must not count as released"
    jobs = d.wait_jobs(1, timeout=10)
    assert jobs[0]["completion_reason"] == "idle_timeout"


def test_late_instance_reopens_a_complete_series(daemon, tmp_path):
    paths = make_series(tmp_path / "s", n=6, images_in_acquisition=False)
    assert pynetdicom_send(daemon.port, paths[:5]) == [0] * 5
    job = daemon.wait_jobs(1)[0]
    assert job["instance_count"] == 5
    assert pynetdicom_send(daemon.port, paths[5:]) == [0]
    deadline = time.time() + 10
    while time.time() < deadline:
        job = daemon.jobs()[0]
        if job["instance_count"] == 6:
            break
        time.sleep(0.1)
    assert job["instance_count"] == 6 and job["reopened"] == 1
    assert any("reopened" in (h["note"] or "") for h in job["history"])
    assert "scanside_series_reopened_total 1" in daemon.metrics()


def test_restart_keeps_jobs_and_open_series(daemon_factory, tmp_path):
    d = daemon_factory(idle_timeout_s=3).start()
    done = make_series(tmp_path / "a", n=4)
    open_ = make_series(tmp_path / "b", n=4, images_in_acquisition=False)
    assert pynetdicom_send(d.port, done) == [0] * 4
    d.wait_jobs(1)
    assert pynetdicom_send(d.port, open_, release=False) == [0] * 4
    d.kill9()
    d.start()
    jobs = d.wait_jobs(2, timeout=15)
    reasons = {j["series_instance_uid"]: j["completion_reason"] for j in jobs}
    assert reasons == {series_uid(done): "expected_count", series_uid(open_): "idle_timeout"}


def test_sigterm_exits_zero(daemon):
    assert daemon.stop() == 0
    assert "stopped" in daemon.read_log()
