"""Ordo producer: creates an order, moves it along, and publishes a few events of its own.

    python3 producer.py [--addr 127.0.0.1:50051] [--events 3]

Prints one JSON object per line: what it did and at which log offset.
"""

import argparse
import json
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
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
