fn main() -> std::process::ExitCode {
    busbar::service::main("query", query::run)
}
