//! `ordo orders ...`.

use anyhow::Context;
use ordo_client::{
    OrdoClient,
    v1::{
        CancelOrderRequest, CreateOrderRequest, LineItem, ListOrdersRequest, Money, Order,
        OrderStatus, UpdateOrderStatusRequest,
    },
};

use super::{
    args::{OrdersCommand, StatusArg},
    fail::Failure,
    human, json,
    out::Out,
    pages,
};

pub async fn run(client: &OrdoClient, out: &Out, command: OrdersCommand) -> anyhow::Result<()> {
    match command {
        OrdersCommand::Create {
            customer,
            items,
            currency,
            idempotency_key,
        } => {
            let items = items
                .iter()
                .map(|item| parse_item(item, &currency))
                .collect::<Result<Vec<_>, _>>()?;
            let request = CreateOrderRequest {
                customer_id: customer,
                items,
                idempotency_key: idempotency_key.unwrap_or_default(),
            };
            let order = client
                .create_order(request)
                .await
                .context("cannot create the order")?;
            print_order(out, &order)
        }
        OrdersCommand::Get { id, at_version } => {
            let order = client
                .get_order(&id, at_version)
                .await
                .with_context(|| format!("cannot get order {id}"))?;
            print_order(out, &order)
        }
        OrdersCommand::List {
            status,
            page_size,
            page_token,
            all,
        } => list(client, out, status, page_size, page_token, all).await,
        OrdersCommand::Status {
            id,
            status,
            expected_version,
            idempotency_key,
        } => {
            let request = UpdateOrderStatusRequest {
                order_id: id.clone(),
                status: proto_status(status) as i32,
                expected_version,
                idempotency_key: idempotency_key.unwrap_or_default(),
            };
            let order = client
                .update_order_status(request)
                .await
                .with_context(|| format!("cannot change the status of order {id}"))?;
            print_order(out, &order)
        }
        OrdersCommand::Cancel {
            id,
            reason,
            expected_version,
            idempotency_key,
        } => {
            let request = CancelOrderRequest {
                order_id: id.clone(),
                reason,
                expected_version,
                idempotency_key: idempotency_key.unwrap_or_default(),
            };
            let order = client
                .cancel_order(request)
                .await
                .with_context(|| format!("cannot cancel order {id}"))?;
            print_order(out, &order)
        }
    }
}

fn print_order(out: &Out, order: &Order) -> anyhow::Result<()> {
    if out.json() {
        out.json_line(&json::order(order))
    } else {
        out.line(&human::order_detail(order))
    }
}

async fn list(
    client: &OrdoClient,
    out: &Out,
    status: Option<StatusArg>,
    page_size: u32,
    page_token: Option<String>,
    all: bool,
) -> anyhow::Result<()> {
    let status = status.map_or(OrderStatus::Unspecified, proto_status) as i32;
    let fetch = |page_token| async move {
        let page = client
            .list_orders(ListOrdersRequest {
                page_size,
                page_token,
                status,
            })
            .await
            .context("cannot list orders")?;
        Ok((page.orders, page.next_page_token))
    };
    let print = |order: &Order| {
        if out.json() {
            out.json_line(&json::order(order))
        } else {
            out.line(&human::order_row(order))
        }
    };
    let printed = pages::print_pages(out, "orders", all, page_token, fetch, print).await?;
    if printed == 0 && !out.json() {
        out.note("no orders");
    }
    Ok(())
}

fn proto_status(status: StatusArg) -> OrderStatus {
    match status {
        StatusArg::Created => OrderStatus::Created,
        StatusArg::Paid => OrderStatus::Paid,
        StatusArg::Fulfilled => OrderStatus::Fulfilled,
        StatusArg::Delivered => OrderStatus::Delivered,
        StatusArg::Cancelled => OrderStatus::Cancelled,
    }
}

/// `SKU:QTY:PRICE` with the price in minor units. Only the shape is checked here; limits
/// (quantity >= 1, SKU length...) are the server's to enforce, with its own messages.
fn parse_item(text: &str, currency: &str) -> Result<LineItem, Failure> {
    let bad = |why: &str| {
        Failure::usage(format!(
            "invalid --item {text:?}: {why}; expected SKU:QUANTITY:UNIT_PRICE, e.g. book:2:1250 (price in cents)"
        ))
    };
    let mut parts = text.rsplitn(3, ':');
    let (Some(price), Some(quantity), Some(sku)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("missing parts"));
    };
    let quantity = quantity
        .parse::<u32>()
        .map_err(|_| bad("QUANTITY is not a whole number"))?;
    let amount_minor = price
        .parse::<i64>()
        .map_err(|_| bad("UNIT_PRICE is not a whole number of minor units"))?;
    Ok(LineItem {
        sku: sku.to_string(),
        quantity,
        unit_price: Some(Money {
            amount_minor,
            currency: currency.to_string(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::parse_item;

    #[test]
    fn items_parse_from_the_right() {
        let item = parse_item("ns:book:2:1250", "EUR").map_err(|e| e.message);
        let item = item.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(item.sku, "ns:book");
        assert_eq!(item.quantity, 2);
        assert_eq!(item.unit_price.map(|p| p.amount_minor), Some(1250));
        assert!(parse_item("book:2", "EUR").is_err());
        assert!(parse_item("book:two:1", "EUR").is_err());
    }
}
