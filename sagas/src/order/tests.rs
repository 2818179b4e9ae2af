use serde_json::json;
use uuid::Uuid;

use sagaflow_engine::aggregate::{decode_event, encode_event};
use sagaflow_engine::testing::given;
use sagaflow_engine::DomainCommand;

use super::*;
use crate::types::{PriceCents, Quantity, Sku};

fn line(sku: &str, quantity: i64, unit_price_cents: i64) -> OrderLine {
    OrderLine {
        sku: Sku::new(sku).unwrap(),
        quantity: Quantity::new(quantity).unwrap(),
        unit_price_cents: PriceCents::new(unit_price_cents).unwrap(),
    }
}

fn customer() -> Uuid {
    Uuid::from_u128(0xc0ffee)
}

fn placed() -> OrderEvent {
    OrderEvent::OrderPlaced {
        customer_id: customer(),
        lines: vec![line("apple", 2, 150), line("pear", 1, 99)],
        total_cents: 399,
    }
}

fn rejected(reason: &str) -> OrderEvent {
    OrderEvent::OrderRejected {
        reason: reason.into(),
    }
}

fn cancelled() -> OrderEvent {
    OrderEvent::OrderCancelled { reason: None }
}

fn reject(reason: &str) -> OrderCommand {
    OrderCommand::Reject {
        reason: reason.into(),
    }
}

fn cancel() -> OrderCommand {
    OrderCommand::Cancel { reason: None }
}

// --- place ---

#[test]
fn placing_computes_the_total_from_the_lines() {
    let order = given::<Order>([])
        .when(OrderCommand::Place {
            customer_id: customer(),
            lines: vec![line("apple", 2, 150), line("pear", 1, 99)],
        })
        .then([placed()]);
    assert_eq!(order.status(), Some(OrderStatus::Pending));
    assert_eq!(order.customer_id(), Some(customer()));
    assert_eq!(order.total_cents(), 399);
    assert_eq!(order.lines().len(), 2);
    assert_eq!(order.reason(), None);
}

#[test]
fn free_lines_are_allowed() {
    given::<Order>([])
        .when(OrderCommand::Place {
            customer_id: customer(),
            lines: vec![line("sample", 1, 0)],
        })
        .then([OrderEvent::OrderPlaced {
            customer_id: customer(),
            lines: vec![line("sample", 1, 0)],
            total_cents: 0,
        }]);
}

#[test]
fn an_order_is_placed_only_once() {
    given::<Order>([placed()])
        .when(OrderCommand::Place {
            customer_id: customer(),
            lines: vec![line("apple", 1, 1)],
        })
        .then_error("order_already_placed");
}

#[test]
fn an_order_needs_lines() {
    given::<Order>([])
        .when(OrderCommand::Place {
            customer_id: customer(),
            lines: vec![],
        })
        .then_error("empty_order");
}

#[test]
fn an_order_has_at_most_a_hundred_lines() {
    let lines = |n: usize| {
        (0..n)
            .map(|i| line(&format!("sku-{i}"), 1, 1))
            .collect::<Vec<_>>()
    };
    given::<Order>([])
        .when(OrderCommand::Place {
            customer_id: customer(),
            lines: lines(Order::MAX_LINES),
        })
        .then([OrderEvent::OrderPlaced {
            customer_id: customer(),
            lines: lines(Order::MAX_LINES),
            total_cents: 100,
        }]);
    given::<Order>([])
        .when(OrderCommand::Place {
            customer_id: customer(),
            lines: lines(Order::MAX_LINES + 1),
        })
        .then_error("too_many_lines");
}

#[test]
fn a_sku_appears_on_one_line_only() {
    let error = given::<Order>([])
        .when(OrderCommand::Place {
            customer_id: customer(),
            lines: vec![
                line("apple", 1, 10),
                line("pear", 1, 10),
                line("apple", 2, 10),
            ],
        })
        .then_error("duplicate_sku");
    assert_eq!(
        error,
        OrderError::DuplicateSku {
            sku: Sku::new("apple").unwrap()
        }
    );
}

#[test]
fn a_total_beyond_what_can_be_authorized_is_refused() {
    // One line at the largest price and quantity fits an i64 but not an authorization.
    given::<Order>([])
        .when(OrderCommand::Place {
            customer_id: customer(),
            lines: vec![line("gold", Quantity::MAX, AmountCents::MAX)],
        })
        .then_error("amount_too_large");
    // The largest authorizable total is accepted.
    given::<Order>([])
        .when(OrderCommand::Place {
            customer_id: customer(),
            lines: vec![line("gold", 1, AmountCents::MAX)],
        })
        .then([OrderEvent::OrderPlaced {
            customer_id: customer(),
            lines: vec![line("gold", 1, AmountCents::MAX)],
            total_cents: AmountCents::MAX,
        }]);
    // One cent more, spread over two lines.
    given::<Order>([])
        .when(OrderCommand::Place {
            customer_id: customer(),
            lines: vec![line("gold", 1, AmountCents::MAX), line("tin", 1, 1)],
        })
        .then_error("amount_too_large");
}

#[test]
fn a_sum_that_overflows_i64_is_refused_not_wrapped() {
    // Each subtotal is 10^18; the tenth pushes the sum past i64::MAX (about 9.2 * 10^18).
    let lines = (0..10)
        .map(|i| line(&format!("gold-{i}"), Quantity::MAX, AmountCents::MAX))
        .collect();
    given::<Order>([])
        .when(OrderCommand::Place {
            customer_id: customer(),
            lines,
        })
        .then_error("amount_too_large");
}

// --- confirm ---

#[test]
fn confirming_a_pending_order() {
    let order = given::<Order>([placed()])
        .when(OrderCommand::Confirm)
        .then([OrderEvent::OrderConfirmed]);
    assert_eq!(order.status(), Some(OrderStatus::Confirmed));
    assert_eq!(
        order.total_cents(),
        399,
        "confirming keeps the lines and total"
    );
}

#[test]
fn confirming_twice_is_idempotent() {
    given::<Order>([placed(), OrderEvent::OrderConfirmed])
        .when(OrderCommand::Confirm)
        .then_nothing();
}

#[test]
fn no_confirming_a_cancelled_order() {
    given::<Order>([placed(), cancelled()])
        .when(OrderCommand::Confirm)
        .then_error("order_cancelled");
}

#[test]
fn no_confirming_a_rejected_order() {
    given::<Order>([placed(), rejected("out of stock")])
        .when(OrderCommand::Confirm)
        .then_error("order_not_pending");
}

#[test]
fn commands_on_a_never_placed_order_are_not_found() {
    for command in [OrderCommand::Confirm, reject("no"), cancel()] {
        let error = given::<Order>([])
            .when(command)
            .then_error("order_not_found");
        assert!(error.is_not_found());
    }
    assert!(!OrderError::Cancelled.is_not_found());
}

// --- reject ---

#[test]
fn rejecting_a_pending_order_records_why() {
    let order = given::<Order>([placed()])
        .when(reject("insufficient_stock"))
        .then([rejected("insufficient_stock")]);
    assert_eq!(order.status(), Some(OrderStatus::Rejected));
    assert_eq!(order.reason(), Some("insufficient_stock"));
}

#[test]
fn rejecting_twice_is_idempotent_and_keeps_the_first_reason() {
    let order = given::<Order>([placed(), rejected("first")])
        .when(reject("second"))
        .then_nothing();
    assert_eq!(order.reason(), Some("first"));
}

#[test]
fn a_rejection_revokes_a_confirmation_the_saga_gave_up_on() {
    // The confirmation was applied after its step timed out; the saga compensated and sends
    // its rejection behind the confirmation.
    given::<Order>([placed(), OrderEvent::OrderConfirmed])
        .when(reject("timeout"))
        .then([rejected("timeout")]);
}

#[test]
fn a_cancelled_order_is_not_rejected() {
    given::<Order>([placed(), cancelled()])
        .when(reject("late"))
        .then_error("order_not_pending");
}

#[test]
fn a_reason_is_not_blank_and_at_most_500_characters() {
    for bad in ["", "   ", &"x".repeat(Order::MAX_REASON_CHARS + 1)] {
        given::<Order>([placed()])
            .when(reject(bad))
            .then_error("invalid_reason");
        given::<Order>([placed()])
            .when(OrderCommand::Cancel {
                reason: Some(bad.into()),
            })
            .then_error("invalid_reason");
    }
    // Characters, not bytes: 500 two-byte characters are fine.
    let long = "é".repeat(Order::MAX_REASON_CHARS);
    given::<Order>([placed()])
        .when(reject(&long))
        .then([rejected(&long)]);
}

// --- cancel ---

#[test]
fn cancelling_a_pending_order() {
    let order = given::<Order>([placed()])
        .when(OrderCommand::Cancel {
            reason: Some("changed my mind".into()),
        })
        .then([OrderEvent::OrderCancelled {
            reason: Some("changed my mind".into()),
        }]);
    assert_eq!(order.status(), Some(OrderStatus::Cancelled));
    assert_eq!(order.reason(), Some("changed my mind"));
}

#[test]
fn cancelling_without_a_reason() {
    let order = given::<Order>([placed()])
        .when(cancel())
        .then([cancelled()]);
    assert_eq!(order.reason(), None);
}

#[test]
fn cancelling_twice_is_idempotent() {
    given::<Order>([placed(), cancelled()])
        .when(cancel())
        .then_nothing();
}

#[test]
fn a_confirmed_or_rejected_order_cannot_be_cancelled() {
    given::<Order>([placed(), OrderEvent::OrderConfirmed])
        .when(cancel())
        .then_error("order_not_pending");
    given::<Order>([placed(), rejected("no stock")])
        .when(cancel())
        .then_error("order_not_pending");
}

// --- ids ---

#[test]
fn order_ids_are_canonical_uuids() {
    assert!(Order::validate_id(&Uuid::now_v7().to_string()).is_ok());
    assert!(Order::validate_id("42").is_err());
    assert!(Order::validate_id(&Uuid::now_v7().simple().to_string()).is_err());
}

// --- wire shapes ---

#[test]
fn commands_have_the_tagged_wire_shape() {
    let command: OrderCommand = serde_json::from_value(json!({
        "command": "place",
        "payload": {
            "customer_id": customer(),
            "lines": [{"sku": "apple", "quantity": 2, "unit_price_cents": 150}],
        },
    }))
    .unwrap();
    assert_eq!(
        command,
        OrderCommand::Place {
            customer_id: customer(),
            lines: vec![line("apple", 2, 150)],
        }
    );
    assert_eq!(command.name(), "place");
}

#[test]
fn commands_without_data_need_no_payload() {
    let parse = |v| serde_json::from_value::<OrderCommand>(v).unwrap();
    assert_eq!(parse(json!({"command": "confirm"})), OrderCommand::Confirm);
    assert_eq!(
        parse(json!({"command": "confirm", "payload": null})),
        OrderCommand::Confirm
    );
    assert_eq!(parse(json!({"command": "cancel", "payload": {}})), cancel());
    assert_eq!(
        parse(json!({"command": "reject", "payload": {"reason": "no stock"}})),
        reject("no stock")
    );
}

#[test]
fn bad_commands_are_refused_at_deserialization() {
    for bad in [
        json!({"command": "place", "payload": {"customer_id": customer(), "lines": [
            {"sku": "apple", "quantity": 0, "unit_price_cents": 1}]}}),
        json!({"command": "place", "payload": {"customer_id": customer(), "lines": [
            {"sku": "apple", "quantity": 1, "unit_price_cents": -1}]}}),
        json!({"command": "place", "payload": {"customer_id": customer(), "lines": [
            {"sku": "no spaces", "quantity": 1, "unit_price_cents": 1}]}}),
        json!({"command": "place", "payload": {"customer_id": customer(), "lines": [
            {"sku": "apple", "quantity": 1, "unit_price_cents": 1, "currency": "EUR"}]}}),
        json!({"command": "place", "payload": {"customer_id": "not-a-uuid", "lines": []}}),
        json!({"command": "place", "payload": {"lines": []}}),
        json!({"command": "reject"}),
        json!({"command": "reject", "payload": {"reason": "x", "extra": 1}}),
        json!({"command": "ship"}),
    ] {
        assert!(
            serde_json::from_value::<OrderCommand>(bad.clone()).is_err(),
            "{bad} was accepted"
        );
    }
}

#[test]
fn events_have_stable_names_and_payloads() {
    let (event_type, payload) = encode_event(&placed());
    assert_eq!(event_type, "order_placed");
    assert_eq!(
        payload,
        json!({
            "customer_id": customer(),
            "lines": [
                {"sku": "apple", "quantity": 2, "unit_price_cents": 150},
                {"sku": "pear", "quantity": 1, "unit_price_cents": 99},
            ],
            "total_cents": 399,
        })
    );
    assert_eq!(
        serde_json::to_value(rejected("no stock")).unwrap(),
        json!({"event_type": "order_rejected", "payload": {"reason": "no stock"}})
    );
    let names: Vec<String> = [
        placed(),
        OrderEvent::OrderConfirmed,
        rejected("r"),
        cancelled(),
    ]
    .iter()
    .map(|e| encode_event(e).0)
    .collect();
    assert_eq!(
        names,
        [
            "order_placed",
            "order_confirmed",
            "order_rejected",
            "order_cancelled"
        ]
    );
}

#[test]
fn every_event_round_trips_through_the_store_encoding() {
    for event in [
        placed(),
        OrderEvent::OrderConfirmed,
        rejected("no stock"),
        cancelled(),
        OrderEvent::OrderCancelled {
            reason: Some("changed my mind".into()),
        },
    ] {
        let (event_type, payload) = encode_event(&event);
        let decoded: OrderEvent = decode_event(&event_type, &payload).unwrap();
        assert_eq!(decoded, event);
    }
}

#[test]
fn the_state_serializes_for_display() {
    let order = given::<Order>([placed(), rejected("no stock")]);
    assert_eq!(
        serde_json::to_value(order.state()).unwrap(),
        json!({
            "status": "rejected",
            "customer_id": customer(),
            "lines": [
                {"sku": "apple", "quantity": 2, "unit_price_cents": 150},
                {"sku": "pear", "quantity": 1, "unit_price_cents": 99},
            ],
            "total_cents": 399,
            "reason": "no stock",
        })
    );
}
