//! `ordo groups ...`: the consumer-group admin calls.

use ordo_client::{
    ClientError, OrdoClient, Start,
    v1::{
        ConsumerGroup, ConsumerStrategy, CreateGroupRequest, ListGroupsRequest, ListParkedRequest,
        ReplayParkedRequest, RetryBackoff, UpdateGroupRequest,
    },
};
use serde_json::json;

use super::{
    args::{GroupSettingsArgs, GroupsCommand, StrategyArg},
    events::{parse_start, proto_filter},
    fail::{EXIT_FAILED, Failure},
    human, json,
    out::Out,
    pages,
};

pub async fn run(client: &OrdoClient, out: &Out, command: GroupsCommand) -> anyhow::Result<()> {
    match command {
        GroupsCommand::Create {
            name,
            filter,
            from,
            settings,
        } => {
            let start: Start = parse_start(&from)?;
            let request = CreateGroupRequest {
                name: name.clone(),
                filter: proto_filter(&filter),
                start: Some(start.to_proto()),
                ack_timeout_ms: settings.ack_timeout_ms.unwrap_or(0),
                max_deliveries: settings.max_deliveries.unwrap_or(0),
                retry_backoff: backoff(settings.backoff_initial_ms, settings.backoff_max_ms, None),
                max_in_flight: settings.max_in_flight.unwrap_or(0),
                strategy: settings.strategy.map_or(0, |s| proto_strategy(s) as i32),
            };
            let group = client
                .create_group(request)
                .await
                .map_err(|err| group_error(err, "cannot create consumer group", &name))?;
            print_group(out, &group)
        }
        GroupsCommand::Get { name } => {
            let group = client
                .get_group(&name)
                .await
                .map_err(|err| group_error(err, "cannot get consumer group", &name))?;
            print_group(out, &group)
        }
        GroupsCommand::List {
            page_size,
            page_token,
            all,
        } => list(client, out, page_size, page_token, all).await,
        GroupsCommand::Update { name, settings } => update(client, out, name, settings).await,
        GroupsCommand::Delete { name } => {
            client
                .delete_group(&name)
                .await
                .map_err(|err| group_error(err, "cannot delete consumer group", &name))?;
            if out.json() {
                out.json_line(&json!({"deleted": name}))
            } else {
                out.line(&format!("deleted consumer group {name}"))
            }
        }
        GroupsCommand::Parked {
            name,
            from,
            page_size,
            all,
        } => parked(client, out, &name, from, page_size, all).await,
        GroupsCommand::Replay {
            name,
            from,
            to,
            limit,
            all,
        } => replay(client, out, &name, from, to, limit, all).await,
    }
}

/// Adds the action and the group to a client error, with a hint for the usual mistake: a
/// group name that does not exist (the generic hint would point at orders).
pub fn group_error(err: ClientError, action: &str, name: &str) -> anyhow::Error {
    match err {
        ClientError::NotFound(message) => Failure::new(
            EXIT_FAILED,
            format!(
                "{action} {name:?}: not found: {message}; see `ordo groups list`, or create it with `ordo groups create {name}`"
            ),
        )
        .into(),
        other => anyhow::Error::new(other).context(format!("{action} {name:?}")),
    }
}

fn proto_strategy(strategy: StrategyArg) -> ConsumerStrategy {
    match strategy {
        StrategyArg::RoundRobin => ConsumerStrategy::RoundRobin,
        StrategyArg::Pinned => ConsumerStrategy::PinnedByStream,
    }
}

/// The backoff to send: none unless a backoff flag is given. The server takes the message as
/// a whole, so on update the value not given is kept from `current`.
fn backoff(
    initial_ms: Option<u32>,
    max_ms: Option<u32>,
    current: Option<&ConsumerGroup>,
) -> Option<RetryBackoff> {
    if initial_ms.is_none() && max_ms.is_none() {
        return None;
    }
    let now = current.and_then(|g| g.retry_backoff).unwrap_or_default();
    Some(RetryBackoff {
        initial_ms: initial_ms.unwrap_or(now.initial_ms),
        max_ms: max_ms.unwrap_or(now.max_ms),
    })
}

async fn update(
    client: &OrdoClient,
    out: &Out,
    name: String,
    settings: GroupSettingsArgs,
) -> anyhow::Result<()> {
    let GroupSettingsArgs {
        ack_timeout_ms,
        max_deliveries,
        backoff_initial_ms,
        backoff_max_ms,
        max_in_flight,
        strategy,
    } = settings;
    if [
        ack_timeout_ms,
        max_deliveries,
        backoff_initial_ms,
        backoff_max_ms,
        max_in_flight,
    ]
    .iter()
    .all(Option::is_none)
        && strategy.is_none()
    {
        return Err(Failure::usage(
            "nothing to change: give at least one setting (see `ordo groups update --help`)",
        )
        .into());
    }
    let current = if backoff_initial_ms.is_some() != backoff_max_ms.is_some() {
        Some(
            client
                .get_group(&name)
                .await
                .map_err(|err| group_error(err, "cannot update consumer group", &name))?,
        )
    } else {
        None
    };
    let request = UpdateGroupRequest {
        name: name.clone(),
        ack_timeout_ms,
        max_deliveries,
        retry_backoff: backoff(backoff_initial_ms, backoff_max_ms, current.as_ref()),
        max_in_flight,
        strategy: strategy.map(|s| proto_strategy(s) as i32),
    };
    let group = client
        .update_group(request)
        .await
        .map_err(|err| group_error(err, "cannot update consumer group", &name))?;
    print_group(out, &group)
}

fn print_group(out: &Out, group: &ConsumerGroup) -> anyhow::Result<()> {
    if out.json() {
        out.json_line(&json::group(group))
    } else {
        out.line(&human::group_detail(group))
    }
}

async fn list(
    client: &OrdoClient,
    out: &Out,
    page_size: u32,
    page_token: Option<String>,
    all: bool,
) -> anyhow::Result<()> {
    let fetch = |page_token| async move {
        let page = client
            .list_groups(ListGroupsRequest {
                page_size,
                page_token,
            })
            .await
            .map_err(|err| anyhow::Error::new(err).context("cannot list consumer groups"))?;
        Ok((page.groups, page.next_page_token))
    };
    let print = |group: &ConsumerGroup| {
        if out.json() {
            out.json_line(&json::group(group))
        } else {
            out.line(&human::group_row(group))
        }
    };
    let printed = pages::print_pages(out, "groups", all, page_token, fetch, print).await?;
    if printed == 0 && !out.json() {
        out.note("no consumer groups (create one with `ordo groups create NAME`)");
    }
    Ok(())
}

async fn parked(
    client: &OrdoClient,
    out: &Out,
    name: &str,
    mut from: u64,
    page_size: u32,
    all: bool,
) -> anyhow::Result<()> {
    let mut printed = 0usize;
    loop {
        let page = client
            .list_parked(ListParkedRequest {
                group: name.to_string(),
                from_offset: from,
                page_size,
            })
            .await
            .map_err(|err| group_error(err, "cannot list the parked events of", name))?;
        for event in &page.parked {
            if out.json() {
                out.json_line(&json::parked(event))?;
            } else {
                out.line(&human::parked(event))?;
            }
        }
        printed += page.parked.len();
        if page.next_from_offset == 0 {
            if printed == 0 && !out.json() {
                out.note(&format!("no parked events in group {name}"));
            }
            return Ok(());
        }
        if !all {
            if out.json() {
                out.json_line(&json!({"page": {"next_from_offset": page.next_from_offset}}))?;
            } else {
                out.note(&format!(
                    "more parked events: add --from {} (or --all)",
                    page.next_from_offset
                ));
            }
            return Ok(());
        }
        from = page.next_from_offset;
    }
}

async fn replay(
    client: &OrdoClient,
    out: &Out,
    name: &str,
    mut from: u64,
    to: u64,
    limit: u32,
    all: bool,
) -> anyhow::Result<()> {
    let mut replayed = 0u64;
    loop {
        let answer = client
            .replay_parked(ReplayParkedRequest {
                group: name.to_string(),
                from_offset: from,
                to_offset: to,
                limit,
            })
            .await
            .map_err(|err| group_error(err, "cannot replay the parked events of", name))?;
        replayed += u64::from(answer.replayed);
        if !answer.more || !all {
            if out.json() {
                out.json_line(&json!({
                    "replayed": replayed,
                    "more": answer.more,
                    "next_from_offset": answer.next_from_offset,
                }))?;
            } else {
                out.line(&format!(
                    "replayed {replayed} parked events of group {name}"
                ))?;
                if answer.more {
                    out.note(&format!(
                        "more parked events: add --from {} (or --all)",
                        answer.next_from_offset
                    ));
                }
            }
            return Ok(());
        }
        from = answer.next_from_offset;
    }
}
