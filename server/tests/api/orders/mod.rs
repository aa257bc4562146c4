//! OrderService, black-box over real gRPC: every RPC's happy path, every bad input (code,
//! message and "nothing appended"), the state machine, optimistic concurrency and idempotency.

use std::{collections::HashSet, time::Duration};

use ordo_api::v1::{
    CancelOrderRequest, CreateOrderRequest, Event, GetOrderRequest, ListOrdersRequest, Order,
    OrderCancelled, OrderCreated, OrderStatus, OrderStatusChanged, ReadEventsRequest,
    UpdateOrderStatusRequest, event::Payload, order_event::Kind,
    order_service_client::OrderServiceClient,
};
use ordo_test_harness::TestServer;
use ordo_test_harness::api::*;
use tonic::{Code, transport::Channel};

mod concurrency;
mod lifecycle;
mod listing;
mod validation;

type Orders = OrderServiceClient<Channel>;

async fn create(orders: &mut Orders, customer: &str) -> Order {
    orders
        .create_order(create_req(customer))
        .await
        .expect("create order")
        .into_inner()
        .order
        .expect("order in response")
}

async fn get(orders: &mut Orders, id: &str) -> Order {
    orders
        .get_order(GetOrderRequest {
            order_id: id.into(),
            at_version: None,
        })
        .await
        .expect("get order")
        .into_inner()
        .order
        .expect("order in response")
}

fn update(id: &str, status: OrderStatus) -> UpdateOrderStatusRequest {
    UpdateOrderStatusRequest {
        order_id: id.into(),
        status: status as i32,
        expected_version: None,
        idempotency_key: String::new(),
    }
}

fn cancel(id: &str, reason: &str) -> CancelOrderRequest {
    CancelOrderRequest {
        order_id: id.into(),
        reason: reason.into(),
        expected_version: None,
        idempotency_key: String::new(),
    }
}

async fn advance(orders: &mut Orders, id: &str, status: OrderStatus) -> Order {
    orders
        .update_order_status(update(id, status))
        .await
        .expect("update status")
        .into_inner()
        .order
        .expect("order in response")
}

/// The events of one order's stream, via ReadEvents with a stream filter.
async fn stream_events(events: &mut Events, order_id: &str) -> Vec<Event> {
    let stream = format!("order-{order_id}");
    read_filtered(events, filter(&[], &[&stream])).await
}

fn order_kind(event: &Event) -> &Kind {
    match &event.payload {
        Some(Payload::Order(payload)) => payload.kind.as_ref().expect("order event kind"),
        other => panic!("order event without an order payload: {other:?}"),
    }
}
