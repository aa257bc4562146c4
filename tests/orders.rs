mod common;

#[tokio::test]
async fn server_starts_and_lists_nothing() {
    let server = common::TestServer::start().await;
    let mut orders = server.orders().await;
    let page = orders
        .list_orders(ordo_api::v1::ListOrdersRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(page.orders.is_empty());
    server.stop().await;
}
