//! Generates the server side of `ordo.v1.EventService` and `ordo.v1.ConsumerService` from
//! `server/proto/wire/` (see `frame.proto` there for why): same paths and wire format as the
//! public API, but Subscribe and Consume stream pre-encoded events. Messages other than the frame are the public `ordo_api` types.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(
        ["wire/event_service.proto", "wire/consumer_service.proto"],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(".ordo.v1", "::ordo_api::v1")
        .bytes(".ordo.wire")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
