//! The order shop on sagaflow: orders, inventory and accounts, the order fulfillment saga and
//! their read models, as one service.

use std::process::ExitCode;

/// mimalloc rather than the system allocator: the engine allocates many short-lived JSON
/// values and buffers across worker threads, where glibc's malloc spent about a seventh of
/// the machine's CPU in `bench saga`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    sagaflow::App::new("sagaflow", env!("CARGO_PKG_VERSION"))
        .install(sagaflow_projections::shop)
        .run_cli()
}
