//! The acks, nacks and extends of one connection: requests not sent yet (where acks queued
//! together are merged into one request) and the settles waiting for the server's answer.
//!
//! Answers are matched by delivery id, not by order: the server answers a refused request at
//! once and an accepted one only after its write is durable, so answers can overtake each
//! other. A merged ack request is all-or-nothing on the server, so when one is refused, each of
//! its ids is sent again alone: one stale id must not fail the acks it happened to travel with.

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use ordo_api::v1::{
    AckDeliveries, ConsumeRequest, ExtendDeliveries, NackDeliveries,
    consume_request::Message as Request,
};
use tokio::sync::oneshot;
use tonic::{Code, Status};

use super::delivery::How;
use crate::error::{ClientError, Result};

/// Most ids in one request (the server's limit).
const MAX_IDS: usize = 1_000;

struct Waiter {
    how: How,
    reply: oneshot::Sender<Result<()>>,
}

#[derive(Default)]
pub(super) struct Pending {
    /// Requests waiting for room in the stream, oldest first.
    outgoing: VecDeque<ConsumeRequest>,
    /// Settles sent or queued, waiting for `settled` or `rejected`, by delivery id.
    waiting: HashMap<String, Waiter>,
}

impl Pending {
    /// Requests waiting to be sent.
    pub fn queued(&self) -> usize {
        self.outgoing.len()
    }

    /// Nothing to send and no answer owed.
    pub fn is_idle(&self) -> bool {
        self.outgoing.is_empty() && self.waiting.is_empty()
    }

    pub fn pop(&mut self) -> Option<ConsumeRequest> {
        self.outgoing.pop_front()
    }

    pub fn settle(&mut self, id: String, how: How, reply: oneshot::Sender<Result<()>>) {
        if self.waiting.contains_key(&id) {
            let _ = reply.send(Err(ClientError::FailedPrecondition(format!(
                "delivery {id} is already being settled"
            ))));
            return;
        }
        self.push(&id, &how);
        self.waiting.insert(id, Waiter { how, reply });
    }

    pub fn extend(&mut self, id: String, by: Option<Duration>) {
        let extend_ms = by.map_or(0, |by| u32::try_from(by.as_millis()).unwrap_or(u32::MAX));
        self.outgoing.push_back(ConsumeRequest {
            message: Some(Request::Extend(ExtendDeliveries {
                delivery_ids: vec![id],
                extend_ms,
            })),
        });
    }

    /// Every id of one request is durable.
    pub fn settled(&mut self, ids: Vec<String>) {
        for id in ids {
            if let Some(waiter) = self.waiting.remove(&id) {
                let _ = waiter.reply.send(Ok(()));
            }
        }
    }

    /// The server refused one request (none of its ids was settled). Ids without a waiter were
    /// an extend's, or answered already; they need nothing.
    pub fn rejected(&mut self, ids: Vec<String>, code: i32, message: String) {
        if ids.len() > 1 {
            for id in ids {
                if let Some(waiter) = self.waiting.get(&id) {
                    let how = waiter.how.clone();
                    self.outgoing.push_back(request(vec![id], &how));
                }
            }
            return;
        }
        for id in ids {
            if let Some(waiter) = self.waiting.remove(&id) {
                let status = Status::new(Code::from_i32(code), message.clone());
                let _ = waiter.reply.send(Err(ClientError::from(status)));
            }
        }
    }

    /// The connection ended: nothing queued will be sent and no answer will come. Returns how
    /// many settles were left unanswered.
    pub fn fail_all(&mut self, reason: &str) -> usize {
        self.outgoing.clear();
        let left = self.waiting.len();
        for (id, waiter) in self.waiting.drain() {
            let _ = waiter.reply.send(Err(ClientError::Unavailable(format!(
                "the stream broke before delivery {id} was confirmed ({reason}); it will be delivered again"
            ))));
        }
        left
    }

    /// Queues the request for one settle, merged into the last queued ack request if it is one
    /// with room.
    fn push(&mut self, id: &str, how: &How) {
        if let How::Ack = how
            && let Some(ConsumeRequest {
                message: Some(Request::Ack(ack)),
            }) = self.outgoing.back_mut()
            && ack.delivery_ids.len() < MAX_IDS
        {
            ack.delivery_ids.push(id.to_string());
            return;
        }
        self.outgoing.push_back(request(vec![id.to_string()], how));
    }
}

fn request(delivery_ids: Vec<String>, how: &How) -> ConsumeRequest {
    let message = match how {
        How::Ack => Request::Ack(AckDeliveries { delivery_ids }),
        How::Nack(nack) => Request::Nack(NackDeliveries {
            delivery_ids,
            action: nack.action as i32,
            delay_ms: nack
                .delay
                .map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
            reason: nack.reason.clone(),
        }),
    };
    ConsumeRequest {
        message: Some(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(request: &ConsumeRequest) -> Vec<String> {
        match &request.message {
            Some(Request::Ack(ack)) => ack.delivery_ids.clone(),
            Some(Request::Nack(nack)) => nack.delivery_ids.clone(),
            Some(Request::Extend(extend)) => extend.delivery_ids.clone(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn queued_acks_merge_and_a_refused_batch_is_resent_id_by_id() {
        let mut pending = Pending::default();
        let (a, mut a_answer) = oneshot::channel();
        let (b, mut b_answer) = oneshot::channel();
        pending.settle("g/1/1".into(), How::Ack, a);
        pending.settle("g/2/1".into(), How::Ack, b);
        assert_eq!(pending.queued(), 1, "two acks, one request");
        let batch = pending.pop().expect("a request");
        assert_eq!(ids(&batch), ["g/1/1", "g/2/1"]);

        pending.rejected(ids(&batch), Code::FailedPrecondition as i32, "stale".into());
        assert!(a_answer.try_recv().is_err(), "not answered yet: resent");
        let first = pending.pop().expect("resend");
        let second = pending.pop().expect("resend");
        assert_eq!(
            (ids(&first), ids(&second)),
            (vec!["g/1/1".to_string()], vec!["g/2/1".to_string()])
        );

        pending.rejected(ids(&first), Code::FailedPrecondition as i32, "stale".into());
        pending.settled(ids(&second));
        assert!(matches!(
            a_answer.try_recv(),
            Ok(Err(ClientError::FailedPrecondition(m))) if m == "stale"
        ));
        assert!(matches!(b_answer.try_recv(), Ok(Ok(()))));
        assert!(pending.is_idle());
    }

    #[test]
    fn nacks_are_not_merged_and_a_break_fails_what_is_left() {
        let mut pending = Pending::default();
        let (a, mut a_answer) = oneshot::channel();
        let (b, _b_answer) = oneshot::channel();
        pending.settle("g/1/1".into(), How::Nack(super::super::Nack::park()), a);
        pending.settle("g/2/1".into(), How::Ack, b);
        assert_eq!(pending.queued(), 2);
        assert_eq!(pending.fail_all("reset"), 2);
        assert!(matches!(
            a_answer.try_recv(),
            Ok(Err(ClientError::Unavailable(_)))
        ));
        assert!(pending.is_idle());
    }
}
