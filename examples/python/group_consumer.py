"""Ordo consumer-group member: joins a group over the bidirectional Consume stream, prints each
delivery and acks it, nacks it when the handler raises, and rejoins after a disconnect.

    python3 group_consumer.py --group billing [--addr 127.0.0.1:50051] [--create] [--count 10]
        [--max-in-flight 10] [--fail-type job.poison] [--disconnect-after 3]

The members of a group share its events: each event goes to one member, which acks it when
done. Delivery is at-least-once: whatever was not acked when the stream broke is delivered
again (to this member or another), so handlers must be idempotent. Progress is kept by the
server, so a restarted member simply joins again: there is no cursor to keep.

The stream carries both directions. This script sends `join`, then one `ack` (or `nack`) per
delivery; the server answers each with `settled` once it is durable, or `rejected` if the
delivery is no longer this member's (it timed out and went to someone else).

--count counts confirmed settles. A crash of the server can lose the confirmation of an ack it
had already made durable; that event is not delivered again, so a count that includes it is
never reached. Real consumers run until stopped; the count is for demos and tests.

Prints one JSON object per line: {"joined": member_id, ...}, {"delivery": id, "offset": ...},
{"acked": id, "offset": ...} / {"nacked": id, ...} once the server confirmed it,
{"rejected": [...]}, {"reconnecting": code} and finally
{"done": n, "acked": [offsets], "nacked": [offsets]}.
"""

import argparse
import json
import os
import queue
import sys
import time

import grpc

import ordo_stubs

pb, rpc = ordo_stubs.load()
consumer_pb2 = pb.consumer_pb2

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


class Requests:
    """The request side of one Consume call, iterated by gRPC on its own thread.

    The queue needs no bound of its own: this member sends one ack or nack per delivery, and
    the server sends nothing more once max_in_flight deliveries are unsettled.
    """

    def __init__(self, join):
        self._queue = queue.Queue()
        self._queue.put(consumer_pb2.ConsumeRequest(join=join))

    def put(self, request):
        self._queue.put(request)

    def close(self):
        """Ends the request stream: the server takes that as leaving the group."""
        self._queue.put(None)

    def __iter__(self):
        while True:
            request = self._queue.get()
            if request is None:
                return
            yield request


def handle(event, fail_types):
    """The application's work. Raising makes the event fail: it is nacked and comes again."""
    if event.type in fail_types:
        raise RuntimeError(f"cannot handle {event.type} at offset {event.offset}")


def ensure_group(stub, name):
    """Creates the group reading from the start of the log, unless it exists."""
    request = consumer_pb2.CreateGroupRequest(
        name=name, start=pb.events_pb2.StartPosition(start=True)
    )
    try:
        stub.CreateGroup(request)
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051")
    parser.add_argument("--group", required=True, help="the consumer group to join")
    parser.add_argument("--create", action="store_true", help="create the group (from the start of the log) if it does not exist")
    parser.add_argument("--count", type=int, default=10, help="stop after this many events were settled (acked or nacked) and confirmed")
    parser.add_argument("--max-in-flight", type=int, default=10, help="deliveries held unacked at once")
    parser.add_argument("--fail-type", action="append", default=[], help="the handler raises for events of this type (repeat)")
    parser.add_argument(
        "--disconnect-after",
        type=int,
        default=0,
        help="once, after handling this many deliveries, leave the next ones unacked and drop "
        "the stream when the acks sent are confirmed: the rejoin gets them again",
    )
    args = parser.parse_args()

    settled = {}  # offset -> "acked" | "nacked", once the server confirmed it
    dropped = False
    delay = 0.1
    with grpc.insecure_channel(args.addr) as channel:
        stub = rpc.consumer_pb2_grpc.ConsumerServiceStub(channel)
        if args.create:
            ensure_group(stub, args.group)
        while len(settled) < args.count:
            join = consumer_pb2.JoinGroup(
                group=args.group,
                member_name=f"python-{os.getpid()}",
                max_in_flight=args.max_in_flight,
            )
            requests = Requests(join)
            call = stub.Consume(iter(requests))
            # Sent on this stream, waiting for settled/rejected: delivery id -> (offset, how).
            pending = {}
            handled = 0
            draining = False  # --disconnect-after: handle nothing more, drop once answered
            try:
                for response in call:
                    kind = response.WhichOneof("message")
                    if kind == "joined":
                        delay = 0.1  # joined: the next outage starts with a short wait
                        joined = response.joined
                        emit({"joined": joined.member_id, "max_in_flight": joined.max_in_flight})
                    elif kind == "delivery":
                        delivery = response.delivery
                        event = delivery.event
                        if draining:
                            continue  # left unacked: delivered again after the rejoin
                        emit({
                            "delivery": delivery.delivery_id,
                            "offset": event.offset,
                            "attempt": delivery.attempt,
                            "type": event.type,
                        })
                        ids = [delivery.delivery_id]
                        try:
                            handle(event, args.fail_type)
                            requests.put(consumer_pb2.ConsumeRequest(
                                ack=consumer_pb2.AckDeliveries(delivery_ids=ids)
                            ))
                            pending[delivery.delivery_id] = (event.offset, "acked")
                        except Exception as err:  # the handler failed: retry after the group's backoff
                            requests.put(consumer_pb2.ConsumeRequest(
                                nack=consumer_pb2.NackDeliveries(
                                    delivery_ids=ids,
                                    action=consumer_pb2.NACK_ACTION_RETRY,
                                    reason=str(err)[:512],
                                )
                            ))
                            pending[delivery.delivery_id] = (event.offset, "nacked")
                        handled += 1
                        if args.disconnect_after and not dropped and handled >= args.disconnect_after:
                            draining = True
                    elif kind == "settled":
                        for delivery_id in response.settled.delivery_ids:
                            offset, how = pending.pop(delivery_id, (None, None))
                            if offset is not None:
                                settled[offset] = how
                                emit({how: delivery_id, "offset": offset})
                        if len(settled) >= args.count:
                            break
                        if draining and not pending:
                            dropped = True
                            call.cancel()  # simulate a dropped connection
                    elif kind == "rejected":
                        rejected = response.rejected
                        # Not ours any more (e.g. the ack timeout passed): it is delivered again.
                        for delivery_id in rejected.delivery_ids:
                            pending.pop(delivery_id, None)
                        emit({
                            "rejected": list(rejected.delivery_ids),
                            "code": rejected.code,
                            "message": rejected.message,
                        })
            except grpc.RpcError as err:
                code = err.code()
                if code not in RETRYABLE:
                    sys.exit(f"error: {code.name}: {err.details()}")
                # Deliveries not confirmed yet come again after the rejoin.
                emit({"reconnecting": code.name, "unconfirmed": len(pending)})
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                requests.close()
                call.cancel()
    emit({
        "done": len(settled),
        "acked": sorted(o for o, how in settled.items() if how == "acked"),
        "nacked": sorted(o for o, how in settled.items() if how == "nacked"),
    })


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass  # Ctrl-C leaves the group; unacked deliveries go to the other members
