//! Batch admission: what the aggregator does with an agent's request, from the agent run's cursor alone.
//!
//! Batches of one agent run (node and epoch) are numbered from 1 without gaps; the aggregator applies batch `n`
//! only after `n - 1`, so an acknowledged batch is never lost and none is applied twice. The one exception is a
//! gap the agent itself announces: batches before its oldest held one were dropped by the agent (its buffer was
//! full) and are not coming, so waiting for them would stall the run forever. That gap is bounded: a run the
//! aggregator knows may not jump more than [`MAX_SEQ_JUMP`] batches ahead (no agent buffer holds that many, and
//! a jump to the end of the numbers would make every later batch of the real run a duplicate).

/// What to do with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// No batch: the agent reports its counters and asks where the aggregator is.
    Heartbeat,
    /// Already applied: acknowledge it again and do nothing.
    Duplicate,
    /// Not the next batch, and the agent still holds the missing ones: it must send from `expected` on.
    Resend {
        /// The batch to send next.
        expected: u64,
    },
    /// Refused: it jumps more than [`MAX_SEQ_JUMP`] batches past the last applied one of a known run.
    TooFar {
        /// The batch expected next.
        expected: u64,
    },
    /// Apply it. `missed` batches before it were dropped by the agent and are counted as lost.
    Apply {
        /// Batches between the last applied one and this one that will never come.
        missed: u64,
    },
}

/// Most batches a known run may skip at once (2^20: over a week of batches at one a second, longer than any
/// agent's buffer or the retention of a run's cursor).
pub const MAX_SEQ_JUMP: u64 = 1 << 20;

/// Decides on batch `seq` (none for a heartbeat) of a run whose last applied batch is `applied`; `oldest` is
/// the oldest batch the agent says it still holds.
pub fn admit(applied: u64, seq: Option<u64>, oldest: Option<u64>) -> Admission {
    let Some(seq) = seq else {
        return Admission::Heartbeat;
    };
    if seq <= applied {
        return Admission::Duplicate;
    }
    let next = applied.saturating_add(1);
    if seq > next && oldest.is_none_or(|o| o <= next) {
        return Admission::Resend { expected: next };
    }
    let missed = seq - next;
    if applied > 0 && missed > MAX_SEQ_JUMP {
        return Admission::TooFar { expected: next };
    }
    Admission::Apply { missed }
}

#[cfg(test)]
mod tests {
    use super::{Admission, MAX_SEQ_JUMP, admit};

    #[test]
    fn batches_are_applied_in_order_once() {
        assert_eq!(admit(0, None, None), Admission::Heartbeat);
        assert_eq!(admit(0, Some(1), Some(1)), Admission::Apply { missed: 0 });
        assert_eq!(admit(4, Some(5), None), Admission::Apply { missed: 0 });
        // Sent again after a lost acknowledgement: nothing is applied twice.
        assert_eq!(admit(5, Some(5), Some(5)), Admission::Duplicate);
        assert_eq!(admit(5, Some(2), Some(2)), Admission::Duplicate);
    }

    #[test]
    fn a_gap_waits_for_the_missing_batches_unless_the_agent_dropped_them() {
        // The agent still holds batch 3 (or does not say): it must send from 3.
        assert_eq!(
            admit(2, Some(5), Some(3)),
            Admission::Resend { expected: 3 }
        );
        assert_eq!(admit(2, Some(5), None), Admission::Resend { expected: 3 });
        assert_eq!(
            admit(2, Some(5), Some(1)),
            Admission::Resend { expected: 3 }
        );
        // Its oldest is 5: 3 and 4 are gone for good, counted as missed.
        assert_eq!(admit(2, Some(5), Some(5)), Admission::Apply { missed: 2 });
        // A new run starts from nothing.
        assert_eq!(
            admit(0, Some(40), Some(40)),
            Admission::Apply { missed: 39 }
        );
    }

    #[test]
    fn a_known_run_may_not_jump_far_ahead() {
        assert_eq!(
            admit(7, Some(8 + MAX_SEQ_JUMP), Some(8 + MAX_SEQ_JUMP)),
            Admission::Apply {
                missed: MAX_SEQ_JUMP
            }
        );
        assert_eq!(
            admit(7, Some(9 + MAX_SEQ_JUMP), Some(9 + MAX_SEQ_JUMP)),
            Admission::TooFar { expected: 8 }
        );
        assert_eq!(
            admit(7, Some(u64::MAX), Some(u64::MAX)),
            Admission::TooFar { expected: 8 }
        );
    }

    #[test]
    fn hostile_numbers_do_not_overflow() {
        assert_eq!(admit(u64::MAX, Some(u64::MAX), None), Admission::Duplicate);
        assert_eq!(
            admit(u64::MAX - 1, Some(u64::MAX), None),
            Admission::Apply { missed: 0 }
        );
        assert_eq!(
            admit(0, Some(u64::MAX), Some(u64::MAX)),
            Admission::Apply {
                missed: u64::MAX - 1
            }
        );
    }

    /// The exactly-once protocol as a whole, under a hostile network and crashes: an agent that numbers its
    /// batches and resends what is not acknowledged (as `weir_agent::Exporter::step` does: `sent`, `acked`,
    /// `expected`, a timeout sends again from the last acknowledged), an aggregator that admits by [`admit`],
    /// applies, and acknowledges only what a checkpoint made durable, losing everything else when it restarts.
    /// Requests and replies are dropped, duplicated and reordered at random. Every record is durably counted at
    /// most once at every moment, and once the network behaves, exactly once.
    mod exactly_once {
        use super::super::{Admission, admit};
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        #[derive(Clone, Debug)]
        enum Event {
            /// The agent seals a batch of this many records.
            Seal(u8),
            /// The agent sends its next request.
            Send,
            /// The network delivers the request at this position (modulo the queue), or drops or duplicates it.
            Deliver(usize),
            DropRequest(usize),
            Duplicate(usize),
            /// A reply reaches the agent, or is lost.
            Reply(usize),
            DropReply(usize),
            /// The agent gives up waiting: everything not acknowledged is sent again.
            Timeout,
            /// The aggregator writes a checkpoint.
            Checkpoint,
            /// The aggregator crashes and restarts from its last checkpoint.
            Restart,
        }

        fn event() -> impl Strategy<Value = Event> {
            prop_oneof![
                2 => (1u8..5).prop_map(Event::Seal),
                4 => Just(Event::Send),
                4 => any::<usize>().prop_map(Event::Deliver),
                1 => any::<usize>().prop_map(Event::DropRequest),
                1 => any::<usize>().prop_map(Event::Duplicate),
                4 => any::<usize>().prop_map(Event::Reply),
                1 => any::<usize>().prop_map(Event::DropReply),
                1 => Just(Event::Timeout),
                2 => Just(Event::Checkpoint),
                1 => Just(Event::Restart),
            ]
        }

        /// A request: the batch (number and its records' ids) or a heartbeat, and the oldest batch held.
        #[derive(Clone, Debug)]
        struct Request {
            batch: Option<(u64, Vec<u64>)>,
            oldest: u64,
        }

        /// A reply: applied, acked, expected.
        type Reply = (u64, u64, Option<u64>);

        #[derive(Default)]
        struct Agent {
            /// Sealed batches not yet acknowledged, by number.
            held: BTreeMap<u64, Vec<u64>>,
            next_seq: u64,
            next_record: u64,
            sent: u64,
            acked: u64,
        }

        impl Agent {
            fn request(&self) -> Request {
                let oldest = self
                    .held
                    .keys()
                    .next()
                    .copied()
                    .unwrap_or(self.next_seq + 1);
                let batch = self
                    .held
                    .range(self.sent + 1..)
                    .next()
                    .map(|(s, r)| (*s, r.clone()));
                Request { batch, oldest }
            }

            fn reply(&mut self, sent: Option<u64>, (applied, acked, expected): Reply) {
                match expected {
                    Some(e) => self.sent = e.saturating_sub(1),
                    None => {
                        if let Some(s) = sent {
                            self.sent = s;
                        }
                        self.sent = self.sent.max(applied);
                    }
                }
                if acked > self.acked {
                    self.acked = acked;
                    self.held.retain(|&s, _| s > acked);
                }
            }
        }

        #[derive(Default)]
        struct Aggregator {
            applied: u64,
            /// Counted since the last checkpoint, and durably.
            counted: Vec<u64>,
            durable_cursor: u64,
            durable: Vec<u64>,
        }

        impl Aggregator {
            fn take(&mut self, r: &Request) -> Reply {
                let seq = r.batch.as_ref().map(|(s, _)| *s);
                match admit(self.applied, seq, Some(r.oldest)) {
                    Admission::Heartbeat | Admission::Duplicate => {
                        (self.applied, self.durable_cursor, None)
                    }
                    Admission::Resend { expected } | Admission::TooFar { expected } => {
                        (self.applied, self.durable_cursor, Some(expected))
                    }
                    Admission::Apply { .. } => {
                        if let Some((s, records)) = &r.batch {
                            self.applied = *s;
                            self.counted.extend(records);
                        }
                        (self.applied, self.durable_cursor, None)
                    }
                }
            }

            fn checkpoint(&mut self) {
                self.durable.append(&mut self.counted);
                self.durable_cursor = self.applied;
            }

            fn restart(&mut self) {
                self.counted.clear();
                self.applied = self.durable_cursor;
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]
            #[test]
            fn every_record_counts_once(events in proptest::collection::vec(event(), 1..300)) {
                let (mut agent, mut agg) = (Agent::default(), Aggregator::default());
                let mut requests: Vec<Request> = Vec::new();
                let mut replies: Vec<(Option<u64>, Reply)> = Vec::new();
                let at = |i: usize, n: usize| i % n;
                let check = |agg: &Aggregator| {
                    let mut seen = agg.durable.clone();
                    seen.extend(&agg.counted);
                    seen.sort_unstable();
                    let n = seen.len();
                    seen.dedup();
                    prop_assert_eq!(seen.len(), n, "a record was counted twice");
                    Ok(())
                };
                for e in events {
                    match e {
                        Event::Seal(n) => {
                            agent.next_seq += 1;
                            let ids = (0..u64::from(n)).map(|i| agent.next_record + i).collect();
                            agent.next_record += u64::from(n);
                            agent.held.insert(agent.next_seq, ids);
                        }
                        Event::Send => {
                            let r = agent.request();
                            if let Some((s, _)) = &r.batch {
                                // In flight: the next request goes on after it (the exporter's `sent`
                                // moves when the reply comes; sending ahead models a pipeline of retries).
                                agent.sent = agent.sent.max(*s);
                            }
                            requests.push(r);
                        }
                        Event::Deliver(i) if !requests.is_empty() => {
                            let r = requests.remove(at(i, requests.len()));
                            let reply = agg.take(&r);
                            replies.push((r.batch.map(|(s, _)| s), reply));
                        }
                        Event::DropRequest(i) if !requests.is_empty() => {
                            requests.remove(at(i, requests.len()));
                        }
                        Event::Duplicate(i) if !requests.is_empty() => {
                            let r = requests[at(i, requests.len())].clone();
                            requests.push(r);
                        }
                        Event::Reply(i) if !replies.is_empty() => {
                            let (sent, reply) = replies.remove(at(i, replies.len()));
                            agent.reply(sent, reply);
                        }
                        Event::DropReply(i) if !replies.is_empty() => {
                            replies.remove(at(i, replies.len()));
                        }
                        Event::Timeout => agent.sent = agent.acked,
                        Event::Checkpoint => agg.checkpoint(),
                        Event::Restart => agg.restart(),
                        _ => {}
                    }
                    check(&agg)?;
                }
                // The network behaves from here on: what is in flight arrives or is lost, the agent times out
                // and sends everything not acknowledged again, in order, checkpoints follow.
                // Replies still in flight are lost.
                replies.clear();
                for r in std::mem::take(&mut requests) {
                    agg.take(&r);
                }
                for _ in 0..(agent.next_seq + 5) * 2 {
                    agent.sent = agent.sent.min(agent.acked);
                    let r = agent.request();
                    let sent = r.batch.as_ref().map(|(s, _)| *s);
                    let reply = agg.take(&r);
                    agent.reply(sent, reply);
                    agg.checkpoint();
                    check(&agg)?;
                }
                prop_assert!(agent.held.is_empty(), "batches never acknowledged: {:?}", agent.held.keys());
                let mut durable = agg.durable.clone();
                durable.sort_unstable();
                let all: Vec<u64> = (0..agent.next_record).collect();
                prop_assert_eq!(durable, all, "every record durably counted exactly once");
            }
        }
    }
}
