"""Writes the hand-made malformed inputs of tests/corpus/<target>/ (the fuzz seeds
and the regression inputs `cargo test` replays). Run from the repository root with
the test venv: python tests/corpus/make_seeds.py. Inputs kept from fuzzing runs
(crash-*, found-*) sit beside these and are not rewritten."""
import io
import os
import struct
import sys

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

ROOT = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def elem_implicit(group, elem, value):
    if len(value) % 2:
        value += b"\0" if not value[:1].isalpha() else b" "
    return struct.pack("<HHI", group, elem, len(value)) + value


def command(field, msg_id=1, sop_class=b"1.2.840.10008.1.1", with_data=False, extra=b""):
    body = (elem_implicit(0, 0x0002, sop_class) + elem_implicit(0, 0x0100, struct.pack("<H", field))
            + elem_implicit(0, 0x0110, struct.pack("<H", msg_id))
            + elem_implicit(0, 0x0800, struct.pack("<H", 0x0000 if with_data else 0x0101)) + extra)
    return elem_implicit(0, 0x0000, struct.pack("<I", len(body))) + body


def pdv(pc, header, data):
    return struct.pack(">IBB", len(data) + 2, pc, header) + data


def pdata(*pdvs):
    body = b"".join(pdvs)
    return struct.pack(">BBI", 4, 0, len(body)) + body


def assoc_rq(called=b"SCANSIDE", calling=b"ECHOSCU"):
    app = b"\x10\x00" + struct.pack(">H", 21) + b"1.2.840.10008.3.1.1.1"
    abstract = b"\x30\x00" + struct.pack(">H", 17) + b"1.2.840.10008.1.1"
    ts = b"\x40\x00" + struct.pack(">H", 17) + b"1.2.840.10008.1.2"
    pc = b"\x20\x00" + struct.pack(">H", 4 + len(abstract) + len(ts)) + b"\x01\x00\x00\x00" + abstract + ts
    maxlen = b"\x51\x00\x00\x04" + struct.pack(">I", 16384)
    user = b"\x50\x00" + struct.pack(">H", len(maxlen)) + maxlen
    body = (struct.pack(">HH", 1, 0) + called.ljust(16) + calling.ljust(16) + b"\0" * 32 + app + pc + user)
    return struct.pack(">BBI", 1, 0, len(body)) + body


def pdus():
    rq = assoc_rq()
    put("pdu", "associate-rq", rq)
    put("pdu", "associate-rq-truncated", rq[:40])
    put("pdu", "associate-rq-item-overruns", rq[:74] + b"\x10\x00\xff\xff" + rq[78:])
    echo = command(0x0030)
    put("pdu", "pdata-echo", pdata(pdv(1, 0x03, echo)))
    put("pdu", "pdata-command-in-two", pdata(pdv(1, 0x01, echo[:10]), pdv(1, 0x03, echo[10:])))
    put("pdu", "pdata-empty-pdv", pdata(pdv(1, 0x03, b"")))
    put("pdu", "pdata-data-before-command", pdata(pdv(1, 0x02, b"\x08\x00\x18\x00")))
    put("pdu", "pdata-context-switch", pdata(pdv(1, 0x01, echo[:10]), pdv(3, 0x03, echo[10:])))
    put("pdu", "pdata-pdv-longer-than-pdu", struct.pack(">BBI", 4, 0, 8) + struct.pack(">IBB", 0xFFFF, 1, 3) + b"\0\0")
    put("pdu", "length-4g", struct.pack(">BBI", 4, 0, 0xFFFFFFFF))
    put("pdu", "unknown-type", struct.pack(">BBI", 0x7F, 0, 4) + b"\0\0\0\0")
    put("pdu", "release-rq", struct.pack(">BBI", 5, 0, 4) + b"\0\0\0\0")
    put("pdu", "abort", struct.pack(">BBI", 7, 0, 4) + b"\0\0\x02\x01")


def commands():
    store = command(0x0001, sop_class=b"1.2.840.10008.5.1.4.1.1.4", with_data=True,
                    extra=elem_implicit(0, 0x1000, b"1.2.3.4") + elem_implicit(0, 0x0700, b"\0\0"))
    put("command", "c-echo-rq", command(0x0030))
    put("command", "c-store-rq", store)
    put("command", "empty", b"")
    put("command", "odd-length", command(0x0030)[:-1])
    put("command", "length-past-end", command(0x0030)[:8] + struct.pack("<HHI", 0, 0x0100, 0x7FFFFFFF))
    put("command", "group-length-lies", elem_implicit(0, 0, struct.pack("<I", 2)) + command(0x0030)[12:])
    put("command", "not-group-0000", elem_implicit(8, 0x0016, b"1.2.3"))
    put("command", "field-wrong-size", elem_implicit(0, 0x0100, b"\x30"))
    put("command", "unknown-field", command(0x7777))


def instance_bytes(ts=ExplicitVRLittleEndian, pixels=True):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["seed", str(ts)])
    meta.TransferSyntaxUID = ts
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.Modality = "MR"
    ds.PatientID = "SEED"
    if pixels:
        ds.Rows = ds.Columns = 4
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = b"\0\1" * 16
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def instances():
    ok = instance_bytes()
    put("instance", "mr-explicit", ok)
    put("instance", "mr-implicit", instance_bytes(ImplicitVRLittleEndian))
    put("instance", "truncated-in-pixels", ok[:-7])
    put("instance", "truncated-in-meta", ok[:150])
    put("instance", "no-dicm", ok[:128] + b"DICX" + ok[132:])
    put("instance", "meta-length-huge", ok[:140] + struct.pack("<I", 0xFFFFFFF0) + ok[144:])
    i = ok.index(b"\x08\x00\x16\x00")
    put("instance", "element-length-past-end", ok[:i + 6] + struct.pack("<H", 0xFFFF) + ok[i + 8:])
    put("instance", "uid-with-path", ok.replace(b"1.2.826.0.1.3680043.8.498.1\0", b"../../etc/passwd\0\0\0\0\0\0\0\0\0\0\0\0"))
    sq = ok[:-(8 + 32 + 4)] + b"\x08\x00\x15\x11SQ\0\0\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    put("instance", "sequence-never-closed", sq)
    put("instance", "empty", b"")


def identifiers():
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.PatientID = "SEED*"
    q.StudyDate = "20200101-20201231"
    q.StudyInstanceUID = ""
    for implicit, name in ((False, "explicit"), (True, "implicit")):
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, implicit
        pydicom.filewriter.write_dataset(buf, q)
        put("identifier", f"study-{name}", buf.getvalue())
    put("identifier", "level-missing", b"\x10\x00\x20\x00LO\x06\x00SEED* ")
    put("identifier", "bad-date-range", b"\x08\x00\x20\x00DA\x0a\x002020-13-99" + b"\x08\x00\x52\x00CS\x06\x00STUDY ")
    put("identifier", "undefined-length-sq-unclosed", b"\x08\x00\x15\x11SQ\0\0\xff\xff\xff\xff\xfe\xff\x00\xe0\x10\x00\x00\x00")
    put("identifier", "length-past-end", b"\x10\x00\x20\x00LO\xff\xff")


def configs():
    default = open(os.path.join(ROOT, "..", "..", "firmware-config", "default.toml"), "rb").read()
    put("config", "default", default)
    put("config", "truncated", default[: len(default) // 2])
    put("config", "unknown-key", b"[dicom]\nae_titel = \"X\"\n")
    put("config", "wrong-types", b"[dicom]\nae_title = 7\nlisten = []\n[storage]\nmin_free_bytes = -1\n")
    put("config", "bad-cidr", b"[[dicom.allowed_peers]]\nae_title = \"A\"\naddress = \"10.0.0.0/99\"\n")
    put("config", "not-utf8", b"[dicom]\nae_title = \"\xff\xfe\"\n")
    put("config", "deep-nesting", b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n")


def manifests():
    m = open(os.path.join(ROOT, "..", "..", "models", "brats-synth-unet", "manifest.toml"), "rb").read()
    put("manifest", "shipped", m)
    put("manifest", "truncated", m[: len(m) // 3])
    put("manifest", "empty", b"")
    put("manifest", "huge-shape", m.replace(b"[", b"[999999999, ", 1))
    put("manifest", "not-utf8", b"\xc3\x28 = 1\n")


if __name__ == "__main__":
    for f in (pdus, commands, instances, identifiers, configs, manifests):
        f()
    print("written under", ROOT, file=sys.stderr)
