use serde_json::json;
use uuid::Uuid;

use sagaflow_engine::aggregate::{decode_event, encode_event};
use sagaflow_engine::testing::given;

use super::*;

fn qty(n: i64) -> Quantity {
    Quantity::new(n).unwrap()
}

fn order(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn restocked(quantity: i64) -> InventoryEvent {
    InventoryEvent::StockRestocked { quantity }
}

fn reserved(order_id: Uuid, quantity: i64) -> InventoryEvent {
    InventoryEvent::StockReserved { order_id, quantity }
}

fn released(order_id: Uuid, quantity: i64) -> InventoryEvent {
    InventoryEvent::StockReleased { order_id, quantity }
}

fn committed(order_id: Uuid, quantity: i64) -> InventoryEvent {
    InventoryEvent::StockCommitted { order_id, quantity }
}

fn release(order_id: Uuid) -> InventoryCommand {
    InventoryCommand::Release { order_id }
}

fn commit(order_id: Uuid) -> InventoryCommand {
    InventoryCommand::Commit { order_id }
}

fn reserve(order_id: Uuid, quantity: i64) -> InventoryCommand {
    InventoryCommand::Reserve {
        order_id,
        quantity: qty(quantity),
    }
}

/// `0 <= reserved <= on_hand` and `reserved` is the sum of the reservations.
fn assert_invariant(inventory: &Inventory) {
    assert!(inventory.reserved() >= 0, "{inventory:?}");
    assert!(inventory.reserved() <= inventory.on_hand(), "{inventory:?}");
    assert_eq!(
        inventory.reserved(),
        inventory.reservations().values().sum::<i64>(),
        "{inventory:?}"
    );
    assert_eq!(
        inventory.available(),
        inventory.on_hand() - inventory.reserved()
    );
}

// --- restock ---

#[test]
fn restocking_adds_to_the_stock_on_hand() {
    let inventory = given::<Inventory>([restocked(10)])
        .when(InventoryCommand::Restock { quantity: qty(5) })
        .then([restocked(5)]);
    assert_eq!(inventory.on_hand(), 15);
    assert_eq!(inventory.available(), 15);
    assert_eq!(inventory.reserved(), 0);
}

#[test]
fn restocking_past_i64_is_refused() {
    given::<Inventory>([restocked(i64::MAX - 4)])
        .when(InventoryCommand::Restock { quantity: qty(5) })
        .then_error("quantity_too_large");
    let full = given::<Inventory>([restocked(i64::MAX - 5)])
        .when(InventoryCommand::Restock { quantity: qty(5) })
        .then([restocked(5)]);
    assert_eq!(full.on_hand(), i64::MAX);
}

// --- reserve ---

#[test]
fn reserving_sets_units_aside_for_an_order() {
    let inventory = given::<Inventory>([restocked(10)])
        .when(reserve(order(1), 4))
        .then([reserved(order(1), 4)]);
    assert_eq!(inventory.on_hand(), 10);
    assert_eq!(inventory.reserved(), 4);
    assert_eq!(inventory.available(), 6);
    assert_eq!(inventory.reservation(order(1)), Some(4));
}

#[test]
fn reserving_exactly_what_is_available_succeeds_and_one_more_fails() {
    let history = [restocked(10), reserved(order(1), 3)];
    let inventory = given::<Inventory>(history.clone())
        .when(reserve(order(2), 7))
        .then([reserved(order(2), 7)]);
    assert_eq!(inventory.available(), 0);
    let error = given::<Inventory>(history)
        .when(reserve(order(2), 8))
        .then_error("insufficient_stock");
    assert_eq!(
        error,
        InventoryError::InsufficientStock {
            requested: 8,
            available: 7
        }
    );
}

#[test]
fn no_negative_stock_from_an_empty_shelf() {
    given::<Inventory>([])
        .when(reserve(order(1), 1))
        .then_error("insufficient_stock");
}

#[test]
fn reserving_again_with_the_same_quantity_is_idempotent() {
    given::<Inventory>([restocked(10), reserved(order(1), 4)])
        .when(reserve(order(1), 4))
        .then_nothing();
}

#[test]
fn a_repeated_reservation_succeeds_even_when_the_stock_is_gone() {
    // The repeat is answered from the reservation, not re-checked against what is left.
    given::<Inventory>([restocked(4), reserved(order(1), 4)])
        .when(reserve(order(1), 4))
        .then_nothing();
}

#[test]
fn reserving_again_with_another_quantity_is_a_mismatch() {
    let error = given::<Inventory>([restocked(10), reserved(order(1), 4)])
        .when(reserve(order(1), 5))
        .then_error("reservation_mismatch");
    assert_eq!(
        error,
        InventoryError::ReservationMismatch {
            order_id: order(1),
            held: 4,
            requested: 5
        }
    );
}

// --- release ---

#[test]
fn releasing_gives_the_whole_reservation_back() {
    let inventory =
        given::<Inventory>([restocked(10), reserved(order(1), 4), reserved(order(2), 1)])
            .when(release(order(1)))
            .then([released(order(1), 4)]);
    assert_eq!(inventory.on_hand(), 10);
    assert_eq!(inventory.reserved(), 1);
    assert_eq!(inventory.reservation(order(1)), None);
    assert_eq!(inventory.reservation(order(2)), Some(1));
}

#[test]
fn releasing_what_is_not_reserved_is_idempotent() {
    given::<Inventory>([restocked(10)])
        .when(release(order(1)))
        .then_nothing();
    given::<Inventory>([restocked(10), reserved(order(1), 4), released(order(1), 4)])
        .when(release(order(1)))
        .then_nothing();
}

// --- commit ---

#[test]
fn committing_takes_the_reservation_out_of_stock() {
    let inventory = given::<Inventory>([restocked(10), reserved(order(1), 4)])
        .when(commit(order(1)))
        .then([committed(order(1), 4)]);
    assert_eq!(inventory.on_hand(), 6);
    assert_eq!(inventory.reserved(), 0);
    assert_eq!(inventory.available(), 6);
}

#[test]
fn committing_without_a_reservation_is_refused() {
    given::<Inventory>([restocked(10)])
        .when(commit(order(1)))
        .then_error("reservation_not_found");
    // A released reservation cannot be committed any more.
    given::<Inventory>([restocked(10), reserved(order(1), 4), released(order(1), 4)])
        .when(commit(order(1)))
        .then_error("reservation_not_found");
}

// --- invariant ---

#[test]
fn the_invariant_holds_after_any_sequence_of_commands() {
    // A deterministic pseudo-random walk over every command, a few orders and small
    // quantities, so reservations often collide with each other and with the stock.
    let mut seed: u64 = 0x5eed;
    let mut next = |bound: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % bound
    };
    let mut inventory = Inventory::default();
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..5_000 {
        let order_id = order(u128::from(next(6)));
        let quantity = qty(next(8) as i64 + 1);
        let command = match next(4) {
            0 => InventoryCommand::Restock { quantity },
            1 => InventoryCommand::Reserve { order_id, quantity },
            2 => release(order_id),
            _ => commit(order_id),
        };
        match inventory.handle(&command) {
            Ok(events) => {
                accepted += 1;
                for e in &events {
                    inventory.apply(e);
                }
            }
            Err(_) => refused += 1,
        }
        assert_invariant(&inventory);
    }
    assert!(
        accepted > 1_000 && refused > 100,
        "{accepted} accepted, {refused} refused"
    );
}

#[test]
fn the_invariant_holds_after_a_whole_order_lifecycle() {
    let mut inventory = given::<Inventory>([restocked(5)])
        .when(reserve(order(1), 3))
        .then([reserved(order(1), 3)]);
    assert_invariant(&inventory);
    for (command, quantity_after) in [
        (reserve(order(2), 2), 5),
        (release(order(1)), 5),
        (commit(order(2)), 3),
        (reserve(order(3), 3), 3),
    ] {
        for e in inventory.handle(&command).unwrap() {
            inventory.apply(&e);
        }
        assert_invariant(&inventory);
        assert_eq!(inventory.on_hand(), quantity_after);
    }
    assert_eq!(inventory.available(), 0);
    assert_eq!(inventory.reservations().len(), 1);
}

// --- ids ---

#[test]
fn inventory_ids_follow_the_sku_rule() {
    assert!(Inventory::validate_id("apple-1.b_c").is_ok());
    assert!(Inventory::validate_id("").is_err());
    assert!(Inventory::validate_id("a b").is_err());
    assert!(Inventory::validate_id(&"x".repeat(65)).is_err());
}

// --- wire shapes ---

#[test]
fn commands_have_the_tagged_wire_shape() {
    let command: InventoryCommand = serde_json::from_value(json!({
        "command": "reserve",
        "payload": {"order_id": order(7), "quantity": 3},
    }))
    .unwrap();
    assert_eq!(command, reserve(order(7), 3));
    assert_eq!(
        serde_json::to_value(&command).unwrap(),
        json!({"command": "reserve", "payload": {"order_id": order(7), "quantity": 3}})
    );
}

#[test]
fn bad_quantities_and_missing_fields_are_refused_at_deserialization() {
    let reserve_with = |quantity: serde_json::Value| json!({"command": "reserve", "payload": {"order_id": order(7), "quantity": quantity}});
    for bad in [
        reserve_with(json!(0)),
        reserve_with(json!(-1)),
        reserve_with(json!("5")),
        reserve_with(json!(1.5)),
        reserve_with(json!(1_000_001)),
        reserve_with(json!(null)),
        json!({"command": "reserve", "payload": {"order_id": order(7)}}),
        json!({"command": "reserve", "payload": {"quantity": 1}}),
        json!({"command": "reserve"}),
        json!({"command": "restock", "payload": {}}),
        json!({"command": "restock", "payload": {"quantity": 1, "sku": "apple"}}),
    ] {
        let error = serde_json::from_value::<InventoryCommand>(bad.clone());
        assert!(error.is_err(), "{bad} was accepted");
    }
    let message = serde_json::from_value::<InventoryCommand>(reserve_with(json!(0)))
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("quantity must be a positive integer"),
        "{message}"
    );
}

#[test]
fn events_have_stable_names_and_payloads() {
    assert_eq!(
        serde_json::to_value(reserved(order(7), 3)).unwrap(),
        json!({"event_type": "stock_reserved", "payload": {"order_id": order(7), "quantity": 3}})
    );
    let names: Vec<String> = all_events().iter().map(|e| encode_event(e).0).collect();
    assert_eq!(
        names,
        [
            "stock_restocked",
            "stock_reserved",
            "stock_released",
            "stock_committed"
        ]
    );
}

#[test]
fn every_event_round_trips_through_the_store_encoding() {
    for event in all_events() {
        let (event_type, payload) = encode_event(&event);
        let decoded: InventoryEvent = decode_event(&event_type, &payload).unwrap();
        assert_eq!(decoded, event);
    }
}

#[test]
fn the_state_serializes_for_display() {
    let inventory = given::<Inventory>([restocked(10), reserved(order(7), 3)]);
    assert_eq!(
        serde_json::to_value(inventory.state()).unwrap(),
        json!({"on_hand": 10, "reserved": 3, "reservations": {order(7).to_string(): 3}})
    );
}

fn all_events() -> [InventoryEvent; 4] {
    [
        restocked(10),
        reserved(order(7), 3),
        released(order(7), 3),
        committed(order(8), 2),
    ]
}
