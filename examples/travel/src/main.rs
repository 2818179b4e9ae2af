//! `travel serve | migrate | replay | projections rebuild | bench`.

fn main() -> std::process::ExitCode {
    travel::app().run_cli()
}
