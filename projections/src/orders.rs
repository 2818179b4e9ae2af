//! The orders read model (`read_orders`, one row per `order-<order_id>` stream) and its routes:
//!
//! - `GET /orders/{order_id}` → [`OrderView`], with `ETag: "order-<order_id>@<version>"`;
//!   `404 order_not_found`.
//! - `GET /orders?status=&customer_id=&limit=&after=` → [`OrderPage`], keyset-paged by order id
//!   (UUIDv7, so oldest first), with `X-Projection-Position`. `limit` is 1..=500 (default 50),
//!   `after` is the `next_after` of the previous page; an empty parameter counts as absent, any
//!   other bad value (or an unknown parameter) is `400 invalid_query`. Each order that exists
//!   when the first page is read appears exactly once across the pages, even while new
//!   orders arrive, since an order id never changes and pages continue strictly after the
//!   cursor.

use async_trait::async_trait;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use sagaflow_engine::http::{ApiError, ErrorBody, PathParams, QueryParams};
use sagaflow_sagas::order::{OrderEvent, OrderLine, OrderStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgConnection, QueryBuilder, Row};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use sagaflow_engine::http::query::{self, QueryState};
use sagaflow_engine::projection::{ProjectionError, Projector, StoredEvent, Versioned};

/// The orders projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrdersProjection;

const NAME: &str = OrdersProjection::NAME;
const PREFIX: &str = OrdersProjection::STREAM_PREFIX;

/// One order as the read model holds it; the same facts as the `Order` aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    /// The customer who placed the order.
    pub customer_id: Uuid,
    /// Where the order is.
    pub status: OrderStatus,
    /// Why it was rejected or cancelled, if a reason was given.
    pub reason: Option<String>,
    /// The lines as placed, at most one per SKU.
    pub lines: Vec<OrderLine>,
    /// The sum of the lines' subtotals, in cents.
    pub total_cents: i64,
    /// When the `order_placed` event was recorded.
    pub placed_at: DateTime<Utc>,
    /// When the last event applied was recorded.
    pub updated_at: DateTime<Utc>,
}

fn status_str(s: OrderStatus) -> &'static str {
    match s {
        OrderStatus::Pending => "pending",
        OrderStatus::Confirmed => "confirmed",
        OrderStatus::Rejected => "rejected",
        OrderStatus::Cancelled => "cancelled",
    }
}

fn parse_status(s: &str) -> Option<OrderStatus> {
    Some(match s {
        "pending" => OrderStatus::Pending,
        "confirmed" => OrderStatus::Confirmed,
        "rejected" => OrderStatus::Rejected,
        "cancelled" => OrderStatus::Cancelled,
        _ => return None,
    })
}

fn order_id_of(stream_id: &str) -> Result<Uuid, ProjectionError> {
    stream_id
        .strip_prefix(PREFIX)
        .and_then(|id| Uuid::try_parse(id).ok())
        .ok_or_else(|| ProjectionError::Invalid {
            stream_id: stream_id.to_owned(),
            stream_version: 0,
            message: "an order stream id is order-<uuid>".into(),
        })
}

#[async_trait]
impl Projector for OrdersProjection {
    type Row = OrderRow;

    const NAME: &'static str = "orders";
    const TOPIC: &'static str = "order.events";
    const STREAM_PREFIX: &'static str = "order-";
    const TABLES: &'static [&'static str] = &["read_orders"];

    // Mirrors `Order::apply`: placing sets the customer, lines and total (the reason survives,
    // as in the aggregate); a rejection sets the reason; a cancellation replaces it.
    fn apply(&self, row: &mut Option<OrderRow>, e: &StoredEvent) -> Result<(), ProjectionError> {
        match e.decode::<OrderEvent>()? {
            OrderEvent::OrderPlaced {
                customer_id,
                lines,
                total_cents,
            } => {
                let reason = row.take().and_then(|r| r.reason);
                *row = Some(OrderRow {
                    customer_id,
                    status: OrderStatus::Pending,
                    reason,
                    lines,
                    total_cents,
                    placed_at: e.recorded_at,
                    updated_at: e.recorded_at,
                });
            }
            other => {
                let r = row
                    .as_mut()
                    .ok_or_else(|| e.invalid("an order event before order_placed"))?;
                match other {
                    OrderEvent::OrderPlaced { .. } => unreachable!("handled above"),
                    OrderEvent::OrderConfirmed => r.status = OrderStatus::Confirmed,
                    OrderEvent::OrderRejected { reason } => {
                        r.status = OrderStatus::Rejected;
                        r.reason = Some(reason);
                    }
                    OrderEvent::OrderCancelled { reason } => {
                        r.status = OrderStatus::Cancelled;
                        r.reason = reason;
                    }
                }
                r.updated_at = e.recorded_at;
            }
        }
        Ok(())
    }

    async fn load(
        &self,
        conn: &mut PgConnection,
        stream_ids: &[&str],
    ) -> Result<Vec<Versioned<OrderRow>>, ProjectionError> {
        let ids = stream_ids
            .iter()
            .map(|s| order_id_of(s))
            .collect::<Result<Vec<_>, _>>()?;
        let rows = sqlx::query(
            "SELECT order_id, customer_id, status, reason, lines, total_cents, placed_at, updated_at, version
             FROM read_orders WHERE order_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| {
                let order_id: Uuid = r.try_get(0)?;
                let stream_id = format!("{PREFIX}{order_id}");
                let status: String = r.try_get(2)?;
                let status = parse_status(&status).ok_or_else(|| ProjectionError::Invalid {
                    stream_id: stream_id.clone(),
                    stream_version: 0,
                    message: format!("read_orders holds an unknown status {status:?}"),
                })?;
                let Json(lines): Json<Vec<OrderLine>> = r.try_get(4)?;
                Ok(Versioned {
                    stream_id,
                    version: r.try_get(8)?,
                    row: OrderRow {
                        customer_id: r.try_get(1)?,
                        status,
                        reason: r.try_get(3)?,
                        lines,
                        total_cents: r.try_get(5)?,
                        placed_at: r.try_get(6)?,
                        updated_at: r.try_get(7)?,
                    },
                })
            })
            .collect()
    }

    async fn store(
        &self,
        conn: &mut PgConnection,
        rows: &[&Versioned<OrderRow>],
    ) -> Result<(), ProjectionError> {
        if rows.is_empty() {
            return Ok(());
        }
        let n = rows.len();
        let (mut ids, mut customers, mut statuses, mut reasons, mut lines) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut totals, mut placed, mut updated, mut versions) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for v in rows {
            let r = &v.row;
            ids.push(order_id_of(&v.stream_id)?);
            customers.push(r.customer_id);
            statuses.push(status_str(r.status));
            reasons.push(r.reason.as_deref());
            lines.push(Json(&r.lines));
            totals.push(r.total_cents);
            placed.push(r.placed_at);
            updated.push(r.updated_at);
            versions.push(v.version);
        }
        sqlx::query(
            "INSERT INTO read_orders AS t
                 (order_id, customer_id, status, reason, lines, total_cents, placed_at, updated_at, version)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[],
                                  $6::int8[], $7::timestamptz[], $8::timestamptz[], $9::int8[])
             ON CONFLICT (order_id) DO UPDATE SET
                 customer_id = EXCLUDED.customer_id, status = EXCLUDED.status, reason = EXCLUDED.reason,
                 lines = EXCLUDED.lines, total_cents = EXCLUDED.total_cents,
                 placed_at = EXCLUDED.placed_at, updated_at = EXCLUDED.updated_at, version = EXCLUDED.version
             WHERE t.version < EXCLUDED.version",
        )
        .bind(&ids)
        .bind(&customers)
        .bind(&statuses)
        .bind(&reasons)
        .bind(&lines)
        .bind(&totals)
        .bind(&placed)
        .bind(&updated)
        .bind(&versions)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// The query routes of this read model.
pub fn routes(state: QueryState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list_orders))
        .routes(routes!(get_order))
        .with_state(state)
}

/// The body of `GET /orders/{order_id}`, and of each order in a page.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct OrderView {
    /// The order.
    pub order_id: Uuid,
    /// The customer who placed it.
    pub customer_id: Uuid,
    /// `pending`, `confirmed`, `rejected` or `cancelled`.
    #[schema(pattern = "^(pending|confirmed|rejected|cancelled)$")]
    pub status: String,
    /// Why it was rejected or cancelled, if a reason was given.
    pub reason: Option<String>,
    /// `[{"sku", "quantity", "unit_price_cents"}]`, as placed.
    pub lines: Value,
    /// The sum of the lines' subtotals, in cents.
    pub total_cents: i64,
    /// When the `order_placed` event was recorded.
    pub placed_at: DateTime<Utc>,
    /// When the last event applied was recorded.
    pub updated_at: DateTime<Utc>,
    /// The version of stream `order-<order_id>` this view reflects.
    pub version: i64,
}

const VIEW_COLUMNS: &str =
    "order_id, customer_id, status, reason, lines, total_cents, placed_at, updated_at, version";

fn view_of(r: &sqlx::postgres::PgRow) -> Result<OrderView, sqlx::Error> {
    Ok(OrderView {
        order_id: r.try_get(0)?,
        customer_id: r.try_get(1)?,
        status: r.try_get(2)?,
        reason: r.try_get(3)?,
        lines: r.try_get(4)?,
        total_cents: r.try_get(5)?,
        placed_at: r.try_get(6)?,
        updated_at: r.try_get(7)?,
        version: r.try_get(8)?,
    })
}

/// An order from the read model, with `ETag: "order-<order_id>@<version>"`.
#[utoipa::path(
    get,
    path = "/orders/{order_id}",
    tag = "orders",
    params(
        ("order_id" = Uuid, Path, description = "The order"),
        ("if-none-match" = Option<String>, Header, description = "A tag of an earlier answer: 304 if the order has not changed"),
    ),
    responses(
        (status = 200, description = "the order", body = OrderView),
        (status = 304, description = "not changed since the tag"),
        (status = 404, description = "`order_not_found`", body = ErrorBody),
    )
)]
async fn get_order(
    State(state): State<QueryState>,
    PathParams(order_id): PathParams<Uuid>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let row = sqlx::query(&format!(
        "SELECT {VIEW_COLUMNS} FROM read_orders WHERE order_id = $1"
    ))
    .bind(order_id)
    .fetch_optional(&state.pool)
    .await?;
    let Some(row) = row else {
        return Err(state
            .not_found(NAME, "order_not_found", format!("no order {order_id}"))
            .await);
    };
    let view = view_of(&row)?;
    Ok(query::single(
        &headers,
        &format!("{PREFIX}{order_id}"),
        view.version,
        &view,
    ))
}

/// The query of `GET /orders`; every value is parsed by hand so that an empty one counts as
/// absent and a bad one names itself in the `400`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only orders in this status: `pending`, `confirmed`, `rejected` or `cancelled`.
    #[param(pattern = "^(pending|confirmed|rejected|cancelled)?$")]
    status: Option<String>,
    /// Only this customer's orders.
    #[param(value_type = Option<Uuid>)]
    customer_id: Option<String>,
    /// Orders per page, 1 to 500 (50 by default).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// The `next_after` of the previous page.
    #[param(value_type = Option<Uuid>)]
    after: Option<String>,
}

/// The most orders one page holds.
pub const MAX_PAGE: i64 = 500;
/// Orders per page when `limit` is absent.
pub const DEFAULT_PAGE: i64 = 50;

/// The body of `GET /orders`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderPage {
    /// The page's orders, by order id (oldest first for UUIDv7 ids).
    pub orders: Vec<OrderView>,
    /// Pass as `after` for the next page; `null` when there are no more orders.
    pub next_after: Option<Uuid>,
}

fn present(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

fn uuid_param(name: &str, v: Option<String>) -> Result<Option<Uuid>, ApiError> {
    present(v)
        .map(|s| {
            Uuid::try_parse(&s).map_err(|_| {
                ApiError::bad_request("invalid_query", format!("{name} must be a UUID, got {s:?}"))
            })
        })
        .transpose()
}

/// Orders, keyset-paged by order id (oldest first), with `X-Projection-Position`.
#[utoipa::path(
    get,
    path = "/orders",
    tag = "orders",
    params(ListQuery),
    responses((status = 200, description = "a page of orders", body = OrderPage,
        headers(("x-projection-position" = i64, description = "messages the read model has consumed"))))
)]
async fn list_orders(
    State(state): State<QueryState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Response, ApiError> {
    let status = present(q.status)
        .map(|s| {
            parse_status(&s).map(status_str).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("status must be pending, confirmed, rejected or cancelled, got {s:?}"),
                )
            })
        })
        .transpose()?;
    let customer_id = uuid_param("customer_id", q.customer_id)?;
    let after = uuid_param("after", q.after)?;
    let limit = match present(q.limit) {
        None => DEFAULT_PAGE,
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_PAGE).contains(l))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("limit must be an integer from 1 to {MAX_PAGE}, got {s:?}"),
                )
            })?,
    };
    // The position is read first: the page is at least as fresh as the position it reports.
    let position = state.position(NAME, "order.events").await?;
    let mut qb = QueryBuilder::new(format!("SELECT {VIEW_COLUMNS} FROM read_orders WHERE true"));
    if let Some(status) = status {
        qb.push(" AND status = ").push_bind(status);
    }
    if let Some(customer_id) = customer_id {
        qb.push(" AND customer_id = ").push_bind(customer_id);
    }
    if let Some(after) = after {
        qb.push(" AND order_id > ").push_bind(after);
    }
    // One more than asked for, to know whether another page follows.
    qb.push(" ORDER BY order_id LIMIT ").push_bind(limit + 1);
    let rows = qb.build().fetch_all(&state.pool).await?;
    let mut orders = rows.iter().map(view_of).collect::<Result<Vec<_>, _>>()?;
    let next_after = if orders.len() as i64 > limit {
        orders.truncate(limit as usize);
        orders.last().map(|o| o.order_id)
    } else {
        None
    };
    Ok(query::list(position, &OrderPage { orders, next_after }))
}
