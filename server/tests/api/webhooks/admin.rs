//! The admin API: SSRF protection of webhook URLs and the status code of every bad input.

use super::*;

#[tokio::test]
async fn private_addresses_are_refused_without_the_allow_flag() {
    let server = TestServer::start().await;
    let mut hooks = hooks(&server).await;
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://10.0.0.7/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:9000/",
        "http://localhost:8080/hook",
    ] {
        let err = hooks
            .create_webhook(create_req(url, &["*"]))
            .await
            .expect_err(url);
        assert_eq!(err.code(), Code::InvalidArgument, "{url}: {err:?}");
        assert!(
            err.message().contains("SSRF") && err.message().contains("--webhook-allow-net"),
            "{url}: {}",
            err.message()
        );
    }
    // https-only servers refuse http.
    let strict = TestServer::start_with(|cfg| cfg.webhooks.require_https = true).await;
    let err = self::hooks(&strict)
        .await
        .create_webhook(create_req("http://example.com/hook", &["*"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("https"), "{}", err.message());
    server.stop().await;
    strict.stop().await;
}

#[tokio::test]
async fn bad_input_gets_the_right_status_codes() {
    let server = TestServer::start_with(|cfg| fast(cfg, &[10])).await;
    let mut hooks = hooks(&server).await;
    let cases = [
        (create_req("not a url", &["*"]), "url"),
        (create_req("", &["*"]), "url is required"),
        (create_req("ftp://127.0.0.1/x", &["*"]), "scheme"),
        (
            create_req("http://127.0.0.1:9/hook", &[]),
            "event_types is required",
        ),
        (
            create_req("http://127.0.0.1:9/hook", &["bad type!"]),
            "event_types",
        ),
        (
            CreateWebhookRequest {
                max_in_flight: 65,
                ..create_req("http://127.0.0.1:9/hook", &["*"])
            },
            "max_in_flight",
        ),
    ];
    for (req, needle) in cases {
        let err = hooks.create_webhook(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains(needle),
            "{needle}: {}",
            err.message()
        );
    }
    let unknown = "01JUNKNOWNUNKNOWNUNKNOWN00";
    let err = hooks
        .get_webhook(GetWebhookRequest { id: unknown.into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains(unknown));
    let err = hooks
        .update_webhook(UpdateWebhookRequest {
            id: unknown.into(),
            enabled: Some(false),
            ..UpdateWebhookRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = hooks
        .delete_webhook(DeleteWebhookRequest { id: unknown.into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = hooks
        .list_deliveries(ListDeliveriesRequest {
            webhook_id: unknown.into(),
            limit: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = hooks
        .rotate_secret(RotateSecretRequest {
            id: unknown.into(),
            grace_period_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = hooks
        .get_webhook(GetWebhookRequest { id: String::new() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Updating filters to an empty list is refused too.
    let (hook, _) = create(&mut hooks, create_req("http://127.0.0.1:9/hook", &["*"])).await;
    let err = hooks
        .update_webhook(UpdateWebhookRequest {
            id: hook.id.clone(),
            event_types: Some(StringList { values: vec![] }),
            ..UpdateWebhookRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    server.stop().await;
}
