//! The rewrite of CalendarServer's rows that planning and applying share: a calendar object's
//! new text, ETag and ORGANIZER column ([`rewrite_object`]), a group card's principal members
//! ([`rewrite_card`]), and the uid-bearing values outside the objects (hrefs into a home, push
//! keys, sharing notifications). `db::plan` stores what these give; `db::apply` replays them with
//! the plan's own resolver and must get exactly the planned result.

use crate::address::{CalAddress, Guid, Principal};
use crate::error::{Error, Result};
use crate::ical::{self, Resolve, RewriteOptions};
use crate::mapping;
use crate::store::pg::read::{CardRow, ObjectRow};
use crate::store::pg::schema::{md5_hex, Schema};
use crate::vcard;
use std::collections::HashSet;

/// The address a bare uid stands for (a GUID as `urn:uuid:`, anything else as `urn:x-uid:`).
pub fn uid_address(uid: &str) -> CalAddress {
    match Guid::parse(uid) {
        Some(g) => CalAddress::UrnUuid(g),
        None => CalAddress::UrnXUid(uid.to_string()),
    }
}

/// The uid a principal has in the store (its GUID as the directory spells it), when `old` names
/// someone else now; `None` when it stays.
pub fn new_uid(resolver: &dyn Resolve, old: &str) -> Option<String> {
    let p = resolver.resolve(&uid_address(old))?;
    let new = p.guid.to_string();
    (!new.eq_ignore_ascii_case(old)).then_some(new)
}

/// One object's planned rewrite.
pub struct Planned {
    /// ICALENDAR_TEXT after the rewrite.
    pub new_text: Vec<u8>,
    /// md5 of the new text.
    pub new_text_md5: String,
    /// Every property changed, in file order.
    pub changes: Vec<ical::Change>,
    /// The new MD5 column value (the ETag: md5 of the text, plus SCHEDULE_TAG from schema 9).
    pub new_md5: String,
    /// The new ORGANIZER column value (None when NULL).
    pub new_organizer: Option<String>,
}

/// Rewrites one calendar object as planning and applying both do: the new text, its ETag and
/// ORGANIZER column. `None` when the text does not change.
pub fn rewrite_object(
    schema: &Schema,
    row: &ObjectRow,
    info_before: &ical::CalendarInfo,
    rw: ical::Rewritten,
    resolver: &dyn Resolve,
    opts: &RewriteOptions,
) -> Option<Planned> {
    if rw.changes.is_empty() {
        return None;
    }
    let new_text_md5 = md5_hex(&rw.bytes);
    let new_md5 = match &row.schedule_tag {
        Some(t) if schema.md5_with_schedule_tag => schema.calendar_md5(&rw.bytes, Some(t)),
        _ => new_text_md5.clone(),
    };
    let old_first = info_before.organizer.clone();
    // The first ORGANIZER after the rewrite: the first one's new value when its line changed.
    let first_line = info_before
        .addresses
        .iter()
        .find(|f| f.property == "ORGANIZER")
        .map(|f| f.line);
    let new_first = match rw
        .changes
        .iter()
        .find(|c| c.property == "ORGANIZER" && Some(c.line) == first_line)
    {
        Some(c) => Some(c.new_value.clone()),
        None => old_first.clone(),
    };
    // The column holds the server's reading of the ORGANIZER (first component's); when it agreed
    // with the text it follows the text, else it is mapped on its own.
    let col = row.organizer.clone().filter(|s| !s.is_empty());
    let new_organizer = match &col {
        None => row.organizer.clone(),
        Some(c) if Some(c) == old_first.as_ref() => new_first.or(row.organizer.clone()),
        Some(c) => {
            let addr = mapping::parse_found(c);
            match resolver.resolve(&addr) {
                Some(p) => Some(p.canonical_address(opts.form, &addr)),
                None => Some(c.clone()),
            }
        }
    };
    Some(Planned {
        new_text: rw.bytes,
        new_text_md5,
        changes: rw.changes,
        new_md5,
        new_organizer,
    })
}

/// Push subscriptions whose key names the home of uid `$1` (its fourth `/` field).
pub const APN_FILTER: &str = "split_part(t.RESOURCE_KEY, '/', 4) = $1";
/// How many push subscriptions have a key naming the home of uid `$1`.
pub const APN_COUNT: &str =
    "SELECT COUNT(*) FROM APN_SUBSCRIPTIONS t WHERE split_part(t.RESOURCE_KEY, '/', 4) = $1";

/// A push key (`/CalDAV/<host>/<uid>/...`) naming the home of `old`, naming `new`'s instead;
/// `None` when it names another home.
pub fn push_key(key: &str, old: &str, new: &str) -> Option<String> {
    let mut parts: Vec<&str> = key.split('/').collect();
    if parts.len() < 4 || !parts[0].is_empty() || parts[3] != old {
        return None;
    }
    parts[3] = new;
    Some(parts.join("/"))
}

/// Notification rows whose data may name uid `$1` (then checked with [`notification_text`]).
pub fn notification_filter(data_column: &str) -> String {
    format!("strpos(lower(t.{data_column}), lower($1)) > 0")
}

/// A notification's data (XML or JSON) with every reference to the principal `old` naming `new`
/// instead: `urn:uuid:OLD`, `urn:x-uid:OLD` and `/__uids__/OLD` (followed by `/`, `<`, a quote
/// or the end), and a JSON string that is exactly `OLD` (`"owner"`, `"sharee"`). The uid is
/// matched without regard to case; `None` when nothing names `old`.
pub fn notification_text(text: &str, old: &str, new: &str) -> Option<String> {
    if old.is_empty() {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    let needle = old.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut from = 0;
    while let Some(at) = lower[from..].find(&needle) {
        let start = from + at;
        let end = start + needle.len();
        from = end;
        let before = &lower[..start];
        let after = lower[end..].chars().next();
        let href = ["urn:uuid:", "urn:x-uid:", "/__uids__/"]
            .iter()
            .any(|p| before.ends_with(p))
            && matches!(after, None | Some('/' | '<' | '"' | '\''));
        let json = before.ends_with('"') && after == Some('"');
        if href || json {
            out.push_str(&text[last..start]);
            out.push_str(new);
            last = end;
        }
    }
    if last == 0 {
        return None;
    }
    out.push_str(&text[last..]);
    Some(out)
}

/// The part of an href that names a home: `/__uids__/<uid>/`.
pub fn href_of(uid: &str) -> String {
    format!("/__uids__/{uid}/")
}

/// A group member naming a principal (not a card of the same address book), as an address.
pub fn member_address(value: &str, local_uids: &HashSet<String>) -> Option<CalAddress> {
    let addr = mapping::parse_found(value);
    let uid = match &addr {
        CalAddress::UrnUuid(g) => g.to_string(),
        CalAddress::UrnXUid(u) => u.clone(),
        _ => return None,
    };
    if local_uids.iter().any(|l| l.eq_ignore_ascii_case(&uid)) {
        return None;
    }
    Some(addr)
}

/// The new value of one member: the same form, naming the principal's current uid.
pub fn member_value(value: &str, resolver: &dyn Resolve) -> Option<String> {
    let addr = mapping::parse_found(value);
    let p: &Principal = resolver.resolve(&addr)?;
    let new = match addr {
        CalAddress::UrnXUid(_) => format!("urn:x-uid:{}", p.guid),
        _ => format!("urn:uuid:{}", p.guid),
    };
    (!new.eq_ignore_ascii_case(value)).then_some(new)
}

/// Rewrites a card's principal members; `None` when nothing changes. The card's address book is
/// read again for its local UIDs (members that are cards stay).
pub fn rewrite_card(
    tx: &mut postgres::Transaction<'_>,
    schema: &Schema,
    c: &CardRow,
    resolver: &dyn Resolve,
) -> Result<Option<(Vec<u8>, Vec<ical::Change>)>> {
    let local = local_card_uids(tx, schema, c.resource_id)?;
    let rw = vcard::rewrite(c.text.as_bytes(), &|uid| {
        let value = format!("urn:uuid:{uid}");
        member_address(&value, &local)?;
        let new = member_value(&value, resolver)?;
        vcard::member_uid(&new).map(str::to_string)
    })
    .map_err(|e| Error::runtime(format!("{}: {e}", c.label())))?;
    Ok((!rw.changes.is_empty()).then_some((rw.bytes, rw.changes)))
}

/// UIDs of the cards in the same address book as card `id`.
fn local_card_uids(
    tx: &mut postgres::Transaction<'_>,
    schema: &Schema,
    id: i64,
) -> Result<HashSet<String>> {
    let sql = if schema.addressbook_bind {
        "SELECT o.VCARD_UID FROM ADDRESSBOOK_OBJECT o WHERE o.ADDRESSBOOK_RESOURCE_ID = (SELECT ADDRESSBOOK_RESOURCE_ID FROM ADDRESSBOOK_OBJECT WHERE RESOURCE_ID = $1::bigint)"
    } else {
        "SELECT o.VCARD_UID FROM ADDRESSBOOK_OBJECT o WHERE o.ADDRESSBOOK_HOME_RESOURCE_ID = (SELECT ADDRESSBOOK_HOME_RESOURCE_ID FROM ADDRESSBOOK_OBJECT WHERE RESOURCE_ID = $1::bigint)"
    };
    let rows = tx
        .query(sql, &[&id])
        .map_err(crate::store::pg::pg_err("ADDRESSBOOK_OBJECT"))?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::push_key;

    #[test]
    fn a_push_key_follows_its_home_only() {
        assert_eq!(
            push_key("/CalDAV/cal.example.com/OLD/", "OLD", "NEW").as_deref(),
            Some("/CalDAV/cal.example.com/NEW/")
        );
        assert_eq!(
            push_key("/CardDAV/h/OLD/addressbook/", "OLD", "NEW").as_deref(),
            Some("/CardDAV/h/NEW/addressbook/")
        );
        assert_eq!(push_key("/CalDAV/h/OTHER/", "OLD", "NEW"), None);
        assert_eq!(push_key("/CalDAV/OLD/", "OLD", "NEW"), None);
        assert_eq!(push_key("CalDAV/h/OLD/", "OLD", "NEW"), None);
    }

    #[test]
    fn notifications_name_the_new_uid_in_hrefs_and_json_only_where_the_old_one_stands() {
        use super::notification_text as t;
        let xml = "<href xmlns='DAV:'>urn:uuid:old-1</href><hosturl><href xmlns='DAV:'>/calendars/__uids__/OLD-1/calendar</href></hosturl><organizer><href xmlns='DAV:'>urn:x-uid:old-1</href></organizer><uid>old-1</uid>";
        assert_eq!(
            t(xml, "OLD-1", "NEW").unwrap(),
            "<href xmlns='DAV:'>urn:uuid:NEW</href><hosturl><href xmlns='DAV:'>/calendars/__uids__/NEW/calendar</href></hosturl><organizer><href xmlns='DAV:'>urn:x-uid:NEW</href></organizer><uid>old-1</uid>"
        );
        let json =
            r#"{"owner": "OLD-1", "sharee": "OTHER", "summary": "OLD-1 shared", "uid": "xOLD-1"}"#;
        assert_eq!(
            t(json, "OLD-1", "NEW").unwrap(),
            r#"{"owner": "NEW", "sharee": "OTHER", "summary": "OLD-1 shared", "uid": "xOLD-1"}"#
        );
        assert_eq!(t("urn:uuid:OLD-10", "OLD-1", "NEW"), None);
        assert_eq!(t("nothing here", "OLD-1", "NEW"), None);
    }
}
