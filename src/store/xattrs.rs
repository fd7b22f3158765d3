//! WebDAV dead properties as CalendarServer 2.x keeps them in extended attributes.
//!
//! Attribute name: a prefix (`user.` on Linux, `WebDAV:` on Mac OS X) plus the URL-quoted
//! `{namespace}name`, where only letters, digits, `_`, `.`, `-` and the three characters `{`, `}`, `:`
//! stay as they are (Python 2 `urllib.quote(name, safe="{}:")`). Value: a zlib-compressed XML
//! document (older values may be pickled; those are kept raw, never dropped).

use super::Xattr;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;

/// Prefix on Linux.
pub const PREFIX_LINUX: &str = "user.";
/// Prefix on Mac OS X.
pub const PREFIX_MACOS: &str = "WebDAV:";

/// Namespace of `getcontentmd5` (twisted's DAV namespace).
pub const TWISTED_DAV_NS: &str = "http://twistedmatrix.com/xml_namespace/dav/";
/// Twisted's private DAV namespace: `scheduling-object-resource`, `scheduling-match-etags`.
pub const TWISTED_PRIVATE_NS: &str = "http://twistedmatrix.com/xml_namespace/dav/private/";
/// CalendarServer's namespace (`getctag`).
pub const CALENDARSERVER_NS: &str = "http://calendarserver.org/ns/";
/// CalDAV's namespace (`schedule-tag`, `originator`, `recipient`, `calendar-free-busy-set`).
pub const CALDAV_NS: &str = "urn:ietf:params:xml:ns:caldav";

/// The short namespace aliases CalendarServer 3.x writes in attribute names (`{TDP:}name` for
/// `{http://twistedmatrix.com/xml_namespace/dav/private/}name`), to stay under the 127-byte
/// limit of attribute names; it reads the long form too (and renames it to the short one when it
/// does). 2.x writes and reads the long form only. `DAV:` has no alias.
pub const SHORT_NAMESPACES: [(&str, &str); 6] = [
    ("CALDAV:", CALDAV_NS),
    ("CARDDAV:", "urn:ietf:params:xml:ns:carddav"),
    ("CS:", CALENDARSERVER_NS),
    ("ME:", "http://cal.me.com/_namespace/"),
    ("TD:", TWISTED_DAV_NS),
    ("TDP:", TWISTED_PRIVATE_NS),
];

/// The namespace a 3.x short alias stands for (`TDP:` → twisted's private namespace).
pub fn expand_namespace(ns: &str) -> Option<&'static str> {
    SHORT_NAMESPACES
        .iter()
        .find(|(short, _)| *short == ns)
        .map(|(_, long)| *long)
}

/// The 3.x short alias of a namespace, if it has one.
pub fn short_namespace(ns: &str) -> Option<&'static str> {
    SHORT_NAMESPACES
        .iter()
        .find(|(_, long)| *long == ns)
        .map(|(short, _)| *short)
}

/// `{http://twistedmatrix.com/xml_namespace/dav/}getcontentmd5`
pub fn getcontentmd5() -> String {
    format!("{{{TWISTED_DAV_NS}}}getcontentmd5")
}

/// `{http://calendarserver.org/ns/}getctag`
pub fn getctag() -> String {
    format!("{{{CALENDARSERVER_NS}}}getctag")
}

/// `{http://twistedmatrix.com/xml_namespace/dav/private/}scheduling-object-resource`: "true" on a
/// scheduling object resource (kept by every rewrite: the server relies on it).
pub fn scheduling_object_resource() -> String {
    format!("{{{TWISTED_PRIVATE_NS}}}scheduling-object-resource")
}

/// `{http://twistedmatrix.com/xml_namespace/dav/private/}scheduling-match-etags`: the ETags an
/// `If-Match` may name in the server's schedule-tag compatibility mode.
pub fn scheduling_match_etags() -> String {
    format!("{{{TWISTED_PRIVATE_NS}}}scheduling-match-etags")
}

/// `{urn:ietf:params:xml:ns:caldav}schedule-tag`
pub fn schedule_tag() -> String {
    format!("{{{CALDAV_NS}}}schedule-tag")
}

/// `{urn:ietf:params:xml:ns:caldav}originator` (inbox items: who sent the message)
pub fn originator() -> String {
    format!("{{{CALDAV_NS}}}originator")
}

/// `{urn:ietf:params:xml:ns:caldav}recipient` (inbox items: whom it was delivered to)
pub fn recipient() -> String {
    format!("{{{CALDAV_NS}}}recipient")
}

/// The prefix the platform's CalendarServer uses.
pub fn platform_prefix() -> &'static str {
    if cfg!(target_os = "macos") {
        PREFIX_MACOS
    } else {
        PREFIX_LINUX
    }
}

fn is_unquoted(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'{' | b'}' | b':')
}

/// URL-quotes a `{namespace}name` property name the way the server does.
pub fn quote_property(property: &str) -> String {
    let mut out = String::with_capacity(property.len() + 16);
    for &b in property.as_bytes() {
        if is_unquoted(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Undoes [`quote_property`] (any `%XX`; invalid escapes are kept as written).
pub fn unquote(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let h = (b[i + 1] as char).to_digit(16);
            let l = (b[i + 2] as char).to_digit(16);
            if let (Some(h), Some(l)) = (h, l) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The attribute name of a property under `prefix` (the long form, as 2.x writes it).
pub fn attr_name(prefix: &str, property: &str) -> String {
    format!("{prefix}{}", quote_property(property))
}

/// The attribute name 3.x writes: the namespace replaced by its short alias when it has one
/// (`user.{TDP:}scheduling-match-etags`), else the long form.
pub fn attr_name_short(prefix: &str, property: &str) -> String {
    let (ns, name) = split_property(property);
    match short_namespace(ns) {
        Some(short) if property.starts_with('{') => {
            format!("{prefix}{}", quote_property(&format!("{{{short}}}{name}")))
        }
        _ => attr_name(prefix, property),
    }
}

/// Splits an attribute name into its known prefix and the decoded `{namespace}name` property, a
/// 3.x short namespace alias expanded (`{TDP:}x` → `{http://twistedmatrix.com/xml_namespace/dav/private/}x`).
/// `None` when the name has neither prefix or is not a `{namespace}name` property (3.x per-user
/// properties, `<uid>{namespace}name`, are not: they are kept as they are).
pub fn decode_name(attr: &str) -> Option<(&'static str, String)> {
    for prefix in [PREFIX_LINUX, PREFIX_MACOS] {
        if let Some(rest) = attr.strip_prefix(prefix) {
            let prop = unquote(rest);
            if let Some((ns, name)) = prop.strip_prefix('{').and_then(|r| r.split_once('}')) {
                return Some(match expand_namespace(ns) {
                    Some(long) => (prefix, format!("{{{long}}}{name}")),
                    None => (prefix, prop),
                });
            }
        }
    }
    None
}

/// zlib-decompresses a value; returns it raw when it is not zlib data.
pub fn decode_value(raw: &[u8]) -> Vec<u8> {
    decode_zlib(raw).unwrap_or_else(|| raw.to_vec())
}

/// The decompressed value when it is zlib data (what the server writes since 2.x), `None` when
/// it is stored plain (older values: plain XML or a pickle).
pub fn decode_zlib(raw: &[u8]) -> Option<Vec<u8>> {
    // zlib header: CM = 8 and the 16-bit header divisible by 31.
    if raw.len() >= 2
        && raw[0] & 0x0f == 8
        && (u16::from(raw[0]) << 8 | u16::from(raw[1])) % 31 == 0
    {
        let mut out = Vec::new();
        if ZlibDecoder::new(raw).read_to_end(&mut out).is_ok() {
            return Some(out);
        }
    }
    None
}

/// zlib-compresses a value (what the server stores).
pub fn encode_value(plain: &[u8]) -> Vec<u8> {
    thread_local! {
        // A compressor is a few hundred KB of tables: reuse one per thread.
        static COMPRESS: std::cell::RefCell<flate2::Compress> =
            std::cell::RefCell::new(flate2::Compress::new(flate2::Compression::default(), true));
    }
    COMPRESS.with(|c| {
        let mut c = c.borrow_mut();
        c.reset();
        let mut out = Vec::with_capacity(plain.len() / 2 + 64);
        loop {
            let before = c.total_in() as usize;
            match c.compress_vec(
                &plain[before.min(plain.len())..],
                &mut out,
                flate2::FlushCompress::Finish,
            ) {
                Ok(flate2::Status::StreamEnd) => return out,
                Ok(_) => out.reserve(out.capacity().max(64)),
                Err(_) => break,
            }
        }
        // Not reachable with a valid compressor; fall back to the one-shot encoder.
        let mut enc = ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        let _ = enc.write_all(plain);
        enc.finish().unwrap_or_default()
    })
}

/// The XML document the server writes for a property holding only text:
/// `<?xml version='1.0' encoding='UTF-8'?>\r\n<NAME xmlns='NS'>TEXT</NAME>\r\n`.
pub fn text_property_xml(property: &str, text: &str) -> String {
    let (ns, name) = split_property(property);
    format!(
        "<?xml version='1.0' encoding='UTF-8'?>\r\n<{name} xmlns='{ns}'>{}</{name}>\r\n",
        xml_escape(text)
    )
}

/// The compressed attribute value of a text-only property.
pub fn text_property_value(property: &str, text: &str) -> Vec<u8> {
    encode_value(text_property_xml(property, text).as_bytes())
}

/// `{ns}name` → (`ns`, `name`).
pub fn split_property(property: &str) -> (&str, &str) {
    match property.strip_prefix('{').and_then(|r| r.split_once('}')) {
        Some((ns, name)) => (ns, name),
        None => ("", property),
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The text content of a one-element XML document (`getcontentmd5`, `getctag`), trimmed.
/// `None` when the value is not such a document.
pub fn text_of(xml: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(xml).ok()?;
    let mut rest = s.trim_start_matches('\u{feff}').trim_start();
    if rest.starts_with("<?") {
        rest = &rest[rest.find("?>")? + 2..];
    }
    let rest = rest.trim_start();
    if !rest.starts_with('<') {
        return None;
    }
    let open_end = rest.find('>')?;
    if rest[..open_end].ends_with('/') {
        return Some(String::new());
    }
    let body = &rest[open_end + 1..];
    let close = body.find('<')?;
    if !body[close..].starts_with("</") {
        return None;
    }
    Some(xml_unescape(body[..close].trim()))
}

impl Xattr {
    /// The decoded `{namespace}name` property this attribute holds, if it is a WebDAV property.
    pub fn property(&self) -> Option<String> {
        decode_name(&self.name).map(|(_, p)| p)
    }

    /// The prefix (`user.` or `WebDAV:`) when this is a WebDAV property attribute.
    pub fn prefix(&self) -> Option<&'static str> {
        decode_name(&self.name).map(|(p, _)| p)
    }

    /// The value, zlib-decompressed (raw when it is not zlib data).
    pub fn decoded_value(&self) -> Vec<u8> {
        decode_value(&self.value)
    }
}

/// Every extended attribute of an open file or folder (no symlink is followed: it is an fd).
pub fn read_all_fd<F: AsRawFd>(f: &F) -> std::io::Result<Vec<Xattr>> {
    use xattr::FileExt;
    struct Fd(i32);
    impl AsRawFd for Fd {
        fn as_raw_fd(&self) -> i32 {
            self.0
        }
    }
    impl FileExt for Fd {}
    let fd = Fd(f.as_raw_fd());
    let mut out = Vec::new();
    for name in fd.list_xattr()? {
        let name_s = name.to_string_lossy().into_owned();
        if let Some(value) = fd.get_xattr(&name)? {
            out.push(Xattr {
                name: name_s,
                value,
            });
        }
    }
    Ok(out)
}

/// Every extended attribute of a path (a symlink's own, never its target's).
pub fn read_all(path: &std::path::Path) -> std::io::Result<Vec<Xattr>> {
    let mut out = Vec::new();
    for name in xattr::list(path)? {
        let name_s = name.to_string_lossy().into_owned();
        if let Some(value) = xattr::get(path, &name)? {
            out.push(Xattr {
                name: name_s,
                value,
            });
        }
    }
    Ok(out)
}

/// The WebDAV prefix the given attributes use (`WebDAV:` wins when both appear), if any.
pub fn prefix_in(attrs: &[Xattr]) -> Option<&'static str> {
    let mut found = None;
    for a in attrs {
        match a.prefix() {
            Some(PREFIX_MACOS) => return Some(PREFIX_MACOS),
            Some(p) => found = Some(p),
            None => {}
        }
    }
    found
}

/// Finds the attribute holding `property` (under either prefix, long or short name) and returns
/// its decoded text.
pub fn property_text(attrs: &[Xattr], property: &str) -> Option<Option<String>> {
    attrs
        .iter()
        .find(|a| a.property().as_deref() == Some(property))
        .map(|a| text_of(&a.decoded_value()))
}

/// Every attribute holding `property`: a store served by 2.x and then 3.x may hold both the long
/// and the short name of one property, each read by one of them.
pub fn holding<'a>(attrs: &'a [Xattr], property: &'a str) -> impl Iterator<Item = &'a Xattr> + 'a {
    attrs
        .iter()
        .filter(move |a| a.property().as_deref() == Some(property))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_like_the_server() {
        assert_eq!(
            attr_name("user.", &getcontentmd5()),
            "user.{http:%2F%2Ftwistedmatrix.com%2Fxml_namespace%2Fdav%2F}getcontentmd5"
        );
        assert_eq!(
            attr_name("WebDAV:", &getctag()),
            "WebDAV:{http:%2F%2Fcalendarserver.org%2Fns%2F}getctag"
        );
        let n = attr_name(
            "user.",
            "{urn:ietf:params:xml:ns:caldav}calendar-free-busy-set",
        );
        assert_eq!(
            decode_name(&n),
            Some((
                "user.",
                "{urn:ietf:params:xml:ns:caldav}calendar-free-busy-set".to_string()
            ))
        );
        assert_eq!(decode_name("user.com.apple.FinderInfo"), None);
        assert_eq!(unquote("a%2"), "a%2");
        assert_eq!(unquote("%7e%"), "~%");
    }

    #[test]
    fn reads_the_long_and_the_short_names_of_private_properties() {
        let sched = scheduling_match_etags();
        // 2.5 writes the long form, 3.3 the short one; both decode to the same property.
        let long = attr_name("user.", &sched);
        assert_eq!(
            long,
            "user.{http:%2F%2Ftwistedmatrix.com%2Fxml_namespace%2Fdav%2Fprivate%2F}scheduling-match-etags"
        );
        let short = attr_name_short("user.", &sched);
        assert_eq!(short, "user.{TDP:}scheduling-match-etags");
        for n in [&long, &short] {
            assert_eq!(decode_name(n), Some(("user.", sched.clone())), "{n}");
        }
        assert_eq!(
            decode_name("WebDAV:{TDP:}scheduling-object-resource"),
            Some(("WebDAV:", scheduling_object_resource()))
        );
        assert_eq!(
            decode_name("user.{CALDAV:}schedule-tag"),
            Some(("user.", schedule_tag()))
        );
        assert_eq!(
            decode_name("user.{TD:}getcontentmd5"),
            Some(("user.", getcontentmd5()))
        );
        assert_eq!(decode_name("user.{CS:}getctag"), Some(("user.", getctag())));
        assert_eq!(attr_name_short("user.", &getctag()), "user.{CS:}getctag");
        // DAV: has no alias; an unknown short-looking namespace stays as written.
        assert_eq!(
            attr_name_short("user.", "{DAV:}getcontenttype"),
            "user.{DAV:}getcontenttype"
        );
        assert_eq!(
            decode_name("user.{X:}y"),
            Some(("user.", "{X:}y".to_string()))
        );
        // 3.x per-user properties (`<uid>{ns}name`) are not ours to interpret.
        assert_eq!(
            decode_name("user.10000000-0000-0000-0000-000000000001{CS:}x"),
            None
        );
        // The old, wrong namespace is a different property.
        assert_ne!(
            decode_name("user.{http:%2F%2Fcalendarserver.org%2Fns%2F}scheduling-object-resource")
                .map(|(_, p)| p),
            Some(scheduling_object_resource())
        );
    }

    #[test]
    fn values_round_trip() {
        let v = text_property_value(&getcontentmd5(), "d41d8cd98f00b204e9800998ecf8427e");
        let xml = decode_value(&v);
        assert_eq!(
            String::from_utf8(xml.clone()).unwrap(),
            "<?xml version='1.0' encoding='UTF-8'?>\r\n<getcontentmd5 xmlns='http://twistedmatrix.com/xml_namespace/dav/'>d41d8cd98f00b204e9800998ecf8427e</getcontentmd5>\r\n"
        );
        assert_eq!(
            text_of(&xml).as_deref(),
            Some("d41d8cd98f00b204e9800998ecf8427e")
        );
        // Not zlib: kept raw.
        assert_eq!(decode_value(b"(dp0\nS'x'"), b"(dp0\nS'x'".to_vec());
        assert_eq!(text_of(b"<a xmlns='x'/>").as_deref(), Some(""));
        assert_eq!(text_of(b"<a><b/></a>"), None);
        assert_eq!(text_of(b"\x80\x02pickle"), None);
    }

    proptest::proptest! {
        #[test]
        fn quoting_round_trips(s in "\\PC{0,40}") {
            let q = quote_property(&s);
            proptest::prop_assert!(q.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-{}:%".contains(&b)), "{}", q);
            proptest::prop_assert_eq!(unquote(&q), s);
        }
    }

    #[test]
    fn reused_compressor_round_trips_any_size() {
        let big: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for v in [&b""[..], b"x", &big[..], b"again"] {
            let z = encode_value(v);
            assert!(z.len() >= 2 && z[0] == 0x78, "zlib header");
            assert_eq!(decode_value(&z), v.to_vec());
        }
    }
}
