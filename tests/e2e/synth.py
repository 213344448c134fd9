"""Synthetic MR series written as real DICOM files (pydicom), for transport tests.

The anatomy-based brain series with tumours come with the segmentation issue; for
the receiver a plausible MR header and 16-bit pixels are what matter.
"""
import os

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

ROOT = "2.25."  # generate_uid() makes 2.25 UUID-derived UIDs


def make_series(out_dir, n=20, rows=64, cols=64, images_in_acquisition=True,
                study_uid=None, series_uid=None, description="T1 MPRAGE brain",
                patient_name="Synthetic^Patient", patient_id="SYN0001", seed=0,
                spacing=1.0, thickness=None, acquisition="3D", pixel_spacing=1.0,
                iop=(1, 0, 0, 0, 1, 0), tweak=None):
    """Writes n slices; returns their paths in slice order.

    The header is that of a 3 T T1 MPRAGE of the head, so a series of head size
    (e.g. 256x256 at 1 mm, 120+ slices) passes the gate's header and geometry stages.
    `tweak(i, ds)` may change any slice before it is written (degraded variants)."""
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    yy, xx = np.mgrid[0:rows, 0:cols]
    ellipse = ((yy - rows / 2) / (rows * 0.4)) ** 2 + ((xx - cols / 2) / (cols * 0.33)) ** 2 <= 1
    paths = []
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        sop_uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "MR"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19700101"
        ds.StudyDate = "20261201"
        ds.StudyDescription = "MRI BRAIN WITH CONTRAST"
        ds.SeriesDescription = description
        ds.BodyPartExamined = "BRAIN"
        ds.SeriesNumber = 3
        ds.InstanceNumber = i + 1
        if images_in_acquisition:
            ds.ImagesInAcquisition = n
        ds.Manufacturer = "SYNTHETIC"
        ds.ManufacturerModelName = "scanside-synth"
        ds.MagneticFieldStrength = 3
        ds.ScanningSequence = ["GR", "IR"]
        ds.SequenceVariant = ["SP", "MP"]
        ds.MRAcquisitionType = acquisition
        ds.RepetitionTime = 2300
        ds.EchoTime = 2.3
        ds.InversionTime = 900
        ds.ImageOrientationPatient = list(iop)
        row, col = np.array(iop[:3], float), np.array(iop[3:], float)
        normal = np.cross(row, col)
        origin = -row * cols * pixel_spacing / 2 - col * rows * pixel_spacing / 2
        ds.ImagePositionPatient = [float(x) for x in origin + normal * i * spacing]
        ds.PixelSpacing = [pixel_spacing, pixel_spacing]
        ds.SliceThickness = thickness if thickness is not None else spacing
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        img = (ellipse * 900 + rng.normal(100, 20, (rows, cols))).clip(0, 4095).astype(np.uint16)
        ds.PixelData = img.tobytes()
        if tweak:
            tweak(i, ds)
        p = os.path.join(out_dir, f"slice{i:04d}.dcm")
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def dataset_bytes(path):
    """The data set of a Part 10 file as it goes on the wire (after the meta group)."""
    with open(path, "rb") as f:
        b = f.read()
    assert b[128:132] == b"DICM", path
    # (0002,0000) UL, explicit VR: tag 4 + VR 2 + length 2 + value 4.
    group_len = int.from_bytes(b[140:144], "little")
    return b[144 + group_len:]
