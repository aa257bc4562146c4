"""Generates Python stubs for Ordo's protos with grpcio-tools and makes them importable.

Stubs are generated, not committed, so they always match proto/ordo/v1. Usage:

    import ordo_stubs
    pb, rpc = ordo_stubs.load()      # pb.orders_pb2, pb.events_pb2, pb.consumer_pb2,
                                     # rpc.events_pb2_grpc, rpc.consumer_pb2_grpc, ...

ORDO_PROTO_DIR (default: ../../proto next to this file) and ORDO_STUBS_DIR (default:
./.ordo_stubs next to this file) override the locations.
"""

import importlib
import os
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))


def generate(proto_dir, out_dir):
    """Runs grpc_tools.protoc on every ordo/v1/*.proto into out_dir."""
    from grpc_tools import protoc

    os.makedirs(out_dir, exist_ok=True)
    v1 = os.path.join(proto_dir, "ordo", "v1")
    files = sorted(os.path.join(v1, f) for f in os.listdir(v1) if f.endswith(".proto"))
    # grpc_tools ships google/protobuf/*.proto (timestamp.proto) next to its module.
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"grpc_tools.protoc failed for {proto_dir}")


MODULES = ("orders", "events", "consumer")


def load():
    """Generates the stubs if needed and returns (messages, services) namespaces."""
    proto_dir = os.environ.get("ORDO_PROTO_DIR", os.path.join(HERE, "..", "..", "proto"))
    out_dir = os.environ.get("ORDO_STUBS_DIR", os.path.join(HERE, ".ordo_stubs"))
    # Every module checked, so stubs generated before a proto file was added are regenerated.
    wanted = [os.path.join(out_dir, "ordo", "v1", f"{m}_pb2_grpc.py") for m in MODULES]
    if not all(os.path.exists(path) for path in wanted):
        generate(proto_dir, out_dir)
    if out_dir not in sys.path:
        sys.path.insert(0, out_dir)
    pb = types.SimpleNamespace(
        **{f"{m}_pb2": importlib.import_module(f"ordo.v1.{m}_pb2") for m in MODULES}
    )
    rpc = types.SimpleNamespace(
        **{f"{m}_pb2_grpc": importlib.import_module(f"ordo.v1.{m}_pb2_grpc") for m in MODULES}
    )
    return pb, rpc


if __name__ == "__main__":
    load()
    print(os.environ.get("ORDO_STUBS_DIR", os.path.join(HERE, ".ordo_stubs")))
