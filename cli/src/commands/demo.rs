//! `ordo demo`: fills a server with realistic order traffic so a newcomer has something to
//! tail, list and query within a minute of starting it.

use std::time::{Duration, Instant};

use anyhow::Context;
use ordo_client::{
    OrdoClient,
    v1::{
        CancelOrderRequest, CreateOrderRequest, LineItem, Money, OrderStatus,
        UpdateOrderStatusRequest,
    },
};
use rand::{Rng, seq::IndexedRandom};
use serde_json::json;

use super::{out::Out, progress::progress_bar};

const SKUS: &[(&str, i64)] = &[
    ("book-rust", 3999),
    ("mug-ordo", 1250),
    ("tea-green", 450),
    ("pen-black", 199),
    ("lamp-desk", 2899),
];

/// Counts of what the demo did, for the summary line.
#[derive(Default)]
struct Tally {
    orders: usize,
    events: usize,
    delivered: usize,
    cancelled: usize,
}

pub async fn run(
    client: &OrdoClient,
    out: &Out,
    orders: usize,
    customers: usize,
    delay: Duration,
) -> anyhow::Result<()> {
    let bar = progress_bar(orders as u64, "orders");
    let started = Instant::now();
    let mut tally = Tally::default();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    for _ in 0..orders {
        tokio::select! {
            _ = &mut ctrl_c => break,
            result = one_order(client, customers.max(1), &mut tally) => result?,
        }
        bar.inc(1);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    if out.json() {
        out.json_line(&json!({
            "orders": tally.orders,
            "events": tally.events,
            "delivered": tally.delivered,
            "cancelled": tally.cancelled,
            "seconds": seconds,
        }))
    } else {
        out.line(&format!(
            "created {} orders ({} delivered, {} cancelled): {} events in {seconds:.2} s",
            tally.orders, tally.delivered, tally.cancelled, tally.events
        ))
    }
}

/// One order's life: created, then a random number of steps forward, sometimes cancelled.
async fn one_order(client: &OrdoClient, customers: usize, tally: &mut Tally) -> anyhow::Result<()> {
    let request = {
        let mut rng = rand::rng();
        let count = rng.random_range(1..=3);
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            let Some((sku, price)) = SKUS.choose(&mut rng) else {
                break;
            };
            items.push(LineItem {
                sku: (*sku).to_string(),
                quantity: rng.random_range(1..=4),
                unit_price: Some(Money {
                    amount_minor: *price,
                    currency: "EUR".into(),
                }),
            });
        }
        CreateOrderRequest {
            customer_id: format!("cust-{}", rng.random_range(1..=customers)),
            items,
            idempotency_key: String::new(),
        }
    };
    let order = client
        .create_order(request)
        .await
        .context("demo: cannot create an order")?;
    tally.orders += 1;
    tally.events += 1;
    let (steps, cancel) = {
        let mut rng = rand::rng();
        (rng.random_range(0..=3usize), rng.random_bool(0.15))
    };
    let path = [
        OrderStatus::Paid,
        OrderStatus::Fulfilled,
        OrderStatus::Delivered,
    ];
    for status in path.iter().take(steps) {
        client
            .update_order_status(UpdateOrderStatusRequest {
                order_id: order.id.clone(),
                status: *status as i32,
                expected_version: None,
                idempotency_key: String::new(),
            })
            .await
            .context("demo: cannot move an order")?;
        tally.events += 1;
    }
    if steps == path.len() {
        tally.delivered += 1;
    } else if cancel {
        client
            .cancel_order(CancelOrderRequest {
                order_id: order.id.clone(),
                reason: "demo: customer changed their mind".into(),
                expected_version: None,
                idempotency_key: String::new(),
            })
            .await
            .context("demo: cannot cancel an order")?;
        tally.events += 1;
        tally.cancelled += 1;
    }
    Ok(())
}
