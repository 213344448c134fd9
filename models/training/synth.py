"""Domain-randomised synthetic brain-tumour cases for training and evaluation.

Anatomy comes from the MNI ICBM152 2009a template shipped in nilearn's wheel (its
T1, grey- and white-matter maps). Each case draws: a random affine and elastic
deformation, a random contrast (tissue intensities, 90% of the time near T1/T1c/T2/
FLAIR, otherwise anything that keeps the tumour visible), one or two tumours
with necrotic core / enhancing rim / oedema of random size and shape, a bias field,
resolution loss along a random axis, blur and Rician noise.

Arrays are on the model grid: (z, y, x) in DICOM patient space (LPS), each axis
increasing, at SPACING mm. Labels follow BraTS: 1 necrotic core, 2 oedema,
3 enhancing tumour.
"""
import functools
import os

import nibabel as nib
import numpy as np
from scipy import ndimage

SPACING = 2.0


@functools.lru_cache(maxsize=1)
def template():
    """(t1, gm, wm) in [0, 1] on the model grid at SPACING mm (LPS, z-y-x)."""
    import nilearn
    d = os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data")
    out = []
    for name in ("t1", "gm", "wm"):
        a = np.asarray(nib.load(os.path.join(d, f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz")).get_fdata(), np.float32) / 255.0
        # RAS voxel (i, j, k) -> LPS-increasing (k, -j, -i)
        a = a[::-1, ::-1, :].transpose(2, 1, 0)
        f = int(SPACING)
        pad = [(0, (-s) % f) for s in a.shape]
        a = np.pad(a, pad)
        a = a.reshape(a.shape[0] // f, f, a.shape[1] // f, f, a.shape[2] // f, f).mean((1, 3, 5))
        out.append(np.ascontiguousarray(a))
    return tuple(out)


def _smooth_field(rng, shape, n=4):
    """A smooth random field in about [-1, 1]."""
    # cubic up to a quarter of the size, then linear: as smooth, 50x faster
    mid = [max(s // 4, n) for s in shape]
    f = ndimage.zoom(rng.normal(0, 1, (n, n, n)), [m / n for m in mid], order=3)
    f = ndimage.zoom(f, [s / m for s, m in zip(shape, f.shape)], order=1)
    f = f[: shape[0], : shape[1], : shape[2]]
    return f / (np.abs(f).max() + 1e-6)


def _deform(rng, arrays):
    """Random rotation (+-20 deg), scaling, shift and an elastic displacement."""
    shape = arrays[0].shape
    ang = np.deg2rad(rng.uniform(-20, 20, 3))
    rot = np.eye(3)
    for ax, a in enumerate(ang):
        c, s = np.cos(a), np.sin(a)
        i, j = [k for k in range(3) if k != ax]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rot = rot @ r
    m = rot @ np.diag(rng.uniform(0.88, 1.12, 3))
    centre = np.array(shape) / 2.0
    offset = centre - m @ centre + rng.uniform(-3, 3, 3)
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    coords = (m @ grid + offset[:, None]).reshape(3, *shape)
    amp = rng.uniform(0, 2.0)  # voxels
    for a in range(3):
        coords[a] += amp * _smooth_field(rng, shape, 5)
    return [ndimage.map_coordinates(x, coords, order=1, mode="constant") for x in arrays]


def _tumour(rng, brain, wm):
    """Labels of one tumour placed in white matter."""
    shape = brain.shape
    idx = np.argwhere(wm > 0.6)
    c = idx[rng.integers(len(idx))]
    r = rng.uniform(3.0, 13.0) / SPACING * 2  # enhancing-rim radius in voxels (6-26 mm)
    scale = rng.uniform(0.75, 1.3, 3)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    d = np.sqrt(((zz - c[0]) * scale[0]) ** 2 + ((yy - c[1]) * scale[1]) ** 2 + ((xx - c[2]) * scale[2]) ** 2)
    d = d * (1 + 0.22 * _smooth_field(rng, shape, 6))  # irregular outline
    f_oedema = rng.choice([1.0, rng.uniform(1.2, 2.3)], p=[0.15, 0.85])
    f_core = rng.choice([0.0, rng.uniform(0.3, 0.75)], p=[0.25, 0.75])
    lab = np.zeros(shape, np.uint8)
    lab[(d < r * f_oedema) & (brain > 0.25)] = 2
    lab[d < r] = 3
    if rng.random() < 0.15:  # non-enhancing tumour: the solid part is label 1
        lab[d < r] = 1
    lab[d < r * f_core] = 1
    return lab


PRESETS = {  # wm, gm, csf, other, necrosis, enhancing, oedema
    "t1": (1.0, 0.62, 0.22, 0.9, 0.25, 0.5, 0.45),
    "t1c": (1.0, 0.62, 0.22, 0.9, 0.22, 1.45, 0.45),
    "t2": (0.42, 0.62, 1.0, 0.6, 1.1, 0.72, 0.9),
    "flair": (0.5, 0.75, 0.08, 0.5, 0.4, 0.85, 1.2),
}


def _contrast(rng):
    if rng.random() < 0.9:
        base = np.array(PRESETS[rng.choice(list(PRESETS))])
        mu = np.clip(base * rng.uniform(0.85, 1.15, 7), 0.02, 2.0)
    else:
        mu = rng.uniform(0.02, 1.2, 7)
    wm, gm, csf, other, nec, enh, oed = mu
    # Keep every tumour compartment visible against what surrounds it.
    ok = abs(oed - wm) > 0.12 and abs(oed - gm) > 0.08 and abs(enh - oed) > 0.1 and abs(enh - wm) > 0.12 and abs(nec - enh) > 0.1
    return mu if ok else _contrast(rng)


def case(seed):
    """(image float32, labels uint8) of one synthetic case on the model grid."""
    rng = np.random.default_rng(seed)
    t1, gm, wm = template()
    head = ndimage.binary_fill_holes(t1 > 0.05).astype(np.float32)
    t1, gm, wm, head = _deform(rng, [t1, gm, wm, head])
    head = head > 0.5
    brain = np.clip(gm + wm, 0, 1)
    intracranial = ndimage.binary_dilation(ndimage.binary_fill_holes(brain > 0.3), iterations=1)
    csf = np.clip(1 - brain, 0, 1) * intracranial
    other = head & ~intracranial
    labels = np.zeros(t1.shape, np.uint8)
    if rng.random() < 0.88:
        for _ in range(1 if rng.random() < 0.85 else 2):
            lab = _tumour(rng, brain, wm)
            labels = np.where(lab > 0, lab, labels)
    mu_wm, mu_gm, mu_csf, mu_other, mu_nec, mu_enh, mu_oed = _contrast(rng)
    img = wm * mu_wm + gm * mu_gm + csf * mu_csf + other * t1 * mu_other / max(float(t1[other].mean()) if other.any() else 1.0, 1e-3)
    img = img * (1 + 0.05 * _smooth_field(rng, img.shape, 12))
    tum = np.zeros_like(img)
    for lab, mu in ((1, mu_nec), (2, mu_oed), (3, mu_enh)):
        tum[labels == lab] = mu
    weight = ndimage.gaussian_filter((labels > 0).astype(np.float32), rng.uniform(0.3, 0.8))
    tum = ndimage.gaussian_filter(tum, 0.5)
    img = np.where(labels > 0, tum, img * (1 - weight) + tum * weight)
    img = img * np.exp(rng.uniform(0, 0.4) * _smooth_field(rng, img.shape, 3))
    if rng.random() < 0.5:  # thick slices along a random axis
        ax, f = rng.integers(3), rng.uniform(1.3, 3.0)
        sig = [0.0, 0.0, 0.0]
        sig[ax] = f / 2.3
        img = ndimage.gaussian_filter(img, sig)
        z = [1.0, 1.0, 1.0]
        z[ax] = 1 / f
        small = ndimage.zoom(img, z, order=1)
        img = ndimage.zoom(small, [a / b for a, b in zip(img.shape, small.shape)], order=1)
    img = ndimage.gaussian_filter(img, rng.uniform(0, 0.6))
    sigma = rng.uniform(0.005, 0.06) * float(np.percentile(img[head], 99))
    img = np.sqrt((img + rng.normal(0, sigma, img.shape)) ** 2 + rng.normal(0, sigma, img.shape) ** 2)
    img = img * rng.uniform(50, 3000)
    return img.astype(np.float32), labels


def normalise(img, low=0.5, high=99.5):
    """The manifest's "percentile" normalisation: low percentile -> 0, high -> 1 (nearest rank)."""
    v = np.sort(img.ravel())
    lo = v[int(round(low / 100 * (v.size - 1)))]
    hi = v[int(round(high / 100 * (v.size - 1)))]
    return ((img - lo) / max(hi - lo, 1e-6)).astype(np.float32)
