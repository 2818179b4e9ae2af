//! A travel-booking service built on sagaflow's public API alone: the [`trip::Trip`]
//! aggregate, whose `trip_requested` starts the [`booking`] saga, and the command line every
//! sagaflow application gets.

#![warn(missing_docs)]

pub mod booking;
pub mod trip;

use sagaflow::App;

/// The whole service.
pub fn app() -> App {
    App::new("travel", env!("CARGO_PKG_VERSION"))
        .participant::<trip::Trip>()
        .saga(booking::trip_booking())
}
