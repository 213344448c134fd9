"""Results: SEG, TID 1500 SR and the trend picture of a synthetic case, checked
by the tools radiology's software is built on (dciodvfy, highdicom, dcmqi,
DCMTK), the patient history across visits, and kill -9 while writing."""
import glob
import json
import os
import subprocess
import time

import numpy as np
import pydicom
import pytest

import brain
from conftest import run
from test_segmentation import send, wait_state

DONE = ("written", "rejected", "failed")


def get_bytes(daemon, path):
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port}{path}", timeout=10) as r:
        return r.status, r.read()


def result_files(daemon, job):
    """{kind: path} of a job's result objects, from the job's own API."""
    objs = daemon.get_json(f"/api/v1/jobs/{job['id']}")[1]["result_objects"]
    return {o["kind"]: os.path.join(daemon.data_dir, o["path"]) for o in objs}


@pytest.fixture(scope="module")
def visits(tmp_path_factory):
    """One patient, three visits sent out of order (June, then April, then
    August); one daemon. Returns the daemon's view of each and the source dirs."""
    from conftest import Daemon
    base = tmp_path_factory.mktemp("visits")
    d = Daemon(base / "daemon").start()
    out = {}
    try:
        for date, seed in (("20260601", 3), ("20260401", 7), ("20260801", 11)):
            paths = brain.write_series(str(base / date), "t2", "axial", seed=seed,
                                       patient_id="SYNHIST1", study_date=date)
            job = wait_state(d, send(d, paths), DONE)
            out[date] = dict(job=job, paths=paths, files=result_files(d, job))
        out["history"] = d.get_json(f"/api/v1/patients/{out['20260601']['job']['measurement']['patient_key']}/history")
        out["metrics"] = d.metrics()
        out["pictures"] = {date: (get_bytes(d, f"/api/v1/jobs/{out[date]['job']['id']}/trend.png"),
                                  get_bytes(d, f"/api/v1/jobs/{out[date]['job']['id']}/trend.svg"))
                           for date in ("20260601", "20260401", "20260801")}
        out["daemon"] = d
    finally:
        d.stop()
    return out


def test_every_visit_is_written_with_seg_sr_and_picture(visits):
    for date in ("20260401", "20260601", "20260801"):
        job = visits[date]["job"]
        assert job["state"] == "written", json.dumps(job)[:2000]
        assert sorted(visits[date]["files"]) == ["seg", "sr", "trend_picture"]
        for p in visits[date]["files"].values():
            assert os.path.getsize(p) > 1000
        m = job["measurement"]
        wt = next(r for r in m["regions"] if r["region"]["key"] == "whole_tumour")
        # The measurement agrees with what inference counted.
        assert abs(wt["volume_ml"] - job["inference"]["volumes_ml"]["whole_tumour"]) < 1e-9
        src = pydicom.dcmread(visits[date]["paths"][0], stop_before_pixels=True)
        spacing = [float(src.SliceThickness)] + [float(x) for x in src.PixelSpacing]
        assert wt["voxels"] > 1000 and wt["source_spacing_mm"] == spacing
        st = wt["stats"]
        assert st["max_axial_diameter_mm"] >= st["perpendicular_diameter_mm"] > 5
        assert st["craniocaudal_extent_mm"] > 5
        # The largest slice product is at least that of the longest diameter's slice.
        assert st["bidimensional_product_mm2"] >= st["max_axial_diameter_mm"] * st["perpendicular_diameter_mm"] - 1e-6
        assert st["bidimensional_product_mm2"] <= st["max_axial_diameter_mm"] ** 2
    m = visits["metrics"]
    assert "scanside_jobs_written_total 3" in m
    for stage in ("measure", "write", "total"):
        assert f'scanside_stage_seconds_count{{stage="{stage}"}} 3' in m, stage


@pytest.mark.parametrize("kind", ["seg", "sr", "trend_picture"])
def test_result_objects_pass_dciodvfy(visits, kind):
    r = run(["dciodvfy", "-new", visits["20260601"]["files"][kind]])
    errors = [l for l in (r.stdout + r.stderr).splitlines() if l.startswith("Error")]
    assert not errors, "\n".join(errors)
    # Same patient and study as the source.
    src = pydicom.dcmread(visits["20260601"]["paths"][0], stop_before_pixels=True)
    obj = pydicom.dcmread(visits["20260601"]["files"][kind], stop_before_pixels=True)
    for k in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "AccessionNumber"):
        assert obj.get(k) == src.get(k), k
    assert obj.SeriesInstanceUID != src.SeriesInstanceUID


def test_highdicom_reads_the_seg_with_the_source_geometry(visits):
    import highdicom as hd
    v = visits["20260601"]
    seg = hd.seg.segread(v["files"]["seg"])
    src = sorted((pydicom.dcmread(p) for p in v["paths"]), key=lambda d: float(d.ImagePositionPatient[2]))
    assert seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == src[0].FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src[0].SeriesInstanceUID
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels == ["Whole tumour", "Necrotic core", "Oedema", "Enhancing tumour"]
    types = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence]
    assert types == ["108369006", "6574001", "79654002", "C113842"]
    for s in seg.SegmentSequence:
        assert s.SegmentAlgorithmType == "AUTOMATIC"
        alg = s.SegmentationAlgorithmIdentificationSequence[0]
        assert alg.AlgorithmName == "brats-synth-unet" and alg.AlgorithmVersion
        assert "sha256" in alg.AlgorithmParameters
    # Every frame present: segments x source slices.
    assert int(seg.NumberOfFrames) == 4 * len(src)
    # Per source instance, the SEG's frames are the labels of that slice.
    job = v["job"]
    counts = job["inference"]["voxel_counts"]
    vol = seg.get_volume()
    assert vol.spatial_shape == (len(src), src[0].Rows, src[0].Columns)
    arr = vol.array
    assert int(arr[..., 0].sum()) == sum(counts[1:])
    assert [int(arr[..., k].sum()) for k in (1, 2, 3)] == counts[1:]
    # Frame geometry equal to the source: positions, orientation, spacing.
    for i, d in enumerate(src):
        pos = seg.PerFrameFunctionalGroupsSequence[i].PlanePositionSequence[0].ImagePositionPatient
        assert np.allclose([float(x) for x in pos], [float(x) for x in d.ImagePositionPatient], atol=1e-4)
        ref = seg.PerFrameFunctionalGroupsSequence[i].DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == d.SOPInstanceUID
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(x) for x in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == \
        [float(x) for x in src[0].ImageOrientationPatient]
    assert [float(x) for x in shared.PixelMeasuresSequence[0].PixelSpacing] == [float(x) for x in src[0].PixelSpacing]


def sr_groups(path):
    import highdicom as hd
    from pydicom.sr.codedict import codes
    sr = hd.sr.srread(path)
    groups = hd.sr.MeasurementReport.from_sequence([sr]).get_volumetric_roi_measurement_groups()
    out = {}
    for g in groups:
        vol = g.get_measurements(name=codes.SCT.Volume)
        assert len(vol) == 1 and vol[0].unit.value == "cm3"
        out[str(g.tracking_identifier)] = (float(vol[0].value), g)
    return sr, out


def test_highdicom_reads_the_sr_measurement_groups(visits):
    v = visits["20260601"]
    sr, groups = sr_groups(v["files"]["sr"])
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.22"
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("COMPLETE", "UNVERIFIED", "PRELIMINARY")
    regions = v["job"]["measurement"]["regions"]
    seg = pydicom.dcmread(v["files"]["seg"], stop_before_pixels=True)
    assert set(groups) == {"Whole tumour", "Necrotic core", "Oedema", "Enhancing tumour"}
    for k, r in enumerate(regions):
        name = r["region"]["name"][0].upper() + r["region"]["name"][1:]
        value, g = groups[name]
        assert abs(value - r["volume_ml"]) < 1e-5, (name, value, r["volume_ml"])
        # Tracking UID shared with the SEG segment of the same region.
        assert str(g.tracking_uid) == seg.SegmentSequence[k].TrackingUID
        ref = g.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert ref.referenced_segment_numbers == [k + 1]
        source = [i for i in g[0].ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121232"]
        assert [i.UID for i in source] == [v["job"]["series_instance_uid"]]
    # Device observer names the model.
    dump = run(["dsrdump", v["files"]["sr"]]).stdout
    assert "brats-synth-unet" in dump and "Device Observer Model Name" in dump


def test_dsrdump_and_dcmqi_read_the_sr(visits, tmp_path):
    sr = visits["20260601"]["files"]["sr"]
    r = run(["dsrdump", "+Pt", "+Pc", sr])
    assert r.returncode == 0, r.stderr
    assert "TID 1500" in r.stdout and "Imaging Measurement Report" in r.stdout
    assert "Volume" in r.stdout and "cm3" in r.stdout
    import dcmqi
    exe = os.path.join(os.path.dirname(dcmqi.__file__), "bin", "tid1500reader")
    out = tmp_path / "sr.json"
    r = run([exe, "--inputDICOM", sr, "--outputMetadata", str(out)])
    assert r.returncode == 0, r.stdout + r.stderr
    meta = json.load(open(out))
    groups = meta["Measurements"]
    assert len(groups) == 4
    volumes = [m for g in groups for m in g["measurementItems"] if m["quantity"]["CodeValue"] == "118565006"]
    assert len(volumes) == 4 and all(m["units"]["CodeValue"] == "cm3" for m in volumes)


def test_history_is_ordered_by_date_whatever_the_arrival_order(visits):
    status, h = visits["history"]
    assert status == 200, h
    dates = [v["study_date"] for v in h["visits"]]
    assert dates == ["20260401", "20260601", "20260801"]
    assert h["progression_pct"] == 40.0
    wt = [v["volumes_ml"]["whole_tumour"] for v in h["visits"]]
    # August against June (previous) and the smallest earlier (nadir), by hand.
    aug = h["visits"][2]["changes"]["whole_tumour"]
    assert abs(aug["previous"]["change_pct"] - 100 * (wt[2] - wt[1]) / wt[1]) < 1e-9
    assert aug["previous"]["days"] == 61
    assert abs(aug["nadir"]["volume_ml"] - min(wt[:2])) < 1e-12
    sgr = np.log(wt[2] / wt[1]) / 61
    assert abs(aug["growth_rate_per_day"] - sgr) < 1e-12
    assert abs(aug["doubling_time_days"] - np.log(2) / sgr) < 1e-6
    assert aug["progression"] == (wt[2] >= 1.4 * min(wt[:2]) and wt[2] - min(wt[:2]) >= 0.1)
    # The first visit has nothing to compare with.
    assert h["visits"][0]["changes"]["whole_tumour"]["previous"] is None


def test_the_sr_carries_the_history_known_when_it_was_written(visits):
    """June arrived first (no history); April arrived second and is earlier (no
    history either); August arrived last: its SR shows June and April."""
    from pydicom.sr.codedict import codes
    _, june = sr_groups(visits["20260601"]["files"]["sr"])
    _, aug = sr_groups(visits["20260801"]["files"]["sr"])
    assert not [m for m in june["Whole tumour"][1].get_measurements() if m.name.value == "LONG02"]
    prior = [m for m in aug["Whole tumour"][1].get_measurements() if m.name.value == "LONG02"]
    wt = {v["study_date"]: v["volumes_ml"]["whole_tumour"] for v in visits["history"][1]["visits"]}
    assert sorted(round(float(m.value), 4) for m in prior) == sorted(round(wt[d], 4) for d in ("20260401", "20260601"))
    dump = run(["dsrdump", visits["20260801"]["files"]["sr"]]).stdout
    assert "Percent volume change from previous visit" in dump
    assert "Specific growth rate" in dump
    assert "Volumetric progression" in dump and "2026-06-01" in dump


def test_tracking_uids_are_stable_across_visits(visits):
    uids = [pydicom.dcmread(visits[d]["files"]["seg"], stop_before_pixels=True).SegmentSequence
            for d in ("20260401", "20260601", "20260801")]
    for k in range(4):
        assert len({s[k].TrackingUID for s in uids}) == 1
    assert len({pydicom.dcmread(visits[d]["files"]["seg"], stop_before_pixels=True).SOPInstanceUID
                for d in ("20260401", "20260601", "20260801")}) == 3


def test_trend_picture_as_secondary_capture_png_and_svg(visits, tmp_path):
    sc = pydicom.dcmread(visits["20260801"]["files"]["trend_picture"])
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert sc.StudyInstanceUID == visits["20260801"]["job"]["study_instance_uid"]
    px = sc.pixel_array
    assert px.shape == (512, 1024, 3)
    # The key slice panel shows the tumour outline in the whole-tumour colour.
    right = px[:, 640:]
    assert ((right[..., 0] == 230) & (right[..., 1] == 60) & (right[..., 2] == 50)).sum() > 50
    (s_png, png), (s_svg, svg) = visits["pictures"]["20260801"]
    assert s_png == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert s_svg == 200
    svg = svg.decode()
    # August: three visits, four regions -> 12 points; threshold and this visit drawn.
    assert svg.count('class="point" data-region="whole_tumour"') == 3
    assert svg.count('class="point"') == 12
    assert 'class="threshold"' in svg and 'class="this-visit"' in svg
    # June was written with what was known then: one visit, no threshold.
    june = visits["pictures"]["20260601"][1][1].decode()
    assert june.count('class="point" data-region="whole_tumour"') == 1 and 'class="threshold"' not in june


def test_bad_requests_for_results_get_specific_errors(daemon):
    status, body = daemon.get_json("/api/v1/patients/zz-not-hex/history")
    assert status == 400 and "patient key" in body["error"]
    status, body = daemon.get_json("/api/v1/patients/0123456789abcdef0123456789abcdef/history")
    assert status == 404 and "no history" in body["error"]
    status, body = daemon.get_json("/api/v1/jobs/0123456789abcdef/trend.png")
    assert status == 404 and "no job" in body["error"]


def test_kill_9_while_writing_results_leaves_one_set_of_objects(daemon_factory, tmp_path):
    d = daemon_factory().start()
    d.wait_model()
    paths = brain.write_series(str(tmp_path / "s"), "t2", "axial", seed=5)
    series = send(d, paths)
    # Kill as soon as the job is measured (results being written), or at the
    # latest moment we can see.
    deadline, state = time.time() + 300, None
    while time.time() < deadline:
        jobs = [j for j in d.jobs() if j["series_instance_uid"] == series]
        state = jobs[0]["state"] if jobs else None
        if state in ("measured", "written", "failed"):
            break
        time.sleep(0.01)
    d.kill9()
    assert state in ("measured", "written"), state
    d.start()
    job = wait_state(d, series, DONE)
    assert job["state"] == "written", json.dumps(job)[:2000]
    files = glob.glob(os.path.join(d.data_dir, "results", job["study_instance_uid"], "*", "*.dcm"))
    by_class = {}
    for f in files:
        by_class.setdefault(pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID, []).append(f)
    assert sorted(len(v) for v in by_class.values()) == [1, 1, 1], by_class
    assert [h["state"] for h in job["history"]].count("written") == 1
    assert sorted(job["results"]) == sorted(
        pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files)
    d.stop()


def test_demo_prints_volume_timings_and_where_the_results_are(tmp_path):
    """`scanside demo` as a newcomer runs it: its own daemon, the synthetic case."""
    from conftest import BIN, ort_library
    env = {**os.environ, "ORT_DYLIB_PATH": ort_library()}
    data = tmp_path / "demo-data"
    r = run([BIN, "demo", "--data-dir", str(data)], env=env, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert ": written" in out
    wt = [l for l in out.splitlines() if l.strip().startswith("whole tumour")]
    assert wt and float(wt[0].split()[2]) > 1.0, out
    for stage in ("decode", "gate", "resample", "infer", "post", "measure", "write"):
        assert f"{stage} " in out.split("stage timings:")[1].splitlines()[0], stage
    paths = [l.split()[-1] for l in out.splitlines() if l.strip().startswith(("seg ", "sr ", "trend_picture", "trend PNG", "trend SVG"))]
    assert len(paths) == 5, out
    for p in paths:
        assert os.path.getsize(p) > 1000, p
    assert pydicom.dcmread(paths[0], stop_before_pixels=True).Modality == "SEG"


def test_demo_sends_to_a_running_daemon(daemon):
    from conftest import BIN
    daemon.wait_model()
    r = run([BIN, "demo", "--to", f"127.0.0.1:{daemon.port}", "--http", f"127.0.0.1:{daemon.http_port}"], timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"http://127.0.0.1:{daemon.http_port}/api/v1/jobs/" in r.stdout
    assert any(j["state"] == "written" for j in daemon.jobs())
    # Without the HTTP address it says what is missing.
    r = run([BIN, "demo", "--to", f"127.0.0.1:{daemon.port}"], timeout=60)
    assert r.returncode != 0 and "--http" in r.stderr


def store_one(port, path):
    """Sends one file with storescu, or with pynetdicom for a SOP class DCMTK 3.6.7
    does not know (Label Map Segmentation, 2024)."""
    ds = pydicom.dcmread(path)
    if ds.SOPClassUID != "1.2.840.10008.5.1.4.1.1.66.7":
        r = run(["storescu", "-R", "-aec", "SCANSIDE", "127.0.0.1", str(port), path])
        assert r.returncode == 0, r.stdout + r.stderr
        return
    from pynetdicom import AE
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", port, ae_title="SCANSIDE")
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0, status


def edited_seg(ours, source_paths, drop_label, seg_type, ts, creator="Tech^Anna"):
    """Our SEG as a person edits it in a viewer: one region removed, written anew
    by highdicom (segments MANUAL), BINARY or LABELMAP, native or RLE."""
    import highdicom as hd
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid
    seg = hd.seg.segread(ours)
    src = [pydicom.dcmread(p) for p in source_paths]
    src.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    keep = [s for s in seg.SegmentSequence if s.SegmentLabel != drop_label and s.SegmentLabel != "Whole tumour"]
    masks = []
    for s in keep:
        m = np.zeros((len(src), src[0].Rows, src[0].Columns), bool)
        for i, d in enumerate(src):
            px = seg.get_pixels_by_source_instance([d.SOPInstanceUID], segment_numbers=[s.SegmentNumber])
            m[i] = px[0, :, :, 0] > 0
        masks.append(m)
    descs = [hd.seg.SegmentDescription(
        segment_number=k + 1, segment_label=s.SegmentLabel,
        segmented_property_category=hd.sr.CodedConcept.from_dataset(s.SegmentedPropertyCategoryCodeSequence[0]),
        segmented_property_type=hd.sr.CodedConcept.from_dataset(s.SegmentedPropertyTypeCodeSequence[0]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL) for k, s in enumerate(keep)]
    if seg_type == "LABELMAP":
        arr = np.zeros(masks[0].shape, np.uint8)
        for k, m in enumerate(masks):
            arr[m] = k + 1
    else:
        arr = np.stack(masks, -1).astype(np.uint8)
    out = hd.seg.Segmentation(
        source_images=src, pixel_array=arr,
        segmentation_type=getattr(hd.seg.SegmentationTypeValues, seg_type),
        segment_descriptions=descs, series_instance_uid=generate_uid(), series_number=77,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="viewer",
        manufacturer_model_name="edit", software_versions="1", device_serial_number="1",
        content_creator_name=creator, omit_empty_frames=True,
        transfer_syntax_uid=RLELossless if ts == "rle" else ExplicitVRLittleEndian)
    return out, [np.asarray(m) for m in masks]


# highdicom writes RLE only for LABELMAP (OHIF's default export is LABELMAP + RLE).
@pytest.mark.parametrize("seg_type,ts", [("BINARY", "native"), ("LABELMAP", "native"), ("LABELMAP", "rle")])
def test_an_edited_seg_comes_back_verified(daemon_factory, tmp_path, seg_type, ts):
    d = daemon_factory().start()
    d.wait_model()
    paths = brain.write_series(str(tmp_path / "s"), "t2", "axial", seed=3, patient_id="SYNEDIT1")
    job = wait_state(d, send(d, paths), DONE)
    assert job["state"] == "written"
    files = result_files(d, job)
    out, masks = edited_seg(files["seg"], paths, "Oedema", seg_type, ts)
    p = str(tmp_path / "edited.dcm")
    out.save_as(p)
    store_one(d.port, p)
    deadline = time.time() + 120
    while time.time() < deadline:
        j = d.get_json(f"/api/v1/jobs/{job['id']}")[1]
        if j["edits"]:
            break
        time.sleep(0.3)
    else:
        seg_jobs = [x for x in d.jobs() if x["id"] != job["id"]]
        raise AssertionError(json.dumps(seg_jobs)[:3000] + d.read_log()[-3000:])
    e = j["edits"][0]
    assert e["observer"] == "Tech^Anna"
    # The whole tumour recomputed from the edited sub-regions (oedema removed).
    voxel_ml = float(pydicom.dcmread(paths[0]).SliceThickness) / 1000.0
    expected_wt = sum(int(m.sum()) for m in masks) * voxel_ml
    assert abs(e["volumes_ml"]["whole_tumour"] - expected_wt) < 1e-6, (e["volumes_ml"], expected_wt)
    assert e["volumes_ml"]["oedema"] == 0.0
    ai = job["measurement"]["regions"][0]["volume_ml"]
    assert e["volumes_ml"]["whole_tumour"] < ai
    # Dice by hand: the edited whole tumour lies inside the AI's.
    assert abs(e["dice"]["whole_tumour"] - 2 * expected_wt / (expected_wt + ai)) < 1e-6
    assert e["dice"]["oedema"] == 0.0
    # The verified SR: VERIFIED, FINAL, predecessor = the preliminary SR, edited volume.
    objs = {o["kind"]: o for o in j["result_objects"]}
    vsr_path = os.path.join(d.data_dir, objs["verified_sr"]["path"])
    vsr, groups = sr_groups(vsr_path)
    assert (vsr.VerificationFlag, vsr.PreliminaryFlag, vsr.CompletionFlag) == ("VERIFIED", "FINAL", "COMPLETE")
    assert str(vsr.VerifyingObserverSequence[0].VerifyingObserverName) == "Tech^Anna"
    pred = vsr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert pred.ReferencedSOPInstanceUID == job["measurement"]["uids"]["sr"]
    assert abs(groups["Whole tumour"][0] - expected_wt) < 1e-5
    assert "Oedema" not in groups
    ref = groups["Enhancing tumour"][1].referenced_segment
    assert ref.referenced_sop_instance_uid == out.SOPInstanceUID
    err = [l for l in run(["dciodvfy", "-new", vsr_path]).stderr.splitlines() if l.startswith("Error")]
    if seg_type == "LABELMAP":
        # Debian's dicom3tools (2022) predates Label Map Segmentation (2024) and so
        # does not know that a segment of one may be referenced.
        err = [l for l in err if "not segmentation" not in l]
    assert not err, err
    # History uses the edited volume; the Dice is a metric.
    h = d.get_json(f"/api/v1/patients/{job['measurement']['patient_key']}/history")[1]
    assert [v["source"] for v in h["visits"]] == ["edited"]
    assert abs(h["visits"][0]["volumes_ml"]["whole_tumour"] - expected_wt) < 1e-9
    m = d.metrics()
    assert "scanside_edits_received_total 1" in m
    assert 'scanside_edit_dice_count{region="whole_tumour"} 1' in m
    # The same edit again changes nothing (same verified SR).
    store_one(d.port, p)
    time.sleep(3)
    j2 = d.get_json(f"/api/v1/jobs/{job['id']}")[1]
    assert len(j2["edits"]) == 1 and j2["edits"][0]["sr_sop_instance_uid"] == e["sr_sop_instance_uid"]


def test_a_seg_for_a_series_we_never_segmented_is_refused_with_the_reason(daemon, visits, tmp_path):
    """The returned SEG's own job says why it was not applied; nothing else changes."""
    p = visits["20260601"]["files"]["seg"]
    r = run(["storescu", "-R", "-aec", "SCANSIDE", "127.0.0.1", str(daemon.port), p])
    assert r.returncode == 0, r.stdout + r.stderr
    job = wait_state(daemon, pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID, ("rejected", "failed"), timeout=60)
    note = job["history"][-1]["note"]
    assert "not applied" in note and "has not segmented" in note, note
