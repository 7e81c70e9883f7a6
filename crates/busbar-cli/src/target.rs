//! Which bus a command talks to, and connecting to it: the built-in bus's admin API, or
//! JetStream. `busbar dlq` and `busbar status` share these options.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use busbar::{bus_api::DeadLetter, credentials::ADMIN, transport::jetstream::JetStream};
use busbar_client::bus::{BusClient, BusError};
use clap::Args;

pub const DEFAULT_BUS_URL: &str = "http://127.0.0.1:4005";

/// Which bus, and how to talk to it. Given before or after the subcommand.
#[derive(Args, Debug)]
pub struct Target {
    /// The built-in bus.
    #[arg(long, value_name = "URL", global = true, default_value = DEFAULT_BUS_URL, env = "BUSBAR_BUS_URL")]
    pub bus_url: String,
    /// Use JetStream instead: the NATS server (with --bus).
    #[arg(long, value_name = "URL", global = true, requires = "bus")]
    pub nats_url: Option<String>,
    /// The ServiceBus's name (metadata.name), for --nats-url.
    #[arg(long, value_name = "NAME", global = true)]
    pub bus: Option<String>,
    /// Admin token for the built-in bus, sent as `Authorization: Bearer`. Default: the
    /// contents of <data-dir>/admin.token, when that file exists.
    #[arg(long, env = "BUSBAR_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Where `busbar up` keeps its data (and admin.token).
    #[arg(long, value_name = "DIR", default_value = ".busbar", global = true)]
    pub data_dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// A bus connected to.
pub enum Connected {
    Builtin(Builtin),
    JetStream(Box<JetStream>),
}

impl Target {
    /// Connects as the admin: to JetStream with --nats-url, else to the built-in bus.
    pub async fn connect(&self) -> Result<Connected> {
        let Some(url) = &self.nats_url else { return Ok(Connected::Builtin(Builtin::new(self)?)) };
        let bus = self.bus.as_deref().expect("clap requires --bus with --nats-url");
        // With the admin token (a NATS server configured by `busbar nats-auth` admits the
        // admin user with it; one without authorization ignores it).
        let js = match admin_token(self)?.0 {
            Some(token) => JetStream::connect_now_as(url, bus, ADMIN, &token).await,
            None => JetStream::connect_now(url, bus).await,
        };
        let js = js.map_err(|e| anyhow!("{e}; is NATS running there? Pass its address with --nats-url"))?;
        Ok(Connected::JetStream(Box::new(js)))
    }
}

/// The admin token from --token (or BUSBAR_TOKEN), else `<data-dir>/admin.token` if it
/// exists, with where it came from.
fn admin_token(t: &Target) -> Result<(Option<String>, String)> {
    let file = t.data_dir.join("admin.token");
    let (token, source) = match &t.token {
        Some(tok) => (Some(tok.trim().to_owned()), "--token".to_owned()),
        None => match std::fs::read_to_string(&file) {
            Ok(s) => (Some(s.trim().to_owned()), file.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, String::new()),
            Err(e) => return Err(anyhow!("cannot read the admin token {}: {e}", file.display())),
        },
    };
    Ok((token.filter(|t| !t.is_empty()), source))
}

/// The built-in bus's admin API, with the admin token and where it came from.
pub struct Builtin {
    pub bus: BusClient,
    has_token: bool,
    /// Where the token came from, for error messages.
    token_source: String,
}

impl Builtin {
    fn new(t: &Target) -> Result<Builtin> {
        let (token, token_source) = admin_token(t)?;
        Ok(Builtin { has_token: token.is_some(), bus: BusClient::new(&t.bus_url, token), token_source })
    }

    /// `e` as the user should read it: what went wrong and what to do.
    pub fn explain(&self, e: BusError) -> anyhow::Error {
        match e {
            BusError::Unreachable { .. } => anyhow!("{e} (is `busbar up` running? pass --bus-url)"),
            BusError::Refused { .. } => {
                let hint = if self.has_token {
                    format!("the token from {} is not the bus's admin token", self.token_source)
                } else {
                    "pass the admin token with --token or BUSBAR_TOKEN, or --data-dir where `busbar up` wrote admin.token"
                        .to_owned()
                };
                anyhow!("{e}; {hint}")
            }
            other => anyhow!("{other}"),
        }
    }

    /// A transport error from the bus, as the user should read it.
    pub fn explain_transport(&self, e: busbar_client::TransportError) -> anyhow::Error {
        match e {
            busbar_client::TransportError::Rejected { status: 401 | 403, .. } => {
                self.explain(BusError::Refused { status: 403, message: e.to_string() })
            }
            busbar_client::TransportError::Unavailable { .. } => {
                anyhow!("{e} (is `busbar up` running? pass --bus-url)")
            }
            other => anyhow!("{other}"),
        }
    }

    pub async fn dead_letters(&self, subscriber: Option<&str>, limit: u64) -> Result<Vec<DeadLetter>> {
        self.bus.dead_letters(subscriber, limit).await.map_err(|e| self.explain(e))
    }
}
