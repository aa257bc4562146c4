//! Keys of the order projection in the log's record space.
//!
//! - `o` + order id           -> encoded `Order`
//! - `S` + status byte + id   -> empty (index for `ListOrders` with a status filter)

use ordo_api::v1::{Order, OrderStatus};
use prost::Message;

use crate::store::RecordWrite;

const ORDER: u8 = b'o';
const BY_STATUS: u8 = b'S';

pub fn order_key(order_id: &str) -> Vec<u8> {
    let mut key = vec![ORDER];
    key.extend_from_slice(order_id.as_bytes());
    key
}

pub fn all_orders_prefix() -> Vec<u8> {
    vec![ORDER]
}

pub fn status_prefix(status: OrderStatus) -> Vec<u8> {
    vec![BY_STATUS, status as u8]
}

pub fn status_key(status: OrderStatus, order_id: &str) -> Vec<u8> {
    let mut key = status_prefix(status);
    key.extend_from_slice(order_id.as_bytes());
    key
}

/// The id at the end of either kind of key.
pub fn id_from_key(key: &[u8]) -> String {
    let skip = if key.first() == Some(&BY_STATUS) {
        2
    } else {
        1
    };
    String::from_utf8_lossy(key.get(skip..).unwrap_or_default()).into_owned()
}

/// The record writes that move the projection from `before` (None when new) to `after`.
pub fn writes(before: Option<&Order>, after: &Order) -> Vec<RecordWrite> {
    let mut writes = vec![RecordWrite {
        key: order_key(&after.id),
        value: Some(after.encode_to_vec()),
    }];
    let before_status = before.map(|o| o.status());
    if before_status != Some(after.status()) {
        if let Some(status) = before_status {
            writes.push(RecordWrite {
                key: status_key(status, &after.id),
                value: None,
            });
        }
        writes.push(RecordWrite {
            key: status_key(after.status(), &after.id),
            value: Some(Vec::new()),
        });
    }
    writes
}
