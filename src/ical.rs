//! Lossless iCalendar content lines and the calendar-address rewriter.
//!
//! PLACEHOLDER: the interface below is the contract; the implementation is being written.

use crate::address::{AddressForm, CalAddress, Principal};
use std::collections::HashMap;

/// A resource that is not a calendar object, with the line where that shows.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IcalError {
    /// 1-based physical line (0 when it is about the whole file).
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for IcalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "line {}: {}", self.line, self.reason)
        } else {
            f.write_str(&self.reason)
        }
    }
}

/// One place a calendar user address appears.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FoundAddress {
    /// 1-based physical line where the content line starts.
    pub line: usize,
    /// Upper-cased property name: ORGANIZER, ATTENDEE, VOTER, X-CALENDARSERVER-PERUSER-UID,
    /// X-CALENDARSERVER-MODIFIED-BY, or X-CALENDARSERVER-ATTENDEE-COMMENT (for its
    /// X-CALENDARSERVER-ATTENDEE-REF parameter).
    pub property: String,
    /// The address as written (parameter values unquoted and RFC 6868-decoded).
    pub value: String,
    /// CN parameter, if any.
    pub cn: Option<String>,
    /// EMAIL parameter, if any.
    pub email: Option<String>,
    /// CUTYPE parameter, if any.
    pub cutype: Option<String>,
}

/// What a calendar object holds that the reconciler cares about.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CalendarInfo {
    /// UID of the first component that has one.
    pub uid: Option<String>,
    /// Value of the first ORGANIZER.
    pub organizer: Option<String>,
    pub addresses: Vec<FoundAddress>,
}

/// Reads a calendar object (read-only): checks its structure and lists its addresses.
pub fn scan(bytes: &[u8]) -> Result<CalendarInfo, IcalError> {
    let _ = bytes;
    Ok(CalendarInfo::default())
}

/// Finds the principal an address resolves to.
pub trait Resolve {
    fn resolve(&self, addr: &CalAddress) -> Option<&Principal>;
}

/// A map keyed by [`CalAddress::key`].
impl Resolve for HashMap<String, Principal> {
    fn resolve(&self, addr: &CalAddress) -> Option<&Principal> {
        self.get(&addr.key())
    }
}

#[derive(Clone, Copy, Debug)]
pub struct RewriteOptions {
    pub form: AddressForm,
}

/// One property the rewriter changed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// 1-based physical line where the old content line started.
    pub line: usize,
    pub property: String,
    /// Old and new address value (for ORGANIZER/ATTENDEE/...), as written.
    pub old_value: String,
    pub new_value: String,
    /// The whole old and new logical (unfolded) lines, lossily decoded for reports.
    pub old_line: String,
    pub new_line: String,
}

pub struct Rewritten {
    /// The new bytes (equal to the input when `changes` is empty).
    pub bytes: Vec<u8>,
    pub changes: Vec<Change>,
}

/// Rewrites every principal reference that `resolver` resolves; every other byte is kept.
pub fn rewrite(
    bytes: &[u8],
    resolver: &dyn Resolve,
    opts: &RewriteOptions,
) -> Result<Rewritten, IcalError> {
    let _ = (resolver, opts);
    Ok(Rewritten {
        bytes: bytes.to_vec(),
        changes: Vec::new(),
    })
}
