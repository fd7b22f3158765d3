//! CalendarServer 3+ `augments.xml`: who is enabled for calendaring, and a text-level editor that
//! adds records and rewrites `<uid>` values while leaving every other byte of the file as it was.
//!
//! Format (facts from CalendarServer's augments parser): a root `<augments>` holding `<record>`
//! elements; each record has a `<uid>` (a GUID, or a wildcard `XX*` / `Type-XX*` / `Type-Default`
//! / `Default`) and optional `<enable>`, `<enable-calendar>`, `<enable-addressbook>`,
//! `<auto-schedule>` (3.x) or `<auto-schedule-mode>` (later) children. A GUID without its own
//! record takes the first of `Type-XX*`, `Type-X*`, `XX*`, `X*`, `Type-Default`, `Default`; with
//! none of those every service is enabled. A record that omits `enable-calendar` disables it.
//!
//! The file is never parsed and re-serialised: a small scanner finds byte offsets, and edits
//! splice text in, so comments, formatting and unknown elements stay byte-identical.

use crate::address::{Guid, RecordType};
use crate::error::{Error, Result};
use std::ops::Range;
use std::path::Path;

/// One child element of a `<record>`: its name, the byte range of its text content and the text
/// (entities decoded, trimmed).
#[derive(Clone, Debug)]
pub struct Field {
    /// Element name (e.g. `uid`, `enable-calendar`).
    pub name: String,
    /// Byte range of the text content in the file, for rewriting it in place.
    pub text_span: Range<usize>,
    /// The text content, entities decoded and trimmed.
    pub text: String,
}

/// One `<record>` of the file.
#[derive(Clone, Debug)]
pub struct AugmentRecord {
    /// Byte range of the whole element, `<record` to the end of `</record>`.
    pub span: Range<usize>,
    /// 1-based line of `<record`.
    pub line: usize,
    /// Child elements, in file order.
    pub fields: Vec<Field>,
}

impl AugmentRecord {
    /// The first child element called `name`, if any.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The record's `<uid>` text, if it has one.
    pub fn uid(&self) -> Option<&str> {
        self.field("uid").map(|f| f.text.as_str())
    }

    fn flag(&self, name: &str) -> Option<bool> {
        self.field(name).map(|f| f.text == "true")
    }
}

/// The scanned file: its bytes and where things are.
#[derive(Clone, Debug)]
pub struct AugmentsFile {
    /// The whole file's text, as read.
    pub text: String,
    /// Name used in messages (the file's path).
    pub name: String,
    /// Every `<record>`, in file order.
    pub records: Vec<AugmentRecord>,
    /// Offset of `</augments>`, or of `<augments/>` when the root is empty-element.
    root_close: usize,
    root_self_closed: Option<Range<usize>>,
    /// Whether any record carries `<enable>` (3.x files): then a record without it is disabled.
    pub uses_enable: bool,
    /// Whether records use `<auto-schedule-mode>` (later versions) rather than `<auto-schedule>`.
    pub uses_auto_schedule_mode: bool,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let Some(end) = after.find(';') else {
            out.push_str(&rest[i..]);
            return out;
        };
        let ent = &after[..end];
        let ch = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => {
                let num = if let Some(h) = ent.strip_prefix("#x").or_else(|| ent.strip_prefix("#X"))
                {
                    u32::from_str_radix(h, 16).ok()
                } else {
                    ent.strip_prefix('#').and_then(|d| d.parse().ok())
                };
                num.and_then(char::from_u32)
            }
        };
        match ch {
            Some(c) => out.push(c),
            None => out.push_str(&rest[i..i + 2 + end]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Escapes text for element content.
pub fn escape_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

struct Open {
    name: String,
    start: usize,
    content_start: usize,
}

/// The state of [`AugmentsFile::parse`] while it reads: open elements, records so far.
struct Scanner<'t> {
    text: &'t str,
    name: &'t str,
    stack: Vec<Open>,
    records: Vec<AugmentRecord>,
    current: Option<AugmentRecord>,
    root_seen: bool,
    root_close: Option<usize>,
    root_self_closed: Option<std::ops::Range<usize>>,
}

impl Scanner<'_> {
    fn b(&self) -> &[u8] {
        self.text.as_bytes()
    }

    /// A usage error at byte `at`, naming the file and line.
    fn err(&self, at: usize, msg: &str) -> Error {
        Error::usage(format!("{}:{}: {msg}", self.name, line_of(self.text, at)))
    }

    fn find(&self, from: usize, pat: &str) -> Option<usize> {
        self.text[from..].find(pat).map(|i| from + i)
    }

    /// `<!…>` at `i` (DOCTYPE, possibly with an internal subset in brackets): skipped; returns
    /// the offset after it.
    fn declaration(&mut self, i: usize) -> Result<usize> {
        // DOCTYPE, possibly with an internal subset in brackets.
        let mut j = i + 2;
        let mut depth = 0i32;
        let mut quote: Option<u8> = None;
        loop {
            let Some(&c) = self.b().get(j) else {
                return Err(self.err(i, "declaration never closed"));
            };
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, b'"' | b'\'') => quote = Some(c),
                (None, b'[') => depth += 1,
                (None, b']') => depth -= 1,
                (None, b'>') if depth <= 0 => break,
                _ => {}
            }
            j += 1;
        }
        Ok(j + 1)
    }

    /// `</tag>` at `i`: closes a record (depth 1) or one of its fields (depth 2).
    fn end_tag(&mut self, i: usize) -> Result<usize> {
        let end = self
            .find(i, ">")
            .ok_or_else(|| self.err(i, "end tag never closed"))?;
        let tag = self.text[i + 2..end].trim();
        let open = self
            .stack
            .pop()
            .ok_or_else(|| self.err(i, &format!("`</{tag}>` closes nothing")))?;
        if open.name != tag {
            return Err(self.err(
                i,
                &format!(
                    "`</{tag}>` closes `<{}>` opened on line {}",
                    open.name,
                    line_of(self.text, open.start)
                ),
            ));
        }
        match self.stack.len() {
            0 => self.root_close = Some(i),
            1 => {
                if let Some(mut r) = self.current.take() {
                    r.span = open.start..end + 1;
                    self.records.push(r);
                }
            }
            2 => {
                if let Some(r) = self.current.as_mut() {
                    let raw = &self.text[open.content_start..i];
                    let lead = raw.len() - raw.trim_start().len();
                    let trimmed = raw.trim();
                    let span = open.content_start + lead..open.content_start + lead + trimmed.len();
                    r.fields.push(Field {
                        name: open.name.clone(),
                        text_span: span,
                        text: decode_entities(trimmed),
                    });
                }
            }
            _ => {}
        }
        Ok(end + 1)
    }

    /// A start or empty-element tag at `i` (attribute values may hold '>'): the root, a record,
    /// or an empty field.
    fn start_tag(&mut self, i: usize) -> Result<usize> {
        // Start or empty-element tag; attribute values may hold '>'.
        let mut j = i + 1;
        let mut quote: Option<u8> = None;
        loop {
            let Some(&c) = self.b().get(j) else {
                return Err(self.err(i, "tag never closed"));
            };
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, b'"' | b'\'') => quote = Some(c),
                (None, b'>') => break,
                _ => {}
            }
            j += 1;
        }
        let inner = &self.text[i + 1..j];
        let empty = inner.ends_with('/');
        let inner = inner.trim_end_matches('/');
        let tag: String = inner
            .split(|c: char| c.is_whitespace())
            .next()
            .unwrap_or("")
            .to_string();
        if tag.is_empty() {
            return Err(self.err(i, "a `<` that starts no tag"));
        }
        if self.stack.is_empty() {
            if self.root_seen {
                return Err(self.err(i, "a second root element"));
            }
            self.root_seen = true;
            if tag != "augments" {
                return Err(self.err(
                    i,
                    &format!("the root element is `<{tag}>`, not `<augments>`"),
                ));
            }
            if empty {
                self.root_self_closed = Some(i..j + 1);
                self.root_close = Some(i);
            }
        } else if self.stack.len() == 1 {
            if tag != "record" {
                return Err(self.err(
                    i,
                    &format!("`<{tag}>` inside `<augments>` (only `<record>` is allowed)"),
                ));
            }
            let r = AugmentRecord {
                span: i..j + 1,
                line: line_of(self.text, i),
                fields: Vec::new(),
            };
            if empty {
                self.records.push(r);
            } else {
                self.current = Some(r);
            }
        } else if self.stack.len() == 2 && empty {
            if let Some(r) = self.current.as_mut() {
                r.fields.push(Field {
                    name: tag.clone(),
                    text_span: j + 1..j + 1,
                    text: String::new(),
                });
            }
        }
        if !empty {
            self.stack.push(Open {
                name: tag,
                start: i,
                content_start: j + 1,
            });
        }
        Ok(j + 1)
    }
}

impl AugmentsFile {
    /// Reads and scans a file; a file that is not a well-formed augments document is a usage
    /// error naming the file and line.
    pub fn read(path: &Path) -> Result<AugmentsFile> {
        let bytes = std::fs::read(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::usage(format!(
                    "[provision] augments_file {}: file not found",
                    path.display()
                ))
            } else {
                Error::io("cannot read", path, e)
            }
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            Error::usage(format!(
                "{}: not UTF-8 (byte {})",
                path.display(),
                e.utf8_error().valid_up_to()
            ))
        })?;
        AugmentsFile::parse(text, &path.display().to_string())
    }

    /// Scans augments XML text.
    pub fn parse(text: String, name: &str) -> Result<AugmentsFile> {
        let mut sc = Scanner {
            text: &text,
            name,
            stack: Vec::new(),
            records: Vec::new(),
            current: None,
            root_seen: false,
            root_close: None,
            root_self_closed: None,
        };
        let b = text.as_bytes();
        let mut i = 0usize;
        while i < b.len() {
            if b[i] != b'<' {
                if sc.stack.is_empty()
                    && !b[i].is_ascii_whitespace()
                    && !(i == 0 && text.starts_with('\u{feff}'))
                {
                    return Err(sc.err(i, "text outside the root element"));
                }
                i += if i == 0 && text.starts_with('\u{feff}') {
                    3
                } else {
                    1
                };
                continue;
            }
            let rest = &text[i..];
            if rest.starts_with("<!--") {
                let end = sc
                    .find(i + 4, "-->")
                    .ok_or_else(|| sc.err(i, "comment never closed"))?;
                i = end + 3;
            } else if rest.starts_with("<![CDATA[") {
                if sc.stack.is_empty() {
                    return Err(sc.err(i, "CDATA outside the root element"));
                }
                let end = sc
                    .find(i + 9, "]]>")
                    .ok_or_else(|| sc.err(i, "CDATA never closed"))?;
                i = end + 3;
            } else if rest.starts_with("<?") {
                let end = sc
                    .find(i + 2, "?>")
                    .ok_or_else(|| sc.err(i, "processing instruction never closed"))?;
                i = end + 2;
            } else if rest.starts_with("<!") {
                i = sc.declaration(i)?;
            } else if rest.starts_with("</") {
                i = sc.end_tag(i)?;
            } else {
                i = sc.start_tag(i)?;
            }
        }
        if let Some(open) = sc.stack.last() {
            return Err(sc.err(open.start, &format!("`<{}>` is never closed", open.name)));
        }
        let Some(root_close) = sc.root_close else {
            return Err(sc.err(0, "no `<augments>` root element"));
        };
        let root_self_closed = sc.root_self_closed.clone();
        let records = std::mem::take(&mut sc.records);
        for r in &records {
            if r.uid().is_none_or(str::is_empty) {
                return Err(Error::usage(format!(
                    "{name}:{}: a <record> without a <uid>",
                    r.line
                )));
            }
        }
        let uses_enable = records.iter().any(|r| r.field("enable").is_some());
        let uses_auto_schedule_mode = records
            .iter()
            .any(|r| r.field("auto-schedule-mode").is_some());
        Ok(AugmentsFile {
            text,
            name: name.to_string(),
            records,
            root_close,
            root_self_closed,
            uses_enable,
            uses_auto_schedule_mode,
        })
    }

    /// The record with exactly this uid (GUIDs compared case-insensitively, as the server
    /// upper-cases them).
    pub fn exact(&self, uid: &str) -> Option<&AugmentRecord> {
        let want = Guid::parse(uid);
        self.records.iter().find(|r| {
            let u = r.uid().unwrap_or("");
            match (&want, Guid::parse(u)) {
                (Some(w), Some(g)) => *w == g,
                _ => u == uid,
            }
        })
    }

    /// The record the server uses for a GUID: its own, else the first wildcard / default that
    /// matches; `None` means no record at all applies (every service enabled).
    pub fn effective(&self, guid: &Guid, kind: RecordType) -> Option<(&AugmentRecord, bool)> {
        if let Some(r) = self.exact(guid.as_str()) {
            return Some((r, true));
        }
        let t = type_name(kind);
        let g = guid.as_str();
        let lookups = [
            format!("{t}-{}*", &g[..2.min(g.len())]),
            format!("{t}-{}*", &g[..1.min(g.len())]),
            format!("{}*", &g[..2.min(g.len())]),
            format!("{}*", &g[..1.min(g.len())]),
            format!("{t}-Default"),
            "Default".to_string(),
        ];
        lookups
            .iter()
            .find_map(|l| self.records.iter().find(|r| r.uid() == Some(l.as_str())))
            .map(|r| (r, false))
    }

    /// Whether the record enables calendaring.
    pub fn enables_calendar(&self, r: &AugmentRecord) -> bool {
        let enable_ok = if self.uses_enable {
            r.flag("enable") == Some(true)
        } else {
            r.flag("enable") != Some(false)
        };
        enable_ok && r.flag("enable-calendar") == Some(true)
    }

    /// Whether `guid` of `kind` gets calendaring, and the uid of the record deciding it.
    pub fn calendar_enabled(&self, guid: &Guid, kind: RecordType) -> (bool, Option<String>, bool) {
        match self.effective(guid, kind) {
            Some((r, own)) => (self.enables_calendar(r), r.uid().map(str::to_string), own),
            None => (true, None, false),
        }
    }

    /// Newline and indentation used by the file's records.
    fn style(&self) -> (&'static str, String, String) {
        let nl = if self.text.contains("\r\n") {
            "\r\n"
        } else {
            "\n"
        };
        let indent_before = |at: usize| -> Option<String> {
            let line_start = self.text[..at].rfind('\n').map(|p| p + 1).unwrap_or(0);
            let ws = &self.text[line_start..at];
            (ws.chars().all(|c| c == ' ' || c == '\t')).then(|| ws.to_string())
        };
        let rec_indent = self
            .records
            .first()
            .and_then(|r| indent_before(r.span.start))
            .unwrap_or_else(|| "  ".to_string());
        let field_indent = self
            .records
            .iter()
            .flat_map(|r| r.fields.first())
            .find_map(|f| {
                // The field's tag starts before its text; find its `<`.
                let tag_start = self.text[..f.text_span.start].rfind('<')?;
                indent_before(tag_start).filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| format!("{rec_indent}  "));
        (nl, rec_indent, field_indent)
    }
}

/// CalendarServer's record type name in wildcard uids.
pub fn type_name(kind: RecordType) -> &'static str {
    match kind {
        RecordType::User => "User",
        RecordType::Group => "Group",
        RecordType::Location => "Location",
        RecordType::Resource => "Resource",
    }
}

/// A record to add.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NewRecord {
    /// GUID written as `<uid>`.
    pub guid: Guid,
    /// Record type of the principal (shown in the reports; not written to the record).
    pub kind: RecordType,
    /// Value written for `<enable-calendar>`.
    pub enable_calendar: bool,
    /// Value written for `<enable-addressbook>`.
    pub enable_addressbook: bool,
    /// Write `<auto-schedule>true` (or `<auto-schedule-mode>automatic`); rooms and resources only.
    pub auto_schedule: bool,
}

/// A `<uid>` to rewrite.
#[derive(Clone, Debug, serde::Serialize)]
pub struct UidRewrite {
    /// The old `<uid>` text, as found.
    pub old: String,
    /// The current GUID written in its place.
    pub new: Guid,
    /// Line of the record.
    pub line: usize,
    #[serde(skip)]
    /// Byte range of the old uid text in the file.
    pub span: Range<usize>,
}

/// The edited text: uids rewritten in place, new records inserted before `</augments>`.
pub fn edit(file: &AugmentsFile, rewrites: &[UidRewrite], adds: &[NewRecord]) -> String {
    let (nl, rec_indent, field_indent) = file.style();
    let mut block = String::new();
    for a in adds {
        block.push_str(&rec_indent);
        block.push_str("<record>");
        block.push_str(nl);
        let mut field = |name: &str, value: &str| {
            block.push_str(&format!("{field_indent}<{name}>{value}</{name}>{nl}"));
        };
        field("uid", &escape_text(a.guid.as_str()));
        if file.uses_enable || file.records.is_empty() {
            field("enable", "true");
        }
        field(
            "enable-calendar",
            if a.enable_calendar { "true" } else { "false" },
        );
        field(
            "enable-addressbook",
            if a.enable_addressbook {
                "true"
            } else {
                "false"
            },
        );
        if a.auto_schedule {
            if file.uses_auto_schedule_mode {
                field("auto-schedule-mode", "automatic");
            } else {
                field("auto-schedule", "true");
            }
        }
        block.push_str(&rec_indent);
        block.push_str("</record>");
        block.push_str(nl);
    }
    // Splices, applied from the end so earlier offsets stay valid.
    let mut splices: Vec<(Range<usize>, String)> = rewrites
        .iter()
        .map(|r| (r.span.clone(), escape_text(r.new.as_str())))
        .collect();
    if !adds.is_empty() {
        if let Some(sc) = &file.root_self_closed {
            let tag = &file.text[sc.clone()];
            let open = tag.trim_end_matches('>').trim_end_matches('/').trim_end();
            splices.push((sc.clone(), format!("{open}>{nl}{block}</augments>")));
        } else {
            let at = file.root_close;
            let line_start = file.text[..at].rfind('\n').map(|p| p + 1).unwrap_or(0);
            let only_ws = file.text[line_start..at]
                .chars()
                .all(|c| c == ' ' || c == '\t');
            if only_ws {
                splices.push((line_start..line_start, block));
            } else {
                splices.push((at..at, format!("{nl}{block}")));
            }
        }
    }
    splices.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut out = file.text.clone();
    for (r, s) in splices {
        out.replace_range(r, &s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<!DOCTYPE augments SYSTEM \"augments.dtd\">\n<!-- keep me <record> -->\n<augments>\n  <record>\n    <uid>Default</uid>\n    <enable>true</enable>\n    <enable-calendar>false</enable-calendar>\n  </record>\n  <record>\n    <uid> 11111111-1111-1111-1111-111111111111 </uid>\n    <enable>true</enable>\n    <enable-calendar>true</enable-calendar>\n  </record>\n</augments>\n";

    fn g(s: &str) -> Guid {
        Guid::parse(s).unwrap()
    }

    #[test]
    fn scans_records_and_lookup_order() {
        let f = AugmentsFile::parse(SAMPLE.into(), "a.xml").unwrap();
        assert_eq!(f.records.len(), 2);
        assert!(f.uses_enable);
        assert_eq!(f.records[1].line, 10);
        let (on, uid, own) =
            f.calendar_enabled(&g("11111111-1111-1111-1111-111111111111"), RecordType::User);
        assert!(on && own);
        assert_eq!(uid.as_deref(), Some("11111111-1111-1111-1111-111111111111"));
        let (on, uid, own) =
            f.calendar_enabled(&g("22222222-1111-1111-1111-111111111111"), RecordType::User);
        assert!(!on && !own);
        assert_eq!(uid.as_deref(), Some("Default"));
    }

    #[test]
    fn wildcards_win_over_default() {
        let text = "<augments><record><uid>Default</uid></record><record><uid>Location-AB*</uid><enable-calendar>true</enable-calendar></record></augments>";
        let f = AugmentsFile::parse(text.into(), "a.xml").unwrap();
        let room = g("AB000000-0000-0000-0000-000000000000");
        assert!(f.calendar_enabled(&room, RecordType::Location).0);
        assert!(!f.calendar_enabled(&room, RecordType::User).0);
        let none = AugmentsFile::parse("<augments/>".into(), "a.xml").unwrap();
        assert!(none.calendar_enabled(&room, RecordType::User).0);
    }

    #[test]
    fn edit_keeps_everything_else() {
        let f = AugmentsFile::parse(SAMPLE.into(), "a.xml").unwrap();
        let span = f.records[1].field("uid").unwrap().text_span.clone();
        let rw = UidRewrite {
            old: "11111111-1111-1111-1111-111111111111".into(),
            new: g("33333333-1111-1111-1111-111111111111"),
            line: 10,
            span,
        };
        let add = NewRecord {
            guid: g("44444444-1111-1111-1111-111111111111"),
            kind: RecordType::Location,
            enable_calendar: true,
            enable_addressbook: false,
            auto_schedule: true,
        };
        let out = edit(&f, &[rw], &[add]);
        let expected = SAMPLE
            .replace(
                "11111111-1111-1111-1111-111111111111",
                "33333333-1111-1111-1111-111111111111",
            )
            .replace(
                "</augments>",
                "  <record>\n    <uid>44444444-1111-1111-1111-111111111111</uid>\n    <enable>true</enable>\n    <enable-calendar>true</enable-calendar>\n    <enable-addressbook>false</enable-addressbook>\n    <auto-schedule>true</auto-schedule>\n  </record>\n</augments>",
            );
        assert_eq!(out, expected);
        let again = AugmentsFile::parse(out, "a.xml").unwrap();
        assert_eq!(again.records.len(), 3);
    }

    #[test]
    fn self_closed_root_and_crlf() {
        let f = AugmentsFile::parse(
            "<?xml version=\"1.0\"?>\r\n<augments />\r\n".into(),
            "a.xml",
        )
        .unwrap();
        let add = NewRecord {
            guid: g("44444444-1111-1111-1111-111111111111"),
            kind: RecordType::User,
            enable_calendar: true,
            enable_addressbook: true,
            auto_schedule: false,
        };
        let out = edit(&f, &[], &[add]);
        assert!(
            out.starts_with("<?xml version=\"1.0\"?>\r\n<augments>\r\n  <record>\r\n"),
            "{out:?}"
        );
        assert!(out.ends_with("  </record>\r\n</augments>\r\n"), "{out:?}");
        let again = AugmentsFile::parse(out, "a.xml").unwrap();
        assert_eq!(again.records.len(), 1);
    }

    #[test]
    fn malformed_files_name_the_line() {
        let e = AugmentsFile::parse(
            "<augments>\n<record>\n<uid>x</uid>\n</augments>".into(),
            "a.xml",
        )
        .unwrap_err();
        assert!(e.message.starts_with("a.xml:4:"), "{}", e.message);
        let e = AugmentsFile::parse("<accounts/>".into(), "a.xml").unwrap_err();
        assert!(e.message.contains("not `<augments>`"), "{}", e.message);
        let e = AugmentsFile::parse(
            "<augments>\n<record><enable/></record></augments>".into(),
            "a.xml",
        )
        .unwrap_err();
        assert!(e.message.contains("without a <uid>"), "{}", e.message);
    }
}
