//! `fake-provider [ADDR]`: the fake payment provider of [`travel::provider`] on ADDR
//! (`127.0.0.1:9090` by default), to run the travel service against on one machine. Cards
//! whose token starts with `tok_declined` are declined.

use std::process::ExitCode;

use travel::provider::FakeProvider;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9090".into());
    match FakeProvider::start_on(&addr).await {
        Ok(provider) => {
            println!("fake payment provider at {}", provider.url());
            let _ = tokio::signal::ctrl_c().await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}
