fn main() -> std::process::ExitCode {
    busbar::service::main("users", users::run)
}
