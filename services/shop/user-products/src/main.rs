fn main() -> std::process::ExitCode {
    busbar::service::main("user-products", user_products::run)
}
