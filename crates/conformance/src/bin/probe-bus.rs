//! The built-in event bus, as a binary of this package: an integration test can start
//! only its own package's binaries (`CARGO_BIN_EXE_*`).

fn main() -> std::process::ExitCode {
    event_bus::main_with_args(std::env::args_os())
}
