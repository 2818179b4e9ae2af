//! What the benchmarks send to an application: `bench saga`, `bench append` and
//! `bench rebuild` measure any application that says how to drive it.

use async_trait::async_trait;
use serde_json::Value;
use sqlx::PgPool;

/// One HTTP request: `POST {path}` with a JSON body.
#[derive(Debug, Clone)]
pub struct Request {
    /// The path, from the root (`/trips`).
    pub path: String,
    /// The JSON body.
    pub body: Value,
}

impl Request {
    /// `POST {path}` with `body`.
    pub fn post(path: impl Into<String>, body: Value) -> Self {
        Request {
            path: path.into(),
            body,
        }
    }
}

/// How the benchmarks drive an application.
#[async_trait]
pub trait Workload: Send + Sync + 'static {
    /// Requests sent once before a saga benchmark, so that the sagas can succeed (rooms in the
    /// hotels, money in the wallets). Each must answer 2xx.
    fn setup(&self) -> Vec<Request>;

    /// The request that starts saga number `n`; its 202 answer has the saga's id under
    /// `saga_id`.
    fn start_saga(&self, n: usize) -> Request;

    /// A command request for `bench append`; it answers 202.
    fn command(&self, n: usize) -> Request;

    /// Writes `events` events to the store, histories the application's read models can fold,
    /// for `bench rebuild`.
    async fn seed_events(&self, pool: &PgPool, events: i64) -> Result<(), sqlx::Error>;
}
