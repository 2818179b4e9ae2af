//! What an application registered, by name: its aggregate types (with their repositories,
//! shared by every route and participant of the process) and every stream type the tools can
//! fold (`GET /streams/{id}/state`, `replay`), such as the sagas' own streams.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::aggregate::Aggregate;
use crate::command::Repository;
use crate::fold::{AggregateFold, StreamFold};

/// Makes a fresh fold of one stream type.
pub type FoldFactory = fn() -> Box<dyn StreamFold>;

struct Entry {
    context: &'static str,
    repository: Arc<dyn Any + Send + Sync>,
}

/// The registered aggregate types and stream types. A type name is registered at most once.
#[derive(Default)]
pub struct Registry {
    aggregates: BTreeMap<&'static str, Entry>,
    folds: BTreeMap<&'static str, FoldFactory>,
}

/// A name registered twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name:?} is registered twice")]
pub struct DuplicateName {
    /// What was registered: `aggregate type` or `stream type`.
    pub kind: &'static str,
    /// The name.
    pub name: &'static str,
}

fn fold_of<A: Aggregate>() -> Box<dyn StreamFold> {
    Box::new(AggregateFold::<A>::default())
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers aggregate type `A` under `A::TYPE`, with the repository every part of the
    /// process shares (so that the generic route, the domain's routes and its participant
    /// serialize commands for one stream in one queue), and its stream type.
    pub fn register<A: Aggregate>(
        &mut self,
        repo: Arc<Repository<A>>,
    ) -> Result<(), DuplicateName> {
        if self.aggregates.contains_key(A::TYPE) || self.folds.contains_key(A::TYPE) {
            return Err(DuplicateName {
                kind: "aggregate type",
                name: A::TYPE,
            });
        }
        self.aggregates.insert(
            A::TYPE,
            Entry {
                context: A::CONTEXT,
                repository: repo,
            },
        );
        self.folds.insert(A::TYPE, fold_of::<A>);
        Ok(())
    }

    /// Registers a stream type that is not an aggregate (the sagas' `saga-<id>` streams), for
    /// the tools that fold streams.
    pub fn register_stream(
        &mut self,
        stream_type: &'static str,
        fold: FoldFactory,
    ) -> Result<(), DuplicateName> {
        if self.folds.contains_key(stream_type) {
            return Err(DuplicateName {
                kind: "stream type",
                name: stream_type,
            });
        }
        self.folds.insert(stream_type, fold);
        Ok(())
    }

    /// The repository of `A`, if `A` is registered.
    pub fn get<A: Aggregate>(&self) -> Option<Arc<Repository<A>>> {
        self.aggregates
            .get(A::TYPE)
            .and_then(|e| e.repository.clone().downcast::<Repository<A>>().ok())
    }

    /// The registered aggregate types, sorted.
    pub fn types(&self) -> Vec<&'static str> {
        self.aggregates.keys().copied().collect()
    }

    /// The bounded context of aggregate type `aggregate_type`.
    pub fn context_of(&self, aggregate_type: &str) -> Option<&'static str> {
        self.aggregates.get(aggregate_type).map(|e| e.context)
    }

    /// Every stream type that can be folded (aggregates and others), sorted.
    pub fn stream_types(&self) -> Vec<&'static str> {
        self.folds.keys().copied().collect()
    }

    /// A fresh fold for streams of `stream_type`, if it is registered.
    pub fn fold_for(&self, stream_type: &str) -> Option<Box<dyn StreamFold>> {
        self.folds.get(stream_type).map(|f| f())
    }
}
