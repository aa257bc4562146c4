//! Bearer tokens for tests: tokens files and authorised requests.

use std::path::Path;

use ordo_server::auth::{Scope, hash_token};
use tonic::Request;

/// One `[[token]]` entry of a test tokens file.
pub struct Tok<'a> {
    pub name: &'a str,
    pub secret: &'a str,
    pub scopes: Vec<Scope>,
    pub event_types: &'a [&'a str],
    pub streams: &'a [&'a str],
}

impl<'a> Tok<'a> {
    pub fn new(name: &'a str, secret: &'a str, scopes: &[Scope]) -> Self {
        Self {
            name,
            secret,
            scopes: scopes.to_vec(),
            event_types: &[],
            streams: &[],
        }
    }
}

/// Writes a tokens file with these entries.
pub fn write_tokens(path: &Path, tokens: &[Tok<'_>]) {
    let list = |items: &[&str]| {
        items
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut text = String::new();
    for t in tokens {
        let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
        text.push_str(&format!(
            "[[token]]\nname = {:?}\nsha256 = {:?}\nscopes = [{}]\nevent_types = [{}]\nstreams = [{}]\n\n",
            t.name,
            hash_token(t.secret),
            list(&scopes),
            list(t.event_types),
            list(t.streams),
        ));
    }
    std::fs::write(path, text).expect("write tokens file");
}

/// `message` with `authorization: Bearer <token>` metadata when a token is given.
pub fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("metadata"),
        );
    }
    request
}
