//! Lossless iCalendar content lines and the calendar-address rewriter.
//!
//! [`scan`] checks that bytes are one calendar object and lists every calendar user address in
//! it; [`rewrite`] points the addresses a [`Resolve`]r knows at their current principal, writing
//! exactly what CalendarServer would normalise them to, and keeps every other byte of the file.
//! Both are pure functions over `&[u8]`, safe to call from many threads.
//!
//! What is a calendar object here: optional UTF-8 BOM and blank lines, `BEGIN:VCALENDAR`,
//! well-formed content lines (RFC 5545 §3.1) with balanced `BEGIN`/`END`, `END:VCALENDAR`, then
//! nothing but white space. Blank lines anywhere are tolerated. Everything else is an
//! [`IcalError`] naming the physical line.

pub mod line;

use crate::address::{AddressForm, CalAddress, Guid, Principal};
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

impl std::error::Error for IcalError {}

impl IcalError {
    fn at(line: usize, reason: impl Into<String>) -> IcalError {
        IcalError {
            line,
            reason: reason.into(),
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewritten {
    /// The new bytes (equal to the input when `changes` is empty).
    pub bytes: Vec<u8>,
    pub changes: Vec<Change>,
}

/// The properties that name principals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prop {
    Organizer,
    Attendee,
    Voter,
    AttendeeComment,
    PerUserUid,
    ModifiedBy,
    Uid,
}

impl Prop {
    fn name(self) -> &'static str {
        match self {
            Prop::Organizer => "ORGANIZER",
            Prop::Attendee => "ATTENDEE",
            Prop::Voter => "VOTER",
            Prop::AttendeeComment => "X-CALENDARSERVER-ATTENDEE-COMMENT",
            Prop::PerUserUid => "X-CALENDARSERVER-PERUSER-UID",
            Prop::ModifiedBy => "X-CALENDARSERVER-MODIFIED-BY",
            Prop::Uid => "UID",
        }
    }

    #[inline]
    fn classify(name: &[u8]) -> Option<Prop> {
        // Cheap reject: every name we want starts with A, O, U, V or X.
        let first = name.first()?.to_ascii_uppercase();
        let candidates: &[Prop] = match first {
            b'A' => &[Prop::Attendee],
            b'O' => &[Prop::Organizer],
            b'U' => &[Prop::Uid],
            b'V' => &[Prop::Voter],
            b'X' if name.len() > 17 => &[Prop::AttendeeComment, Prop::PerUserUid, Prop::ModifiedBy],
            _ => return None,
        };
        candidates
            .iter()
            .copied()
            .find(|p| name.eq_ignore_ascii_case(p.name().as_bytes()))
    }
}

const REF_PARAM: &str = "X-CALENDARSERVER-ATTENDEE-REF";

/// A short, printable excerpt of a line for error messages.
fn excerpt(b: &[u8]) -> String {
    const MAX: usize = 60;
    let s = String::from_utf8_lossy(&b[..b.len().min(MAX)]);
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if b.len() > MAX {
        format!("{s}…")
    } else {
        s
    }
}

fn is_blank(b: &[u8]) -> bool {
    b.iter().all(|&c| c == b' ' || c == b'\t')
}

fn trim(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

/// Walks a calendar object, checking its structure, and calls `on_prop` for each principal
/// property (and UID) outside VTIMEZONE.
fn walk(
    bytes: &[u8],
    mut on_prop: impl FnMut(Prop, &line::LineInfo, &[u8], &line::ContentLine),
) -> Result<(), IcalError> {
    if bytes.is_empty() {
        return Err(IcalError::at(0, "empty file: not a calendar object"));
    }
    #[derive(PartialEq)]
    enum State {
        Before,
        Inside,
        After,
    }
    let mut state = State::Before;
    // Open components: names (upper case) concatenated in `names`, (end offset, line) in `stack`.
    let mut names: Vec<u8> = Vec::with_capacity(64);
    let mut stack: Vec<(usize, usize)> = Vec::with_capacity(8);
    let mut in_timezone = 0usize;
    let mut last_line = 0;
    let mut end_line = 0;
    let mut reader = line::LineReader::new(bytes);
    while let Some(l) = reader.next_line() {
        let l = l.map_err(|e| {
            IcalError::at(
                e.line,
                format!(
                    "NUL byte at column {}: binary data, not a calendar object",
                    e.column
                ),
            )
        })?;
        let info = l.info;
        let content = l.content;
        last_line = info.line + info.physical_lines - 1;
        if is_blank(content) {
            continue;
        }
        match state {
            State::After => {
                let second = line::split(content)
                    .is_ok_and(|c| c.name.eq_ignore_ascii_case(b"BEGIN") && trim(c.value).eq_ignore_ascii_case(b"VCALENDAR"));
                return Err(IcalError::at(
                    info.line,
                    if second {
                        format!("a second VCALENDAR after END:VCALENDAR at line {end_line}: a calendar object resource holds exactly one")
                    } else {
                        format!("content after END:VCALENDAR at line {end_line}: `{}`", excerpt(content))
                    },
                ));
            }
            State::Before if matches!(content[0], b' ' | b'\t') => {
                return Err(IcalError::at(
                    info.line,
                    format!("not a calendar object: expected BEGIN:VCALENDAR, found a line beginning with white space: `{}`", excerpt(content)),
                ))
            }
            State::Inside if matches!(content[0], b' ' | b'\t') => {
                return Err(IcalError::at(
                    info.line,
                    format!("folded continuation line after a blank line: `{}`", excerpt(content)),
                ))
            }
            _ => {}
        }
        let cl = match line::split(content) {
            Ok(cl) => cl,
            Err(_) if state == State::Before => {
                return Err(IcalError::at(
                    info.line,
                    format!(
                        "not a calendar object: expected BEGIN:VCALENDAR, found `{}`",
                        excerpt(content)
                    ),
                ));
            }
            Err(e) => {
                return Err(IcalError::at(
                    info.line,
                    format!("{e}: `{}`", excerpt(content)),
                ))
            }
        };
        let is_begin = cl.name.eq_ignore_ascii_case(b"BEGIN");
        if state == State::Before {
            if !(is_begin && trim(cl.value).eq_ignore_ascii_case(b"VCALENDAR")) {
                return Err(IcalError::at(
                    info.line,
                    format!(
                        "not a calendar object: expected BEGIN:VCALENDAR, found `{}`",
                        excerpt(content)
                    ),
                ));
            }
            names.extend_from_slice(b"VCALENDAR");
            stack.push((names.len(), info.line));
            state = State::Inside;
            continue;
        }
        if is_begin {
            let comp = trim(cl.value);
            if comp.is_empty() {
                return Err(IcalError::at(info.line, "BEGIN without a component name"));
            }
            if comp.eq_ignore_ascii_case(b"VCALENDAR") {
                return Err(IcalError::at(
                    info.line,
                    "BEGIN:VCALENDAR inside a VCALENDAR",
                ));
            }
            if comp.eq_ignore_ascii_case(b"VTIMEZONE") {
                in_timezone += 1;
            }
            names.extend(comp.iter().map(u8::to_ascii_uppercase));
            stack.push((names.len(), info.line));
            continue;
        }
        if cl.name.eq_ignore_ascii_case(b"END") {
            let comp = trim(cl.value);
            // `stack` is never empty while Inside.
            let (end, begun) = stack.pop().unwrap_or((0, 0));
            let start = stack.last().map_or(0, |s| s.0);
            let open = &names[start..end];
            if !comp.eq_ignore_ascii_case(open) {
                return Err(IcalError::at(
                    info.line,
                    format!(
                        "END:{} does not match BEGIN:{} at line {begun}",
                        excerpt(comp),
                        String::from_utf8_lossy(open)
                    ),
                ));
            }
            if open == b"VTIMEZONE" {
                in_timezone -= 1;
            }
            names.truncate(start);
            if stack.is_empty() {
                state = State::After;
                end_line = info.line;
            }
            continue;
        }
        if in_timezone == 0 {
            if let Some(p) = Prop::classify(cl.name) {
                on_prop(p, &info, content, &cl);
            }
        }
    }
    match state {
        State::Before => Err(IcalError::at(
            0,
            "not a calendar object: the file holds only blank lines",
        )),
        State::Inside => {
            let (end, begun) = stack.last().copied().unwrap_or((0, 0));
            let start = if stack.len() >= 2 {
                stack[stack.len() - 2].0
            } else {
                0
            };
            Err(IcalError::at(
                last_line,
                format!(
                    "truncated: the file ends before END:VCALENDAR (BEGIN:{} at line {begun} is not closed)",
                    String::from_utf8_lossy(&names[start..end])
                ),
            ))
        }
        State::After => Ok(()),
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Reads a calendar object (read-only): checks its structure and lists its addresses.
pub fn scan(bytes: &[u8]) -> Result<CalendarInfo, IcalError> {
    let mut info = CalendarInfo::default();
    walk(bytes, |prop, li, _content, cl| match prop {
        Prop::Uid => {
            if info.uid.is_none() {
                info.uid = Some(lossy(&line::unescape_text(trim(cl.value))));
            }
        }
        Prop::Organizer | Prop::Attendee | Prop::Voter => {
            let (mut cn, mut email, mut cutype) = (None, None, None);
            for p in line::params(cl.params) {
                let slot = if p.is("CN") {
                    &mut cn
                } else if p.is("EMAIL") {
                    &mut email
                } else if p.is("CUTYPE") {
                    &mut cutype
                } else {
                    continue;
                };
                if slot.is_none() {
                    *slot = Some(lossy(&p.decoded()));
                }
            }
            let value = lossy(cl.value);
            if prop == Prop::Organizer && info.organizer.is_none() {
                info.organizer = Some(value.clone());
            }
            info.addresses.push(FoundAddress {
                line: li.line,
                property: prop.name().to_string(),
                value,
                cn,
                email,
                cutype,
            });
        }
        Prop::AttendeeComment => {
            for p in line::params(cl.params).filter(|p| p.is(REF_PARAM)) {
                info.addresses.push(FoundAddress {
                    line: li.line,
                    property: prop.name().to_string(),
                    value: lossy(&p.decoded()),
                    cn: None,
                    email: None,
                    cutype: None,
                });
            }
        }
        Prop::PerUserUid | Prop::ModifiedBy => {
            info.addresses.push(FoundAddress {
                line: li.line,
                property: prop.name().to_string(),
                value: lossy(cl.value),
                cn: None,
                email: None,
                cutype: None,
            });
        }
    })?;
    Ok(info)
}

/// True when a value we are about to write could break the line structure.
fn unsafe_value(v: &str) -> bool {
    v.bytes().any(|b| b < 0x20 || b == 0x7F)
}

/// The bare uid a PERUSER-UID names, as an address to resolve.
fn peruser_address(v: &[u8]) -> Option<CalAddress> {
    let v = std::str::from_utf8(trim(v)).ok()?;
    if v.is_empty() {
        return None;
    }
    Some(match Guid::parse(v) {
        Some(g) => CalAddress::UrnUuid(g),
        None => CalAddress::UrnXUid(v.to_string()),
    })
}

/// Appends `;NAME=value` (value encoded).
fn push_param(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(b';');
    out.extend_from_slice(name);
    out.push(b'=');
    line::encode_value(value, out);
}

/// What to do with one parameter of a rewritten line.
enum Target<'v> {
    /// Leave every occurrence as written.
    Keep,
    /// The first occurrence gets this value (kept as written when it already decodes to it), later
    /// ones go; appended when absent.
    Set(&'v [u8]),
    /// Every occurrence goes.
    Remove,
}

/// The EMAIL parameter CalendarServer would write (see `normalizeCalendarUserAddresses`).
fn email_target<'p>(
    principal: &'p Principal,
    old_addr: &CalAddress,
    old_email: Option<&[u8]>,
) -> Target<'p> {
    if principal.emails.is_empty() {
        return Target::Remove;
    }
    if let Some(old) = old_email {
        let old = String::from_utf8_lossy(old);
        let old = old.trim();
        let bare = old
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("mailto:"))
            .map_or(old, |_| &old[7..]);
        if principal
            .emails
            .iter()
            .any(|e| e.eq_ignore_ascii_case(bare))
        {
            return Target::Keep;
        }
    }
    if let CalAddress::Mailto(a) = old_addr {
        if let Some(e) = principal.emails.iter().find(|e| *e == a) {
            return Target::Set(e.as_bytes());
        }
    }
    Target::Set(principal.emails[0].as_bytes())
}

/// Rebuilds the parameters of `params`, applying `targets` (upper-case name → what to do) and
/// appending the ones set but absent, in the order given.
fn rebuild_params(params: &[u8], targets: &[(&str, Target)], out: &mut Vec<u8>) {
    let mut done = [false; 4];
    for p in line::params(params) {
        let Some(i) = targets.iter().position(|(n, _)| p.is(n)) else {
            out.extend_from_slice(p.raw);
            continue;
        };
        match targets[i].1 {
            Target::Keep => out.extend_from_slice(p.raw),
            Target::Remove => {}
            Target::Set(v) => {
                if !done[i] {
                    if *p.decoded() == *v {
                        out.extend_from_slice(p.raw);
                    } else {
                        push_param(out, p.name, v);
                    }
                }
            }
        }
        done[i] = true;
    }
    for (i, (name, t)) in targets.iter().enumerate() {
        if let (Target::Set(v), false) = (t, done[i]) {
            push_param(out, name.as_bytes(), v);
        }
    }
}

/// The new logical line for one principal property, or `None` to leave it alone.
fn rewrite_line(
    prop: Prop,
    cl: &line::ContentLine,
    resolver: &dyn Resolve,
    opts: &RewriteOptions,
) -> Option<(Vec<u8>, String, String)> {
    let mut new = Vec::with_capacity(cl.name.len() + cl.params.len() + cl.value.len() + 64);
    new.extend_from_slice(cl.name);
    match prop {
        Prop::Organizer | Prop::Attendee | Prop::Voter | Prop::ModifiedBy => {
            let old_value = lossy(cl.value);
            let old_addr = CalAddress::parse(&old_value);
            let principal = resolver.resolve(&old_addr)?;
            let new_value = principal.canonical_address(opts.form, &old_addr);
            if unsafe_value(&new_value) {
                return None;
            }
            if prop == Prop::ModifiedBy {
                new.extend_from_slice(cl.params);
            } else {
                let cn = match &principal.full_name {
                    Some(n) if !n.trim().is_empty() => Target::Set(n.as_bytes()),
                    _ => Target::Remove,
                };
                let old_email = line::params(cl.params)
                    .find(|p| p.is("EMAIL"))
                    .map(|p| p.decoded().into_owned());
                let email = email_target(principal, &old_addr, old_email.as_deref());
                rebuild_params(cl.params, &[("CN", cn), ("EMAIL", email)], &mut new);
            }
            new.push(b':');
            new.extend_from_slice(new_value.as_bytes());
            Some((new, old_value, new_value))
        }
        Prop::AttendeeComment => {
            let reference = line::params(cl.params).find(|p| p.is(REF_PARAM))?;
            let old_value = lossy(&reference.decoded());
            let old_addr = CalAddress::parse(&old_value);
            let principal = resolver.resolve(&old_addr)?;
            let new_value = principal.canonical_address(opts.form, &old_addr);
            if unsafe_value(&new_value) {
                return None;
            }
            rebuild_params(
                cl.params,
                &[(REF_PARAM, Target::Set(new_value.as_bytes()))],
                &mut new,
            );
            new.push(b':');
            new.extend_from_slice(cl.value);
            Some((new, old_value, new_value))
        }
        Prop::PerUserUid => {
            let old_addr = peruser_address(cl.value)?;
            let principal = resolver.resolve(&old_addr)?;
            let new_value = principal.guid.as_str().to_string();
            new.extend_from_slice(cl.params);
            new.push(b':');
            new.extend_from_slice(new_value.as_bytes());
            Some((new, lossy(cl.value), new_value))
        }
        Prop::Uid => None,
    }
}

/// Rewrites every principal reference that `resolver` resolves; every other byte is kept.
///
/// For ORGANIZER, ATTENDEE and VOTER: the value becomes
/// [`Principal::canonical_address`]; CN the record's full name (removed when it has none); EMAIL
/// is kept when it is still one of the record's addresses, else set to the old `mailto:` value
/// when that is the record's, else to the record's first address (removed when it has none). No
/// other parameter is touched. X-CALENDARSERVER-ATTENDEE-REF and X-CALENDARSERVER-MODIFIED-BY get
/// the canonical address, X-CALENDARSERVER-PERUSER-UID the bare GUID. A changed line keeps its
/// other parameters as written, its line ending, and is folded at 75 octets only when longer; a
/// line whose new form equals the old is left as it was. Nothing inside VTIMEZONE is touched.
pub fn rewrite(
    bytes: &[u8],
    resolver: &dyn Resolve,
    opts: &RewriteOptions,
) -> Result<Rewritten, IcalError> {
    let mut out: Vec<u8> = Vec::new();
    let mut copied = 0;
    let mut changes = Vec::new();
    walk(bytes, |prop, li, content, cl| {
        let Some((new_line, old_value, new_value)) = rewrite_line(prop, cl, resolver, opts) else {
            return;
        };
        if new_line == content {
            return;
        }
        if out.capacity() == 0 {
            out.reserve(bytes.len() + 256);
        }
        out.extend_from_slice(&bytes[copied..li.text_start]);
        line::fold(&new_line, li.fold_eol, &mut out);
        out.extend_from_slice(li.eol.as_bytes());
        copied = li.end;
        changes.push(Change {
            line: li.line,
            property: prop.name().to_string(),
            old_value,
            new_value,
            old_line: lossy(content),
            new_line: lossy(&new_line),
        });
    })?;
    if changes.is_empty() {
        return Ok(Rewritten {
            bytes: bytes.to_vec(),
            changes,
        });
    }
    out.extend_from_slice(&bytes[copied..]);
    Ok(Rewritten {
        bytes: out,
        changes,
    })
}
