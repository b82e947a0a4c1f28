//! Placeholder: being implemented (issue 4).

use super::auth::AuthResult;
use super::{Parsed, PayloadError, Request};
use crate::config::Secret;

/// Gitea or Forgejo (they differ in header names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Gitea.
    Gitea,
    /// Forgejo.
    Forgejo,
}

/// Checks the sender's authentication.
pub fn verify(_secret: &Secret, _request: &Request<'_>, _flavor: Flavor) -> AuthResult {
    Err("this source is not implemented yet".to_owned())
}

/// Normalises the webhook.
pub fn parse(_request: &Request<'_>, _flavor: Flavor) -> Result<Parsed, PayloadError> {
    Err(PayloadError::body("this source is not implemented yet"))
}

/// The sender's delivery id.
pub fn delivery_id(_request: &Request<'_>, _flavor: Flavor) -> Option<String> {
    None
}
