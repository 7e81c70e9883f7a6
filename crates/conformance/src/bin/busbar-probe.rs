//! The conformance probe service; see `busbar_conformance::probe`.

fn main() -> std::process::ExitCode {
    busbar::service::main("busbar-probe", busbar_conformance::probe::run)
}
