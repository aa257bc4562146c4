//! Generated server-side types for `ordo.v1.EventService` (see `server/proto/wire/`).
#![allow(clippy::all, missing_docs)]

pub mod ordo {
    pub mod v1 {
        tonic::include_proto!("ordo.v1");
    }
    pub mod wire {
        tonic::include_proto!("ordo.wire");
    }
}

pub use ordo::{
    v1::event_service_server::{EventService, EventServiceServer},
    wire::{SubscribeFrame, subscribe_frame::Message as Frame},
};

#[cfg(test)]
mod tests {
    use ordo_api::v1::{Event, SubscribeResponse, subscribe_response::Message};
    use prost::Message as _;

    use super::{Frame, SubscribeFrame};

    /// The frame the server sends must decode as the public SubscribeResponse.
    #[test]
    fn frame_is_wire_identical_to_subscribe_response() {
        let event = Event {
            offset: 7,
            id: "e-7".into(),
            r#type: "t".into(),
            stream_id: "s".into(),
            stream_version: 3,
            ..Default::default()
        };
        let frame = SubscribeFrame {
            message: Some(Frame::Event(event.encode_to_vec().into())),
        };
        let decoded = SubscribeResponse::decode(frame.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded.message, Some(Message::Event(event)));
    }
}
