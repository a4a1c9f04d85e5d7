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
}
