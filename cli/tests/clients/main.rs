//! The Rust clients against a real server: the `ordo` CLI (commands, output, exit codes, follow
//! and resume across restarts, consumer groups) and the `ordo-client` library it is built on
//! (typed errors, self-resuming subscriptions and consumers, TLS and tokens). One binary, since both need the `ordo` binary.

mod admin;
mod cli;
mod cli_groups;
mod client_resume;
mod consumer;
mod producer;

use ordo_api::v1::{Event, ReadEventsRequest, StartPosition, start_position::Position};
use ordo_client::OrdoClient;

/// Every event in the log, in order, paging with ReadEvents.
pub async fn read_all(client: &OrdoClient) -> Vec<Event> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = client
            .read_events(ReadEventsRequest {
                start: Some(StartPosition {
                    position: Some(Position::AfterOffset(after)),
                }),
                filter: None,
                limit: 1000,
                ..Default::default()
            })
            .await
            .expect("read events");
        all.extend(page.events);
        after = page.next_after_offset;
        if after >= page.head_offset {
            return all;
        }
    }
}
