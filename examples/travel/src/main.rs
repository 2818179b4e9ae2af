//! `travel serve | migrate | replay | projections rebuild | bench`: the command line every
//! sagaflow application gets.

use std::process::ExitCode;

use travel::payment::PAYMENT_URL_VAR;

fn main() -> ExitCode {
    // Serving runs the payment participant, which needs its provider.
    let serving = std::env::args().skip(1).any(|a| a == "serve");
    if serving && !std::env::var(PAYMENT_URL_VAR).is_ok_and(|u| !u.is_empty()) {
        eprintln!(
            "error: {PAYMENT_URL_VAR} is not set: set it to the payment provider's base URL \
             (for example http://127.0.0.1:9090) before `travel serve`"
        );
        return ExitCode::from(2);
    }
    travel::app().run_cli()
}
