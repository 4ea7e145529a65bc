#!/usr/bin/python3
"""An HTTP/2 backend for lb's tests (Debian's python3-h2; run with /usr/bin/python3).

Serves HTTP/2 with prior knowledge (h2c), or over TLS with ALPN h2 when --cert and --key are
given. Every request is answered 200 with an echo body in the test harness's format
(`backend=NAME`, `protocol=h2`, `method=...`, `path=...`, `body-bytes=N`), and logged as one line
`METHOD PATH` in --log. With --reset, every request is answered with RST_STREAM
(INTERNAL_ERROR) once it is read whole: it reached the backend, no answer came back.
"""
import argparse
import asyncio
import ssl

import h2.config
import h2.connection
import h2.events
import h2.exceptions


class Backend(asyncio.Protocol):
    def __init__(self, args):
        self.args = args
        self.streams = {}

    def connection_made(self, transport):
        self.transport = transport
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())

    def data_received(self, data):
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.transport.write(self.conn.data_to_send())
            self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.streams[event.stream_id] = [dict(event.headers), 0]
            elif isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if event.stream_id in self.streams:
                    self.streams[event.stream_id][1] += len(event.data)
            elif isinstance(event, h2.events.StreamEnded):
                self.answer(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.streams.pop(event.stream_id, None)
        self.transport.write(self.conn.data_to_send())

    def answer(self, stream_id):
        headers, body_bytes = self.streams.pop(stream_id, ({}, 0))
        method = headers.get(":method", "")
        path = headers.get(":path", "")
        with open(self.args.log, "a") as log:
            log.write(f"{method} {path}\n")
        if self.args.reset:
            self.conn.reset_stream(stream_id, error_code=2)
            return
        body = (
            f"backend={self.args.name}\nprotocol=h2\nmethod={method}\npath={path}\n"
            f"body-bytes={body_bytes}\n"
        ).encode()
        self.conn.send_headers(
            stream_id,
            [
                (":status", "200"),
                ("content-type", "text/plain"),
                ("content-length", str(len(body))),
                ("x-backend", self.args.name),
            ],
        )
        self.conn.send_data(stream_id, body, end_stream=True)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--reset", action="store_true")
    args = parser.parse_args()
    context = None
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
        context.set_alpn_protocols(["h2"])
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Backend(args), "127.0.0.1", args.port, ssl=context
    )
    async with server:
        await server.serve_forever()


asyncio.run(main())
