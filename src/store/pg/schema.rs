//! Which CalendarServer schema the database holds (`CALENDARSERVER` row `VERSION`), and what that
//! version keeps where. Only versions whose real schema the tests load are supported; any other is
//! refused, naming it, before anything else is read.
//!
//! Facts per version (from the schemas and the store code of each release):
//! - the ETag in `CALENDAR_OBJECT.MD5` is md5 of `ICALENDAR_TEXT` in 3.x (schema 6); from 4.1
//!   (schema 9) it is md5 of the text followed by `SCHEDULE_TAG` (when set);
//! - `CALENDAR_OBJECT.DATAVERSION` (schema 66) says whether the server has normalised the
//!   object's calendar user addresses (1) or will on first read (0);
//! - collection metadata (`MODIFIED`, bumped on every change) is `CALENDAR_METADATA` from
//!   schema 28, `CALENDAR` in 3.x;
//! - address books are collections bound to the home (`ADDRESSBOOK_BIND`) in 3.x; from 5.x the
//!   home is the address book (`ADDRESSBOOK_OBJECT.ADDRESSBOOK_HOME_RESOURCE_ID`);
//! - delegates live in the store (`DELEGATES`, `DELEGATE_GROUPS`) from 6.x; before, in
//!   `proxies.sqlite` in the data root;
//! - homes carry a `STATUS` (normal, external, purging, …) in schema 66, unique with `OWNER_UID`.

use crate::error::{Error, Result};

/// The schema versions this build reads and writes, with the release they come from.
pub const SUPPORTED: &[(u32, &str)] = &[
    (6, "CalendarServer 3.3, Mac OS X Server 10.7"),
    (28, "CalendarServer 5.2, OS X Server 3"),
    (66, "CalendarServer 9.x, macOS Server 5.x"),
];

/// How one uid-bearing column is to be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// A bare principal uid (the GUID for Open Directory): OWNER_UID, VIEWER_UID, DELEGATE, ...
    Uid,
    /// A calendar user address (`urn:uuid:`, `urn:x-uid:`, `mailto:`, principal URL).
    Address,
}

/// One column that names principals, outside calendar and address-book text.
#[derive(Clone, Copy, Debug)]
pub struct ValueColumn {
    /// The table holding the column.
    pub table: &'static str,
    /// The column's name.
    pub column: &'static str,
    /// What the column holds: a bare uid or a calendar user address.
    pub kind: ValueKind,
}

/// What a schema version has.
#[derive(Clone, Debug)]
pub struct Schema {
    /// The `CALENDARSERVER` row's `VERSION` value.
    pub version: u32,
    /// The release that schema comes from (e.g. `CalendarServer 5.2, OS X Server 3`).
    pub release: &'static str,
    /// MD5 = md5(text + SCHEDULE_TAG) (4.1+), else md5(text).
    pub md5_with_schedule_tag: bool,
    /// `CALENDAR_OBJECT.DATAVERSION` exists (schema 66).
    pub object_dataversion: bool,
    /// Homes carry a `STATUS` column (schema 66).
    pub home_status: bool,
    /// `CALENDAR_OBJECT_REVISIONS` has a `MODIFIED` column to bump (schema 66).
    pub revisions_modified: bool,
    /// Collection metadata table holding MODIFIED: CALENDAR_METADATA (5.x+) or CALENDAR (3.x).
    pub calendar_meta_table: &'static str,
    /// Address books bound to homes (3.x) rather than the home being the address book.
    pub addressbook_bind: bool,
    /// Delegates live in the store's `DELEGATES` / `DELEGATE_GROUPS` tables (schema 66), not in `proxies.sqlite`.
    pub delegates_table: bool,
    /// The notification payload column (XML_DATA before 9.x, NOTIFICATION_DATA after).
    pub notification_data: &'static str,
    /// Uid and address columns to re-key, beyond homes and object text.
    pub values: Vec<ValueColumn>,
}

impl Schema {
    fn for_version(version: u32) -> Option<Schema> {
        let release = SUPPORTED.iter().find(|(v, _)| *v == version)?.1;
        use ValueKind::*;
        let col = |table, column, kind| ValueColumn {
            table,
            column,
            kind,
        };
        let mut values = vec![
            col("RESOURCE_PROPERTY", "VIEWER_UID", Uid),
            col("APN_SUBSCRIPTIONS", "SUBSCRIBER_GUID", Uid),
        ];
        match version {
            6 => {
                values.push(col("TRANSPARENCY", "USER_ID", Uid));
                values.push(col("INVITE", "RECIPIENT_ADDRESS", Address));
            }
            28 => {
                values.push(col("TRANSPARENCY", "USER_ID", Uid));
                values.push(col("IMIP_TOKENS", "ORGANIZER", Address));
                values.push(col("IMIP_TOKENS", "ATTENDEE", Address));
                values.push(col("ABO_FOREIGN_MEMBERS", "MEMBER_ADDRESS", Address));
            }
            _ => {
                values.extend([
                    col("PERUSER", "USER_ID", Uid),
                    col("IMIP_TOKENS", "ORGANIZER", Address),
                    col("IMIP_TOKENS", "ATTENDEE", Address),
                    col("ABO_FOREIGN_MEMBERS", "MEMBER_ADDRESS", Address),
                    col("DELEGATES", "DELEGATOR", Uid),
                    col("DELEGATES", "DELEGATE", Uid),
                    col("DELEGATE_GROUPS", "DELEGATOR", Uid),
                    col("EXTERNAL_DELEGATE_GROUPS", "DELEGATOR", Uid),
                    col("EXTERNAL_DELEGATE_GROUPS", "GROUP_UID_READ", Uid),
                    col("EXTERNAL_DELEGATE_GROUPS", "GROUP_UID_WRITE", Uid),
                    col("GROUPS", "GROUP_UID", Uid),
                    col("GROUP_MEMBERSHIP", "MEMBER_UID", Uid),
                    col("SCHEDULE_REFRESH_ATTENDEES", "ATTENDEE", Address),
                ]);
            }
        }
        Some(Schema {
            version,
            release,
            md5_with_schedule_tag: version >= 9,
            object_dataversion: version >= 66,
            home_status: version >= 66,
            revisions_modified: version >= 66,
            calendar_meta_table: if version >= 28 {
                "CALENDAR_METADATA"
            } else {
                "CALENDAR"
            },
            addressbook_bind: version < 28,
            delegates_table: version >= 66,
            notification_data: if version >= 66 {
                "NOTIFICATION_DATA"
            } else {
                "XML_DATA"
            },
            values,
        })
    }

    /// The ETag CalendarServer stores for a calendar object's text.
    pub fn calendar_md5(&self, text: &[u8], schedule_tag: Option<&str>) -> String {
        use md5::{Digest, Md5};
        let mut h = Md5::new();
        h.update(text);
        if self.md5_with_schedule_tag {
            if let Some(t) = schedule_tag {
                h.update(t.as_bytes());
            }
        }
        hex::encode(h.finalize())
    }
}

/// md5 hex of some bytes (what PostgreSQL's `md5(text)` gives for UTF-8 text).
pub fn md5_hex(bytes: &[u8]) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(bytes))
}

/// Reads the schema version and checks the database is one we can work on.
pub fn detect(client: &mut postgres::Client, label: &str) -> Result<Schema> {
    let encoding: String = client
        .query_one("SHOW server_encoding", &[])
        .map(|r| r.get(0))
        .map_err(|e| Error::runtime(format!("{label}: {}", super::connect::describe(&e))))?;
    let row = match client.query_opt(
        "SELECT VALUE FROM CALENDARSERVER WHERE NAME = 'VERSION'",
        &[],
    ) {
        Ok(r) => r,
        Err(e) if e.code().map(|c| c.code()) == Some("42P01") => {
            return Err(Error::usage(format!(
                "{label} holds no CalendarServer store: there is no CALENDARSERVER table (is [store] dsn the calendar server's database?)"
            )))
        }
        Err(e) => {
            return Err(Error::runtime(format!(
                "{label}: cannot read the schema version: {}",
                super::connect::describe(&e)
            )))
        }
    };
    let Some(row) = row else {
        return Err(Error::usage(format!(
            "{label}: table CALENDARSERVER has no VERSION row; not a CalendarServer store this tool knows"
        )));
    };
    let text: Option<String> = row.get(0);
    let text = text.unwrap_or_default();
    let supported = SUPPORTED
        .iter()
        .map(|(v, r)| format!("{v} ({r})"))
        .collect::<Vec<_>>()
        .join(", ");
    let version: u32 = text.trim().parse().map_err(|_| {
        Error::usage(format!(
            "{label}: CalendarServer schema version `{text}` is not a number; supported versions: {supported}"
        ))
    })?;
    let schema = Schema::for_version(version).ok_or_else(|| {
        Error::usage(format!(
            "{label}: CalendarServer schema version {version} is not supported by this build (supported: {supported}); nothing was read or changed"
        ))
    })?;
    if !encoding.eq_ignore_ascii_case("UTF8") {
        return Err(Error::usage(format!(
            "{label}: database encoding is {encoding}; CalendarServer's stores are UTF8 and this tool only rewrites UTF8 databases"
        )));
    }
    // The tables this version must have (a database that only claims the version is refused).
    let mut needed = vec![
        "CALENDAR_HOME",
        "CALENDAR_BIND",
        "CALENDAR_OBJECT",
        "CALENDAR_OBJECT_REVISIONS",
        "ADDRESSBOOK_HOME",
        "ADDRESSBOOK_OBJECT",
        "NOTIFICATION_HOME",
        "RESOURCE_PROPERTY",
        schema.calendar_meta_table,
    ];
    needed.extend(schema.values.iter().map(|v| v.table));
    let present: Vec<String> = client
        .query(
            "SELECT upper(table_name) FROM information_schema.tables WHERE table_schema = current_schema()",
            &[],
        )
        .map_err(|e| Error::runtime(format!("{label}: {}", super::connect::describe(&e))))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|t| !present.iter().any(|p| p == t))
        .collect();
    if !missing.is_empty() {
        return Err(Error::usage(format!(
            "{label}: says schema version {version} but lacks table(s) {}; refusing to work on it",
            missing.join(", ")
        )));
    }
    Ok(schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_rule_per_version() {
        let v6 = Schema::for_version(6).unwrap();
        let v28 = Schema::for_version(28).unwrap();
        assert_eq!(v6.calendar_md5(b"abc", Some("tag")), md5_hex(b"abc"));
        assert_eq!(v28.calendar_md5(b"abc", Some("tag")), md5_hex(b"abctag"));
        assert_eq!(v28.calendar_md5(b"abc", None), md5_hex(b"abc"));
        assert!(Schema::for_version(12).is_none());
    }
}
