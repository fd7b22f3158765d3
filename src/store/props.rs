//! The server properties a rewrite changes besides the bytes, and how.
//!
//! - Inbox items carry `{urn:ietf:params:xml:ns:caldav}originator` and `recipient`, whose
//!   `{DAV:}href` values are calendar user addresses: they are planned like any other address
//!   ([`scan_principals`]), stored in the plan as [`AttrEdit`]s, journaled and undone with the
//!   resource.
//! - `{http://twistedmatrix.com/xml_namespace/dav/private/}scheduling-match-etags` names the ETags
//!   an `If-Match` may carry in the schedule-tag compatibility mode. CalendarServer 2.5 checks an
//!   `If-Match` against that list alone once it has more than one entry, so a list left naming the
//!   old bytes' ETags refuses every client edit with 412. When the bytes change it gets one entry,
//!   the new ETag (the new MD5 hex, what `getcontentmd5` then holds): the list the server itself
//!   writes after any client PUT ([`refresh_match_etags`]).
//! - `scheduling-object-resource` and `{urn:ietf:params:xml:ns:caldav}schedule-tag` are kept as
//!   they are: an address-only rewrite changes neither what the resource is nor its schedule tag.
//!
//! Edits are lossless: only the text of an `href` or `getetag` element changes; the value keeps
//! its XML as written (declaration, whitespace, prefixes), its encoding (zlib or plain), and the
//! attribute its name (prefix, long or 3.x short namespace).

use super::xattrs;
use super::Xattr;
use crate::error::{Error, Result};
use base64::Engine as _;
use std::ops::Range;
use std::path::Path;

/// The properties whose `{DAV:}href` values are calendar user addresses (inbox items).
pub fn principal_properties() -> [String; 2] {
    [xattrs::originator(), xattrs::recipient()]
}

/// Whether the plan reads the attributes of the resources of this collection: only inbox items
/// carry principal properties, and reading every resource's attributes would cost the plan a few
/// system calls per resource.
pub fn reads_attributes(collection: &str) -> bool {
    collection == "inbox"
}

/// One planned change of one extended attribute, as stored in the plan (JSON).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttrEdit {
    /// The attribute's name, exactly as found.
    pub name: String,
    /// SHA-256 of its raw value when planned: another value when applying means someone changed it.
    pub old_sha256: String,
    /// The new raw value, base64.
    pub new: String,
}

impl AttrEdit {
    fn make(name: &str, old: &[u8], new: &[u8]) -> AttrEdit {
        AttrEdit {
            name: name.to_string(),
            old_sha256: super::write::sha256_hex(old),
            new: base64::engine::general_purpose::STANDARD.encode(new),
        }
    }

    /// The new raw value.
    pub fn new_value(&self) -> Result<Vec<u8>> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.new)
            .map_err(|e| {
                Error::runtime(format!(
                    "state database: the planned value of {} is damaged: {e}",
                    self.name
                ))
            })
    }
}

/// The JSON the plan stores for a resource's edits (`None` when there are none).
pub fn edits_json(edits: &[AttrEdit]) -> Option<String> {
    if edits.is_empty() {
        None
    } else {
        serde_json::to_string(edits).ok()
    }
}

/// The edits a plan stored for a resource.
pub fn edits_from_json(json: Option<&str>) -> Result<Vec<AttrEdit>> {
    match json {
        None | Some("") => Ok(Vec::new()),
        Some(j) => serde_json::from_str(j).map_err(|e| {
            Error::runtime(format!(
                "state database: damaged attribute edits ({e}); plan again"
            ))
        }),
    }
}

/// A property value as XML text, and whether it was stored zlib-compressed.
struct Doc {
    xml: String,
    zlib: bool,
}

impl Doc {
    fn read(raw: &[u8]) -> Option<Doc> {
        let (plain, zlib) = match xattrs::decode_zlib(raw) {
            Some(p) => (p, true),
            None => (raw.to_vec(), false),
        };
        let xml = String::from_utf8(plain).ok()?;
        if !xml
            .trim_start_matches('\u{feff}')
            .trim_start()
            .starts_with('<')
        {
            return None; // a pickle, or not XML at all
        }
        Some(Doc { xml, zlib })
    }

    fn encode(&self, xml: &str) -> Vec<u8> {
        if self.zlib {
            xattrs::encode_value(xml.as_bytes())
        } else {
            xml.as_bytes().to_vec()
        }
    }
}

/// One element `{ns}local` of a document: its byte range, and the range and trimmed value of its
/// text when it holds only text.
struct Hit {
    element: Range<usize>,
    text: Option<(Range<usize>, String)>,
}

fn elements(xml: &str, ns: &str, local: &str) -> Option<Vec<Hit>> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let mut out = Vec::new();
    for n in doc.descendants().filter(|n| {
        n.is_element() && n.tag_name().name() == local && n.tag_name().namespace() == Some(ns)
    }) {
        let mut children = n.children();
        let text = match (children.next(), children.next()) {
            (Some(t), None) if t.is_text() => {
                let value = t.text().unwrap_or_default().trim().to_string();
                Some((t.range(), value))
            }
            _ => None,
        };
        out.push(Hit {
            element: n.range(),
            text,
        });
    }
    Some(out)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The raw text that replaces `raw` (an element's text as written) to say `value`: its leading and
/// trailing whitespace kept.
fn replacement(raw: &str, value: &str) -> String {
    let lead = raw.len() - raw.trim_start().len();
    let trail = raw.len() - raw.trim_end().len();
    format!(
        "{}{}{}",
        &raw[..lead],
        xml_escape(value),
        &raw[raw.len() - trail..]
    )
}

/// Replaces byte ranges of `xml` (sorted, not overlapping) by new texts.
fn splice(xml: &str, mut edits: Vec<(Range<usize>, String)>) -> String {
    edits.sort_by_key(|(r, _)| r.start);
    let mut out = String::with_capacity(xml.len() + 64);
    let mut at = 0;
    for (r, text) in edits {
        out.push_str(&xml[at..r.start]);
        out.push_str(&text);
        at = r.end;
    }
    out.push_str(&xml[at..]);
    out
}

/// What [`scan_principals`] found in a resource's attributes.
#[derive(Clone, Debug, Default)]
pub struct PrincipalScan {
    /// Every address found in an `originator` / `recipient` href, as written.
    pub hrefs: Vec<String>,
    /// The attribute edits that rewrite them.
    pub edits: Vec<AttrEdit>,
    /// One per rewritten href, for the reports (`line` 0, `property` the `{ns}name`, the lines
    /// `{ns}name href <address>`).
    pub changes: Vec<crate::ical::Change>,
}

/// Finds the addresses of the `originator` and `recipient` properties among `attrs` and plans
/// their rewrite: `rewrite` gives an address's new value (`None`: leave it). Values that are not
/// readable XML (pickles) are left alone.
pub fn scan_principals(attrs: &[Xattr], rewrite: &dyn Fn(&str) -> Option<String>) -> PrincipalScan {
    let wanted = principal_properties();
    let mut out = PrincipalScan::default();
    for a in attrs {
        let Some(property) = a.property().filter(|p| wanted.contains(p)) else {
            continue;
        };
        let Some(doc) = Doc::read(&a.value) else {
            continue;
        };
        let Some(hits) = elements(&doc.xml, "DAV:", "href") else {
            continue;
        };
        let mut edits = Vec::new();
        for (range, value) in hits.into_iter().filter_map(|h| h.text) {
            out.hrefs.push(value.clone());
            if let Some(new) = rewrite(&value).filter(|n| *n != value) {
                edits.push((range.clone(), replacement(&doc.xml[range], &new)));
                out.changes.push(crate::ical::Change {
                    line: 0,
                    property: property.clone(),
                    old_line: format!("{property} href {value}"),
                    new_line: format!("{property} href {new}"),
                    old_value: value,
                    new_value: new,
                });
            }
        }
        if !edits.is_empty() {
            let xml = splice(&doc.xml, edits);
            out.edits
                .push(AttrEdit::make(&a.name, &a.value, &doc.encode(&xml)));
        }
    }
    out
}

/// Puts planned edits into a file's attributes (name, raw value). `Err` names the attribute that
/// no longer holds the value the plan was made from.
pub fn apply_edits(
    attrs: &mut [(String, Vec<u8>)],
    edits: &[AttrEdit],
) -> std::result::Result<(), String> {
    for e in edits {
        let new = e.new_value().map_err(|err| err.to_string())?;
        match attrs.iter_mut().find(|(n, _)| *n == e.name) {
            Some((_, v)) if super::write::sha256_hex(v) == e.old_sha256 => *v = new,
            Some((_, v)) => {
                return Err(format!(
                    "attribute {} (sha256 {})",
                    e.name,
                    super::write::sha256_hex(v)
                ))
            }
            None => return Err(format!("attribute {} (removed)", e.name)),
        }
    }
    Ok(())
}

/// Whether the file at `path` already holds every edit's new value.
pub fn edits_done(path: &Path, edits: &[AttrEdit]) -> Result<bool> {
    if edits.is_empty() {
        return Ok(true);
    }
    let attrs = xattrs::read_all(path)
        .map_err(|e| Error::io("cannot read extended attributes of", path, e))?;
    for e in edits {
        let new = e.new_value()?;
        if !attrs.iter().any(|a| a.name == e.name && a.value == new) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The ETags a `scheduling-match-etags` value names, in order; `None` when it is not readable XML.
pub fn match_etags(raw: &[u8]) -> Option<Vec<String>> {
    let doc = Doc::read(raw)?;
    let hits = elements(&doc.xml, "DAV:", "getetag")?;
    Some(
        hits.into_iter()
            .map(|h| h.text.map(|(_, v)| v).unwrap_or_default())
            .collect(),
    )
}

/// The `scheduling-match-etags` document the server writes for one ETag.
pub fn match_etags_xml(etag: &str) -> String {
    format!(
        "<?xml version='1.0' encoding='UTF-8'?>\r\n<scheduling-match-etags xmlns='{}'><getetag xmlns='DAV:'>{}</getetag></scheduling-match-etags>\r\n",
        xattrs::TWISTED_PRIVATE_NS,
        xml_escape(etag)
    )
}

/// `raw` (a `scheduling-match-etags` value) made to name only `etag`: the first entry's text
/// replaced, the entries after it removed, every other byte and the encoding kept. `None` when
/// it names no ETag at all (left as it is). A value that is not readable XML becomes the
/// document the server writes, compressed.
pub fn match_etags_value(raw: &[u8], etag: &str) -> Option<Vec<u8>> {
    let Some(doc) = Doc::read(raw) else {
        return Some(xattrs::encode_value(match_etags_xml(etag).as_bytes()));
    };
    let hits = match elements(&doc.xml, "DAV:", "getetag") {
        Some(h) if !h.is_empty() => h,
        Some(_) => return None,
        None => return Some(xattrs::encode_value(match_etags_xml(etag).as_bytes())),
    };
    let first = &hits[0];
    let last = &hits[hits.len() - 1];
    let xml = match &first.text {
        Some((text, _)) => {
            let new_text = replacement(&doc.xml[text.clone()], etag);
            let mut edits = vec![(text.clone(), new_text)];
            if hits.len() > 1 {
                edits.push((first.element.end..last.element.end, String::new()));
            }
            splice(&doc.xml, edits)
        }
        // An empty or odd first entry: the whole run of entries becomes one plain entry.
        None => splice(
            &doc.xml,
            vec![(
                first.element.start..last.element.end,
                format!("<getetag xmlns='DAV:'>{}</getetag>", xml_escape(etag)),
            )],
        ),
    };
    Some(doc.encode(&xml))
}

/// Gives every attribute holding `scheduling-match-etags` one entry, `etag` (the resource's new
/// ETag), under the name it has. Resources without it get none: a server that does not keep the
/// list (compatibility mode off, or not a scheduling object) has none.
pub fn refresh_match_etags(attrs: &mut [(String, Vec<u8>)], etag: &str) {
    let prop = xattrs::scheduling_match_etags();
    for (name, value) in attrs.iter_mut() {
        if xattrs::decode_name(name).map(|(_, p)| p).as_deref() == Some(prop.as_str()) {
            if let Some(v) = match_etags_value(value, etag) {
                *value = v;
            }
        }
    }
}

/// Why the server would refuse edits of a resource whose bytes have the MD5 `etag`, judged by its
/// `scheduling-match-etags`: `Some(detail)` when a list names ETags and none is the current one
/// (the server never writes such a list; 2.5 answers 412 to every `If-Match` once it has more
/// than one entry).
pub fn stale_match_etags(attrs: &[Xattr], etag: &str) -> Option<String> {
    let prop = xattrs::scheduling_match_etags();
    for a in xattrs::holding(attrs, &prop) {
        let Some(list) = match_etags(&a.value) else {
            return Some(format!(
                "{} is not a readable XML value; the current ETag is {etag}",
                a.name
            ));
        };
        if !list.is_empty() && !list.iter().any(|e| e == etag) {
            let consequence = if list.len() > 1 {
                "CalendarServer 2.5 refuses every edit with If-Match: 412 Precondition Failed"
            } else {
                "the server never keeps a list without the current ETag"
            };
            return Some(format!(
                "scheduling-match-etags names {} but the current ETag is {etag}: {consequence}",
                list.join(", ")
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TDP: &str = xattrs::TWISTED_PRIVATE_NS;

    fn x(name: &str, value: &[u8]) -> Xattr {
        Xattr {
            name: name.into(),
            value: value.to_vec(),
        }
    }

    fn upcase(v: &str) -> Option<String> {
        v.strip_prefix("mailto:old@")
            .map(|rest| format!("urn:uuid:NEW-{rest}"))
    }

    #[test]
    fn rewrites_only_the_href_text_and_keeps_the_encoding() {
        // 2.5's compact shape, zlib; 3.3's pretty shape, plain; a prefixed namespace; an entity.
        let orig = "<?xml version='1.0' encoding='UTF-8'?>\r\n<originator xmlns='urn:ietf:params:xml:ns:caldav'><href xmlns='DAV:'>mailto:old@a</href></originator>\r\n";
        let recip = "<?xml version='1.0' encoding='UTF-8'?>\n<recipient xmlns='urn:ietf:params:xml:ns:caldav'>\r\n  <href xmlns='DAV:'> mailto:old@b </href>\r\n  <D:href xmlns:D='DAV:'>mailto:o&amp;k@c</D:href>\r\n</recipient>";
        let attrs = vec![
            x(
                "user.{urn:ietf:params:xml:ns:caldav}originator",
                &xattrs::encode_value(orig.as_bytes()),
            ),
            x("user.{CALDAV:}recipient", recip.as_bytes()),
            x("user.{DAV:}getcontenttype", b"text/calendar"),
        ];
        let scan = scan_principals(&attrs, &|v| {
            upcase(v).or_else(|| (v == "mailto:o&k@c").then(|| "mailto:a<b@c".to_string()))
        });
        assert_eq!(scan.hrefs, ["mailto:old@a", "mailto:old@b", "mailto:o&k@c"]);
        assert_eq!(scan.edits.len(), 2);
        assert_eq!(scan.changes.len(), 3);
        assert_eq!(scan.changes[0].property, xattrs::originator());
        assert_eq!(scan.changes[2].new_value, "mailto:a<b@c");
        let mut meta: Vec<(String, Vec<u8>)> = attrs
            .iter()
            .map(|a| (a.name.clone(), a.value.clone()))
            .collect();
        apply_edits(&mut meta, &scan.edits).unwrap();
        let o = xattrs::decode_zlib(&meta[0].1).expect("still zlib");
        assert_eq!(
            String::from_utf8(o).unwrap(),
            orig.replace("mailto:old@a", "urn:uuid:NEW-a")
        );
        assert_eq!(
            String::from_utf8(meta[1].1.clone()).unwrap(),
            recip
                .replace(" mailto:old@b ", " urn:uuid:NEW-b ")
                .replace("mailto:o&amp;k@c", "mailto:a&lt;b@c"),
            "plain stays plain, whitespace and prefixes kept"
        );
        assert_eq!(meta[2].1, b"text/calendar");
        // Applying twice: the attribute no longer holds the planned value.
        assert!(apply_edits(&mut meta, &scan.edits)
            .unwrap_err()
            .contains("user.{urn:ietf:params:xml:ns:caldav}originator"));
        // Nothing to rewrite, pickles and garbage: no edit.
        let none = scan_principals(
            &[
                x("user.{CALDAV:}originator", b"(dp0\nS'x'"),
                x("user.{CALDAV:}recipient", b"<recipient"),
            ],
            &upcase,
        );
        assert!(none.edits.is_empty() && none.hrefs.is_empty());
    }

    #[test]
    fn match_etags_become_the_new_etag_alone() {
        let three = format!("<?xml version='1.0' encoding='UTF-8'?>\n<scheduling-match-etags xmlns='{TDP}'>\r\n  <getetag xmlns='DAV:'>aaa</getetag>\r\n  <getetag xmlns='DAV:'>bbb</getetag>\r\n  <getetag xmlns='DAV:'>ccc</getetag>\r\n</scheduling-match-etags>");
        let v = match_etags_value(three.as_bytes(), "new").unwrap();
        assert_eq!(
            String::from_utf8(v).unwrap(),
            format!("<?xml version='1.0' encoding='UTF-8'?>\n<scheduling-match-etags xmlns='{TDP}'>\r\n  <getetag xmlns='DAV:'>new</getetag>\r\n</scheduling-match-etags>")
        );
        let one = match_etags_xml("old");
        let z = xattrs::encode_value(one.as_bytes());
        let v = match_etags_value(&z, "new").unwrap();
        assert_eq!(
            String::from_utf8(xattrs::decode_zlib(&v).unwrap()).unwrap(),
            match_etags_xml("new")
        );
        assert_eq!(match_etags(&v).unwrap(), ["new"]);
        assert_eq!(
            match_etags(three.as_bytes()).unwrap(),
            ["aaa", "bbb", "ccc"]
        );
        // An empty list names nothing: left alone. A pickle: the server's document.
        let empty = format!("<scheduling-match-etags xmlns='{TDP}'/>");
        assert_eq!(match_etags_value(empty.as_bytes(), "new"), None);
        assert_eq!(
            match_etags(&match_etags_value(b"\x80\x02pickle", "new").unwrap()).unwrap(),
            ["new"]
        );
        let odd = format!("<scheduling-match-etags xmlns='{TDP}'><getetag xmlns='DAV:'/><getetag xmlns='DAV:'>b</getetag></scheduling-match-etags>");
        assert_eq!(
            match_etags(&match_etags_value(odd.as_bytes(), "new").unwrap()).unwrap(),
            ["new"]
        );
    }

    #[test]
    fn refresh_touches_every_name_of_the_list_and_nothing_else() {
        let list = xattrs::encode_value(match_etags_xml("old").as_bytes());
        let mut attrs = vec![
            (
                xattrs::attr_name("user.", &xattrs::scheduling_match_etags()),
                list.clone(),
            ),
            (
                "user.{TDP:}scheduling-match-etags".to_string(),
                list.clone(),
            ),
            (
                "user.{TDP:}scheduling-object-resource".to_string(),
                b"t".to_vec(),
            ),
        ];
        refresh_match_etags(&mut attrs, "new");
        for (_, v) in &attrs[..2] {
            assert_eq!(match_etags(v).unwrap(), ["new"]);
        }
        assert_eq!(attrs[2].1, b"t");
    }

    #[test]
    fn stale_lists_are_those_without_the_current_etag() {
        let a = |etags: &[&str]| {
            let inner: String = etags
                .iter()
                .map(|e| format!("<getetag xmlns='DAV:'>{e}</getetag>"))
                .collect();
            vec![x(
                "user.{TDP:}scheduling-match-etags",
                &xattrs::encode_value(
                    format!(
                        "<scheduling-match-etags xmlns='{TDP}'>{inner}</scheduling-match-etags>"
                    )
                    .as_bytes(),
                ),
            )]
        };
        assert_eq!(stale_match_etags(&a(&["cur"]), "cur"), None);
        // What the server keeps after processing a reply: the earlier ETag and the current one.
        assert_eq!(stale_match_etags(&a(&["old", "cur"]), "cur"), None);
        assert_eq!(stale_match_etags(&a(&[]), "cur"), None);
        assert!(stale_match_etags(&a(&["o1", "o2"]), "cur")
            .unwrap()
            .contains("412"));
        assert!(stale_match_etags(&a(&["o1"]), "cur").is_some());
        assert_eq!(stale_match_etags(&[], "cur"), None);
    }
}
