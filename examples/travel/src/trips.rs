//! The trips read model (`read_trips`, one row per `trip-<id>` stream, table created by
//! `migrations/1000_read_trips.sql`) and its routes:
//!
//! - `GET /trips/{trip_id}` → [`TripView`] with `ETag: "trip-<id>@<version>"`, `404
//!   trip_not_found` for a trip the read model does not hold;
//! - `GET /trips?status=&limit=&after=` → [`TripPage`], keyset-paged by trip id, with
//!   `X-Projection-Position`.

use async_trait::async_trait;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, QueryBuilder, Row};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use sagaflow::http::query::{self, QueryState};
use sagaflow::http::{ApiError, ErrorBody, PathParams, QueryParams};
use sagaflow::projection::{ProjectionError, Projector, StoredEvent, Versioned};

use crate::trip::{TripEvent, TripStatus};

/// The trips projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct TripsProjection;

const NAME: &str = TripsProjection::NAME;
const PREFIX: &str = TripsProjection::STREAM_PREFIX;

/// One trip as the read model holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TripRow {
    /// Where the trip is.
    pub status: TripStatus,
    /// Why it was rejected or cancelled.
    pub reason: Option<String>,
    /// The flight.
    pub flight: String,
    /// Seats on it.
    pub seats: i32,
    /// The hotel.
    pub hotel: String,
    /// Rooms in it.
    pub rooms: i32,
    /// What the card is charged, in cents.
    pub amount_cents: i64,
    /// When the last event applied was recorded.
    pub updated_at: DateTime<Utc>,
}

fn invalid(e: &StoredEvent, message: &str) -> ProjectionError {
    ProjectionError::Invalid {
        stream_id: e.stream_id.clone(),
        stream_version: e.stream_version,
        message: message.into(),
    }
}

#[async_trait]
impl Projector for TripsProjection {
    type Row = TripRow;

    const NAME: &'static str = "trips";
    const TOPIC: &'static str = "trip.events";
    const STREAM_PREFIX: &'static str = "trip-";
    const TABLES: &'static [&'static str] = &["read_trips"];

    // Means what `Trip::apply` means.
    fn apply(&self, row: &mut Option<TripRow>, e: &StoredEvent) -> Result<(), ProjectionError> {
        let event = e.decode::<TripEvent>()?;
        if let TripEvent::TripRequested {
            flight,
            seats,
            hotel,
            rooms,
            amount_cents,
            ..
        } = &event
        {
            *row = Some(TripRow {
                status: TripStatus::Requested,
                reason: None,
                flight: flight.clone(),
                seats: *seats as i32,
                hotel: hotel.clone(),
                rooms: *rooms as i32,
                amount_cents: *amount_cents,
                updated_at: e.recorded_at,
            });
            return Ok(());
        }
        let r = row
            .as_mut()
            .ok_or_else(|| invalid(e, "a trip's first event is trip_requested"))?;
        match event {
            TripEvent::TripRequested { .. } => unreachable!("handled above"),
            TripEvent::TripConfirmed => r.status = TripStatus::Confirmed,
            TripEvent::TripRejected { reason } => {
                r.status = TripStatus::Rejected;
                r.reason = Some(reason);
            }
            TripEvent::TripCancelled { reason } => {
                r.status = TripStatus::Cancelled;
                r.reason = reason;
            }
        }
        r.updated_at = e.recorded_at;
        Ok(())
    }

    async fn load(
        &self,
        conn: &mut PgConnection,
        stream_ids: &[&str],
    ) -> Result<Vec<Versioned<TripRow>>, ProjectionError> {
        let ids: Vec<&str> = stream_ids
            .iter()
            .filter_map(|s| s.strip_prefix(PREFIX))
            .collect();
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM read_trips WHERE trip_id = ANY($1)"
        ))
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| {
                let (trip_id, version, row) = row_of(r)?;
                Ok(Versioned {
                    stream_id: format!("{PREFIX}{trip_id}"),
                    version,
                    row,
                })
            })
            .collect()
    }

    async fn store(
        &self,
        conn: &mut PgConnection,
        rows: &[&Versioned<TripRow>],
    ) -> Result<(), ProjectionError> {
        if rows.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = rows
            .iter()
            .map(|v| v.stream_id.strip_prefix(PREFIX).unwrap_or(&v.stream_id))
            .collect();
        let status: Vec<&str> = rows.iter().map(|v| v.row.status.as_str()).collect();
        let reason: Vec<Option<String>> = rows.iter().map(|v| v.row.reason.clone()).collect();
        let flight: Vec<&str> = rows.iter().map(|v| v.row.flight.as_str()).collect();
        let seats: Vec<i32> = rows.iter().map(|v| v.row.seats).collect();
        let hotel: Vec<&str> = rows.iter().map(|v| v.row.hotel.as_str()).collect();
        let room_counts: Vec<i32> = rows.iter().map(|v| v.row.rooms).collect();
        let amount: Vec<i64> = rows.iter().map(|v| v.row.amount_cents).collect();
        let updated: Vec<DateTime<Utc>> = rows.iter().map(|v| v.row.updated_at).collect();
        let versions: Vec<i64> = rows.iter().map(|v| v.version).collect();
        sqlx::query(
            "INSERT INTO read_trips AS t (trip_id, status, reason, flight, seats, hotel, rooms,
                                          amount_cents, updated_at, version)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[],
                                  $6::text[], $7::int4[], $8::int8[], $9::timestamptz[], $10::int8[])
             ON CONFLICT (trip_id) DO UPDATE SET
                 status = EXCLUDED.status, reason = EXCLUDED.reason, flight = EXCLUDED.flight,
                 seats = EXCLUDED.seats, hotel = EXCLUDED.hotel, rooms = EXCLUDED.rooms,
                 amount_cents = EXCLUDED.amount_cents, updated_at = EXCLUDED.updated_at,
                 version = EXCLUDED.version
             WHERE t.version < EXCLUDED.version",
        )
        .bind(&ids)
        .bind(&status)
        .bind(&reason)
        .bind(&flight)
        .bind(&seats)
        .bind(&hotel)
        .bind(&room_counts)
        .bind(&amount)
        .bind(&updated)
        .bind(&versions)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

const COLUMNS: &str =
    "trip_id, status, reason, flight, seats, hotel, rooms, amount_cents, updated_at, version";

fn row_of(r: &PgRow) -> Result<(String, i64, TripRow), sqlx::Error> {
    let status: String = r.try_get(1)?;
    let status = TripStatus::parse(&status).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: "status".into(),
        source: format!("unknown trip status {status:?}").into(),
    })?;
    Ok((
        r.try_get(0)?,
        r.try_get(9)?,
        TripRow {
            status,
            reason: r.try_get(2)?,
            flight: r.try_get(3)?,
            seats: r.try_get(4)?,
            hotel: r.try_get(5)?,
            rooms: r.try_get(6)?,
            amount_cents: r.try_get(7)?,
            updated_at: r.try_get(8)?,
        },
    ))
}

fn view_of(r: &PgRow) -> Result<TripView, sqlx::Error> {
    let (trip_id, version, row) = row_of(r)?;
    Ok(TripView {
        trip_id,
        status: row.status,
        reason: row.reason,
        flight: row.flight,
        seats: row.seats,
        hotel: row.hotel,
        rooms: row.rooms,
        amount_cents: row.amount_cents,
        updated_at: row.updated_at,
        version,
    })
}

/// The query routes of this read model.
pub fn routes(state: QueryState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(get_trip))
        .routes(routes!(list_trips))
        .with_state(state)
}

/// The body of `GET /trips/{trip_id}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct TripView {
    /// The trip (stream `trip-<trip_id>`).
    pub trip_id: String,
    /// Where it is.
    pub status: TripStatus,
    /// Why it was rejected (the booking saga's failure code) or cancelled.
    pub reason: Option<String>,
    /// The flight.
    pub flight: String,
    /// Seats on it.
    pub seats: i32,
    /// The hotel.
    pub hotel: String,
    /// Rooms in it.
    pub rooms: i32,
    /// What the card is charged, in cents.
    pub amount_cents: i64,
    /// When the last event applied was recorded.
    pub updated_at: DateTime<Utc>,
    /// The version of stream `trip-<trip_id>` this view reflects.
    pub version: i64,
}

/// A trip from the read model, with `ETag: "trip-<trip_id>@<version>"`.
#[utoipa::path(
    get,
    path = "/trips/{trip_id}",
    tag = "trips",
    params(
        ("trip_id" = String, Path, description = "The trip"),
        ("if-none-match" = Option<String>, Header, description = "A tag of an earlier answer: 304 if the trip has not changed"),
    ),
    responses(
        (status = 200, description = "the trip", body = TripView),
        (status = 304, description = "not changed since the tag"),
        (status = 404, description = "`trip_not_found`", body = ErrorBody),
    )
)]
async fn get_trip(
    State(state): State<QueryState>,
    PathParams(trip_id): PathParams<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM read_trips WHERE trip_id = $1"
    ))
    .bind(&trip_id)
    .fetch_optional(&state.pool)
    .await?;
    let Some(row) = row else {
        return Err(state
            .not_found(NAME, "trip_not_found", format!("no trip {trip_id}"))
            .await);
    };
    let view = view_of(&row)?;
    Ok(query::single(
        &headers,
        &format!("{PREFIX}{trip_id}"),
        view.version,
        &view,
    ))
}

/// The query of `GET /trips`; an empty value counts as absent.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only trips in this status: `requested`, `confirmed`, `rejected` or `cancelled`.
    #[param(pattern = "^(requested|confirmed|rejected|cancelled)?$")]
    status: Option<String>,
    /// Trips per page, 1 to 500 (50 by default).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// The `next_after` of the previous page.
    after: Option<String>,
}

/// The most trips one page holds.
pub const MAX_PAGE: i64 = 500;

/// The body of `GET /trips`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TripPage {
    /// The page's trips, by trip id.
    pub trips: Vec<TripView>,
    /// Pass as `after` for the next page; `null` when there are no more trips.
    pub next_after: Option<String>,
}

/// Trips, keyset-paged by trip id, with `X-Projection-Position`.
#[utoipa::path(
    get,
    path = "/trips",
    tag = "trips",
    params(ListQuery),
    responses(
        (status = 200, description = "a page of trips", body = TripPage,
            headers(("x-projection-position" = i64, description = "messages the read model has consumed"))),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
    )
)]
async fn list_trips(
    State(state): State<QueryState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Response, ApiError> {
    let present = |v: Option<String>| v.filter(|s| !s.is_empty());
    let status = present(q.status)
        .map(|s| {
            TripStatus::parse(&s).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!(
                        "status must be requested, confirmed, rejected or cancelled, got {s:?}"
                    ),
                )
            })
        })
        .transpose()?;
    let limit = match present(q.limit) {
        None => 50,
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
    let position = state.position(NAME, TripsProjection::TOPIC).await?;
    let mut qb = QueryBuilder::new(format!("SELECT {COLUMNS} FROM read_trips WHERE true"));
    if let Some(status) = status {
        qb.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(after) = present(q.after) {
        qb.push(" AND trip_id > ").push_bind(after);
    }
    qb.push(" ORDER BY trip_id LIMIT ").push_bind(limit + 1);
    let rows = qb.build().fetch_all(&state.pool).await?;
    let mut trips = rows.iter().map(view_of).collect::<Result<Vec<_>, _>>()?;
    let next_after = if trips.len() as i64 > limit {
        trips.truncate(limit as usize);
        trips.last().map(|t| t.trip_id.clone())
    } else {
        None
    };
    Ok(query::list(position, &TripPage { trips, next_after }))
}
