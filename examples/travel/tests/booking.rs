//! The travel service end to end, as its own binary over HTTP, on both transports, paying
//! through a fake provider started for real: a trip confirmed and charged once; a provider
//! slower than the call's timeout (charged once all the same); no rooms (the seats released);
//! a declined card (the rooms released, then the seats); a trip cancelled while its card is
//! charged (refunded, released); time travel on a flight; the read model's tags and rebuild;
//! the service's own OpenAPI document and console; and a provider down for seconds under a
//! hundred trips: every trip confirmed, the breaker opened, each charged once.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgPool;

use common::{eventually, serve, trip, Service, Transport};
use travel::booking::saga_id_of;
use travel::provider::FakeProvider;

/// Schedules flight `id` with `seats` and opens hotel `id` with `rooms`.
async fn supply(service: &Service, flight: &str, seats: u32, hotel: &str, rooms: u32) {
    service
        .accepted("flight", flight, "schedule", json!({"seats": seats}))
        .await;
    service
        .accepted("hotel", hotel, "open", json!({"rooms": rooms}))
        .await;
}

/// The held seats or rooms of a flight or hotel stream, by trip.
async fn held(service: &Service, stream_id: &str) -> BTreeMap<String, u64> {
    let state = service.state(stream_id, None).await;
    serde_json::from_value(state["state"]["held"].clone()).unwrap()
}

fn charges_of(provider: &FakeProvider, trip_id: &str) -> usize {
    provider
        .charges()
        .iter()
        .filter(|c| c.reference == trip_id)
        .count()
}

/// The position of the first timeline entry of `event_type`.
fn position(timeline: &[(String, String)], event_type: &str) -> usize {
    timeline
        .iter()
        .position(|(t, _)| t == event_type)
        .unwrap_or_else(|| panic!("no {event_type} in {timeline:?}"))
}

async fn bookings(pool: PgPool, transport: Transport) {
    let provider = FakeProvider::start().await;
    let service = serve(&pool, transport, provider.url()).await;
    supply(&service, "TP101", 10, "lisbon-palace", 10).await;
    supply(&service, "TP202", 10, "tiny-inn", 1).await;

    // Happy path: seats and rooms held, the card charged once, the trip confirmed.
    service
        .accepted(
            "trip",
            "t-happy",
            "request",
            trip("TP101", 2, "lisbon-palace", 1, "tok_visa"),
        )
        .await;
    let view = service.trip_ends("t-happy", "confirmed").await;
    assert_eq!(view["flight"], "TP101");
    assert_eq!(charges_of(&provider, "t-happy"), 1);
    let charge = provider
        .charges()
        .into_iter()
        .find(|c| c.reference == "t-happy")
        .unwrap();
    assert_eq!(charge.amount_cents, 48_000);
    assert_eq!(charge.requests, 1, "one call per idempotency key");
    assert_eq!(held(&service, "flight-TP101").await["t-happy"], 2);
    assert_eq!(held(&service, "hotel-lisbon-palace").await["t-happy"], 1);
    // The saga's timeline joins the four participants' events.
    let timeline = service.timeline(saga_id_of("t-happy")).await;
    for stream in [
        "trip-t-happy",
        "flight-TP101",
        "hotel-lisbon-palace",
        "payment-t-happy",
    ] {
        assert!(
            timeline.iter().any(|(_, s)| s == stream),
            "{stream} in the timeline: {timeline:?}"
        );
    }
    let payment = service.state("payment-t-happy", None).await;
    assert_eq!(
        payment["state"]["charge"]["charge_id"],
        charge.charge_id.as_str()
    );

    // A provider slower than the call's timeout: the charge it made is answered too late, the
    // call is made again with the same idempotency key, and the card is charged once.
    provider.set_delay(Duration::from_millis(1500));
    service
        .accepted(
            "trip",
            "t-slow",
            "request",
            trip("TP101", 1, "lisbon-palace", 1, "tok_visa"),
        )
        .await;
    eventually(Duration::from_secs(20), "the slow charge made", || async {
        charges_of(&provider, "t-slow") == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    provider.set_delay(Duration::ZERO);
    service.trip_ends("t-slow", "confirmed").await;
    let charge = provider
        .charges()
        .into_iter()
        .find(|c| c.reference == "t-slow")
        .unwrap();
    assert_eq!(charges_of(&provider, "t-slow"), 1);
    assert!(charge.requests >= 2, "asked again with its key: {charge:?}");

    // No rooms: the seats are released, the trip rejected, nothing charged.
    service
        .accepted(
            "trip",
            "t-norooms",
            "request",
            trip("TP202", 1, "tiny-inn", 2, "tok_visa"),
        )
        .await;
    let view = service.trip_ends("t-norooms", "rejected").await;
    assert_eq!(view["reason"], "no_rooms");
    assert!(!held(&service, "flight-TP202")
        .await
        .contains_key("t-norooms"));
    assert_eq!(charges_of(&provider, "t-norooms"), 0);
    let timeline = service.timeline(saga_id_of("t-norooms")).await;
    assert!(position(&timeline, "seats_held") < position(&timeline, "seats_released"));

    // Declined card: the rooms are released, then the seats; the trip is rejected.
    service
        .accepted(
            "trip",
            "t-declined",
            "request",
            trip(
                "TP101",
                3,
                "lisbon-palace",
                2,
                "tok_declined_insufficient_funds",
            ),
        )
        .await;
    let view = service.trip_ends("t-declined", "rejected").await;
    assert_eq!(view["reason"], "card_declined");
    assert!(!held(&service, "flight-TP101")
        .await
        .contains_key("t-declined"));
    assert!(!held(&service, "hotel-lisbon-palace")
        .await
        .contains_key("t-declined"));
    assert_eq!(charges_of(&provider, "t-declined"), 0);
    let timeline = service.timeline(saga_id_of("t-declined")).await;
    let rooms_released = position(&timeline, "rooms_released");
    let seats_released = position(&timeline, "seats_released");
    assert!(
        position(&timeline, "rooms_held") < rooms_released && rooms_released < seats_released,
        "rooms released, then seats: {timeline:?}"
    );
    let (_, saga) = service
        .get(&format!("/sagas/{}", saga_id_of("t-declined")))
        .await;
    assert_eq!(saga["state"], "compensated", "{saga}");

    // Cancelled while the provider takes its time to charge: the charge is refunded, the
    // rooms and seats released, and the trip stays cancelled (not rejected).
    provider.set_delay(Duration::from_millis(1500));
    let before = provider.requests();
    service
        .accepted(
            "trip",
            "t-cancel",
            "request",
            trip("TP101", 1, "lisbon-palace", 1, "tok_visa"),
        )
        .await;
    eventually(Duration::from_secs(20), "the charge under way", || async {
        provider.requests() > before
    })
    .await;
    service
        .accepted(
            "trip",
            "t-cancel",
            "cancel",
            json!({"reason": "changed my mind"}),
        )
        .await;
    provider.set_delay(Duration::ZERO);
    let saga = format!("/sagas/{}", saga_id_of("t-cancel"));
    eventually(
        Duration::from_secs(40),
        "the cancelled trip's saga compensated",
        || async { service.get(&saga).await.1["state"] == "compensated" },
    )
    .await;
    assert_eq!(
        service.trip_ends("t-cancel", "cancelled").await["reason"],
        "changed my mind"
    );
    let charge = provider
        .charges()
        .into_iter()
        .find(|c| c.reference == "t-cancel")
        .unwrap();
    let refunds: Vec<_> = provider
        .refunds()
        .into_iter()
        .filter(|r| r.charge_id == charge.charge_id)
        .collect();
    assert_eq!(refunds.len(), 1, "the charge refunded once");
    assert!(!held(&service, "flight-TP101")
        .await
        .contains_key("t-cancel"));
    assert!(!held(&service, "hotel-lisbon-palace")
        .await
        .contains_key("t-cancel"));
    let timeline = service.timeline(saga_id_of("t-cancel")).await;
    let refunded = position(&timeline, "charge_refunded");
    assert!(
        refunded < position(&timeline, "rooms_released")
            && position(&timeline, "rooms_released") < position(&timeline, "seats_released"),
        "refund, rooms, seats: {timeline:?}"
    );
    // A confirmed trip is not cancelled.
    let (status, body) = service
        .command("trip", "t-happy", "cancel", json!({"reason": null}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("wrong_status"))
    );

    // Time travel: the flight as it was before and after the happy trip's hold.
    let at1 = service.state("flight-TP101", Some(1)).await;
    assert_eq!(at1["state"]["seats"], 10);
    assert_eq!(at1["state"]["held"], json!({}));
    let at2 = service.state("flight-TP101", Some(2)).await;
    assert_eq!(at2["state"]["held"], json!({"t-happy": 2}));

    // The read model by status.
    let (_, rejected) = service.get("/trips?status=rejected").await;
    let ids: Vec<&str> = rejected["trips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["trip_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["t-declined", "t-norooms"]);
    let (status, body) = service.get("/trips?status=lost").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );

    // A trip's view carries its stream's version as its tag, and answers 304 to it.
    let r = service
        .client
        .get(service.url("/trips/t-happy"))
        .send()
        .await
        .unwrap();
    let tag = r.headers()["etag"].to_str().unwrap().to_owned();
    let version = r.json::<serde_json::Value>().await.unwrap()["version"].clone();
    assert_eq!(tag, format!("\"trip-t-happy@{version}\""));
    let r = service
        .client
        .get(service.url("/trips/t-happy"))
        .header("if-none-match", &tag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    // Rebuilt from the store while trips keep arriving, the read model holds the same trips,
    // and every trip booked during the rebuild.
    let (_, before) = service.get("/trips?limit=500").await;
    assert_eq!(before["trips"].as_array().unwrap().len(), 5);
    supply(&service, "TP303", 100, "busy-hotel", 100).await;
    const BUSY: usize = 20;
    let rebuild = async {
        let r = service
            .client
            .post(service.url("/admin/projections/trips/rebuild"))
            .bearer_auth(common::TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        eventually(Duration::from_secs(30), "the trips rebuilt", || async {
            let list = service.admin("/admin/projections").await;
            list["projections"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "trips" && p["state"] == "idle")
        })
        .await;
    };
    let traffic = async {
        for i in 0..BUSY {
            service
                .accepted(
                    "trip",
                    &format!("t-busy-{i:02}"),
                    "request",
                    trip("TP303", 1, "busy-hotel", 1, "tok_visa"),
                )
                .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::join!(rebuild, traffic);
    for i in 0..BUSY {
        service
            .trip_ends(&format!("t-busy-{i:02}"), "confirmed")
            .await;
    }
    let (_, after) = service.get("/trips?limit=500").await;
    let after: Vec<serde_json::Value> = after["trips"].as_array().unwrap().clone();
    let kept: Vec<&serde_json::Value> = after
        .iter()
        .filter(|t| !t["trip_id"].as_str().unwrap().starts_with("t-busy-"))
        .collect();
    let was: Vec<&serde_json::Value> = before["trips"].as_array().unwrap().iter().collect();
    assert_eq!(kept, was, "the trips before the rebuild, unchanged");
    assert_eq!(after.len(), 5 + BUSY, "and every trip booked during it");

    // The OpenAPI document is the travel service's own, with its read model's routes.
    let (_, doc) = service.get("/openapi.json").await;
    assert_eq!(doc["info"]["title"], "travel");
    for path in [
        "/trips",
        "/trips/{trip_id}",
        "/commands/trip/{aggregate_id}",
        "/commands/flight/{aggregate_id}",
        "/commands/hotel/{aggregate_id}",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} in the document");
    }
    assert!(doc["paths"]
        .get("/commands/payment/{aggregate_id}")
        .is_none());
    assert!(doc["paths"].get("/orders").is_none());

    // The console finds the declined trip's saga by the trip's id.
    let found = service.admin("/admin/console/search?q=t-declined").await;
    assert_eq!(found["matches"][0]["kind"], "saga", "{found}");
    assert_eq!(
        found["matches"][0]["id"],
        saga_id_of("t-declined").to_string().as_str()
    );

    outage(&service, &provider).await;
    let mut service = service;
    crash_while_charging(&mut service, &provider).await;
}

/// kill -9 of the service while trips are being charged, then a restart: every trip ends
/// confirmed, the provider charged each trip once (a call cut off by the crash is made again
/// with the same key), and the seats and rooms held add up.
async fn crash_while_charging(service: &mut Service, provider: &FakeProvider) {
    const TRIPS: usize = 30;
    supply(service, "TP700", 1000, "harbour-hotel", 1000).await;
    provider.set_delay(Duration::from_millis(400));
    let before = provider.requests();
    let ids: Vec<String> = (0..TRIPS).map(|i| format!("t-crash-{i:03}")).collect();
    for id in &ids {
        service
            .accepted(
                "trip",
                id,
                "request",
                trip("TP700", 1, "harbour-hotel", 1, "tok_visa"),
            )
            .await;
    }
    eventually(Duration::from_secs(60), "charges under way", || async {
        provider.requests() >= before + 5
    })
    .await;
    service.crash_and_restart().await;
    provider.set_delay(Duration::ZERO);
    for id in &ids {
        service.trip_ends(id, "confirmed").await;
    }
    let charges = provider.charges();
    for id in &ids {
        assert_eq!(charges_of(provider, id), 1, "{id} charged once");
    }
    let repeated = charges
        .iter()
        .filter(|c| c.reference.starts_with("t-crash-") && c.requests > 1)
        .count();
    assert!(
        repeated >= 1,
        "a call the crash cut off was made again, with the same key"
    );
    let seats = held(service, "flight-TP700").await;
    let rooms = held(service, "hotel-harbour-hotel").await;
    for id in &ids {
        assert_eq!(seats.get(id), Some(&1), "{id}'s seat held once");
        assert_eq!(rooms.get(id), Some(&1), "{id}'s room held once");
    }
    assert_eq!(seats.values().sum::<u64>(), TRIPS as u64);
    assert_eq!(rooms.values().sum::<u64>(), TRIPS as u64);
}

/// The provider is down for 30 s while 200 trips are booked: every trip is confirmed (none
/// rejected because of the outage), the breaker opened, each trip charged exactly once.
async fn outage(service: &Service, provider: &FakeProvider) {
    const TRIPS: usize = 200;
    supply(service, "TP900", 1000, "grand-hotel", 1000).await;
    let requests_before = provider.requests();
    provider.down_for(Duration::from_secs(30));
    let started = Instant::now();
    let ids: Vec<String> = (0..TRIPS).map(|i| format!("t-outage-{i:03}")).collect();
    for id in &ids {
        service
            .accepted(
                "trip",
                id,
                "request",
                trip("TP900", 1, "grand-hotel", 1, "tok_visa"),
            )
            .await;
    }
    eventually(
        Duration::from_secs(180),
        "every trip of the outage ended",
        || async {
            let trips = outage_trips(service).await;
            trips.len() == TRIPS && trips.iter().all(|(_, status)| status != "requested")
        },
    )
    .await;
    let not_confirmed: Vec<_> = outage_trips(service)
        .await
        .into_iter()
        .filter(|(_, status)| status != "confirmed")
        .collect();
    assert!(
        not_confirmed.is_empty(),
        "no trip rejected because of the outage: {not_confirmed:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(29),
        "the trips waited for the provider"
    );
    assert!(provider.unavailable() > 0, "the provider turned calls away");
    let (_, readiness) = service.get("/readyz").await;
    assert!(
        readiness["checks"]["circuit_breakers"]["payment"].is_string(),
        "{readiness}"
    );
    let metrics = service.metrics().await;
    let opened = metric(
        &metrics,
        "sagaflow_circuit_breaker_opened_total{participant=\"payment\"}",
    );
    assert!(opened >= 1.0, "the breaker opened: {opened}");
    let short_circuited = metric(
        &metrics,
        "sagaflow_external_calls_total{outcome=\"short_circuited\",participant=\"payment\"}",
    );
    // While it was open, calls waited instead of hammering the provider.
    assert!(short_circuited >= 1.0, "calls waited for the breaker");
    let charges = provider.charges();
    for id in &ids {
        let mine: Vec<_> = charges.iter().filter(|c| &c.reference == id).collect();
        assert_eq!(mine.len(), 1, "{id} charged once: {mine:?}");
    }
    let mut keys: Vec<&str> = charges.iter().map(|c| c.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), charges.len(), "one charge per idempotency key");
    assert!(provider.requests() > requests_before + TRIPS);
}

/// The outage's trips in the read model, with their status.
async fn outage_trips(service: &Service) -> Vec<(String, String)> {
    let (_, page) = service.get("/trips?after=t-outage-&limit=500").await;
    page["trips"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["trip_id"].as_str().unwrap().starts_with("t-outage-"))
        .map(|t| {
            (
                t["trip_id"].as_str().unwrap().to_owned(),
                t["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The value of the series `series` (its name and labels as the text format writes them).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

mod postgres_transport {
    use super::*;

    #[sqlx::test(migrations = false)]
    async fn bookings_end_to_end(pool: PgPool) {
        bookings(pool, Transport::Postgres).await;
    }
}

mod kafka_transport {
    use super::*;

    #[sqlx::test(migrations = false)]
    async fn bookings_end_to_end(pool: PgPool) {
        bookings(pool, Transport::Kafka).await;
    }
}

/// `travel serve` without a payment provider, or with one that is not a URL, stops at once and
/// says what to set.
#[test]
fn serving_without_a_payment_provider_is_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_travel"))
        .args(["serve", "--http-addr", "127.0.0.1:0"])
        .env_remove("TRAVEL_PAYMENT_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TRAVEL_PAYMENT_URL is not set"), "{stderr}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_travel"))
        .args(["serve", "--http-addr", "127.0.0.1:0"])
        .env("TRAVEL_PAYMENT_URL", "payments.example")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a URL"), "{stderr}");
}
