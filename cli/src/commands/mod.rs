//! The `ordo` command-line tool: argument parsing, one module per command group, and the
//! printing and error-reporting shared by all of them.

mod admin;
pub mod args;
mod consume;
mod demo;
mod events;
pub mod fail;
mod groups;
mod human;
mod json;
mod orders;
mod out;
mod pages;
mod progress;
mod publish;

use std::time::Duration;

use anyhow::Context;
use ordo_client::{Health, OrdoClient, TlsOptions};

use self::{
    args::{Cli, Command},
    out::Out,
};

/// Runs one parsed command line to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let addr = normalize_addr(&cli.addr);
    let mut builder = OrdoClient::builder(addr.clone())
        .connect_timeout(Duration::from_secs(5))
        .request_timeout(Duration::from_secs(30));
    if let Some(token) = &cli.token {
        builder = builder.bearer_token(token.clone());
    }
    if let Some(tls) = tls_options(&cli)? {
        builder = builder.tls(tls);
    }
    let client = builder.connect().await?;
    let out = Out::new(cli.json);
    match cli.command {
        Command::Orders(command) => orders::run(&client, &out, command).await,
        Command::Events(command) => events::run(&client, &out, command).await,
        Command::Admin(command) => admin::run(&client, &out, command).await,
        Command::Consume(args) => consume::run(&client, &out, args).await,
        Command::Groups(command) => groups::run(&client, &out, command).await,
        Command::Health { service } => health(&client, &out, &service).await,
        Command::Demo {
            orders,
            customers,
            delay_ms,
        } => {
            demo::run(
                &client,
                &out,
                orders,
                customers,
                Duration::from_millis(delay_ms),
            )
            .await
        }
    }
}

/// TLS settings from the flags, when any is given or the address is `https://`.
fn tls_options(cli: &Cli) -> anyhow::Result<Option<TlsOptions>> {
    let any_flag = cli.ca_cert.is_some() || cli.tls_domain.is_some() || cli.client_cert.is_some();
    if !any_flag && !cli.addr.starts_with("https://") {
        return Ok(None);
    }
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|err| {
            fail::Failure::usage(format!("cannot read {flag} {}: {err}", path.display()))
        })
    };
    let mut tls = TlsOptions::new();
    if let Some(path) = &cli.ca_cert {
        tls = tls.ca_certificate_pem(read("--ca-cert", path)?);
    }
    if let Some(name) = &cli.tls_domain {
        tls = tls.domain_name(name.clone());
    }
    if let (Some(cert), Some(key)) = (&cli.client_cert, &cli.client_key) {
        tls = tls.identity_pem(read("--client-cert", cert)?, read("--client-key", key)?);
    }
    Ok(Some(tls))
}

/// Accepts `host:port` as well as a full URL: people type the short form.
pub fn normalize_addr(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

async fn health(client: &OrdoClient, out: &Out, service: &str) -> anyhow::Result<()> {
    let health = client
        .health(service)
        .await
        .with_context(|| format!("health check of {} failed", client.url()))?;
    let text = match health {
        Health::Serving => "SERVING",
        Health::NotServing => "NOT_SERVING",
        Health::Unknown => "UNKNOWN",
    };
    if out.json() {
        out.json_line(&serde_json::json!({"status": text, "addr": client.url()}))?;
    } else {
        out.line(&format!("{text} ({})", client.url()))?;
    }
    if health != Health::Serving {
        return Err(fail::Failure::new(
            1,
            format!("the server at {} is not serving", client.url()),
        )
        .into());
    }
    Ok(())
}
