//! The `ordo` command-line tool: argument parsing, one module per command group, and the
//! printing and error-reporting shared by all of them.

pub mod args;
mod demo;
mod events;
pub mod fail;
mod human;
mod json;
mod orders;
mod out;
mod progress;
mod publish;

use std::time::Duration;

use anyhow::Context;
use ordo_client::{Health, OrdoClient};

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
    let client = builder.connect().await?;
    let out = Out::new(cli.json);
    match cli.command {
        Command::Orders(command) => orders::run(&client, &out, command).await,
        Command::Events(command) => events::run(&client, &out, command).await,
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
