//! How the steps of a batch ended, recorded together once the batch is durable.

use crate::error::Result;
use crate::state::journal_rows as rows;
use crate::state::{State, StepState};

/// How one step of a batch ended.
pub(super) struct Mark {
    /// The step number.
    pub(super) seq: i64,
    /// Done or skipped.
    pub(super) state: StepState,
    /// Why (a skipped step), or a remark.
    pub(super) detail: String,
}

impl Mark {
    /// A step that ended as `state`, for the reason `detail`.
    pub(super) fn new(seq: i64, state: StepState, detail: impl Into<String>) -> Mark {
        Mark {
            seq,
            state,
            detail: detail.into(),
        }
    }
}

/// Records how a batch's steps ended, in one transaction.
pub(super) fn record(state: &mut State, run_id: i64, marks: Vec<Mark>) -> Result<()> {
    let tx = state.conn.transaction()?;
    for m in marks {
        rows::mark_step(&tx, run_id, m.seq, m.state, &m.detail)?;
    }
    tx.commit()?;
    Ok(())
}
