//! `travel serve | migrate | replay | projections rebuild | bench`: the command line every
//! sagaflow application gets.

use std::process::ExitCode;

use travel::payment::PAYMENT_URL_VAR;

fn main() -> ExitCode {
    // Serving runs the payment participant, which needs its provider.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let serving = args.iter().any(|a| a == "serve") && !args.iter().any(|a| a == "--help");
    if serving {
        let url = std::env::var(PAYMENT_URL_VAR).unwrap_or_default();
        if url.is_empty() {
            eprintln!(
                "error: {PAYMENT_URL_VAR} is not set: set it to the payment provider's base URL \
                 (for example http://127.0.0.1:9090) before `travel serve`"
            );
            return ExitCode::from(2);
        }
        if let Err(e) = reqwest::Url::parse(&url) {
            eprintln!("error: {PAYMENT_URL_VAR}={url:?} is not a URL: {e}");
            return ExitCode::from(2);
        }
    }
    travel::app().run_cli()
}
