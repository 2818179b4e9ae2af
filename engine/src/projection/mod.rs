//! Read models kept by projectors: the runtime every application's projections run on.
//!
//! A read model is a [`Projector`] (see [`projector`] for the guarantees: idempotent by stream
//! version, self-healing from the event store, rows and offset in one transaction), run live by
//! its own consumer group `projection:<name>` ([`group_of`]), and rebuildable from the event
//! store at any time while traffic continues ([`rebuild`]).

pub mod projector;
pub mod rebuild;

pub use projector::{
    ProjectionError, Projector, ProjectorHandler, StoredEvent, Versioned, EVENT_COLUMNS,
};
pub use rebuild::{
    ProgressFn, RebuildError, RebuildJob, RebuildOptions, RebuildProgress, RebuildReport,
    RebuildStatus,
};

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::PgPool;

use crate::consumer::{Consumer, ConsumerConfig, Handler};
use crate::transport::Transport;

/// The consumer group of a projection's live projector.
pub fn group_of(name: &str) -> String {
    format!("projection:{name}")
}

/// A registered projection, whatever its row type: what the runtime needs of it.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Its name: the CLI argument, the admin route segment, the consumer group's suffix.
    fn name(&self) -> &'static str;
    /// The logical topic its live projector consumes.
    fn topic(&self) -> &'static str;
    /// The prefix of the streams it folds, one row each.
    fn stream_prefix(&self) -> &'static str;
    /// Its tables (the first holds one row per stream, with its `version`).
    fn tables(&self) -> &'static [&'static str];
    /// The live projector, for a [`Consumer`].
    fn handler(&self) -> Arc<dyn Handler>;
    /// Starts a rebuild; see [`rebuild::begin`].
    async fn begin_rebuild(
        &self,
        pool: PgPool,
        options: RebuildOptions,
        on_progress: ProgressFn,
    ) -> Result<RebuildJob, RebuildError>;
}

/// Wraps a [`Projector`] as a [`Projection`].
pub fn erase<P: Projector>(projector: P) -> Arc<dyn Projection> {
    Arc::new(Erased(Arc::new(projector)))
}

struct Erased<P>(Arc<P>);

#[async_trait]
impl<P: Projector> Projection for Erased<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn topic(&self) -> &'static str {
        P::TOPIC
    }

    fn stream_prefix(&self) -> &'static str {
        P::STREAM_PREFIX
    }

    fn tables(&self) -> &'static [&'static str] {
        P::TABLES
    }

    fn handler(&self) -> Arc<dyn Handler> {
        Arc::new(ProjectorHandler::new(self.0.clone()))
    }

    async fn begin_rebuild(
        &self,
        pool: PgPool,
        options: RebuildOptions,
        on_progress: ProgressFn,
    ) -> Result<RebuildJob, RebuildError> {
        rebuild::begin(self.0.clone(), pool, options, on_progress).await
    }
}

/// The live projector of `projection`: consumer group `projection:<name>` on its topic. Any
/// number of processes may run it: the group shares the partitions.
pub fn consumer(
    projection: &dyn Projection,
    pool: PgPool,
    transport: Arc<dyn Transport>,
) -> Consumer {
    Consumer::new(
        pool,
        transport,
        projection.handler(),
        // A projector skips an event at or below its row's version itself.
        ConsumerConfig::new(group_of(projection.name()), &[projection.topic()])
            .handler_is_idempotent(),
    )
}
