//! The command line, declared with clap. Every level's `--help` ends with examples.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Talk to an Ordo server: manage orders, read and tail the event log, publish events.
#[derive(Debug, Parser)]
#[command(
    name = "ordo",
    version,
    after_help = "Examples:
  ordo health
  ordo orders create --customer cust-1 --item book:2:1250 --currency EUR
  ordo orders list --status created
  ordo events tail --from start --follow
  ordo --json events read --from 1 --limit 10
  ordo demo --orders 20
  ordo groups create billing --type 'order.*' --from start
  ordo consume billing --exec ./handle.sh --nack-on-exit-code
  ordo --addr https://ordo.internal:50051 --ca-cert ca.pem --token \"$TOKEN\" orders list

Exit codes: 0 ok, 1 request failed, 2 bad usage or invalid argument, 69 server unavailable."
)]
pub struct Cli {
    /// Server address.
    #[arg(
        long,
        global = true,
        env = "ORDO_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub addr: String,
    /// Bearer token sent as `authorization: Bearer <token>`.
    #[arg(long, global = true, env = "ORDO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) that signed the server's certificate; use with an https:// --addr.
    #[arg(
        long,
        visible_alias = "ca",
        global = true,
        env = "ORDO_CA_CERT",
        value_name = "FILE"
    )]
    pub ca_cert: Option<PathBuf>,
    /// Verify the server's certificate against this name instead of the address's host.
    #[arg(long, global = true, env = "ORDO_TLS_DOMAIN", value_name = "NAME")]
    pub tls_domain: Option<String>,
    /// Client certificate (PEM) for servers that require mutual TLS; needs --client-key.
    #[arg(
        long,
        visible_alias = "cert",
        global = true,
        env = "ORDO_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(
        long,
        visible_alias = "key",
        global = true,
        env = "ORDO_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    /// Print JSON lines (one object per line) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, read and move orders along their lifecycle.
    #[command(
        subcommand,
        after_help = "Examples:
  ordo orders create --customer cust-1 --item book:2:1250 --item pen:1:199
  ordo orders get 01JD0000000000000000000000
  ordo orders list --all
  ordo orders status 01JD0000000000000000000000 paid
  ordo orders cancel 01JD0000000000000000000000 --reason \"changed my mind\""
    )]
    Orders(OrdersCommand),
    /// Tail, read and publish events of the log.
    #[command(
        subcommand,
        after_help = "Examples:
  ordo events tail --from start --follow
  ordo events tail --type 'order.*' --cursor-file orders.cursor
  ordo events read --from 1 --limit 20
  ordo events publish --stream sensor-7 --type reading.taken --data '{\"celsius\": 21.5}'
  ordo events publish --from-file events.jsonl"
    )]
    Events(EventsCommand),
    /// Operate the log: its retained range, compaction, stream deletion, backups (scope
    /// `admin`).
    #[command(
        subcommand,
        after_help = "Examples:
  ordo admin info
  ordo admin backup ./backups/2026-12-02      # then: ordo-server restore ./backups/2026-12-02 --data-dir NEW
  ordo admin delete-stream customer-42 --yes
  ordo admin compact"
    )]
    Admin(AdminCommand),
    /// Join a consumer group: print each delivery and ack it, or run a command per event.
    #[command(after_help = "Examples:
  ordo consume billing                                  # print and ack each delivery, until Ctrl-C
  ordo --json consume billing --count 10                # ten deliveries as JSON lines, then exit
  ordo consume billing --exec 'jq .data >> out.jsonl'   # exit 0 acks; any other exit stops ordo
  ordo consume billing --exec ./handle.sh --nack-on-exit-code --max-in-flight 10

Each delivery is acked after it was printed (or after --exec's command exited 0); on exit,
ordo waits until the server has made every ack durable. Delivery is at-least-once: if the
connection breaks, ordo rejoins by itself and whatever was not acked yet comes again.")]
    Consume(ConsumeArgs),
    /// Create, show, change and delete consumer groups; list and replay their parked events.
    #[command(
        subcommand,
        after_help = "Examples:
  ordo groups create billing --type 'order.*' --from start --max-deliveries 3
  ordo groups list
  ordo groups get billing
  ordo groups update billing --ack-timeout-ms 60000 --strategy pinned
  ordo groups parked billing
  ordo groups replay billing --all
  ordo groups delete billing"
    )]
    Groups(GroupsCommand),
    /// Create demo orders and move them along, to have something to tail and query.
    #[command(after_help = "Examples:
  ordo demo                          # 50 orders as fast as the server takes them
  ordo demo --orders 200 --delay-ms 250   # a slow trickle to watch with `ordo events tail --follow`")]
    Demo {
        /// How many orders to create.
        #[arg(long, default_value_t = 50)]
        orders: usize,
        /// How many distinct customers to spread them over.
        #[arg(long, default_value_t = 10)]
        customers: usize,
        /// Pause between orders, in milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
    /// Check that the server is up and serving.
    #[command(after_help = "Examples:
  ordo health
  ordo --addr http://10.0.0.5:50051 health --service ordo.v1.EventService")]
    Health {
        /// A service name such as `ordo.v1.OrderService`; empty means the whole server.
        #[arg(long, default_value = "")]
        service: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum OrdersCommand {
    /// Create an order.
    #[command(after_help = "Examples:
  ordo orders create --customer cust-1 --item book:2:1250
  ordo orders create --customer cust-1 --item book:1:1250 --item pen:3:199 --currency USD --idempotency-key cart-77")]
    Create {
        /// Customer id.
        #[arg(long)]
        customer: String,
        /// A line item as SKU:QUANTITY:UNIT_PRICE, the price in minor units (cents). Repeat
        /// for several items.
        #[arg(long = "item", required = true, value_name = "SKU:QTY:PRICE")]
        items: Vec<String>,
        /// ISO 4217 currency of every item.
        #[arg(long, default_value = "EUR")]
        currency: String,
        /// Makes retries safe: the same key returns the first result.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Show one order.
    #[command(after_help = "Examples:
  ordo orders get 01JD0000000000000000000000
  ordo orders get 01JD0000000000000000000000 --at-version 1")]
    Get {
        /// Order id.
        id: String,
        /// Show the order as it was after this version (1 = as created).
        #[arg(long)]
        at_version: Option<u64>,
    },
    /// List orders, oldest first.
    #[command(after_help = "Examples:
  ordo orders list
  ordo orders list --status paid --all
  ordo orders list --page-size 10 --page-token <token from the previous page>")]
    List {
        /// Only orders in this status.
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        /// Orders per page (server default 50, at most 500).
        #[arg(long, default_value_t = 0, hide_default_value = true)]
        page_size: u32,
        /// Continue from a previous page.
        #[arg(long, conflicts_with = "all")]
        page_token: Option<String>,
        /// Fetch every page.
        #[arg(long)]
        all: bool,
    },
    /// Move an order one step: created -> paid -> fulfilled -> delivered.
    #[command(after_help = "Examples:
  ordo orders status 01JD0000000000000000000000 paid
  ordo orders status 01JD0000000000000000000000 fulfilled --expected-version 2")]
    Status {
        /// Order id.
        id: String,
        /// The new status.
        #[arg(value_enum)]
        status: StatusArg,
        /// Fail with a conflict unless the order is at this version.
        #[arg(long)]
        expected_version: Option<u64>,
        /// Makes retries safe.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Cancel an order that is not delivered yet.
    #[command(after_help = "Examples:
  ordo orders cancel 01JD0000000000000000000000 --reason \"out of stock\"")]
    Cancel {
        /// Order id.
        id: String,
        /// Why, stored with the order.
        #[arg(long, default_value = "")]
        reason: String,
        /// Fail with a conflict unless the order is at this version.
        #[arg(long)]
        expected_version: Option<u64>,
        /// Makes retries safe.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Show the retained range (first offset to head), the size on disk and the retention.
    Info,
    /// Run a compaction now (retention, and removing deleted streams from storage).
    Compact,
    /// Delete every event of a stream, e.g. a customer's data. Cannot be undone.
    #[command(after_help = "Examples:
  ordo admin delete-stream customer-42 --yes

Reads, subscriptions and webhooks stop returning the events at once; the next compaction
removes them from storage. New events on the stream continue its versions.")]
    DeleteStream {
        /// The stream to delete.
        stream: String,
        /// Confirm: deleting a stream cannot be undone.
        #[arg(long)]
        yes: bool,
    },
    /// Take an online, consistent backup into a new directory while the server keeps going.
    #[command(after_help = "Examples:
  ordo admin backup ./backups/2026-12-02

Writes DIR/ordo.backup and DIR/ordo.backup.sha256 (check it with `sha256sum -c`). Restore
with `ordo-server restore DIR --data-dir NEW_DATA_DIR`, then start the server on it.")]
    Backup {
        /// The directory to write the backup to (created; must not hold a backup already).
        dir: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatusArg {
    Created,
    Paid,
    Fulfilled,
    Delivered,
    Cancelled,
}

#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only events of this type; `prefix*` matches a prefix. Repeat for several.
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// Only events of this stream; `prefix*` matches a prefix. Repeat for several.
    #[arg(long = "stream", value_name = "STREAM")]
    pub streams: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print events from a position until caught up, or keep following with --follow.
    #[command(after_help = "Examples:
  ordo events tail                                  # history, then exit
  ordo events tail --from end --follow              # only new events, until Ctrl-C
  ordo events tail --from 120 --type 'payment.*'    # from offset 120 (inclusive)
  ordo events tail --cursor-file my.cursor --follow # a rerun continues after the last printed event

The subscription reconnects by itself if the server restarts and never repeats or skips an event.")]
    Tail {
        /// Where to begin: `start`, `end`, or an offset (inclusive). A saved cursor wins.
        #[arg(long, default_value = "start", value_name = "OFFSET|start|end")]
        from: String,
        #[command(flatten)]
        filter: FilterArgs,
        /// Keep the position in this file: a rerun continues exactly after the last printed event.
        #[arg(long, value_name = "FILE")]
        cursor_file: Option<PathBuf>,
        /// Keep printing live events after catching up, until Ctrl-C.
        #[arg(long, short)]
        follow: bool,
        /// Heartbeat period asked from the server, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        heartbeat_ms: u32,
    },
    /// Print one page of events.
    #[command(after_help = "Examples:
  ordo events read
  ordo events read --from 100 --limit 50 --stream 'order-*'")]
    Read {
        /// Where to begin: `start`, `end`, or an offset (inclusive).
        #[arg(long, default_value = "start", value_name = "OFFSET|start|end")]
        from: String,
        #[command(flatten)]
        filter: FilterArgs,
        /// Most events to print (server default 100, at most 1000).
        #[arg(long, default_value_t = 0, hide_default_value = true)]
        limit: u32,
    },
    /// Append one event, or many from a JSON-lines file.
    #[command(after_help = "Examples:
  ordo events publish --stream sensor-7 --type reading.taken --data '{\"celsius\": 21.5}'
  ordo events publish --stream audit-1 --type user.login --data alice --meta trace=abc
  ordo events publish --from-file events.jsonl

Each line of a --from-file file is one JSON object:
  {\"stream_id\": \"sensor-7\", \"type\": \"reading.taken\", \"data\": {\"celsius\": 21.5}}
Optional keys: id, source, datacontenttype, metadata (object of strings),
expected_stream_version, data_base64 (instead of data). A JSON `data` value is stored as
JSON (application/json); a string is stored as its text. Lines without an id get one from
the CLI, so a resent event is never stored twice.

With --from-file, events go on one AppendStream (many in flight, each acked once durable; a
refused line does not stop the others, and the command then fails naming it). With
--batch-size N they go in atomic Publish calls of N events instead.")]
    Publish {
        /// The stream to append to.
        #[arg(
            long,
            required_unless_present = "from_file",
            conflicts_with = "from_file"
        )]
        stream: Option<String>,
        /// The event type.
        #[arg(
            long = "type",
            required_unless_present = "from_file",
            conflicts_with = "from_file"
        )]
        event_type: Option<String>,
        /// The payload text.
        #[arg(long, default_value = "", conflicts_with = "from_file")]
        data: String,
        /// Content type of --data; default application/json when it parses as JSON, else
        /// text/plain.
        #[arg(long, conflicts_with = "from_file")]
        content_type: Option<String>,
        /// Event id (deduplicates retries); default: generated.
        #[arg(long, conflicts_with = "from_file")]
        id: Option<String>,
        /// CloudEvents source.
        #[arg(long, conflicts_with = "from_file")]
        source: Option<String>,
        /// Metadata as KEY=VALUE. Repeat for several.
        #[arg(long = "meta", value_name = "KEY=VALUE", conflicts_with = "from_file")]
        metadata: Vec<String>,
        /// Fail with a conflict unless the stream is at this version (0: must not exist).
        #[arg(long, conflicts_with = "from_file")]
        expected_version: Option<u64>,
        /// Publish every line of this JSON-lines file (`-` for stdin).
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// With --from-file: publish in atomic Publish calls of this many events instead of
        /// streaming them.
        #[arg(long, requires = "from_file", value_parser = clap::value_parser!(u32).range(1..=1000))]
        batch_size: Option<u32>,
    },
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// The consumer group to join (create it first with `ordo groups create`).
    pub group: String,
    /// Deliveries this member holds unacked at once (default: the group's max_in_flight).
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub max_in_flight: u32,
    /// Stop after this many deliveries were acked or nacked. The member then holds at most N
    /// at once; deliveries the server sends it after the last one are handed back when it
    /// leaves, which the group counts as a failed delivery of those events.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Run this shell command (`sh -c CMD`) for each delivery, one at a time, with the event
    /// as one JSON line on stdin and ORDO_GROUP, ORDO_DELIVERY_ID, ORDO_ATTEMPT and
    /// ORDO_OFFSET in its environment. Exit 0 acks the event. Any other exit stops ordo with
    /// exit 1 and leaves the event unacked (it is delivered again), unless --nack-on-exit-code.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// With --exec: a non-zero exit nacks the event instead of stopping ordo. The group
    /// delivers it again after its retry backoff, and parks it in its dead-letter queue once it
    /// has failed max_deliveries times (see `ordo groups parked`).
    #[arg(long, requires = "exec")]
    pub nack_on_exit_code: bool,
    /// A name for this member in the server's logs (default: ordo-cli-<pid>).
    #[arg(long)]
    pub member_name: Option<String>,
}

/// How a group spreads events over its members.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StrategyArg {
    /// Each event to the next member with room; a stream's events may be processed in parallel.
    RoundRobin,
    /// All events of a stream to one member, one at a time, in stream order.
    Pinned,
}

/// The settings both `groups create` and `groups update` take.
#[derive(Debug, Args)]
pub struct GroupSettingsArgs {
    /// How long a member may hold a delivery before it is delivered again (server default
    /// 30000).
    #[arg(long, value_name = "MS")]
    pub ack_timeout_ms: Option<u32>,
    /// Failed deliveries (nack or timeout) of one event before it is parked (server default 5).
    #[arg(long, value_name = "N")]
    pub max_deliveries: Option<u32>,
    /// Delay before the first redelivery after a failure (server default 1000).
    #[arg(long, value_name = "MS")]
    pub backoff_initial_ms: Option<u32>,
    /// The delay doubles per failure up to this (server default 60000).
    #[arg(long, value_name = "MS")]
    pub backoff_max_ms: Option<u32>,
    /// Deliveries one member may hold unacked (server default 100, at most 1000).
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<u32>,
    /// How events are spread over members (server default round-robin).
    #[arg(long, value_enum)]
    pub strategy: Option<StrategyArg>,
}

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// Define a consumer group.
    #[command(after_help = "Examples:
  ordo groups create billing                          # only events appended from now on
  ordo groups create audit --from start --stream 'payment-*'
  ordo groups create shipping --type 'order.*' --strategy pinned --max-deliveries 3")]
    Create {
        /// 1 to 64 characters: letters, digits, `.`, `_`, `-`.
        name: String,
        #[command(flatten)]
        filter: FilterArgs,
        /// Where the group starts: `start`, `end` (only new events), or an offset (inclusive).
        #[arg(long, default_value = "end", value_name = "OFFSET|start|end")]
        from: String,
        #[command(flatten)]
        settings: GroupSettingsArgs,
    },
    /// Show a group's settings and progress.
    #[command(after_help = "Examples:
  ordo groups get billing
  ordo --json groups get billing | jq '.head_offset - .settled_through_offset'   # the lag")]
    Get {
        /// Group name.
        name: String,
    },
    /// List groups in name order.
    #[command(after_help = "Examples:
  ordo groups list
  ordo groups list --all")]
    List {
        /// Groups per page (server default 50, at most 500).
        #[arg(long, default_value_t = 0, hide_default_value = true)]
        page_size: u32,
        /// Continue from a previous page.
        #[arg(long, conflicts_with = "all")]
        page_token: Option<String>,
        /// Fetch every page.
        #[arg(long)]
        all: bool,
    },
    /// Change a group's settings (the filter and start cannot change: create a new group).
    #[command(after_help = "Examples:
  ordo groups update billing --ack-timeout-ms 60000
  ordo groups update billing --strategy pinned --max-in-flight 10")]
    Update {
        /// Group name.
        name: String,
        #[command(flatten)]
        settings: GroupSettingsArgs,
    },
    /// Delete a group, its progress and its parked events; its members are disconnected.
    #[command(after_help = "Examples:
  ordo groups delete billing")]
    Delete {
        /// Group name.
        name: String,
    },
    /// List the events parked in a group's dead-letter queue, in offset order.
    #[command(after_help = "Examples:
  ordo groups parked billing
  ordo --json groups parked billing --all")]
    Parked {
        /// Group name.
        name: String,
        /// Only parked events with this offset or above.
        #[arg(
            long,
            default_value_t = 0,
            hide_default_value = true,
            value_name = "OFFSET"
        )]
        from: u64,
        /// Events per page (server default 50, at most 500).
        #[arg(long, default_value_t = 0, hide_default_value = true)]
        page_size: u32,
        /// Fetch every page.
        #[arg(long)]
        all: bool,
    },
    /// Deliver parked events again, with a fresh delivery count.
    #[command(after_help = "Examples:
  ordo groups replay billing                 # up to 100 (--limit), oldest first
  ordo groups replay billing --all           # every parked event
  ordo groups replay billing --from 42 --to 42   # just the event at offset 42")]
    Replay {
        /// Group name.
        name: String,
        /// Only parked events with this offset or above.
        #[arg(
            long,
            default_value_t = 0,
            hide_default_value = true,
            value_name = "OFFSET"
        )]
        from: u64,
        /// Only parked events with this offset or below.
        #[arg(
            long,
            default_value_t = 0,
            hide_default_value = true,
            value_name = "OFFSET"
        )]
        to: u64,
        /// Most events replayed per call (server default 100, at most 1000).
        #[arg(long, default_value_t = 0, hide_default_value = true)]
        limit: u32,
        /// Call again until every parked event in the range is replayed.
        #[arg(long)]
        all: bool,
    },
}

#[cfg(test)]
mod tls_flag_tests {
    use clap::Parser;

    use super::Cli;

    /// The short names the security docs use (`--ca`, `--cert`, `--key`) work as well.
    #[test]
    fn short_tls_flag_names_are_aliases() {
        let cli = Cli::try_parse_from([
            "ordo", "--ca", "ca.pem", "--cert", "c.pem", "--key", "c.key", "health",
        ])
        .expect("parses");
        assert_eq!(cli.ca_cert.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert_eq!(
            cli.client_cert.as_deref(),
            Some(std::path::Path::new("c.pem"))
        );
        assert_eq!(
            cli.client_key.as_deref(),
            Some(std::path::Path::new("c.key"))
        );
        assert!(Cli::try_parse_from(["ordo", "--cert", "c.pem", "health"]).is_err());
    }
}
