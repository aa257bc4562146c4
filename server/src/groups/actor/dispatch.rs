//! Handing ready events to members with room: round robin, or pinned by stream (one event
//! of a stream out at a time, to the stream's owner by rendezvous hashing).

use super::*;

impl Actor {
    /// Hands Ready events to members with room, by the group's strategy.
    pub(super) fn dispatch(&mut self) {
        let mut room: BTreeMap<u64, u32> = self
            .members
            .iter()
            .filter(|(_, m)| m.has_room())
            .map(|(id, m)| (*id, m.max_in_flight - m.in_flight))
            .collect();
        if room.is_empty() {
            return;
        }
        let pinned = self.group.pinned();
        let all_members: Vec<u64> = self.members.keys().copied().collect();
        let mut busy_streams: HashSet<&str> = HashSet::new();
        let mut plan: Vec<(u64, u64)> = Vec::new();
        for (offset, entry) in &self.window {
            if pinned {
                // Only the first unsettled event of a stream may be out, and only to its owner.
                if !busy_streams.insert(entry.stream_id.as_str()) || entry.state != State::Ready {
                    continue;
                }
                let Some(owner) = owner(&entry.stream_id, &all_members) else {
                    break;
                };
                if let Some(left) = room.get_mut(&owner)
                    && *left > 0
                {
                    *left -= 1;
                    plan.push((*offset, owner));
                }
            } else {
                if entry.state != State::Ready {
                    continue;
                }
                let Some(member) = next_with_room(&room, self.rr_last) else {
                    break;
                };
                self.rr_last = member;
                if let Some(left) = room.get_mut(&member) {
                    *left -= 1;
                    if *left == 0 {
                        room.remove(&member);
                    }
                }
                plan.push((*offset, member));
            }
            if room.values().all(|left| *left == 0) {
                break;
            }
        }
        for (offset, member) in plan {
            if let Err(err) = self.deliver(offset, member) {
                self.fail(err.into());
                return;
            }
        }
    }

    pub(super) fn deliver(&mut self, offset: u64, member: u64) -> Result<(), StoreError> {
        let Some(entry) = self.window.get(&offset) else {
            return Ok(());
        };
        if self.log.is_deleted(&entry.stream_id, entry.stream_version) {
            self.forget_gone(offset);
            return Ok(());
        }
        let Some(entry) = self.window.get_mut(&offset) else {
            return Ok(());
        };
        let bytes = match entry.cached.take() {
            Some(bytes) => {
                self.cached_bytes -= bytes.len();
                bytes
            }
            None => match read_present(&self.log, offset)? {
                Some(event) => event.bytes,
                None => {
                    // Its stream was deleted (or retention removed it) after the scan.
                    self.forget_gone(offset);
                    return Ok(());
                }
            },
        };
        let attempt = entry.failures + 1;
        let deadline = Instant::now() + self.group.ack_timeout();
        let id = DeliveryId {
            group: self.group.name.clone(),
            offset,
            attempt,
        };
        let message = Out::Delivery {
            delivery_id: id.to_string(),
            attempt,
            event: bytes,
            ack_deadline_ms: clock::now_ms() + u64::from(self.group.ack_timeout_ms),
        };
        let Some(out) = self.members.get_mut(&member) else {
            return Ok(());
        };
        match out.tx.try_send(message) {
            Ok(()) => {
                out.in_flight += 1;
                entry.state = State::InFlight {
                    member,
                    attempt,
                    deadline,
                };
                self.timers.insert((deadline, offset));
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                let name = out.name.clone();
                warn!(group = %self.group.name, member, name = %name, "member is not reading its deliveries; dropping it");
                self.kick(
                    member,
                    OrdoError::ResourceExhausted(format!(
                        "member {name:?} did not read its deliveries; its stream is closed and its deliveries go to other members"
                    )),
                );
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.leave(member, "member went away"),
        }
        Ok(())
    }
}

/// The member a pinned stream belongs to: rendezvous hashing, so a join or leave moves only the
/// streams that must move.
pub(super) fn owner(stream_id: &str, members: &[u64]) -> Option<u64> {
    members.iter().copied().max_by_key(|member| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        stream_id.hash(&mut hasher);
        member.hash(&mut hasher);
        hasher.finish()
    })
}

/// The member after `last` (wrapping) that has room.
pub(super) fn next_with_room(room: &BTreeMap<u64, u32>, last: u64) -> Option<u64> {
    room.range(last + 1..)
        .chain(room.range(..=last))
        .find(|(_, left)| **left > 0)
        .map(|(id, _)| *id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_what_must_move() {
        let streams: Vec<String> = (0..1000).map(|i| format!("order-{i}")).collect();
        let before: Vec<_> = streams.iter().map(|s| owner(s, &[1, 2, 3])).collect();
        let after: Vec<_> = streams.iter().map(|s| owner(s, &[1, 2, 3, 4])).collect();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert!(
            after
                .iter()
                .zip(&before)
                .all(|(a, b)| a == b || *a == Some(4))
        );
        assert!((150..350).contains(&moved), "{moved} of 1000 moved");
        assert_eq!(owner("x", &[]), None);
    }

    #[test]
    fn round_robin_wraps() {
        let room: BTreeMap<u64, u32> = [(1, 1), (3, 1), (5, 0)].into_iter().collect();
        assert_eq!(next_with_room(&room, 1), Some(3));
        assert_eq!(next_with_room(&room, 3), Some(1));
        assert_eq!(next_with_room(&room, 9), Some(1));
    }
}
