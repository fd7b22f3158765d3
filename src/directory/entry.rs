//! A directory entry as read from a server or an LDIF file (DN + attributes with raw values), the
//! small LDAP filter evaluator used to classify LDIF entries with the live server's filters, and
//! the conversion of an entry into a [`DirectoryRecord`].

use super::presets::{GuidForm, Schema, TypeSchema};
use super::DirectoryRecord;
use crate::address::{Guid, RecordType};

/// One entry: its DN and its attributes (names as written, values as raw bytes, in order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawEntry {
    /// The entry's DN, as written.
    pub dn: String,
    /// Attributes in order: name as written, then its raw values.
    pub attrs: Vec<(String, Vec<Vec<u8>>)>,
}

impl RawEntry {
    /// An entry with this DN and no attributes yet.
    pub fn new(dn: impl Into<String>) -> RawEntry {
        RawEntry {
            dn: dn.into(),
            attrs: Vec::new(),
        }
    }

    /// Adds a value, merging with an attribute of the same name (case-insensitive).
    pub fn push(&mut self, name: &str, value: Vec<u8>) {
        match self
            .attrs
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some((_, vals)) => vals.push(value),
            None => self.attrs.push((name.to_string(), vec![value])),
        }
    }

    /// The values of an attribute, looked up case-insensitively (servers return the schema's
    /// spelling whatever the client asked for). Options such as `;binary` are ignored.
    pub fn get(&self, name: &str) -> &[Vec<u8>] {
        self.attrs
            .iter()
            .find(|(n, _)| {
                let base = n.split(';').next().unwrap_or(n);
                base.eq_ignore_ascii_case(name)
            })
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[])
    }

    /// Values as text (lossy for bytes that are not UTF-8), empty values dropped.
    pub fn texts(&self, name: &str) -> impl Iterator<Item = String> + '_ {
        self.get(name)
            .iter()
            .map(|b| String::from_utf8_lossy(b).trim().to_string())
            .filter(|s| !s.is_empty())
    }
}

/// Normalises a DN for comparison: lower case, no spaces around `,` and `=`.
pub fn norm_dn(dn: &str) -> String {
    let mut out = String::with_capacity(dn.len());
    for part in dn.split(',') {
        if !out.is_empty() {
            out.push(',');
        }
        let mut kv = part.splitn(2, '=');
        let k = kv.next().unwrap_or("").trim();
        out.push_str(&k.to_lowercase());
        if let Some(val) = kv.next() {
            out.push('=');
            out.push_str(&val.trim().to_lowercase());
        }
    }
    out
}

/// Whether `dn` lies under `container` (relative to `base`, or anywhere when `base` is unknown).
/// An empty container means "anywhere under the base".
pub fn under_container(dn: &str, container: &str, base: Option<&str>) -> bool {
    let dn = norm_dn(dn);
    let container = norm_dn(container);
    match base.map(norm_dn).filter(|b| !b.is_empty()) {
        Some(base) => {
            let full = if container.is_empty() {
                base
            } else {
                format!("{container},{base}")
            };
            dn.ends_with(&format!(",{full}"))
        }
        None => {
            if container.is_empty() {
                return true;
            }
            // The container must be the entry's parent (or an ancestor): `<rdn>,<container>,...`.
            let needle = format!(",{container},");
            let with_end = format!("{dn},");
            with_end.contains(&needle)
        }
    }
}

// ------------------------------------------------------------------------------------------
// LDAP filter evaluation (RFC 4515 string form) for LDIF entries.

#[derive(Debug, Clone, PartialEq, Eq)]
/// A parsed RFC 4515 LDAP filter, evaluated against LDIF entries.
pub enum Filter {
    /// `(&...)`: every sub-filter matches.
    And(Vec<Filter>),
    /// `(|...)`: some sub-filter matches.
    Or(Vec<Filter>),
    /// `(!...)`: the sub-filter does not match.
    Not(Box<Filter>),
    /// `(attr=*)`: the attribute is present.
    Present(String),
    /// `(attr=value)`: some value equals it (case-insensitive).
    Equal(String, Vec<u8>),
    /// `(attr=a*b*c)`: substring match; the pieces between `*`s, first and last possibly empty.
    Substr(String, Vec<Vec<u8>>),
    /// `(attr>=value)`: some value sorts at or after it.
    Ge(String, Vec<u8>),
    /// `(attr<=value)`: some value sorts at or before it.
    Le(String, Vec<u8>),
}

impl Filter {
    /// Parses a filter; `None` when it is not well-formed.
    pub fn parse(s: &str) -> Option<Filter> {
        let s = s.trim();
        let (f, rest) = parse_filter(s.as_bytes())?;
        rest.iter().all(|c| c.is_ascii_whitespace()).then_some(f)
    }

    /// Evaluates the filter on an entry; comparisons are case-insensitive (good enough for the
    /// objectClass / type filters it is used for).
    pub fn matches(&self, e: &RawEntry) -> bool {
        let lower = |b: &[u8]| b.to_ascii_lowercase();
        match self {
            Filter::And(fs) => fs.iter().all(|f| f.matches(e)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(e)),
            Filter::Not(f) => !f.matches(e),
            Filter::Present(a) => a.eq_ignore_ascii_case("objectClass") || !e.get(a).is_empty(),
            Filter::Equal(a, v) => e.get(a).iter().any(|x| lower(x) == lower(v)),
            Filter::Ge(a, v) => e.get(a).iter().any(|x| lower(x) >= lower(v)),
            Filter::Le(a, v) => e.get(a).iter().any(|x| lower(x) <= lower(v)),
            Filter::Substr(a, parts) => e.get(a).iter().any(|x| substr_match(&lower(x), parts)),
        }
    }
}

fn substr_match(value: &[u8], parts: &[Vec<u8>]) -> bool {
    // parts: initial, any..., final (initial/final may be empty).
    let n = parts.len();
    let initial = parts[0].to_ascii_lowercase();
    let last = parts[n - 1].to_ascii_lowercase();
    if !value.starts_with(&initial) {
        return false;
    }
    let mut pos = initial.len();
    for mid in &parts[1..n - 1] {
        let mid = mid.to_ascii_lowercase();
        match value[pos..]
            .windows(mid.len().max(1))
            .position(|w| w == mid.as_slice())
        {
            Some(i) => pos += i + mid.len(),
            None => return false,
        }
    }
    value.len() >= pos + last.len() && value.ends_with(&last)
}

fn parse_filter(s: &[u8]) -> Option<(Filter, &[u8])> {
    let s = skip_ws(s);
    if s.first() != Some(&b'(') {
        return None;
    }
    let s = skip_ws(&s[1..]);
    let (f, rest) = match s.first()? {
        b'&' | b'|' => {
            let op = s[0];
            let mut rest = skip_ws(&s[1..]);
            let mut list = Vec::new();
            while rest.first() == Some(&b'(') {
                let (f, r) = parse_filter(rest)?;
                list.push(f);
                rest = skip_ws(r);
            }
            (
                if op == b'&' {
                    Filter::And(list)
                } else {
                    Filter::Or(list)
                },
                rest,
            )
        }
        b'!' => {
            let (f, r) = parse_filter(&s[1..])?;
            (Filter::Not(Box::new(f)), skip_ws(r))
        }
        _ => {
            let end = s.iter().position(|&c| c == b')')?;
            (parse_item(&s[..end])?, &s[end..])
        }
    };
    if rest.first() != Some(&b')') {
        return None;
    }
    Some((f, &rest[1..]))
}

fn skip_ws(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &s[n..]
}

fn parse_item(s: &[u8]) -> Option<Filter> {
    let eq = s.iter().position(|&c| c == b'=')?;
    let (mut attr_end, op) = (eq, s.get(eq.wrapping_sub(1)).copied());
    let kind = match op {
        Some(b'>') | Some(b'<') | Some(b'~') => {
            attr_end = eq - 1;
            op
        }
        _ => None,
    };
    let attr = std::str::from_utf8(&s[..attr_end]).ok()?.trim().to_string();
    if attr.is_empty() || attr.contains(['(', ')', '*']) {
        return None;
    }
    let raw = &s[eq + 1..];
    match kind {
        Some(b'>') => Some(Filter::Ge(attr, unescape(raw)?)),
        Some(b'<') => Some(Filter::Le(attr, unescape(raw)?)),
        Some(_) => Some(Filter::Equal(attr, unescape(raw)?)),
        None => {
            if raw == b"*" {
                return Some(Filter::Present(attr));
            }
            if raw.contains(&b'*') {
                let parts = raw
                    .split(|&c| c == b'*')
                    .map(unescape)
                    .collect::<Option<Vec<_>>>()?;
                return Some(Filter::Substr(attr, parts));
            }
            Some(Filter::Equal(attr, unescape(raw)?))
        }
    }
}

fn unescape(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'\\' => {
                let hex = std::str::from_utf8(s.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'(' | b')' => return None,
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

// ------------------------------------------------------------------------------------------
// Entry -> record.

/// Why an entry did not become a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Skip {
    /// Not a record at all (a container, the base entry, ...): ignored quietly.
    NotARecord,
    /// A record without a usable GUID: skipped with this warning.
    NoGuid(String),
}

/// Decodes one GUID value per the mapping's form.
pub fn decode_guid(value: &[u8], form: GuidForm) -> Option<Guid> {
    if form == GuidForm::AdBinary && value.len() == 16 {
        let b = value;
        let s = format!(
            "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
        );
        return Guid::parse(&s);
    }
    let text = std::str::from_utf8(value).ok()?;
    match form {
        GuidForm::Any => Guid::parse(text).or_else(|| Guid::from_any(text)),
        _ => Guid::parse(text),
    }
}

/// Encodes a GUID back into the attribute value the mapping reads (for LDIF export).
pub fn encode_guid(guid: &Guid, form: GuidForm) -> Vec<u8> {
    if form == GuidForm::AdBinary && Guid::parse(guid.as_str()).is_some() {
        let hex: String = guid.as_str().chars().filter(|c| *c != '-').collect();
        let b: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect();
        return vec![
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15],
        ];
    }
    guid.as_str().as_bytes().to_vec()
}

/// Builds the record of an entry known to be of `t.kind`.
pub fn to_record(e: &RawEntry, t: &TypeSchema, form: GuidForm) -> Result<DirectoryRecord, Skip> {
    let guid = t
        .guid
        .iter()
        .flat_map(|a| e.get(a).iter())
        .find_map(|v| decode_guid(v, form));
    let Some(guid) = guid else {
        let seen: Vec<String> = t.guid.iter().flat_map(|a| e.texts(a)).collect();
        let why = if seen.is_empty() {
            format!("no {}", t.guid.join("/"))
        } else {
            format!(
                "{} `{}` is not a usable GUID",
                t.guid.join("/"),
                seen.join("`, `")
            )
        };
        return Err(Skip::NoGuid(format!("skipped {} {}: {why}", t.kind, e.dn)));
    };
    let gather = |attrs: &[String]| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for a in attrs {
            for v in e.texts(a) {
                if !out.contains(&v) {
                    out.push(v);
                }
            }
        }
        out
    };
    let guids = |attrs: &[String]| -> Vec<Guid> {
        let mut out: Vec<Guid> = Vec::new();
        for a in attrs {
            for v in e.get(a) {
                if let Some(g) = decode_guid(v, form) {
                    if !out.contains(&g) {
                        out.push(g);
                    }
                }
            }
        }
        out
    };
    let mut emails: Vec<String> = Vec::new();
    for m in gather(&t.email) {
        let m = m.to_lowercase();
        if !emails.contains(&m) {
            emails.push(m);
        }
    }
    Ok(DirectoryRecord {
        kind: t.kind,
        guid,
        short_names: gather(&t.short_name),
        full_name: t.full_name.iter().find_map(|a| e.texts(a).next()),
        emails,
        member_guids: guids(&t.member_guid),
        member_names: gather(&t.member_uid),
        nested_guids: guids(&t.nested_guid),
        source: e.dn.clone(),
    })
}

/// Which record type an entry of an LDIF snapshot is: the first type whose container holds it and
/// whose filter matches (the live server's own selection), else a guess from its object classes.
pub fn classify(e: &RawEntry, m: &Schema, base: Option<&str>) -> Option<RecordType> {
    for t in &m.types {
        let Some(filter) = &t.filter else { continue };
        if !under_container(&e.dn, &t.container, base) {
            continue;
        }
        if Filter::parse(filter).is_some_and(|f| f.matches(e)) {
            return Some(t.kind);
        }
    }
    let classes: Vec<String> = e
        .texts("objectClass")
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let has = |names: &[&str]| classes.iter().any(|c| names.contains(&c.as_str()));
    if has(&["apple-resource"]) || has(&["calendarresource"]) {
        let parent = norm_dn(&e.dn);
        let parent = parent.split_once(',').map(|(_, p)| p).unwrap_or("");
        return Some(
            if parent.starts_with("cn=places,")
                || parent.starts_with("cn=locations,")
                || parent.starts_with("ou=places,")
                || parent.starts_with("ou=locations,")
            {
                RecordType::Location
            } else {
                RecordType::Resource
            },
        );
    }
    if has(&[
        "groupofnames",
        "groupofuniquenames",
        "posixgroup",
        "apple-group",
        "group",
        "ipausergroup",
    ]) {
        return Some(RecordType::Group);
    }
    if has(&[
        "person",
        "inetorgperson",
        "organizationalperson",
        "posixaccount",
        "apple-user",
        "user",
    ]) {
        return Some(RecordType::User);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    fn entry(dn: &str, attrs: &[(&str, &str)]) -> RawEntry {
        let mut e = RawEntry::new(dn);
        for (k, v) in attrs {
            e.push(k, v.as_bytes().to_vec());
        }
        e
    }

    #[test]
    fn filters_parse_and_match() {
        let e = entry(
            "uid=a,cn=users,dc=x",
            &[
                ("objectClass", "inetOrgPerson"),
                ("uid", "a*(b)\\"),
                ("cn", "Alice Smith"),
            ],
        );
        assert!(Filter::parse("(objectClass=inetorgperson)")
            .unwrap()
            .matches(&e));
        assert!(Filter::parse("(uid=a\\2a\\28b\\29\\5c)")
            .unwrap()
            .matches(&e));
        assert!(Filter::parse("(&(cn=alice*)(!(uid=zz)))")
            .unwrap()
            .matches(&e));
        assert!(Filter::parse("(cn=*ce*mi*)").unwrap().matches(&e));
        assert!(!Filter::parse("(cn=*bob*)").unwrap().matches(&e));
        assert!(Filter::parse("(|(mail=*)(uid=*))").unwrap().matches(&e));
        assert!(Filter::parse("(uid=a(b)").is_none());
        assert!(Filter::parse("(uid=x").is_none());
        assert!(Filter::parse("uid=x").is_none());
    }

    #[test]
    fn ad_guid_is_little_endian_in_first_three_groups() {
        let raw = hex::decode("6797e1e5ecb5154f960f865c28c015fa").unwrap();
        let g = decode_guid(&raw, GuidForm::AdBinary).unwrap();
        assert_eq!(g.as_str(), "E5E19767-B5EC-4F15-960F-865C28C015FA");
        assert_eq!(encode_guid(&g, GuidForm::AdBinary), raw);
    }

    #[test]
    fn classifies_od_entries_by_container_and_class() {
        let m = Schema::preset(Preset::OpenDirectory);
        let room = entry(
            "cn=room1,cn=places,dc=od",
            &[
                ("objectClass", "apple-resource"),
                ("apple-generateduid", "x"),
            ],
        );
        let res = entry(
            "cn=proj,cn=resources,dc=od",
            &[("objectClass", "apple-resource")],
        );
        let user = entry("uid=a,cn=users,dc=od", &[("objectClass", "apple-user")]);
        let group = entry(
            "cn=staff, cn=groups, dc=od",
            &[("objectClass", "apple-group")],
        );
        let other = entry("cn=users,dc=od", &[("objectClass", "container")]);
        assert_eq!(classify(&room, &m, None), Some(RecordType::Location));
        assert_eq!(classify(&res, &m, None), Some(RecordType::Resource));
        assert_eq!(classify(&user, &m, Some("dc=od")), Some(RecordType::User));
        assert_eq!(classify(&group, &m, Some("DC=OD")), Some(RecordType::Group));
        assert_eq!(classify(&other, &m, None), None);
        // generic fallback: a person outside the preset's containers
        let p = entry("uid=b,ou=people,dc=x", &[("objectClass", "inetOrgPerson")]);
        assert_eq!(classify(&p, &m, None), Some(RecordType::User));
    }

    #[test]
    fn record_fields_and_guid_skip() {
        let m = Schema::preset(Preset::OpenDirectory);
        let e = entry(
            "cn=staff,cn=groups,dc=od",
            &[
                ("APPLE-GENERATEDUID", "927107a3-92b4-4285-b153-a5c823369e24"),
                ("cn", "staff"),
                ("apple-group-realname", "Staff"),
                (
                    "apple-group-memberguid",
                    "11111111-2222-3333-4444-555555555555",
                ),
                ("memberUid", "alice"),
                ("mail", "Staff@Example.COM"),
            ],
        );
        let r = to_record(&e, m.get(RecordType::Group), GuidForm::Uuid).unwrap();
        assert_eq!(r.guid.as_str(), "927107A3-92B4-4285-B153-A5C823369E24");
        assert_eq!(r.full_name.as_deref(), Some("Staff"));
        assert_eq!(r.emails, vec!["staff@example.com"]);
        assert_eq!(r.member_names, vec!["alice"]);
        assert_eq!(r.member_guids.len(), 1);
        let bad = entry(
            "uid=x,cn=users,dc=od",
            &[("uid", "x"), ("apple-generateduid", "nope")],
        );
        match to_record(&bad, m.get(RecordType::User), GuidForm::Uuid) {
            Err(Skip::NoGuid(w)) => assert!(
                w.contains("uid=x,cn=users,dc=od") && w.contains("nope"),
                "{w}"
            ),
            other => panic!("{other:?}"),
        }
    }
}
