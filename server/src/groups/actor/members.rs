//! Members joining and leaving; a member's deliveries fail (counted) and go to the others
//! when it leaves or is dropped.

use super::*;

impl Actor {
    pub(super) fn join(&mut self, member_name: String, asked: u32) -> Joined {
        let id = self.next_member;
        self.next_member += 1;
        let max_in_flight = match asked {
            0 => self.group.max_in_flight,
            n => n.min(self.group.max_in_flight),
        };
        let (tx, deliveries) = mpsc::channel(max_in_flight as usize + MEMBER_SLACK);
        let (end, ended) = oneshot::channel();
        debug!(group = %self.group.name, member = id, name = %member_name, max_in_flight, "member joined");
        self.members.insert(
            id,
            MemberOut {
                name: member_name,
                max_in_flight,
                in_flight: 0,
                tx,
                end: Some(end),
            },
        );
        Joined {
            member_id: id,
            max_in_flight,
            group: self.status(),
            deliveries,
            ended,
        }
    }

    /// Drops a member; its deliveries fail (counted) and go to the others at once.
    pub(super) fn leave(&mut self, member: u64, reason: &str) {
        let Some(out) = self.members.remove(&member) else {
            return;
        };
        debug!(group = %self.group.name, member, name = %out.name, in_flight = out.in_flight, reason, "member left");
        let held: Vec<u64> = self
            .window
            .iter()
            .filter(|(_, e)| matches!(e.state, State::InFlight { member: m, .. } if m == member))
            .map(|(offset, _)| *offset)
            .collect();
        for offset in held {
            self.fail_delivery(offset, reason, Some(Duration::ZERO));
        }
    }

    /// Ends a member's stream with `err` and drops it.
    pub(super) fn kick(&mut self, member: u64, err: OrdoError) {
        if let Some(out) = self.members.get_mut(&member)
            && let Some(end) = out.end.take()
        {
            let _ = end.send(err);
        }
        self.leave(member, "member dropped");
    }

    pub(super) fn end_all(&mut self, err: impl Fn() -> OrdoError) {
        let ids: Vec<u64> = self.members.keys().copied().collect();
        for id in ids {
            self.kick(id, err());
        }
    }

    /// A storage failure: every member's stream ends with it; the group task stops.
    pub(super) fn fail(&mut self, err: OrdoError) {
        warn!(group = %self.group.name, error = %err, "consumer group stopped");
        let message = err.to_string();
        self.end_all(|| OrdoError::Unavailable(format!("consumer group failed: {message}")));
    }
}
