//! A travel-booking service built on sagaflow's public API alone, the worked example of
//! `docs/guide.md`:
//!
//! - [`trip::Trip`], the starter aggregate: its `trip_requested` starts the [`booking`] saga,
//!   its `trip_cancelled` aborts it;
//! - [`flight::Flight`] and [`hotel::Hotel`], saga participants that hold seats and rooms;
//! - [`payment::PaymentClient`], an outside-world participant that charges the card at a
//!   payment provider over HTTP ([`provider`] is a fake one, for tests and local runs);
//! - [`trips`], the read model of trips by status, with its routes and migration.

#![warn(missing_docs)]

pub mod booking;
pub mod flight;
pub mod hotel;
pub mod payment;
pub mod provider;
pub mod trip;
pub mod trips;

use sagaflow::App;
use sqlx::migrate::Migrator;

/// The service's own tables (`migrations/`), applied with the engine's in one history.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The whole service, paying through the provider named by
/// [`payment::PAYMENT_URL_VAR`].
pub fn app() -> App {
    app_with(payment::PaymentClient::from_env())
}

/// The whole service, paying through `payment`.
pub fn app_with(payment: payment::PaymentClient) -> App {
    App::new("travel", env!("CARGO_PKG_VERSION"))
        .participant::<trip::Trip>()
        .participant::<flight::Flight>()
        .participant::<hotel::Hotel>()
        .external(payment)
        .saga(booking::trip_booking())
        .projection(trips::TripsProjection)
        .migrations("travel", &MIGRATOR)
        .routes(|services| trips::routes(services.query()))
}
