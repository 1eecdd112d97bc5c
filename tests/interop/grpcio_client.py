"""An independent gRPC client (Python grpcio) calling mesh.demo.v1.Echo through a mesh proxy.

Usage: grpcio_client.py <proxy-outbound-host:port> <service>

Generates stubs from proto/mesh/demo/v1/echo.proto with grpcio-tools, calls every call shape and
an error case with the target service as the channel's authority, and prints one JSON object with
what came back. Exits non-zero if anything raised unexpectedly.
"""

import importlib
import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto")


def stubs():
    # Generated into a temporary directory that is gone once both modules are imported.
    with tempfile.TemporaryDirectory(prefix="mesh-grpcio-") as out:
        args = ["protoc", f"-I{ROOT}", f"--python_out={out}", f"--grpc_python_out={out}", "mesh/demo/v1/echo.proto"]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        sys.path.insert(0, out)
        try:
            return (
                importlib.import_module("mesh.demo.v1.echo_pb2"),
                importlib.import_module("mesh.demo.v1.echo_pb2_grpc"),
            )
        finally:
            sys.path.remove(out)


def main():
    target, service = sys.argv[1], sys.argv[2]
    pb, pb_grpc = stubs()
    channel = grpc.insecure_channel(target, options=[("grpc.default_authority", service)])
    echo = pb_grpc.EchoStub(channel)
    result = {}

    reply, call = echo.Unary.with_call(
        pb.EchoRequest(payload=b"from-python"), metadata=[("x-echo-lang", "python")], timeout=10
    )
    result["unary"] = {
        "payload": reply.payload.decode(),
        "instance": reply.instance,
        "echoed_header": dict(call.initial_metadata()).get("x-echo-lang"),
        "server_saw_timeout": "grpc-timeout" in reply.metadata,
    }

    replies = list(echo.ServerStream(pb.EchoRequest(payload=b"s", count=100), timeout=10))
    result["server_stream"] = {"count": len(replies), "ordered": [r.seq for r in replies] == list(range(100))}

    reply = echo.ClientStream(iter([pb.EchoRequest(payload=b"x" * 1000) for _ in range(50)]), timeout=10)
    result["client_stream"] = {"messages": reply.messages, "bytes": reply.bytes}

    replies = list(echo.Bidi(iter([pb.EchoRequest(payload=bytes([i])) for i in range(20)]), timeout=10))
    result["bidi"] = {"count": len(replies), "in_order": [r.payload for r in replies] == [bytes([i]) for i in range(20)]}

    try:
        echo.Unary(pb.EchoRequest(fail_code=grpc.StatusCode.NOT_FOUND.value[0], fail_message="no such thing"), timeout=10)
        result["error"] = None
    except grpc.RpcError as e:
        result["error"] = {"code": e.code().name, "details": e.details()}

    big = echo.Unary(pb.EchoRequest(payload=b"b" * (3 << 20)), timeout=20)
    result["large"] = {"bytes": len(big.payload)}

    unknown = pb_grpc.EchoStub(grpc.insecure_channel(target, options=[("grpc.default_authority", "nosuch")]))
    try:
        unknown.Unary(pb.EchoRequest(), timeout=10)
        result["unknown_service"] = None
    except grpc.RpcError as e:
        result["unknown_service"] = {"code": e.code().name, "details": e.details()}

    print(json.dumps(result))


if __name__ == "__main__":
    main()
