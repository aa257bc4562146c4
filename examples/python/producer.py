"""Ordo producer: creates an order, moves it along, and publishes a few events of its own.

    python3 producer.py [--addr 127.0.0.1:50051] [--events 3]
    python3 producer.py --append-stream 10000 [--id-prefix batch-7]

Prints one JSON object per line: what it did and at which log offset. With --append-stream N it
streams N events on one AppendStream instead: it sends without waiting for each answer (up to
the window the server advertises), and each event is acked, in send order, once it is durable.
Rerun with the same --id-prefix and every event is answered with its original offset
("deduplicated"): that is how a producer resends safely after a disconnect.
"""

import argparse
import json
import threading
import uuid

import grpc

import ordo_stubs

pb, rpc = ordo_stubs.load()
orders_pb2, events_pb2 = pb.orders_pb2, pb.events_pb2


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051")
    parser.add_argument("--events", type=int, default=3)
    parser.add_argument("--stream", default="py-demo")
    parser.add_argument("--append-stream", type=int, default=0, metavar="N")
    parser.add_argument("--id-prefix", default=None)
    args = parser.parse_args()

    if args.append_stream:
        with grpc.insecure_channel(args.addr) as channel:
            events = rpc.events_pb2_grpc.EventServiceStub(channel)
            prefix = args.id_prefix or str(uuid.uuid4())
            stream_events(events, args.stream, args.append_stream, prefix)
        return

    with grpc.insecure_channel(args.addr) as channel:
        orders = rpc.orders_pb2_grpc.OrderServiceStub(channel)
        events = rpc.events_pb2_grpc.EventServiceStub(channel)

        # An idempotency key makes the create safe to retry after a timeout.
        created = orders.CreateOrder(
            orders_pb2.CreateOrderRequest(
                customer_id="py-customer",
                items=[
                    orders_pb2.LineItem(
                        sku="tea",
                        quantity=2,
                        unit_price=orders_pb2.Money(amount_minor=450, currency="EUR"),
                    )
                ],
                idempotency_key=f"py-{uuid.uuid4()}",
            ),
            timeout=10,
        ).order
        print(json.dumps({"order_created": created.id, "offset": created.last_offset}), flush=True)

        paid = orders.UpdateOrderStatus(
            orders_pb2.UpdateOrderStatusRequest(
                order_id=created.id,
                status=orders_pb2.ORDER_STATUS_PAID,
                expected_version=created.version,
            ),
            timeout=10,
        ).order
        print(json.dumps({"order_paid": paid.id, "offset": paid.last_offset}), flush=True)

        # Client-chosen event ids: a retried Publish is deduplicated, never stored twice.
        batch = [
            events_pb2.NewEvent(
                stream_id=args.stream,
                type="demo.tick",
                id=str(uuid.uuid4()),
                datacontenttype="application/json",
                data=json.dumps({"n": n}).encode(),
            )
            for n in range(args.events)
        ]
        published = events.Publish(events_pb2.PublishRequest(events=batch), timeout=10)
        for position in published.positions:
            print(json.dumps({"published": position.id, "offset": position.offset}), flush=True)

        # Read the order's creation back from the log.
        page = events.ReadEvents(
            events_pb2.ReadEventsRequest(
                start=events_pb2.StartPosition(from_offset=created.last_offset), limit=1
            ),
            timeout=10,
        )
        first = page.events[0]
        print(
            json.dumps(
                {
                    "read": first.type,
                    "offset": first.offset,
                    "customer": first.order.created.customer_id,
                }
            ),
            flush=True,
        )


def stream_events(events, stream_id, count, prefix):
    """Sends `count` events on one AppendStream, keeping at most the server's window in flight.

    gRPC reads the request iterator on its own thread; a semaphore holds it back while the
    window is full, and each answer gives a slot back.
    """
    room = threading.Semaphore(0)
    window_known = threading.Event()

    def requests():
        # The first answer is the window; wait for it before sending.
        window_known.wait(timeout=30)
        for n in range(count):
            room.acquire()
            yield events_pb2.AppendStreamRequest(
                event=events_pb2.NewEvent(
                    stream_id=stream_id,
                    type="demo.reading",
                    # Ids make a resend (after a disconnect, or a rerun) safe.
                    id=f"{prefix}-{n}",
                    datacontenttype="application/json",
                    data=json.dumps({"n": n}).encode(),
                ),
                client_seq=n + 1,
            )
        # Returning half-closes the stream: the server answers the rest, then ends it.

    acked = deduplicated = rejected = 0
    first = last = None
    for answer in events.AppendStream(requests(), timeout=120):
        kind = answer.WhichOneof("message")
        if kind == "window":
            print(json.dumps({"window": answer.window.max_in_flight}), flush=True)
            room.release(answer.window.max_in_flight)
            window_known.set()
            continue
        room.release()
        if kind == "ack":
            acked += 1
            deduplicated += answer.ack.deduplicated
            offset = answer.ack.position.offset
            first = offset if first is None else first
            last = offset
            if acked != answer.ack.client_seq - rejected:
                raise SystemExit(f"ack {answer.ack.client_seq} out of order")
        elif kind == "rejected":
            rejected += 1
            print(
                json.dumps(
                    {
                        "rejected": answer.rejected.client_seq,
                        "code": answer.rejected.code,
                        "message": answer.rejected.message,
                    }
                ),
                flush=True,
            )
    print(
        json.dumps(
            {
                "streamed": acked,
                "deduplicated": deduplicated,
                "rejected": rejected,
                "first_offset": first,
                "last_offset": last,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
