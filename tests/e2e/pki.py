"""Test certificates made with the openssl CLI: a CA, server and client
certificates it signs, one from another CA, and one it signed that has expired."""
import os

from conftest import run

EXT = ("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
       "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n")

CA_CONF = """[ca]
default_ca = test
[test]
dir = {d}
database = {d}/index.txt
new_certs_dir = {d}
serial = {d}/serial
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
[any]
commonName = supplied
"""


def openssl(*argv):
    r = run(["openssl", *argv])
    assert r.returncode == 0, r.stderr
    return r


def make_ca(d, name):
    p = lambda n: os.path.join(d, n)  # noqa: E731
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", p(f"{name}.key"),
            "-out", p(f"{name}.crt"), "-days", "3", "-subj", f"/CN=scanside test {name}")


def issue(d, ca, name, cn="localhost", days=2):
    """A certificate `name` signed by `ca`, valid from now for `days`."""
    p = lambda n: os.path.join(d, n)  # noqa: E731
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", p(f"{name}.key"), "-out", p(f"{name}.csr"),
            "-subj", f"/CN={cn}")
    openssl("x509", "-req", "-in", p(f"{name}.csr"), "-CA", p(f"{ca}.crt"), "-CAkey", p(f"{ca}.key"),
            "-CAcreateserial", "-out", p(f"{name}.crt"), "-days", str(days), "-extfile", p("ext"))


def issue_expired(d, ca, name, cn):
    """Signed by `ca`, valid only during one day in 2020 (openssl ca sets the dates)."""
    p = lambda n: os.path.join(d, n)  # noqa: E731
    cadir = p("ca-db")
    os.makedirs(cadir, exist_ok=True)
    open(os.path.join(cadir, "index.txt"), "w").close()
    with open(os.path.join(cadir, "serial"), "w") as f:
        f.write("1000\n")
    with open(p("ca.conf"), "w") as f:
        f.write(CA_CONF.format(d=cadir))
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", p(f"{name}.key"), "-out", p(f"{name}.csr"),
            "-subj", f"/CN={cn}")
    openssl("ca", "-batch", "-config", p("ca.conf"), "-cert", p(f"{ca}.crt"), "-keyfile", p(f"{ca}.key"),
            "-in", p(f"{name}.csr"), "-out", p(f"{name}.crt"), "-extfile", p("ext"),
            "-startdate", "20200101000000Z", "-enddate", "20200102000000Z", "-notext")


def make_pki(d):
    """ca signs server, client and expired (a client certificate past its date);
    other is another CA and signs stranger."""
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "ext"), "w") as f:
        f.write(EXT)
    make_ca(d, "ca")
    make_ca(d, "other")
    issue(d, "ca", "server")
    issue(d, "ca", "client", cn="workstation")
    issue(d, "other", "stranger", cn="workstation")
    issue_expired(d, "ca", "expired", cn="workstation")
    return lambda n: os.path.join(d, n)
