fn main() -> std::process::ExitCode {
    busbar::service::main("comments", comments::run)
}
