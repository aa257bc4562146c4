//! Text renderings for people: one line per event or order, aligned enough to scan.

use ordo_client::v1::{
    ConsumerGroup, Event, Order, OrderEvent, ParkedEvent, StartPosition, event::Payload,
    order_event, start_position::Position,
};

use super::json::{status_name, strategy_name};

/// Minor-unit digits of a currency: 2 unless known otherwise, so `1250 EUR` reads `12.50 EUR`.
fn minor_digits(currency: &str) -> u32 {
    match currency {
        "JPY" | "KRW" | "VND" | "CLP" | "ISK" | "UGX" | "XAF" | "XOF" | "PYG" => 0,
        "BHD" | "KWD" | "OMR" | "JOD" | "TND" | "LYD" | "IQD" => 3,
        _ => 2,
    }
}

pub fn money(amount_minor: i64, currency: &str) -> String {
    let digits = minor_digits(currency);
    if digits == 0 {
        return format!("{amount_minor} {currency}");
    }
    let scale = 10i64.pow(digits);
    let sign = if amount_minor < 0 { "-" } else { "" };
    let abs = amount_minor.unsigned_abs();
    let scale = scale.unsigned_abs();
    format!(
        "{sign}{}.{:0width$} {currency}",
        abs / scale,
        abs % scale,
        width = digits as usize
    )
}

fn total(order: &Order) -> String {
    let currency = order
        .items
        .first()
        .and_then(|i| i.unit_price.as_ref())
        .map_or("", |p| p.currency.as_str());
    let sum: i64 = order
        .items
        .iter()
        .map(|i| i64::from(i.quantity) * i.unit_price.as_ref().map_or(0, |p| p.amount_minor))
        .sum();
    money(sum, currency)
}

fn time(ts: Option<&prost_types::Timestamp>) -> String {
    ts.map_or_else(|| "-".into(), |t| t.to_string())
}

/// A multi-line view of one order.
pub fn order_detail(order: &Order) -> String {
    let mut lines = vec![
        format!(
            "order {}  {}  version {}",
            order.id,
            status_name(order.status),
            order.version
        ),
        format!("  customer     {}", order.customer_id),
    ];
    for item in &order.items {
        let price = item.unit_price.as_ref();
        lines.push(format!(
            "  item         {} x {} @ {}",
            item.quantity,
            item.sku,
            money(
                price.map_or(0, |p| p.amount_minor),
                price.map_or("", |p| p.currency.as_str())
            )
        ));
    }
    lines.push(format!("  total        {}", total(order)));
    lines.push(format!(
        "  created      {}",
        time(order.created_at.as_ref())
    ));
    lines.push(format!(
        "  updated      {}",
        time(order.updated_at.as_ref())
    ));
    if !order.cancel_reason.is_empty() {
        lines.push(format!("  cancelled    {}", order.cancel_reason));
    }
    lines.push(format!("  last offset  {}", order.last_offset));
    lines.join("\n")
}

/// One line per order, for lists.
pub fn order_row(order: &Order) -> String {
    format!(
        "{}  {:<9}  v{:<3}  {:<16}  {:>2} items  {:>14}  {}",
        order.id,
        status_name(order.status),
        order.version,
        order.customer_id,
        order.items.len(),
        total(order),
        time(order.created_at.as_ref())
    )
}

fn order_event(event: &OrderEvent) -> String {
    match &event.kind {
        Some(order_event::Kind::Created(created)) => format!(
            "customer={} items={}",
            created.customer_id,
            created.items.len()
        ),
        Some(order_event::Kind::StatusChanged(changed)) => format!(
            "{} -> {}",
            status_name(changed.from),
            status_name(changed.to)
        ),
        Some(order_event::Kind::Cancelled(cancelled)) => format!(
            "{} -> CANCELLED reason={:?}",
            status_name(cancelled.from),
            cancelled.reason
        ),
        None => String::new(),
    }
}

/// The payload as text when it is short, printable text; a size otherwise.
fn data(content_type: &str, data: &[u8]) -> String {
    const MAX: usize = 200;
    match std::str::from_utf8(data) {
        Ok(text) if text.len() <= MAX && !text.contains(['\n', '\r']) => text.to_string(),
        _ => format!("<{} bytes {}>", data.len(), content_type),
    }
}

/// One line per event: offset, time, type, stream@version, payload.
pub fn event(event: &Event) -> String {
    let payload = match &event.payload {
        Some(Payload::Order(order)) => order_event(order),
        Some(Payload::Data(bytes)) => data(&event.datacontenttype, bytes),
        None => String::new(),
    };
    format!(
        "#{:<6} {}  {:<24} {}@{}  {}",
        event.offset,
        time(event.time.as_ref()),
        event.r#type,
        event.stream_id,
        event.stream_version,
        payload
    )
}

fn start(position: Option<&StartPosition>) -> String {
    match position.and_then(|p| p.position) {
        Some(Position::Start(_)) => "start".into(),
        Some(Position::End(_)) | None => "end".into(),
        Some(Position::AfterOffset(offset)) => format!("after offset {offset}"),
        Some(Position::FromOffset(offset)) => format!("from offset {offset}"),
    }
}

fn list_or_any(items: &[String]) -> String {
    if items.is_empty() {
        "any".into()
    } else {
        items.join(",")
    }
}

/// A multi-line view of one group: settings, then progress.
pub fn group_detail(group: &ConsumerGroup) -> String {
    let filter = group.filter.clone().unwrap_or_default();
    let backoff = group.retry_backoff.unwrap_or_default();
    [
        format!("group {}  {}", group.name, strategy_name(group.strategy)),
        format!(
            "  filter         types={} streams={}",
            list_or_any(&filter.types),
            list_or_any(&filter.stream_ids)
        ),
        format!("  started at     {}", start(group.start.as_ref())),
        format!(
            "  progress       settled through {} of {} (lag {})",
            group.settled_through_offset,
            group.head_offset,
            group
                .head_offset
                .saturating_sub(group.settled_through_offset)
        ),
        format!(
            "  now            {} members, {} in flight, {} retrying, {} parked",
            group.members, group.in_flight, group.retrying, group.parked
        ),
        format!(
            "  ack timeout    {} ms; parked after {} failed deliveries; retry backoff {}-{} ms",
            group.ack_timeout_ms, group.max_deliveries, backoff.initial_ms, backoff.max_ms
        ),
        format!("  max in flight  {} per member", group.max_in_flight),
        format!("  created        {}", time(group.created_at.as_ref())),
        format!("  updated        {}", time(group.updated_at.as_ref())),
    ]
    .join("\n")
}

/// One line per group, for lists.
pub fn group_row(group: &ConsumerGroup) -> String {
    format!(
        "{:<24} {:<16}  settled {}/{}  lag {}  members {}  in flight {}  retrying {}  parked {}",
        group.name,
        strategy_name(group.strategy),
        group.settled_through_offset,
        group.head_offset,
        group
            .head_offset
            .saturating_sub(group.settled_through_offset),
        group.members,
        group.in_flight,
        group.retrying,
        group.parked
    )
}

/// One line per parked event: the event's line, then its attempts and reason.
pub fn parked(parked: &ParkedEvent) -> String {
    let line = parked.event.as_ref().map_or_else(|| "-".into(), event);
    format!(
        "{line}  attempts={} parked_at={} reason={:?}",
        parked.attempts,
        time(parked.parked_at.as_ref()),
        parked.reason
    )
}

#[cfg(test)]
mod tests {
    use super::money;

    #[test]
    fn money_uses_the_currency_minor_unit() {
        assert_eq!(money(1250, "EUR"), "12.50 EUR");
        assert_eq!(money(5, "USD"), "0.05 USD");
        assert_eq!(money(1250, "JPY"), "1250 JPY");
        assert_eq!(money(1250, "KWD"), "1.250 KWD");
        assert_eq!(money(-150, "EUR"), "-1.50 EUR");
    }
}
