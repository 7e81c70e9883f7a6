fn main() -> std::process::ExitCode {
    busbar::service::main("posts", posts::run)
}
