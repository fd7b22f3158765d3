//! Lossless vCard cards (RFC 2426 vCard 3.0, as Apple Address Book and the Address Book Server
//! write them) and the group-member rewriter.
//!
//! A card in an address book is one `.vcf` resource holding exactly one vCard. Group cards
//! (`X-ADDRESSBOOKSERVER-KIND:group`) name their members with `X-ADDRESSBOOKSERVER-MEMBER:urn:uuid:<uid>`
//! (vCard 4.0's `MEMBER` is read the same way). The uid is usually another card's `UID` in the same
//! address book; a member the server could not find there (CalendarServer calls them "foreign
//! members") may be a directory record's GUID, which is what changes in a directory rebuild.
//!
//! [`scan`] checks the structure and lists the UID and members; [`rewrite`] replaces the uid of the
//! members a callback knows and keeps every other byte (folding, line endings, group prefixes such
//! as `item1.`, unknown properties, parameters without `=` such as `PHOTO;BASE64:`).
//!
//! The content-line layer is [`crate::ical::line`] (unfolding, parameters, folding); vCard adds
//! the `group.` prefix of property names and, in 2.1-style cards the server also stored,
//! parameters without a value.

use crate::ical::line::{self, LineInfo, SplitError};
use crate::ical::{Change, Rewritten};

/// A resource that is not one vCard, with the line where that shows.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VcardError {
    /// 1-based physical line (0 when it is about the whole file).
    pub line: usize,
    /// Why it is not a vCard, in words.
    pub reason: String,
}

impl std::fmt::Display for VcardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "line {}: {}", self.line, self.reason)
        } else {
            f.write_str(&self.reason)
        }
    }
}

impl std::error::Error for VcardError {}

fn err(line: usize, reason: impl Into<String>) -> VcardError {
    VcardError {
        line,
        reason: reason.into(),
    }
}

/// One group member as written.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    /// 1-based physical line where the content line starts.
    pub line: usize,
    /// The whole value (`urn:uuid:...`), trimmed.
    pub value: String,
}

impl Member {
    /// The uid a `urn:uuid:` member names (as written), or `None` for another form.
    pub fn uid(&self) -> Option<&str> {
        member_uid(&self.value)
    }
}

/// The uid after a `urn:uuid:` prefix (any case), if the value has one and it is not empty.
pub fn member_uid(value: &str) -> Option<&str> {
    let v = value.trim();
    let prefix = "urn:uuid:";
    if v.len() > prefix.len()
        && v.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    {
        Some(&v[prefix.len()..])
    } else {
        None
    }
}

/// What a card holds that the reconciler cares about.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CardInfo {
    /// The card's UID (TEXT escapes decoded).
    pub uid: Option<String>,
    /// `X-ADDRESSBOOKSERVER-KIND` (or vCard 4.0 `KIND`), lower-cased.
    pub kind: Option<String>,
    /// Members the card names (`X-ADDRESSBOOKSERVER-MEMBER` / `MEMBER`), in order.
    pub members: Vec<Member>,
}

impl CardInfo {
    /// True for a group card: its kind is `group`, or it names members.
    pub fn is_group(&self) -> bool {
        self.kind.as_deref() == Some("group") || !self.members.is_empty()
    }
}

/// A logical line split into its parts, all borrowed from the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CardLine<'a> {
    /// The group prefix with its dot (`item1.`), or empty.
    pub group: &'a [u8],
    /// The property name as written (e.g. `FN`, `X-ADDRESSBOOKSERVER-MEMBER`).
    pub name: &'a [u8],
    /// The parameters as written, each with its leading `;`.
    pub params: &'a [u8],
    /// The value as written (escapes kept).
    pub value: &'a [u8],
}

#[inline]
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

/// Splits a vCard content line: an optional `group.` prefix, then a content line as
/// [`line::split`] reads it, also accepting parameters without `=` (`TEL;WORK;VOICE:`, `PHOTO;BASE64:`).
pub fn split(content: &[u8]) -> Result<CardLine<'_>, SplitError> {
    let mut i = 0;
    while i < content.len() && is_name_byte(content[i]) {
        i += 1;
    }
    let (group, rest) = if i > 0 && i < content.len() && content[i] == b'.' {
        content.split_at(i + 1)
    } else {
        (&content[..0], content)
    };
    let cl = match line::split(rest) {
        Ok(cl) => (cl.name, cl.params, cl.value),
        Err(SplitError::ParamWithoutValue(_)) => lenient(rest)?,
        Err(e) => return Err(e),
    };
    Ok(CardLine {
        group,
        name: cl.0,
        params: cl.1,
        value: cl.2,
    })
}

type Parts<'a> = (&'a [u8], &'a [u8], &'a [u8]);

/// [`line::split`]'s grammar with `;NAME` parameters allowed to have no `=value`.
fn lenient(l: &[u8]) -> Result<Parts<'_>, SplitError> {
    let mut i = 0;
    while i < l.len() && is_name_byte(l[i]) {
        i += 1;
    }
    let name_end = i;
    if name_end == 0 {
        return Err(SplitError::EmptyName);
    }
    loop {
        match l.get(i) {
            None => return Err(SplitError::NoColon),
            Some(b':') => return Ok((&l[..name_end], &l[name_end..i], &l[i + 1..])),
            Some(b';') => {}
            Some(_) => return Err(SplitError::BadNameByte(i)),
        }
        i += 1;
        let n_start = i;
        while i < l.len() && is_name_byte(l[i]) {
            i += 1;
        }
        if i == n_start {
            return Err(SplitError::BadParamName(n_start));
        }
        if l.get(i) != Some(&b'=') {
            continue; // a parameter without a value: at `;`, `:` or a bad byte
        }
        i += 1;
        loop {
            if l.get(i) == Some(&b'"') {
                let open = i;
                match memchr::memchr(b'"', &l[i + 1..]) {
                    Some(j) => i = i + 1 + j + 1,
                    None => return Err(SplitError::UnterminatedQuote(open)),
                }
            } else {
                while i < l.len() && !matches!(l[i], b',' | b';' | b':') {
                    i += 1;
                }
            }
            if l.get(i) == Some(&b',') {
                i += 1;
            } else {
                break;
            }
        }
    }
}

/// The properties the reconciler reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prop {
    Uid,
    Kind,
    Member,
}

impl Prop {
    fn classify(name: &[u8]) -> Option<Prop> {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("UID") {
            Some(Prop::Uid)
        } else if is("X-ADDRESSBOOKSERVER-MEMBER") || is("MEMBER") {
            Some(Prop::Member)
        } else if is("X-ADDRESSBOOKSERVER-KIND") || is("KIND") {
            Some(Prop::Kind)
        } else {
            None
        }
    }
}

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

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Where the structure check is in the card.
#[derive(PartialEq)]
enum Phase {
    /// Before `BEGIN:VCARD` (only blank lines so far).
    Before,
    /// Inside the card.
    Inside,
    /// After its `END:VCARD`: nothing but white space may follow.
    After,
}

/// The structure check over the card's content lines: where the walk is and the open
/// components (the card, and cards nested in a 2.1 AGENT), each with the line that began it.
struct Structure {
    phase: Phase,
    stack: Vec<(Vec<u8>, usize)>,
    /// Last physical line read.
    last_line: usize,
    /// Line of `END:VCARD`.
    end_line: usize,
}

/// Walks one vCard, checking its structure, and calls `on_prop` for the UID, kind and member
/// properties of the card itself (not of a card nested in a 2.1 AGENT).
fn walk(
    bytes: &[u8],
    mut on_prop: impl FnMut(&LineInfo, &[u8], &CardLine<'_>, Prop),
) -> Result<(), VcardError> {
    if bytes.is_empty() {
        return Err(err(0, "empty file: not a vCard"));
    }
    let mut s = Structure {
        phase: Phase::Before,
        stack: Vec::new(),
        last_line: 0,
        end_line: 0,
    };
    let mut reader = line::LineReader::new(bytes);
    while let Some(l) = reader.next_line() {
        let l = l.map_err(|e| {
            err(
                e.line,
                format!("NUL byte at column {}: binary data, not a vCard", e.column),
            )
        })?;
        let (info, content) = (l.info, l.content);
        s.last_line = info.line + info.physical_lines - 1;
        if content.iter().all(|&c| c == b' ' || c == b'\t') {
            continue;
        }
        s.check_placement(&info, content)?;
        let cl = match split(content) {
            Ok(cl) => cl,
            Err(_) if s.phase == Phase::Before => return Err(not_a_card(&info, content)),
            Err(e) => return Err(err(info.line, format!("{e}: `{}`", excerpt(content)))),
        };
        if s.component(&info, content, &cl)? {
            continue;
        }
        if s.stack.len() == 1 {
            if let Some(p) = Prop::classify(cl.name) {
                on_prop(&info, content, &cl, p);
            }
        }
    }
    s.finish()
}

impl Structure {
    /// Rejects a non-blank line where none may be: anything after `END:VCARD`, a line beginning
    /// with white space where a property was expected.
    fn check_placement(&self, info: &LineInfo, content: &[u8]) -> Result<(), VcardError> {
        let end_line = self.end_line;
        if self.phase == Phase::After {
            let again = split(content).is_ok_and(|c| {
                c.name.eq_ignore_ascii_case(b"BEGIN")
                    && c.value.trim_ascii().eq_ignore_ascii_case(b"VCARD")
            });
            return Err(err(
                info.line,
                if again {
                    format!("a second vCard after END:VCARD at line {end_line}: an address object resource holds exactly one")
                } else {
                    format!(
                        "content after END:VCARD at line {end_line}: `{}`",
                        excerpt(content)
                    )
                },
            ));
        }
        if matches!(content[0], b' ' | b'\t') {
            return Err(err(
                info.line,
                format!(
                    "a line beginning with white space where a property was expected: `{}`",
                    excerpt(content)
                ),
            ));
        }
        Ok(())
    }

    /// Opens (`BEGIN`) or closes (`END`) the card or a nested one: true when the line was one of
    /// those, false for a property.
    fn component(
        &mut self,
        info: &LineInfo,
        content: &[u8],
        cl: &CardLine<'_>,
    ) -> Result<bool, VcardError> {
        let value = cl.value.trim_ascii();
        if cl.name.eq_ignore_ascii_case(b"BEGIN") {
            if self.phase == Phase::Before && !value.eq_ignore_ascii_case(b"VCARD") {
                return Err(not_a_card(info, content));
            }
            if value.is_empty() {
                return Err(err(info.line, "BEGIN without a component name"));
            }
            self.stack.push((value.to_ascii_uppercase(), info.line));
            self.phase = Phase::Inside;
            return Ok(true);
        }
        if self.phase == Phase::Before {
            return Err(not_a_card(info, content));
        }
        if cl.name.eq_ignore_ascii_case(b"END") {
            let (open, begun) = self.stack.pop().unwrap_or_default();
            if !value.eq_ignore_ascii_case(&open) {
                return Err(err(
                    info.line,
                    format!(
                        "END:{} does not match BEGIN:{} at line {begun}",
                        excerpt(value),
                        lossy(&open)
                    ),
                ));
            }
            if self.stack.is_empty() {
                self.phase = Phase::After;
                self.end_line = info.line;
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// At the end of the file: the card must have been opened and closed.
    fn finish(self) -> Result<(), VcardError> {
        match self.phase {
            Phase::Before => Err(err(0, "not a vCard: the file holds only blank lines")),
            Phase::Inside => {
                let (open, begun) = self.stack.last().cloned().unwrap_or_default();
                Err(err(
                    self.last_line,
                    format!(
                        "truncated: the file ends before END:VCARD (BEGIN:{} at line {begun} is not closed)",
                        lossy(&open)
                    ),
                ))
            }
            Phase::After => Ok(()),
        }
    }
}

/// The error for a first non-blank line that is not `BEGIN:VCARD`.
fn not_a_card(info: &LineInfo, content: &[u8]) -> VcardError {
    err(
        info.line,
        format!(
            "not a vCard: expected BEGIN:VCARD, found `{}`",
            excerpt(content)
        ),
    )
}

/// Reads one card (read-only): checks its structure, returns its UID, kind and members.
pub fn scan(bytes: &[u8]) -> Result<CardInfo, VcardError> {
    let mut info = CardInfo::default();
    walk(bytes, |li, _, cl, prop| match prop {
        Prop::Uid => {
            if info.uid.is_none() {
                info.uid = Some(lossy(&line::unescape_text(cl.value.trim_ascii())));
            }
        }
        Prop::Kind => {
            if info.kind.is_none() {
                info.kind = Some(lossy(cl.value.trim_ascii()).to_ascii_lowercase());
            }
        }
        Prop::Member => info.members.push(Member {
            line: li.line,
            value: lossy(cl.value.trim_ascii()),
        }),
    })?;
    Ok(info)
}

/// Rewrites the members whose uid `new_uid` knows (it gets the uid as written after
/// `urn:uuid:`, and returns the uid to write instead). Only the uid changes: the property name (and
/// its group prefix), its parameters, the `urn:uuid:` prefix as written, the line ending, and the
/// folding (the same breaks when the line keeps its length, else folded at 75 octets when longer)
/// stay. Every other line is copied byte for byte.
pub fn rewrite(
    bytes: &[u8],
    new_uid: &dyn Fn(&str) -> Option<String>,
) -> Result<Rewritten, VcardError> {
    let mut out: Vec<u8> = Vec::new();
    let mut copied = 0;
    let mut changes = Vec::new();
    walk(bytes, |li, content, cl, prop| {
        if prop != Prop::Member {
            return;
        }
        let Ok(old_value) = std::str::from_utf8(cl.value) else {
            return;
        };
        let Some(uid) = member_uid(old_value) else {
            return;
        };
        let Some(new) = new_uid(uid) else {
            return;
        };
        if new == uid || new.bytes().any(|b| b < 0x20 || b == 0x7F) {
            return;
        }
        // Keep the value's own leading white space and prefix: replace the uid only.
        let at = old_value.len() - old_value.trim_start().len() + "urn:uuid:".len();
        let end = at + uid.len();
        let new_value = format!("{}{new}{}", &old_value[..at], &old_value[end..]);
        let mut new_line = Vec::with_capacity(content.len() + 8);
        new_line.extend_from_slice(&content[..content.len() - cl.value.len()]);
        new_line.extend_from_slice(new_value.as_bytes());
        if out.capacity() == 0 {
            out.reserve(bytes.len() + 64);
        }
        out.extend_from_slice(&bytes[copied..li.text_start]);
        let old_physical = &bytes[li.text_start..li.end - li.eol.as_bytes().len()];
        if !refold_like(old_physical, &new_line, &mut out) {
            line::fold(&new_line, li.fold_eol, &mut out);
        }
        out.extend_from_slice(li.eol.as_bytes());
        copied = li.end;
        changes.push(Change {
            line: li.line,
            property: lossy(cl.name).to_ascii_uppercase(),
            old_value: old_value.trim().to_string(),
            new_value: new_value.trim().to_string(),
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

/// Writes `new` (a logical line as long as the one `old` folds) with `old`'s line breaks and
/// continuation characters in the same places. Returns false (writing nothing) when that cannot
/// be done: another length, or a break that would split a UTF-8 sequence.
fn refold_like(old: &[u8], new: &[u8], out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let (mut i, mut k) = (0, 0);
    let ok = loop {
        if i >= old.len() {
            break k == new.len();
        }
        let brk = match (old[i], old.get(i + 1)) {
            (b'\r', Some(b'\n')) => 2,
            (b'\n', _) => 1,
            _ => 0,
        };
        if brk > 0 {
            // A break inside a logical line is always followed by its continuation character.
            let Some(&ws) = old.get(i + brk) else {
                break false;
            };
            if new.get(k).is_some_and(|&b| b & 0xC0 == 0x80) {
                break false;
            }
            out.extend_from_slice(&old[i..i + brk]);
            out.push(ws);
            i += brk + 1;
            continue;
        }
        match new.get(k) {
            Some(&b) => out.push(b),
            None => break false,
        }
        i += 1;
        k += 1;
    };
    if !ok {
        out.truncate(start);
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE";
    const NEW: &str = "11111111-2222-3333-4444-555555555555";

    fn group(members: &[&str]) -> String {
        let mut s = String::from(
            "BEGIN:VCARD\r\nVERSION:3.0\r\nPRODID:-//Apple Inc.//Address Book 5.0//EN\r\nN:Project team\r\nFN:Project team\r\nX-ADDRESSBOOKSERVER-KIND:group\r\n",
        );
        for m in members {
            s.push_str(&format!("X-ADDRESSBOOKSERVER-MEMBER:urn:uuid:{m}\r\n"));
        }
        s.push_str(
            "REV:2010-06-14T09:12:44Z\r\nUID:5C1E3D9A-7E8B-4A55-9C66-0A1B2C3D4E5F\r\nEND:VCARD\r\n",
        );
        s
    }

    fn map_old(uid: &str) -> Option<String> {
        uid.eq_ignore_ascii_case(OLD).then(|| NEW.to_string())
    }

    #[test]
    fn scan_reads_uid_kind_and_members() {
        let text = group(&[OLD, "8424B7F0-C878-4722-B522-EBB07CF48AD7"]);
        let info = scan(text.as_bytes()).unwrap();
        assert_eq!(
            info.uid.as_deref(),
            Some("5C1E3D9A-7E8B-4A55-9C66-0A1B2C3D4E5F")
        );
        assert_eq!(info.kind.as_deref(), Some("group"));
        assert!(info.is_group());
        assert_eq!(info.members.len(), 2);
        assert_eq!(info.members[0].line, 7);
        assert_eq!(info.members[0].uid(), Some(OLD));
    }

    #[test]
    fn apple_person_card_with_groups_labels_and_photo_parses() {
        let text = "BEGIN:VCARD\r\nVERSION:3.0\r\nN:Picture;With;;;\r\nFN:With Picture\r\n\
            EMAIL;type=INTERNET;type=WORK;type=pref:withpicture@example.com\r\n\
            item1.ADR;type=WORK;type=pref:;;1234 Golly Street;Sunnyside;CA;99999;USA\r\nitem1.X-ABADR:us\r\n\
            item2.X-ABLabel:_$!<Friend>!$_\r\nPHOTO;BASE64:\r\n  /9j/4AAQSkZJRgABAQAAAQABAAD/7QA8UGhvdG9zaG9wIDMuMAA4QklNBAQAAAAAAB8cAVoAAx\r\n  sl RxwCAAACAAIcAhkAC1Bob3RvIEJvb3RoAP/iG6hJQ0NfUFJPRklMRQABAQAAG5hhcHBsAgA\r\n\
            TEL;WORK;VOICE:777-777-7777\r\nUID:934731C6-1C95-4C40-BE1F-FA4215B2307B\r\nEND:VCARD\r\n";
        let info = scan(text.as_bytes()).unwrap();
        assert_eq!(
            info.uid.as_deref(),
            Some("934731C6-1C95-4C40-BE1F-FA4215B2307B")
        );
        assert!(!info.is_group());
        let c = split(b"item1.X-ABADR:us").unwrap();
        assert_eq!(
            (c.group, c.name, c.value),
            (&b"item1."[..], &b"X-ABADR"[..], &b"us"[..])
        );
        let c = split(b"PHOTO;BASE64;TYPE=\"a:b\":xyz").unwrap();
        assert_eq!(
            (c.params, c.value),
            (&b";BASE64;TYPE=\"a:b\""[..], &b"xyz"[..])
        );
    }

    #[test]
    fn rewrites_only_known_members_and_keeps_every_other_byte() {
        let other = "8424B7F0-C878-4722-B522-EBB07CF48AD7";
        let text = group(&[other, OLD, &OLD.to_lowercase()]);
        let r = rewrite(text.as_bytes(), &map_old).unwrap();
        assert_eq!(r.changes.len(), 2);
        assert_eq!(
            String::from_utf8(r.bytes).unwrap(),
            group(&[other, NEW, NEW])
        );
        assert_eq!(r.changes[0].line, 8);
        assert_eq!(r.changes[0].property, "X-ADDRESSBOOKSERVER-MEMBER");
        assert_eq!(r.changes[0].old_value, format!("urn:uuid:{OLD}"));
        assert_eq!(r.changes[0].new_value, format!("urn:uuid:{NEW}"));
        let none = rewrite(text.as_bytes(), &|_| None).unwrap();
        assert!(none.changes.is_empty());
        assert_eq!(none.bytes, text.as_bytes());
    }

    #[test]
    fn keeps_group_prefix_params_prefix_case_line_endings_and_folds() {
        let text = "BEGIN:VCARD\nVERSION:3.0\nitem3.X-ADDRESSBOOKSERVER-MEMBER;X-A=1:URN:UUID:AAAAAAAA-BBBB-CC\n\tCC-DDDD-EEEEEEEEEEEE\nUID:g\r\nEND:VCARD";
        let r = rewrite(text.as_bytes(), &map_old).unwrap();
        assert_eq!(
            String::from_utf8(r.bytes).unwrap(),
            "BEGIN:VCARD\nVERSION:3.0\nitem3.X-ADDRESSBOOKSERVER-MEMBER;X-A=1:URN:UUID:11111111-2222-33\n\t33-4444-555555555555\nUID:g\r\nEND:VCARD"
        );
        // A longer uid cannot keep the breaks: folded at 75 octets instead, with the line's own break.
        let long = |_: &str| Some(format!("{NEW}-{}", "9".repeat(40)));
        let r = rewrite(text.as_bytes(), &long).unwrap();
        let lines = line::unfold(&r.bytes).unwrap();
        assert_eq!(lines[2].0.eol, line::Eol::Lf);
        assert!(lines[2].0.physical_lines >= 2);
        assert!(String::from_utf8_lossy(&lines[2].1).ends_with(&"9".repeat(40)));
        for phys in r.bytes.split(|&b| b == b'\n') {
            assert!(phys.len() <= 75);
        }
    }

    #[test]
    fn non_uuid_members_and_nested_cards_are_left_alone() {
        let text = format!(
            "BEGIN:VCARD\r\nVERSION:2.1\r\nX-ADDRESSBOOKSERVER-MEMBER:mailto:{OLD}@x\r\nAGENT:\r\nBEGIN:VCARD\r\nX-ADDRESSBOOKSERVER-MEMBER:urn:uuid:{OLD}\r\nEND:VCARD\r\nUID:x\r\nEND:VCARD\r\n"
        );
        let info = scan(text.as_bytes()).unwrap();
        assert_eq!(info.members.len(), 1);
        assert_eq!(info.members[0].uid(), None);
        let r = rewrite(text.as_bytes(), &map_old).unwrap();
        assert!(r.changes.is_empty());
    }

    #[test]
    fn malformed_cards_name_their_line() {
        let cases: &[(&[u8], usize, &str)] = &[
            (b"", 0, "empty file"),
            (b"\r\n\r\n", 0, "only blank lines"),
            (
                b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n",
                1,
                "expected BEGIN:VCARD",
            ),
            (b"BEGIN:VCARD\r\nFN:x\r\n", 2, "truncated"),
            (
                b"BEGIN:VCARD\r\nFN x\r\nEND:VCARD\r\n",
                2,
                "invalid character",
            ),
            (
                b"BEGIN:VCARD\r\nEND:VCARD\r\nBEGIN:VCARD\r\nEND:VCARD\r\n",
                3,
                "a second vCard",
            ),
            (b"BEGIN:VCARD\r\nEND:VEVENT\r\n", 2, "does not match"),
            (b"BEGIN:VCARD\r\nNOTE:a\0b\r\nEND:VCARD\r\n", 2, "NUL byte"),
            (
                b"BEGIN:VCARD\r\nUID;X=\"a:b\r\nEND:VCARD\r\n",
                2,
                "never closed",
            ),
        ];
        for (input, line, reason) in cases {
            let e = scan(input).unwrap_err();
            assert_eq!(
                e.line,
                *line,
                "{e} for {:?}",
                String::from_utf8_lossy(input)
            );
            assert!(e.reason.contains(reason), "{e:?} should say {reason:?}");
            assert_eq!(rewrite(input, &map_old).unwrap_err(), e);
        }
        // BOM, LF-only, no final line break, blank lines around: fine.
        assert!(scan(b"\xEF\xBB\xBF\nBEGIN:VCARD\nUID:a\nEND:VCARD").is_ok());
        assert!(scan(b"begin:vcard\r\nend:vcard\r\n\r\n  \r\n").is_ok());
    }

    #[test]
    fn refold_keeps_break_positions() {
        let mut out = Vec::new();
        assert!(refold_like(b"AB\r\n CD\n\tE", b"WXYZV", &mut out));
        assert_eq!(out, b"WX\r\n YZ\n\tV");
        let mut out = b"keep".to_vec();
        assert!(!refold_like(b"AB\r\n CD", b"WXY", &mut out));
        assert_eq!(out, b"keep");
    }
}
