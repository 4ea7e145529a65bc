#!/usr/bin/python3
"""A gRPC client for lb's tests: calls `lbtest.Echo` (see grpc_server.py) at TARGET over h2c
and prints one JSON object: the unary answer, the streamed answers, and the code and message of
`Missing`."""
import json
import sys

import grpc


def main():
    target = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    out = {}
    with grpc.insecure_channel(target) as channel:
        unary = channel.unary_unary("/lbtest.Echo/Unary")
        answers = []
        for i in range(count):
            answers.append(unary(f"hello{i}".encode(), timeout=10).decode())
        out["unary"] = answers
        stream = channel.unary_stream("/lbtest.Echo/Stream")
        out["stream"] = [m.decode() for m in stream(b"5", timeout=10)]
        missing = channel.unary_unary("/lbtest.Echo/Missing")
        try:
            missing(b"x", timeout=10)
            out["missing"] = None
        except grpc.RpcError as e:
            out["missing"] = [e.code().name, e.details()]
    print(json.dumps(out))


main()
