use serde_json::json;
use uuid::Uuid;

use sagaflow_engine::aggregate::{decode_event, decode_event_at, encode_event};
use sagaflow_engine::testing::given;
use sagaflow_engine::DomainEvent;

use super::*;

fn cents(n: i64) -> AmountCents {
    AmountCents::new(n).unwrap()
}

fn order(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn deposited(amount_cents: i64) -> AccountEvent {
    AccountEvent::FundsDeposited { amount_cents }
}

fn authorized(order_id: Uuid, amount_cents: i64) -> AccountEvent {
    AccountEvent::PaymentAuthorized {
        order_id,
        amount_cents,
    }
}

fn voided(order_id: Uuid, amount_cents: i64) -> AccountEvent {
    AccountEvent::PaymentVoided {
        order_id,
        amount_cents,
    }
}

fn captured(order_id: Uuid, amount_cents: i64) -> AccountEvent {
    AccountEvent::PaymentCaptured {
        order_id,
        amount_cents,
    }
}

fn capture(order_id: Uuid) -> AccountCommand {
    AccountCommand::Capture { order_id }
}

fn void(order_id: Uuid) -> AccountCommand {
    AccountCommand::Void { order_id }
}

fn authorize(order_id: Uuid, amount: i64) -> AccountCommand {
    AccountCommand::Authorize {
        order_id,
        amount_cents: cents(amount),
    }
}

/// `0 <= held <= balance` and `held` is the sum of the holds.
fn assert_invariant(account: &Account) {
    assert!(account.held_cents() >= 0, "{account:?}");
    assert!(
        account.held_cents() <= account.balance_cents(),
        "{account:?}"
    );
    assert_eq!(
        account.held_cents(),
        account.holds().values().sum::<i64>(),
        "{account:?}"
    );
}

// --- deposit ---

#[test]
fn depositing_adds_to_the_balance() {
    let account = given::<Account>([deposited(1_000)])
        .when(AccountCommand::Deposit {
            amount_cents: cents(250),
        })
        .then([deposited(250)]);
    assert_eq!(account.balance_cents(), 1_250);
    assert_eq!(account.available_cents(), 1_250);
}

#[test]
fn depositing_past_i64_is_refused() {
    given::<Account>([deposited(i64::MAX - 99)])
        .when(AccountCommand::Deposit {
            amount_cents: cents(100),
        })
        .then_error("amount_too_large");
}

// --- authorize ---

#[test]
fn authorizing_holds_money_for_an_order() {
    let account = given::<Account>([deposited(1_000)])
        .when(authorize(order(1), 400))
        .then([authorized(order(1), 400)]);
    assert_eq!(account.balance_cents(), 1_000);
    assert_eq!(account.held_cents(), 400);
    assert_eq!(account.available_cents(), 600);
    assert_eq!(account.hold(order(1)), Some(400));
}

#[test]
fn no_hold_beyond_the_balance() {
    let history = [deposited(1_000), authorized(order(1), 400)];
    given::<Account>(history.clone())
        .when(authorize(order(2), 600))
        .then([authorized(order(2), 600)]);
    let error = given::<Account>(history)
        .when(authorize(order(2), 601))
        .then_error("insufficient_funds");
    assert_eq!(
        error,
        AccountError::InsufficientFunds {
            requested: 601,
            available: 600
        }
    );
    given::<Account>([])
        .when(authorize(order(1), 1))
        .then_error("insufficient_funds");
}

#[test]
fn authorizing_again_with_the_same_amount_is_idempotent() {
    given::<Account>([deposited(400), authorized(order(1), 400)])
        .when(authorize(order(1), 400))
        .then_nothing();
}

#[test]
fn authorizing_again_with_another_amount_is_a_mismatch() {
    let error = given::<Account>([deposited(1_000), authorized(order(1), 400)])
        .when(authorize(order(1), 300))
        .then_error("authorization_mismatch");
    assert_eq!(
        error,
        AccountError::AuthorizationMismatch {
            order_id: order(1),
            held: 400,
            requested: 300
        }
    );
}

// --- capture ---

#[test]
fn capturing_takes_the_held_money() {
    let account = given::<Account>([deposited(1_000), authorized(order(1), 400)])
        .when(capture(order(1)))
        .then([captured(order(1), 400)]);
    assert_eq!(account.balance_cents(), 600);
    assert_eq!(account.held_cents(), 0);
    assert_eq!(account.hold(order(1)), None);
}

#[test]
fn capturing_without_an_authorization_is_refused() {
    given::<Account>([deposited(1_000)])
        .when(capture(order(1)))
        .then_error("authorization_not_found");
}

#[test]
fn capture_after_void_fails() {
    given::<Account>([
        deposited(1_000),
        authorized(order(1), 400),
        voided(order(1), 400),
    ])
    .when(capture(order(1)))
    .then_error("authorization_not_found");
}

#[test]
fn capturing_twice_is_refused() {
    given::<Account>([
        deposited(1_000),
        authorized(order(1), 400),
        captured(order(1), 400),
    ])
    .when(capture(order(1)))
    .then_error("authorization_not_found");
}

// --- void ---

#[test]
fn voiding_lets_the_hold_go() {
    let account = given::<Account>([deposited(1_000), authorized(order(1), 400)])
        .when(void(order(1)))
        .then([voided(order(1), 400)]);
    assert_eq!(account.balance_cents(), 1_000);
    assert_eq!(account.held_cents(), 0);
    assert_eq!(account.available_cents(), 1_000);
}

#[test]
fn voiding_what_is_not_held_is_idempotent() {
    given::<Account>([deposited(1_000)])
        .when(void(order(1)))
        .then_nothing();
    given::<Account>([
        deposited(1_000),
        authorized(order(1), 400),
        voided(order(1), 400),
    ])
    .when(void(order(1)))
    .then_nothing();
}

// --- invariant ---

#[test]
fn the_invariant_holds_after_any_sequence_of_commands() {
    let mut seed: u64 = 0xacc0;
    let mut next = |bound: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % bound
    };
    let mut account = Account::default();
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..5_000 {
        let order_id = order(u128::from(next(6)));
        let amount_cents = cents(next(800) as i64 + 1);
        let command = match next(4) {
            0 => AccountCommand::Deposit { amount_cents },
            1 => AccountCommand::Authorize {
                order_id,
                amount_cents,
            },
            2 => capture(order_id),
            _ => void(order_id),
        };
        match account.handle(&command) {
            Ok(events) => {
                accepted += 1;
                for e in &events {
                    account.apply(e);
                }
            }
            Err(_) => refused += 1,
        }
        assert_invariant(&account);
    }
    assert!(
        accepted > 1_000 && refused > 100,
        "{accepted} accepted, {refused} refused"
    );
}

// --- ids ---

#[test]
fn account_ids_are_canonical_uuids() {
    assert!(Account::validate_id(&Uuid::now_v7().to_string()).is_ok());
    assert!(Account::validate_id("alice").is_err());
    assert!(Account::validate_id(&Uuid::now_v7().to_string().to_uppercase()).is_err());
}

// --- wire shapes ---

#[test]
fn commands_have_the_tagged_wire_shape() {
    let command: AccountCommand = serde_json::from_value(json!({
        "command": "authorize",
        "payload": {"order_id": order(7), "amount_cents": 1_250},
    }))
    .unwrap();
    assert_eq!(command, authorize(order(7), 1_250));
    assert_eq!(
        serde_json::from_value::<AccountCommand>(
            json!({"command": "void", "payload": {"order_id": order(7)}})
        )
        .unwrap(),
        void(order(7))
    );
}

#[test]
fn bad_amounts_and_missing_fields_are_refused_at_deserialization() {
    let deposit = |amount: serde_json::Value| json!({"command": "deposit", "payload": {"amount_cents": amount}});
    for bad in [
        deposit(json!(0)),
        deposit(json!(-100)),
        deposit(json!("100")),
        deposit(json!(10.5)),
        deposit(json!(AmountCents::MAX + 1)),
        json!({"command": "deposit", "payload": {}}),
        json!({"command": "authorize", "payload": {"amount_cents": 100}}),
        json!({"command": "capture", "payload": {}}),
        json!({"command": "refund", "payload": {"order_id": order(7)}}),
    ] {
        assert!(
            serde_json::from_value::<AccountCommand>(bad.clone()).is_err(),
            "{bad} was accepted"
        );
    }
}

#[test]
fn events_have_stable_names_and_payloads() {
    assert_eq!(
        serde_json::to_value(authorized(order(7), 1_250)).unwrap(),
        json!({"event_type": "payment_authorized", "payload": {"order_id": order(7), "amount_cents": 1_250}})
    );
    let names: Vec<String> = all_events().iter().map(|e| encode_event(e).0).collect();
    assert_eq!(
        names,
        [
            "funds_deposited",
            "payment_authorized",
            "payment_captured",
            "payment_voided"
        ]
    );
}

#[test]
fn every_event_round_trips_through_the_store_encoding() {
    for event in all_events() {
        let (event_type, payload) = encode_event(&event);
        let decoded: AccountEvent = decode_event(&event_type, &payload).unwrap();
        assert_eq!(decoded, event);
    }
}

#[test]
fn deposits_are_written_at_schema_version_2_and_the_rest_at_1() {
    let versions: Vec<(String, i32)> = all_events()
        .iter()
        .map(|e| {
            let t = encode_event(e).0;
            let v = AccountEvent::schema_version(&t);
            (t, v)
        })
        .collect();
    assert_eq!(
        versions,
        [
            ("funds_deposited".to_owned(), 2),
            ("payment_authorized".to_owned(), 1),
            ("payment_captured".to_owned(), 1),
            ("payment_voided".to_owned(), 1),
        ]
    );
}

#[test]
fn a_v1_deposit_is_upcast_from_amount_to_amount_cents() {
    let v1 = json!({"amount": 1_500});
    let decoded: AccountEvent = decode_event_at("funds_deposited", 1, &v1).unwrap();
    assert_eq!(decoded, deposited(1_500));
    // Read as if it were current, the old shape does not decode: the version matters.
    assert!(decode_event::<AccountEvent>("funds_deposited", &v1).is_err());
    // A v1 row that already used the new field name stays readable.
    let early = json!({"amount_cents": 700});
    assert_eq!(
        decode_event_at::<AccountEvent>("funds_deposited", 1, &early).unwrap(),
        deposited(700)
    );
    // A current payload is decoded as it is.
    let (t, v2) = encode_event(&deposited(42));
    assert_eq!(
        decode_event_at::<AccountEvent>(&t, 2, &v2).unwrap(),
        deposited(42)
    );
    // An account folded from a v1 deposit has the right balance.
    let account = given::<Account>([decoded, authorized(order(1), 1_000)]);
    assert_eq!(account.state().available_cents(), 500);
}

#[test]
fn the_state_serializes_for_display() {
    let account = given::<Account>([deposited(1_000), authorized(order(7), 400)]);
    assert_eq!(
        serde_json::to_value(account.state()).unwrap(),
        json!({"balance_cents": 1_000, "held_cents": 400, "holds": {order(7).to_string(): 400}})
    );
}

fn all_events() -> [AccountEvent; 4] {
    [
        deposited(1_000),
        authorized(order(7), 400),
        captured(order(7), 400),
        voided(order(8), 100),
    ]
}
