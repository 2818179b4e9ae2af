//! Order fulfillment through the saga harness: given the saga at a step, when a reply
//! arrives, expect the next command or the compensation.

use sagaflow_engine::saga::testing::SagaTest;
use sagaflow_engine::saga::{SagaEvent, SagaStatus};
use uuid::Uuid;

use super::*;
use crate::inventory::InventoryEvent;
use crate::types::{PriceCents, Quantity, Sku};

fn line(sku: &str, quantity: i64, price: i64) -> OrderLine {
    OrderLine {
        sku: Sku::new(sku).unwrap(),
        quantity: Quantity::new(quantity).unwrap(),
        unit_price_cents: PriceCents::new(price).unwrap(),
    }
}

fn order() -> OrderSaga {
    OrderSaga {
        order_id: Uuid::now_v7(),
        customer_id: Uuid::now_v7(),
        lines: vec![line("SKU-1", 2, 500), line("SKU-2", 1, 250)],
        total_cents: 1250,
    }
}

fn reserve(s: &OrderSaga) -> Vec<(String, InventoryCommand)> {
    s.lines
        .iter()
        .map(|l| {
            (
                l.sku.to_string(),
                InventoryCommand::Reserve {
                    order_id: s.order_id,
                    quantity: l.quantity,
                },
            )
        })
        .collect()
}

fn release(s: &OrderSaga) -> Vec<(String, InventoryCommand)> {
    s.lines
        .iter()
        .map(|l| {
            (
                l.sku.to_string(),
                InventoryCommand::Release {
                    order_id: s.order_id,
                },
            )
        })
        .collect()
}

fn authorize(s: &OrderSaga) -> AccountCommand {
    AccountCommand::Authorize {
        order_id: s.order_id,
        amount_cents: AmountCents::new(s.total_cents).unwrap(),
    }
}

#[test]
fn the_happy_path_reserves_authorizes_confirms_and_captures() {
    let s = order();
    SagaTest::start(order_fulfillment(), &s)
        .expect_commands::<Inventory>(reserve(&s))
        .reply_ok_with::<Inventory>(
            0,
            vec![InventoryEvent::StockReserved {
                order_id: s.order_id,
                quantity: 2,
            }],
        )
        .expect_nothing_sent()
        .reply_ok(1)
        .expect_command::<Account>(s.customer_id, authorize(&s))
        .all_ok()
        .expect_command::<Order>(s.order_id, OrderCommand::Confirm)
        .all_ok()
        .expect_command::<Account>(
            s.customer_id,
            AccountCommand::Capture {
                order_id: s.order_id,
            },
        )
        .all_ok()
        .expect_status(SagaStatus::Completed)
        .expect_nothing_sent();
}

#[test]
fn out_of_stock_releases_what_was_reserved_and_rejects_the_order() {
    let s = order();
    SagaTest::start(order_fulfillment(), &s)
        .reply_ok(0)
        .reply_rejected(1, "insufficient_stock")
        .expect_compensation::<Inventory>(release(&s))
        .all_ok()
        .expect_compensated_with::<Order>(
            s.order_id,
            OrderCommand::Reject {
                reason: "insufficient_stock".into(),
            },
        );
}

#[test]
fn out_of_stock_on_every_line_has_nothing_to_release() {
    let s = order();
    SagaTest::start(order_fulfillment(), &s)
        .reply_rejected(0, "insufficient_stock")
        .reply_rejected(1, "insufficient_stock")
        .expect_compensated_with::<Order>(
            s.order_id,
            OrderCommand::Reject {
                reason: "insufficient_stock".into(),
            },
        );
}

#[test]
fn a_declined_payment_releases_the_stock_and_rejects_the_order() {
    let s = order();
    let t = SagaTest::at_step(order_fulfillment(), &s, "authorize_payment")
        .reply_rejected(0, "insufficient_funds")
        .expect_compensation::<Inventory>(release(&s))
        .all_ok()
        .expect_compensated_with::<Order>(
            s.order_id,
            OrderCommand::Reject {
                reason: "insufficient_funds".into(),
            },
        );
    let failure = t.state().failure.clone().unwrap();
    assert_eq!(
        (failure.step.as_str(), failure.code.as_str()),
        ("authorize_payment", "insufficient_funds")
    );
}

#[test]
fn cancelling_while_authorizing_voids_then_releases_and_sends_no_reject() {
    let s = order();
    SagaTest::at_step(order_fulfillment(), &s, "authorize_payment")
        .abort("customer cancelled")
        .expect_compensation::<Account>(vec![(
            s.customer_id,
            AccountCommand::Void {
                order_id: s.order_id,
            },
        )])
        .all_ok()
        .expect_compensation::<Inventory>(release(&s))
        .all_ok()
        .expect_status(SagaStatus::Compensated)
        .expect_nothing_sent();
}

#[test]
fn a_late_reply_after_the_abort_is_ignored() {
    let s = order();
    let t = SagaTest::start(order_fulfillment(), &s);
    let late = t.last_commands[0].message_id;
    let t = t.abort("cancelled");
    let state_before = t.state().clone();
    let events = sagaflow_engine::saga::decide(
        &order_fulfillment(),
        &state_before,
        &sagaflow_engine::saga::SagaInput::Reply {
            command_id: late,
            outcome: sagaflow_engine::saga::messages::ReplyOutcome::Succeeded { events: vec![] },
        },
        chrono::Utc::now(),
        &mut || 0.5,
    )
    .unwrap();
    assert!(events.is_empty(), "{events:?}");
}

#[test]
fn a_silent_participant_is_retried_then_compensated() {
    let s = order();
    let t = SagaTest::at_step(order_fulfillment(), &s, "authorize_payment");
    let first = t.last_commands[0].message_id;
    let t = t
        .deadline_passes() // attempt 1 timed out: retry scheduled
        .expect_nothing_sent()
        .deadline_passes() // attempt 2 sent
        .expect_command::<Account>(s.customer_id, authorize(&s));
    // The same message id: the participant applies the command at most once, whichever
    // attempt reaches it first, and a reply to either attempt is the reply. (With a new id,
    // attempt 1 could be rejected for want of stock while attempt 2, after a restock, is
    // applied, and the saga would compensate without undoing it; a chaos run found that.)
    assert_eq!(
        t.last_commands[0].message_id, first,
        "a retry carries the first attempt's message id"
    );
    assert_eq!(t.state().steps[1].attempts, 2);
    t.deadline_passes()
        .deadline_passes()
        .expect_command::<Account>(s.customer_id, authorize(&s))
        .deadline_passes() // attempt 3 timed out: no attempts left
        .expect_compensation::<Account>(vec![(
            s.customer_id,
            AccountCommand::Void {
                order_id: s.order_id,
            },
        )])
        .all_ok()
        .expect_compensation::<Inventory>(release(&s))
        .all_ok()
        .expect_compensated_with::<Order>(
            s.order_id,
            OrderCommand::Reject {
                reason: "timeout".into(),
            },
        );
}

#[test]
fn a_reply_to_an_earlier_attempt_still_counts() {
    let s = order();
    let t = SagaTest::at_step(order_fulfillment(), &s, "authorize_payment");
    let first = t.outstanding[0].clone();
    let mut t = t.deadline_passes().deadline_passes();
    t.outstanding = vec![first];
    t.reply_ok(0)
        .expect_command::<Order>(s.order_id, OrderCommand::Confirm);
}

#[test]
fn a_compensation_that_keeps_failing_fails_the_saga_visibly_and_can_be_retried() {
    let s = order();
    let mut t = SagaTest::at_step(order_fulfillment(), &s, "authorize_payment")
        .reply_rejected(0, "insufficient_funds")
        .expect_compensation::<Inventory>(release(&s));
    for _ in 0..10 {
        t = t.deadline_passes(); // timed out
        if t.state().status == Some(SagaStatus::Failed) {
            break;
        }
        t = t.deadline_passes(); // retried
    }
    let t = t.expect_status(SagaStatus::Failed);
    assert_eq!(
        t.state().error.clone().unwrap().code,
        "compensation_timeout"
    );
    assert_eq!(
        t.state().failure.clone().unwrap().code,
        "insufficient_funds"
    );
    assert_eq!(
        t.state().steps[0].status,
        sagaflow_engine::saga::StepStatus::CompensationFailed
    );
    t.retry()
        .expect_compensation::<Inventory>(release(&s))
        .all_ok()
        .expect_compensated_with::<Order>(
            s.order_id,
            OrderCommand::Reject {
                reason: "insufficient_funds".into(),
            },
        );
}

#[test]
fn retry_step_sends_a_timed_out_step_again_at_once() {
    let s = order();
    let t = SagaTest::at_step(order_fulfillment(), &s, "authorize_payment")
        .deadline_passes() // attempt 1 timed out: attempt 2 waits for its backoff
        .expect_nothing_sent();
    let waiting_until = t.state().deadline.unwrap().at;
    let t = t
        .retry_step()
        .expect_command::<Account>(s.customer_id, authorize(&s))
        .expect_status(SagaStatus::Running);
    assert!(matches!(
        t.last_events.as_slice(),
        [
            SagaEvent::RetryRequested,
            SagaEvent::StepInvoked { attempt: 2, .. }
        ]
    ));
    assert_eq!(t.state().steps[1].attempts, 2);
    assert!(t.state().deadline.unwrap().at > waiting_until - chrono::Duration::seconds(1));
    // The step then goes on as if the backoff had passed.
    t.all_ok()
        .expect_command::<Order>(s.order_id, OrderCommand::Confirm)
        .all_ok()
        .all_ok()
        .expect_status(SagaStatus::Completed);
}

#[test]
fn retry_step_changes_nothing_while_a_step_waits_for_replies_or_after_the_end() {
    let s = order();
    let waiting = SagaTest::at_step(order_fulfillment(), &s, "authorize_payment").retry_step();
    assert!(waiting.last_events.is_empty(), "{:?}", waiting.last_events);
    let done = SagaTest::start(order_fulfillment(), &s)
        .all_ok()
        .all_ok()
        .all_ok()
        .all_ok()
        .expect_status(SagaStatus::Completed)
        .retry_step();
    assert!(done.last_events.is_empty(), "{:?}", done.last_events);
}

#[test]
fn retry_step_sends_a_timed_out_compensation_again_at_once() {
    let s = order();
    SagaTest::at_step(order_fulfillment(), &s, "authorize_payment")
        .reply_rejected(0, "insufficient_funds")
        .expect_compensation::<Inventory>(release(&s))
        .deadline_passes() // the release timed out: the next attempt waits for its backoff
        .expect_nothing_sent()
        .retry_step()
        .expect_compensation::<Inventory>(release(&s))
        .all_ok()
        .expect_compensated_with::<Order>(
            s.order_id,
            OrderCommand::Reject {
                reason: "insufficient_funds".into(),
            },
        );
}

#[test]
fn retry_step_re_drives_a_failed_saga_to_its_end() {
    let s = order();
    let mut t = SagaTest::at_step(order_fulfillment(), &s, "authorize_payment")
        .reply_rejected(0, "insufficient_funds");
    while t.state().status != Some(SagaStatus::Failed) {
        t = t.deadline_passes();
    }
    t.retry_step()
        .expect_compensation::<Inventory>(release(&s))
        .all_ok()
        .expect_compensated_with::<Order>(
            s.order_id,
            OrderCommand::Reject {
                reason: "insufficient_funds".into(),
            },
        );
}

#[test]
fn an_operator_abort_compensates_and_rejects_the_order() {
    let s = order();
    let t = SagaTest::at_step(order_fulfillment(), &s, "authorize_payment")
        .operator_abort("stuck at the payment provider")
        .expect_compensation::<Account>(vec![(
            s.customer_id,
            AccountCommand::Void {
                order_id: s.order_id,
            },
        )])
        .all_ok()
        .expect_compensation::<Inventory>(release(&s))
        .all_ok()
        .expect_compensated_with::<Order>(
            s.order_id,
            OrderCommand::Reject {
                reason: "aborted_by_operator".into(),
            },
        );
    assert_eq!(
        t.state().failure.clone().unwrap().message,
        "stuck at the payment provider"
    );
    // A finished saga cannot be aborted.
    let again = t.operator_abort("again");
    assert!(again.last_events.is_empty(), "{:?}", again.last_events);
}

#[test]
fn a_free_order_skips_the_payment_steps() {
    let mut s = order();
    s.lines = vec![line("SKU-1", 1, 0)];
    s.total_cents = 0;
    SagaTest::start(order_fulfillment(), &s)
        .all_ok()
        .expect_command::<Order>(s.order_id, OrderCommand::Confirm)
        .all_ok()
        .expect_status(SagaStatus::Completed);
}

#[test]
fn a_second_start_changes_nothing() {
    let s = order();
    let t = SagaTest::start(order_fulfillment(), &s);
    let events = sagaflow_engine::saga::decide(
        &order_fulfillment(),
        t.state(),
        &sagaflow_engine::saga::SagaInput::Start {
            data: serde_json::to_value(&s).unwrap(),
            correlation_id: Uuid::now_v7(),
        },
        chrono::Utc::now(),
        &mut || 0.5,
    )
    .unwrap();
    assert!(events.is_empty());
}

#[test]
fn the_saga_id_is_derived_from_the_order() {
    let id = Uuid::now_v7();
    assert_eq!(
        saga_id_of(id),
        order_fulfillment().id_for(&format!("order-{id}"))
    );
    assert_ne!(saga_id_of(id), saga_id_of(Uuid::now_v7()));
}

/// The event types the last input recorded, a completing reply marked `+reply`.
fn recorded(t: &SagaTest) -> Vec<String> {
    t.last_events
        .iter()
        .map(|e| {
            let v = serde_json::to_value(e).unwrap();
            let name = v["event_type"].as_str().unwrap().to_owned();
            match e {
                SagaEvent::StepSucceeded { reply: Some(r), .. } => {
                    format!("{name}+reply#{}", r.index)
                }
                _ => name,
            }
        })
        .collect()
}

#[test]
fn the_reply_that_completes_a_step_is_recorded_in_its_step_succeeded() {
    let s = order();
    // Two lines: the first reply is recorded on its own, the last one with the step.
    let t = SagaTest::start(order_fulfillment(), &s).reply_ok(1);
    assert_eq!(recorded(&t), ["reply_received"]);
    let t = t.reply_ok(0);
    assert_eq!(recorded(&t), ["step_succeeded+reply#0", "step_invoked"]);
    // One command: one event for reply and success. The harness folds the recorded events
    // into its own state, so the replayed saga is where the decisions left it.
    let t = t.reply_ok(0);
    assert_eq!(recorded(&t), ["step_succeeded+reply#0", "step_invoked"]);
    assert_eq!(t.state().current_step_name(), Some("confirm_order"));
    assert_eq!(
        t.state().steps[1].status,
        sagaflow_engine::saga::StepStatus::Succeeded
    );
    // A rejection is still a reply of its own, followed by the failure.
    let t = SagaTest::at_step(order_fulfillment(), &s, "authorize_payment")
        .reply_rejected(0, "insufficient_funds");
    assert_eq!(
        recorded(&t),
        [
            "reply_received",
            "step_failed",
            "compensation_started",
            "compensation_invoked"
        ]
    );
}

#[test]
fn every_attempt_of_a_compensation_and_of_the_final_command_carries_one_message_id() {
    let s = order();
    let t = SagaTest::at_step(order_fulfillment(), &s, "authorize_payment")
        .reply_rejected(0, "insufficient_funds")
        .expect_compensation::<Inventory>(release(&s));
    let release_id = t.last_commands[0].message_id;
    let t = t.deadline_passes().deadline_passes();
    assert_eq!(t.last_commands[0].message_id, release_id);
    let t = t.all_ok();
    let reject_id = t.last_commands[0].message_id;
    assert_ne!(reject_id, release_id);
    let t = t.deadline_passes();
    assert_eq!(t.last_commands[0].message_id, reject_id);
    t.all_ok().expect_status(SagaStatus::Compensated);
}
