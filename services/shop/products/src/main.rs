fn main() -> std::process::ExitCode {
    busbar::service::main("products", products::run)
}
