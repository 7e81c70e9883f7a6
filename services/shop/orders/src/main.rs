fn main() -> std::process::ExitCode {
    busbar::service::main("orders", orders::run)
}
