//! A saga's path, as the console draws it: the forward steps in the definition's order, where
//! it broke, the compensations in the order they ran (the reverse of the steps they undo), the
//! final command and the end. Folded from the saga's own events alone.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::saga::definition::target_stream;
use crate::saga::messages::ReplyOutcome;
use crate::saga::state::{SagaEvent, SentCommand};

/// One node of a saga's path.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PathNode {
    /// `step` (a forward step), `failure` (why the saga turned back), `compensation`,
    /// `final` (the `on_compensated` command) or `end` (the saga's terminal state).
    pub kind: &'static str,
    /// The step's name (for a compensation, the step it undoes; for a failure, the step that
    /// failed, empty for an abort between steps); `on_compensated` for the final command; the
    /// state for the end.
    pub name: String,
    /// The index of the forward step it is, undoes, or failed at.
    pub step: Option<usize>,
    /// A step: `pending`, `running`, `succeeded`, `failed` or `aborted` (running when the
    /// saga was aborted). A compensation: `pending`, `running`, `compensated` or `failed`.
    /// The final command: `running`, `succeeded`, `failed` or the code it was rejected with.
    /// A failure: its code. The end: `completed`, `compensated` or `failed`.
    pub status: String,
    /// The attempt last sent.
    pub attempts: u32,
    /// How many of its attempts went unanswered in time.
    pub timeouts: u32,
    /// What went wrong along the way, in order: rejections and timeouts.
    pub errors: Vec<String>,
    /// The commands it sent, as `command on stream`.
    pub commands: Vec<String>,
    /// When it was first sent.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended (succeeded, failed, compensated, answered).
    pub finished_at: Option<DateTime<Utc>>,
    /// For a failure, a failed step and a failed end: the code.
    pub code: Option<String>,
    /// For a failure, a failed step and a failed end: the message.
    pub message: Option<String>,
}

impl PathNode {
    fn new(kind: &'static str, name: impl Into<String>, step: Option<usize>, status: &str) -> Self {
        PathNode {
            kind,
            name: name.into(),
            step,
            status: status.to_owned(),
            attempts: 0,
            timeouts: 0,
            errors: Vec::new(),
            commands: Vec::new(),
            started_at: None,
            finished_at: None,
            code: None,
            message: None,
        }
    }

    fn invoked(&mut self, attempt: u32, at: DateTime<Utc>, commands: &[String]) {
        self.status = "running".into();
        self.attempts = attempt;
        self.started_at.get_or_insert(at);
        for c in commands {
            if !self.commands.contains(c) {
                self.commands.push(c.clone());
            }
        }
    }
}

#[derive(Default)]
struct Fold {
    forward: Vec<PathNode>,
    failure: Option<PathNode>,
    compensations: Vec<PathNode>,
    final_command: Option<PathNode>,
    end: Option<PathNode>,
    compensating: bool,
    current: Option<usize>,
    sent: HashMap<Uuid, String>,
}

impl Fold {
    fn describe(&mut self, commands: &[SentCommand]) -> Vec<String> {
        commands
            .iter()
            .map(|c| {
                let what = format!(
                    "{} on {}",
                    c.invocation
                        .command
                        .get("command")
                        .and_then(|v| v.as_str())
                        .unwrap_or("?"),
                    target_stream(&c.invocation)
                );
                self.sent.insert(c.message_id, what.clone());
                what
            })
            .collect()
    }

    fn forward_mut(&mut self, step: usize, name: &str) -> &mut PathNode {
        while self.forward.len() <= step {
            let i = self.forward.len();
            let name = if i == step {
                name.to_owned()
            } else {
                format!("#{i}")
            };
            self.forward
                .push(PathNode::new("step", name, Some(i), "pending"));
        }
        &mut self.forward[step]
    }

    fn compensation_mut(&mut self, step: usize, name: &str) -> &mut PathNode {
        match self.compensations.iter().position(|c| c.step == Some(step)) {
            Some(i) => &mut self.compensations[i],
            None => {
                self.compensations
                    .push(PathNode::new("compensation", name, Some(step), "pending"));
                self.compensations.last_mut().expect("just pushed")
            }
        }
    }

    /// The node whose step is running now: the compensation while compensating.
    fn running_mut(&mut self, step: usize, name: &str) -> &mut PathNode {
        if self.compensating {
            self.compensation_mut(step, name)
        } else {
            self.forward_mut(step, name)
        }
    }

    fn apply(&mut self, event: &SagaEvent, at: DateTime<Utc>) {
        match event {
            SagaEvent::SagaStarted { steps, .. } => {
                self.forward = steps
                    .iter()
                    .enumerate()
                    .map(|(i, name)| PathNode::new("step", name, Some(i), "pending"))
                    .collect();
            }
            SagaEvent::StepInvoked {
                step,
                name,
                attempt,
                commands,
                ..
            } => {
                let commands = self.describe(commands);
                self.compensating = false;
                self.current = Some(*step);
                self.forward_mut(*step, name)
                    .invoked(*attempt, at, &commands);
            }
            SagaEvent::CompensationInvoked {
                step,
                name,
                attempt,
                commands,
                ..
            } => {
                let commands = self.describe(commands);
                self.compensating = true;
                self.current = Some(*step);
                self.compensation_mut(*step, name)
                    .invoked(*attempt, at, &commands);
            }
            SagaEvent::ReplyReceived {
                step,
                name,
                command_id,
                outcome: ReplyOutcome::Rejected { code, message },
                ..
            } => {
                let what = self
                    .sent
                    .get(command_id)
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default();
                self.running_mut(*step, name)
                    .errors
                    .push(format!("{code}: {message}{what}"));
            }
            SagaEvent::ReplyReceived { .. } => {}
            SagaEvent::StepSucceeded { step, name, .. } => {
                let node = self.forward_mut(*step, name);
                node.status = "succeeded".into();
                node.finished_at = Some(at);
                self.current = None;
            }
            SagaEvent::StepFailed {
                step,
                name,
                code,
                message,
            } => {
                let node = self.forward_mut(*step, name);
                node.status = "failed".into();
                node.finished_at = Some(at);
                node.code = Some(code.clone());
                node.message = Some(message.clone());
                self.current = None;
            }
            SagaEvent::StepTimedOut {
                step,
                name,
                attempt,
                retry_at,
            }
            | SagaEvent::CompensationTimedOut {
                step,
                name,
                attempt,
                retry_at,
            } => {
                let note = match retry_at {
                    Some(r) => format!("attempt {attempt} timed out; next at {}", r.to_rfc3339()),
                    None => format!("attempt {attempt} timed out; no attempts left"),
                };
                let node = self.running_mut(*step, name);
                node.timeouts += 1;
                node.errors.push(note);
            }
            SagaEvent::CompensationStarted { failure, steps } => {
                let failed_at = self.forward.iter().position(|s| s.name == failure.step);
                for s in &mut self.forward {
                    if s.status == "running" {
                        s.status = "aborted".into();
                        s.finished_at = Some(at);
                    }
                }
                let mut node =
                    PathNode::new("failure", failure.step.clone(), failed_at, &failure.code);
                node.code = Some(failure.code.clone());
                node.message = Some(failure.message.clone());
                node.finished_at = Some(at);
                self.failure = Some(node);
                for &s in steps {
                    let name = self
                        .forward
                        .get(s)
                        .map_or_else(|| format!("#{s}"), |n| n.name.clone());
                    self.compensation_mut(s, &name);
                }
                self.compensating = true;
                self.current = None;
            }
            SagaEvent::CompensationDone { step, name } => {
                let node = self.compensation_mut(*step, name);
                node.status = "compensated".into();
                node.finished_at = Some(at);
                self.current = None;
            }
            SagaEvent::FinalCommandInvoked {
                attempt, command, ..
            } => {
                let commands = self.describe(std::slice::from_ref(command));
                self.current = None;
                self.final_command
                    .get_or_insert_with(|| {
                        PathNode::new("final", "on_compensated", None, "running")
                    })
                    .invoked(*attempt, at, &commands);
            }
            SagaEvent::SagaCompensated {
                final_outcome,
                failure,
            } => {
                if let Some(node) = &mut self.final_command {
                    node.status = final_outcome.clone().unwrap_or_else(|| "succeeded".into());
                    node.finished_at = Some(at);
                }
                let mut end = PathNode::new("end", "compensated", None, "compensated");
                end.code = Some(failure.code.clone());
                end.finished_at = Some(at);
                self.end = Some(end);
            }
            SagaEvent::SagaCompleted => {
                let mut end = PathNode::new("end", "completed", None, "completed");
                end.finished_at = Some(at);
                self.end = Some(end);
            }
            SagaEvent::SagaFailed { failure } => {
                let why = format!("{}: {}", failure.code, failure.message);
                let node = match (self.current, self.compensating) {
                    (Some(step), true) => Some(self.compensation_mut(step, &failure.step)),
                    _ => self.final_command.as_mut(),
                };
                if let Some(node) = node {
                    node.status = "failed".into();
                    node.errors.push(why);
                }
                let mut end = PathNode::new("end", "failed", None, "failed");
                end.code = Some(failure.code.clone());
                end.message = Some(failure.message.clone());
                end.finished_at = Some(at);
                self.end = Some(end);
            }
            SagaEvent::RetryRequested => {
                if matches!(&self.end, Some(e) if e.status == "failed") {
                    self.end = None;
                }
            }
            SagaEvent::Decided { events } => {
                for e in events {
                    self.apply(e, at);
                }
            }
        }
    }
}

/// The path of a saga whose own events, with the times they were recorded, are `events`:
/// every forward step in the definition's order, then the failure, the compensations in the
/// order they ran, the final command and the end, each present once it happened (the end only
/// once the saga ended).
pub fn saga_path<'a>(
    events: impl IntoIterator<Item = (&'a SagaEvent, DateTime<Utc>)>,
) -> Vec<PathNode> {
    let mut fold = Fold::default();
    for (event, at) in events {
        fold.apply(event, at);
    }
    let Fold {
        forward,
        failure,
        compensations,
        final_command,
        end,
        ..
    } = fold;
    forward
        .into_iter()
        .chain(failure)
        .chain(compensations)
        .chain(final_command)
        .chain(end)
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::saga::definition::{Failure, Invocation};
    use crate::saga::messages::ReplyOutcome;

    fn sent(aggregate: &str, id: &str, command: &str) -> SentCommand {
        SentCommand {
            message_id: Uuid::now_v7(),
            index: 0,
            invocation: Invocation {
                aggregate_type: aggregate.into(),
                context: aggregate.into(),
                aggregate_id: id.into(),
                command: json!({"command": command}),
            },
        }
    }

    fn invoked(step: usize, name: &str, attempt: u32, c: &SentCommand) -> SagaEvent {
        SagaEvent::StepInvoked {
            step,
            name: name.into(),
            attempt,
            commands: vec![c.clone()],
            deadline_at: Utc::now(),
        }
    }

    fn succeeded(step: usize, name: &str) -> SagaEvent {
        SagaEvent::StepSucceeded {
            step,
            name: name.into(),
            data: None,
            reply: None,
        }
    }

    fn compensated(step: usize, name: &str, c: &SentCommand) -> [SagaEvent; 2] {
        [
            SagaEvent::CompensationInvoked {
                step,
                name: name.into(),
                attempt: 1,
                commands: vec![c.clone()],
                deadline_at: Utc::now(),
            },
            SagaEvent::CompensationDone {
                step,
                name: name.into(),
            },
        ]
    }

    fn labels(path: &[PathNode]) -> Vec<String> {
        path.iter()
            .map(|n| format!("{}:{}:{}", n.kind, n.name, n.status))
            .collect()
    }

    /// Three steps done, the fourth rejected: the failure, the three compensations from the
    /// last step back to the first, the final command, the end.
    #[test]
    fn a_compensated_saga_reads_forward_then_back_in_reverse() {
        let (hold, book, pay, ship) = (
            sent("hotel", "h1", "hold"),
            sent("flight", "f1", "book"),
            sent("card", "c1", "charge"),
            sent("courier", "k1", "ship"),
        );
        let failure = Failure {
            step: "ship".into(),
            code: "no_courier".into(),
            message: "nobody delivers there".into(),
        };
        let mut events = vec![
            SagaEvent::SagaStarted {
                saga_type: "trip".into(),
                data: json!({}),
                steps: vec!["hold".into(), "book".into(), "pay".into(), "ship".into()],
                correlation_id: Uuid::now_v7(),
                local: false,
            },
            invoked(0, "hold", 1, &hold),
            succeeded(0, "hold"),
            invoked(1, "book", 1, &book),
            SagaEvent::StepTimedOut {
                step: 1,
                name: "book".into(),
                attempt: 1,
                retry_at: Some(Utc::now()),
            },
            invoked(1, "book", 2, &book),
            succeeded(1, "book"),
            invoked(2, "pay", 1, &pay),
            succeeded(2, "pay"),
            invoked(3, "ship", 1, &ship),
            SagaEvent::ReplyReceived {
                step: 3,
                name: "ship".into(),
                command_id: ship.message_id,
                index: 0,
                outcome: ReplyOutcome::Rejected {
                    code: "no_courier".into(),
                    message: "nobody delivers there".into(),
                },
            },
            SagaEvent::StepFailed {
                step: 3,
                name: "ship".into(),
                code: "no_courier".into(),
                message: "nobody delivers there".into(),
            },
            SagaEvent::CompensationStarted {
                failure: failure.clone(),
                steps: vec![2, 1, 0],
            },
        ];
        events.extend(compensated(2, "pay", &sent("card", "c1", "refund")));
        events.extend(compensated(1, "book", &sent("flight", "f1", "cancel")));
        events.extend(compensated(0, "hold", &sent("hotel", "h1", "release")));
        let reject = sent("trip", "t1", "reject");
        events.push(SagaEvent::FinalCommandInvoked {
            attempt: 1,
            command: reject,
            deadline_at: Utc::now(),
        });
        events.push(SagaEvent::SagaCompensated {
            failure,
            final_outcome: Some("succeeded".into()),
        });
        let now = Utc::now();
        let path = saga_path(events.iter().map(|e| (e, now)));
        assert_eq!(
            labels(&path),
            [
                "step:hold:succeeded",
                "step:book:succeeded",
                "step:pay:succeeded",
                "step:ship:failed",
                "failure:ship:no_courier",
                "compensation:pay:compensated",
                "compensation:book:compensated",
                "compensation:hold:compensated",
                "final:on_compensated:succeeded",
                "end:compensated:compensated",
            ]
        );
        assert_eq!(path[1].attempts, 2);
        assert_eq!(path[1].timeouts, 1);
        assert_eq!(path[1].errors.len(), 1);
        assert_eq!(
            path[3].errors,
            ["no_courier: nobody delivers there (ship on courier-k1)"]
        );
        assert_eq!(path[4].step, Some(3));
        assert_eq!(path[5].step, Some(2));
        assert_eq!(path[5].commands, ["refund on card-c1"]);
        assert_eq!(path[8].commands, ["reject on trip-t1"]);
    }

    /// An operator's abort during a step: the step shows as aborted, is compensated first,
    /// and a compensation refused leaves the saga failed until it is retried.
    #[test]
    fn an_aborted_saga_whose_compensation_is_refused_is_failed_until_retried() {
        let (hold, book) = (sent("hotel", "h1", "hold"), sent("flight", "f1", "book"));
        let release = sent("hotel", "h1", "release");
        let events = vec![
            SagaEvent::SagaStarted {
                saga_type: "trip".into(),
                data: json!({}),
                steps: vec!["hold".into(), "book".into(), "pay".into()],
                correlation_id: Uuid::now_v7(),
                local: false,
            },
            invoked(0, "hold", 1, &hold),
            succeeded(0, "hold"),
            invoked(1, "book", 1, &book),
            SagaEvent::CompensationStarted {
                failure: Failure {
                    step: "book".into(),
                    code: "aborted_by_operator".into(),
                    message: "customer called".into(),
                },
                steps: vec![1, 0],
            },
            SagaEvent::CompensationInvoked {
                step: 1,
                name: "book".into(),
                attempt: 1,
                commands: vec![sent("flight", "f1", "cancel")],
                deadline_at: Utc::now(),
            },
            SagaEvent::CompensationDone {
                step: 1,
                name: "book".into(),
            },
            SagaEvent::CompensationInvoked {
                step: 0,
                name: "hold".into(),
                attempt: 1,
                commands: vec![release.clone()],
                deadline_at: Utc::now(),
            },
            SagaEvent::ReplyReceived {
                step: 0,
                name: "hold".into(),
                command_id: release.message_id,
                index: 0,
                outcome: ReplyOutcome::Rejected {
                    code: "unknown_hold".into(),
                    message: "no such hold".into(),
                },
            },
            SagaEvent::SagaFailed {
                failure: Failure {
                    step: "hold".into(),
                    code: "unknown_hold".into(),
                    message: "no such hold".into(),
                },
            },
        ];
        let now = Utc::now();
        let path = saga_path(events.iter().map(|e| (e, now)));
        assert_eq!(
            labels(&path),
            [
                "step:hold:succeeded",
                "step:book:aborted",
                "step:pay:pending",
                "failure:book:aborted_by_operator",
                "compensation:book:compensated",
                "compensation:hold:failed",
                "end:failed:failed",
            ]
        );
        let mut retried = events.clone();
        retried.push(SagaEvent::RetryRequested);
        let path = saga_path(retried.iter().map(|e| (e, now)));
        assert_eq!(path.last().unwrap().kind, "compensation");
    }
}
