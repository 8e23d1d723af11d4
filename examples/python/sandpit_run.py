#!/usr/bin/python3
"""Run a Node.js file in a sandpit sandbox, like `node file.js` would.

The program's stdout and stderr are copied through as they arrive, network
attempts are reported on stderr, and the exit code is the program's.

    PYTHONPATH=gen/python python3 examples/python/sandpit_run.py [--addr HOST:PORT] file.js [args...]

Needs grpcio and protobuf (Debian: python3-grpcio, python3-protobuf).
"""

import argparse
import sys

import grpc

from sandpit.executor.v1 import executor_pb2, executor_pb2_grpc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051", help="executor address")
    parser.add_argument("--timeout", type=float, default=0, help="wall-clock timeout in seconds (0: the executor's default)")
    parser.add_argument("file")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args()

    with open(opts.file, encoding="utf-8") as f:
        code = f.read()
    request = executor_pb2.ExecuteRequest(code=code, entrypoint=opts.file.rsplit("/", 1)[-1], args=opts.args)
    if opts.timeout:
        request.limits.timeout.FromNanoseconds(int(opts.timeout * 1e9))

    with grpc.insecure_channel(opts.addr) as channel:
        stub = executor_pb2_grpc.ExecutorServiceStub(channel)
        try:
            for event in stub.Execute(request):
                kind = event.WhichOneof("event")
                if kind == "stdout":
                    sys.stdout.buffer.write(event.stdout.data)
                    sys.stdout.flush()
                elif kind == "stderr":
                    sys.stderr.buffer.write(event.stderr.data)
                    sys.stderr.flush()
                elif kind == "network":
                    n = event.network
                    print(f"[sandpit] {executor_pb2.NetworkEventKind.Name(n.kind)} {n.method} {n.url}: "
                          f"{n.status_code or n.reason} (rule {n.rule_id})", file=sys.stderr)
                elif kind == "result":
                    r = event.result
                    print(f"[sandpit] {executor_pb2.Termination.Name(r.termination)} exit {r.exit_code}", file=sys.stderr)
                    return r.exit_code
        except grpc.RpcError as err:
            print(f"sandpit_run: {err.code().name}: {err.details()}", file=sys.stderr)
            return 125
    print("sandpit_run: the stream ended without a result", file=sys.stderr)
    return 125


if __name__ == "__main__":
    sys.exit(main())
