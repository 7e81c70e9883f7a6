//! How `busbar up` starts each service on this machine: the local-run declaration, a file
//! beside the ServiceBus manifest (`busbar.local.yaml`) that the cluster never reads. The
//! manifest says what a service publishes and subscribes to and which port it serves; this
//! file says only what a laptop needs on top: the command that runs it, and optionally
//! extra environment and a different port.
//!
//! ```yaml
//! services:
//!   users:
//!     command: [users]                 # a program and its arguments
//!   billing:
//!     command: [./bin/billing, --verbose]
//!     env: {RUST_LOG: debug}
//!     port: 5100                       # overrides the manifest's port
//! ```
//!
//! A command's program with a `/` is a path relative to this file's directory; a bare
//! name is looked up next to `busbar`, then on PATH. A service the file does not name runs
//! the program named after its Deployment (by default its name), found the same way.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use busbar::spec::{ServiceBus, ServiceSpec};
use serde::Deserialize;

/// The declaration's file name, beside the manifest.
pub const FILE: &str = "busbar.local.yaml";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalRun {
    /// Where the file is: relative programs are resolved from here.
    pub dir: PathBuf,
    pub services: BTreeMap<String, LocalService>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalService {
    /// The program, then its arguments.
    #[serde(default)]
    pub command: Vec<String>,
    /// Added to the environment busbar gives the service (its wiring wins on a clash).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Overrides the manifest's `port` for this machine.
    pub port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    services: BTreeMap<String, LocalService>,
}

impl LocalRun {
    /// Parses a declaration's text; `dir` is the directory relative programs start from.
    pub fn parse(text: &str, dir: &Path) -> Result<LocalRun, String> {
        let file: File = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        for (name, s) in &file.services {
            if s.command.first().is_none_or(|p| p.trim().is_empty()) {
                return Err(format!("service {name}: `command` needs at least a program, e.g. command: [{name}]"));
            }
        }
        Ok(LocalRun { dir: dir.to_owned(), services: file.services })
    }

    /// The declaration at `explicit`, else `busbar.local.yaml` beside `manifest` if there is
    /// one, else none (every service runs its program named after it).
    pub fn load(manifest: &Path, explicit: Option<&Path>) -> Result<LocalRun, String> {
        let dir_of = |p: &Path| p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned();
        let path = match explicit {
            Some(p) => p.to_owned(),
            None => {
                let beside = dir_of(manifest).join(FILE);
                if !beside.is_file() {
                    return Ok(LocalRun { dir: dir_of(manifest), services: BTreeMap::new() });
                }
                beside
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        LocalRun::parse(&text, &dir_of(&path))
            .map_err(|e| format!("{} is not a local-run declaration: {e}", path.display()))
    }

    /// Names this declaration gives that the manifest has no service for (likely typos).
    pub fn unknown_services(&self, bus: &ServiceBus) -> Vec<String> {
        self.services.keys().filter(|n| !bus.spec.services.iter().any(|s| &s.name == *n)).cloned().collect()
    }

    pub fn service(&self, name: &str) -> Option<&LocalService> {
        self.services.get(name)
    }

    /// The program and arguments that run `s`: its declared command, else the program named
    /// after its Deployment. `find` looks a bare name up (next to busbar, then on PATH).
    pub fn command(
        &self,
        s: &ServiceSpec,
        find: impl Fn(&str) -> Option<PathBuf>,
    ) -> Result<(PathBuf, Vec<String>), String> {
        let (program, args, declared) = match self.services.get(&s.name) {
            Some(l) => (l.command[0].clone(), l.command[1..].to_vec(), true),
            None => (s.deployment.clone().unwrap_or_else(|| s.name.clone()), vec![], false),
        };
        let found = if program.contains('/') {
            let p = self.dir.join(&program);
            p.is_file().then_some(p)
        } else {
            find(&program)
        };
        match found {
            Some(path) => Ok((path, args)),
            None if program.contains('/') => Err(format!(
                "no program for service {}: {} does not exist (its command in {FILE} is relative to {})",
                s.name,
                self.dir.join(&program).display(),
                self.dir.display()
            )),
            None if declared => Err(format!(
                "no program for service {}: `{program}` (its command in {FILE}) is neither next to busbar nor on \
                 PATH; build it next to busbar (e.g. `cargo build -p {program}`, with --release for a release \
                 busbar) or give its path",
                s.name
            )),
            None => Err(format!(
                "no program for service {}: busbar up runs a program named `{program}` next to busbar or on PATH, \
                 or the command given for it in {FILE} beside the manifest; build it next to busbar (e.g. `cargo \
                 build -p {program}`, with --release for a release busbar) or declare its command",
                s.name
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use busbar::spec::parse_manifest;

    fn bus() -> ServiceBus {
        parse_manifest(
            "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec: {services: [{name: billing, port: 5000}, {name: mail, port: 5001, deployment: mailer}]}\n",
        )
        .unwrap()
    }

    #[test]
    fn a_declared_command_runs_with_its_arguments_and_relative_paths_start_at_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/billing"), "").unwrap();
        let local = LocalRun::parse(
            "services:\n  billing: {command: [./bin/billing, --fast], env: {A: b}, port: 6000}\n",
            dir.path(),
        )
        .unwrap();
        let (program, args) = local.command(&bus().spec.services[0], |_| None).unwrap();
        assert_eq!((program, args), (dir.path().join("./bin/billing"), vec!["--fast".to_owned()]));
        assert_eq!(local.service("billing").unwrap().port, Some(6000));
        assert!(local.unknown_services(&bus()).is_empty());
    }

    #[test]
    fn an_undeclared_service_runs_the_program_named_after_its_deployment() {
        let local = LocalRun::default();
        let find = |n: &str| (n == "mailer").then(|| PathBuf::from("/opt/mailer"));
        assert_eq!(local.command(&bus().spec.services[1], find).unwrap(), ("/opt/mailer".into(), vec![]));
        let e = local.command(&bus().spec.services[0], find).unwrap_err();
        assert!(e.contains("no program for service billing") && e.contains("`billing`"), "{e}");
    }

    #[test]
    fn mistakes_are_named() {
        let dir = Path::new("/nowhere");
        assert!(LocalRun::parse("services: {billing: {command: []}}", dir).unwrap_err().contains("at least a program"));
        assert!(LocalRun::parse("services: {billing: {comand: [x]}}", dir).unwrap_err().contains("comand"));
        let local = LocalRun::parse("services: {biling: {command: [x]}, billing: {command: [./x]}}", dir).unwrap();
        assert_eq!(local.unknown_services(&bus()), ["biling"]);
        let e = local.command(&bus().spec.services[0], |_| None).unwrap_err();
        assert!(e.contains("/nowhere/./x does not exist"), "{e}");
    }
}
