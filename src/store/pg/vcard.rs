//! Address-book cards in the SQL store: group cards name their members as
//! `X-ADDRESSBOOKSERVER-MEMBER:urn:uuid:<uid>` (vCard 4: `MEMBER:`). A member is either another
//! card of the same address book (its UID) or a principal (its uid/GUID); only the second kind
//! changes with a directory rebuild. The rewrite is lossless like the calendar one: only a changed
//! member line is written again (same name, parameters and line ending, folded at 75 octets when
//! longer), every other byte stays. Built on the content-line layer of [`crate::ical::line`].

use crate::ical::{line, Change};

/// What a card holds that the migration cares about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CardInfo {
    pub uid: Option<String>,
    /// Member values as written, with their 1-based line.
    pub members: Vec<(usize, String)>,
}

fn is_member(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"X-ADDRESSBOOKSERVER-MEMBER") || name.eq_ignore_ascii_case(b"MEMBER")
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Reads a card: `BEGIN:VCARD` … `END:VCARD`, well-formed content lines; its UID and members.
pub fn scan(bytes: &[u8]) -> Result<CardInfo, String> {
    let mut info = CardInfo::default();
    walk(bytes, |li, cl| {
        if cl.name.eq_ignore_ascii_case(b"UID") && info.uid.is_none() {
            info.uid = Some(lossy(cl.value).trim().to_string());
        } else if is_member(cl.name) {
            info.members
                .push((li.line, lossy(cl.value).trim().to_string()));
        }
        None
    })
    .map(|_| info)
}

/// Rewrites member values: `map` gives the new value for a member value, or `None` to keep it.
pub fn rewrite_members(
    bytes: &[u8],
    map: &dyn Fn(&str) -> Option<String>,
) -> Result<(Vec<u8>, Vec<Change>), String> {
    let mut changes = Vec::new();
    let out = walk(bytes, |li, cl| {
        if !is_member(cl.name) {
            return None;
        }
        let old = lossy(cl.value);
        let new = map(old.trim())?;
        if new == old.trim() {
            return None;
        }
        let mut text = Vec::with_capacity(cl.name.len() + cl.params.len() + new.len() + 1);
        text.extend_from_slice(cl.name);
        text.extend_from_slice(cl.params);
        text.push(b':');
        text.extend_from_slice(new.as_bytes());
        let mut folded = Vec::new();
        line::fold(&text, li.fold_eol, &mut folded);
        folded.extend_from_slice(li.eol.as_bytes());
        changes.push(Change {
            line: li.line,
            property: lossy(cl.name).to_ascii_uppercase(),
            old_value: old.trim().to_string(),
            new_value: new,
            old_line: String::new(),
            new_line: lossy(&text),
        });
        Some(folded)
    })?;
    Ok((out, changes))
}

/// Walks the content lines of one card, checking its structure; `edit` may return the bytes that
/// replace a line (terminator included). Returns the (possibly edited) bytes.
fn walk(
    bytes: &[u8],
    mut edit: impl FnMut(&line::LineInfo, &line::ContentLine) -> Option<Vec<u8>>,
) -> Result<Vec<u8>, String> {
    let mut reader = line::LineReader::new(bytes);
    let mut out: Vec<u8> = Vec::new();
    let mut copied = 0;
    let mut depth = 0usize;
    let mut seen_begin = false;
    let mut ended = false;
    while let Some(l) = reader.next_line() {
        let l = l.map_err(|e| format!("line {}: NUL byte: binary data, not a vCard", e.line))?;
        let info = l.info;
        if l.content.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        if ended {
            return Err(format!("line {}: data after END:VCARD", info.line));
        }
        let cl = line::split(l.content).map_err(|e| format!("line {}: {e}", info.line))?;
        if cl.name.eq_ignore_ascii_case(b"BEGIN") {
            if !seen_begin && !cl.value.eq_ignore_ascii_case(b"VCARD") {
                return Err(format!(
                    "line {}: not a vCard (BEGIN:{})",
                    info.line,
                    lossy(cl.value)
                ));
            }
            seen_begin = true;
            depth += 1;
            continue;
        }
        if !seen_begin {
            return Err(format!("line {}: content before BEGIN:VCARD", info.line));
        }
        if cl.name.eq_ignore_ascii_case(b"END") {
            depth = depth.saturating_sub(1);
            if depth == 0 {
                ended = true;
            }
            continue;
        }
        if let Some(new) = edit(&info, &cl) {
            if out.capacity() == 0 {
                out.reserve(bytes.len() + 64);
            }
            out.extend_from_slice(&bytes[copied..info.text_start]);
            out.extend_from_slice(&new);
            copied = info.end;
        }
    }
    if !seen_begin {
        return Err("empty: not a vCard".into());
    }
    if !ended {
        return Err("no END:VCARD: truncated".into());
    }
    if out.capacity() == 0 {
        return Ok(bytes.to_vec());
    }
    out.extend_from_slice(&bytes[copied..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CARD: &str = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:g1\r\nFN:Team\r\nX-ADDRESSBOOKSERVER-KIND:group\r\nX-ADDRESSBOOKSERVER-MEMBER:urn:uuid:AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE\r\nX-ADDRESSBOOKSERVER-MEMBER:urn:uuid:local-1\r\nEND:VCARD\r\n";

    #[test]
    fn members_are_read_and_only_changed_lines_rewritten() {
        let info = scan(CARD.as_bytes()).unwrap();
        assert_eq!(info.uid.as_deref(), Some("g1"));
        assert_eq!(info.members.len(), 2);
        let (out, changes) = rewrite_members(CARD.as_bytes(), &|v| {
            v.contains("AAAAAAAA")
                .then(|| "urn:uuid:11111111-2222-3333-4444-555555555555".to_string())
        })
        .unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            CARD.replace(
                "AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE",
                "11111111-2222-3333-4444-555555555555"
            )
        );
        let (same, none) = rewrite_members(CARD.as_bytes(), &|_| None).unwrap();
        assert!(none.is_empty());
        assert_eq!(same, CARD.as_bytes());
    }

    #[test]
    fn truncated_cards_are_refused() {
        assert!(scan(b"BEGIN:VCARD\r\nUID:x\r\n").is_err());
        assert!(scan(b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n").is_err());
    }
}
