//! The mapping file an admin writes (`[rewrite] mapping_file`): rows of an old address and what it
//! becomes, read before any rule.
//!
//! The format is CSV, forgiving in what people and spreadsheets produce:
//! - a UTF-8 byte-order mark is ignored; `#` starts a comment line; blank lines are skipped;
//! - fields may be quoted (`"Doe, Jane"`), with spaces around them trimmed;
//! - a header row naming the columns `old` and `new` may stand on any line (a file pasted
//!   together from two keeps working) and the columns may be in any order, other columns (such as
//!   those of `mapping-todo.csv`, which `plan` writes) are ignored; before any header the first
//!   field is the old address and the last the target;
//! - the old value is any address form the store holds (`mailto:`, `urn:uuid:`, a principal URL,
//!   a bare GUID); a bare `user@example.com` means `mailto:user@example.com`;
//! - the target is the GUID or the short name of a current directory record, or `-` for a
//!   person who left: their addresses stay as they are and are no longer reported as problems.
//!   An empty target is skipped with a warning (an unfilled row of `mapping-todo.csv` must not
//!   acknowledge anyone by accident);
//! - the same row twice is accepted once; two rows giving one old value different targets are an
//!   error naming both lines.

use crate::address::CalAddress;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::Path;

/// What an old value becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A current record, by GUID or short name as written.
    Record(String),
    /// A person who left: leave their addresses as they are.
    Leaver,
}

/// One row of the mapping file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The old value as an address (`mailto:` added to a bare e-mail address).
    pub old: String,
    /// The normalised key of `old` ([`CalAddress::key`]).
    pub key: String,
    /// What the row maps it to: a current record, or `-` for a leaver.
    pub target: Target,
    /// `FILE:LINE`, for messages and the reports' evidence.
    pub at: String,
}

/// The rows of a mapping file, and what was wrong with it short of an error.
#[derive(Clone, Debug, Default)]
pub struct MappingFile {
    /// Rows in file order, one per old value (repeats skipped; conflicting rows are an error).
    pub rows: Vec<Row>,
    /// Rows skipped (no target, repeated), each naming its line.
    pub warnings: Vec<String>,
}

/// Columns of the rows that follow a header.
#[derive(Clone, Copy)]
struct Columns {
    old: usize,
    new: Option<usize>,
}

fn header_columns(fields: &[String]) -> Option<Columns> {
    let find = |name: &str| fields.iter().position(|f| f.eq_ignore_ascii_case(name));
    match (find("old"), find("new")) {
        (Some(old), Some(new)) => Some(Columns {
            old,
            new: Some(new),
        }),
        _ => None,
    }
}

/// An old value as written by a person: a bare e-mail address is a `mailto:` one.
pub fn old_address(value: &str) -> String {
    let v = value.trim();
    if v.contains('@') && !v.contains(':') && !v.contains('/') {
        format!("mailto:{v}")
    } else {
        v.to_string()
    }
}

/// Reads and checks a mapping file (targets are resolved against the directory by the caller).
pub fn read(path: &Path) -> Result<MappingFile> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::usage(format!("cannot read mapping_file {}: {e}", path.display())))?;
    parse(&bytes, &path.display().to_string())
}

/// [`read`] on bytes; `name` is used in messages.
pub fn parse(bytes: &[u8], name: &str) -> Result<MappingFile> {
    let text = blank_comments(bytes, name)?;
    let bytes = &text[..];
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let mut out = MappingFile::default();
    let mut columns: Option<Columns> = None;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut record = csv::StringRecord::new();
    // The reader's own line numbers skip blank lines: count from byte offsets instead.
    let newlines: Vec<u64> = memchr::memchr_iter(b'\n', bytes)
        .map(|i| i as u64)
        .collect();
    let line_at = |pos: Option<&csv::Position>| {
        pos.map(|p| newlines.partition_point(|&nl| nl < p.byte()) + 1)
            .unwrap_or(0)
    };
    loop {
        let more = reader.read_record(&mut record).map_err(|e| {
            let line = line_at(e.position());
            Error::usage(format!("{name}:{line}: {e}"))
        })?;
        if !more {
            break;
        }
        let line = line_at(record.position());
        let at = format!("{name}:{line}");
        let fields: Vec<String> = record.iter().map(str::to_string).collect();
        if fields.iter().all(String::is_empty) {
            continue;
        }
        if let Some(c) = header_columns(&fields) {
            columns = Some(c);
            continue;
        }
        let (old, new) = old_and_new(&fields, columns, &at)?;
        if old.is_empty() {
            return Err(Error::usage(format!("{at}: the old value is empty")));
        }
        let old = old_address(&old);
        let target = match new.as_str() {
            "" => {
                out.warnings.push(format!(
                    "{at}: no target for {old}: row skipped (write a GUID or short name, or - for a person who left)"
                ));
                continue;
            }
            "-" => Target::Leaver,
            t => Target::Record(t.to_string()),
        };
        let key = CalAddress::parse(&old).key();
        if let Some(&i) = seen.get(&key) {
            let first: &Row = &out.rows[i];
            if first.target == target {
                out.warnings
                    .push(format!("{at}: repeats {} for {old}", first.at));
                continue;
            }
            return Err(Error::usage(format!(
                "{} and {at} map {old} to different targets ({} and {}); keep one",
                first.at,
                describe(&first.target),
                describe(&target)
            )));
        }
        seen.insert(key.clone(), out.rows.len());
        out.rows.push(Row {
            old,
            key,
            target,
            at,
        });
    }
    Ok(out)
}

/// The file as UTF-8 text (a BOM dropped) with its comment lines blanked out with spaces, so
/// byte offsets stay those of the file.
fn blank_comments(bytes: &[u8], name: &str) -> Result<Vec<u8>> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if let Err(e) = std::str::from_utf8(bytes) {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        return Err(Error::usage(format!(
            "{name}:{line}: not UTF-8 text (save the file as UTF-8)"
        )));
    }
    let mut text = Vec::with_capacity(bytes.len());
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if line.trim_ascii_start().starts_with(b"#") {
            text.extend(
                line.iter()
                    .map(|&b| if b == b'\r' || b == b'\n' { b } else { b' ' }),
            );
        } else {
            text.extend_from_slice(line);
        }
    }
    Ok(text)
}

/// A row's old and new values: by the header's columns, else the first and the last field.
fn old_and_new(fields: &[String], columns: Option<Columns>, at: &str) -> Result<(String, String)> {
    match columns {
        Some(c) => Ok((
            fields.get(c.old).cloned().unwrap_or_default(),
            c.new.and_then(|n| fields.get(n).cloned()).unwrap_or_default(),
        )),
        None if fields.len() < 2 => Err(Error::usage(format!(
            "{at}: expected `old,new` (an old address and a GUID, short name or - for a person who left), found `{}`",
            fields.join(",")
        ))),
        None => Ok((fields[0].clone(), fields[fields.len() - 1].clone())),
    }
}

fn describe(t: &Target) -> String {
    match t {
        Target::Record(s) => s.clone(),
        Target::Leaver => "- (left)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str) -> Vec<(String, Target)> {
        parse(text.as_bytes(), "m.csv")
            .unwrap()
            .rows
            .into_iter()
            .map(|r| (r.old, r.target))
            .collect()
    }

    #[test]
    fn bom_comments_quotes_and_bare_mail() {
        let got = rows("\u{feff}# people\nold,new\n\"jane@example.com\" , jdoe\n\n\"mailto:x@example.com\",\"-\"\n");
        assert_eq!(
            got,
            vec![
                (
                    "mailto:jane@example.com".to_string(),
                    Target::Record("jdoe".into())
                ),
                ("mailto:x@example.com".to_string(), Target::Leaver),
            ]
        );
    }

    #[test]
    fn header_on_any_line_and_columns_in_any_order() {
        let text = "a@example.com,alice\n# second part, pasted\nnote,new,old\n\"Doe, Jane\",jdoe,urn:uuid:AAAAAAAA-0000-0000-0000-000000000001\n";
        let got = rows(text);
        assert_eq!(got[0].1, Target::Record("alice".into()));
        assert_eq!(
            got[1],
            (
                "urn:uuid:AAAAAAAA-0000-0000-0000-000000000001".to_string(),
                Target::Record("jdoe".into())
            )
        );
    }

    #[test]
    fn todo_rows_left_empty_are_skipped_with_a_warning() {
        let f = parse(
            b"old,form,outcome,resources,candidates,new\nmailto:s@example.com,mailto,ambiguous,3,\"A (a), B (b)\",\n",
            "todo.csv",
        )
        .unwrap();
        assert!(f.rows.is_empty());
        assert!(
            f.warnings[0].starts_with("todo.csv:2: no target"),
            "{:?}",
            f.warnings
        );
    }

    #[test]
    fn duplicates_are_kept_once_and_conflicts_name_both_lines() {
        let f = parse(b"a@example.com,alice\nA@EXAMPLE.COM,alice\n", "m.csv").unwrap();
        assert_eq!(f.rows.len(), 1);
        assert!(
            f.warnings[0].contains("m.csv:2: repeats m.csv:1"),
            "{:?}",
            f.warnings
        );
        let e = parse(
            b"a@example.com,alice\n# x\nmailto:a@example.com,bob\n",
            "m.csv",
        )
        .unwrap_err();
        assert!(
            e.message.contains("m.csv:1 and m.csv:3") && e.message.contains("alice and bob"),
            "{}",
            e.message
        );
    }

    #[test]
    fn bad_rows_are_named() {
        let e = parse(b"# x\njust-one-field\n", "m.csv").unwrap_err();
        assert!(
            e.message.contains("m.csv:2: expected `old,new`"),
            "{}",
            e.message
        );
        let e = parse(b"x,y\n\xff\xfe,bob\n", "m.csv").unwrap_err();
        assert!(e.message.contains("m.csv:2: not UTF-8"), "{}", e.message);
    }
}
