//! The order projection as a pure function of the log, for backends where every node derives
//! records from the events instead of receiving them (`--store nats`): the same fold
//! (`model::apply`) and the same record layout (`records::writes`) as the command path.

use ordo_api::v1::{Event, Order, event::Payload, order_event::Kind};
use prost::Message;

use super::{model, records};
use crate::store::{Derive, Projection, Records, StoreError, decode_record};

/// Derives `o<id>` and the status index from order events; other events derive nothing.
pub struct OrderProjection;

impl Derive for OrderProjection {
    fn derive(
        &self,
        event: &mut Event,
        stored: &mut dyn Records,
    ) -> Result<Projection, StoreError> {
        let Some(order_id) = order_id(event) else {
            return Ok(Projection::default());
        };
        let before: Option<Order> = stored
            .get(&records::order_key(&order_id))?
            .map(|bytes| decode_record(&bytes, "order record"))
            .transpose()?;
        let mut after = before.clone().unwrap_or_default();
        // An order's stream holds only its own events (Publish refuses `order-` streams), so
        // the event's stream version is the order's next version.
        let mut positioned = event.clone();
        positioned.stream_version = after.version + 1;
        model::apply(&mut after, &positioned);
        Ok(Projection {
            records: records::writes(before.as_ref(), &after),
            response: after.encode_to_vec(),
        })
    }
}

fn order_id(event: &Event) -> Option<String> {
    let Some(Payload::Order(payload)) = &event.payload else {
        return None;
    };
    match payload.kind.as_ref()? {
        Kind::Created(created) => Some(created.order_id.clone()),
        Kind::StatusChanged(changed) => Some(changed.order_id.clone()),
        Kind::Cancelled(cancelled) => Some(cancelled.order_id.clone()),
    }
}
