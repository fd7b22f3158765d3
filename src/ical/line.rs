//! The RFC 5545 content-line layer, on bytes: physical lines → logical (unfolded) lines, a logical
//! line → name, parameters and value, and back (parameter encoding, folding at 75 octets).
//!
//! Nothing here allocates per line except [`LineReader`] when a line is folded (into one reused
//! buffer). Every function is total: malformed input gives an error value, never a panic.

use std::borrow::Cow;
use std::fmt;

/// The line break that ends a physical line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eol {
    /// `\r\n`, as RFC 5545 requires.
    CrLf,
    /// A bare `\n`.
    Lf,
    /// The last line of a file without a final line break.
    None,
}

impl Eol {
    /// The terminator's bytes (empty for `None`).
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Eol::CrLf => b"\r\n",
            Eol::Lf => b"\n",
            Eol::None => b"",
        }
    }
}

/// Where one logical line sits in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineInfo {
    /// Byte offset of the first physical line (a UTF-8 BOM at offset 0 belongs to the first line).
    pub start: usize,
    /// Byte offset where the line's text begins (`start`, or 3 after a BOM).
    pub text_start: usize,
    /// Byte offset just past the last physical line's terminator.
    pub end: usize,
    /// 1-based physical line number of the first physical line.
    pub line: usize,
    /// How many physical lines it spans (1 = not folded).
    pub physical_lines: usize,
    /// The terminator of its last physical line.
    pub eol: Eol,
    /// The line break to use when folding this line again: its own terminator, else the break of
    /// its first physical line, else the last one seen in the file, else CRLF.
    pub fold_eol: Eol,
}

/// A logical line: its place and its unfolded text (without the terminator).
#[derive(Debug)]
pub struct Logical<'s> {
    /// Where the logical line is in the file and how it ended.
    pub info: LineInfo,
    /// The unfolded text, without the terminator.
    pub content: &'s [u8],
}

/// A NUL byte: the data is binary, not text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NulByte {
    /// 1-based physical line.
    pub line: usize,
    /// 1-based byte column.
    pub column: usize,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Reads logical lines from bytes. A physical line that begins with a space or a tab continues
/// the previous one (the break and that one character are removed); both CRLF and a bare LF end a
/// physical line. Use it as `while let Some(line) = reader.next_line() { ... }`.
pub struct LineReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    next_line_no: usize,
    last_eol: Option<Eol>,
    scratch: Vec<u8>,
}

/// One physical line: (text end, terminator, start of the next line).
#[inline]
fn physical(bytes: &[u8], from: usize, line_no: usize) -> Result<(usize, Eol, usize), NulByte> {
    let rest = &bytes[from..];
    match memchr::memchr2(b'\n', 0, rest) {
        Some(i) if rest[i] == 0 => Err(NulByte {
            line: line_no,
            column: i + 1,
        }),
        Some(i) => {
            if i > 0 && rest[i - 1] == b'\r' {
                Ok((from + i - 1, Eol::CrLf, from + i + 1))
            } else {
                Ok((from + i, Eol::Lf, from + i + 1))
            }
        }
        None => Ok((bytes.len(), Eol::None, bytes.len())),
    }
}

impl<'a> LineReader<'a> {
    /// A reader over a whole resource's bytes, from its first line.
    pub fn new(bytes: &'a [u8]) -> Self {
        LineReader {
            bytes,
            pos: 0,
            next_line_no: 1,
            last_eol: None,
            scratch: Vec::new(),
        }
    }

    /// The next logical line, `None` at the end, or the NUL byte that makes the data binary.
    #[allow(clippy::should_implement_trait)]
    pub fn next_line(&mut self) -> Option<Result<Logical<'_>, NulByte>> {
        let bytes = self.bytes;
        if self.pos >= bytes.len() {
            return None;
        }
        let start = self.pos;
        let line = self.next_line_no;
        let text_start = if start == 0 && bytes.starts_with(BOM) {
            BOM.len()
        } else {
            start
        };
        let (text_end, first_eol, mut next) = match physical(bytes, text_start, line) {
            Ok(p) => p,
            Err(e) => {
                self.pos = bytes.len();
                return Some(Err(e));
            }
        };
        let mut eol = first_eol;
        let mut count = 1;
        let mut folded = false;
        while next < bytes.len() && matches!(bytes[next], b' ' | b'\t') {
            let (t_end, t_eol, t_next) = match physical(bytes, next, line + count) {
                Ok(p) => p,
                Err(e) => {
                    self.pos = bytes.len();
                    return Some(Err(e));
                }
            };
            if !folded {
                self.scratch.clear();
                self.scratch.extend_from_slice(&bytes[text_start..text_end]);
                folded = true;
            }
            self.scratch.extend_from_slice(&bytes[next + 1..t_end]);
            eol = t_eol;
            count += 1;
            next = t_next;
        }
        self.pos = next;
        self.next_line_no = line + count;
        let fold_eol = match (eol, first_eol, self.last_eol) {
            (Eol::None, Eol::None, Some(prev)) => prev,
            (Eol::None, Eol::None, None) => Eol::CrLf,
            (Eol::None, first, _) => first,
            (own, _, _) => own,
        };
        if eol != Eol::None {
            self.last_eol = Some(eol);
        }
        let info = LineInfo {
            start,
            text_start,
            end: next,
            line,
            physical_lines: count,
            eol,
            fold_eol,
        };
        let content = if folded {
            &self.scratch[..]
        } else {
            &bytes[text_start..text_end]
        };
        Some(Ok(Logical { info, content }))
    }
}

/// All logical lines of `bytes` as owned values (for tests and tools; the hot paths use
/// [`LineReader`]).
pub fn unfold(bytes: &[u8]) -> Result<Vec<(LineInfo, Vec<u8>)>, NulByte> {
    let mut r = LineReader::new(bytes);
    let mut out = Vec::new();
    while let Some(l) = r.next_line() {
        let l = l?;
        out.push((l.info, l.content.to_vec()));
    }
    Ok(out)
}

/// Longest physical line, in octets, excluding the line break (RFC 5545 §3.1).
pub const FOLD_AT: usize = 75;

#[inline]
fn is_utf8_continuation(b: u8) -> bool {
    b & 0xC0 == 0x80
}

/// Appends `line` folded at [`FOLD_AT`] octets: the first physical line holds up to 75 octets,
/// each continuation a space and up to 74. A break never splits a UTF-8 sequence and never follows
/// a CR (which would read back as CRLF). A line of 75 octets or fewer is written as is. No final
/// line break is written. `line` must not contain LF.
pub fn fold(line: &[u8], eol: Eol, out: &mut Vec<u8>) {
    let eol = match eol {
        Eol::None => Eol::CrLf,
        e => e,
    };
    if line.len() <= FOLD_AT {
        out.extend_from_slice(line);
        return;
    }
    let ok = |c: usize| c < line.len() && !is_utf8_continuation(line[c]) && line[c - 1] != b'\r';
    let mut start = 0;
    let mut limit = FOLD_AT;
    loop {
        if line.len() - start <= limit {
            out.extend_from_slice(&line[start..]);
            return;
        }
        let max = start + limit;
        let cut = (start + 1..=max)
            .rev()
            .find(|&c| ok(c))
            .or_else(|| (max + 1..line.len()).find(|&c| ok(c)));
        match cut {
            Some(c) => {
                out.extend_from_slice(&line[start..c]);
                out.extend_from_slice(eol.as_bytes());
                out.push(b' ');
                start = c;
                limit = FOLD_AT - 1;
            }
            None => {
                out.extend_from_slice(&line[start..]);
                return;
            }
        }
    }
}

/// Why a logical line is not a content line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SplitError {
    /// No `:` between the name (and parameters) and the value.
    NoColon,
    /// No `:` after the parameters; the only ones are inside quoted parameter values.
    NoColonAfterQuotes,
    /// Nothing before the first `;` or `:`.
    EmptyName,
    /// A byte that may not appear in a property name, at this 0-based offset.
    BadNameByte(usize),
    /// A parameter without a name, or a byte that may not appear in one, at this offset.
    BadParamName(usize),
    /// A parameter without `=`, starting at this offset.
    ParamWithoutValue(usize),
    /// A `"` that is never closed, at this offset.
    UnterminatedQuote(usize),
    /// Something other than `,`, `;` or `:` right after a quoted value, at this offset.
    AfterQuote(usize),
}

impl fmt::Display for SplitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SplitError::NoColon => f.write_str("content line without a colon"),
            SplitError::NoColonAfterQuotes => f.write_str(
                "content line without a colon after its parameters (a ':' inside a quoted parameter value does not count)",
            ),
            SplitError::EmptyName => f.write_str("content line without a property name"),
            SplitError::BadNameByte(i) => write!(f, "invalid character in property name at column {}", i + 1),
            SplitError::BadParamName(i) => write!(f, "invalid parameter name at column {}", i + 1),
            SplitError::ParamWithoutValue(i) => write!(f, "parameter without '=' at column {}", i + 1),
            SplitError::UnterminatedQuote(i) => {
                write!(f, "quoted parameter value opened at column {} is never closed", i + 1)
            }
            SplitError::AfterQuote(i) => {
                write!(f, "unexpected character after a quoted parameter value at column {}", i + 1)
            }
        }
    }
}

/// How a quoted parameter value ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Quoting {
    /// RFC 5545: at the next `"` (what vobject, CalendarServer 2.x's parser, reads).
    #[default]
    Rfc,
    /// At the next `"` not escaped by a backslash: inside quotes `\` takes the next character
    /// literally (what pycalendar, CalendarServer 3 and later, reads). Used for a line only when
    /// the RFC reading fails, so where both parsers accept a line they agree on its parts.
    Backslash,
}

/// A logical line split into its parts, all borrowed from the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContentLine<'a> {
    /// The property name as written.
    pub name: &'a [u8],
    /// The parameters as written, each with its leading `;` (empty when there are none).
    pub params: &'a [u8],
    /// Everything after the colon.
    pub value: &'a [u8],
    /// How the quoted parameter values of this line end.
    pub quoting: Quoting,
}

impl<'a> ContentLine<'a> {
    /// The parameters, read the way [`split`] read them.
    pub fn params(&self) -> Params<'a> {
        params_quoted(self.params, self.quoting)
    }
}

/// Letters, digits, `-` (RFC 5545) and `_`, which vobject and pycalendar accept in property and
/// parameter names and CalendarServer's own data holds (`DTSTART;_TZID=...`).
#[inline]
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// The offset just past the `"` that closes the quoted value opened at `open`.
#[inline]
fn closing_quote(line: &[u8], open: usize, quoting: Quoting) -> Option<usize> {
    match quoting {
        Quoting::Rfc => memchr::memchr(b'"', &line[open + 1..]).map(|j| open + 1 + j + 1),
        Quoting::Backslash => {
            let mut i = open + 1;
            while i < line.len() {
                match line[i] {
                    b'\\' => i += 2,
                    b'"' => return Some(i + 1),
                    _ => i += 1,
                }
            }
            None
        }
    }
}

/// Splits a logical line into name, parameters and value (RFC 5545 §3.1), checking that it is
/// well formed: a name of letters, digits, `-` and `_`; parameters `;NAME=value[,value...]` with
/// quoted values allowed to hold `:;,`; then `:`. A line that is not well formed this way but is
/// when a backslash escapes a `"` inside quotes (as pycalendar reads it, and CalendarServer's own
/// data has it: `CN="A \"B\""`) is split that way ([`Quoting::Backslash`]); otherwise the error
/// is the RFC reading's.
pub fn split(line: &[u8]) -> Result<ContentLine<'_>, SplitError> {
    match split_quoted(line, Quoting::Rfc) {
        Err(e) if memchr::memmem::find(line, b"\\\"").is_some() => {
            split_quoted(line, Quoting::Backslash).map_err(|_| e)
        }
        r => r,
    }
}

/// [`split`] with one way of reading quoted values.
pub fn split_quoted(line: &[u8], quoting: Quoting) -> Result<ContentLine<'_>, SplitError> {
    let mut i = 0;
    while i < line.len() && is_name_byte(line[i]) {
        i += 1;
    }
    if i == line.len() {
        return Err(if i == 0 {
            SplitError::EmptyName
        } else {
            SplitError::NoColon
        });
    }
    match line[i] {
        b':' | b';' if i == 0 => return Err(SplitError::EmptyName),
        b':' => {
            return Ok(ContentLine {
                name: &line[..i],
                params: &[],
                value: &line[i + 1..],
                quoting,
            });
        }
        b';' => {}
        _ => return Err(SplitError::BadNameByte(i)),
    }
    let name_end = i;
    // At a ';' that starts a parameter.
    loop {
        let p_start = i;
        i += 1;
        let n_start = i;
        while i < line.len() && is_name_byte(line[i]) {
            i += 1;
        }
        if i == line.len() {
            return Err(if i == n_start {
                SplitError::BadParamName(n_start)
            } else {
                SplitError::NoColon
            });
        }
        if line[i] != b'=' {
            return Err(if i == n_start || !matches!(line[i], b';' | b':') {
                SplitError::BadParamName(i)
            } else {
                SplitError::ParamWithoutValue(p_start)
            });
        }
        if i == n_start {
            return Err(SplitError::BadParamName(n_start));
        }
        i += 1;
        // Values.
        loop {
            if i < line.len() && line[i] == b'"' {
                let open = i;
                match closing_quote(line, open, quoting) {
                    Some(j) => i = j,
                    None => return Err(SplitError::UnterminatedQuote(open)),
                }
                if i < line.len() && !matches!(line[i], b',' | b';' | b':') {
                    return Err(SplitError::AfterQuote(i));
                }
            } else {
                while i < line.len() && !matches!(line[i], b',' | b';' | b':') {
                    i += 1;
                }
            }
            if i == line.len() {
                return Err(if line[name_end..].contains(&b'"') {
                    SplitError::NoColonAfterQuotes
                } else {
                    SplitError::NoColon
                });
            }
            match line[i] {
                b',' => i += 1,
                b';' => break,
                _ => {
                    return Ok(ContentLine {
                        name: &line[..name_end],
                        params: &line[name_end..i],
                        value: &line[i + 1..],
                        quoting,
                    });
                }
            }
        }
    }
}

/// One parameter as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param<'a> {
    /// The whole parameter including its leading `;`.
    pub raw: &'a [u8],
    /// The parameter name as written (compare with [`Param::is`]).
    pub name: &'a [u8],
    /// Everything after `=`: one or more values, each possibly quoted.
    pub value: &'a [u8],
    /// How its quoted values end.
    pub quoting: Quoting,
}

impl Param<'_> {
    /// The value(s), unquoted and RFC 6868-decoded; several values are joined with `,`. A
    /// backslash inside quotes stays as written (pycalendar keeps it too).
    pub fn decoded(&self) -> Cow<'_, [u8]> {
        decode_param_quoted(self.value, self.quoting)
    }

    /// The values as written (quotes kept), split at the commas outside quotes.
    pub fn values(&self) -> impl Iterator<Item = &[u8]> {
        param_values_quoted(self.value, self.quoting)
    }

    /// True when the parameter is called `name` (ASCII case-insensitive).
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }
}

/// Iterates the parameters of [`ContentLine::params`] read with [`Quoting::Rfc`] (use
/// [`ContentLine::params`] for a line [`split`] returned).
pub fn params(raw: &[u8]) -> Params<'_> {
    params_quoted(raw, Quoting::Rfc)
}

/// Iterates parameters whose quoted values end as `quoting` says.
pub fn params_quoted(raw: &[u8], quoting: Quoting) -> Params<'_> {
    Params {
        raw,
        pos: 0,
        quoting,
    }
}

/// Iterator over a content line's parameters (from [`params`] / [`params_quoted`]).
pub struct Params<'a> {
    raw: &'a [u8],
    pos: usize,
    quoting: Quoting,
}

impl<'a> Iterator for Params<'a> {
    type Item = Param<'a>;

    fn next(&mut self) -> Option<Param<'a>> {
        let raw = self.raw;
        if self.pos >= raw.len() {
            return None;
        }
        let start = self.pos;
        // Skip the leading ';'.
        let mut i = start + 1;
        let name_start = i;
        while i < raw.len() && !matches!(raw[i], b'=' | b';') {
            i += 1;
        }
        let name = &raw[name_start..i];
        let value_start = if i < raw.len() && raw[i] == b'=' {
            i + 1
        } else {
            i
        };
        i = value_start;
        // Values as `split` reads them: a value is quoted when it starts with `"`.
        while i < raw.len() && raw[i] != b';' {
            i = value_end(raw, i, self.quoting);
            if i < raw.len() && raw[i] == b',' {
                i += 1;
            }
        }
        self.pos = i;
        Some(Param {
            raw: &raw[start..i],
            name,
            value: &raw[value_start..i],
            quoting: self.quoting,
        })
    }
}

/// Splits a parameter's value text at the commas that are not inside quotes ([`Quoting::Rfc`]).
pub fn param_values(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    param_values_quoted(value, Quoting::Rfc)
}

/// [`param_values`] with quoted values ending as `quoting` says.
pub fn param_values_quoted(value: &[u8], quoting: Quoting) -> impl Iterator<Item = &[u8]> {
    let mut pos = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let start = pos;
        pos = value_end(value, pos, quoting);
        if pos < value.len() && value[pos] == b',' {
            pos += 1;
            Some(&value[start..pos - 1])
        } else {
            done = true;
            Some(&value[start..])
        }
    })
}

/// The end of one parameter value starting at `i`: past its closing quote when it starts with
/// `"`, then up to the next `,` or `;` (or the end).
fn value_end(raw: &[u8], mut i: usize, quoting: Quoting) -> usize {
    if i < raw.len() && raw[i] == b'"' {
        i = closing_quote(raw, i, quoting).unwrap_or(raw.len());
    }
    while i < raw.len() && !matches!(raw[i], b',' | b';') {
        i += 1;
    }
    i
}

/// Unquotes one parameter value and decodes RFC 6868 escapes (`^n` newline, `^^` caret, `^'`
/// double quote; any other `^` stays as written).
pub fn decode_value(v: &[u8]) -> Cow<'_, [u8]> {
    let v = if v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"' {
        &v[1..v.len() - 1]
    } else {
        v
    };
    if !v.contains(&b'^') {
        return Cow::Borrowed(v);
    }
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'^' && i + 1 < v.len() {
            let d = match v[i + 1] {
                b'n' => Some(b'\n'),
                b'^' => Some(b'^'),
                b'\'' => Some(b'"'),
                _ => None,
            };
            if let Some(d) = d {
                out.push(d);
                i += 2;
                continue;
            }
        }
        out.push(v[i]);
        i += 1;
    }
    Cow::Owned(out)
}

/// All values of a parameter, decoded and joined with `,` ([`Quoting::Rfc`]).
pub fn decode_param(value: &[u8]) -> Cow<'_, [u8]> {
    decode_param_quoted(value, Quoting::Rfc)
}

/// [`decode_param`] with quoted values ending as `quoting` says.
pub fn decode_param_quoted(value: &[u8], quoting: Quoting) -> Cow<'_, [u8]> {
    let mut vals = param_values_quoted(value, quoting);
    let first = vals.next().unwrap_or_default();
    match vals.next() {
        None => decode_value(first),
        Some(second) => {
            let mut out = decode_value(first).into_owned();
            out.push(b',');
            out.extend_from_slice(&decode_value(second));
            for v in vals {
                out.push(b',');
                out.extend_from_slice(&decode_value(v));
            }
            Cow::Owned(out)
        }
    }
}

/// Appends one parameter value: RFC 6868-escaped (`^` → `^^`, newline → `^n`, `"` → `^'`), other
/// control characters but tab dropped, and quoted when it holds `:`, `;` or `,`.
pub fn encode_value(v: &[u8], out: &mut Vec<u8>) {
    let quote = v.iter().any(|b| matches!(b, b':' | b';' | b','));
    if quote {
        out.push(b'"');
    }
    for &b in v {
        match b {
            b'^' => out.extend_from_slice(b"^^"),
            b'\n' => out.extend_from_slice(b"^n"),
            b'"' => out.extend_from_slice(b"^'"),
            b'\t' => out.push(b),
            c if c < 0x20 || c == 0x7F => {}
            c => out.push(c),
        }
    }
    if quote {
        out.push(b'"');
    }
}

/// Unescapes an RFC 5545 TEXT value (`\\`, `\;`, `\,`, `\n`, `\N`); other backslashes stay.
pub fn unescape_text(v: &[u8]) -> Cow<'_, [u8]> {
    if !v.contains(&b'\\') {
        return Cow::Borrowed(v);
    }
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'\\' && i + 1 < v.len() {
            let d = match v[i + 1] {
                b'\\' => Some(b'\\'),
                b';' => Some(b';'),
                b',' => Some(b','),
                b'n' | b'N' => Some(b'\n'),
                _ => None,
            };
            if let Some(d) = d {
                out.push(d);
                i += 2;
                continue;
            }
        }
        out.push(v[i]);
        i += 1;
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(b: &[u8]) -> Vec<(usize, usize, Eol, Vec<u8>)> {
        unfold(b)
            .unwrap()
            .into_iter()
            .map(|(i, c)| (i.line, i.physical_lines, i.eol, c))
            .collect()
    }

    #[test]
    fn unfolds_crlf_lf_tab_and_mixed() {
        let got = lines(b"A:1\r\n 2\r\n\t3\nB:x\n y\r\nC:z");
        assert_eq!(
            got,
            vec![
                (1, 3, Eol::Lf, b"A:123".to_vec()),
                (4, 2, Eol::CrLf, b"B:xy".to_vec()),
                (6, 1, Eol::None, b"C:z".to_vec()),
            ]
        );
    }

    #[test]
    fn only_one_whitespace_character_is_removed() {
        assert_eq!(lines(b"A:1\n  2\n")[0].3, b"A:1 2");
    }

    #[test]
    fn bom_is_part_of_the_first_line_but_not_its_text() {
        let u = unfold(b"\xEF\xBB\xBFBEGIN:VCALENDAR\r\n").unwrap();
        assert_eq!(u[0].0.start, 0);
        assert_eq!(u[0].0.text_start, 3);
        assert_eq!(u[0].1, b"BEGIN:VCALENDAR");
    }

    #[test]
    fn blank_lines_are_lines() {
        assert_eq!(lines(b"A:1\n\n\r\nB:2\n").len(), 4);
    }

    #[test]
    fn nul_byte_reports_line_and_column() {
        assert_eq!(
            unfold(b"A:1\nB:2\n x\0y\n").unwrap_err(),
            NulByte { line: 3, column: 3 }
        );
    }

    #[test]
    fn fold_eol_follows_the_line() {
        let u = unfold(b"A:1\nB:2\r\n 3").unwrap();
        assert_eq!(u[1].0.eol, Eol::None);
        assert_eq!(u[1].0.fold_eol, Eol::CrLf);
        let u = unfold(b"A:1\nB:2").unwrap();
        assert_eq!(u[1].0.fold_eol, Eol::Lf);
        let u = unfold(b"B:2").unwrap();
        assert_eq!(u[0].0.fold_eol, Eol::CrLf);
    }

    fn folded(line: &[u8], eol: Eol) -> Vec<u8> {
        let mut out = Vec::new();
        fold(line, eol, &mut out);
        out
    }

    #[test]
    fn fold_at_exactly_75_octets() {
        let l75 = vec![b'a'; 75];
        assert_eq!(folded(&l75, Eol::CrLf), l75);
        let l76 = vec![b'a'; 76];
        let f = folded(&l76, Eol::CrLf);
        assert_eq!(f, [&l75[..], b"\r\n a"].concat());
        let l200 = vec![b'b'; 200];
        let f = folded(&l200, Eol::Lf);
        for phys in f.split(|&b| b == b'\n') {
            assert!(phys.len() <= 75);
        }
        assert_eq!(lines(&f)[0].3, l200);
    }

    #[test]
    fn fold_never_splits_utf8() {
        // 74 ASCII octets then a 3-octet character: the break moves before it.
        let mut l = vec![b'x'; 74];
        l.extend_from_slice("€".as_bytes());
        l.extend_from_slice(b"yz");
        let f = folded(&l, Eol::CrLf);
        let first = f.split(|&b| b == b'\r').next().unwrap();
        assert_eq!(first.len(), 74);
        assert!(std::str::from_utf8(first).is_ok());
        assert_eq!(lines(&f)[0].3, l);
        // A line of 4-octet characters: every physical line is valid UTF-8 and at most 75 octets.
        let s = "𝄞".repeat(60);
        let f = folded(s.as_bytes(), Eol::Lf);
        for phys in f.split(|&b| b == b'\n') {
            assert!(phys.len() <= 75);
            let text = if phys.first() == Some(&b' ') {
                &phys[1..]
            } else {
                phys
            };
            assert!(std::str::from_utf8(text).is_ok());
        }
        assert_eq!(lines(&f)[0].3, s.as_bytes());
    }

    #[test]
    fn fold_does_not_break_after_cr() {
        let mut l = vec![b'a'; 74];
        l.push(b'\r');
        l.extend_from_slice(b"bcd");
        let f = folded(&l, Eol::Lf);
        assert_eq!(lines(&f)[0].3, l);
    }

    #[test]
    fn splits_simple_and_parameterised_lines() {
        let c = split(b"DTSTART:20240101T000000Z").unwrap();
        assert_eq!(
            (c.name, c.params, c.value),
            (&b"DTSTART"[..], &b""[..], &b"20240101T000000Z"[..])
        );
        let c = split(b"ATTENDEE;CN=\"Doe, Jane: PhD\";ROLE=REQ-PARTICIPANT:mailto:j@x").unwrap();
        assert_eq!(c.name, b"ATTENDEE");
        assert_eq!(c.value, b"mailto:j@x");
        let ps: Vec<_> = params(c.params).collect();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].raw, b";CN=\"Doe, Jane: PhD\"");
        assert_eq!(&*ps[0].decoded(), b"Doe, Jane: PhD");
        assert_eq!(ps[1].name, b"ROLE");
        let c = split(b"attendee;member=\"mailto:a@x\",\"mailto:b@x\";cn=x:MAILTO:c@x").unwrap();
        let ps: Vec<_> = params(c.params).collect();
        assert_eq!(
            param_values(ps[0].value).collect::<Vec<_>>(),
            vec![&b"\"mailto:a@x\""[..], b"\"mailto:b@x\""]
        );
        assert_eq!(&*ps[0].decoded(), b"mailto:a@x,mailto:b@x");
        assert_eq!(c.value, b"MAILTO:c@x");
        // A quote inside an unquoted value is an ordinary character.
        let c = split(b"ATTENDEE;CN=a\"b;ROLE=CHAIR;X=\"q;,\",w:v").unwrap();
        let ps: Vec<_> = params(c.params).collect();
        assert_eq!(
            ps.iter().map(|p| p.raw).collect::<Vec<_>>(),
            vec![&b";CN=a\"b"[..], b";ROLE=CHAIR", b";X=\"q;,\",w"]
        );
        assert_eq!(&*ps[2].decoded(), b"q;,,w");
        // Empty values are allowed.
        assert_eq!(split(b"X-A;P=:").unwrap().value, b"");
    }

    #[test]
    fn underscore_names_and_backslash_escaped_quotes() {
        // CalendarServer's own test data: a parameter name with `_`.
        let c = split(b"DTSTART;_TZID=US/Pacific:20071114T080000Z").unwrap();
        assert_eq!(c.quoting, Quoting::Rfc);
        assert_eq!(c.params().next().unwrap().name, b"_TZID");
        assert_eq!(split(b"X_A;B_=1:v").unwrap().name, b"X_A");
        // `\"` inside quotes: the RFC reading fails, pycalendar's succeeds.
        let line = b"ATTENDEE;X=\"a\\\";b:c\\\"\";CN=\"A \\\"B\\\"\";ROLE=CHAIR:mailto:a@b";
        assert!(split_quoted(line, Quoting::Rfc).is_err());
        let c = split(line).unwrap();
        assert_eq!(c.quoting, Quoting::Backslash);
        assert_eq!(c.value, b"mailto:a@b");
        let ps: Vec<_> = c.params().collect();
        assert_eq!(
            ps.iter().map(|p| p.raw).collect::<Vec<_>>(),
            vec![
                &b";X=\"a\\\";b:c\\\"\""[..],
                b";CN=\"A \\\"B\\\"\"",
                b";ROLE=CHAIR"
            ]
        );
        // The backslashes stay in the decoded value, as pycalendar keeps them.
        assert_eq!(&*ps[1].decoded(), b"A \\\"B\\\"");
        // An escaped backslash before the closing quote.
        let c = split(b"X;P=\"a\\\\\";Q=\"\\\"\":v").unwrap();
        assert_eq!(c.params().count(), 2);
        // Where the RFC reading works it wins, even with a backslash before a quote.
        let c = split(b"X;P=\"a\\\";Q=1:v").unwrap();
        assert_eq!(c.quoting, Quoting::Rfc);
        assert_eq!(c.params().count(), 2);
        // Still broken either way: the error is the RFC reading's.
        assert_eq!(split(b"A;B=\"x\\\"y\"z:v"), Err(SplitError::AfterQuote(8)));
        assert_eq!(
            split(b"A;B=\"x\\\";C:v"),
            Err(SplitError::ParamWithoutValue(8))
        );
    }

    #[test]
    fn split_errors() {
        assert_eq!(split(b"X"), Err(SplitError::NoColon));
        assert_eq!(split(b""), Err(SplitError::EmptyName));
        assert_eq!(split(b":x"), Err(SplitError::EmptyName));
        assert_eq!(split(b"A B:x"), Err(SplitError::BadNameByte(1)));
        assert_eq!(split(b"A;B:x"), Err(SplitError::ParamWithoutValue(1)));
        assert_eq!(split(b"A;=1:x"), Err(SplitError::BadParamName(2)));
        assert_eq!(split(b"A;B=\"1:x"), Err(SplitError::UnterminatedQuote(4)));
        assert_eq!(split(b"A;B=\"1\"2:x"), Err(SplitError::AfterQuote(7)));
        assert_eq!(split(b"A;B=1"), Err(SplitError::NoColon));
        assert_eq!(split(b"A;B=\"x:1\""), Err(SplitError::NoColonAfterQuotes));
    }

    #[test]
    fn rfc6868_roundtrip() {
        let v = b"a^b\n\"c\":d";
        let mut enc = Vec::new();
        encode_value(v, &mut enc);
        assert_eq!(enc, b"\"a^^b^n^'c^':d\"");
        assert_eq!(&*decode_value(&enc), v);
        assert_eq!(&*decode_value(b"^x^"), b"^x^");
        let mut plain = Vec::new();
        encode_value(b"Jane Doe", &mut plain);
        assert_eq!(plain, b"Jane Doe");
    }

    #[test]
    fn text_unescape() {
        assert_eq!(&*unescape_text(b"a\\,b\\;c\\\\d\\ne\\x"), b"a,b;c\\d\ne\\x");
    }
}
