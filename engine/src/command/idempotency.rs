//! `Idempotency-Key` bookkeeping. A key is claimed and its response stored in the same
//! transaction as the command's events, so a repeat sees either nothing (and runs the command)
//! or the full first response (and writes nothing). Two concurrent requests with one key
//! serialize on the key's primary-key index: the second waits for the first to commit.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, Row};

/// A response remembered for an idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// The HTTP status the first request was answered with.
    pub status: u16,
    /// The JSON body the first request was answered with.
    pub body: Value,
}

/// What an earlier request with the same key left behind.
#[derive(Debug, Clone, PartialEq)]
pub enum Previous {
    /// Same request: here is its response.
    Same(StoredResponse),
    /// The key was used with a different request.
    Mismatch,
}

/// An `Idempotency-Key` and a fingerprint of the request it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyRequest {
    /// The client's `Idempotency-Key`, unique across every route of the service.
    pub key: String,
    request_hash: Vec<u8>,
}

impl IdempotencyRequest {
    /// Fingerprints the request by method, path and body bytes: the same key with any other
    /// request is a mismatch.
    pub fn new(key: impl Into<String>, method: &str, path: &str, body: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(method.as_bytes());
        h.update([0]);
        h.update(path.as_bytes());
        h.update([0]);
        h.update(body);
        IdempotencyRequest {
            key: key.into(),
            request_hash: h.finalize().to_vec(),
        }
    }

    /// What an earlier request with this key left, if one committed: its response, or a mismatch.
    pub async fn lookup(&self, pool: &PgPool) -> Result<Option<Previous>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT request_hash, status_code, response FROM idempotency_keys WHERE key = $1",
        )
        .bind(&self.key)
        .fetch_optional(pool)
        .await?;
        Ok(row.map(|row| {
            let hash: Vec<u8> = row.get(0);
            if hash != self.request_hash {
                return Previous::Mismatch;
            }
            let status: Option<i32> = row.get(1);
            let body: Option<Value> = row.get(2);
            Previous::Same(StoredResponse {
                status: status.map_or(200, |s| s as u16),
                body: body.unwrap_or(Value::Null),
            })
        }))
    }

    /// Claims the key inside `tx`; false if another request holds it (after waiting for that
    /// request's transaction to end).
    pub(crate) async fn claim(&self, tx: &mut PgConnection) -> Result<bool, sqlx::Error> {
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (key, request_hash) VALUES ($1, $2)
             ON CONFLICT (key) DO NOTHING RETURNING key",
        )
        .bind(&self.key)
        .bind(&self.request_hash)
        .fetch_optional(&mut *tx)
        .await?;
        Ok(claimed.is_some())
    }

    pub(crate) async fn store_response(
        &self,
        tx: &mut PgConnection,
        response: &StoredResponse,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE idempotency_keys SET status_code = $2, response = $3 WHERE key = $1")
            .bind(&self.key)
            .bind(i32::from(response.status))
            .bind(&response.body)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// Remembers a response that wrote no events (a rejection). Returns what an earlier request
    /// left if the key was taken meanwhile.
    pub async fn remember(
        &self,
        pool: &PgPool,
        response: &StoredResponse,
    ) -> Result<Option<Previous>, sqlx::Error> {
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (key, request_hash, status_code, response) VALUES ($1, $2, $3, $4)
             ON CONFLICT (key) DO NOTHING RETURNING key",
        )
        .bind(&self.key)
        .bind(&self.request_hash)
        .bind(i32::from(response.status))
        .bind(&response.body)
        .fetch_optional(pool)
        .await?;
        if inserted.is_some() {
            Ok(None)
        } else {
            self.lookup(pool).await
        }
    }
}

/// Deletes at most `batch` idempotency keys first used before `before`; how many. A request
/// that repeats such a key afterwards runs as a new one.
pub async fn prune_keys(
    pool: &PgPool,
    before: chrono::DateTime<chrono::Utc>,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM idempotency_keys WHERE key IN (
             SELECT key FROM idempotency_keys WHERE created_at < $1 ORDER BY created_at LIMIT $2)",
    )
    .bind(before)
    .bind(batch)
    .execute(pool)
    .await?
    .rows_affected())
}
