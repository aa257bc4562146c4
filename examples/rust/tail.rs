//! A minimal consumer on the `ordo_client` library: prints order events and survives server
//! restarts; with a cursor file, restarting this program resumes too.
//!
//! ```sh
//! cargo run -p ordo-client --example tail -- http://127.0.0.1:50051 orders.cursor
//! ```

use ordo_client::{ClientError, OrdoClient, Start, SubscribeOptions, SubscriptionItem};
use tokio_stream::StreamExt;

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let client = OrdoClient::connect(addr).await?;
    let mut options = SubscribeOptions::new()
        .start(Start::Beginning)
        .event_type("order.*");
    if let Some(cursor) = args.next() {
        options = options.cursor_file(cursor);
    }
    let mut events = client.subscribe(options)?;
    loop {
        let item = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            item = events.next() => item,
        };
        let Some(item) = item else { break };
        match item? {
            SubscriptionItem::Event(event) => {
                println!(
                    "{:>6}  {:<22} {}",
                    event.offset, event.r#type, event.stream_id
                )
            }
            SubscriptionItem::CaughtUp { head_offset } => {
                println!("--- caught up at {head_offset}, now live ---")
            }
            SubscriptionItem::Reconnecting { reason, delay, .. } => {
                eprintln!("connection lost ({reason}); retrying in {delay:?}")
            }
            _ => {}
        }
    }
    // Save the position of everything printed, so the next run starts right after it.
    events.commit()
}
