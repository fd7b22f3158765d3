//! Dropbox links: the `X-APPLE-DROPBOX` and `ATTACH` values that name a calendar home by URL.
//!
//! iCal writes `X-APPLE-DROPBOX:/calendars/__uids__/<GUID>/dropbox/<x>.dropbox` and
//! `ATTACH;VALUE=URI:http://host:8008/calendars/__uids__/<GUID>/dropbox/<x>.dropbox/<file>`; the
//! server (2.x `icaldiff.py`) matches an attachment to its dropbox by the X-APPLE-DROPBOX value being
//! a substring of the ATTACH value, and refuses an attendee copy whose X-APPLE-DROPBOX differs from
//! the organizer's. So every link is rewritten the same way, touching only the home segment: when
//! the home moves to a new GUID, `/calendars/<collection>/<id>/` becomes `/calendars/__uids__/<NEW>/`
//! and every other byte (scheme, host, port, the dropbox and file names, their escapes) stays.
//!
//! Pure functions over bytes; nothing here looks at the store.

use crate::address::{CalAddress, Guid, RecordType};
use std::ops::Range;

/// A calendar home as a URL names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "kebab-case")]
pub enum HomeRef {
    /// `/calendars/__uids__/<uid>/` (upper-cased when the uid is a GUID, as the server spells it).
    Uid(String),
    /// `/calendars/<users|groups|locations|resources>/<short>/` (1.x URLs).
    Name {
        /// The principal collection the URL names.
        kind: RecordType,
        /// The short name after it, as written.
        short: String,
    },
}

impl HomeRef {
    /// The home of `uid` (upper-cased when it is a GUID).
    pub fn uid(uid: &str) -> HomeRef {
        HomeRef::Uid(match Guid::parse(uid) {
            Some(g) => g.to_string(),
            None => uid.to_string(),
        })
    }

    /// The address of the principal that owns the home.
    pub fn owner(&self) -> CalAddress {
        match self {
            HomeRef::Uid(u) => match Guid::parse(u) {
                Some(g) => CalAddress::UrnUuid(g),
                None => CalAddress::UrnXUid(u.clone()),
            },
            HomeRef::Name { kind, short } => CalAddress::PrincipalName {
                kind: *kind,
                short: short.clone(),
                base: None,
            },
        }
    }

    /// True when this is the `__uids__` URL of `guid`.
    pub fn is_uid_of(&self, guid: &Guid) -> bool {
        matches!(self, HomeRef::Uid(u) if u == guid.as_str())
    }
}

impl std::fmt::Display for HomeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HomeRef::Uid(u) => write!(f, "/calendars/__uids__/{u}/"),
            HomeRef::Name { kind, short } => {
                write!(f, "/calendars/{}/{short}/", kind.collection())
            }
        }
    }
}

/// Where a link names a home.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// The home the link names.
    pub home: HomeRef,
    /// The bytes of `/calendars/<collection>/<id>/` in the value.
    pub range: Range<usize>,
}

fn strip_prefix_ci<'a>(v: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (v.len() >= prefix.len() && v[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &v[prefix.len()..])
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// Reads a dropbox link: a path, or an `http(s)://host[:port]` URL of any host, into
/// `/calendars/<__uids__|users|groups|locations|resources>/<id>/dropbox` (then `/` or the end).
/// `None` for anything else (attachments elsewhere, other servers' paths, inline data).
pub fn parse(value: &[u8]) -> Option<Link> {
    let path_start =
        match strip_prefix_ci(value, b"https://").or_else(|| strip_prefix_ci(value, b"http://")) {
            Some(after) => {
                let authority = value.len() - after.len();
                authority + memchr::memchr(b'/', after)?
            }
            None => 0,
        };
    let path = &value[path_start..];
    let rest = path.strip_prefix(b"/calendars/")?;
    let slash = memchr::memchr(b'/', rest)?;
    let collection = &rest[..slash];
    let rest = &rest[slash + 1..];
    let slash = memchr::memchr(b'/', rest)?;
    let id = &rest[..slash];
    let after = &rest[slash + 1..];
    if id.is_empty() || !(after == b"dropbox" || after.starts_with(b"dropbox/")) {
        return None;
    }
    let id = String::from_utf8(percent_decode(id)).ok()?;
    if id.is_empty() || id.contains('/') {
        return None;
    }
    let home = if collection == b"__uids__" {
        HomeRef::uid(&id)
    } else {
        let kind = RecordType::from_collection(std::str::from_utf8(collection).ok()?)?;
        HomeRef::Name { kind, short: id }
    };
    let end = path_start + b"/calendars/".len() + collection.len() + 1 + slash + 1;
    Some(Link {
        home,
        range: path_start..end,
    })
}

/// The value with the home segment of `link` naming `guid`'s home.
pub fn rewrite(value: &[u8], link: &Link, guid: &Guid) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 40);
    out.extend_from_slice(&value[..link.range.start]);
    out.extend_from_slice(b"/calendars/__uids__/");
    out.extend_from_slice(guid.as_str().as_bytes());
    out.push(b'/');
    out.extend_from_slice(&value[link.range.end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: &str = "6423F94A-6B76-4A3A-815B-D52CFD77935D";
    const N: &str = "11111111-2222-4333-8444-555555555555";

    #[test]
    fn reads_every_form_of_link() {
        let l =
            parse(format!("/calendars/__uids__/{}/dropbox/x.dropbox", G.to_lowercase()).as_bytes())
                .unwrap();
        assert_eq!(l.home, HomeRef::Uid(G.into()));
        assert_eq!(l.range, 0..20 + 36 + 1);
        let url = format!(
            "HTTPS://cal.example.com:8443/calendars/__uids__/{G}/dropbox/a%20b.dropbox/f%C3%A9.pdf"
        );
        let l = parse(url.as_bytes()).unwrap();
        assert_eq!(l.home, HomeRef::Uid(G.into()));
        let out = rewrite(url.as_bytes(), &l, &Guid::parse(N).unwrap());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("HTTPS://cal.example.com:8443/calendars/__uids__/{N}/dropbox/a%20b.dropbox/f%C3%A9.pdf")
        );
        let l = parse(b"http://h:8008/calendars/users/j%20doe/dropbox/x.dropbox/f").unwrap();
        assert_eq!(
            l.home,
            HomeRef::Name {
                kind: RecordType::User,
                short: "j doe".into()
            }
        );
        assert_eq!(
            rewrite(
                b"http://h:8008/calendars/users/j%20doe/dropbox/x.dropbox/f",
                &l,
                &Guid::parse(N).unwrap()
            ),
            format!("http://h:8008/calendars/__uids__/{N}/dropbox/x.dropbox/f").into_bytes()
        );
        let l = parse(b"/calendars/__uids__/user01/dropbox").unwrap();
        assert_eq!(l.home, HomeRef::Uid("user01".into()));
        assert_eq!(l.home.owner(), CalAddress::UrnXUid("user01".into()));
        assert_eq!(
            parse(b"/calendars/locations/room1/dropbox/")
                .unwrap()
                .home
                .owner(),
            CalAddress::parse("/principals/locations/room1/")
        );
    }

    #[test]
    fn leaves_everything_else() {
        for v in [
            &b""[..],
            b"Basso",
            b"http://other.example.com/files/x.pdf",
            b"/calendars/__uids__/G/calendar/x.ics",
            b"/calendars/__uids__//dropbox/x",
            b"/calendars/__uids__/G/dropboxes/x",
            b"/calendars/things/G/dropbox/x",
            b"http://h:8008",
            b"ftp://h/calendars/__uids__/G/dropbox/x",
            b" /calendars/__uids__/G/dropbox/x",
            b"/calendars/__uids__/a%2Fb/dropbox/x",
            b"data:text/plain,/calendars/__uids__/G/dropbox/x",
        ] {
            assert_eq!(parse(v), None, "{:?}", String::from_utf8_lossy(v));
        }
    }
}
