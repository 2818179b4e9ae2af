//! The queries of the `sagas` table the console's lists share: index scans only.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::saga::read_model::SagaRow;

/// Which sagas a page lists.
#[derive(Debug, Default)]
pub(super) struct Filter {
    /// Only sagas of this type.
    pub saga_type: Option<String>,
    /// Only sagas whose last event was recorded at or before this time.
    pub updated_at_or_before: Option<DateTime<Utc>>,
}

const COLUMNS: &str =
    "saga_id, saga_type, state, current_step, failure, started_at, updated_at, version";

/// Up to `limit` sagas in `states`, by `(updated_at, saga_id)` (ascending or not), after
/// `after`. One index scan of `(state, updated_at)` per state, merged: no sort of the table.
pub(super) async fn page(
    pool: &PgPool,
    states: &[&str],
    ascending: bool,
    filter: &Filter,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<SagaRow>, sqlx::Error> {
    if states.is_empty() {
        return Ok(Vec::new());
    }
    let (dir, cmp, bound) = if ascending {
        ("ASC", ">", ">=")
    } else {
        ("DESC", "<", "<=")
    };
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new("SELECT * FROM (");
    for (i, state) in states.iter().enumerate() {
        if i > 0 {
            qb.push(" UNION ALL ");
        }
        qb.push(format!("(SELECT {COLUMNS} FROM sagas WHERE state = "))
            .push_bind(state.to_string());
        if let Some(t) = &filter.saga_type {
            qb.push(" AND saga_type = ").push_bind(t.clone());
        }
        if let Some(c) = filter.updated_at_or_before {
            qb.push(" AND updated_at <= ").push_bind(c);
        }
        if let Some((t, id)) = after {
            // The first comparison is the one the index answers.
            qb.push(format!(" AND updated_at {bound} "))
                .push_bind(t)
                .push(format!(" AND (updated_at, saga_id) {cmp} ("))
                .push_bind(t)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        qb.push(format!(" ORDER BY updated_at {dir}, saga_id {dir} LIMIT "))
            .push_bind(limit)
            .push(")");
    }
    qb.push(format!(
        ") t ORDER BY updated_at {dir}, saga_id {dir} LIMIT "
    ))
    .push_bind(limit);
    qb.build_query_as().fetch_all(pool).await
}

/// The sagas of `ids` that exist.
pub(super) async fn sagas_by_id(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<SagaRow>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(&format!(
        "SELECT {} FROM UNNEST($1::uuid[]) AS w(saga_id) JOIN sagas s ON s.saga_id = w.saga_id",
        COLUMNS
            .split(", ")
            .map(|c| format!("s.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .bind(ids)
    .fetch_all(pool)
    .await
}
