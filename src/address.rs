//! Calendar user addresses (RFC 5545 CAL-ADDRESS values) as CalendarServer writes and reads them.
//!
//! One address can name a principal in several forms: `mailto:`, `urn:uuid:<GUID>`,
//! `urn:x-uid:<uid>`, `/principals/__uids__/<uid>/`, `/principals/<type>/<short>/` and the same
//! paths as absolute `http(s)://host[:port]` URLs. [`CalAddress::parse`] recognises them all and
//! [`CalAddress::key`] gives the normalised form used to look them up.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Kind of directory record a principal comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordType {
    /// A person (`users`).
    User,
    /// A group (`groups`).
    Group,
    /// A place, e.g. a meeting room (`locations`, CUTYPE ROOM).
    Location,
    /// A bookable thing, e.g. a projector (`resources`).
    Resource,
}

impl RecordType {
    /// Every record type, in report order.
    pub const ALL: [RecordType; 4] = [Self::User, Self::Group, Self::Location, Self::Resource];

    /// The principal collection name CalendarServer uses (`/principals/<this>/<short>/`).
    pub fn collection(self) -> &'static str {
        match self {
            Self::User => "users",
            Self::Group => "groups",
            Self::Location => "locations",
            Self::Resource => "resources",
        }
    }

    /// The iCalendar CUTYPE the server gives records of this kind.
    pub fn cutype(self) -> &'static str {
        match self {
            Self::User => "INDIVIDUAL",
            Self::Group => "GROUP",
            Self::Location => "ROOM",
            Self::Resource => "RESOURCE",
        }
    }

    /// The stored word for this type: `user`, `group`, `location`, `resource`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Group => "group",
            Self::Location => "location",
            Self::Resource => "resource",
        }
    }

    /// Parses a principal collection name (`users`, `places`, ...) into a record type.
    pub fn from_collection(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "users" => Some(Self::User),
            "groups" => Some(Self::Group),
            "locations" | "places" => Some(Self::Location),
            "resources" => Some(Self::Resource),
            _ => None,
        }
    }
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record's globally unique id, kept upper case (Open Directory's own spelling).
///
/// Usually an RFC 4122 UUID (`8-4-4-4-12` hex); other directories' ids (389-ds `nsUniqueId`) are
/// kept as given, upper-cased.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Guid(String);

impl Guid {
    /// Parses a UUID-shaped GUID (case-insensitive); `None` when it is not `8-4-4-4-12` hex.
    pub fn parse(s: &str) -> Option<Guid> {
        let s = s.trim();
        let b = s.as_bytes();
        if b.len() != 36 {
            return None;
        }
        for (i, c) in b.iter().enumerate() {
            let dash = matches!(i, 8 | 13 | 18 | 23);
            if dash != (*c == b'-') || (!dash && !c.is_ascii_hexdigit()) {
                return None;
            }
        }
        Some(Guid(s.to_ascii_uppercase()))
    }

    /// Accepts any non-empty id (upper-cased); for directories whose ids are not UUIDs.
    pub fn from_any(s: &str) -> Option<Guid> {
        let s = s.trim();
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c == '/') {
            return None;
        }
        Some(Guid(s.to_ascii_uppercase()))
    }

    /// The GUID as text, upper-case.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The two hashed folder levels of a 2.x calendar home: `AB/CD` for `ABCD...`.
    pub fn hashed_prefix(&self) -> (String, String) {
        (self.0[0..2].to_string(), self.0[2..4].to_string())
    }

    /// True for the synthetic GUIDs macOS gives local system users (`FFFFEEEE-DDDD-CCCC-BBBB-AAAA…`).
    pub fn is_system(&self) -> bool {
        self.0.starts_with("FFFFEEEE-DDDD-CCCC-BBBB-AAAA")
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The form a calendar user address is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AddressKind {
    #[serde(rename = "mailto")]
    /// `mailto:` address.
    Mailto,
    #[serde(rename = "urn:uuid")]
    /// `urn:uuid:<GUID>`.
    UrnUuid,
    #[serde(rename = "urn:x-uid")]
    /// `urn:x-uid:<uid>` (CalendarServer 6+).
    UrnXUid,
    #[serde(rename = "principal-uid")]
    /// `/principals/__uids__/<uid>/`.
    PrincipalUid,
    #[serde(rename = "principal-name")]
    /// `/principals/<collection>/<short>/`.
    PrincipalName,
    #[serde(rename = "other")]
    /// Any other value (not a principal form of this server).
    Other,
}

impl AddressKind {
    /// The stored word for this form (the `form` column): `mailto`, `urn:uuid`, `principal-name`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mailto => "mailto",
            Self::UrnUuid => "urn:uuid",
            Self::UrnXUid => "urn:x-uid",
            Self::PrincipalUid => "principal-uid",
            Self::PrincipalName => "principal-name",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for AddressKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed calendar user address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CalAddress {
    /// `mailto:` — the address, lower-cased (CalendarServer lower-cases mailto CUAs whole).
    Mailto(String),
    /// `urn:uuid:<GUID>`.
    UrnUuid(Guid),
    /// `urn:x-uid:<uid>` (CalendarServer 6+); for Open Directory the uid is the GUID.
    UrnXUid(String),
    /// `/principals/__uids__/<uid>/`, optionally as an absolute URL (`base` = `https://host:port`).
    PrincipalUid {
        /// The uid after `__uids__/`, as written.
        uid: String,
        /// `https://host:port` when the URL is absolute; None for a path.
        base: Option<String>,
    },
    /// `/principals/<users|groups|locations|resources>/<short>/`, optionally absolute.
    PrincipalName {
        /// The principal collection the URL names.
        kind: RecordType,
        /// The short name after the collection, as written.
        short: String,
        /// `https://host:port` when the URL is absolute; None for a path.
        base: Option<String>,
    },
    /// Anything else (`tel:`, `http://` of another server, `invalid:nomail`, ...). Kept as written.
    Other(String),
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len()
        && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

impl CalAddress {
    /// Parses a CAL-ADDRESS value. Never fails: unknown forms become [`CalAddress::Other`].
    pub fn parse(value: &str) -> CalAddress {
        let v = value.trim();
        if let Some(rest) = strip_prefix_ci(v, "mailto:") {
            let addr = rest.trim().to_lowercase();
            if !addr.is_empty() {
                return CalAddress::Mailto(addr);
            }
            return CalAddress::Other(value.to_string());
        }
        if let Some(rest) = strip_prefix_ci(v, "urn:uuid:") {
            if let Some(g) = Guid::parse(rest) {
                return CalAddress::UrnUuid(g);
            }
            return CalAddress::Other(value.to_string());
        }
        if let Some(rest) = strip_prefix_ci(v, "urn:x-uid:") {
            if !rest.is_empty() {
                return CalAddress::UrnXUid(rest.to_string());
            }
            return CalAddress::Other(value.to_string());
        }
        let (base, path) = if let Some(after) =
            strip_prefix_ci(v, "https://").or_else(|| strip_prefix_ci(v, "http://"))
        {
            let scheme_len = v.len() - after.len();
            match after.find('/') {
                Some(slash) => (
                    Some(v[..scheme_len + slash].to_ascii_lowercase()),
                    &after[slash..],
                ),
                None => return CalAddress::Other(value.to_string()),
            }
        } else {
            (None, v)
        };
        if base.is_none() && is_bare_email(v) {
            // `user@example.com` without its scheme: calverify (CalendarServer 5) reports it as
            // "missing mailto:" and repairs it by adding one; the server's own lookup misses it,
            // so such an event can be neither scheduled nor edited until it is repaired.
            return CalAddress::Mailto(v.to_lowercase());
        }
        if let Some(p) = path.strip_prefix("/principals/") {
            let p = p.trim_end_matches('/');
            let mut parts = p.split('/');
            if let (Some(coll), Some(name), None) = (parts.next(), parts.next(), parts.next()) {
                let name = percent_decode(name);
                if !name.is_empty() {
                    if coll == "__uids__" {
                        return CalAddress::PrincipalUid { uid: name, base };
                    }
                    if let Some(kind) = RecordType::from_collection(coll) {
                        return CalAddress::PrincipalName {
                            kind,
                            short: name,
                            base,
                        };
                    }
                }
            }
        }
        CalAddress::Other(value.to_string())
    }

    /// Which address form this is.
    pub fn kind(&self) -> AddressKind {
        match self {
            Self::Mailto(_) => AddressKind::Mailto,
            Self::UrnUuid(_) => AddressKind::UrnUuid,
            Self::UrnXUid(_) => AddressKind::UrnXUid,
            Self::PrincipalUid { .. } => AddressKind::PrincipalUid,
            Self::PrincipalName { .. } => AddressKind::PrincipalName,
            Self::Other(_) => AddressKind::Other,
        }
    }

    /// The GUID this address names directly, if any (`urn:uuid:`, `urn:x-uid:` or `__uids__` with
    /// a UUID-shaped uid).
    pub fn guid(&self) -> Option<Guid> {
        match self {
            Self::UrnUuid(g) => Some(g.clone()),
            Self::UrnXUid(u) | Self::PrincipalUid { uid: u, .. } => Guid::parse(u),
            _ => None,
        }
    }

    /// The domain of a `mailto:` address.
    pub fn domain(&self) -> Option<&str> {
        match self {
            Self::Mailto(a) => a.rsplit_once('@').map(|(_, d)| d),
            _ => None,
        }
    }

    /// Normalised text used as a lookup key: two addresses with the same key name the same thing.
    /// Host and port of absolute principal URLs are dropped (the path identifies the principal).
    pub fn key(&self) -> String {
        match self {
            Self::Mailto(a) => format!("mailto:{a}"),
            Self::UrnUuid(g) => format!("urn:uuid:{g}"),
            Self::UrnXUid(u) => match Guid::parse(u) {
                Some(g) => format!("urn:x-uid:{g}"),
                None => format!("urn:x-uid:{u}"),
            },
            Self::PrincipalUid { uid, .. } => match Guid::parse(uid) {
                Some(g) => format!("/principals/__uids__/{g}/"),
                None => format!("/principals/__uids__/{uid}/"),
            },
            Self::PrincipalName { kind, short, .. } => {
                format!("/principals/{}/{}/", kind.collection(), short)
            }
            Self::Other(s) => s.clone(),
        }
    }
}

impl fmt::Display for CalAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PrincipalUid { base: Some(b), .. }
            | Self::PrincipalName { base: Some(b), .. } => {
                write!(f, "{b}{}", self.key())
            }
            _ => f.write_str(&self.key()),
        }
    }
}

/// `local@domain` with nothing that makes it another kind of address (calverify's test: an `@`,
/// no `:` and no `/`), and no white space.
fn is_bare_email(v: &str) -> bool {
    match v.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !v.contains([':', '/'])
                && !v.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let (h, l) = (b[i + 1], b[i + 2]);
            if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() {
                let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                out.push(hex(h) << 4 | hex(l));
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How rewritten ORGANIZER/ATTENDEE values are written (`[rewrite] address_form`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AddressForm {
    /// `urn:uuid:<GUID>` — what CalendarServer 2.x–5.x writes.
    #[default]
    #[serde(rename = "urn:uuid")]
    UrnUuid,
    /// `urn:x-uid:<GUID>` — what CalendarServer 6+ writes.
    #[serde(rename = "urn:x-uid")]
    UrnXUid,
    /// `mailto:<primary e-mail>` (records without e-mail fall back to `urn:uuid:`).
    #[serde(rename = "mailto")]
    Mailto,
    /// Keep each value's form, only point it at the new record.
    #[serde(rename = "keep")]
    Keep,
}

/// The current directory record an address resolves to: what the rewriter needs to write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The record's GUID.
    pub guid: Guid,
    /// Which kind of record it is.
    pub kind: RecordType,
    /// First short name (the login).
    pub short_name: String,
    /// Full name (display name); None when the record has none.
    pub full_name: Option<String>,
    /// E-mail addresses, first = primary, lower-cased.
    pub emails: Vec<String>,
}

impl Principal {
    /// The value this principal's address should have, given the configured form and the value as
    /// it is written now (used by [`AddressForm::Keep`]).
    pub fn canonical_address(&self, form: AddressForm, current: &CalAddress) -> String {
        match form {
            AddressForm::UrnUuid => format!("urn:uuid:{}", self.guid),
            AddressForm::UrnXUid => format!("urn:x-uid:{}", self.guid),
            AddressForm::Mailto => match self.emails.first() {
                Some(e) => format!("mailto:{e}"),
                None => format!("urn:uuid:{}", self.guid),
            },
            AddressForm::Keep => match current {
                CalAddress::Mailto(old) => {
                    if self.emails.iter().any(|e| e == old) {
                        format!("mailto:{old}")
                    } else {
                        match self.emails.first() {
                            Some(e) => format!("mailto:{e}"),
                            None => format!("urn:uuid:{}", self.guid),
                        }
                    }
                }
                CalAddress::UrnXUid(_) => format!("urn:x-uid:{}", self.guid),
                CalAddress::PrincipalUid { base, .. } => format!(
                    "{}/principals/__uids__/{}/",
                    base.as_deref().unwrap_or(""),
                    self.guid
                ),
                CalAddress::PrincipalName { base, .. } => format!(
                    "{}/principals/{}/{}/",
                    base.as_deref().unwrap_or(""),
                    self.kind.collection(),
                    self.short_name
                ),
                _ => format!("urn:uuid:{}", self.guid),
            },
        }
    }

    /// True when `addr` is one of this principal's own addresses.
    pub fn owns(&self, addr: &CalAddress) -> bool {
        match addr {
            CalAddress::Mailto(a) => self.emails.iter().any(|e| e == a),
            CalAddress::PrincipalName { kind, short, .. } => {
                *kind == self.kind && short == &self.short_name
            }
            other => other.guid().as_ref() == Some(&self.guid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let g = "927107a3-92b4-4285-b153-a5c823369e24";
        assert_eq!(
            CalAddress::parse(&format!("urn:uuid:{g}")),
            CalAddress::UrnUuid(Guid::parse(g).unwrap())
        );
        assert_eq!(
            CalAddress::parse(&format!("URN:UUID:{g}")).key(),
            format!("urn:uuid:{}", g.to_uppercase())
        );
        assert_eq!(
            CalAddress::parse("MAILTO:Jane.Doe@Example.COM"),
            CalAddress::Mailto("jane.doe@example.com".into())
        );
        assert_eq!(
            CalAddress::parse(&format!("urn:x-uid:{g}")).guid(),
            Guid::parse(g)
        );
        let p = CalAddress::parse(&format!("/principals/__uids__/{g}/"));
        assert_eq!(p.kind(), AddressKind::PrincipalUid);
        assert_eq!(
            p.key(),
            CalAddress::parse(&format!("/principals/__uids__/{g}")).key()
        );
        let abs = CalAddress::parse(&format!(
            "https://Cal.Example.com:8443/principals/__uids__/{g}/"
        ));
        assert_eq!(abs.key(), p.key());
        assert_eq!(
            abs.to_string(),
            format!(
                "https://cal.example.com:8443/principals/__uids__/{}/",
                g.to_uppercase()
            )
        );
        let n = CalAddress::parse("http://cal:8008/principals/users/jdoe");
        assert_eq!(
            n,
            CalAddress::PrincipalName {
                kind: RecordType::User,
                short: "jdoe".into(),
                base: Some("http://cal:8008".into())
            }
        );
        assert_eq!(
            CalAddress::parse("/principals/locations/room%201/").key(),
            "/principals/locations/room 1/"
        );
        assert_eq!(CalAddress::parse("tel:+1555").kind(), AddressKind::Other);
        assert_eq!(
            CalAddress::parse("urn:uuid:not-a-guid").kind(),
            AddressKind::Other
        );
        assert_eq!(CalAddress::parse("mailto:").kind(), AddressKind::Other);
        // A bare address is a mailto: without its scheme (calverify's fix).
        assert_eq!(
            CalAddress::parse("Example1@Example.com"),
            CalAddress::Mailto("example1@example.com".into())
        );
        for other in ["a@b@c", "@x", "x@", "a b@c", "x@y/z", "sip:x@y"] {
            assert_eq!(
                CalAddress::parse(other).kind(),
                AddressKind::Other,
                "{other}"
            );
        }
        assert_eq!(
            CalAddress::parse("http://other.example.com/cal/").kind(),
            AddressKind::Other
        );
    }

    #[test]
    fn guid_rules() {
        assert!(Guid::parse("927107A3-92B4-4285-B153-A5C823369E2").is_none());
        assert!(Guid::parse("927107A3X92B4-4285-B153-A5C823369E24").is_none());
        let g = Guid::parse("927107a3-92b4-4285-b153-a5c823369e24").unwrap();
        assert_eq!(g.hashed_prefix(), ("92".into(), "71".into()));
        assert!(!g.is_system());
    }

    #[test]
    fn canonical_forms() {
        let p = Principal {
            guid: Guid::parse("927107A3-92B4-4285-B153-A5C823369E24").unwrap(),
            kind: RecordType::User,
            short_name: "jdoe".into(),
            full_name: Some("Jane Doe".into()),
            emails: vec!["jane@example.com".into(), "jd@example.com".into()],
        };
        let old = CalAddress::parse("mailto:jd@example.com");
        assert_eq!(
            p.canonical_address(AddressForm::UrnUuid, &old),
            "urn:uuid:927107A3-92B4-4285-B153-A5C823369E24"
        );
        assert_eq!(
            p.canonical_address(AddressForm::Mailto, &old),
            "mailto:jane@example.com"
        );
        assert_eq!(
            p.canonical_address(AddressForm::Keep, &old),
            "mailto:jd@example.com"
        );
        let url = CalAddress::parse("http://h:8008/principals/users/old/");
        assert_eq!(
            p.canonical_address(AddressForm::Keep, &url),
            "http://h:8008/principals/users/jdoe/"
        );
        assert!(p.owns(&old));
        assert!(!p.owns(&url));
    }
}
