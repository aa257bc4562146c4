//! TLS and mTLS: the right CA is accepted and others refused, client certificates are required
//! with mTLS, and TLS and tokens work together.

use super::*;

async fn start_tls(pki: &Pki, dir: &Path, mutual: bool) -> TestServer {
    let tls = TlsConfig {
        cert: write_pem(dir, "server.pem", &pki.server_cert),
        key: write_pem(dir, "server.key", &pki.server_key),
        client_ca: mutual.then(|| write_pem(dir, "ca.pem", &pki.ca_pem)),
    };
    TestServer::start_with(move |cfg| cfg.tls = Some(tls)).await
}

/// One ReadEvents over TLS with the given trust root and client identity.
async fn tls_call(
    server: &TestServer,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<(), String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Channel::from_shared(format!("https://localhost:{}", server.addr.port()))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    EventServiceClient::new(channel)
        .read_events(ReadEventsRequest::default())
        .await
        .map(drop)
        .map_err(|e| format!("call: {e}"))
}

#[tokio::test]
async fn tls_accepts_the_right_ca_and_refuses_others() {
    let pki = pki();
    let other = self::pki();
    let dir = tempfile::tempdir().expect("dir");
    let server = start_tls(&pki, dir.path(), false).await;
    tls_call(&server, &pki.ca_pem, None)
        .await
        .expect("trusted ca");
    let err = tls_call(&server, &other.ca_pem, None)
        .await
        .expect_err("untrusted server cert");
    eprintln!("wrong ca: {err}");
    // Plaintext against the TLS port fails too.
    let plain = Channel::from_shared(server.url())
        .expect("url")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(channel) = plain {
        let res = tokio::time::timeout(
            Duration::from_secs(10),
            EventServiceClient::new(channel).read_events(ReadEventsRequest::default()),
        )
        .await;
        assert!(!matches!(res, Ok(Ok(_))), "plaintext call succeeded");
    }
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_ca() {
    let pki = pki();
    let other = self::pki();
    let dir = tempfile::tempdir().expect("dir");
    let server = start_tls(&pki, dir.path(), true).await;
    tls_call(
        &server,
        &pki.ca_pem,
        Some((&pki.client_cert, &pki.client_key)),
    )
    .await
    .expect("client cert from the ca");
    let err = tls_call(&server, &pki.ca_pem, None)
        .await
        .expect_err("no client cert");
    eprintln!("no client cert: {err}");
    let err = tls_call(
        &server,
        &pki.ca_pem,
        Some((&other.client_cert, &other.client_key)),
    )
    .await
    .expect_err("client cert from another ca");
    eprintln!("foreign client cert: {err}");
}

#[tokio::test]
async fn tls_and_tokens_together() {
    let pki = pki();
    let dir = tempfile::tempdir().expect("dir");
    let tokens = dir.path().join("tokens.toml");
    write_tokens(&tokens, &[Tok::new("admin", ADMIN, &Scope::ALL)]);
    let tls = TlsConfig {
        cert: write_pem(dir.path(), "server.pem", &pki.server_cert),
        key: write_pem(dir.path(), "server.key", &pki.server_key),
        client_ca: None,
    };
    let server = TestServer::start_with(move |cfg| {
        cfg.tls = Some(tls);
        cfg.auth.tokens_file = Some(tokens);
    })
    .await;
    let channel = Channel::from_shared(format!("https://localhost:{}", server.addr.port()))
        .expect("url")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&pki.ca_pem))
                .domain_name("localhost"),
        )
        .expect("tls")
        .connect()
        .await
        .expect("connect");
    let mut events = EventServiceClient::new(channel);
    let err = events
        .read_events(ReadEventsRequest::default())
        .await
        .expect_err("token needed over tls too");
    assert_eq!(err.code(), Code::Unauthenticated);
    events
        .publish(with_token(publish_request("tls-1", "tls.ok"), Some(ADMIN)))
        .await
        .expect("publish over tls with token");
}
