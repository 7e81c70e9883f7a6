//! Authentication: who a request comes from.
//!
//! Bearer tokens only, as a cluster's kubeconfig and in-cluster clients use them:
//! - the admin token ([`crate::FakeApiServer::admin_token`]) is the user `kubernetes-admin` in
//!   the group `system:masters`, which RBAC never restricts (as on a kind cluster);
//! - service account tokens come from the TokenRequest API (`kubectl create token SA`,
//!   `POST .../serviceaccounts/<name>/token`) or [`crate::FakeApiServer::service_account_token`].
//!   They name the account's uid, so deleting the ServiceAccount revokes them.
//!
//! `Impersonate-User` / `Impersonate-Group` / `Impersonate-Uid` headers work for users allowed
//! to `impersonate` (so `kubectl auth can-i --as=system:serviceaccount:ns:name` works).
//!
//! Simplification: tokens are opaque random strings, not JWTs, and nothing else (client
//! certificates, OIDC, webhooks) authenticates. A request without a token is refused with 401
//! when the server requires authentication; otherwise (the in-process default, for tests that
//! use [`crate::FakeApiServer::client`]) it is the admin.

use std::collections::HashMap;

use axum::http::HeaderMap;

use crate::error::ApiError;

/// The admin user of the dev API server (kind calls its admin the same).
pub const ADMIN_USER: &str = "kubernetes-admin";
/// RBAC never restricts this group, as on a real cluster.
pub const MASTERS_GROUP: &str = "system:masters";
pub(crate) const AUTHENTICATED: &str = "system:authenticated";

/// An authenticated user: what RBAC subjects are matched against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// `kubernetes-admin`, or `system:serviceaccount:<namespace>:<name>`.
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

impl User {
    pub(crate) fn admin() -> Self {
        User {
            name: ADMIN_USER.into(),
            uid: String::new(),
            groups: vec!["kubeadm:cluster-admins".into(), MASTERS_GROUP.into(), AUTHENTICATED.into()],
        }
    }

    pub(crate) fn service_account(namespace: &str, name: &str, uid: &str) -> Self {
        User {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            uid: uid.to_string(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                AUTHENTICATED.into(),
            ],
        }
    }

    /// Member of `system:masters`: every request is allowed.
    pub fn is_superuser(&self) -> bool {
        self.groups.iter().any(|g| g == MASTERS_GROUP)
    }

    /// `(namespace, name)` for a service account user.
    pub fn service_account_parts(&self) -> Option<(&str, &str)> {
        let rest = self.name.strip_prefix("system:serviceaccount:")?;
        rest.split_once(':')
    }
}

/// A token issued for a ServiceAccount.
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub expires: chrono::DateTime<chrono::Utc>,
}

/// The tokens the server knows.
#[derive(Debug, Clone)]
pub(crate) struct Tokens {
    pub admin: String,
    pub issued: HashMap<String, Issued>,
}

impl Tokens {
    pub(crate) fn new() -> Self {
        Tokens { admin: new_token("admin"), issued: HashMap::new() }
    }

    /// A new token for a ServiceAccount (its uid binds it), and when it expires.
    pub(crate) fn issue(&mut self, namespace: &str, name: &str, uid: &str, seconds: i64) -> (String, Issued) {
        let issued = Issued {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            expires: chrono::Utc::now() + chrono::Duration::seconds(seconds),
        };
        let token = new_token("sa");
        self.issued.insert(token.clone(), issued.clone());
        (token, issued)
    }
}

fn new_token(kind: &str) -> String {
    format!("kubefake-{kind}.{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

pub(crate) fn unauthorized() -> ApiError {
    ApiError::new(401, "Unauthorized", "Unauthorized")
}

/// The bearer token of a request, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// What the impersonation headers ask for, if anything.
pub(crate) struct Impersonation {
    pub user: String,
    pub groups: Vec<String>,
    pub uid: Option<String>,
}

pub(crate) fn impersonation(headers: &HeaderMap) -> Option<Impersonation> {
    let user = headers.get("impersonate-user")?.to_str().ok()?.to_string();
    let groups =
        headers.get_all("impersonate-group").iter().filter_map(|v| v.to_str().ok()).map(String::from).collect();
    let uid = headers.get("impersonate-uid").and_then(|v| v.to_str().ok()).map(String::from);
    Some(Impersonation { user, groups, uid })
}

impl Impersonation {
    /// The user to act as: a service account user name gets its groups, as on a real server.
    pub(crate) fn as_user(&self) -> User {
        let mut groups = self.groups.clone();
        if let Some(rest) = self.user.strip_prefix("system:serviceaccount:")
            && let Some((ns, _)) = rest.split_once(':')
            && groups.is_empty()
        {
            groups = vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{ns}")];
        }
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.into());
        }
        User { name: self.user.clone(), uid: self.uid.clone().unwrap_or_default(), groups }
    }
}
