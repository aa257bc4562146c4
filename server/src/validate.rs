//! Field checks shared by every RPC, so each message names the field and the rule it broke.

use crate::error::OrdoError;

/// Longest id, type, sku or key Ordo accepts.
pub const MAX_NAME_LEN: usize = 128;

/// Stream ids, event types and event ids: 1..=128 characters from `[A-Za-z0-9._:-]`. The narrow
/// set keeps them safe as key parts, URL parts and log fields.
pub fn name(field: &str, value: &str) -> Result<(), OrdoError> {
    if value.is_empty() {
        return Err(OrdoError::invalid(format!("{field} is required")));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(OrdoError::invalid(format!(
            "{field} is {} characters; the limit is {MAX_NAME_LEN}",
            value.len()
        )));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(OrdoError::invalid(format!(
            "{field} contains {bad:?}; use only letters, digits and . _ : -"
        )));
    }
    Ok(())
}

/// Free text (customer ids, skus, reasons): non-empty when required, bounded, no control chars.
pub fn text(field: &str, value: &str, max: usize, required: bool) -> Result<(), OrdoError> {
    if required && value.trim().is_empty() {
        return Err(OrdoError::invalid(format!("{field} is required")));
    }
    if value.chars().count() > max {
        return Err(OrdoError::invalid(format!(
            "{field} is {} characters; the limit is {max}",
            value.chars().count()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(OrdoError::invalid(format!(
            "{field} contains control characters"
        )));
    }
    Ok(())
}

/// Idempotency keys are optional; when given they follow the `text` rules.
pub fn idempotency_key(value: &str) -> Result<(), OrdoError> {
    text("idempotency_key", value, MAX_NAME_LEN, false)
}
