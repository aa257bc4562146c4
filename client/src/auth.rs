//! Attaches credentials to every call. Kept as an interceptor so the token is set in one place
//! and both services (and every future one) carry it.

use tonic::{Request, Status, metadata::MetadataValue, service::Interceptor};

use crate::error::ClientError;

/// Adds `authorization: Bearer <token>` to each request when a token is configured.
#[derive(Clone, Default)]
pub struct AuthInterceptor {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl AuthInterceptor {
    /// Validates the token once, so a bad token fails at build time rather than on every call.
    pub fn new(token: Option<&str>) -> Result<Self, ClientError> {
        let header = match token {
            None => None,
            Some(token) => {
                let mut value: MetadataValue<_> =
                    format!("Bearer {token}").parse().map_err(|_| {
                        ClientError::Config(
                            "the bearer token must be printable ASCII without line breaks".into(),
                        )
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Self { header })
    }
}

impl std::fmt::Debug for AuthInterceptor {
    // Never print the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthInterceptor")
            .field("token", &self.header.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_becomes_a_bearer_header_and_no_token_adds_nothing()
    -> Result<(), Box<dyn std::error::Error>> {
        let mut with = AuthInterceptor::new(Some("s3cret"))?;
        let request = with.call(Request::new(()))?;
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        assert_eq!(header, Some("Bearer s3cret"));
        assert!(
            !format!("{with:?}").contains("s3cret"),
            "the token is never printed"
        );

        let mut without = AuthInterceptor::new(None)?;
        let request = without.call(Request::new(()))?;
        assert!(request.metadata().get("authorization").is_none());
        Ok(())
    }
}
