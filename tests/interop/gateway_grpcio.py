"""An outside client (Python grpcio over TLS) calling mesh.demo.v1.Echo through the ingress gateway.

Usage: gateway_grpcio.py <gateway-host:port> <ca.pem> <server-name>

Trusts only the given CA and asks for <server-name> (SNI and the certificate check). Calls a unary
method with metadata, a server stream, a failing call (status, message, trailers), one that
outlives its deadline, an 8 MiB message each way, and a service no route takes; prints one JSON
object with what came back. Exits non-zero if anything raised unexpectedly.
"""

import json
import sys
import time

import grpc

from grpcio_client import stubs


def main():
    target, ca_file, server_name = sys.argv[1], sys.argv[2], sys.argv[3]
    pb, pb_grpc = stubs()
    with open(ca_file, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    options = [
        ("grpc.ssl_target_name_override", server_name),
        ("grpc.default_authority", server_name),
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ]
    channel = grpc.secure_channel(target, credentials, options=options)
    echo = pb_grpc.EchoStub(channel)
    result = {}

    reply, call = echo.Unary.with_call(
        pb.EchoRequest(payload=b"from-outside"), metadata=[("x-echo-lang", "python")], timeout=10
    )
    result["unary"] = {
        "payload": reply.payload.decode(),
        "instance": reply.instance,
        "echoed_header": dict(call.initial_metadata()).get("x-echo-lang"),
        "server_saw_timeout": "grpc-timeout" in reply.metadata,
        "caller": reply.metadata.get("mesh-client-service"),
    }

    replies = list(echo.ServerStream(pb.EchoRequest(payload=b"s", count=50), timeout=10))
    result["server_stream"] = {"count": len(replies), "ordered": [r.seq for r in replies] == list(range(50))}

    try:
        echo.Unary(
            pb.EchoRequest(fail_code=grpc.StatusCode.NOT_FOUND.value[0], fail_message="no such thing"),
            metadata=[("x-echo-trace", "t-1")],
            timeout=10,
        )
        result["error"] = None
    except grpc.RpcError as e:
        result["error"] = {
            "code": e.code().name,
            "details": e.details(),
            "trailer": dict(e.trailing_metadata() or ()).get("x-echo-trace"),
        }

    started = time.monotonic()
    try:
        echo.Unary(pb.EchoRequest(delay_ms=3000), timeout=0.3)
        result["deadline"] = None
    except grpc.RpcError as e:
        result["deadline"] = {"code": e.code().name, "seconds": round(time.monotonic() - started, 3)}

    big = b"".join(bytes([i % 251]) for i in range(256)) * (8 << 12)
    reply = echo.Unary(pb.EchoRequest(payload=big), timeout=30)
    result["large"] = {"bytes": len(reply.payload), "same": reply.payload == big}

    unrouted = channel.unary_unary("/nope.v1.Missing/Call")
    try:
        unrouted(b"", timeout=10)
        result["unrouted"] = None
    except grpc.RpcError as e:
        result["unrouted"] = {"code": e.code().name, "details": e.details()}

    print(json.dumps(result))


if __name__ == "__main__":
    main()
