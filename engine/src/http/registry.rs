//! Aggregate types reachable through the generic command route, by type name.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use axum::response::Response;

use super::{run_generic, CommandRequest, GenericCommand};
use crate::aggregate::Aggregate;
use crate::command::Repository;
use crate::replay::{AggregateFold, StreamFold};

/// A repository with its aggregate type erased, for routing by type name.
#[async_trait]
pub trait DynRepository: Send + Sync + 'static {
    fn aggregate_type(&self) -> &'static str;
    async fn execute_generic(&self, id: &str, request: CommandRequest<GenericCommand>) -> Response;
    /// A fresh fold of this aggregate type's events, for time travel and replay
    /// ([`crate::replay`]); it starts from the default state and shares nothing with the cache.
    fn fold(&self) -> Box<dyn StreamFold>;
}

#[async_trait]
impl<A: Aggregate> DynRepository for Repository<A> {
    fn aggregate_type(&self) -> &'static str {
        A::TYPE
    }

    async fn execute_generic(&self, id: &str, request: CommandRequest<GenericCommand>) -> Response {
        run_generic(self, id, request).await
    }

    fn fold(&self) -> Box<dyn StreamFold> {
        Box::new(AggregateFold::<A>::default())
    }
}

struct Entry {
    erased: Arc<dyn DynRepository>,
    typed: Arc<dyn Any + Send + Sync>,
}

/// The registered aggregate types and their repositories.
#[derive(Default)]
pub struct CommandRegistry {
    entries: BTreeMap<&'static str, Entry>,
}

impl CommandRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `A` under `A::TYPE`. Registering one type twice is a programming error.
    pub fn register<A: Aggregate>(&mut self, repo: Arc<Repository<A>>) -> &mut Self {
        let previous = self.entries.insert(
            A::TYPE,
            Entry {
                erased: repo.clone(),
                typed: repo,
            },
        );
        assert!(
            previous.is_none(),
            "aggregate type {} registered twice",
            A::TYPE
        );
        self
    }

    pub fn by_type(&self, aggregate_type: &str) -> Option<&Arc<dyn DynRepository>> {
        self.entries.get(aggregate_type).map(|e| &e.erased)
    }

    /// The typed repository of `A`, if registered.
    pub fn get<A: Aggregate>(&self) -> Option<Arc<Repository<A>>> {
        self.entries
            .get(A::TYPE)
            .and_then(|e| e.typed.clone().downcast::<Repository<A>>().ok())
    }

    pub fn types(&self) -> Vec<&'static str> {
        self.entries.keys().copied().collect()
    }
}
