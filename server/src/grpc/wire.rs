//! Generated server-side types for `ordo.v1.EventService` and `ordo.v1.ConsumerService` (see
//! `server/proto/wire/`).
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
    v1::{
        consumer_service_server::{ConsumerService, ConsumerServiceServer},
        event_service_server::{EventService, EventServiceServer},
    },
    wire::{
        ConsumeFrame, DeliveryFrame, SubscribeFrame, consume_frame::Message as ConsumeMessage,
        subscribe_frame::Message as Frame,
    },
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

    /// The delivery the server sends must decode as the public ConsumeResponse.
    #[test]
    fn consume_frame_is_wire_identical_to_consume_response() {
        use ordo_api::v1::{ConsumeResponse, Delivery, consume_response};

        use super::{ConsumeFrame, ConsumeMessage, DeliveryFrame};
        let event = Event {
            offset: 9,
            id: "e-9".into(),
            stream_id: "s".into(),
            ..Default::default()
        };
        let deadline = prost_types::Timestamp {
            seconds: 5,
            nanos: 7,
        };
        let frame = ConsumeFrame {
            message: Some(ConsumeMessage::Delivery(DeliveryFrame {
                delivery_id: "g/9/2".into(),
                attempt: 2,
                event: event.encode_to_vec().into(),
                ack_deadline: Some(deadline),
            })),
        };
        let decoded = ConsumeResponse::decode(frame.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(
            decoded.message,
            Some(consume_response::Message::Delivery(Delivery {
                delivery_id: "g/9/2".into(),
                attempt: 2,
                event: Some(event),
                ack_deadline: Some(deadline),
            }))
        );
    }
}
