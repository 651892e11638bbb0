#!/usr/bin/env python3
"""Stdlib-only helpers for scripts/services.sh (no third-party packages).

    _probe.py freeports N          print N distinct free loopback TCP ports
    _probe.py portfree PORT        exit 0 if 127.0.0.1:PORT can be bound
    _probe.py kafka HOST PORT      exit 0 if a Kafka Metadata request lists a live
                                   broker and the group and transaction
                                   coordinators are available
    _probe.py mongo HOST PORT      exit 0 if a MongoDB OP_MSG `ping` returns ok: 1

Probe failures print one line on stderr and exit 1.
"""

from __future__ import annotations

import socket
import struct
import sys

TIMEOUT = 2.0


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by peer")
        buf += chunk
    return bytes(buf)


# --- ports -----------------------------------------------------------------


def freeports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def portfree(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


# --- Kafka -----------------------------------------------------------------


def kafka_metadata(host: str, port: int) -> list[tuple[int, str, int]]:
    """Send a Metadata v4 request (no topics) and return the broker list.

    Kafka 4.x removed Metadata v0-v3; v4 is accepted by every broker since 1.0.
    """
    client_id = b"psvis-probe"
    header = (
        struct.pack(">hhih", 3, 4, 1, len(client_id)) + client_id
    )  # api_key=3 Metadata, v4, corr=1
    body = struct.pack(">ib", 0, 0)  # topics: empty array, allow_auto_topic_creation=false
    req = header + body
    with socket.create_connection((host, port), timeout=TIMEOUT) as s:
        s.settimeout(TIMEOUT)
        s.sendall(struct.pack(">i", len(req)) + req)
        (size,) = struct.unpack(">i", _recv_exact(s, 4))
        resp = _recv_exact(s, size)
    pos = 0

    def take(fmt: str):
        nonlocal pos
        vals = struct.unpack_from(fmt, resp, pos)
        pos += struct.calcsize(fmt)
        return vals

    def string() -> str | None:
        nonlocal pos
        (ln,) = take(">h")
        if ln < 0:
            return None
        val = resp[pos : pos + ln].decode()
        pos += ln
        return val

    (corr,) = take(">i")
    if corr != 1:
        raise ValueError(f"unexpected correlation id {corr}")
    take(">i")  # throttle_time_ms
    (nbrokers,) = take(">i")
    brokers = []
    for _ in range(max(nbrokers, 0)):
        (node_id,) = take(">i")
        bhost = string() or ""
        (bport,) = take(">i")
        string()  # rack
        brokers.append((node_id, bhost, bport))
    return brokers


def kafka_find_coordinator(host: str, port: int, key: str, key_type: int) -> int:
    """FindCoordinator v1 (key_type 0 = consumer group, 1 = transactional id).

    Returns the error code (0 = coordinator available). The first request for a
    key type makes the broker create __consumer_offsets / __transaction_state.
    """
    client_id = b"psvis-probe"
    k = key.encode()
    req = (
        struct.pack(">hhih", 10, 1, 2, len(client_id))
        + client_id
        + struct.pack(">h", len(k))
        + k
        + struct.pack(">b", key_type)
    )
    with socket.create_connection((host, port), timeout=TIMEOUT) as s:
        s.settimeout(TIMEOUT)
        s.sendall(struct.pack(">i", len(req)) + req)
        (size,) = struct.unpack(">i", _recv_exact(s, 4))
        resp = _recv_exact(s, size)
    corr, _throttle, error_code = struct.unpack_from(">iih", resp, 0)
    if corr != 2:
        raise ValueError(f"unexpected correlation id {corr}")
    return error_code


# --- MongoDB ---------------------------------------------------------------


def _bson_encode(doc: dict) -> bytes:
    out = bytearray()
    for key, val in doc.items():
        k = key.encode() + b"\x00"
        if isinstance(val, bool):
            out += b"\x08" + k + (b"\x01" if val else b"\x00")
        elif isinstance(val, int):
            out += b"\x10" + k + struct.pack("<i", val)
        elif isinstance(val, str):
            v = val.encode() + b"\x00"
            out += b"\x02" + k + struct.pack("<i", len(v)) + v
        else:
            raise TypeError(type(val))
    return struct.pack("<i", len(out) + 5) + bytes(out) + b"\x00"


def _bson_top_level(data: bytes) -> dict:
    """Decode the top-level scalar fields we care about; skip everything else."""
    (total,) = struct.unpack_from("<i", data, 0)
    pos, end, out = 4, total - 1, {}
    fixed = {
        0x01: 8,
        0x07: 12,
        0x08: 1,
        0x09: 8,
        0x0A: 0,
        0x10: 4,
        0x11: 8,
        0x12: 8,
        0x13: 16,
        0x7F: 0,
        0xFF: 0,
    }
    while pos < end:
        t = data[pos]
        pos += 1
        nul = data.index(b"\x00", pos)
        key = data[pos:nul].decode()
        pos = nul + 1
        if t == 0x01:
            out[key] = struct.unpack_from("<d", data, pos)[0]
        elif t == 0x10:
            out[key] = struct.unpack_from("<i", data, pos)[0]
        elif t == 0x12:
            out[key] = struct.unpack_from("<q", data, pos)[0]
        elif t == 0x08:
            out[key] = data[pos] != 0
        elif t == 0x02:
            (ln,) = struct.unpack_from("<i", data, pos)
            out[key] = data[pos + 4 : pos + 4 + ln - 1].decode(errors="replace")
            pos += 4 + ln
            continue
        if t in fixed:
            pos += fixed[t]
        elif t in (0x03, 0x04):  # document / array
            pos += struct.unpack_from("<i", data, pos)[0]
        elif t == 0x05:  # binary
            pos += 5 + struct.unpack_from("<i", data, pos)[0]
        elif t == 0x0B:  # regex: two cstrings
            pos = data.index(b"\x00", data.index(b"\x00", pos) + 1) + 1
        else:
            break  # a type we do not need; stop decoding
    return out


def mongo_command(host: str, port: int, cmd: dict) -> dict:
    doc = _bson_encode({**cmd, "$db": "admin"})
    payload = struct.pack("<I", 0) + b"\x00" + doc  # flagBits, section kind 0 (body)
    msg = struct.pack("<iiii", 16 + len(payload), 1, 0, 2013) + payload  # OP_MSG
    with socket.create_connection((host, port), timeout=TIMEOUT) as s:
        s.settimeout(TIMEOUT)
        s.sendall(msg)
        (length,) = struct.unpack("<i", _recv_exact(s, 4))
        rest = _recv_exact(s, length - 4)
    _req_id, _resp_to, opcode = struct.unpack_from("<iii", rest, 0)
    if opcode != 2013:
        raise ValueError(f"unexpected reply opcode {opcode}")
    if rest[16] != 0:
        raise ValueError("unexpected OP_MSG section kind")
    return _bson_top_level(rest[17:])


# --- main ------------------------------------------------------------------


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd = argv[1]
    try:
        if cmd == "freeports":
            print(" ".join(map(str, freeports(int(argv[2])))))
            return 0
        if cmd == "portfree":
            return 0 if portfree(int(argv[2])) else 1
        if cmd == "kafka":
            host, port = argv[2], int(argv[3])
            brokers = kafka_metadata(host, port)
            if not brokers:
                print("kafka: metadata lists no brokers yet", file=sys.stderr)
                return 1
            # Also wait for the group and transaction coordinators, so that the
            # first consumer group / transactional producer of a test does not
            # race the creation of the internal topics.
            for key_type, what in ((0, "group"), (1, "transaction")):
                err = kafka_find_coordinator(host, port, "psvis-probe", key_type)
                if err:
                    print(
                        f"kafka: {what} coordinator not available yet (error {err})",
                        file=sys.stderr,
                    )
                    return 1
            return 0
        if cmd == "mongo":
            reply = mongo_command(argv[2], int(argv[3]), {"ping": 1})
            if reply.get("ok") in (1, 1.0, True):
                return 0
            print(f"mongo: ping not ok: {reply}", file=sys.stderr)
            return 1
    except (OSError, ValueError, struct.error, IndexError) as exc:
        print(f"{cmd}: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
