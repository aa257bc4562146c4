"""Ordo consumer: subscribes from an offset and resumes after every disconnect.

    python3 consumer.py [--addr 127.0.0.1:50051] [--after 0] [--count 10] [--disconnect-after 2]

The whole resume logic is one variable: `last`, the offset of the last event processed (or the
last heartbeat's scanned_offset). Every (re)connect subscribes with `after_offset = last`, which
is exclusive, so nothing is skipped and nothing is seen twice.

Prints one JSON object per line: {"event": offset, "type": ...}, {"caught_up": head},
{"reconnecting": ..., "after": last} and finally {"done": count, "offsets": [...]}.
"""

import argparse
import json
import time

import grpc

import ordo_stubs

pb, rpc = ordo_stubs.load()
events_pb2 = pb.events_pb2

RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def emit(obj):
    print(json.dumps(obj), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051")
    parser.add_argument("--after", type=int, default=0, help="start after this offset (exclusive)")
    parser.add_argument("--count", type=int, default=10, help="stop after this many events")
    parser.add_argument("--type", action="append", default=[], help="event type filter (repeat)")
    parser.add_argument(
        "--disconnect-after",
        type=int,
        default=0,
        help="drop the connection once after this many events, to show the resume",
    )
    args = parser.parse_args()

    last = args.after
    offsets = []
    dropped = False
    delay = 0.1
    while len(offsets) < args.count:
        channel = grpc.insecure_channel(args.addr)
        stub = rpc.events_pb2_grpc.EventServiceStub(channel)
        request = events_pb2.SubscribeRequest(
            start=events_pb2.StartPosition(after_offset=last),
            filter=events_pb2.EventFilter(types=args.type),
            heartbeat_interval_ms=500,
        )
        call = stub.Subscribe(request)
        try:
            for message in call:
                delay = 0.1  # connected: the next outage starts with a short wait
                kind = message.WhichOneof("message")
                if kind == "event":
                    event = message.event
                    if event.offset <= last:
                        raise AssertionError(f"duplicate event {event.offset} after {last}")
                    last = event.offset
                    offsets.append(event.offset)
                    emit({"event": event.offset, "type": event.type})
                    if len(offsets) >= args.count:
                        break
                    if args.disconnect_after and not dropped and len(offsets) == args.disconnect_after:
                        dropped = True
                        call.cancel()  # simulate a dropped connection
                elif kind == "caught_up":
                    emit({"caught_up": message.caught_up.head_offset})
                elif kind == "heartbeat":
                    # A filtered subscription may match nothing for a long time: the heartbeat
                    # still moves the resume point forward.
                    last = max(last, message.heartbeat.scanned_offset)
        except grpc.RpcError as err:
            code = err.code()
            if code not in RETRYABLE:
                raise
            emit({"reconnecting": code.name, "after": last})
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        finally:
            call.cancel()
            channel.close()
    emit({"done": len(offsets), "offsets": offsets})


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass  # Ctrl-C ends a live tail; nothing to clean up

