"""No patient identifier in the log at info level: a full run (a processed case,
a refused series, forwarding with a refusal, queries that match and queries that
are refused) and the whole log is searched for the synthetic patients' names,
IDs and birth dates."""
import re

import pydicom

import brain
import synth
from conftest import free_port
from test_forward import FINAL, wait_outbox
from test_qr import assoc, find, query
from test_segmentation import send, wait_state

NAME, PID, BIRTH = "Phitest^Philippa", "PHI-731946", "19650412"  # brain.py's birth date
NAME2, PID2 = "Leakcheck^Lars", "PHI-555123"


def test_a_full_run_logs_no_patient_identifier(daemon_factory, tmp_path):
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import EnhancedSRStorage, BasicTextSRStorage
    ae = AE(ae_title="NOSEGPACS")
    ae.add_supported_context(EnhancedSRStorage)
    ae.add_supported_context(BasicTextSRStorage)
    port = free_port()
    scp = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda e: 0)])
    try:
        d = daemon_factory(upstream=[{"ae_title": '"NOSEGPACS"', "host": '"127.0.0.1"', "port": str(port),
                                      "max_tries": "1", "retry_initial_s": "0.3"}])
        d.start(env={"SCANSIDE_LOG": "info"})
        d.wait_model()
        paths = brain.write_series(str(tmp_path / "s"), "t2", "axial", seed=3, patient_id=PID, patient_name=NAME)
        assert pydicom.dcmread(paths[0], stop_before_pixels=True).PatientBirthDate == BIRTH
        wait_state(d, send(d, paths), FINAL)
        bad = synth.make_series(str(tmp_path / "bad"), n=10, rows=32, cols=32, patient_id=PID2, patient_name=NAME2)
        wait_state(d, send(d, bad), ("rejected",))
        wait_outbox(d, lambda e: all(x["state"] in ("delivered", "dead") for x in e) and len(e) == 4)
        a = assoc(d)
        try:
            for ds in (query("STUDY", PatientName="Phitest*", PatientID=""),
                       query("STUDY", PatientID=PID, PatientBirthDate=""),
                       query("STUDY", PatientBirthDate=BIRTH[:6]),           # refused: not a date
                       query("STUDY", PatientName="", PatientBirthDate=f"{BIRTH}-x")):
                find(a, ds)
        finally:
            a.release()
        d.stop()
        log = d.read_log()
        assert "query/retrieve request refused" in log  # the refusals were logged...
        for phi in (NAME, NAME.split("^")[0], PID, BIRTH, BIRTH[:6], NAME2, PID2):
            assert not re.search(re.escape(phi), log, re.IGNORECASE), f"{phi!r} is in the log"
    finally:
        scp.shutdown()
