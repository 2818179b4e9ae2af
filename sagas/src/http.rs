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
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use sagaflow_engine::command::CommandOutcome;
use sagaflow_engine::http::{accepted_body, run_command, ApiError, CommandRequest, PathParams};
use sagaflow_engine::Aggregate;

use crate::inventory::{Inventory, InventoryCommand};
use crate::order::{OrderCommand, OrderLine};
use crate::payment::AccountCommand;
use crate::types::{AmountCents, Quantity};
use crate::Domain;

/// Body of `POST /inventory/{sku}/restock`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestockBody {
    pub quantity: Quantity,
}

/// Body of `POST /accounts/{customer_id}/deposits`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepositBody {
    pub amount_cents: AmountCents,
}

/// Body of `POST /orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderBody {
    pub customer_id: Uuid,
    pub lines: Vec<OrderLine>,
}

/// Body of `POST /orders/{order_id}/cancel`; the whole body is optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    #[serde(default)]
    pub reason: Option<String>,
}

pub(crate) fn routes(domain: Domain) -> Router {
    Router::new()
        .route("/inventory/{sku}/restock", post(restock))
        .route("/accounts/{customer_id}/deposits", post(deposit))
        .route("/orders", post(place_order))
        .route("/orders/{order_id}/cancel", post(cancel_order))
        .route("/orders/{order_id}/saga", get(order_saga))
        .with_state(domain)
}

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

/// Mints the order id (UUIDv7). A repeat with the same `Idempotency-Key` answers the first
/// response, so it names the same order and places nothing.
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
        json!({
            "order_id": order_id,
            "saga_id": crate::order_fulfillment::saga_id_of(order_id),
            "stream_id": outcome.stream_id,
            "version": outcome.version,
        })
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
async fn order_saga(
    State(domain): State<Domain>,
    PathParams(order_id): PathParams<Uuid>,
) -> Result<Json<Value>, ApiError> {
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
    let saga = sagaflow_engine::saga::http::find_saga(bus.pool(), saga_id).await?;
    Ok(Json(json!({
        "order_id": order_id,
        "saga_id": saga_id,
        "state": saga.map(|s| s.state),
        "links": {
            "saga": format!("/sagas/{saga_id}"),
            "timeline": format!("/sagas/{saga_id}/timeline"),
            "order_state": format!("/streams/{stream}/state"),
        },
    })))
}
