"""A deliberately minimal DICOM upper-layer client that can misbehave on purpose:
truncated data sets, oversized PDUs, garbage, aborts in the middle of an instance.
pynetdicom and DCMTK refuse to send such things, which is why this exists."""
import socket
import struct

APP_CONTEXT = b"1.2.840.10008.3.1.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
MR = "1.2.840.10008.5.1.4.1.1.4"


def _item(t, payload):
    return struct.pack(">BBH", t, 0, len(payload)) + payload


def _uid(u):
    return u.encode() if isinstance(u, str) else u


def associate_rq(called, calling, contexts, max_pdu=16384):
    """contexts: list of (pc_id, abstract_syntax, [transfer syntaxes])."""
    body = struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
    body += _item(0x10, APP_CONTEXT)
    for pc_id, asx, tss in contexts:
        sub = _item(0x30, _uid(asx)) + b"".join(_item(0x40, _uid(t)) for t in tss)
        body += _item(0x20, struct.pack(">BBBB", pc_id, 0, 0, 0) + sub)
    body += _item(0x50, _item(0x51, struct.pack(">I", max_pdu)))
    return struct.pack(">BBI", 1, 0, len(body)) + body


def pdata(pdvs):
    """pdvs: list of (pc_id, is_command, is_last, bytes)."""
    body = b""
    for pc_id, is_cmd, last, data in pdvs:
        hdr = (1 if is_cmd else 0) | (2 if last else 0)
        body += struct.pack(">IBB", len(data) + 2, pc_id, hdr) + data
    return struct.pack(">BBI", 4, 0, len(body)) + body


def element(elem, value):
    if isinstance(value, int):
        value = struct.pack("<H", value)
    elif isinstance(value, str):
        value = value.encode()
        if len(value) % 2:
            value += b"\0"
    return struct.pack("<HHI", 0, elem, len(value)) + value


def command(elements):
    body = b"".join(element(e, v) for e, v in sorted(elements.items()))
    return struct.pack("<HHI", 0, 0, 4) + struct.pack("<I", len(body)) + body


def c_store_rq(sop_class, sop_instance, message_id=1):
    return command({0x0002: sop_class, 0x0100: 0x0001, 0x0110: message_id, 0x0700: 0,
                    0x0800: 0x0000, 0x1000: sop_instance})


def c_echo_rq(message_id=1):
    return command({0x0002: "1.2.840.10008.1.1", 0x0100: 0x0030, 0x0110: message_id, 0x0800: 0x0101})


def parse_command(b):
    out, i = {}, 0
    while i + 8 <= len(b):
        _, elem, ln = struct.unpack("<HHI", b[i:i + 8])
        out[elem] = b[i + 8:i + 8 + ln]
        i += 8 + ln
    return out


class Conn:
    def __init__(self, host, port, timeout=10):
        self.s = socket.create_connection((host, port), timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, b):
        self.s.sendall(b)

    def read_pdu(self):
        """Returns (type, body) or None when the peer closed the connection."""
        hdr = self._read(6)
        if hdr is None:
            return None
        t, _, ln = struct.unpack(">BBI", hdr)
        body = self._read(ln)
        return t, body

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.s.recv(n - len(buf))
            except (ConnectionResetError, socket.timeout):
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def associate(self, called="SCANSIDE", calling="RAWSCU", contexts=None, max_pdu=16384):
        contexts = contexts or [(1, MR, [EXPLICIT_LE])]
        self.send(associate_rq(called, calling, contexts, max_pdu))
        pdu = self.read_pdu()
        assert pdu is not None, "connection closed during association"
        return pdu

    def accepted_contexts(self, ac_body):
        """pc_id -> result (0 = acceptance) from an A-ASSOCIATE-AC body."""
        res, i = {}, 68
        while i + 4 <= len(ac_body):
            t, _, ln = struct.unpack(">BBH", ac_body[i:i + 4])
            if t == 0x21:
                res[ac_body[i + 4]] = ac_body[i + 6]
            i += 4 + ln
        return res

    def response(self):
        """Reads P-DATA until a complete command arrives; returns its elements."""
        cmd = b""
        while True:
            pdu = self.read_pdu()
            if pdu is None:
                return None
            t, body = pdu
            if t != 4:
                return {"pdu_type": t, "body": body}
            i = 0
            while i < len(body):
                ln = struct.unpack(">I", body[i:i + 4])[0]
                hdr = body[i + 5]
                cmd += body[i + 6:i + 4 + ln]
                i += 4 + ln
                if hdr & 1 and hdr & 2:
                    return parse_command(cmd)

    def store(self, sop_class, sop_instance, data, pc_id=1, chunk=16000, message_id=1):
        self.send(pdata([(pc_id, True, True, c_store_rq(sop_class, sop_instance, message_id))]))
        for i in range(0, max(len(data), 1), chunk):
            self.send(pdata([(pc_id, False, i + chunk >= len(data), data[i:i + chunk])]))
        return self.response()

    def release(self):
        self.send(struct.pack(">BBI", 5, 0, 4) + bytes(4))
        return self.read_pdu()

    def abort(self):
        self.send(struct.pack(">BBI", 7, 0, 4) + bytes(4))
        self.s.close()

    def close(self):
        self.s.close()


def status_of(rsp):
    return struct.unpack("<H", rsp[0x0900])[0]
