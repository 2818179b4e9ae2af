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

    /// A command request on stream number `stream` (a deposit to account `stream`, say), the
    /// same kind whatever the stream, for `bench append --hot`: it sends it on one stream from
    /// every client, and on a stream per client, and compares the two. It answers 202.
    /// `None` (the default) for a workload that has none.
    fn stream_command(&self, stream: usize) -> Option<Request> {
        let _ = stream;
        None
    }

    /// Writes `events` events to the store, histories the application's read models can fold,
    /// for `bench rebuild`.
    async fn seed_events(&self, pool: &PgPool, events: i64) -> Result<(), sqlx::Error>;

    /// A request of the mixed traffic `bench chaos` sends: `choice` is a number the harness
    /// drew from its seeded generator (the same seed gives the same traffic), `earlier` the
    /// answers to the sagas started so far (to cancel one, say). By default, another saga.
    fn chaos_request(&self, choice: u64, earlier: &[Value]) -> Request {
        let _ = earlier;
        self.start_saga(choice as usize)
    }

    /// What must hold once every saga ended, whatever faults happened (conservation, no effect
    /// applied twice): each violation, in words. `bench chaos` fails on any. None by default.
    async fn check(&self, pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
        let _ = pool;
        Ok(Vec::new())
    }
}
