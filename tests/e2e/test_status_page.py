"""The technician's status page in headless Chromium (Debian's, driven by
playwright): against a daemon that processed two visits of one patient and
refused a series, with an upstream that refuses SEG. Screenshots and a printed
PDF are kept in tests/e2e/artifacts/."""
import os
import shutil
import time

import pytest
from playwright.sync_api import sync_playwright
from pynetdicom import AE, evt
from pynetdicom.sop_class import (BasicTextSRStorage, EnhancedSRStorage, SecondaryCaptureImageStorage,
                                  SegmentationStorage)

import brain
import synth
from conftest import Daemon, free_port
from test_forward import FINAL, TOKEN, wait_outbox
from test_segmentation import send, wait_state

ARTIFACTS = os.path.join(os.path.dirname(__file__), "artifacts")


class Pacs:
    """A pynetdicom storage SCP; without SEG until `fixed`."""

    def __init__(self):
        self.port, self.got, self.server = free_port(), [], None
        self.start(with_seg=False)

    def start(self, with_seg):
        ae = AE(ae_title="NOSEGPACS")
        for c in (EnhancedSRStorage, SecondaryCaptureImageStorage, BasicTextSRStorage) + \
                ((SegmentationStorage,) if with_seg else ()):
            ae.add_supported_context(c)

        def on_store(event):
            self.got.append(event.request.AffectedSOPInstanceUID)
            return 0x0000
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, on_store)])

    def fix(self):
        self.server.shutdown()
        self.start(with_seg=True)


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("page")
    pacs = Pacs()
    d = Daemon(tmp / "d", http_token=TOKEN, upstream=[{
        "ae_title": '"NOSEGPACS"', "host": '"127.0.0.1"', "port": str(pacs.port),
        "max_tries": "1", "retry_initial_s": "0.3", "retry_max_s": "1.0"}]).start()
    d.wait_model()
    jobs = []
    for seed, date in ((3, "20261001"), (5, "20261115")):
        paths = brain.write_series(str(tmp / f"v{seed}"), "t2", "axial", seed=seed, patient_id="PAGE-0001",
                                   patient_name="Pagetest^Paula", study_date=date)
        jobs.append(wait_state(d, send(d, paths), FINAL))
    bad = synth.make_series(str(tmp / "bad"), n=20, rows=32, cols=32, patient_id="PAGE-0002",
                            patient_name="Refused^Rita")
    refused = wait_state(d, send(d, bad), ("rejected",))
    wait_outbox(d, lambda e: sum(x["state"] == "dead" for x in e) == 2 and
                all(x["state"] in ("dead", "delivered") for x in e))
    yield {"d": d, "pacs": pacs, "jobs": jobs, "refused": refused}
    d.stop()
    pacs.server.shutdown()


@pytest.fixture(scope="module")
def browser():
    exe = shutil.which("chromium")
    assert exe, "Debian's chromium is needed (tests/run installs it)"
    os.makedirs(ARTIFACTS, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield b
        b.close()


def open_page(browser, d):
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.goto(f"http://127.0.0.1:{d.http_port}/")
    page.wait_for_selector("tr.job")
    page.wait_for_selector("svg.chart circle.point")
    return page


def test_the_page_shows_jobs_refusals_links_and_the_trend(box, browser):
    d = box["d"]
    page = open_page(browser, d)
    try:
        assert page.locator("tr.job").count() == 3
        # The refused series with its reasons in plain words, as the gate wrote them.
        row = page.locator(f'tr.job[data-job="{box["refused"]["id"]}"]')
        assert "rejected" in row.inner_text()
        for st in box["refused"]["gate"]["stages"]:
            for r in st["reasons"]:
                assert r["message"] in row.inner_text()
        # Upstream state, dead letters with their reason.
        ups = page.locator("#upstreams").inner_text()
        assert "NOSEGPACS" in ups and "up" in ups
        assert page.locator("tr.dead-letter").count() == 2
        assert "accepts no presentation context" in page.locator("#dead").inner_text()
        # One patient with two visits: two points; the key-slice picture loads.
        patients = page.locator("div.patient")
        assert patients.count() == 1
        assert patients.locator("svg.chart circle.point").count() == 2
        assert patients.locator("polyline.threshold").count() == 1
        page.wait_for_function("document.querySelector('div.patient img').naturalWidth > 0")
        # The model and stage timings are shown; no patient identifier without the token.
        assert "model" in page.locator("header").inner_text()
        body = page.content()
        for phi in ("Pagetest", "PAGE-0001", "Refused^Rita", "PAGE-0002"):
            assert phi not in body
        page.screenshot(path=os.path.join(ARTIFACTS, "status-1366x768.png"), full_page=True)
        page.emulate_media(media="print")
        assert not page.locator("#token").is_visible()
        page.pdf(path=os.path.join(ARTIFACTS, "status-printed.pdf"))
    finally:
        page.close()


def test_the_token_shows_patients_and_replay_requeues_a_dead_letter(box, browser):
    d = box["d"]
    page = open_page(browser, d)
    try:
        # Replay without the token is refused by the page itself.
        page.locator("button.replay").first.click()
        assert "token" in page.locator("#replay-msg").inner_text()
        page.fill("#token", TOKEN)
        page.click("#token-set")
        page.wait_for_function("document.body.innerText.includes('Pagetest')")
        assert "PAGE-0001" in page.locator("#jobs").inner_text()
        # Fix the PACS, then replay from the page: the SEG goes and the row leaves.
        box["pacs"].fix()
        dead = [e for e in d.get_json("/api/v1/outbox")[1] if e["state"] == "dead"]
        page.locator("button.replay").first.click()
        page.wait_for_function("document.querySelector('#replay-msg').innerText.includes('Replayed')")
        entries = wait_outbox(d, lambda e: sum(x["state"] == "dead" for x in e) == 1)
        replayed = [e for e in entries if e["seq"] in {x["seq"] for x in dead} and e["state"] != "dead"]
        assert len(replayed) == 1
        deadline = time.time() + 30
        while replayed[0]["sop_instance_uid"] not in box["pacs"].got:
            assert time.time() < deadline
            time.sleep(0.3)
        page.wait_for_function("document.querySelectorAll('tr.dead-letter').length === 1")
        page.screenshot(path=os.path.join(ARTIFACTS, "status-with-token.png"), full_page=True)
    finally:
        page.close()
