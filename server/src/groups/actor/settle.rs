//! Acks, nacks, extends, timeouts, parking and replay: everything that settles an event or
//! sends it round again, checked against the current delivery first.

use super::*;

impl Actor {
    pub(super) fn settle(&mut self, origin: Origin, raw: Vec<String>, how: How) {
        let member = match &origin {
            Origin::Member(id, _) => Some(*id),
            Origin::Unary(_) => None,
        };
        let ids = match delivery_id::parse_all(&raw, &self.group.name)
            .and_then(|ids| self.check(&ids, member).map(|()| ids))
        {
            Ok(ids) => ids,
            Err(err) => {
                self.answer(origin, raw, Err(err));
                return;
            }
        };
        for id in ids {
            match &how {
                How::Ack => self.ack(id.offset),
                How::Retry { delay, reason } => self.fail_delivery(id.offset, reason, *delay),
                How::Park { reason } => self.park(id.offset, reason),
            }
        }
        self.confirms.push(Confirm::Settle(origin, raw));
    }

    pub(super) fn extend(
        &mut self,
        member: u64,
        answer: mpsc::OwnedPermit<Out>,
        raw: Vec<String>,
        extend: Option<Duration>,
    ) {
        let ids = match delivery_id::parse_all(&raw, &self.group.name)
            .and_then(|ids| self.check(&ids, Some(member)).map(|()| ids))
        {
            Ok(ids) => ids,
            Err(err) => {
                self.answer(Origin::Member(member, answer), raw, Err(err));
                return;
            }
        };
        let deadline = Instant::now() + extend.unwrap_or(self.group.ack_timeout());
        for id in ids {
            if let Some(entry) = self.window.get_mut(&id.offset)
                && let State::InFlight { deadline: old, .. } = &mut entry.state
            {
                self.timers.remove(&(*old, id.offset));
                *old = deadline;
                self.timers.insert((deadline, id.offset));
            }
        }
    }

    /// Every id must name the current delivery of an event in flight (held by `member`, when
    /// given); the first that does not decides the error, and nothing is settled.
    pub(super) fn check(&self, ids: &[DeliveryId], member: Option<u64>) -> Result<(), OrdoError> {
        for id in ids {
            let Some(entry) = self.window.get(&id.offset) else {
                if self.progress.is_settled(id.offset) {
                    return Err(OrdoError::FailedPrecondition(format!(
                        "delivery {id} is already settled (acked or parked); nothing to do"
                    )));
                }
                return Err(not_made(id));
            };
            let current = match &entry.state {
                State::InFlight {
                    member: holder,
                    attempt,
                    ..
                } if *attempt == id.attempt => {
                    if let Some(me) = member
                        && me != *holder
                    {
                        return Err(OrdoError::FailedPrecondition(format!(
                            "delivery {id} was sent to another member of the group; only that member, or the unary Ack/Nack, can settle it"
                        )));
                    }
                    continue;
                }
                State::InFlight { attempt, .. } => *attempt,
                State::Ready | State::Waiting { .. } => entry.failures,
            };
            if id.attempt <= current {
                return Err(OrdoError::FailedPrecondition(format!(
                    "delivery {id} is no longer current: it timed out, was nacked or its member left, and the event is delivered again; settle its newest delivery"
                )));
            }
            return Err(not_made(id));
        }
        Ok(())
    }

    pub(super) fn ack(&mut self, offset: u64) {
        let Some(entry) = self.remove(offset) else {
            return;
        };
        if entry.failures > 0 || entry.replay {
            self.writes.push(records::delete(records::failure_key(
                &self.group.name,
                offset,
            )));
        }
        self.settled(offset, entry.replay);
    }

    /// Records that an entry left the window for good: a replay ends, anything else becomes
    /// settled in the progress.
    fn settled(&mut self, offset: u64, replay: bool) {
        if replay {
            self.replaying -= 1;
        } else {
            self.progress.settle(offset);
            self.checkpoint_dirty = true;
        }
    }

    /// A delivery failed (nack, ack timeout, member gone): retry after `delay` (the backoff when
    /// None), or park when it was the last allowed.
    pub(super) fn fail_delivery(&mut self, offset: u64, reason: &str, delay: Option<Duration>) {
        let Some(entry) = self.window.get_mut(&offset) else {
            return;
        };
        if let State::InFlight {
            member, deadline, ..
        } = entry.state
        {
            self.timers.remove(&(deadline, offset));
            if let Some(out) = self.members.get_mut(&member) {
                out.in_flight = out.in_flight.saturating_sub(1);
            }
        }
        entry.state = State::Ready;
        entry.failures += 1;
        if entry.failures >= self.group.max_deliveries {
            let reason = format!(
                "{reason} (delivery {} of {})",
                entry.failures, self.group.max_deliveries
            );
            self.park(offset, &reason);
            return;
        }
        let wait = delay.unwrap_or_else(|| self.group.backoff(entry.failures));
        let until = Instant::now() + wait;
        entry.state = if wait.is_zero() {
            State::Ready
        } else {
            self.timers.insert((until, offset));
            State::Waiting { until }
        };
        let record = Failure {
            failures: entry.failures,
            not_before_ms: clock::now_ms() + wait.as_millis() as u64,
            replay: entry.replay,
        };
        self.writes.push(records::put(
            records::failure_key(&self.group.name, offset),
            &record,
        ));
    }

    pub(super) fn park(&mut self, offset: u64, reason: &str) {
        let Some(entry) = self.remove(offset) else {
            return;
        };
        let attempts = match entry.state {
            State::InFlight { attempt, .. } => attempt,
            _ => entry.failures,
        };
        info!(group = %self.group.name, offset, attempts, reason, "event parked");
        let name = self.group.name.clone();
        self.writes.push(records::put(
            records::parked_key(&name, offset),
            &Parked {
                attempts,
                reason: reason.to_string(),
                parked_at_ms: clock::now_ms(),
            },
        ));
        self.writes
            .push(records::delete(records::failure_key(&name, offset)));
        self.parked += 1;
        self.settled(offset, entry.replay);
    }

    /// Takes an entry out of the window, releasing its member slot, timer and cache.
    pub(super) fn remove(&mut self, offset: u64) -> Option<Entry> {
        let entry = self.window.remove(&offset)?;
        match entry.state {
            State::InFlight {
                member, deadline, ..
            } => {
                self.timers.remove(&(deadline, offset));
                if let Some(out) = self.members.get_mut(&member) {
                    out.in_flight = out.in_flight.saturating_sub(1);
                }
            }
            State::Waiting { until } => {
                self.timers.remove(&(until, offset));
            }
            State::Ready => {}
        }
        if let Some(bytes) = &entry.cached {
            self.cached_bytes -= bytes.len();
        }
        Some(entry)
    }

    pub(super) fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(&(at, offset)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(entry) = self.window.get_mut(&offset) else {
                continue;
            };
            match entry.state {
                State::InFlight { deadline, .. } if deadline == at => {
                    self.fail_delivery(offset, "ack timeout", None);
                }
                State::Waiting { until } if until == at => entry.state = State::Ready,
                _ => {}
            }
        }
    }

    pub(super) fn replay(
        &mut self,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Replayed, OrdoError> {
        if self.replaying + limit > MAX_REPLAYING {
            return Err(OrdoError::ResourceExhausted(format!(
                "{} replayed events of group {:?} are not settled yet; wait for them, or replay fewer than {} at once",
                self.replaying,
                self.group.name,
                MAX_REPLAYING - self.replaying
            )));
        }
        let name = self.group.name.clone();
        let prefix = records::parked_prefix(&name);
        let after = (from > 1).then(|| records::parked_key(&name, from - 1));
        let rows = self
            .log
            .scan_records(&prefix, after.as_deref(), limit + 1)?;
        let to = if to == 0 { u64::MAX } else { to };
        let mut replayed = 0u32;
        let mut next_from_offset = 0;
        for (key, _) in rows {
            let Some(offset) = records::trailing_offset(&key) else {
                continue;
            };
            if offset > to {
                break;
            }
            if replayed as usize == limit {
                next_from_offset = offset;
                break;
            }
            let Some(event) = read_present(&self.log, offset)? else {
                // Removed since it was parked: it leaves the queue, counted as trimmed.
                self.writes.push(records::delete(key));
                self.parked = self.parked.saturating_sub(1);
                self.trimmed += 1;
                self.checkpoint_dirty = true;
                continue;
            };
            self.writes.push(records::delete(key));
            self.writes.push(records::put(
                records::failure_key(&name, offset),
                &Failure {
                    failures: 0,
                    not_before_ms: 0,
                    replay: true,
                },
            ));
            self.window.insert(
                offset,
                Entry {
                    stream_id: event.key()?.stream_id.clone(),
                    stream_version: event.key()?.stream_version,
                    failures: 0,
                    replay: true,
                    state: State::Ready,
                    cached: None,
                },
            );
            self.replaying += 1;
            self.parked = self.parked.saturating_sub(1);
            replayed += 1;
        }
        info!(group = %name, replayed, from, "parked events replayed");
        Ok(Replayed {
            replayed,
            more: next_from_offset != 0,
            next_from_offset,
        })
    }
}

pub(super) fn not_made(id: &DeliveryId) -> OrdoError {
    OrdoError::NotFound(format!(
        "delivery {id} was never made; send the delivery_id of a Delivery as received"
    ))
}
