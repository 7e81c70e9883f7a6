//! Who may do what on the bus. Pure: decisions from the bus key, the ServiceBus spec and
//! the request's bearer token.
//!
//! With a key (`--auth-key-file`), every API call but health and metrics needs a token
//! derived from it (see `busbar::credentials`):
//! - a service publishes only the types it lists under `publishes`, as itself (`source`);
//! - a service replays only the types it `subscribes` to;
//! - dead letters, redrive and subscriber state are for the admin token.
//!
//! Without a key the bus is open, as it was before credentials existed; it says so in its
//! log at start.

use std::collections::{BTreeMap, BTreeSet};

use axum::http::StatusCode;
use busbar::{
    credentials::{ADMIN, BusKey},
    spec::ServiceBusSpec,
    web::ApiError,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The bus has no key: anyone may do anything.
    Open,
    Admin,
    Service(String),
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Grant {
    publishes: BTreeSet<String>,
    subscribes: BTreeSet<String>,
}

/// The key and what each service of the current spec may publish and read.
#[derive(Debug, Clone, Default)]
pub struct Access {
    key: Option<BusKey>,
    grants: BTreeMap<String, Grant>,
}

impl Access {
    pub fn new(key: Option<BusKey>, spec: Option<&ServiceBusSpec>) -> Self {
        let mut a = Access { key, grants: BTreeMap::new() };
        if let Some(spec) = spec {
            a.set_spec(spec);
        }
        a
    }

    pub fn enforced(&self) -> bool {
        self.key.is_some()
    }

    /// The token the bus presents when it pushes to `subscriber`: the subscriber's own.
    pub fn push_token(&self, subscriber: &str) -> Option<String> {
        self.key.as_ref().map(|k| k.token(subscriber))
    }

    pub fn set_spec(&mut self, spec: &ServiceBusSpec) {
        self.grants = spec
            .services
            .iter()
            .map(|s| {
                let grant = Grant {
                    publishes: s.publishes.iter().cloned().collect(),
                    subscribes: s.subscribed_types().into_iter().map(str::to_owned).collect(),
                };
                (s.name.clone(), grant)
            })
            .collect();
    }

    /// Who is calling, from the `Authorization` header.
    pub fn caller(&self, authorization: Option<&str>) -> Result<Caller, ApiError> {
        let Some(key) = &self.key else { return Ok(Caller::Open) };
        let token = busbar::credentials::bearer(authorization).ok_or_else(|| {
            unauthorized("this bus requires a token: send `Authorization: Bearer <token>` (BUSBAR_TOKEN)")
        })?;
        match key.verify(token) {
            Some(who) if who == ADMIN => Ok(Caller::Admin),
            Some(who) => Ok(Caller::Service(who)),
            None => Err(unauthorized("the token was not issued by this bus's key")),
        }
    }

    fn grant(&self, service: &str) -> Result<&Grant, ApiError> {
        self.grants.get(service).ok_or_else(|| {
            forbidden(format!("service `{service}` is not in this bus's ServiceBus spec; add it there first"))
        })
    }

    /// Whether `caller` may record a dead letter for `subscriber`, of an event of type `ty`:
    /// a service only its own, of a type it subscribes to.
    pub fn may_dead_letter(&self, caller: &Caller, subscriber: &str, ty: &str) -> Result<(), ApiError> {
        let Caller::Service(name) = caller else { return Ok(()) };
        if subscriber != name {
            return Err(forbidden(format!("`{name}` may record dead letters only as itself, not as `{subscriber}`")));
        }
        if !self.grant(name)?.subscribes.contains(ty) {
            return Err(forbidden(format!(
                "`{name}` does not subscribe to {ty}, so it has no such event to give up on"
            )));
        }
        Ok(())
    }

    /// Whether `caller` may publish an event of type `ty` from `source`.
    pub fn may_publish(&self, caller: &Caller, ty: &str, source: &str) -> Result<(), ApiError> {
        let Caller::Service(name) = caller else { return Ok(()) };
        if source != name {
            return Err(forbidden(format!(
                "`{name}` may publish only as itself, but the event's source is `{source}`"
            )));
        }
        let grant = self.grant(name)?;
        if !grant.publishes.contains(ty) {
            return Err(forbidden(format!(
                "`{name}` may not publish {ty}: its `publishes` in the ServiceBus spec lists {}",
                list(&grant.publishes)
            )));
        }
        Ok(())
    }

    /// The types `caller` reads when it asks for `requested` (empty: all it may read):
    /// never an empty list; `None` means every type.
    pub fn readable(&self, caller: &Caller, requested: &[String]) -> Result<Option<Vec<String>>, ApiError> {
        let Caller::Service(name) = caller else {
            return Ok((!requested.is_empty()).then(|| requested.to_vec()));
        };
        let grant = self.grant(name)?;
        if grant.subscribes.is_empty() {
            return Err(forbidden(format!(
                "`{name}` subscribes to nothing in the ServiceBus spec, so it may read nothing"
            )));
        }
        if requested.is_empty() {
            return Ok(Some(grant.subscribes.iter().cloned().collect()));
        }
        if let Some(t) = requested.iter().find(|t| !grant.subscribes.contains(*t)) {
            return Err(forbidden(format!(
                "`{name}` may not read {t}: its `subscribes` in the ServiceBus spec lists {}",
                list(&grant.subscribes)
            )));
        }
        Ok(Some(requested.to_vec()))
    }

    pub fn admin_only(&self, caller: &Caller, what: &str) -> Result<(), ApiError> {
        match caller {
            Caller::Open | Caller::Admin => Ok(()),
            Caller::Service(name) => Err(forbidden(format!("{what} needs the admin token; `{name}` is a service"))),
        }
    }
}

fn list(types: &BTreeSet<String>) -> String {
    if types.is_empty() { "nothing".into() } else { types.iter().cloned().collect::<Vec<_>>().join(", ") }
}

fn unauthorized(msg: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, msg)
}

fn forbidden(msg: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> (BusKey, Access) {
        let spec = busbar::spec::parse_manifest(include_str!("../../../k8s/base/servicebus.yaml")).unwrap().spec;
        let key = BusKey::generate();
        (key.clone(), Access::new(Some(key), Some(&spec)))
    }

    fn status(r: Result<impl std::fmt::Debug, ApiError>) -> u16 {
        use axum::response::IntoResponse;
        r.map(|_| 200).unwrap_or_else(|e| e.into_response().status().as_u16())
    }

    #[test]
    fn tokens_identify_callers_and_others_are_refused() {
        let (key, a) = access();
        assert_eq!(a.caller(Some(&format!("Bearer {}", key.token("posts")))).unwrap(), Caller::Service("posts".into()));
        assert_eq!(a.caller(Some(&format!("Bearer {}", key.token(ADMIN)))).unwrap(), Caller::Admin);
        assert_eq!(status(a.caller(None)), 401);
        assert_eq!(status(a.caller(Some("Bearer nonsense"))), 401);
        assert_eq!(status(a.caller(Some(&format!("Bearer {}", BusKey::generate().token("posts"))))), 401);
        assert_eq!(Access::new(None, None).caller(None).unwrap(), Caller::Open);
    }

    #[test]
    fn services_publish_and_read_only_what_the_spec_lists() {
        let (_, a) = access();
        let posts = Caller::Service("posts".into());
        let query = Caller::Service("query".into());
        assert_eq!(status(a.may_publish(&posts, "PostCreated", "posts")), 200);
        let e = a.may_publish(&posts, "CommentModerated", "posts").unwrap_err();
        assert!(e.message.contains("may not publish CommentModerated") && e.message.contains("PostCreated"));
        assert_eq!(status(a.may_publish(&posts, "PostCreated", "comments")), 403, "spoofed source");
        assert_eq!(status(a.may_publish(&query, "PostCreated", "query")), 403);
        assert_eq!(status(a.may_publish(&Caller::Service("billing".into()), "PostCreated", "billing")), 403);
        assert_eq!(status(a.may_publish(&Caller::Admin, "Anything", "x")), 200);

        assert_eq!(
            a.readable(&query, &[]).unwrap().unwrap(),
            ["CommentCreated", "CommentUpdated", "PostCreated"].map(String::from)
        );
        assert_eq!(status(a.readable(&query, &["CommentModerated".into()])), 403);
        assert_eq!(status(a.readable(&posts, &[])), 403, "posts subscribes to nothing");
        assert_eq!(a.readable(&Caller::Admin, &[]).unwrap(), None);
        assert_eq!(status(a.admin_only(&posts, "dead letters")), 403);
        assert_eq!(status(a.admin_only(&Caller::Admin, "dead letters")), 200);
    }
}
