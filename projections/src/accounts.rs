//! The accounts read model (`read_accounts`, one row per `account-<customer_id>` stream) and
//! its route: `GET /accounts/{customer_id}` → [`AccountView`] with
//! `ETag: "account-<customer_id>@<version>"`; `400 invalid_path` for an id that is not a UUID,
//! `404 account_not_found` for a customer without events.

use async_trait::async_trait;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use sagaflow_engine::http::{ApiError, ErrorBody, PathParams};
use sagaflow_sagas::payment::AccountEvent;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Row};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use sagaflow_engine::http::query::{self, QueryState};
use sagaflow_engine::projection::{ProjectionError, Projector, StoredEvent, Versioned};

/// The accounts projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccountsProjection;

const NAME: &str = AccountsProjection::NAME;
const PREFIX: &str = AccountsProjection::STREAM_PREFIX;

/// The money of one customer; the same counters as the `Account` aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountRow {
    /// Money in the account, held or not.
    pub balance_cents: i64,
    /// Money held for orders.
    pub held_cents: i64,
    /// When the last event applied was recorded.
    pub updated_at: DateTime<Utc>,
}

fn customer_of(stream_id: &str) -> Result<Uuid, ProjectionError> {
    stream_id
        .strip_prefix(PREFIX)
        .and_then(|id| Uuid::try_parse(id).ok())
        .ok_or_else(|| ProjectionError::Invalid {
            stream_id: stream_id.to_owned(),
            stream_version: 0,
            message: "an account stream id is account-<uuid>".into(),
        })
}

#[async_trait]
impl Projector for AccountsProjection {
    type Row = AccountRow;

    const NAME: &'static str = "accounts";
    const TOPIC: &'static str = "payment.events";
    const STREAM_PREFIX: &'static str = "account-";
    const TABLES: &'static [&'static str] = &["read_accounts"];

    // Mirrors `Account::apply`, saturating arithmetic included. Captured and voided amounts
    // come from the event, as in the aggregate, so no per-order state is needed.
    fn apply(&self, row: &mut Option<AccountRow>, e: &StoredEvent) -> Result<(), ProjectionError> {
        let event = e.decode::<AccountEvent>()?;
        let r = row.get_or_insert(AccountRow {
            balance_cents: 0,
            held_cents: 0,
            updated_at: e.recorded_at,
        });
        match event {
            AccountEvent::FundsDeposited { amount_cents } => {
                r.balance_cents = r.balance_cents.saturating_add(amount_cents);
            }
            AccountEvent::PaymentAuthorized { amount_cents, .. } => {
                r.held_cents = r.held_cents.saturating_add(amount_cents);
            }
            AccountEvent::PaymentCaptured { amount_cents, .. } => {
                r.balance_cents = r.balance_cents.saturating_sub(amount_cents);
                r.held_cents = r.held_cents.saturating_sub(amount_cents);
            }
            AccountEvent::PaymentVoided { amount_cents, .. } => {
                r.held_cents = r.held_cents.saturating_sub(amount_cents);
            }
        }
        r.updated_at = e.recorded_at;
        Ok(())
    }

    async fn load(
        &self,
        conn: &mut PgConnection,
        stream_ids: &[&str],
    ) -> Result<Vec<Versioned<AccountRow>>, ProjectionError> {
        let ids = stream_ids
            .iter()
            .map(|s| customer_of(s))
            .collect::<Result<Vec<_>, _>>()?;
        let rows = sqlx::query(
            "SELECT customer_id, balance_cents, held_cents, updated_at, version
             FROM read_accounts WHERE customer_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Versioned {
                    stream_id: format!("{PREFIX}{}", r.try_get::<Uuid, _>(0)?),
                    version: r.try_get(4)?,
                    row: AccountRow {
                        balance_cents: r.try_get(1)?,
                        held_cents: r.try_get(2)?,
                        updated_at: r.try_get(3)?,
                    },
                })
            })
            .collect()
    }

    async fn store(
        &self,
        conn: &mut PgConnection,
        rows: &[&Versioned<AccountRow>],
    ) -> Result<(), ProjectionError> {
        if rows.is_empty() {
            return Ok(());
        }
        let ids = rows
            .iter()
            .map(|v| customer_of(&v.stream_id))
            .collect::<Result<Vec<_>, _>>()?;
        let balance: Vec<i64> = rows.iter().map(|v| v.row.balance_cents).collect();
        let held: Vec<i64> = rows.iter().map(|v| v.row.held_cents).collect();
        let updated: Vec<DateTime<Utc>> = rows.iter().map(|v| v.row.updated_at).collect();
        let versions: Vec<i64> = rows.iter().map(|v| v.version).collect();
        sqlx::query(
            "INSERT INTO read_accounts AS t (customer_id, balance_cents, held_cents, updated_at, version)
             SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::int8[], $4::timestamptz[], $5::int8[])
             ON CONFLICT (customer_id) DO UPDATE SET
                 balance_cents = EXCLUDED.balance_cents, held_cents = EXCLUDED.held_cents,
                 updated_at = EXCLUDED.updated_at, version = EXCLUDED.version
             WHERE t.version < EXCLUDED.version",
        )
        .bind(&ids)
        .bind(&balance)
        .bind(&held)
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
        .routes(routes!(get_account))
        .with_state(state)
}

/// The body of `GET /accounts/{customer_id}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AccountView {
    /// The customer whose account this is.
    pub customer_id: Uuid,
    /// Money in the account, held or not, in cents; never negative.
    pub balance_cents: i64,
    /// Money held for orders, in cents; never more than `balance_cents`.
    pub held_cents: i64,
    /// `balance_cents - held_cents`: what a new authorization may hold.
    pub available_cents: i64,
    /// When the last event applied was recorded.
    pub updated_at: DateTime<Utc>,
    /// The version of stream `account-<customer_id>` this view reflects.
    pub version: i64,
}

/// A customer's account from the read model, with `ETag: "account-<customer_id>@<version>"`.
#[utoipa::path(
    get,
    path = "/accounts/{customer_id}",
    tag = "accounts",
    params(
        ("customer_id" = Uuid, Path, description = "The customer"),
        ("if-none-match" = Option<String>, Header, description = "A tag of an earlier answer: 304 if the account has not changed"),
    ),
    responses(
        (status = 200, description = "the account", body = AccountView),
        (status = 304, description = "not changed since the tag"),
        (status = 404, description = "`account_not_found`", body = ErrorBody),
    )
)]
async fn get_account(
    State(state): State<QueryState>,
    PathParams(customer_id): PathParams<Uuid>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let row = sqlx::query(
        "SELECT balance_cents, held_cents, updated_at, version FROM read_accounts WHERE customer_id = $1",
    )
    .bind(customer_id)
    .fetch_optional(&state.pool)
    .await?;
    let Some(row) = row else {
        return Err(state
            .not_found(
                NAME,
                "account_not_found",
                format!("no account for customer {customer_id}"),
            )
            .await);
    };
    let (balance_cents, held_cents): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
    let view = AccountView {
        customer_id,
        balance_cents,
        held_cents,
        available_cents: balance_cents - held_cents,
        updated_at: row.try_get(2)?,
        version: row.try_get(3)?,
    };
    Ok(query::single(
        &headers,
        &format!("{PREFIX}{customer_id}"),
        view.version,
        &view,
    ))
}
