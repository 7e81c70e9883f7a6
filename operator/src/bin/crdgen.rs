//! Prints the operator's generated manifests:
//! - `crdgen` (or `crdgen crd`): the ServiceBus CustomResourceDefinition;
//! - `crdgen rbac [NAMESPACE]`: the operator's ClusterRole, Role and bindings
//!   (namespace default `busbar-system`);
//! - `crdgen rbac-rules`: only those rules, for the Helm chart.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] | ["crd"] => print!("{}", busbar_operator::crd::crd_yaml()),
        ["rbac"] => print!("{}", busbar_operator::rbac::manifest_yaml("busbar-system")),
        ["rbac", ns] => print!("{}", busbar_operator::rbac::manifest_yaml(ns)),
        ["rbac-rules"] => print!("{}", busbar_operator::rbac::rules_yaml()),
        _ => {
            eprintln!("usage: crdgen [crd | rbac [NAMESPACE] | rbac-rules]");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
