//! The inventory read model (`read_inventory`, one row per `inventory-<sku>` stream) and its
//! route: `GET /inventory/{sku}` → [`StockView`] with `ETag: "inventory-<sku>@<version>"`;
//! `400 invalid_id` for a string that is not a SKU, `404 sku_not_found` for a SKU without
//! events.

use async_trait::async_trait;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use sagaflow_engine::http::{ApiError, ErrorBody, PathParams};
use sagaflow_sagas::inventory::InventoryEvent;
use sagaflow_sagas::types::Sku;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Row};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use sagaflow_engine::http::query::{self, QueryState};
use sagaflow_engine::projection::{ProjectionError, Projector, StoredEvent, Versioned};

/// The inventory projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct InventoryProjection;

const NAME: &str = InventoryProjection::NAME;
const PREFIX: &str = InventoryProjection::STREAM_PREFIX;

/// The stock of one SKU; the same counters as the `Inventory` aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockRow {
    /// Units physically in stock, reserved or not.
    pub on_hand: i64,
    /// Units set aside for orders.
    pub reserved: i64,
    /// When the last event applied was recorded.
    pub updated_at: DateTime<Utc>,
}

fn sku_of(stream_id: &str) -> &str {
    stream_id.strip_prefix(PREFIX).unwrap_or(stream_id)
}

#[async_trait]
impl Projector for InventoryProjection {
    type Row = StockRow;

    const NAME: &'static str = "inventory";
    const TOPIC: &'static str = "inventory.events";
    const STREAM_PREFIX: &'static str = "inventory-";
    const TABLES: &'static [&'static str] = &["read_inventory"];

    // Mirrors `Inventory::apply`, saturating arithmetic included. Released and committed
    // quantities come from the event, as in the aggregate, so no per-order state is needed.
    fn apply(&self, row: &mut Option<StockRow>, e: &StoredEvent) -> Result<(), ProjectionError> {
        let event = e.decode::<InventoryEvent>()?;
        let r = row.get_or_insert(StockRow {
            on_hand: 0,
            reserved: 0,
            updated_at: e.recorded_at,
        });
        match event {
            InventoryEvent::StockRestocked { quantity } => {
                r.on_hand = r.on_hand.saturating_add(quantity);
            }
            InventoryEvent::StockReserved { quantity, .. } => {
                r.reserved = r.reserved.saturating_add(quantity);
            }
            InventoryEvent::StockReleased { quantity, .. } => {
                r.reserved = r.reserved.saturating_sub(quantity);
            }
            InventoryEvent::StockCommitted { quantity, .. } => {
                r.on_hand = r.on_hand.saturating_sub(quantity);
                r.reserved = r.reserved.saturating_sub(quantity);
            }
        }
        r.updated_at = e.recorded_at;
        Ok(())
    }

    async fn load(
        &self,
        conn: &mut PgConnection,
        stream_ids: &[&str],
    ) -> Result<Vec<Versioned<StockRow>>, ProjectionError> {
        let skus: Vec<&str> = stream_ids.iter().map(|s| sku_of(s)).collect();
        let rows = sqlx::query(
            "SELECT sku, on_hand, reserved, updated_at, version FROM read_inventory WHERE sku = ANY($1)",
        )
        .bind(&skus)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Versioned {
                    stream_id: format!("{PREFIX}{}", r.try_get::<&str, _>(0)?),
                    version: r.try_get(4)?,
                    row: StockRow {
                        on_hand: r.try_get(1)?,
                        reserved: r.try_get(2)?,
                        updated_at: r.try_get(3)?,
                    },
                })
            })
            .collect()
    }

    async fn store(
        &self,
        conn: &mut PgConnection,
        rows: &[&Versioned<StockRow>],
    ) -> Result<(), ProjectionError> {
        if rows.is_empty() {
            return Ok(());
        }
        let skus: Vec<&str> = rows.iter().map(|v| sku_of(&v.stream_id)).collect();
        let on_hand: Vec<i64> = rows.iter().map(|v| v.row.on_hand).collect();
        let reserved: Vec<i64> = rows.iter().map(|v| v.row.reserved).collect();
        let updated: Vec<DateTime<Utc>> = rows.iter().map(|v| v.row.updated_at).collect();
        let versions: Vec<i64> = rows.iter().map(|v| v.version).collect();
        sqlx::query(
            "INSERT INTO read_inventory AS t (sku, on_hand, reserved, updated_at, version)
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::timestamptz[], $5::int8[])
             ON CONFLICT (sku) DO UPDATE SET
                 on_hand = EXCLUDED.on_hand, reserved = EXCLUDED.reserved,
                 updated_at = EXCLUDED.updated_at, version = EXCLUDED.version
             WHERE t.version < EXCLUDED.version",
        )
        .bind(&skus)
        .bind(&on_hand)
        .bind(&reserved)
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
        .routes(routes!(get_stock))
        .with_state(state)
}

/// The body of `GET /inventory/{sku}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct StockView {
    /// The SKU.
    pub sku: String,
    /// Units in stock, reserved or not; never negative.
    pub on_hand: i64,
    /// Units set aside for orders; never more than `on_hand`.
    pub reserved: i64,
    /// `on_hand - reserved`: what a new reservation may take.
    pub available: i64,
    /// When the last event applied was recorded.
    pub updated_at: DateTime<Utc>,
    /// The version of stream `inventory-<sku>` this view reflects.
    pub version: i64,
}

/// A SKU's stock from the read model, with `ETag: "inventory-<sku>@<version>"`.
#[utoipa::path(
    get,
    path = "/inventory/{sku}",
    tag = "inventory",
    params(
        ("sku" = String, Path, pattern = "^[A-Za-z0-9_.-]{1,64}$", example = "SKU-1", description = "The SKU"),
        ("if-none-match" = Option<String>, Header, description = "A tag of an earlier answer: 304 if the stock has not changed"),
    ),
    responses(
        (status = 200, description = "the stock", body = StockView),
        (status = 304, description = "not changed since the tag"),
        (status = 404, description = "`sku_not_found`", body = ErrorBody),
    )
)]
async fn get_stock(
    State(state): State<QueryState>,
    PathParams(sku): PathParams<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    Sku::check(&sku).map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))?;
    let row = sqlx::query(
        "SELECT on_hand, reserved, updated_at, version FROM read_inventory WHERE sku = $1",
    )
    .bind(&sku)
    .fetch_optional(&state.pool)
    .await?;
    let Some(row) = row else {
        return Err(state
            .not_found(NAME, "sku_not_found", format!("no stock for sku {sku:?}"))
            .await);
    };
    let (on_hand, reserved): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
    let view = StockView {
        available: on_hand - reserved,
        on_hand,
        reserved,
        updated_at: row.try_get(2)?,
        version: row.try_get(3)?,
        sku,
    };
    Ok(query::single(
        &headers,
        &format!("{PREFIX}{}", view.sku),
        view.version,
        &view,
    ))
}
