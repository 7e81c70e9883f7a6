fn main() -> std::process::ExitCode {
    busbar::service::main("moderation", moderation::run)
}
