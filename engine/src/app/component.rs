//! The parts of an application that one process can run (`serve --components`), so that
//! roles can be split across processes and scaled or stopped on their own.

use std::collections::BTreeSet;
use std::fmt;

/// A part of an application a process can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    /// The HTTP API.
    Http,
    /// The outbox relay (one active per outbox shard across all processes), with the
    /// housekeeping of the engine's tables.
    Relay,
    /// The projectors that keep the read models.
    Projections,
    /// The saga orchestrator and its deadline poller.
    Orchestrator,
    /// The participant serving saga commands for this aggregate type.
    Participant(&'static str),
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Component::Http => f.write_str("http"),
            Component::Relay => f.write_str("relay"),
            Component::Projections => f.write_str("projections"),
            Component::Orchestrator => f.write_str("orchestrator"),
            Component::Participant(name) => write!(f, "participant:{name}"),
        }
    }
}

/// A set of components: all those an application has, or those one process runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Components(BTreeSet<Component>);

impl Components {
    /// The set of `components`.
    pub fn new(components: impl IntoIterator<Item = Component>) -> Self {
        Components(components.into_iter().collect())
    }

    /// Whether `c` is in the set.
    pub fn contains(&self, c: &Component) -> bool {
        self.0.contains(c)
    }

    /// The components in order.
    pub fn iter(&self) -> impl Iterator<Item = &Component> {
        self.0.iter()
    }

    /// Their names, as `--components` takes them.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }

    /// The components of this set named in `names` (every one of them when `names` is empty);
    /// an unknown name is an error that lists the known ones.
    pub fn select(&self, names: &[String]) -> Result<Components, String> {
        if names.is_empty() {
            return Ok(self.clone());
        }
        let mut chosen = BTreeSet::new();
        for name in names {
            let name = name.trim();
            let c = self
                .0
                .iter()
                .find(|c| c.to_string() == name)
                .ok_or_else(|| {
                    format!(
                        "unknown component {name:?}; this application has {}",
                        self.names().join(", ")
                    )
                })?;
            chosen.insert(*c);
        }
        Ok(Components(chosen))
    }

    /// The same set without `c`.
    pub fn without(mut self, c: Component) -> Self {
        self.0.remove(&c);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_chosen_by_name_and_unknown_names_are_refused() {
        let all = Components::new([
            Component::Http,
            Component::Relay,
            Component::Participant("hotel"),
        ]);
        assert_eq!(all.select(&[]).unwrap(), all);
        let some = all
            .select(&["relay".into(), "participant:hotel".into()])
            .unwrap();
        assert!(some.contains(&Component::Participant("hotel")));
        assert!(!some.contains(&Component::Http));
        let error = all.select(&["participant:flight".into()]).unwrap_err();
        assert!(error.contains("participant:hotel"), "{error}");
    }
}
