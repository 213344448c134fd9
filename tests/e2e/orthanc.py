"""Orthanc (the Debian package) as the upstream PACS on loopback, with its own
storage directory, started and stopped by the tests."""
import json
import os
import subprocess
import time
import urllib.request

from conftest import free_port


class Orthanc:
    def __init__(self, workdir, aet="HUBPACS", extra=None):
        self.dir = str(workdir)
        os.makedirs(self.dir, exist_ok=True)
        self.aet, self.port, self.http_port = aet, free_port(), free_port()
        self.config = os.path.join(self.dir, "orthanc.json")
        self.configure(extra)
        self.proc = None

    def configure(self, extra=None):
        """(Re)writes the configuration; takes effect at the next start."""
        aet = self.aet
        with open(self.config, "w") as f:
            json.dump({
                "Name": "scanside-test-hub", "DicomAet": aet, "DicomPort": self.port,
                "HttpPort": self.http_port, "StorageDirectory": os.path.join(self.dir, "storage"),
                "IndexDirectory": os.path.join(self.dir, "index"), "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False, "DicomCheckCalledAet": True, "DicomAlwaysAllowStore": True,
                "UnknownSopClassAccepted": True, "Plugins": [], "HttpServerEnabled": True,
                "StorageCompression": False, "OverwriteInstances": True, **(extra or {}),
            }, f)

    def start(self):
        self.log = open(os.path.join(self.dir, "orthanc.log"), "a")
        self.proc = subprocess.Popen(["Orthanc", self.config], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                self.rest("/system")
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("Orthanc did not start: " + open(os.path.join(self.dir, "orthanc.log")).read()[-2000:])

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)

    def rest(self, path, raw=False):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            body = r.read()
            return body if raw else json.loads(body)

    def instances(self):
        """{SOP Instance UID: file bytes} of everything Orthanc holds."""
        out = {}
        for i in self.rest("/instances"):
            tags = self.rest(f"/instances/{i}/simplified-tags")
            out[tags["SOPInstanceUID"]] = self.rest(f"/instances/{i}/file", raw=True)
        return out
