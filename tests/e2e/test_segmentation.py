"""Segmentation: the default model on both backends, the sliding window against
MONAI's, the whole pipeline through storescu, and bad models and runtimes."""
import hashlib
import json
import os
import shutil
import time

import nibabel as nib
import numpy as np
import pytest

import brain
from conftest import BIN, ort_library, run, toml_str

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.path.join(ROOT, "models", "brats-synth-unet")
ORT_ENV = {**os.environ, "ORT_DYLIB_PATH": ort_library(), "SCANSIDE_LOG": "warn"}


def verify(*args):
    r = run([BIN, "model", "verify", *args], env=ORT_ENV, timeout=600)
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip().startswith("{") else None), r.stderr


def test_ort_and_tract_give_the_same_labels_on_the_golden_case(tmp_path):
    out = {}
    for backend in ("ort", "tract"):
        code, v, err = verify("--backend", backend, "--labels-out", str(tmp_path / f"{backend}.npy"))
        assert code == 0 and v["golden_ok"], err
        assert v["backend"].startswith(backend)
        out[backend] = np.load(tmp_path / f"{backend}.npy")
    assert out["ort"].shape == tuple(v["golden_shape"])
    assert (out["ort"] != out["tract"]).sum() == 0
    # The golden case has a tumour: the check is not passing on an empty answer.
    assert (out["ort"] > 0).sum() > 1000


def test_patch_logits_agree_with_python_onnxruntime(tmp_path):
    import onnxruntime as ort
    sess = ort.InferenceSession(os.path.join(BUNDLE, "model.onnx"), providers=["CPUExecutionProvider"])
    golden = np.load(os.path.join(BUNDLE, "golden", "input.npy"))
    patch = np.zeros((1, 1, 64, 64, 64), np.float32)
    d, h, w = (min(64, s) for s in golden.shape)
    patch[0, 0, :d, :h, :w] = golden[:d, :h, :w]
    ref = sess.run(None, {"image": patch})[0]
    for backend in ("ort", "tract"):
        f = tmp_path / f"{backend}.npy"
        code, _, err = verify("--backend", backend, "--patch-logits-out", str(f))
        assert code == 0, err
        got = np.load(f)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() < 1e-4, (backend, np.abs(got - ref).max())
        assert np.abs(ref).max() > 1.0  # real logits, not zeros


@pytest.fixture(scope="module")
def monai_bundle(tmp_path_factory):
    py = os.environ.get("SCANSIDE_TRAIN_PYTHON")
    if not py:
        pytest.fail("SCANSIDE_TRAIN_PYTHON (the training venv with PyTorch + MONAI) is not set; tests/run sets it")
    out = tmp_path_factory.mktemp("monai")
    r = run([py, os.path.join(os.path.dirname(__file__), "monai_reference.py"), str(out)], timeout=600)
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize("backend", ["ort", "tract"])
def test_sliding_window_matches_monai(monai_bundle, tmp_path, backend):
    f = tmp_path / "logits.npy"
    code, v, err = verify(str(monai_bundle), "--backend", backend, "--logits-out", str(f))
    assert code == 0 and v["golden_ok"], err
    ref = np.load(monai_bundle / "reference_logits.npy")
    got = np.load(f)
    assert got.shape == ref.shape == (3, 12, 50, 41)
    assert np.abs(got - ref).max() < 1e-4, np.abs(got - ref).max()
    # Axis 0 padded to one patch; 50 and 41 voxels take starts 0, 12, 24, 26 and
    # 0, 10, 20, 21 (the last moved back inside): 1 x 4 x 4 patches blended.
    assert v["patches"] == 16


def wait_state(daemon, series, states, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for j in daemon.jobs():
            if j["series_instance_uid"] == series and j["state"] in states:
                return daemon.get_json(f"/api/v1/jobs/{j['id']}")[1]
        time.sleep(0.2)
    raise AssertionError(f"{series} never reached {states}: {daemon.jobs()}\n{daemon.read_log()[-3000:]}")


def send(daemon, paths):
    import pydicom
    r = run(["storescu", "-aec", "SCANSIDE", "127.0.0.1", str(daemon.port)] + paths)
    assert r.returncode == 0, r.stdout + r.stderr
    return pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID


def truth(seed, contrast="t1c"):
    """Whole-tumour truth of a synthetic series: volume (mL) and centroid (RAS mm)."""
    _, labels, affine = brain.synth_volume(contrast, seed=seed, noise=0.02)
    idx = np.argwhere(labels > 0)
    return len(idx) / 1000.0, (affine @ np.append(idx.mean(0), 1.0))[:3]


# Tilted 10 degrees (an AC-PC-aligned axial), inside the +-12 degree rotations the
# model was trained with.
ORIENTATIONS = ["axial", "sagittal", "coronal", "oblique:10"]
SEED = 3
# Whole tumour (oedema included) is read on T2/FLAIR, where it is bright; on T1c
# only the enhancing part stands out (the model finds 4.8 of 22.7 mL there).
CONTRAST = "t2"


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """One synthetic T2 brain with a known tumour, acquired axial, sagittal,
    coronal and 20-degree oblique, each sent with storescu to one daemon and
    segmented. Returns {orientation: (job, label image)} and the truth."""
    from conftest import Daemon
    base = tmp_path_factory.mktemp("orient")
    d = Daemon(base / "daemon").start()
    out = {}
    try:
        for o in ORIENTATIONS:
            paths = brain.write_series(str(base / o.replace(":", "_")), CONTRAST, o, seed=SEED)
            job = wait_state(d, send(d, paths), ("written", "rejected", "failed"))
            img = nib.load(os.path.join(d.data_dir, job["inference"]["labels_path"])) if job.get("inference") else None
            out[o] = (job, img)
        metrics = d.metrics()
    finally:
        d.stop()
    return out, truth(SEED, CONTRAST), metrics


def centroid(img):
    """Patient (RAS) position of the largest tumour component's centre. The tumour
    sits 30-40 mm off the head's centre: a flipped or swapped axis moves it far."""
    from scipy import ndimage
    comp, n = ndimage.label(np.asarray(img.dataobj) > 0)
    biggest = 1 + int(np.argmax(ndimage.sum(comp > 0, comp, range(1, n + 1))))
    return (img.affine @ np.append(np.argwhere(comp == biggest).mean(0), 1.0))[:3]


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_every_orientation_is_segmented_with_its_label_volume(segmented, orientation):
    job, img = segmented[0][orientation]
    assert job["state"] == "written", json.dumps(job)[:3000]
    inf = job["inference"]
    assert inf["backend"].startswith("ort") and inf["model_sha256"]
    assert sorted(inf["stage_ms"]) == ["decode", "gate", "infer", "post", "resample"]
    assert set(inf["volumes_ml"]) >= {"whole_tumour", "tumour_core", "enhancing", "oedema", "necrotic_core"}
    # The NIfTI is on the series grid and holds exactly what the job counts.
    lab = np.asarray(img.dataobj)
    assert lab.size == job["instance_count"] * np.prod(lab.shape[:2])
    assert [int((lab == k).sum()) for k in range(4)] == inf["voxel_counts"]
    ml = (lab > 0).sum() * np.prod(img.header.get_zooms()[:3]) / 1000.0
    assert abs(ml - inf["volumes_ml"]["whole_tumour"]) < 1e-6 * max(ml, 1.0) + 1e-3


def test_orientations_agree_with_each_other(segmented):
    """The same head acquired four ways: the tumour lands in the same place (the
    geometry is handled), and the axis-aligned acquisitions give the same volume."""
    res = segmented[0]
    vols = {o: res[o][0]["inference"]["volumes_ml"]["whole_tumour"] for o in ORIENTATIONS}
    ref = vols["axial"]
    assert ref > 0.5, vols
    for o in ("sagittal", "coronal"):
        assert abs(vols[o] - ref) / ref < 0.10, vols
    for o in ORIENTATIONS:
        assert np.linalg.norm(centroid(res[o][1]) - centroid(res["axial"][1])) < 6.0, o


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_the_segmented_volume_is_within_10_percent_of_the_truth(segmented, orientation):
    (job, img) = segmented[0][orientation]
    true_ml, true_centroid = segmented[1]
    wt = job["inference"]["volumes_ml"]["whole_tumour"]
    assert abs(wt - true_ml) / true_ml < 0.10, (wt, true_ml)
    assert np.linalg.norm(centroid(img) - true_centroid) < 4.0, (centroid(img), true_centroid)


def test_stage_timings_are_metrics(segmented):
    m = segmented[2]
    assert f"scanside_jobs_inferred_total {len(ORIENTATIONS)}" in m
    for stage in ("decode", "gate", "resample", "infer", "post", "total"):
        assert f'scanside_stage_seconds_count{{stage="{stage}"}} {len(ORIENTATIONS)}' in m, stage
    assert "scanside_model_loaded 1" in m


def test_inference_resumes_after_kill_9(daemon_factory, tmp_path):
    """Killed while segmenting: after the restart the job is still gated, resumes,
    and is segmented once."""
    d = daemon_factory(inference={"backend": '"tract"'}).start()
    paths = brain.write_series(str(tmp_path / "s"), "t1", "axial", seed=5)
    series = send(d, paths)
    job = wait_state(d, series, ("gated", "inferred"))
    d.kill9()
    d.settings["inference"] = {"backend": '"ort"', "ort_library": toml_str(ort_library())}
    d.write_config()
    d.start()
    job = wait_state(d, series, ("written", "failed"))
    assert job["state"] == "written"
    assert [h["state"] for h in job["history"]].count("inferred") == 1
    assert os.path.exists(os.path.join(d.data_dir, job["inference"]["labels_path"]))


def bad_bundle(tmp_path, name, edit_manifest=None, edit_onnx=None, fix_sha=True):
    out = tmp_path / name
    shutil.copytree(BUNDLE, out)
    if edit_onnx:
        data = edit_onnx(open(out / "model.onnx", "rb").read())
        open(out / "model.onnx", "wb").write(data)
    text = open(out / "manifest.toml").read()
    if fix_sha:
        sha = hashlib.sha256(open(out / "model.onnx", "rb").read()).hexdigest()
        text = "\n".join(f'sha256 = "{sha}"' if l.startswith("sha256 =") else l for l in text.splitlines())
    if edit_manifest:
        text = edit_manifest(text)
    open(out / "manifest.toml", "w").write(text)
    return out


BAD = {
    "shape_disagrees": (lambda t: dict(manifest=lambda m: m.replace("patch = [64, 64, 64]", "patch = [32, 32, 32]")),
                        "disagrees with the manifest"),
    "corrupt_onnx": (lambda t: dict(onnx=lambda b: b[: len(b) // 3]), "cannot load the model"),
    "replaced_onnx": (lambda t: dict(onnx=lambda b: b[:-10] + b"0123456789", fix_sha=False), "sha256"),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("backend", ["ort", "tract"])
def test_a_bad_model_is_a_clear_error_and_dicom_goes_on(daemon_factory, tmp_path, case, backend):
    spec, message = BAD[case]
    s = spec(tmp_path)
    bundle = bad_bundle(tmp_path, case, s.get("manifest"), s.get("onnx"), s.get("fix_sha", True))
    # The CLI check an installer (and the OTA self-test) runs says the same.
    code, _, err = verify(str(bundle), "--backend", backend)
    assert code == 2 and message in err, err
    d = daemon_factory(inference={"backend": f'"{backend}"', "ort_library": toml_str(ort_library()),
                                  "model_dir": toml_str(bundle)}).start()
    code, body = d.wait_model()
    assert code == 503 and not body["ready"] and not body["model_loaded"]
    assert message in body["model"]["error"], body
    assert_dicom_still_served(d, tmp_path)


def assert_dicom_still_served(d, tmp_path):
    assert run(["echoscu", "-aec", "SCANSIDE", "127.0.0.1", str(d.port)]).returncode == 0
    paths = brain.write_series(str(tmp_path / "series"), "t1", "axial", seed=1)
    series = send(d, paths)
    job = wait_state(d, series, ("gated", "rejected", "failed"), timeout=60)
    # Gated and waiting for a model: not failed, not lost.
    assert job["state"] == "gated"
    time.sleep(1)
    assert d.get_json(f"/api/v1/jobs/{job['id']}")[1]["state"] == "gated"
    assert "scanside_model_loaded 0" in d.metrics()


def test_a_missing_runtime_library_is_a_clear_error(daemon_factory, tmp_path):
    d = daemon_factory(inference={"backend": '"ort"', "ort_library": toml_str(tmp_path / "libonnxruntime.so")}).start()
    code, body = d.wait_model()
    assert code == 503 and "cannot load ONNX Runtime" in body["model"]["error"], body
    assert "libonnxruntime.so" in body["model"]["error"]
    assert_dicom_still_served(d, tmp_path)


def test_backend_auto_falls_back_to_tract_without_the_library(daemon_factory, tmp_path):
    d = daemon_factory(inference={"backend": '"auto"', "ort_library": toml_str(tmp_path / "none.so")}).start()
    code, body = d.wait_model()
    assert code == 200 and body["model"]["backend"] == "tract", body


def test_an_execution_provider_that_does_not_load_is_an_error_unless_fallback(daemon_factory):
    # The wheel's ONNX Runtime has no TensorRT provider: like a Jetson whose
    # TensorRT libraries are missing.
    lib = toml_str(ort_library())
    d = daemon_factory(inference={"backend": '"ort"', "ort_library": lib, "execution_provider": '"tensorrt"'}).start()
    code, body = d.wait_model()
    assert code == 503 and "TensorRT execution provider did not load" in body["model"]["error"], body
    d2 = daemon_factory(inference={"backend": '"ort"', "ort_library": lib, "execution_provider": '"tensorrt"',
                                   "ep_fallback": "true"}).start()
    code, body = d2.wait_model()
    assert code == 200 and body["model_loaded"], body


def test_selftest_runs_the_configured_models_golden_case(daemon_factory, tmp_path):
    import re
    d = daemon_factory()
    r = run([BIN, "selftest", "--config", d.config_path], env=ORT_ENV, timeout=600)
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)
    assert v["golden_ok"] and v["backend"].startswith("ort")
    n = np.prod(v["golden_shape"])
    for got, want in zip(v["voxel_counts"], v["expected_voxel_counts"]):
        assert abs(got - want) <= v["tolerance_fraction"] * n
    # A bundle whose golden counts are not what the model gives fails it (exit 1).
    shift = lambda m: re.sub(r"voxel_counts = \[(\d+)", lambda g: f"voxel_counts = [{int(g.group(1)) + 50000}", m)
    d.settings["inference"]["model_dir"] = toml_str(bad_bundle(tmp_path, "wrong_golden", shift))
    d.write_config()
    r = run([BIN, "selftest", "--config", d.config_path], env=ORT_ENV, timeout=600)
    assert r.returncode == 1 and "does not give the manifest's label counts" in r.stderr, r.stderr
