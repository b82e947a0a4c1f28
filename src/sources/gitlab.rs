//! Placeholder: being implemented (issue 4).

use super::auth::AuthResult;
use super::{Parsed, PayloadError, Request};
use crate::config::Secret;

/// Checks the sender's authentication.
pub fn verify(_secret: &Secret, _request: &Request<'_>) -> AuthResult {
    Err("this source is not implemented yet".to_owned())
}

/// Normalises the webhook.
pub fn parse(_request: &Request<'_>) -> Result<Parsed, PayloadError> {
    Err(PayloadError::body("this source is not implemented yet"))
}

/// The sender's delivery id.
pub fn delivery_id(_request: &Request<'_>) -> Option<String> {
    None
}
