//! The loopback rule: without auth the server refuses a non-loopback address unless told
//! `--insecure`.

use super::*;

#[test]
fn non_loopback_without_auth_refuses_to_start() {
    let data = tempfile::tempdir().expect("dir");
    let port = free_port();
    let output = Command::new(ordo_test_harness::server_binary())
        .args(["--listen", &format!("0.0.0.0:{port}"), "--data-dir"])
        .arg(data.path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run ordo-server");
    assert!(!output.status.success(), "it started");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to serve without authentication"),
        "stderr: {stderr}"
    );
}

#[tokio::test]
async fn non_loopback_starts_with_insecure_or_with_tokens() {
    let data = tempfile::tempdir().expect("dir");
    let tokens_dir = tempfile::tempdir().expect("dir");
    let path = tokens_dir.path().join("tokens.toml");
    write_tokens(&path, &[Tok::new("admin", ADMIN, &Scope::ALL)]);
    for args in [
        vec!["--insecure".to_string()],
        vec!["--auth-tokens".to_string(), path.display().to_string()],
    ] {
        let port = free_port();
        let mut child = Command::new(ordo_test_harness::server_binary())
            .args(["--listen", &format!("0.0.0.0:{port}"), "--data-dir"])
            .arg(data.path())
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                child.try_wait().expect("wait").is_none(),
                "exited with {args:?}"
            );
            assert!(Instant::now() < deadline, "did not start with {args:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
