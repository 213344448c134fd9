"""kill -9 while storescu is sending, in a loop: whatever got 0000 survives, indexed."""
import os
import random
import re
import subprocess
import time

import pydicom

from synth import make_series

ROUNDS = int(os.environ.get("SCANSIDE_KILL_ROUNDS", "20"))


def acknowledged(storescu_output, paths):
    """Files that storescu saw answered with Success, in send order."""
    acked, current = [], None
    for line in storescu_output.splitlines():
        m = re.search(r"Sending file: (\S+)", line)
        if m:
            current = m.group(1)
        elif "Received Store Response (Success)" in line and current:
            acked.append(current)
            current = None
    assert set(acked) <= set(paths)
    return acked


def test_kill9_while_sending_loses_nothing_acknowledged(daemon_factory, tmp_path):
    rng = random.Random(1234)
    d = daemon_factory()
    all_acked = {}
    for rnd in range(ROUNDS):
        paths = make_series(tmp_path / f"r{rnd}", n=40, rows=128, cols=128, seed=rnd)
        d.start()
        p = subprocess.Popen(["storescu", "-v", "-aec", "SCANSIDE", "127.0.0.1", str(d.port)] + paths,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(rng.uniform(0.02, 0.6))
        d.kill9()
        out, _ = p.communicate(timeout=30)
        for f in acknowledged(out, paths):
            all_acked[pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID] = f
    # Restart once more and check everything acknowledged in any round.
    d.start()
    on_disk = {os.path.basename(f)[:-4] for f in d.spool_files()}
    missing = set(all_acked) - on_disk
    assert not missing, f"{len(missing)} acknowledged instances lost"
    by_series = {}
    for uid, f in all_acked.items():
        by_series.setdefault(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID, set()).add(uid)
    for series, uids in by_series.items():
        code, s = d.get_json(f"/api/v1/series/{series}")
        assert code == 200, s
        indexed = {i["sop_instance_uid"] for i in s["instances"]}
        assert uids <= indexed, f"{len(uids - indexed)} acknowledged instances not indexed"
    assert d.tmp_files() == []
    assert len(all_acked) > ROUNDS, "the kills came too early to test anything"
    print(f"{ROUNDS} rounds, {len(all_acked)} acknowledged instances, all on disk and indexed")


def test_index_rebuilt_when_deleted(daemon_factory, tmp_path):
    d = daemon_factory().start()
    paths = make_series(tmp_path / "s", n=10)
    r = subprocess.run(["storescu", "-aec", "SCANSIDE", "127.0.0.1", str(d.port)] + paths, capture_output=True)
    assert r.returncode == 0
    d.wait_jobs(1)
    d.stop()
    import shutil
    shutil.rmtree(os.path.join(d.data_dir, "index"))
    d.start()
    series = pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID
    code, s = d.get_json(f"/api/v1/series/{series}")
    assert code == 200 and len(s["instances"]) == 10
    assert "index rebuilt" in d.read_log()


def test_index_rebuilt_when_corrupt(daemon_factory, tmp_path):
    d = daemon_factory().start()
    paths = make_series(tmp_path / "s", n=8)
    assert subprocess.run(["storescu", "-aec", "SCANSIDE", "127.0.0.1", str(d.port)] + paths).returncode == 0
    d.stop()
    index = os.path.join(d.data_dir, "index")
    for name in os.listdir(index):
        full = os.path.join(index, name)
        if os.path.isfile(full):
            with open(full, "r+b") as f:
                f.write(os.urandom(4096))
    d.start()
    series = pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID
    code, s = d.get_json(f"/api/v1/series/{series}")
    assert code == 200 and len(s["instances"]) == 8
    assert len(d.spool_files()) == 8
