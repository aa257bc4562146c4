//! `ordo.v1.OrderService`: maps requests to [`OrderCommands`] and back.

use ordo_api::v1::{
    CancelOrderRequest, CancelOrderResponse, CreateOrderRequest, CreateOrderResponse,
    GetOrderRequest, GetOrderResponse, ListOrdersRequest, ListOrdersResponse,
    UpdateOrderStatusRequest, UpdateOrderStatusResponse, order_service_server::OrderService,
};
use tonic::{Request, Response, Status};

use crate::orders::OrderCommands;

pub struct OrderApi {
    commands: OrderCommands,
}

impl OrderApi {
    pub fn new(commands: OrderCommands) -> Self {
        Self { commands }
    }
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<CreateOrderResponse>, Status> {
        let order = self.commands.create(request.into_inner()).await?;
        Ok(Response::new(CreateOrderResponse { order: Some(order) }))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<GetOrderResponse>, Status> {
        let req = request.into_inner();
        let order = self.commands.get(&req.order_id, req.at_version)?;
        Ok(Response::new(GetOrderResponse { order: Some(order) }))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        Ok(Response::new(self.commands.list(request.get_ref())?))
    }

    async fn update_order_status(
        &self,
        request: Request<UpdateOrderStatusRequest>,
    ) -> Result<Response<UpdateOrderStatusResponse>, Status> {
        let order = self.commands.update_status(request.into_inner()).await?;
        Ok(Response::new(UpdateOrderStatusResponse {
            order: Some(order),
        }))
    }

    async fn cancel_order(
        &self,
        request: Request<CancelOrderRequest>,
    ) -> Result<Response<CancelOrderResponse>, Status> {
        let order = self.commands.cancel(request.into_inner()).await?;
        Ok(Response::new(CancelOrderResponse { order: Some(order) }))
    }
}
