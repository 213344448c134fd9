"""Synthetic brain MR series from the MNI ICBM152 2009a template in nilearn's wheel.

Real anatomy (the template's head, grey and white matter maps), random contrast,
a random tumour (necrotic core, enhancing rim, oedema), bias field, Rician noise,
resolution loss and any orientation, written as a real DICOM MR series. Degraded
variants (thick slices, a missing slice, inconsistent orientation, heavy noise,
cropped coverage, a localizer, a skull-stripped input) exercise the gate.

    python tests/e2e/brain.py OUT_DIR [--contrast t1|t1c|t2|flair] [--orientation axial|sagittal|coronal]
"""
import argparse
import functools
import os

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from scipy import ndimage


def _template_dir():
    import nilearn
    return os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data")


_CACHE = {}


def template():
    """(t1, gm, wm) as float32 arrays in [0, 1] on the template's 1 mm RAS grid, and its affine."""
    if "t" not in _CACHE:
        d = _template_dir()
        load = lambda n: nib.load(os.path.join(d, f"mni_icbm152_{n}_tal_nlin_sym_09a_converted.nii.gz"))
        t1 = load("t1")
        _CACHE["t"] = tuple(np.asarray(load(n).get_fdata(), np.float32) / 255.0 for n in ("t1", "gm", "wm")) + (t1.affine,)
    return _CACHE["t"]


# Relative tissue intensities per contrast: (wm, gm, csf, non-brain head scale).
CONTRASTS = {
    "t1": (1.0, 0.62, 0.22, 0.9),
    "t1c": (1.0, 0.62, 0.22, 0.9),
    "t2": (0.42, 0.62, 1.0, 0.6),
    "flair": (0.5, 0.75, 0.08, 0.5),
}
# Tumour compartments (necrosis, enhancing rim, oedema) per contrast.
TUMOUR = {
    "t1": (0.2, 0.5, 0.45),
    "t1c": (0.2, 1.4, 0.45),
    "t2": (1.1, 0.7, 0.9),
    "flair": (0.4, 0.8, 1.2),
}
SEQUENCE = {  # ScanningSequence, acquisition, TR, TE, TI, description
    "t1": (["GR", "IR"], "3D", 2300, 2.3, 900, "T1 MPRAGE"),
    "t1c": (["GR", "IR"], "3D", 2300, 2.3, 900, "T1 MPRAGE POST GD"),
    "t2": ("SE", "2D", 4500, 100, None, "AX T2 TSE"),
    "flair": (["SE", "IR"], "2D", 9000, 120, 2500, "AX T2 FLAIR"),
}


@functools.lru_cache(maxsize=8)
def synth_volume(contrast="t1", seed=0, tumour=True, noise=0.02, bias=0.25):
    """Returns (volume float32 on the template grid, labels uint8, affine).

    Labels follow BraTS: 1 necrotic core, 2 oedema, 3 enhancing tumour.
    Cached: callers must not modify the arrays in place."""
    rng = np.random.default_rng(seed)
    t1, gm, wm, affine = template()
    brain = np.clip(gm + wm, 0, 1)
    head = ndimage.binary_fill_holes(t1 > 0.05)
    csf = np.clip(ndimage.gaussian_filter(brain, 1.0) * 1.15 - brain, 0, 1) * head
    w_wm, w_gm, w_csf, w_other = CONTRASTS[contrast]
    other = np.clip(1 - brain - csf, 0, 1) * head
    vol = wm * w_wm + gm * w_gm + csf * w_csf + other * t1 * w_other
    labels = np.zeros(vol.shape, np.uint8)
    if tumour:
        idx = np.argwhere(wm > 0.9)
        c = idx[rng.integers(len(idx))]
        r = rng.uniform(8, 16)
        zz, yy, xx = np.ogrid[: vol.shape[0], : vol.shape[1], : vol.shape[2]]
        d = np.sqrt(((zz - c[0]) / 1.0) ** 2 + ((yy - c[1]) / 1.1) ** 2 + ((xx - c[2]) / 0.9) ** 2)
        oedema, rim, core = (d < r * 1.8) & (brain > 0.3), d < r, d < r * 0.55
        labels[oedema] = 2
        labels[rim] = 3
        labels[core] = 1
        n, e, o = TUMOUR[contrast]
        vol = np.where(labels == 2, o, vol)
        vol = np.where(labels == 3, e, vol)
        vol = np.where(labels == 1, n, vol)
        vol = ndimage.gaussian_filter(vol, 0.6)
    if bias:
        field = ndimage.zoom(rng.normal(0, 1, (3, 3, 3)), np.array(vol.shape) / 3, order=3)
        field = np.exp(bias * field[: vol.shape[0], : vol.shape[1], : vol.shape[2]] / (np.abs(field).max() + 1e-6))
        vol = vol * field
    sigma = noise * float(np.percentile(vol[head], 99))
    vol = np.sqrt((vol + rng.normal(0, sigma, vol.shape)) ** 2 + rng.normal(0, sigma, vol.shape) ** 2)
    return vol.astype(np.float32), labels, affine


def slices(vol, affine, orientation):
    """Image stack (slice, row, col) and per-slice DICOM geometry (LPS)."""
    # Template voxel (i, j, k) -> RAS; DICOM patient space is LPS.
    to_lps = np.diag([-1, -1, 1, 1]) @ affine
    if orientation == "axial":  # rows: posterior, cols: left, slices: superior
        stack = vol[::-1, ::-1, :].transpose(2, 1, 0)
        ijk0 = lambda s: (vol.shape[0] - 1, vol.shape[1] - 1, s)
        iop = [1, 0, 0, 0, 1, 0]
    elif orientation == "sagittal":  # rows: inferior, cols: posterior, slices: from left to right
        stack = vol[:, ::-1, ::-1].transpose(0, 2, 1)
        ijk0 = lambda s: (s, vol.shape[1] - 1, vol.shape[2] - 1)
        iop = [0, 1, 0, 0, 0, -1]
    else:  # coronal: rows inferior, cols left, slices anterior -> posterior
        stack = vol[::-1, ::-1, ::-1].transpose(1, 2, 0)
        ijk0 = lambda s: (vol.shape[0] - 1, vol.shape[1] - 1 - s, vol.shape[2] - 1)
        iop = [1, 0, 0, 0, 0, -1]
    ipp = [list((to_lps @ np.array([*ijk0(s), 1.0]))[:3]) for s in range(stack.shape[0])]
    return stack, iop, ipp


def oblique_slices(vol, affine, degrees):
    """An axial acquisition tilted by `degrees` about the left-right axis: the volume
    resampled (trilinear) onto that grid, with its DICOM geometry (LPS)."""
    t = np.deg2rad(degrees)
    row = np.array([1.0, 0.0, 0.0])  # along a row: patient left
    col = np.array([0.0, np.cos(t), np.sin(t)])  # down the rows: posterior, tilted
    normal = np.cross(row, col)
    to_lps = np.diag([-1, -1, 1, 1]) @ affine
    corners = np.array([[i, j, k, 1.0] for i in (0, vol.shape[0] - 1) for j in (0, vol.shape[1] - 1) for k in (0, vol.shape[2] - 1)])
    world = (to_lps @ corners.T)[:3].T
    centre = world.mean(0)
    # The axial field of view, tilted: 1 mm voxels, as many as the template has.
    # (Covering the whole rotated template would cut the neck at the template's
    # edge inside the image, a sharp artificial boundary no scanner produces.)
    n = [vol.shape[0], vol.shape[1], vol.shape[2]]
    origin = centre - 0.5 * ((n[0] - 1) * row + (n[1] - 1) * col + (n[2] - 1) * normal)
    s, r, c = np.meshgrid(np.arange(n[2]), np.arange(n[1]), np.arange(n[0]), indexing="ij")
    p = origin + c[..., None] * row + r[..., None] * col + s[..., None] * normal
    ijk = np.linalg.solve(to_lps, np.concatenate([p, np.ones(p.shape[:-1] + (1,))], -1).reshape(-1, 4).T)[:3]
    stack = ndimage.map_coordinates(vol, ijk, order=1, mode="constant", cval=np.nan).reshape(n[2], n[1], n[0])
    # Outside the template a scanner still sees background noise, not zeros.
    bg = vol[:8, :8, :8].ravel()
    gap = np.isnan(stack)
    stack[gap] = np.random.default_rng(int(degrees * 10)).choice(bg, size=int(gap.sum()))
    stack = stack.astype(np.float32)
    iop = [*row, *col]
    ipp = [list(origin + k * normal) for k in range(n[2])]
    return stack, iop, ipp


def write_series(out_dir, contrast="t1", orientation="axial", seed=0, slice_thickness=None,
                 noise=0.02, crop_slices=None, drop_slice=None, flip_one=False, localizer=False,
                 skull_strip=False, pixel_spacing=1.0, field_strength=3.0, matrix=None,
                 study_uid=None, patient_id="SYNBRAIN1", patient_name="Synthetic^Brain",
                 study_date="20261201"):
    """Writes one DICOM MR series; returns the file paths in slice order."""
    vol, labels, affine = synth_volume(contrast, seed=seed, noise=noise)
    if skull_strip:
        _, gm, wm, _ = template()
        vol = vol * ((gm + wm) > 0.3)
    if orientation.startswith("oblique"):  # "oblique" or "oblique:DEGREES"
        stack, iop, ipp = oblique_slices(vol, affine, float(orientation.partition(":")[2] or 20))
    else:
        stack, iop, ipp = slices(vol, affine, orientation)
    seq, acq, tr, te, ti, desc = SEQUENCE[contrast]
    step = slice_thickness or (1.0 if acq == "3D" else 3.0)
    k = int(round(step))
    if k > 1:  # thicker slices: average k template slices into one
        n = stack.shape[0] // k
        stack = stack[: n * k].reshape(n, k, *stack.shape[1:]).mean(1)
        ipp = [list(np.mean(ipp[i * k:(i + 1) * k], axis=0)) for i in range(n)]
    if pixel_spacing > 1.0:
        f = int(round(pixel_spacing))
        h, w = stack.shape[1] // f * f, stack.shape[2] // f * f
        stack = stack[:, :h, :w].reshape(stack.shape[0], h // f, f, w // f, f).mean((2, 4))
    if crop_slices:
        mid, half = stack.shape[0] // 2, crop_slices // 2
        stack, ipp = stack[mid - half: mid - half + crop_slices], ipp[mid - half: mid - half + crop_slices]
    if matrix:  # pad (or crop) in-plane to rows x cols, padding with background noise
        rows, cols = matrix
        rng = np.random.default_rng(seed + 1)
        bg = stack[:, :8, :8]
        out = rng.choice(bg.ravel(), size=(stack.shape[0], rows, cols)).astype(np.float32)
        r0, c0 = max((rows - stack.shape[1]) // 2, 0), max((cols - stack.shape[2]) // 2, 0)
        h, w = min(rows, stack.shape[1]), min(cols, stack.shape[2])
        out[:, r0:r0 + h, c0:c0 + w] = stack[:, :h, :w]
        shift = np.array(iop[:3]) * c0 + np.array(iop[3:]) * r0
        ipp = [list(np.array(p) - shift * pixel_spacing) for p in ipp]
        stack = out
    scale = 3000.0 / max(float(np.percentile(stack, 99.9)), 1e-6)
    pixels = np.clip(stack * scale, 0, 4095).astype(np.uint16)
    os.makedirs(out_dir, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    paths = []
    for s in range(pixels.shape[0]):
        if drop_slice is not None and s == drop_slice:
            continue
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = uid = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality = "MR"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "19650412", "O"
        ds.StudyDate, ds.StudyTime, ds.SeriesDate = study_date, "101500", study_date
        ds.StudyDescription = "MRI BRAIN W/WO CONTRAST"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "4711", "ACC4711", ""
        ds.SeriesDescription = "3-plane localizer" if localizer else desc
        ds.ProtocolName = ds.SeriesDescription
        ds.BodyPartExamined = "HEAD"
        ds.Manufacturer, ds.ManufacturerModelName, ds.StationName = "SYNTHETIC", "scanside-brain", "SYNTH1"
        ds.MagneticFieldStrength = field_strength
        ds.ReceiveCoilName = "Head_32"
        ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = seq, "SP", acq
        ds.RepetitionTime, ds.EchoTime = tr, te
        if ti:
            ds.InversionTime = ti
        if contrast == "t1c":
            ds.ContrastBolusAgent = "Gadobutrol"
        ds.SeriesNumber, ds.InstanceNumber = 5, s + 1
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1] if (flip_one and s == 10) else iop
        ds.ImagePositionPatient = [round(float(v), 4) for v in ipp[s]]
        ds.PixelSpacing = [pixel_spacing, pixel_spacing]
        ds.SliceThickness = step
        ds.SpacingBetweenSlices = step
        ds.Rows, ds.Columns = pixels.shape[1], pixels.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = pixels[s].tobytes()
        p = os.path.join(out_dir, f"IM{s:04d}.dcm")
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--contrast", default="t1", choices=sorted(CONTRASTS))
    ap.add_argument("--orientation", default="axial", choices=["axial", "sagittal", "coronal"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(len(write_series(a.out, a.contrast, a.orientation, a.seed)), "slices written to", a.out)
