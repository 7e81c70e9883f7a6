fn main() -> std::process::ExitCode {
    event_bus::main_with_args(std::env::args_os())
}
