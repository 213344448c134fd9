"""The image side, checked offline: the Yocto layer lints clean and pins the
crates of Cargo.lock; a RAUC bundle made with the layer's compatible string and
format, signed with test keys, verifies under the image's system.conf and a
flipped payload byte fails `rauc extract`; the RAUC boot backend drives a
stand-in nvbootctrl (the Jetson's bootloader cannot run here); the shell
scripts pass shellcheck; minisign signatures round-trip."""
import os
import re
import shutil
import subprocess
import sys

from conftest import BIN, run
from test_segmentation import ROOT

YOCTO = os.path.join(ROOT, "yocto")
LAYER = os.path.join(YOCTO, "meta-scanside")
RAUC = os.path.join(LAYER, "recipes-core", "rauc", "files")


def tool(name):
    path = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    assert path, f"{name} is needed (tests/run installs it)"
    return path


def test_the_layer_lints_clean_with_oelint_adv():
    files = sorted(os.path.relpath(os.path.join(d, f), YOCTO)
                   for d, _, fs in os.walk(LAYER) for f in fs if f.endswith((".bb", ".bbappend", ".inc")))
    assert len(files) >= 8, files
    r = run([tool("oelint-adv"), *files], cwd=YOCTO)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def test_the_crate_pins_match_cargo_lock():
    r = run(["python3", os.path.join(YOCTO, "scripts", "crates-inc.py")])
    assert r.returncode == 0, r.stderr
    committed = open(os.path.join(LAYER, "recipes-scanside", "scanside", "scanside-crates.inc")).read()
    assert r.stdout == committed, "run: python3 yocto/scripts/crates-inc.py > .../scanside-crates.inc"
    lock = open(os.path.join(ROOT, "Cargo.lock")).read()
    assert committed.count("crate://crates.io/") == lock.count('source = "registry+')


def bb_var(path, name):
    m = re.search(rf'^{name} = "([^"]*)"', open(path).read(), re.M)
    assert m, f"{name} in {path}"
    return m.group(1)


def test_rauc_bundle_of_a_test_rootfs_verifies_and_a_flipped_byte_fails(tmp_path):
    tool("rauc")
    recipe = os.path.join(LAYER, "recipes-core", "bundles", "scanside-bundle_0.1.0.bb")
    compatible, fmt = bb_var(recipe, "RAUC_BUNDLE_COMPATIBLE"), bb_var(recipe, "RAUC_BUNDLE_FORMAT")
    conf = open(os.path.join(RAUC, "system.conf")).read()
    assert f"compatible={compatible}\n" in conf and "bundle-formats=-plain" in conf
    p = lambda n: str(tmp_path / n)  # noqa: E731
    # Test keys: a CA (the keyring) and a code-signing certificate it issued.
    with open(p("ext"), "w") as f:
        f.write("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=codeSigning\n")
    for argv in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", p("ca.key"), "-out", p("ca.pem"),
         "-days", "30", "-subj", "/CN=scanside test RAUC CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", p("sign.key"), "-out", p("sign.csr"),
         "-subj", "/CN=scanside test release"],
        ["x509", "-req", "-in", p("sign.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
         "-CAcreateserial", "-out", p("sign.pem"), "-days", "30", "-extfile", p("ext")],
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", p("other.key"), "-out", p("other.pem"),
         "-days", "30", "-subj", "/CN=another CA"],
    ):
        r = run(["openssl"] + argv)
        assert r.returncode == 0, r.stderr
    # The image's system.conf with the test keyring and a writable data directory.
    conf = conf.replace("path=/etc/rauc/ca.cert.pem", f"path={p('ca.pem')}")
    conf = conf.replace("data-directory=/var/lib/scanside/rauc", f"data-directory={p('raucdata')}")
    with open(p("system.conf"), "w") as f:
        f.write(conf)
    # A test root file system: an ext4 image with a file in it.
    os.makedirs(p("rootfs/etc"))
    with open(p("rootfs/etc/os-release"), "w") as f:
        f.write("NAME=scanside-test\n")
    with open(p("rootfs/etc/payload.bin"), "wb") as f:
        f.write(os.urandom(256 << 10))
    os.makedirs(p("content"))
    r = run(["mkfs.ext4", "-q", "-d", p("rootfs"), p("content/rootfs.ext4"), "8M"])
    assert r.returncode == 0, r.stderr
    with open(p("content/manifest.raucm"), "w") as f:
        f.write(f"[update]\ncompatible={compatible}\nversion=0.1.0\n\n[bundle]\nformat={fmt}\n\n"
                "[image.rootfs]\nfilename=rootfs.ext4\n")
    rauc = ["rauc", f"--conf={p('system.conf')}"]
    r = run(rauc + ["bundle", f"--cert={p('sign.pem')}", f"--key={p('sign.key')}", p("content"), p("b.raucb")])
    assert r.returncode == 0, r.stderr
    r = run(rauc + ["info", p("b.raucb")])
    assert r.returncode == 0 and f"'{compatible}'" in r.stdout and "Verified inline signature" in r.stderr, \
        r.stdout + r.stderr
    r = run(rauc + ["extract", p("b.raucb"), p("out")])
    assert r.returncode == 0, r.stderr
    assert open(p("out/rootfs.ext4"), "rb").read() == open(p("content/rootfs.ext4"), "rb").read()
    # Another CA's keyring does not accept it.
    r = run(["rauc", f"--keyring={p('other.pem')}", "info", p("b.raucb")])
    assert r.returncode != 0 and "signature verification failed" in r.stderr, r.stderr
    # One flipped byte in the payload: extract refuses.
    data = bytearray(open(p("b.raucb"), "rb").read())
    data[len(data) // 3] ^= 0x01
    with open(p("bad.raucb"), "wb") as f:
        f.write(data)
    r = run(rauc + ["extract", p("bad.raucb"), p("out2")])
    assert r.returncode != 0 and "corrupted" in r.stderr, r.stderr
    assert not os.path.exists(p("out2/rootfs.ext4"))


def test_the_rauc_boot_backend_drives_nvbootctrl(tmp_path):
    """A stand-in for nvbootctrl (L4T's boot control tool, Jetson only) logs its
    calls and answers like L4T R36 with slot A running."""
    log = tmp_path / "calls"
    stub = tmp_path / "nvbootctrl"
    stub.write_text(f"""#!/bin/sh
echo "$@" >> {log}
case "$*" in
  "-t rootfs get-current-slot") echo 0 ;;
  "-t rootfs dump-slots-info") printf 'Current rootfs slot: A\\nActive rootfs slot: B\\nnum_slots: 2\\n'
     printf 'slot: 0,             retry_count: 3,             status: normal\\n'
     printf 'slot: 1,             retry_count: 0,             status: unbootable\\n' ;;
esac
""")
    stub.chmod(0o755)
    backend = os.path.join(RAUC, "rauc-tegra-backend")
    env = {**os.environ, "NVBOOTCTRL": str(stub)}

    def call(*args):
        return subprocess.run([backend, *args], capture_output=True, text=True, env=env)

    assert call("get-current").stdout == "A\n"
    assert call("get-primary").stdout == "B\n"
    assert call("get-state", "A").stdout == "good\n"
    assert call("get-state", "B").stdout == "bad\n"
    log.write_text("")
    assert call("set-primary", "B").returncode == 0
    assert call("set-state", "A", "good").returncode == 0
    assert call("set-state", "B", "bad").returncode == 0
    assert log.read_text().splitlines() == [
        "-t rootfs set-active-boot-slot 1",
        "-t rootfs get-current-slot", "verify",
        "-t rootfs set-slot-as-unbootable 1",
    ]
    # Only the running slot can be marked good; bad names are refused.
    r = call("set-state", "B", "good")
    assert r.returncode == 1 and "only the running slot" in r.stderr
    assert call("set-primary", "C").returncode == 2
    assert call("frobnicate").returncode == 2
    # The health check reaches it through `rauc status mark-good booted`.
    unit = open(os.path.join(ROOT, "systemd", "scanside-healthcheck.service")).read()
    assert "rauc status mark-good booted" in unit
    assert "bootloader-custom-backend=/usr/libexec/rauc/rauc-tegra-backend" in open(
        os.path.join(RAUC, "system.conf")).read()


def test_shell_scripts_pass_shellcheck():
    scripts = []
    for rel in subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True).stdout.split():
        path = os.path.join(ROOT, rel)
        try:
            with open(path, "rb") as f:
                head = f.readline()
        except OSError:
            continue
        if head.startswith(b"#!") and (b"sh" in head.split(b"/")[-1]):
            scripts.append(path)
    assert any(s.endswith("rauc-tegra-backend") for s in scripts) and any(s.endswith(".ci/run") for s in scripts)
    r = run([tool("shellcheck"), "--severity=style", *scripts])
    assert r.returncode == 0, r.stdout + r.stderr


def test_minisign_round_trip_and_the_shipped_key(tmp_path, daemon_factory):
    tool("minisign")
    p = lambda n: str(tmp_path / n)  # noqa: E731
    assert run(["minisign", "-G", "-W", "-p", p("k.pub"), "-s", p("k.key")]).returncode == 0
    with open(p("file"), "wb") as f:
        f.write(os.urandom(4096))
    assert run(["minisign", "-S", "-s", p("k.key"), "-m", p("file"), "-t", "round trip"]).returncode == 0
    r = run(["minisign", "-V", "-p", p("k.pub"), "-m", p("file")])
    assert r.returncode == 0 and "round trip" in r.stdout
    data = bytearray(open(p("file"), "rb").read())
    data[100] ^= 1
    with open(p("file"), "wb") as f:
        f.write(data)
    assert run(["minisign", "-V", "-p", p("k.pub"), "-m", p("file")]).returncode != 0
    # firmware-config/keys holds a valid minisign key: with it as the trusted
    # folder a bundle signed by another key is refused as "not trusted" (not
    # "no key"), so the shipped key parsed.
    from conftest import toml_str
    keys = os.path.join(ROOT, "firmware-config", "keys")
    assert [f for f in os.listdir(keys) if f.endswith(".pub")]
    d = daemon_factory(ota={"trusted_keys_dir": toml_str(os.path.abspath(keys))})
    with open(p("b.tar"), "wb") as f:
        f.write(b"\0" * 1024)
    assert run(["minisign", "-S", "-s", p("k.key"), "-m", p("b.tar")]).returncode == 0
    r = run([BIN, "model", "install", "--config", d.config_path, p("b.tar")])
    assert r.returncode == 1 and "not trusted" in r.stderr, r.stderr
