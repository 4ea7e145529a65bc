#!/usr/bin/python3
"""A gRPC server for lb's tests (Debian's python3-grpcio; run with /usr/bin/python3).

Generic handlers on raw bytes, so no protoc is needed. Service `lbtest.Echo`:
- `Unary`: answers `NAME:` followed by the request bytes;
- `Stream` (server streaming): the request is a count N as ASCII; answers N messages `NAME:i`;
- `Missing`: fails with NOT_FOUND and the message `no such thing`.
Plain (h2c) by default; TLS with --cert and --key.
"""
import argparse
from concurrent import futures

import grpc


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    name = args.name.encode()

    def unary(request, context):
        return name + b":" + request

    def stream(request, context):
        for i in range(int(request.decode() or "0")):
            yield name + b":" + str(i).encode()

    def missing(request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Missing": grpc.unary_unary_rpc_method_handler(missing),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("lbtest.Echo", handlers),))
    address = f"127.0.0.1:{args.port}"
    if args.cert:
        with open(args.cert, "rb") as c, open(args.key, "rb") as k:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        server.add_secure_port(address, creds)
    else:
        server.add_insecure_port(address)
    server.start()
    server.wait_for_termination()


main()
