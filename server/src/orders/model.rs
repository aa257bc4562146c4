//! The order state machine and the fold of an order's events into its state. The same fold
//! keeps the projection current and answers `GetOrder(at_version)`, so the two cannot disagree.

use ordo_api::v1::{Event, Order, OrderStatus, event::Payload, order_event::Kind};

use crate::error::OrdoError;

pub const CREATED: &str = "order.created";
pub const STATUS_CHANGED: &str = "order.status_changed";
pub const CANCELLED: &str = "order.cancelled";

/// The stream holding one order's events.
pub fn stream_id(order_id: &str) -> String {
    format!("order-{order_id}")
}

/// Checks a move requested through `UpdateOrderStatus`: one step forward along
/// CREATED -> PAID -> FULFILLED -> DELIVERED.
pub fn check_advance(from: OrderStatus, to: OrderStatus) -> Result<(), OrdoError> {
    use OrderStatus::*;
    let allowed = matches!(
        (from, to),
        (Created, Paid) | (Paid, Fulfilled) | (Fulfilled, Delivered)
    );
    if allowed {
        return Ok(());
    }
    let hint = match (from, to) {
        (_, Cancelled) => "; use CancelOrder to cancel",
        (Cancelled | Delivered, _) => "; the order is final",
        _ => "",
    };
    Err(OrdoError::FailedPrecondition(format!(
        "order cannot move from {} to {}{hint}",
        from.as_str_name(),
        to.as_str_name()
    )))
}

/// Checks a cancellation: allowed from every state before DELIVERED.
pub fn check_cancel(from: OrderStatus) -> Result<(), OrdoError> {
    match from {
        OrderStatus::Delivered | OrderStatus::Cancelled => {
            Err(OrdoError::FailedPrecondition(format!(
                "order is {} and can no longer be cancelled",
                from.as_str_name()
            )))
        }
        _ => Ok(()),
    }
}

/// Applies one event of the order's stream. Events of other kinds are ignored.
pub fn apply(order: &mut Order, event: &Event) {
    let Some(Payload::Order(payload)) = &event.payload else {
        return;
    };
    match &payload.kind {
        Some(Kind::Created(created)) => {
            order.id = created.order_id.clone();
            order.customer_id = created.customer_id.clone();
            order.items = created.items.clone();
            order.status = OrderStatus::Created as i32;
            order.created_at = event.time;
        }
        Some(Kind::StatusChanged(changed)) => order.status = changed.to,
        Some(Kind::Cancelled(cancelled)) => {
            order.status = OrderStatus::Cancelled as i32;
            order.cancel_reason = cancelled.reason.clone();
        }
        None => return,
    }
    order.version = event.stream_version;
    order.updated_at = event.time;
    order.last_offset = event.offset;
}

/// Folds a stream's events, oldest first, into the order they describe.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> Order {
    let mut order = Order::default();
    for event in events {
        apply(&mut order, event);
    }
    order
}
