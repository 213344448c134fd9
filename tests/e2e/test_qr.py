"""Query/retrieve for radiology: DCMTK findscu/getscu/movescu and pynetdicom query
our results and the kept sources at each level (study root), retrieve them by
C-GET and C-MOVE, and get the right failure for a bad request, on an association
that stays usable."""
import glob
import os
import subprocess
import threading
import time

import pydicom
import pytest
from pydicom.dataset import Dataset as _Dataset
from pynetdicom import AE, build_role, evt, StoragePresentationContexts
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind as FIND,
    StudyRootQueryRetrieveInformationModelGet as GET,
    StudyRootQueryRetrieveInformationModelMove as MOVE,
    Verification,
)

import brain


def Dataset(**kw):
    ds = _Dataset()
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


import rawdicom
from conftest import Daemon, free_port, run
from test_segmentation import send, wait_state

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
ESR = "1.2.840.10008.5.1.4.1.1.88.22"
SC = "1.2.840.10008.5.1.4.1.1.7"
MR = "1.2.840.10008.5.1.4.1.1.4"


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """A daemon holding one processed case: the MR series and its SEG, SR, picture."""
    tmp = tmp_path_factory.mktemp("qr")
    moves = {"RADIOLOGY": free_port(), "SLOWSCP": free_port(), "NOBODY": free_port()}
    d = Daemon(tmp / "daemon", move_destinations=list(moves.items())).start()
    d.wait_model()
    paths = brain.write_series(str(tmp / "s"), "t2", "axial", seed=5,
                               patient_name="Müller^Anna", patient_id="QR-0001",
                               study_date="20261115")
    job = wait_state(d, send(d, paths), ("written", "failed"))
    assert job["state"] == "written", job
    src = pydicom.dcmread(paths[0], stop_before_pixels=True)
    results = {o["kind"]: o for o in job["result_objects"]}
    yield {"d": d, "paths": paths, "src": src, "results": results, "moves": moves, "tmp": tmp}
    d.stop()


def assoc(d, contexts=(FIND, GET, MOVE, Verification), roles=(), aet="RADWS"):
    ae = AE(ae_title=aet)
    for c in contexts:
        ae.add_requested_context(c)
    ext = []
    for c in roles:
        ae.add_requested_context(c)
        ext.append(build_role(c, scp_role=True))
    a = ae.associate("127.0.0.1", d.port, ae_title="SCANSIDE", ext_neg=ext)
    assert a.is_established
    return a


def query(level, **keys):
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def find(a, ds):
    """(final status, [identifiers]) of one C-FIND."""
    out, final = [], None
    for st, ident in a.send_c_find(ds, FIND):
        assert st, "no response (association dropped?)"
        if st.Status in (0xFF00, 0xFF01):
            out.append(ident)
        else:
            final = st
    return final, out


def result_file(box, kind):
    return os.path.join(box["d"].data_dir, box["results"][kind]["path"])


def findscu(box, *keys, level):
    out = box["tmp"] / f"find-{time.time_ns()}"
    out.mkdir()
    args = ["findscu", "-S", "-X", "-od", str(out), "-aec", "SCANSIDE", "-aet", "RADWS",
            "-k", f"QueryRetrieveLevel={level}"]
    for k in keys:
        args += ["-k", k]
    r = run(args + ["127.0.0.1", str(box["d"].port)])
    assert r.returncode == 0, r.stdout + r.stderr
    return [pydicom.dcmread(f) for f in sorted(glob.glob(str(out / "rsp*.dcm")))]


def test_findscu_at_study_level_counts_sources_and_results(box):
    study = box["src"].StudyInstanceUID
    rsp = findscu(box, f"StudyInstanceUID={study}", "PatientID=", "PatientName=",
                  "ModalitiesInStudy=", "NumberOfStudyRelatedSeries=",
                  "NumberOfStudyRelatedInstances=", "StudyDate=", level="STUDY")
    assert len(rsp) == 1
    r = rsp[0]
    assert r.StudyInstanceUID == study and r.PatientID == "QR-0001"
    assert str(r.PatientName) == "Müller^Anna"
    assert set(r.ModalitiesInStudy) >= {"MR", "SEG", "SR"}
    # The MR series, and our SEG, SR and picture series.
    assert int(r.NumberOfStudyRelatedSeries) == 4
    assert int(r.NumberOfStudyRelatedInstances) == len(box["paths"]) + 3
    assert r.RetrieveAETitle == "SCANSIDE"


def test_findscu_at_series_and_image_level(box):
    study = box["src"].StudyInstanceUID
    rsp = findscu(box, f"StudyInstanceUID={study}", "SeriesInstanceUID=", "Modality=",
                  "NumberOfSeriesRelatedInstances=", "SeriesNumber=", level="SERIES")
    by_mod = {r.Modality: r for r in rsp}
    assert set(by_mod) == {"MR", "SEG", "SR", "OT"}, [r.Modality for r in rsp]
    assert int(by_mod["MR"].NumberOfSeriesRelatedInstances) == len(box["paths"])
    assert int(by_mod["SEG"].NumberOfSeriesRelatedInstances) == 1
    seg = box["results"]["seg"]
    rsp = findscu(box, f"StudyInstanceUID={study}", f"SeriesInstanceUID={seg['series_uid']}",
                  "SOPInstanceUID=", "SOPClassUID=", "InstanceNumber=", level="IMAGE")
    assert [(r.SOPInstanceUID, r.SOPClassUID) for r in rsp] == [(seg["sop_instance_uid"], SEG)]


@pytest.mark.parametrize("keys,expect", [
    ({"PatientName": "müller*"}, 1),          # wildcard, names without case
    ({"PatientName": "Schmidt*"}, 0),
    ({"StudyDate": "20261101-20261130"}, 1),  # range
    ({"StudyDate": "20261201-"}, 0),
    ({"StudyDate": "-20261115"}, 1),
    ({"PatientID": "QR-000?"}, 1),
    ({"PatientID": "QR-0001"}, 1),            # single value
    ({"PatientID": "QR-00"}, 0),
])
def test_pynetdicom_study_matching(box, keys, expect):
    a = assoc(box["d"])
    try:
        final, ids = find(a, query("STUDY", StudyInstanceUID="", **keys))
        assert final.Status == 0x0000
        assert len(ids) == expect, keys
    finally:
        a.release()


def test_uid_list_matching_at_image_level(box):
    study = box["src"].StudyInstanceUID
    sops = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in box["paths"][:3]]
    a = assoc(box["d"])
    try:
        final, ids = find(a, query("IMAGE", StudyInstanceUID=study, SeriesInstanceUID=box["src"].SeriesInstanceUID,
                                   SOPInstanceUID=sops + ["1.2.3.999"], InstanceNumber=""))
        assert final.Status == 0x0000
        assert sorted(i.SOPInstanceUID for i in ids) == sorted(sops)
        # Without the series, the study's instances of every series: sources and results.
        final, ids = find(a, query("IMAGE", StudyInstanceUID=study, SOPInstanceUID="", SOPClassUID=SEG))
        assert [i.SOPInstanceUID for i in ids] == [box["results"]["seg"]["sop_instance_uid"]]
    finally:
        a.release()


@pytest.mark.parametrize("ds,status,comment", [
    (query("PATIENT", PatientID=""), 0xA900, "QueryRetrieveLevel"),
    (Dataset(PatientID="QR-0001"), 0xA900, "QueryRetrieveLevel"),
    (query("STUDY", StudyDate="2026-11"), 0xA900, "(0008,0020)"),
    (query("SERIES", StudyInstanceUID="1.2.x.3"), 0xA900, "(0020,000D)"),
])
def test_a_malformed_identifier_gets_a_failure_and_the_association_lives(box, ds, status, comment):
    a = assoc(box["d"])
    try:
        final, ids = find(a, ds)
        assert ids == [] and final.Status == status
        assert comment in final.ErrorComment
        # Still usable: an echo and a good query on the same association.
        assert a.send_c_echo().Status == 0
        final, ids = find(a, query("STUDY", StudyInstanceUID=box["src"].StudyInstanceUID))
        assert final.Status == 0 and len(ids) == 1
    finally:
        a.release()


def test_an_identifier_that_does_not_parse_gets_c000(box):
    c = rawdicom.Conn("127.0.0.1", box["d"].port)
    t, _ = c.associate(contexts=[(1, FIND, [rawdicom.EXPLICIT_LE])])
    assert t == 2
    rq = rawdicom.command({0x0002: FIND, 0x0100: 0x0020, 0x0110: 7, 0x0700: 0, 0x0800: 0x0000})
    # An element claiming more bytes than there are.
    garbage = b"\x08\x00\x52\x00CS\x40\x00STUDY"
    c.send(rawdicom.pdata([(1, True, True, rq)]))
    c.send(rawdicom.pdata([(1, False, True, garbage)]))
    rsp = c.response()
    assert rawdicom.status_of(rsp) == 0xC000, rsp
    assert b"does not parse" in rsp[0x0902]
    c.send(rawdicom.pdata([(1, True, True, rq)]))
    c.send(rawdicom.pdata([(1, False, True, explicit_element(0x0008, 0x0052, b"CS", b"STUDY "))]))
    rsp = c.response()
    assert rawdicom.status_of(rsp) in (0xFF00, 0x0000)
    c.abort()


def explicit_element(group, elem, vr, value):
    import struct
    return struct.pack("<HH", group, elem) + vr + struct.pack("<H", len(value)) + value


def received_by_get(box, level, **keys):
    """C-GET with pynetdicom taking the SCP role: (final status, {sop: dataset})."""
    got = {}

    def on_store(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        got[ds.SOPInstanceUID] = ds
        return 0x0000

    ae = AE(ae_title="RADWS")
    ae.add_requested_context(GET)
    ext = []
    for c in (MR, SEG, ESR, SC):
        ae.add_requested_context(c)
        ext.append(build_role(c, scp_role=True))
    a = ae.associate("127.0.0.1", box["d"].port, ae_title="SCANSIDE", ext_neg=ext,
                     evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert a.is_established
    final = None
    try:
        for st, ident in a.send_c_get(query(level, **keys), GET):
            assert st
            if st.Status != 0xFF00:
                final = st
    finally:
        a.release()
    return final, got


def same_values(a, b):
    """Same tags and values at every depth, whatever the VRs were on the wire."""
    if [e.tag for e in a] != [e.tag for e in b]:
        return False
    for x, y in zip(a, b):
        if y.VR == "SQ":
            if len(x.value) != len(y.value) or not all(same_values(i, j) for i, j in zip(x.value, y.value)):
                return False
        elif x.value != y.value:
            return False
    return True


def test_pynetdicom_c_get_retrieves_seg_and_sr_element_equal(box):
    study = box["src"].StudyInstanceUID
    seg, sr = box["results"]["seg"], box["results"]["sr"]
    final, got = received_by_get(box, "IMAGE", StudyInstanceUID=study,
                                 SeriesInstanceUID=seg["series_uid"],
                                 SOPInstanceUID=seg["sop_instance_uid"])
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 1
    theirs = got[seg["sop_instance_uid"]]
    # pynetdicom proposes implicit VR first, so the SEG was re-encoded from the
    # explicit VR it is stored in: every value is the same (Pixel Data reads back
    # as OW without its VR on the wire).
    assert theirs.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert same_values(theirs, pydicom.dcmread(result_file(box, "seg")))
    final, got = received_by_get(box, "SERIES", StudyInstanceUID=study,
                                 SeriesInstanceUID=sr["series_uid"])
    assert final.Status == 0x0000
    assert same_values(got[sr["sop_instance_uid"]], pydicom.dcmread(result_file(box, "sr")))
    # The whole study: sources and results.
    final, got = received_by_get(box, "STUDY", StudyInstanceUID=study)
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == len(box["paths"]) + 3 == len(got)


def test_getscu_retrieves_the_seg_series(box):
    seg = box["results"]["seg"]
    out = box["tmp"] / "getscu"
    out.mkdir()
    r = run(["getscu", "-S", "-aec", "SCANSIDE", "-aet", "RADWS", "-od", str(out),
             "-k", "QueryRetrieveLevel=SERIES",
             "-k", f"StudyInstanceUID={box['src'].StudyInstanceUID}",
             "-k", f"SeriesInstanceUID={seg['series_uid']}",
             "127.0.0.1", str(box["d"].port)])
    assert r.returncode == 0, r.stdout + r.stderr
    files = glob.glob(str(out / "*"))
    assert len(files) == 1, (files, r.stdout + r.stderr)
    assert pydicom.dcmread(files[0]) == pydicom.dcmread(result_file(box, "seg"))


def test_c_get_without_the_scp_role_fails_the_suboperation(box):
    ae = AE(ae_title="RADWS")
    ae.add_requested_context(GET)
    ae.add_requested_context(SEG)  # no role selection: we may not send on it
    a = ae.associate("127.0.0.1", box["d"].port, ae_title="SCANSIDE")
    try:
        seg = box["results"]["seg"]
        res = list(a.send_c_get(query("IMAGE", StudyInstanceUID=box["src"].StudyInstanceUID,
                                      SeriesInstanceUID=seg["series_uid"],
                                      SOPInstanceUID=seg["sop_instance_uid"]), GET))
        final = res[-1][0]
        assert final.Status == 0xA702 and final.NumberOfFailedSuboperations == 1
        assert res[-1][1].FailedSOPInstanceUIDList == seg["sop_instance_uid"]
    finally:
        a.release()


def test_c_get_without_the_unique_key_is_refused(box):
    a = assoc(box["d"])
    try:
        res = list(a.send_c_get(query("SERIES", StudyInstanceUID=box["src"].StudyInstanceUID), GET))
        assert res[-1][0].Status == 0xA900
        assert "SeriesInstanceUID" in res[-1][0].ErrorComment
    finally:
        a.release()


class StoreScp:
    """DCMTK storescp as the C-MOVE destination."""

    def __init__(self, port, out):
        self.out = out
        os.makedirs(out, exist_ok=True)
        self.p = subprocess.Popen(["storescp", "-aet", "RADIOLOGY", "-od", str(out), str(port)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            if run(["echoscu", "-aec", "RADIOLOGY", "127.0.0.1", str(port)]).returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError("storescp did not start")

    def files(self):
        return {pydicom.dcmread(f).SOPInstanceUID: f for f in glob.glob(os.path.join(self.out, "*"))}

    def stop(self):
        self.p.kill()
        self.p.wait()


def test_movescu_moves_sr_and_seg_to_a_configured_destination(box):
    scp = StoreScp(box["moves"]["RADIOLOGY"], box["tmp"] / "moved")
    try:
        study = box["src"].StudyInstanceUID
        for kind in ("sr", "seg"):
            o = box["results"][kind]
            r = run(["movescu", "-S", "-aec", "SCANSIDE", "-aet", "RADWS", "-aem", "RADIOLOGY",
                     "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study}",
                     "-k", f"SeriesInstanceUID={o['series_uid']}",
                     "127.0.0.1", str(box["d"].port)])
            assert r.returncode == 0, r.stdout + r.stderr
        files = scp.files()
        for kind in ("sr", "seg"):
            o = box["results"][kind]
            assert pydicom.dcmread(files[o["sop_instance_uid"]]) == pydicom.dcmread(result_file(box, kind))
        # The MR series with pynetdicom: pending responses count down, the final one counts all.
        a = assoc(box["d"])
        try:
            res = list(a.send_c_move(query("SERIES", StudyInstanceUID=study,
                                           SeriesInstanceUID=box["src"].SeriesInstanceUID),
                                     "RADIOLOGY", MOVE))
        finally:
            a.release()
        pending = [s.NumberOfRemainingSuboperations for s, _ in res if s.Status == 0xFF00]
        assert pending == sorted(pending, reverse=True) and len(pending) >= 1
        final = res[-1][0]
        assert final.Status == 0 and final.NumberOfCompletedSuboperations == len(box["paths"])
        assert len(scp.files()) == len(box["paths"]) + 2
    finally:
        scp.stop()


def test_c_move_to_an_unknown_destination_is_a801(box):
    a = assoc(box["d"])
    try:
        res = list(a.send_c_move(query("STUDY", StudyInstanceUID=box["src"].StudyInstanceUID),
                                 "ELSEWHERE", MOVE))
        assert res[-1][0].Status == 0xA801
        assert "ELSEWHERE" in res[-1][0].ErrorComment
    finally:
        a.release()
    r = run(["movescu", "-S", "-aec", "SCANSIDE", "-aet", "RADWS", "-aem", "ELSEWHERE",
             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={box['src'].StudyInstanceUID}",
             "127.0.0.1", str(box["d"].port)])
    assert r.returncode != 0 and "MoveDestinationUnknown" in r.stderr, r.stdout + r.stderr


def test_c_move_to_a_destination_that_is_down_fails_every_suboperation(box):
    a = assoc(box["d"])
    try:
        seg = box["results"]["seg"]
        res = list(a.send_c_move(query("SERIES", StudyInstanceUID=box["src"].StudyInstanceUID,
                                       SeriesInstanceUID=seg["series_uid"]), "NOBODY", MOVE))
        final = res[-1][0]
        assert final.Status == 0xA702 and final.NumberOfFailedSuboperations == 1
        assert "NOBODY" in final.ErrorComment
        assert a.send_c_echo().Status == 0
    finally:
        a.release()


def slow_scp(port, delay):
    """A pynetdicom storage SCP that takes `delay` seconds per object."""
    got = []

    def on_store(event):
        time.sleep(delay)
        got.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    ae = AE(ae_title="SLOWSCP")
    ae.supported_contexts = StoragePresentationContexts
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    return server, got


def test_c_cancel_stops_a_c_move(box):
    server, got = slow_scp(box["moves"]["SLOWSCP"], 0.3)
    try:
        a = assoc(box["d"])
        try:
            res = []
            responses = a.send_c_move(query("SERIES", StudyInstanceUID=box["src"].StudyInstanceUID,
                                            SeriesInstanceUID=box["src"].SeriesInstanceUID), "SLOWSCP", MOVE,
                                      msg_id=11)
            for st, ident in responses:
                res.append(st)
                if st.Status == 0xFF00 and len(res) == 1:
                    a.send_c_cancel(11, None, MOVE)
            final = res[-1]
            assert final.Status == 0xFE00, final
            total = len(box["paths"])
            assert final.NumberOfCompletedSuboperations < total
            assert final.NumberOfRemainingSuboperations > 0
            assert a.send_c_echo().Status == 0
        finally:
            a.release()
        assert len(got) < len(box["paths"])
    finally:
        server.shutdown()


def test_c_cancel_stops_a_c_get(box):
    got = []

    def on_store(event):
        time.sleep(0.2)
        got.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    ae = AE(ae_title="RADWS")
    ae.add_requested_context(GET)
    ae.add_requested_context(MR)
    a = ae.associate("127.0.0.1", box["d"].port, ae_title="SCANSIDE",
                     ext_neg=[build_role(MR, scp_role=True)], evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        res = []
        for st, _ in a.send_c_get(query("SERIES", StudyInstanceUID=box["src"].StudyInstanceUID,
                                        SeriesInstanceUID=box["src"].SeriesInstanceUID), GET, msg_id=21):
            res.append(st)
            if st.Status == 0xFF00 and len(res) == 1:
                a.send_c_cancel(21, None, GET)
        assert res[-1].Status == 0xFE00
        assert 0 < len(got) < len(box["paths"])
    finally:
        a.release()


def test_query_needs_an_allowed_peer(tmp_path):
    d = Daemon(tmp_path, peers=[("RADWS", "127.0.0.1")]).start()
    try:
        ae = AE(ae_title="STRANGER")
        ae.add_requested_context(FIND)
        a = ae.associate("127.0.0.1", d.port, ae_title="SCANSIDE")
        assert a.is_rejected
        a = assoc(d, aet="RADWS")
        final, ids = find(a, query("STUDY", StudyInstanceUID=""))
        assert final.Status == 0 and ids == []
        a.release()
    finally:
        d.stop()
