//! The domain's command routes (DESIGN §5). They run on the engine's [`run_command`], so
//! their status codes, error bodies and `Idempotency-Key` handling are those of the generic
//! route `POST /commands/{aggregate_type}/{aggregate_id}`:
//!
//! | route | body | 202 body |
//! |---|---|---|
//! | `POST /inventory/{sku}/restock` | `{"quantity": n}` | [`accepted_body`] |
//! | `POST /accounts/{customer_id}/deposits` | `{"amount_cents": n}` | [`accepted_body`] |
//! | `POST /orders` | `{"customer_id", "lines": [{"sku", "quantity", "unit_price_cents"}]}` | `{"order_id", "stream_id", "version"}` |
//! | `POST /orders/{order_id}/cancel` | `{"reason"}`, `{}` or none | [`accepted_body`] |
//!
//! And one query for debugging: `GET /orders/{order_id}/saga` names the order's fulfillment
//! saga, `{"order_id", "saga_id", "state", "links": {"saga", "timeline", "order_state"}}`
//! (`state` is `null` until the saga started); 404 `order_not_found` for an order never placed.
//!
//! Bodies refuse unknown fields and invalid values with `422 invalid_body`; a malformed path
//! parameter is a `400`; a domain rejection is a `422` with its code (`404 order_not_found`
//! for an order that was never placed).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use sagaflow_engine::command::CommandOutcome;
use sagaflow_engine::http::{
    accepted_body, run_command, AcceptedCommand, ApiError, CommandRequest, ErrorBody, PathParams,
};
use sagaflow_engine::Aggregate;

use crate::inventory::{Inventory, InventoryCommand};
use crate::order::{OrderCommand, OrderLine};
use crate::payment::AccountCommand;
use crate::types::{AmountCents, Quantity};
use crate::Domain;

/// Body of `POST /inventory/{sku}/restock`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestockBody {
    /// Units to add to the stock on hand.
    pub quantity: Quantity,
}

/// Body of `POST /accounts/{customer_id}/deposits`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DepositBody {
    /// Money to add to the balance, in cents.
    pub amount_cents: AmountCents,
}

/// Body of `POST /orders`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderBody {
    /// The customer who orders; their account pays.
    pub customer_id: Uuid,
    /// What is ordered: at least one line, at most one per SKU.
    pub lines: Vec<OrderLine>,
}

/// Body of `POST /orders/{order_id}/cancel`; the whole body is optional.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Why the customer cancels.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 500, pattern = r"\S")]
    pub reason: Option<String>,
}

/// The answer to `POST /orders`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderAccepted {
    /// The order's id, minted by the route.
    pub order_id: Uuid,
    /// The id of its fulfillment saga (known before the saga starts).
    pub saga_id: Uuid,
    /// `order-<order_id>`.
    pub stream_id: String,
    /// The stream's version after the order was placed.
    pub version: i64,
}

/// The answer to `GET /orders/{order_id}/saga`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderSaga {
    /// The order.
    pub order_id: Uuid,
    /// The id of its fulfillment saga, derived from the order id.
    pub saga_id: Uuid,
    /// The saga's state; `null` until the saga started.
    pub state: Option<String>,
    /// Where to look next.
    pub links: OrderSagaLinks,
}

/// Where to look next.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderSagaLinks {
    /// `/sagas/<saga_id>`: the saga in the saga read model.
    pub saga: String,
    /// `/sagas/<saga_id>/timeline`: the saga's and its participants' events, in order.
    pub timeline: String,
    /// `/streams/order-<order_id>/state`: the order aggregate's state.
    pub order_state: String,
}

/// The domain's command routes (see the module documentation), over `domain`.
pub fn routes(domain: Domain) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(restock))
        .routes(routes!(deposit))
        .routes(routes!(place_order))
        .routes(routes!(cancel_order))
        .routes(routes!(order_saga))
        .with_state(domain)
}

/// Adds units to a SKU's stock.
#[utoipa::path(
    post,
    path = "/inventory/{sku}/restock",
    tag = "inventory",
    params(("sku" = String, Path, pattern = "^[A-Za-z0-9_.-]{1,64}$", example = "SKU-1", description = "The SKU")),
    request_body = RestockBody,
    responses((status = 202, description = "accepted", body = AcceptedCommand))
)]
async fn restock(
    State(domain): State<Domain>,
    PathParams(sku): PathParams<String>,
    request: CommandRequest<RestockBody>,
) -> Response {
    if let Err(message) = Inventory::validate_id(&sku) {
        return ApiError::bad_request("invalid_id", message).into_response();
    }
    let request = request.map(|b| InventoryCommand::Restock {
        quantity: b.quantity,
    });
    run_command(&domain.inventory, &sku, request, false, accepted_body).await
}

/// Deposits money on a customer's account.
#[utoipa::path(
    post,
    path = "/accounts/{customer_id}/deposits",
    tag = "accounts",
    params(("customer_id" = Uuid, Path, description = "The customer")),
    request_body = DepositBody,
    responses((status = 202, description = "accepted", body = AcceptedCommand))
)]
async fn deposit(
    State(domain): State<Domain>,
    PathParams(customer_id): PathParams<Uuid>,
    request: CommandRequest<DepositBody>,
) -> Response {
    let request = request.map(|b| AccountCommand::Deposit {
        amount_cents: b.amount_cents,
    });
    let id = customer_id.to_string();
    run_command(&domain.accounts, &id, request, false, accepted_body).await
}

/// Places an order, which starts its fulfillment saga. Mints the order id (UUIDv7); a repeat
/// with the same `Idempotency-Key` answers the first response, so it names the same order and
/// places nothing.
#[utoipa::path(
    post,
    path = "/orders",
    tag = "orders",
    request_body = PlaceOrderBody,
    responses(
        (status = 202, description = "placed", body = OrderAccepted),
        (status = 422, description = "`invalid_body`, or the domain's rejection: `empty_order`, `too_many_lines`, `duplicate_sku`, `amount_too_large`", body = ErrorBody),
    )
)]
async fn place_order(
    State(domain): State<Domain>,
    request: CommandRequest<PlaceOrderBody>,
) -> Response {
    let order_id = Uuid::now_v7();
    let request = request.map(|b| OrderCommand::Place {
        customer_id: b.customer_id,
        lines: b.lines,
    });
    let respond = move |outcome: &CommandOutcome| {
        serde_json::to_value(OrderAccepted {
            order_id,
            saga_id: crate::order_fulfillment::saga_id_of(order_id),
            stream_id: outcome.stream_id.clone(),
            version: outcome.version,
        })
        .expect("answers serialize")
    };
    run_command(
        &domain.orders,
        &order_id.to_string(),
        request,
        true,
        respond,
    )
    .await
}

/// Cancels a pending order; its saga compensates what it did.
#[utoipa::path(
    post,
    path = "/orders/{order_id}/cancel",
    tag = "orders",
    params(("order_id" = Uuid, Path, description = "The order")),
    request_body(content = Option<CancelBody>, description = "optional: why"),
    responses(
        (status = 202, description = "cancelled (or already cancelled)", body = AcceptedCommand),
        (status = 404, description = "`order_not_found`", body = ErrorBody),
        (status = 422, description = "`order_not_pending`: the order was confirmed or rejected; `invalid_reason`", body = ErrorBody),
    )
)]
async fn cancel_order(
    State(domain): State<Domain>,
    PathParams(order_id): PathParams<Uuid>,
    request: CommandRequest<Option<CancelBody>>,
) -> Response {
    let request = request.map(|b| OrderCommand::Cancel {
        reason: b.and_then(|b| b.reason),
    });
    let id = order_id.to_string();
    run_command(&domain.orders, &id, request, false, accepted_body).await
}

#[cfg(test)]
mod tests;

/// The order's fulfillment saga: its id (derived from the order id, so it is known before the
/// saga starts), its state in the saga read model, and where to look next.
#[utoipa::path(
    get,
    path = "/orders/{order_id}/saga",
    tag = "orders",
    params(("order_id" = Uuid, Path, description = "The order")),
    responses(
        (status = 200, description = "the order's saga", body = OrderSaga),
        (status = 404, description = "`order_not_found`", body = ErrorBody),
    )
)]
async fn order_saga(
    State(domain): State<Domain>,
    PathParams(order_id): PathParams<Uuid>,
) -> Result<Json<OrderSaga>, ApiError> {
    let bus = domain.orders.bus();
    let stream =
        sagaflow_engine::aggregate::stream_id::<crate::order::Order>(&order_id.to_string());
    if bus.store().stream_version(&stream).await? == 0 {
        return Err(ApiError::not_found(
            "order_not_found",
            format!("no order {order_id}"),
        ));
    }
    let saga_id = crate::order_fulfillment::saga_id_of(order_id);
    let saga = sagaflow_engine::saga::read_model::find(bus.pool(), saga_id).await?;
    Ok(Json(OrderSaga {
        order_id,
        saga_id,
        state: saga.map(|s| s.state),
        links: OrderSagaLinks {
            saga: format!("/sagas/{saga_id}"),
            timeline: format!("/sagas/{saga_id}/timeline"),
            order_state: format!("/streams/{stream}/state"),
        },
    }))
}
