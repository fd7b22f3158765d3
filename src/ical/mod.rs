//! Lossless iCalendar content lines and the calendar-address rewriter.
//!
//! [`scan`] checks that bytes are one calendar object and lists every calendar user address in
//! it; [`rewrite`] points the addresses a [`Resolve`]r knows at their current principal, writing
//! exactly what CalendarServer would normalise them to, and keeps every other byte of the file.
//! Both are pure functions over `&[u8]`, safe to call from many threads.
//!
//! What is a calendar object here: optional UTF-8 BOM and blank lines, `BEGIN:VCALENDAR`,
//! well-formed content lines (RFC 5545 §3.1) with balanced `BEGIN`/`END`, `END:VCALENDAR`, then
//! nothing but white space. Blank lines anywhere are tolerated. "Well formed" is what
//! CalendarServer's own parsers accept (vobject in 2.x, pycalendar later): `_` in names, and a
//! backslash-escaped `"` inside a quoted parameter value (see [`line::split`]). Everything else
//! (NUL bytes, truncated files, unbalanced components, lines neither parser reads) is an
//! [`IcalError`] naming the physical line.

pub mod dropbox;
pub mod line;

use crate::address::{AddressForm, CalAddress, Guid, Principal};
use base64::Engine as _;
use dropbox::HomeRef;
use std::collections::HashMap;

/// A resource that is not a calendar object, with the line where that shows.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IcalError {
    /// 1-based physical line (0 when it is about the whole file).
    pub line: usize,
    /// Why it is not a calendar object, in words.
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

/// One dropbox link (see [`dropbox`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FoundLink {
    /// 1-based physical line where the content line starts.
    pub line: usize,
    /// X-APPLE-DROPBOX or ATTACH.
    pub property: String,
    /// The value as written.
    pub value: String,
    /// The home it names.
    pub home: HomeRef,
}

/// What a calendar object holds that the reconciler cares about.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CalendarInfo {
    /// UID of the first component that has one (TEXT escapes such as `\,` decoded).
    pub uid: Option<String>,
    /// Value of the first ORGANIZER.
    pub organizer: Option<String>,
    /// Every calendar user address on a principal-naming property (ORGANIZER, ATTENDEE, ...), in file order.
    pub addresses: Vec<FoundAddress>,
    /// `CALENDARSERVER-OLD-CUA` parameters of ORGANIZER/ATTENDEE/VOTER lines, decoded (`base64-`
    /// undone): the address a client sent, which CalendarServer 4 restores on output. `property`
    /// is the line's property. Not counted among `addresses`: they are not where the server looks.
    pub old_cuas: Vec<FoundAddress>,
    /// X-APPLE-DROPBOX and ATTACH values that name a calendar home.
    pub links: Vec<FoundLink>,
}

/// Finds the principal an address resolves to, and where a calendar home went.
pub trait Resolve {
    /// The current principal `addr` maps to; None leaves the address as written.
    fn resolve(&self, addr: &CalAddress) -> Option<&Principal>;

    /// The GUID whose home now holds what the home `home` held, when that home moves (its
    /// dropbox links then name `/calendars/__uids__/<GUID>/`); `None` leaves links as written.
    fn moved_home(&self, _home: &HomeRef) -> Option<Guid> {
        None
    }
}

/// A map keyed by [`CalAddress::key`].
impl Resolve for HashMap<String, Principal> {
    fn resolve(&self, addr: &CalAddress) -> Option<&Principal> {
        self.get(&addr.key())
    }
}

#[derive(Clone, Copy, Debug)]
/// How [`rewrite`] writes new addresses.
pub struct RewriteOptions {
    /// The address form written for a mapped principal (`[rewrite] address_form`).
    pub form: AddressForm,
}

/// One property the rewriter changed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// 1-based physical line where the old content line started.
    pub line: usize,
    /// The property name (`ORGANIZER`, `ATTENDEE`, ...).
    pub property: String,
    /// Old and new address value (for ORGANIZER/ATTENDEE/...), as written.
    pub old_value: String,
    /// The new address value written.
    pub new_value: String,
    /// The whole old and new logical (unfolded) lines, lossily decoded for reports.
    pub old_line: String,
    /// The new logical line, lossily decoded for reports.
    pub new_line: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
/// The result of rewriting one calendar object.
pub struct Rewritten {
    /// The new bytes (equal to the input when `changes` is empty).
    pub bytes: Vec<u8>,
    /// One entry per property changed, in file order.
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
    Dropbox,
    Attach,
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
            Prop::Dropbox => "X-APPLE-DROPBOX",
            Prop::Attach => "ATTACH",
        }
    }

    #[inline]
    fn classify(name: &[u8]) -> Option<Prop> {
        // Cheap reject: every name we want starts with A, O, U, V or X.
        let first = name.first()?.to_ascii_uppercase();
        let candidates: &[Prop] = match first {
            b'A' => &[Prop::Attendee, Prop::Attach],
            b'O' => &[Prop::Organizer],
            b'U' => &[Prop::Uid],
            b'V' => &[Prop::Voter],
            b'X' if name.len() == 15 => &[Prop::Dropbox],
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
const OLD_CUA_PARAM: &str = "CALENDARSERVER-OLD-CUA";

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

/// Where the structure check is in the file.
#[derive(PartialEq)]
enum Phase {
    /// Before `BEGIN:VCALENDAR` (only blank lines so far).
    Before,
    /// Inside the VCALENDAR.
    Inside,
    /// After its `END:VCALENDAR`: nothing but white space may follow.
    After,
}

/// The parser's structure check over the content lines the tokenizer yields: where the walk is,
/// the open components and how deep inside VTIMEZONE it is.
struct Structure {
    phase: Phase,
    /// Open components: names (upper case) concatenated in `names`, (end offset, line) in `stack`.
    names: Vec<u8>,
    stack: Vec<(usize, usize)>,
    in_timezone: usize,
    /// Last physical line read.
    last_line: usize,
    /// Line of `END:VCALENDAR`.
    end_line: usize,
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
    let mut s = Structure::new();
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
        s.last_line = info.line + info.physical_lines - 1;
        if is_blank(content) {
            continue;
        }
        s.check_placement(bytes, &info, content)?;
        let cl = s.split(&info, content)?;
        if s.component(&info, content, &cl)? {
            continue;
        }
        if s.in_timezone == 0 {
            if let Some(p) = Prop::classify(cl.name) {
                on_prop(p, &info, content, &cl);
            }
        }
    }
    s.finish()
}

impl Structure {
    fn new() -> Structure {
        Structure {
            phase: Phase::Before,
            names: Vec::with_capacity(64),
            stack: Vec::with_capacity(8),
            in_timezone: 0,
            last_line: 0,
            end_line: 0,
        }
    }

    /// Rejects a non-blank line where none may be: a fold after a blank line, anything after
    /// `END:VCALENDAR`, a continuation line before the calendar or inside it.
    fn check_placement(
        &self,
        bytes: &[u8],
        info: &line::LineInfo,
        content: &[u8],
    ) -> Result<(), IcalError> {
        if info.physical_lines > 1
            && matches!(bytes[info.text_start], b'\r' | b'\n')
            && self.phase != Phase::After
        {
            return Err(IcalError::at(
                info.line + 1,
                format!(
                    "folded continuation line after a blank line: `{}`",
                    excerpt(content)
                ),
            ));
        }
        let end_line = self.end_line;
        match self.phase {
            Phase::After => {
                let second = line::split(content)
                    .is_ok_and(|c| c.name.eq_ignore_ascii_case(b"BEGIN") && trim(c.value).eq_ignore_ascii_case(b"VCALENDAR"));
                Err(IcalError::at(
                    info.line,
                    if second {
                        format!("a second VCALENDAR after END:VCALENDAR at line {end_line}: a calendar object resource holds exactly one")
                    } else {
                        format!("content after END:VCALENDAR at line {end_line}: `{}`", excerpt(content))
                    },
                ))
            }
            Phase::Before if matches!(content[0], b' ' | b'\t') => {
                Err(IcalError::at(
                    info.line,
                    format!("not a calendar object: expected BEGIN:VCALENDAR, found a line beginning with white space: `{}`", excerpt(content)),
                ))
            }
            Phase::Inside if matches!(content[0], b' ' | b'\t') => {
                Err(IcalError::at(
                    info.line,
                    format!("folded continuation line after a blank line: `{}`", excerpt(content)),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Splits a content line into name, parameters and value, or says why it cannot be.
    fn split<'c>(
        &self,
        info: &line::LineInfo,
        content: &'c [u8],
    ) -> Result<line::ContentLine<'c>, IcalError> {
        match line::split(content) {
            Ok(cl) => Ok(cl),
            Err(_) if self.phase == Phase::Before => Err(not_a_calendar(info, content)),
            Err(e) => {
                // calverify (CalendarServer 5) knows this one: a whole content line pasted into
                // the parameter, with unescaped quotes. pycalendar cannot read it either.
                let hint = if memchr::memmem::find(content, b"CALENDARSERVER-OLD-CUA=\"//")
                    .is_some()
                {
                    " (a CALENDARSERVER-OLD-CUA parameter holding a whole line with unescaped quotes, which CalendarServer cannot parse either; `calverify --badcua --fix` repairs it)"
                } else {
                    ""
                };
                Err(IcalError::at(
                    info.line,
                    format!("{e}: `{}`{hint}", excerpt(content)),
                ))
            }
        }
    }

    /// Opens the calendar or a component (`BEGIN`), or closes one (`END`): true when the line
    /// was one of those, false for a property.
    fn component(
        &mut self,
        info: &line::LineInfo,
        content: &[u8],
        cl: &line::ContentLine,
    ) -> Result<bool, IcalError> {
        let is_begin = cl.name.eq_ignore_ascii_case(b"BEGIN");
        if self.phase == Phase::Before {
            if !(is_begin && trim(cl.value).eq_ignore_ascii_case(b"VCALENDAR")) {
                return Err(not_a_calendar(info, content));
            }
            self.names.extend_from_slice(b"VCALENDAR");
            self.stack.push((self.names.len(), info.line));
            self.phase = Phase::Inside;
            return Ok(true);
        }
        if is_begin {
            self.begin(info, trim(cl.value))?;
            return Ok(true);
        }
        if cl.name.eq_ignore_ascii_case(b"END") {
            self.end(info, trim(cl.value))?;
            return Ok(true);
        }
        Ok(false)
    }

    /// `BEGIN:comp` inside the calendar.
    fn begin(&mut self, info: &line::LineInfo, comp: &[u8]) -> Result<(), IcalError> {
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
            self.in_timezone += 1;
        }
        self.names.extend(comp.iter().map(u8::to_ascii_uppercase));
        self.stack.push((self.names.len(), info.line));
        Ok(())
    }

    /// `END:comp`: it must close the innermost open component.
    fn end(&mut self, info: &line::LineInfo, comp: &[u8]) -> Result<(), IcalError> {
        // `stack` is never empty while Inside.
        let (end, begun) = self.stack.pop().unwrap_or((0, 0));
        let start = self.stack.last().map_or(0, |s| s.0);
        let open = &self.names[start..end];
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
            self.in_timezone -= 1;
        }
        self.names.truncate(start);
        if self.stack.is_empty() {
            self.phase = Phase::After;
            self.end_line = info.line;
        }
        Ok(())
    }

    /// At the end of the file: the calendar must have been opened and closed.
    fn finish(self) -> Result<(), IcalError> {
        match self.phase {
            Phase::Before => Err(IcalError::at(
                0,
                "not a calendar object: the file holds only blank lines",
            )),
            Phase::Inside => {
                let (end, begun) = self.stack.last().copied().unwrap_or((0, 0));
                let start = if self.stack.len() >= 2 {
                    self.stack[self.stack.len() - 2].0
                } else {
                    0
                };
                Err(IcalError::at(
                    self.last_line,
                    format!(
                        "truncated: the file ends before END:VCALENDAR (BEGIN:{} at line {begun} is not closed)",
                        String::from_utf8_lossy(&self.names[start..end])
                    ),
                ))
            }
            Phase::After => Ok(()),
        }
    }
}

/// The error for a first non-blank line that is not `BEGIN:VCALENDAR`.
fn not_a_calendar(info: &line::LineInfo, content: &[u8]) -> IcalError {
    IcalError::at(
        info.line,
        format!(
            "not a calendar object: expected BEGIN:VCALENDAR, found `{}`",
            excerpt(content)
        ),
    )
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Reads a calendar object (read-only): checks its structure and lists its addresses.
pub fn scan(bytes: &[u8]) -> Result<CalendarInfo, IcalError> {
    let mut info = CalendarInfo::default();
    walk(bytes, |prop, li, _content, cl| {
        note(&mut info, prop, li, cl)
    })?;
    Ok(info)
}

/// [`scan`] and [`rewrite`] in one pass over the file.
pub fn scan_and_rewrite(
    bytes: &[u8],
    resolver: &dyn Resolve,
    opts: &RewriteOptions,
) -> Result<(CalendarInfo, Rewritten), IcalError> {
    let mut info = CalendarInfo::default();
    let rewritten = rewrite_with(bytes, resolver, opts, |prop, li, cl| {
        note(&mut info, prop, li, cl)
    })?;
    Ok((info, rewritten))
}

/// Records what one property holds for [`scan`].
fn note(info: &mut CalendarInfo, prop: Prop, li: &line::LineInfo, cl: &line::ContentLine) {
    match prop {
        Prop::Uid => {
            if info.uid.is_none() {
                info.uid = Some(lossy(&line::unescape_text(trim(cl.value))));
            }
        }
        Prop::Organizer | Prop::Attendee | Prop::Voter => {
            let (mut cn, mut email, mut cutype) = (None, None, None);
            for p in cl.params() {
                if p.is(OLD_CUA_PARAM) {
                    if let Some(old) = old_cua_address(&p.decoded()) {
                        info.old_cuas.push(FoundAddress {
                            line: li.line,
                            property: prop.name().to_string(),
                            value: old,
                            cn: None,
                            email: None,
                            cutype: None,
                        });
                    }
                    continue;
                }
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
            for p in cl.params().filter(|p| p.is(REF_PARAM)) {
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
        Prop::Dropbox | Prop::Attach => {
            if let Some(link) = dropbox_link(prop, cl) {
                info.links.push(FoundLink {
                    line: li.line,
                    property: prop.name().to_string(),
                    value: lossy(cl.value),
                    home: link.home,
                });
            }
        }
    }
}

/// The dropbox link an X-APPLE-DROPBOX or ATTACH line holds. An ATTACH counts only when its value
/// is a URI (no `VALUE` other than `URI`, no `ENCODING`): inline data is never a link.
fn dropbox_link(prop: Prop, cl: &line::ContentLine) -> Option<dropbox::Link> {
    if prop == Prop::Attach
        && cl.params().any(|p| {
            p.is("ENCODING") || (p.is("VALUE") && !p.decoded().eq_ignore_ascii_case(b"URI"))
        })
    {
        return None;
    }
    dropbox::parse(cl.value)
}

/// The address a `CALENDARSERVER-OLD-CUA` value holds: `base64-` + base64 of it (what
/// CalendarServer writes) or the address as is. `None` when it is empty or not UTF-8.
fn old_cua_address(decoded: &[u8]) -> Option<String> {
    let bytes = match decoded.strip_prefix(b"base64-") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim_ascii())
            .ok()?,
        None => decoded.to_vec(),
    };
    let s = String::from_utf8(bytes).ok()?;
    (!s.trim().is_empty()).then_some(s)
}

/// What to do with the `CALENDARSERVER-OLD-CUA` of a line whose value resolves (see
/// [`rewrite`]). `Ok(Some(bytes))` sets it to `bytes`; `Ok(None)` keeps it; `Err(())` drops it.
fn old_cua_target(
    cl: &line::ContentLine,
    resolver: &dyn Resolve,
    value_changes: bool,
) -> Result<Option<Vec<u8>>, ()> {
    let Some(p) = cl.params().find(|p| p.is(OLD_CUA_PARAM)) else {
        return Ok(None);
    };
    // Some(None): it names its record by one of the record's own addresses, nothing to do.
    let resolved = old_cua_address(&p.decoded()).and_then(|old| {
        let addr = CalAddress::parse(&old);
        let principal = resolver.resolve(&addr)?;
        Some(
            (!principal.owns(&addr))
                .then(|| principal.canonical_address(AddressForm::Keep, &addr))
                .filter(|new| !unsafe_value(new)),
        )
    });
    match resolved {
        Some(None) => Ok(None),
        Some(Some(new)) => {
            let mut v = b"base64-".to_vec();
            v.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(new.as_bytes())
                    .as_bytes(),
            );
            Ok(Some(v))
        }
        None if value_changes => Err(()),
        None => Ok(None),
    }
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

/// The EMAIL parameter CalendarServer would write (see `normalizeCalendarUserAddresses`). The old
/// EMAIL counts as "still the record's" case-insensitively (with or without `mailto:`) and is then
/// kept exactly as written.
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

/// Rebuilds the parameters of `cl`, applying `targets` (upper-case name → what to do) and
/// appending the ones set but absent, in the order given.
fn rebuild_params(cl: &line::ContentLine, targets: &[(&str, Target)], out: &mut Vec<u8>) {
    let mut done = [false; 4];
    for p in cl.params() {
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
                let old_email = cl
                    .params()
                    .find(|p| p.is("EMAIL"))
                    .map(|p| p.decoded().into_owned());
                let email = email_target(principal, &old_addr, old_email.as_deref());
                let value_changes = new_value.as_bytes() != trim(cl.value);
                let old_cua = old_cua_target(cl, resolver, value_changes);
                let old_cua = match &old_cua {
                    Ok(Some(v)) => Target::Set(v),
                    Ok(None) => Target::Keep,
                    Err(()) => Target::Remove,
                };
                rebuild_params(
                    cl,
                    &[("CN", cn), ("EMAIL", email), (OLD_CUA_PARAM, old_cua)],
                    &mut new,
                );
            }
            new.push(b':');
            new.extend_from_slice(new_value.as_bytes());
            Some((new, old_value, new_value))
        }
        Prop::AttendeeComment => {
            let reference = cl.params().find(|p| p.is(REF_PARAM))?;
            let old_value = lossy(&reference.decoded());
            let old_addr = CalAddress::parse(&old_value);
            let principal = resolver.resolve(&old_addr)?;
            let new_value = principal.canonical_address(opts.form, &old_addr);
            if unsafe_value(&new_value) {
                return None;
            }
            rebuild_params(
                cl,
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
        Prop::Dropbox | Prop::Attach => {
            let link = dropbox_link(prop, cl)?;
            let guid = resolver.moved_home(&link.home)?;
            let new_value = dropbox::rewrite(cl.value, &link, &guid);
            new.extend_from_slice(cl.params);
            new.push(b':');
            new.extend_from_slice(&new_value);
            Some((new, lossy(cl.value), lossy(&new_value)))
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
/// other parameter is touched, except `CALENDARSERVER-OLD-CUA` (the address the client sent, which
/// CalendarServer 4 restores on output): when it resolves, it is pointed at its record in its own
/// form (`base64-` encoded, as the server writes it; kept as written when that changes nothing);
/// when it does not resolve and the value changes, it is dropped (the server then answers with
/// the EMAIL address, as for any line without one). X-CALENDARSERVER-ATTENDEE-REF and
/// X-CALENDARSERVER-MODIFIED-BY get the canonical address, X-CALENDARSERVER-PERUSER-UID the bare
/// GUID. X-APPLE-DROPBOX and ATTACH links into a home that [`Resolve::moved_home`] says moved name
/// the new home (only the `/calendars/.../<id>/` segment changes). A changed line keeps its
/// other parameters as written, its line ending, and is folded at 75 octets only when longer; a
/// line whose new form equals the old is left as it was. Nothing inside VTIMEZONE is touched.
pub fn rewrite(
    bytes: &[u8],
    resolver: &dyn Resolve,
    opts: &RewriteOptions,
) -> Result<Rewritten, IcalError> {
    rewrite_with(bytes, resolver, opts, |_, _, _| {})
}

/// [`rewrite`], calling `also` on every property it walks over.
fn rewrite_with(
    bytes: &[u8],
    resolver: &dyn Resolve,
    opts: &RewriteOptions,
    mut also: impl FnMut(Prop, &line::LineInfo, &line::ContentLine),
) -> Result<Rewritten, IcalError> {
    let mut out: Vec<u8> = Vec::new();
    let mut copied = 0;
    let mut changes = Vec::new();
    walk(bytes, |prop, li, content, cl| {
        also(prop, li, cl);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::RecordType;

    const NEW: &str = "11111111-2222-3333-4444-555555555555";
    const OLD: &str = "AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE";

    fn jane() -> Principal {
        Principal {
            guid: Guid::parse(NEW).unwrap(),
            kind: RecordType::User,
            short_name: "jdoe".into(),
            full_name: Some("Jane Doe".into()),
            emails: vec!["jane@example.com".into(), "jd@example.com".into()],
        }
    }

    /// A resolver mapping each address to `p`.
    fn map(addrs: &[&str], p: Principal) -> HashMap<String, Principal> {
        addrs
            .iter()
            .map(|a| (CalAddress::parse(a).key(), p.clone()))
            .collect()
    }

    fn cal(body: &str) -> String {
        format!("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:u1\r\n{body}END:VEVENT\r\nEND:VCALENDAR\r\n")
    }

    fn opts() -> RewriteOptions {
        RewriteOptions {
            form: AddressForm::UrnUuid,
        }
    }

    fn rw(input: &[u8], r: &HashMap<String, Principal>) -> Rewritten {
        rewrite(input, r, &opts()).unwrap()
    }

    /// The logical lines of a file, as text.
    fn logical(b: &[u8]) -> Vec<String> {
        line::unfold(b)
            .unwrap()
            .into_iter()
            .map(|(_, l)| String::from_utf8_lossy(&l).into_owned())
            .collect()
    }

    fn err(input: &[u8]) -> IcalError {
        let e = scan(input).unwrap_err();
        assert_eq!(rewrite(input, &HashMap::new(), &opts()).unwrap_err(), e);
        e
    }

    #[test]
    fn scan_lists_every_address() {
        let text = "BEGIN:VCALENDAR\r\nBEGIN:VTIMEZONE\r\nTZID:X\r\nATTENDEE:mailto:tz@x\r\nEND:VTIMEZONE\r\n\
            BEGIN:VEVENT\r\nUID:a\\,b\r\nORGANIZER;CN=\"Doe, Jane\";EMAIL=jane@example.com:mailto:jane@example.com\r\n\
            attendee;cutype=ROOM;cn=Room 1:urn:uuid:AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE\r\n\
            VOTER:mailto:v@x\r\n\
            X-CALENDARSERVER-ATTENDEE-COMMENT;X-CALENDARSERVER-ATTENDEE-REF=\"urn:uuid:X\";X-CALENDARSERVER-DTSTAMP=1:hi\r\n\
            X-CALENDARSERVER-MODIFIED-BY:/principals/users/jdoe/\r\nEND:VEVENT\r\n\
            BEGIN:X-CALENDARSERVER-PERUSER\r\nUID:second\r\nX-CALENDARSERVER-PERUSER-UID:aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee\r\n\
            END:X-CALENDARSERVER-PERUSER\r\nEND:VCALENDAR\r\n";
        let info = scan(text.as_bytes()).unwrap();
        assert_eq!(info.uid.as_deref(), Some("a,b"));
        assert_eq!(info.organizer.as_deref(), Some("mailto:jane@example.com"));
        let a = &info.addresses;
        assert_eq!(a.len(), 6, "{a:#?}");
        assert_eq!(a[0].line, 8);
        assert_eq!(a[0].property, "ORGANIZER");
        assert_eq!(a[0].cn.as_deref(), Some("Doe, Jane"));
        assert_eq!(a[0].email.as_deref(), Some("jane@example.com"));
        assert_eq!(a[1].property, "ATTENDEE");
        assert_eq!(a[1].cutype.as_deref(), Some("ROOM"));
        assert_eq!(a[1].cn.as_deref(), Some("Room 1"));
        assert_eq!(a[1].value, format!("urn:uuid:{OLD}"));
        assert_eq!(a[2].property, "VOTER");
        assert_eq!(a[3].property, "X-CALENDARSERVER-ATTENDEE-COMMENT");
        assert_eq!(a[3].value, "urn:uuid:X");
        assert_eq!(a[4].value, "/principals/users/jdoe/");
        assert_eq!(a[5].property, "X-CALENDARSERVER-PERUSER-UID");
        assert_eq!(a[5].line, 16);
    }

    #[test]
    fn scan_counts_physical_lines_and_decodes_rfc6868() {
        let text = cal("DESCRIPTION:a\r\n b\r\n c\r\nATTENDEE;CN=Caret ^^ and ^'quote^' ^n:\r\n mailto:x@y\r\n");
        let info = scan(text.as_bytes()).unwrap();
        assert_eq!(info.addresses[0].line, 8);
        assert_eq!(info.addresses[0].value, "mailto:x@y");
        assert_eq!(
            info.addresses[0].cn.as_deref(),
            Some("Caret ^ and \"quote\" \n")
        );
    }

    #[test]
    fn rewrites_organizer_to_canonical_form() {
        let text = cal(
            "ORGANIZER;CN=Old Name;EMAIL=old@example.com:mailto:JD@example.com\r\nSUMMARY:x\r\n",
        );
        let r = rw(text.as_bytes(), &map(&["mailto:jd@example.com"], jane()));
        let want = cal(&format!(
            "ORGANIZER;CN=Jane Doe;EMAIL=jd@example.com:urn:uuid:{NEW}\r\nSUMMARY:x\r\n"
        ));
        assert_eq!(logical(&r.bytes), logical(want.as_bytes()));
        assert_eq!(r.changes.len(), 1);
        let c = &r.changes[0];
        assert_eq!((c.line, c.property.as_str()), (5, "ORGANIZER"));
        assert_eq!(c.old_value, "mailto:JD@example.com");
        assert_eq!(c.new_value, format!("urn:uuid:{NEW}"));
        assert_eq!(
            c.old_line,
            "ORGANIZER;CN=Old Name;EMAIL=old@example.com:mailto:JD@example.com"
        );
        assert_eq!(
            c.new_line,
            format!("ORGANIZER;CN=Jane Doe;EMAIL=jd@example.com:urn:uuid:{NEW}")
        );
    }

    #[test]
    fn other_params_keep_order_case_and_text() {
        let room = Principal {
            guid: Guid::parse(NEW).unwrap(),
            kind: RecordType::Location,
            short_name: "room1".into(),
            full_name: Some("Room One".into()),
            emails: vec![],
        };
        let text = cal(&format!(
            "attendee;partstat=ACCEPTED;CUTYPE=ROOM;x-odd=\"a:b\";cn=Old Room;rsvp=TRUE:urn:uuid:{OLD}\r\n"
        ));
        let r = rw(text.as_bytes(), &map(&[&format!("urn:uuid:{OLD}")], room));
        let want = cal(&format!(
            "attendee;partstat=ACCEPTED;CUTYPE=ROOM;x-odd=\"a:b\";cn=Room One;rsvp=TRUE:ur\r\n n:uuid:{NEW}\r\n"
        ));
        assert_eq!(String::from_utf8(r.bytes).unwrap(), want);
    }

    #[test]
    fn cn_removed_when_record_has_no_full_name() {
        let mut p = jane();
        p.full_name = None;
        let text = cal(&format!(
            "ATTENDEE;CN=Someone;ROLE=CHAIR;CN=Dup:urn:uuid:{OLD}\r\n"
        ));
        let r = rw(text.as_bytes(), &map(&[&format!("urn:uuid:{OLD}")], p));
        let want = cal(&format!(
            "ATTENDEE;ROLE=CHAIR;EMAIL=jane@example.com:urn:uuid:{NEW}\r\n"
        ));
        assert_eq!(logical(&r.bytes), logical(want.as_bytes()));
    }

    #[test]
    fn email_rules() {
        let key = format!("urn:uuid:{OLD}");
        let old = format!("urn:uuid:{OLD}");
        let m = map(
            &[&key, "mailto:jd@example.com", "mailto:gone@example.com"],
            jane(),
        );
        let run = |line: &str| {
            let r = rw(cal(&format!("{line}\r\n")).as_bytes(), &m);
            r.changes.first().map(|c| c.new_line.clone())
        };
        // The old EMAIL is still one of the record's addresses: kept as written.
        assert_eq!(
            run(&format!("ATTENDEE;EMAIL=JD@Example.com;CN=Jane Doe:{old}")),
            Some(format!(
                "ATTENDEE;EMAIL=JD@Example.com;CN=Jane Doe:urn:uuid:{NEW}"
            ))
        );
        // The old value was a mailto: of the record: EMAIL becomes that address.
        assert_eq!(
            run("ATTENDEE;EMAIL=gone@example.com:mailto:jd@example.com"),
            Some(format!(
                "ATTENDEE;EMAIL=jd@example.com;CN=Jane Doe:urn:uuid:{NEW}"
            ))
        );
        // Otherwise the record's first address; appended after the existing parameters.
        assert_eq!(
            run("ATTENDEE;ROLE=CHAIR:mailto:gone@example.com"),
            Some(format!(
                "ATTENDEE;ROLE=CHAIR;CN=Jane Doe;EMAIL=jane@example.com:urn:uuid:{NEW}"
            ))
        );
        // No e-mail at all: EMAIL removed.
        let mut p = jane();
        p.emails.clear();
        let m2 = map(&[&key], p);
        let r = rw(
            cal(&format!("ATTENDEE;EMAIL=x@y;CN=Jane Doe:{old}\r\n")).as_bytes(),
            &m2,
        );
        assert_eq!(
            r.changes[0].new_line,
            format!("ATTENDEE;CN=Jane Doe:urn:uuid:{NEW}")
        );
    }

    #[test]
    fn quotes_and_escapes_new_values() {
        let mut p = jane();
        p.full_name = Some("Doe, Jane \"JD\" ^ Jr.".into());
        let r = rw(
            cal(&format!("ATTENDEE:urn:uuid:{OLD}\r\n")).as_bytes(),
            &map(&[&format!("urn:uuid:{OLD}")], p),
        );
        assert_eq!(
            r.changes[0].new_line,
            format!(
                "ATTENDEE;CN=\"Doe, Jane ^'JD^' ^^ Jr.\";EMAIL=jane@example.com:urn:uuid:{NEW}"
            )
        );
        let back = scan(&r.bytes).unwrap();
        assert_eq!(
            back.addresses[0].cn.as_deref(),
            Some("Doe, Jane \"JD\" ^ Jr.")
        );
    }

    #[test]
    fn unchanged_when_already_canonical_even_if_folded() {
        let text = cal(&format!(
            "ATTENDEE;CN=Jane Doe;EMAIL=jane@example.com:urn:uui\r\n d:{NEW}\r\n"
        ));
        let m = map(&[&format!("urn:uuid:{NEW}")], jane());
        let r = rw(text.as_bytes(), &m);
        assert!(r.changes.is_empty());
        assert_eq!(r.bytes, text.as_bytes());
    }

    #[test]
    fn unresolved_addresses_are_left_alone() {
        let text = cal("ATTENDEE;CN=Gone:mailto:gone@elsewhere.org\r\nORGANIZER:tel:+1555\r\n");
        let r = rw(text.as_bytes(), &map(&["mailto:jd@example.com"], jane()));
        assert!(r.changes.is_empty());
        assert_eq!(r.bytes, text.as_bytes());
    }

    #[test]
    fn refolds_long_lines_at_75_octets_without_splitting_utf8() {
        let mut p = jane();
        p.full_name =
            Some("Zoë Ångström-Øverli Þórsdóttir Müller-Lüdenscheidt von Überwald".into());
        let text = cal(&format!(
            "ATTENDEE;ROLE=REQ-PARTICIPANT;PARTSTAT=NEEDS-ACTION:urn:uuid:{OLD}\r\n"
        ));
        let r = rw(
            text.as_bytes(),
            &map(&[&format!("urn:uuid:{OLD}")], p.clone()),
        );
        let out =
            String::from_utf8(r.bytes.clone()).expect("every physical line stays valid UTF-8");
        let mut physical = 0;
        for l in out.split("\r\n") {
            assert!(l.len() <= 75, "{l:?}");
            physical += 1;
        }
        assert!(physical > 9, "the rewritten line is folded");
        let info = scan(&r.bytes).unwrap();
        assert_eq!(info.addresses[0].cn.as_deref(), p.full_name.as_deref());
        assert_eq!(info.addresses[0].value, format!("urn:uuid:{NEW}"));
    }

    #[test]
    fn lf_only_mixed_endings_bom_and_latin1_survive() {
        let text: Vec<u8> = [
            &b"\xEF\xBB\xBFBEGIN:VCALENDAR\nVERSION:2.0\r\nBEGIN:VEVENT\nSUMMARY:Caf\xE9 cr\xE8me\n"[..],
            format!("ORGANIZER;CN=Old:urn:uuid:{OLD}\n").as_bytes(),
            format!("ATTENDEE:urn:uuid:{OLD}\r\n").as_bytes(),
            b"X-UNKNOWN;Foo=bar:\xFF\xFE\r\nEND:VEVENT\nEND:VCALENDAR",
        ]
        .concat();
        let r = rw(&text, &map(&[&format!("urn:uuid:{OLD}")], jane()));
        let want: Vec<u8> = [
            &b"\xEF\xBB\xBFBEGIN:VCALENDAR\nVERSION:2.0\r\nBEGIN:VEVENT\nSUMMARY:Caf\xE9 cr\xE8me\n"[..],
            b"ORGANIZER;CN=Jane Doe;EMAIL=jane@example.com:urn:uuid:11111111-2222-3333-44\n 44-555555555555\n",
            b"ATTENDEE;CN=Jane Doe;EMAIL=jane@example.com:urn:uuid:11111111-2222-3333-444\r\n 4-555555555555\r\n",
            b"X-UNKNOWN;Foo=bar:\xFF\xFE\r\nEND:VEVENT\nEND:VCALENDAR",
        ]
        .concat();
        assert_eq!(
            String::from_utf8_lossy(&r.bytes),
            String::from_utf8_lossy(&want)
        );
        assert_eq!(r.bytes, want);
        assert_eq!(
            r.changes.iter().map(|c| c.line).collect::<Vec<_>>(),
            vec![5, 6]
        );
    }

    #[test]
    fn folded_lf_line_is_refolded_with_lf() {
        let mut p = jane();
        p.full_name = Some("A".repeat(80));
        let text = format!("BEGIN:VCALENDAR\nBEGIN:VEVENT\nATTENDEE;CN=x:\n urn:uuid:{OLD}\nEND:VEVENT\nEND:VCALENDAR\n");
        let r = rw(text.as_bytes(), &map(&[&format!("urn:uuid:{OLD}")], p));
        assert!(!r.bytes.contains(&b'\r'));
        let lines = line::unfold(&r.bytes).unwrap();
        assert_eq!(lines.len(), 5);
        assert!(lines[2].0.physical_lines >= 2);
        assert_eq!(lines[2].0.eol, line::Eol::Lf);
    }

    #[test]
    fn vtimezone_is_skipped() {
        let text = format!(
            "BEGIN:VCALENDAR\r\nBEGIN:VTIMEZONE\r\nTZID:X\r\nBEGIN:STANDARD\r\nATTENDEE:urn:uuid:{OLD}\r\nEND:STANDARD\r\n\
             END:VTIMEZONE\r\nBEGIN:VEVENT\r\nATTENDEE:urn:uuid:{OLD}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
        );
        let r = rw(text.as_bytes(), &map(&[&format!("urn:uuid:{OLD}")], jane()));
        assert_eq!(r.changes.len(), 1);
        assert_eq!(r.changes[0].line, 9);
        assert_eq!(scan(text.as_bytes()).unwrap().addresses.len(), 1);
    }

    #[test]
    fn peruser_uid_attendee_ref_and_modified_by() {
        let text = cal(&format!(
            "X-CALENDARSERVER-MODIFIED-BY;CN=Someone:mailto:jd@example.com\r\n\
             X-CALENDARSERVER-ATTENDEE-COMMENT;X-CALENDARSERVER-DTSTAMP=20100101T000000Z;\
             X-CALENDARSERVER-ATTENDEE-REF=\"urn:uuid:{OLD}\":Running late\\, sorry\r\n\
             END:VEVENT\r\nBEGIN:X-CALENDARSERVER-PERUSER\r\nUID:u1\r\nX-CALENDARSERVER-PERUSER-UID:{}\r\n\
             END:X-CALENDARSERVER-PERUSER\r\nBEGIN:X-CALENDARSERVER-PERUSER\r\nX-CALENDARSERVER-PERUSER-UID:jdoe-old\r\n\
             END:X-CALENDARSERVER-PERUSER\r\nBEGIN:VEVENT\r\n",
            OLD.to_lowercase()
        ));
        let m = map(
            &[
                &format!("urn:uuid:{OLD}"),
                "mailto:jd@example.com",
                "urn:x-uid:jdoe-old",
            ],
            jane(),
        );
        let r = rw(text.as_bytes(), &m);
        let got: Vec<_> = r
            .changes
            .iter()
            .map(|c| (c.property.as_str(), c.new_line.as_str()))
            .collect();
        let ref_line = format!(
            "X-CALENDARSERVER-ATTENDEE-COMMENT;X-CALENDARSERVER-DTSTAMP=20100101T000000Z;\
             X-CALENDARSERVER-ATTENDEE-REF=\"urn:uuid:{NEW}\":Running late\\, sorry"
        );
        let modified = format!("X-CALENDARSERVER-MODIFIED-BY;CN=Someone:urn:uuid:{NEW}");
        let peruser = format!("X-CALENDARSERVER-PERUSER-UID:{NEW}");
        assert_eq!(
            got,
            vec![
                ("X-CALENDARSERVER-MODIFIED-BY", modified.as_str()),
                ("X-CALENDARSERVER-ATTENDEE-COMMENT", ref_line.as_str()),
                ("X-CALENDARSERVER-PERUSER-UID", peruser.as_str()),
                ("X-CALENDARSERVER-PERUSER-UID", peruser.as_str()),
            ]
        );
        assert_eq!(r.changes[1].old_value, format!("urn:uuid:{OLD}"));
        assert_eq!(r.changes[3].old_value, "jdoe-old");
    }

    #[test]
    fn keep_form_points_principal_urls_at_the_new_record() {
        let text = cal("ATTENDEE;CN=Jane Doe;EMAIL=jane@example.com:http://cal:8008/principals/users/janed/\r\n");
        let m = map(&["/principals/users/janed/"], jane());
        let r = rewrite(
            text.as_bytes(),
            &m,
            &RewriteOptions {
                form: AddressForm::Keep,
            },
        )
        .unwrap();
        assert_eq!(
            r.changes[0].new_line,
            "ATTENDEE;CN=Jane Doe;EMAIL=jane@example.com:http://cal:8008/principals/users/jdoe/"
        );
    }

    #[test]
    fn rewriting_is_idempotent() {
        let text = cal(&format!(
            "ORGANIZER:mailto:jd@example.com\r\nATTENDEE;CN=x:urn:uuid:{OLD}\r\n"
        ));
        let m = map(
            &[
                &format!("urn:uuid:{OLD}"),
                "mailto:jd@example.com",
                &format!("urn:uuid:{NEW}"),
            ],
            jane(),
        );
        let once = rw(text.as_bytes(), &m);
        assert_eq!(once.changes.len(), 2);
        let twice = rw(&once.bytes, &m);
        assert!(twice.changes.is_empty());
        assert_eq!(twice.bytes, once.bytes);
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn old_cua_follows_the_value() {
        let old_url = format!("/principals/__uids__/{OLD}/");
        let m = map(
            &[
                &format!("urn:uuid:{OLD}"),
                &old_url,
                "https://cal.example.com:8443/principals/users/jdoe-old/",
            ],
            jane(),
        );
        let run = |line: &str| {
            let r = rw(cal(&format!("{line}\r\n")).as_bytes(), &m);
            r.changes.first().map(|c| c.new_line.clone())
        };
        // base64 (what CalendarServer writes) naming the old principal: pointed at the new one.
        assert_eq!(
            run(&format!(
                "ATTENDEE;CALENDARSERVER-OLD-CUA=base64-{};CN=Jane Doe;EMAIL=jane@example.com:urn:uuid:{OLD}",
                b64(&old_url)
            )),
            Some(format!(
                "ATTENDEE;CALENDARSERVER-OLD-CUA=base64-{};CN=Jane Doe;EMAIL=jane@example.com:urn:uuid:{NEW}",
                b64(&format!("/principals/__uids__/{NEW}/"))
            ))
        );
        // Plain, quoted, an absolute URL by short name: its own form, for the new record.
        assert_eq!(
            run(&format!(
                "ORGANIZER;CALENDARSERVER-OLD-CUA=\"https://cal.example.com:8443/principals/users/jdoe-old/\";CN=Jane Doe:urn:uuid:{OLD}"
            )),
            Some(format!(
                "ORGANIZER;CALENDARSERVER-OLD-CUA=base64-{};CN=Jane Doe;EMAIL=jane@example.com:urn:uuid:{NEW}",
                b64("https://cal.example.com:8443/principals/users/jdoe/")
            ))
        );
        // Naming nobody while the value changes: dropped with it.
        assert_eq!(
            run(&format!(
                "ATTENDEE;CALENDARSERVER-OLD-CUA=base64-{};CN=Jane Doe:urn:uuid:{OLD}",
                b64("/principals/users/gone/")
            )),
            Some(format!(
                "ATTENDEE;CN=Jane Doe;EMAIL=jane@example.com:urn:uuid:{NEW}"
            ))
        );
        // Already right, or naming nobody on a line that is already canonical: left alone.
        let m2 = map(
            &[
                &format!("urn:uuid:{NEW}"),
                &format!("/principals/__uids__/{NEW}/"),
            ],
            jane(),
        );
        for line in [
            format!(
                "ATTENDEE;CALENDARSERVER-OLD-CUA=base64-{};CN=Jane Doe;EMAIL=jane@example.com:urn:uuid:{NEW}",
                b64(&format!("/principals/__uids__/{NEW}/"))
            ),
            format!(
                "ATTENDEE;CALENDARSERVER-OLD-CUA=\"/principals/__uids__/{NEW}/\";CN=Jane Doe;EMAIL=jane@example.com:urn:uuid:{NEW}"
            ),
            format!(
                "ATTENDEE;CALENDARSERVER-OLD-CUA=base64-{};CN=Jane Doe;EMAIL=jane@example.com:urn:uuid:{NEW}",
                b64("/principals/users/gone/")
            ),
            format!(
                "ATTENDEE;CALENDARSERVER-OLD-CUA=base64-!!;CN=Jane Doe;EMAIL=jane@example.com:urn:uuid:{NEW}"
            ),
        ] {
            let text = cal(&format!("{line}\r\n"));
            let r = rw(text.as_bytes(), &m2);
            assert!(r.changes.is_empty(), "{line}: {:?}", r.changes);
            assert_eq!(r.bytes, text.as_bytes());
        }
        // An old CUA that still names an old principal on an otherwise canonical line.
        let mut m3 = m2.clone();
        m3.extend(map(&[&old_url], jane()));
        let line = format!(
            "ATTENDEE;CALENDARSERVER-OLD-CUA=base64-{};CN=Jane Doe;EMAIL=jane@example.com:urn:uuid:{NEW}",
            b64(&old_url)
        );
        let r = rw(cal(&format!("{line}\r\n")).as_bytes(), &m3);
        assert_eq!(r.changes.len(), 1);
        assert_eq!(r.changes[0].old_value, r.changes[0].new_value);
        // scan lists them decoded, apart from the addresses.
        let info = scan(cal(&format!("{line}\r\n")).as_bytes()).unwrap();
        assert_eq!(info.addresses.len(), 1);
        assert_eq!(info.old_cuas.len(), 1);
        assert_eq!(info.old_cuas[0].value, old_url);
        assert_eq!(info.old_cuas[0].property, "ATTENDEE");
    }

    #[test]
    fn backslash_escaped_quotes_are_read_and_kept() {
        // calverify's BAD9 shape: a whole line inside OLD-CUA, its quotes escaped with `\`.
        let garbage = format!(
            "CALENDARSERVER-OLD-CUA=\"//example.com\\:8443/principals/users/jd/;CN=\\\"Jane Doe\\\";EMAIL=\\\"jd@example.com\\\":urn:uuid:{OLD}\""
        );
        let text = cal(&format!(
            "ATTENDEE;{garbage};CN=Jane;X-Q=\"say \\\"hi\\\"\";RSVP=TRUE:urn:uuid:{OLD}\r\nSUMMARY:x\r\n"
        ));
        let info = scan(text.as_bytes()).unwrap();
        assert_eq!(info.addresses[0].value, format!("urn:uuid:{OLD}"));
        assert_eq!(info.addresses[0].cn.as_deref(), Some("Jane"));
        let m = map(&[&format!("urn:uuid:{OLD}")], jane());
        let r = rw(text.as_bytes(), &m);
        // The value changes, the unreadable OLD-CUA goes with it, X-Q stays byte for byte.
        assert_eq!(
            r.changes[0].new_line,
            format!(
                "ATTENDEE;CN=Jane Doe;X-Q=\"say \\\"hi\\\"\";RSVP=TRUE;EMAIL=jane@example.com:urn:uuid:{NEW}"
            )
        );
        assert_eq!(logical(&r.bytes)[5], "SUMMARY:x");
        // A CN written with escaped quotes reads (as pycalendar reads it) with its backslashes.
        let text = cal("ATTENDEE;CN=\"A \\\"B\\\"\";X-Q=\"p\\\"q\":mailto:jd@example.com\r\n");
        let info = scan(text.as_bytes()).unwrap();
        assert_eq!(info.addresses[0].cn.as_deref(), Some("A \\\"B\\\""));
        let mut p = jane();
        p.full_name = Some("A \"B\"".into());
        let r = rw(text.as_bytes(), &map(&["mailto:jd@example.com"], p));
        assert_eq!(
            r.changes[0].new_line,
            format!("ATTENDEE;CN=A ^'B^';X-Q=\"p\\\"q\";EMAIL=jd@example.com:urn:uuid:{NEW}")
        );
        assert_eq!(
            scan(&r.bytes).unwrap().addresses[0].cn.as_deref(),
            Some("A \"B\"")
        );
    }

    #[test]
    fn a_broken_old_cua_is_malformed_with_a_hint() {
        let text = cal(&format!(
            "ATTENDEE;CALENDARSERVER-OLD-CUA=\"//example.com\\:8443/principals/users/cyrus/;CN=\"Cyrus Daboo\";EMAIL=\"c@x\":urn:uuid:{OLD}\";CN=C:urn:uuid:{OLD}\r\n"
        ));
        let e = err(text.as_bytes());
        assert_eq!(e.line, 5);
        assert!(e.reason.contains("calverify --badcua"), "{e}");
    }

    /// Resolves through a map and moves the homes it lists.
    struct Moves(HashMap<String, Principal>, Vec<(HomeRef, Guid)>);

    impl Resolve for Moves {
        fn resolve(&self, addr: &CalAddress) -> Option<&Principal> {
            self.0.resolve(addr)
        }
        fn moved_home(&self, home: &HomeRef) -> Option<Guid> {
            self.1
                .iter()
                .find(|(h, _)| h == home)
                .map(|(_, g)| g.clone())
        }
    }

    #[test]
    fn dropbox_links_follow_the_home() {
        let new = Guid::parse(NEW).unwrap();
        let moves = Moves(
            HashMap::new(),
            vec![
                (HomeRef::Uid(OLD.into()), new.clone()),
                (
                    HomeRef::Name {
                        kind: crate::address::RecordType::User,
                        short: "jdoe".into(),
                    },
                    new.clone(),
                ),
            ],
        );
        let text = format!(
            "BEGIN:VCALENDAR\nBEGIN:VEVENT\nUID:u\n\
             ATTACH;VALUE=URI:http://cal.example.com:8008/calendars/__uids__/{low}/dropbox/E1.dropbox/\n caldavd.plist\n\
             X-APPLE-DROPBOX:/calendars/__uids__/{low}/dropbox/E1.dropbox\n\
             ATTACH;VALUE=BINARY;ENCODING=BASE64;FMTTYPE=text/plain:L2NhbGVuZGFycy9fX3VpZHNfXy9BQUFBQUFBQS1CQkJCLUNDQ0MtRERERC1FRUVFRUVFRUVFRUUvZHJvcGJveC8=\n\
             ATTACH:https://cal:8443/calendars/users/jdoe/dropbox/E1.dropbox/a%20b.pdf\n\
             ATTACH;FMTTYPE=image/png:http://elsewhere.example.com/calendars/__uids__/OTHER/dropbox/x/y.png\n\
             END:VEVENT\nEND:VCALENDAR\n",
            low = OLD.to_lowercase()
        );
        let info = scan(text.as_bytes()).unwrap();
        assert_eq!(info.links.len(), 4, "{:#?}", info.links);
        assert_eq!(info.links[0].home, HomeRef::Uid(OLD.into()));
        assert_eq!(info.links[0].line, 4);
        let r = rewrite(text.as_bytes(), &moves, &opts()).unwrap();
        let got: Vec<_> = r
            .changes
            .iter()
            .map(|c| (c.line, c.property.as_str(), c.new_value.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    4,
                    "ATTACH",
                    format!("http://cal.example.com:8008/calendars/__uids__/{NEW}/dropbox/E1.dropbox/caldavd.plist")
                ),
                (
                    6,
                    "X-APPLE-DROPBOX",
                    format!("/calendars/__uids__/{NEW}/dropbox/E1.dropbox")
                ),
                (
                    8,
                    "ATTACH",
                    format!("https://cal:8443/calendars/__uids__/{NEW}/dropbox/E1.dropbox/a%20b.pdf")
                ),
            ]
        );
        // The attachment still contains the dropbox value (how the server pairs them), LF kept,
        // the long line folded, the rest byte for byte.
        assert!(r.changes[0].new_value.contains(&r.changes[1].new_value));
        assert!(!r.bytes.contains(&b'\r'));
        let before = line::unfold(text.as_bytes()).unwrap();
        let after = line::unfold(&r.bytes).unwrap();
        assert_eq!(before.len(), after.len());
        for ((bi, bl), (ai, al)) in before.iter().zip(&after) {
            if [4, 6, 8].contains(&bi.line) {
                assert!(r.bytes[ai.start..ai.end]
                    .split(|&b| b == b'\n')
                    .all(|l| l.len() <= 75));
            } else {
                assert_eq!(bl, al);
                assert_eq!(text.as_bytes()[bi.start..bi.end], r.bytes[ai.start..ai.end]);
            }
        }
        // Again: nothing left to do.
        let again = rewrite(&r.bytes, &moves, &opts()).unwrap();
        assert!(again.changes.is_empty(), "{:?}", again.changes);
        // A resolver that moves nothing leaves the links.
        assert!(rw(text.as_bytes(), &HashMap::new()).changes.is_empty());
    }

    #[test]
    fn whitespace_around_the_calendar_is_fine() {
        let text = b"\r\n\n\xEF\xBB\xBFBEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n  \r\n\r\n\t\n";
        // A BOM after blank lines is not a BOM: the file does not start with BEGIN:VCALENDAR.
        assert!(scan(text).is_err());
        let text = b"\xEF\xBB\xBF\r\n\nBEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n  \r\n\r\n\t\n";
        assert!(scan(text).is_ok());
        assert!(scan(b"begin:vcalendar\nend:vcalendar").is_ok());
    }

    #[test]
    fn malformed_files_name_their_line() {
        let cases: &[(&[u8], usize, &str)] = &[
            (b"", 0, "empty file"),
            (b"\r\n \r\n", 0, "only blank lines"),
            (
                b"BEGIN:VCALENDAR\r\nSUMMARY:a\0b\r\nEND:VCALENDAR\r\n",
                2,
                "NUL byte at column 10",
            ),
            (b"\x89PNG\r\n\x1a\n\0\0", 1, "expected BEGIN:VCALENDAR"),
            (
                b"BEGIN:VEVENT\r\nEND:VEVENT\r\n",
                1,
                "expected BEGIN:VCALENDAR, found `BEGIN:VEVENT`",
            ),
            (b"  BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n", 1, "white space"),
            (
                b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nEND:VTODO\r\nEND:VCALENDAR\r\n",
                3,
                "END:VTODO does not match BEGIN:VEVENT at line 2",
            ),
            (
                b"BEGIN:VCALENDAR\r\nEND:VEVENT\r\n",
                2,
                "END:VEVENT does not match BEGIN:VCALENDAR at line 1",
            ),
            (
                b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:1\r\n",
                3,
                "truncated: the file ends before END:VCALENDAR (BEGIN:VEVENT at line 2",
            ),
            (b"BEGIN:VCALENDAR\r\nVERSION:2.0", 2, "truncated"),
            (
                b"BEGIN:VCALENDAR\r\nDESCRIPTION:a\r\n b\r\nSUMMARY\r\n x\r\nEND:VCALENDAR\r\n",
                4,
                "content line without a colon",
            ),
            (
                b"BEGIN:VCALENDAR\r\nDTSTART;TZID=\"A:1\r\nEND:VCALENDAR\r\n",
                2,
                "never closed",
            ),
            (
                b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\nX:1\r\n",
                3,
                "content after END:VCALENDAR at line 2",
            ),
            (
                b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\nBEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n",
                3,
                "a second VCALENDAR",
            ),
            (
                b"BEGIN:VCALENDAR\r\nBEGIN:\r\n",
                2,
                "BEGIN without a component name",
            ),
            (
                b"BEGIN:VCALENDAR\r\nBEGIN:VCALENDAR\r\n",
                2,
                "inside a VCALENDAR",
            ),
            (
                b"BEGIN:VCALENDAR\r\nA B:1\r\nEND:VCALENDAR\r\n",
                2,
                "invalid character in property name",
            ),
            (
                b"BEGIN:VCALENDAR\r\nX:1\r\n\r\n folded\r\nEND:VCALENDAR\r\n",
                4,
                "continuation line after a blank line",
            ),
        ];
        for (input, line, reason) in cases {
            let e = err(input);
            assert_eq!(
                e.line,
                *line,
                "{e} for {:?}",
                String::from_utf8_lossy(input)
            );
            assert!(e.reason.contains(reason), "{e:?} should say {reason:?}");
        }
    }
}
