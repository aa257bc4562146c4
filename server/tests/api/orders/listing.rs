//! ListOrders: pages in creation order and filters by status.

use super::*;

#[tokio::test]
async fn list_orders_pages_in_creation_order_and_filters_by_status() {
    let server = TestServer::start().await;
    let mut orders = server.orders().await;
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(create(&mut orders, &format!("cust-{i}")).await.id);
    }
    // 0,1,2 paid; 3 cancelled; 4 fulfilled; 5,6 stay created.
    for id in &created[0..3] {
        advance(&mut orders, id, OrderStatus::Paid).await;
    }
    orders
        .cancel_order(cancel(&created[3], "no"))
        .await
        .expect("cancel");
    advance(&mut orders, &created[4], OrderStatus::Paid).await;
    advance(&mut orders, &created[4], OrderStatus::Fulfilled).await;

    async fn list_all(orders: &mut Orders, status: OrderStatus, page_size: u32) -> Vec<Order> {
        let mut out = Vec::new();
        let mut token = String::new();
        for _ in 0..100 {
            let page = orders
                .list_orders(ListOrdersRequest {
                    page_size,
                    page_token: token.clone(),
                    status: status as i32,
                })
                .await
                .expect("list page")
                .into_inner();
            assert!(page_size == 0 || page.orders.len() <= page_size as usize);
            out.extend(page.orders);
            if page.next_page_token.is_empty() {
                return out;
            }
            token = page.next_page_token;
        }
        panic!("paging did not end");
    }

    let all = list_all(&mut orders, OrderStatus::Unspecified, 3).await;
    let ids: Vec<String> = all.iter().map(|o| o.id.clone()).collect();
    let mut sorted = created.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "every order once, in id order");
    assert_eq!(
        ids, created,
        "ids sort in creation order (ULIDs of sequential creates)"
    );
    // The listing shows current state.
    assert_eq!(all[3].status(), OrderStatus::Cancelled);
    assert_eq!(all[4].version, 3);

    let page = orders
        .list_orders(ListOrdersRequest {
            page_size: 3,
            ..Default::default()
        })
        .await
        .expect("first page")
        .into_inner();
    assert_eq!(page.orders.len(), 3);
    assert_eq!(page.next_page_token, created[2]);
    let exact = list_all(&mut orders, OrderStatus::Unspecified, 7).await;
    assert_eq!(exact.len(), 7, "a full last page ends paging");

    let by_status = |status: OrderStatus| {
        let all = all.clone();
        move || -> Vec<String> {
            all.iter()
                .filter(|o| o.status() == status)
                .map(|o| o.id.clone())
                .collect()
        }
    };
    for status in [
        OrderStatus::Created,
        OrderStatus::Paid,
        OrderStatus::Fulfilled,
        OrderStatus::Cancelled,
        OrderStatus::Delivered,
    ] {
        let listed = list_all(&mut orders, status, 2).await;
        assert!(listed.iter().all(|o| o.status() == status));
        let ids: Vec<String> = listed.into_iter().map(|o| o.id).collect();
        assert_eq!(ids, by_status(status)(), "{status:?}");
    }
    assert_eq!(
        list_all(&mut orders, OrderStatus::Paid, 0).await.len(),
        3,
        "page_size 0 means the default"
    );

    let result = orders
        .list_orders(ListOrdersRequest {
            page_size: 501,
            ..Default::default()
        })
        .await;
    assert_status(result, Code::InvalidArgument, "page_size 501");
    let result = orders
        .list_orders(ListOrdersRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await;
    assert_status(result, Code::InvalidArgument, "page_token");
    let result = orders
        .list_orders(ListOrdersRequest {
            status: 42,
            ..Default::default()
        })
        .await;
    assert_status(result, Code::InvalidArgument, "status 42");
    server.stop().await;
}
