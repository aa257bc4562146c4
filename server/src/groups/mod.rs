//! Consumer groups: named groups whose members share the work of one filtered slice of the
//! log, with progress, retries and a dead-letter queue kept by the server.
//!
//! Each group is one task ([`actor`]) that owns its state and is the only writer of its
//! records ([`records`]), so acks, timeouts and dispatch never race. [`Groups`] is the registry
//! the gRPC layer talks to: it creates, finds and deletes groups and routes member and unary
//! commands to their task. What is settled is kept as ranges ([`progress`]); delivery ids
//! carry group, offset and attempt ([`delivery_id`]).

pub mod actor;
pub mod delivery_id;
pub mod progress;
pub mod records;
pub mod settings;

use std::{collections::BTreeMap, sync::Arc};

use ordo_api::v1::{
    ConsumerGroup, CreateGroupRequest, ListGroupsRequest, ListGroupsResponse, ListParkedRequest,
    ListParkedResponse, ParkedEvent, ReplayParkedRequest, ReplayParkedResponse, UpdateGroupRequest,
    start_position::Position,
};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use actor::{Actor, Replayed};
pub use actor::{Command, How, Joined, Origin, Out};
use records::StoredGroup;

use crate::{
    auth::Principal,
    clock,
    error::{OrdoError, Refused},
    events::{position, read::READ_CHUNK_BYTES},
    paging,
    store::{AppendBatch, SharedLog, StoreError},
};

/// Groups a server holds at most: each is a task and a window of events in memory.
pub const MAX_GROUPS: usize = 1_000;
/// Commands waiting for one group's task; senders wait when it is full.
const COMMAND_QUEUE: usize = 1_024;
/// Most replayed per ReplayParked call, and its default.
const MAX_REPLAY: usize = 1_000;
const DEFAULT_REPLAY: usize = 100;

/// The registry of running groups.
pub struct Groups {
    log: SharedLog,
    shutdown: CancellationToken,
    /// Name -> the group's definition and its task's queue. Held across creates and deletes
    /// only, so two of them never interleave on one name.
    running: Mutex<BTreeMap<String, Running>>,
}

struct Running {
    group: StoredGroup,
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
}

impl Groups {
    /// Starts a task for every stored group.
    pub async fn start(
        log: SharedLog,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, StoreError> {
        let groups = Arc::new(Self {
            log: log.clone(),
            shutdown,
            running: Mutex::new(BTreeMap::new()),
        });
        let stored = log.scan_records(records::all_defs_prefix(), None, MAX_GROUPS)?;
        let mut running = groups.running.lock().await;
        for (_, value) in stored {
            let group: StoredGroup = records::decode(&value, "consumer group")?;
            let entry = groups.spawn(group).await?;
            running.insert(entry.group.name.clone(), entry);
        }
        drop(running);
        Ok(groups)
    }

    async fn spawn(&self, group: StoredGroup) -> Result<Running, StoreError> {
        let log = self.log.clone();
        let shutdown = self.shutdown.clone();
        let stored = group.clone();
        let actor = tokio::task::spawn_blocking(move || Actor::load(log, stored, shutdown))
            .await
            .map_err(|err| StoreError::Io(std::io::Error::other(err.to_string())))??;
        let (commands, queue) = mpsc::channel(COMMAND_QUEUE);
        let task = tokio::spawn(actor.run(queue));
        Ok(Running {
            group,
            commands,
            task,
        })
    }

    pub async fn create(
        &self,
        req: CreateGroupRequest,
        principal: &Principal,
    ) -> Result<ConsumerGroup, OrdoError> {
        let group = settings::from_create(&req)?;
        authorize(&group, principal, "/ordo.v1.ConsumerService/CreateGroup")?;
        let head = self.log.head();
        let settled_through = match req.start.as_ref().and_then(|s| s.position) {
            None | Some(Position::End(_)) => head,
            Some(_) => {
                let range = position::Range {
                    first: self.log.first_offset(),
                    head,
                };
                position::first_offset(req.start.as_ref(), range, false)? - 1
            }
        };
        let mut running = self.running.lock().await;
        if running.contains_key(&group.name) {
            return Err(OrdoError::AlreadyExists(format!(
                "consumer group {:?} already exists; join it, or delete it first",
                group.name
            )));
        }
        if running.len() >= MAX_GROUPS {
            return Err(OrdoError::FailedPrecondition(format!(
                "this server already has {MAX_GROUPS} consumer groups, its limit; delete unused ones first"
            )));
        }
        self.log
            .append(AppendBatch::records_only(vec![
                records::put(records::def_key(&group.name), &group),
                records::put(
                    records::checkpoint_key(&group.name),
                    &progress::Progress::new(settled_through).to_checkpoint(),
                ),
            ]))
            .await?;
        let entry = self.spawn(group.clone()).await?;
        running.insert(group.name.clone(), entry);
        drop(running);
        self.status(&group.name, principal).await
    }

    /// The group's settings and live progress.
    pub async fn status(
        &self,
        name: &str,
        principal: &Principal,
    ) -> Result<ConsumerGroup, OrdoError> {
        let (reply, answer) = oneshot::channel();
        self.send(name, principal, "GetGroup", Command::Status { reply })
            .await?;
        answer.await.map_err(|_| gone(name))
    }

    pub async fn list(
        &self,
        req: &ListGroupsRequest,
        principal: &Principal,
    ) -> Result<ListGroupsResponse, OrdoError> {
        let size = paging::page_size("page_size", req.page_size, 50, 500)?;
        let names: Vec<String> = {
            let running = self.running.lock().await;
            running
                .iter()
                .filter(|(name, _)| {
                    req.page_token.is_empty() || name.as_str() > req.page_token.as_str()
                })
                .filter(|(_, r)| visible(&r.group, principal))
                .map(|(name, _)| name.clone())
                .take(size + 1)
                .collect()
        };
        let more = names.len() > size;
        let mut groups = Vec::with_capacity(size);
        for name in names.iter().take(size) {
            match self.status(name, principal).await {
                Ok(group) => groups.push(group),
                // Deleted meanwhile.
                Err(OrdoError::NotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(ListGroupsResponse {
            next_page_token: paging::next_page_token(
                more,
                names.get(size.saturating_sub(1)).map(String::as_str),
            ),
            groups,
        })
    }

    pub async fn update(
        &self,
        req: &UpdateGroupRequest,
        principal: &Principal,
    ) -> Result<ConsumerGroup, OrdoError> {
        let mut running = self.running.lock().await;
        let entry = running
            .get_mut(&req.name)
            .ok_or_else(|| not_found(&req.name))?;
        authorize(
            &entry.group,
            principal,
            "/ordo.v1.ConsumerService/UpdateGroup",
        )?;
        let group = settings::updated(&entry.group, req)?;
        self.log
            .append(AppendBatch::records_only(vec![records::put(
                records::def_key(&group.name),
                &group,
            )]))
            .await?;
        entry.group = group.clone();
        entry
            .commands
            .send(Command::Update { group })
            .await
            .map_err(|_| gone(&req.name))?;
        drop(running);
        self.status(&req.name, principal).await
    }

    /// Stops the group (its members' streams end with NOT_FOUND) and removes its records.
    pub async fn delete(&self, name: &str, principal: &Principal) -> Result<(), OrdoError> {
        let mut running = self.running.lock().await;
        let entry = running.get(name).ok_or_else(|| not_found(name))?;
        authorize(
            &entry.group,
            principal,
            "/ordo.v1.ConsumerService/DeleteGroup",
        )?;
        let (reply, stopped) = oneshot::channel();
        if entry.commands.send(Command::Stop { reply }).await.is_ok() {
            let _ = stopped.await;
        }
        running.remove(name);
        // Parked and failure records first, the definition last: a crash half way leaves a
        // group that can be deleted again, never records of a group that seems not to exist.
        for prefix in [records::parked_prefix(name), records::failure_prefix(name)] {
            loop {
                let page = self.log.scan_records(&prefix, None, 1_000)?;
                if page.is_empty() {
                    break;
                }
                let deletes = page
                    .into_iter()
                    .map(|(key, _)| records::delete(key))
                    .collect();
                self.log.append(AppendBatch::records_only(deletes)).await?;
            }
        }
        self.log
            .append(AppendBatch::records_only(vec![
                records::delete(records::checkpoint_key(name)),
                records::delete(records::def_key(name)),
            ]))
            .await?;
        Ok(())
    }

    /// Waits for every group task to end (they end on shutdown), so none holds the log when
    /// the server closes it.
    pub async fn join_tasks(&self) {
        let tasks: Vec<_> = {
            let mut running = self.running.lock().await;
            std::mem::take(&mut *running)
                .into_values()
                .map(|r| r.task)
                .collect()
        };
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Joins `name` as a new member.
    pub async fn join(
        &self,
        name: &str,
        member_name: String,
        max_in_flight: u32,
        principal: &Principal,
    ) -> Result<(Joined, mpsc::Sender<Command>), OrdoError> {
        let commands = self.commands(name, principal, "Consume").await?;
        let (reply, joined) = oneshot::channel();
        commands
            .send(Command::Join {
                member_name,
                max_in_flight,
                reply,
            })
            .await
            .map_err(|_| gone(name))?;
        let joined = joined.await.map_err(|_| gone(name))??;
        Ok((joined, commands))
    }

    /// A unary Ack or Nack: answered once durable.
    pub async fn settle(
        &self,
        name: &str,
        ids: Vec<String>,
        how: How,
        principal: &Principal,
    ) -> Result<(), OrdoError> {
        let (reply, answer) = oneshot::channel();
        let method = if matches!(how, How::Ack) {
            "Ack"
        } else {
            "Nack"
        };
        self.send(
            name,
            principal,
            method,
            Command::Settle {
                origin: Origin::Unary(reply),
                ids,
                how,
            },
        )
        .await?;
        answer.await.map_err(|_| gone(name))?
    }

    /// A page of the dead-letter queue, read from the log's records.
    pub async fn list_parked(
        &self,
        req: &ListParkedRequest,
        principal: &Principal,
    ) -> Result<ListParkedResponse, OrdoError> {
        self.commands(&req.group, principal, "ListParked").await?;
        let size = paging::page_size("page_size", req.page_size, 50, 500)?;
        let prefix = records::parked_prefix(&req.group);
        let after =
            (req.from_offset > 1).then(|| records::parked_key(&req.group, req.from_offset - 1));
        let log = self.log.clone();
        let rows = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let rows = log.scan_records(&prefix, after.as_deref(), size + 1)?;
            let mut parked = Vec::with_capacity(rows.len());
            for (key, value) in rows {
                let Some(offset) = records::trailing_offset(&key) else {
                    continue;
                };
                let record: records::Parked = records::decode(&value, "parked event")?;
                let event = log
                    .read(offset, 1, READ_CHUNK_BYTES)?
                    .into_iter()
                    .find(|e| e.offset == offset);
                parked.push((offset, record, event));
            }
            Ok(parked)
        })
        .await
        .map_err(|err| OrdoError::Unavailable(format!("listing parked events failed: {err}")))??;
        let next_from_offset = rows.get(size).map_or(0, |(offset, _, _)| *offset);
        Ok(ListParkedResponse {
            parked: rows
                .into_iter()
                .take(size)
                .map(|(_, record, event)| ParkedEvent {
                    event,
                    attempts: record.attempts,
                    reason: record.reason,
                    parked_at: clock::timestamp(record.parked_at_ms),
                })
                .collect(),
            next_from_offset,
        })
    }

    pub async fn replay_parked(
        &self,
        req: &ReplayParkedRequest,
        principal: &Principal,
    ) -> Result<ReplayParkedResponse, OrdoError> {
        let limit = paging::page_size("limit", req.limit, DEFAULT_REPLAY, MAX_REPLAY)?;
        if req.to_offset != 0 && req.to_offset < req.from_offset {
            return Err(OrdoError::invalid(format!(
                "to_offset {} is below from_offset {}",
                req.to_offset, req.from_offset
            )));
        }
        let (reply, answer) = oneshot::channel();
        self.send(
            &req.group,
            principal,
            "ReplayParked",
            Command::Replay {
                from: req.from_offset,
                to: req.to_offset,
                limit,
                reply,
            },
        )
        .await?;
        let Replayed {
            replayed,
            more,
            next_from_offset,
        } = answer.await.map_err(|_| gone(&req.group))??;
        Ok(ReplayParkedResponse {
            replayed,
            more,
            next_from_offset,
        })
    }

    /// The queue of group `name`'s task, once the caller may use the group.
    async fn commands(
        &self,
        name: &str,
        principal: &Principal,
        method: &str,
    ) -> Result<mpsc::Sender<Command>, OrdoError> {
        let running = self.running.lock().await;
        let entry = running.get(name).ok_or_else(|| not_found(name))?;
        authorize(
            &entry.group,
            principal,
            &format!("/ordo.v1.ConsumerService/{method}"),
        )?;
        Ok(entry.commands.clone())
    }

    async fn send(
        &self,
        name: &str,
        principal: &Principal,
        method: &str,
        command: Command,
    ) -> Result<(), OrdoError> {
        self.commands(name, principal, method)
            .await?
            .send(command)
            .await
            .map_err(|_| gone(name))
    }
}

/// A restricted token may use a group only if the group's filter stays inside its
/// type/stream prefixes: a group hands out whatever matches its filter.
fn authorize(group: &StoredGroup, principal: &Principal, path: &str) -> Result<(), OrdoError> {
    if visible(group, principal) {
        return Ok(());
    }
    Err(OrdoError::PermissionDenied {
        message: format!(
            "token {:?} may not use consumer group {:?}: its filter reaches beyond the token's event-type/stream prefixes",
            principal.name(),
            group.name
        ),
        refused: Refused::new(principal.name(), path, "group outside restriction"),
    })
}

fn visible(group: &StoredGroup, principal: &Principal) -> bool {
    match (principal.restriction(), group.matcher()) {
        (None, _) => true,
        (Some(restriction), Ok(matcher)) => matcher.is_within(restriction),
        (Some(_), Err(_)) => false,
    }
}

fn not_found(name: &str) -> OrdoError {
    OrdoError::NotFound(format!(
        "consumer group {name:?} does not exist; create it with CreateGroup"
    ))
}

/// The group's task ended (deleted meanwhile, or stopped by a storage failure).
fn gone(name: &str) -> OrdoError {
    warn!(group = name, "consumer group task is gone");
    OrdoError::Unavailable(format!(
        "consumer group {name:?} is not running (deleted, or stopped by a storage failure); retry"
    ))
}
