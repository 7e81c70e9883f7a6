//! The request log: every request the fake served, for assertions such as "only the leader
//! writes" or "reconciling twice writes nothing the second time".

/// One served request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Kubernetes verb: `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection` (or `discovery` for discovery and version requests).
    pub verb: String,
    /// Request path (without query).
    pub path: String,
    /// API group (empty for core).
    pub group: String,
    /// Resource (plural), empty for discovery.
    pub resource: String,
    /// `status` for the status subresource.
    pub subresource: Option<String>,
    /// Namespace from the path.
    pub namespace: Option<String>,
    /// Object name from the path.
    pub name: Option<String>,
    /// The `fieldManager` query parameter, as sent.
    pub field_manager: Option<String>,
    /// The `User-Agent` header, as sent.
    pub user_agent: Option<String>,
    /// For PATCH: `merge`, `json`, `strategic` or `apply`.
    pub patch_type: Option<String>,
    /// `dryRun=All` was requested.
    pub dry_run: bool,
    /// The HTTP status code answered (200 for watches, whose errors arrive as events).
    pub code: u16,
    /// The user RBAC judged the request as (`system:serviceaccount:ns:name`); `None` for the
    /// admin and for unauthenticated requests.
    pub user: Option<String>,
}

impl RequestRecord {
    /// Whether the verb writes (create, update, patch, delete, deletecollection).
    pub fn is_write(&self) -> bool {
        matches!(self.verb.as_str(), "create" | "update" | "patch" | "delete" | "deletecollection")
    }

    /// The field manager the write is attributed to: the `fieldManager` parameter, or else
    /// the User-Agent up to its first `/` (as the real server does), or else `unknown`.
    pub fn manager(&self) -> String {
        effective_manager(self.field_manager.as_deref(), self.user_agent.as_deref())
    }
}

pub(crate) fn effective_manager(field_manager: Option<&str>, user_agent: Option<&str>) -> String {
    if let Some(m) = field_manager.filter(|m| !m.is_empty()) {
        return m.to_string();
    }
    match user_agent.and_then(|ua| ua.split('/').next()).filter(|p| !p.is_empty()) {
        Some(prefix) => prefix.to_string(),
        None => "unknown".to_string(),
    }
}
