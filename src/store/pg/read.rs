//! Reading the store: homes, then each home's objects through a server-side cursor (a portal,
//! fetched a batch at a time), so memory stays bounded whatever the size of the database. All
//! reads of a plan run in one read-only REPEATABLE READ transaction: one consistent snapshot.

use super::schema::Schema;
use crate::error::Result;
use postgres::Transaction;

/// Rows fetched per round trip.
pub const BATCH: i32 = 256;

/// A home row (CALENDAR_HOME, ADDRESSBOOK_HOME or NOTIFICATION_HOME).
#[derive(Clone, Debug)]
pub struct HomeRow {
    /// Which home table the row is from (one of [`HOME_TABLES`]).
    pub table: &'static str,
    /// RESOURCE_ID of the home.
    pub id: i64,
    /// OWNER_UID: the owner's GUID (or uid) as the server stores it.
    pub owner_uid: String,
    /// STATUS (schema 66; 0 = normal), else 0.
    pub status: i32,
}

/// A calendar object, with where it lives.
#[derive(Clone, Debug)]
pub struct ObjectRow {
    /// CALENDAR_OBJECT.RESOURCE_ID.
    pub resource_id: i64,
    /// CALENDAR_RESOURCE_ID of the calendar holding it.
    pub calendar_id: i64,
    /// Owner uid of the home the calendar belongs to (`None`: no home owns it).
    pub owner: Option<String>,
    /// The calendar's bind name in its owner's home (`(calendar N)` when no home owns it).
    pub collection: String,
    /// RESOURCE_NAME: the object's file name (e.g. `<uid>.ics`).
    pub name: String,
    /// ICALENDAR_TEXT: the object's iCalendar data.
    pub text: String,
    /// MD5 column as stored (the server's ETag source).
    pub md5: String,
    /// ORGANIZER column; None when NULL.
    pub organizer: Option<String>,
    /// SCHEDULE_TAG column; None when NULL.
    pub schedule_tag: Option<String>,
    /// md5 of the text, computed by the server (`md5(ICALENDAR_TEXT)`).
    pub text_md5: String,
}

impl ObjectRow {
    /// `owner/collection/name`, the way the file store names a resource.
    pub fn label(&self) -> String {
        format!(
            "{}/{}/{}",
            self.owner.as_deref().unwrap_or("(no home)"),
            self.collection,
            self.name
        )
    }
}

/// An address-book card.
#[derive(Clone, Debug)]
pub struct CardRow {
    /// ADDRESSBOOK_OBJECT.RESOURCE_ID.
    pub resource_id: i64,
    /// OWNER_UID of the home the address book belongs to.
    pub owner: String,
    /// RESOURCE_NAME: the card's file name (e.g. `<uid>.vcf`).
    pub name: String,
    /// VCARD_TEXT: the card's vCard data.
    pub text: String,
    /// MD5 column as stored.
    pub md5: String,
}

impl CardRow {
    /// `owner/addressbook/name`, the way the file store names a card.
    pub fn label(&self) -> String {
        format!("{}/addressbook/{}", self.owner, self.name)
    }
}

/// The home tables, each read by [`HomeRow`].
pub const HOME_TABLES: [&str; 3] = ["CALENDAR_HOME", "ADDRESSBOOK_HOME", "NOTIFICATION_HOME"];

fn err(what: &str) -> impl Fn(postgres::Error) -> crate::error::Error + '_ {
    super::pg_err(what)
}

/// Every home of one table, by RESOURCE_ID.
pub fn homes(
    tx: &mut Transaction<'_>,
    schema: &Schema,
    table: &'static str,
) -> Result<Vec<HomeRow>> {
    let status = if schema.home_status { "STATUS" } else { "0" };
    let rows = tx
        .query(
            &format!("SELECT RESOURCE_ID::bigint, OWNER_UID, {status}::int4 FROM {table} ORDER BY RESOURCE_ID"),
            &[],
        )
        .map_err(err(table))?;
    Ok(rows
        .iter()
        .map(|r| HomeRow {
            table,
            id: r.get(0),
            owner_uid: r.get(1),
            status: r.get(2),
        })
        .collect())
}

const OBJECT_COLUMNS: &str = "o.RESOURCE_ID::bigint, o.CALENDAR_RESOURCE_ID::bigint, h.OWNER_UID, b.CALENDAR_RESOURCE_NAME, o.RESOURCE_NAME, o.ICALENDAR_TEXT, o.MD5, o.ORGANIZER, o.SCHEDULE_TAG, md5(o.ICALENDAR_TEXT)";

fn object(r: &postgres::Row) -> ObjectRow {
    ObjectRow {
        resource_id: r.get(0),
        calendar_id: r.get(1),
        owner: r.get(2),
        collection: r
            .get::<_, Option<String>>(3)
            .unwrap_or_else(|| format!("(calendar {})", r.get::<_, i64>(1))),
        name: r.get(4),
        text: r.get(5),
        md5: r.get::<_, String>(6).trim().to_string(),
        organizer: r.get(7),
        schedule_tag: r.get(8),
        text_md5: r.get(9),
    }
}

/// Streams the calendar objects of one home's own calendars, a batch at a time.
pub fn home_objects(
    tx: &mut Transaction<'_>,
    home_id: i64,
    mut each: impl FnMut(Vec<ObjectRow>) -> Result<()>,
) -> Result<()> {
    let sql = format!(
        "SELECT {OBJECT_COLUMNS} FROM CALENDAR_BIND b
           JOIN CALENDAR_HOME h ON h.RESOURCE_ID = b.CALENDAR_HOME_RESOURCE_ID
           JOIN CALENDAR_OBJECT o ON o.CALENDAR_RESOURCE_ID = b.CALENDAR_RESOURCE_ID
         WHERE b.CALENDAR_HOME_RESOURCE_ID = $1::bigint AND b.BIND_MODE = 0"
    );
    stream(tx, &sql, &[&home_id], object, &mut each)
}

/// Streams the calendar objects of calendars no home owns (reported, and rewritten like others).
pub fn orphan_objects(
    tx: &mut Transaction<'_>,
    mut each: impl FnMut(Vec<ObjectRow>) -> Result<()>,
) -> Result<()> {
    let sql = "SELECT o.RESOURCE_ID::bigint, o.CALENDAR_RESOURCE_ID::bigint, NULL::varchar, NULL::varchar, o.RESOURCE_NAME, o.ICALENDAR_TEXT, o.MD5, o.ORGANIZER, o.SCHEDULE_TAG, md5(o.ICALENDAR_TEXT)
               FROM CALENDAR_OBJECT o
               WHERE NOT EXISTS (SELECT 1 FROM CALENDAR_BIND b WHERE b.CALENDAR_RESOURCE_ID = o.CALENDAR_RESOURCE_ID AND b.BIND_MODE = 0)";
    stream(tx, sql, &[], object, &mut each)
}

/// Calendar objects by RESOURCE_ID (any order), with `FOR UPDATE` when `lock`.
pub fn objects_by_id(tx: &mut Transaction<'_>, ids: &[i64], lock: bool) -> Result<Vec<ObjectRow>> {
    let sql = format!(
        "SELECT {OBJECT_COLUMNS} FROM CALENDAR_OBJECT o
           LEFT JOIN CALENDAR_BIND b ON b.CALENDAR_RESOURCE_ID = o.CALENDAR_RESOURCE_ID AND b.BIND_MODE = 0
           LEFT JOIN CALENDAR_HOME h ON h.RESOURCE_ID = b.CALENDAR_HOME_RESOURCE_ID
         WHERE o.RESOURCE_ID = ANY($1::bigint[]){}",
        if lock { " FOR UPDATE OF o" } else { "" }
    );
    let ids = ids.to_vec();
    let rows = tx.query(&sql, &[&ids]).map_err(err("CALENDAR_OBJECT"))?;
    Ok(rows.iter().map(object).collect())
}

fn card_sql(schema: &Schema, filter: &str) -> String {
    if schema.addressbook_bind {
        format!(
            "SELECT o.RESOURCE_ID::bigint, h.OWNER_UID, o.RESOURCE_NAME, o.VCARD_TEXT, o.MD5 FROM ADDRESSBOOK_OBJECT o
               JOIN ADDRESSBOOK_BIND b ON b.ADDRESSBOOK_RESOURCE_ID = o.ADDRESSBOOK_RESOURCE_ID AND b.BIND_MODE = 0
               JOIN ADDRESSBOOK_HOME h ON h.RESOURCE_ID = b.ADDRESSBOOK_HOME_RESOURCE_ID
             WHERE {filter}"
        )
    } else {
        format!(
            "SELECT o.RESOURCE_ID::bigint, h.OWNER_UID, o.RESOURCE_NAME, o.VCARD_TEXT, o.MD5 FROM ADDRESSBOOK_OBJECT o
               JOIN ADDRESSBOOK_HOME h ON h.RESOURCE_ID = o.ADDRESSBOOK_HOME_RESOURCE_ID
             WHERE {filter}"
        )
    }
}

fn card(r: &postgres::Row) -> CardRow {
    CardRow {
        resource_id: r.get(0),
        owner: r.get(1),
        name: r.get(2),
        text: r.get(3),
        md5: r.get::<_, String>(4).trim().to_string(),
    }
}

/// Streams the cards of one address-book home.
pub fn home_cards(
    tx: &mut Transaction<'_>,
    schema: &Schema,
    home_id: i64,
    mut each: impl FnMut(Vec<CardRow>) -> Result<()>,
) -> Result<()> {
    stream(
        tx,
        &card_sql(schema, "h.RESOURCE_ID = $1::bigint"),
        &[&home_id],
        card,
        &mut each,
    )
}

/// Cards by RESOURCE_ID, with `FOR UPDATE` when `lock`.
pub fn cards_by_id(
    tx: &mut Transaction<'_>,
    schema: &Schema,
    ids: &[i64],
    lock: bool,
) -> Result<Vec<CardRow>> {
    let mut sql = card_sql(schema, "o.RESOURCE_ID = ANY($1::bigint[])");
    if lock {
        sql.push_str(" FOR UPDATE OF o");
    }
    let ids = ids.to_vec();
    let rows = tx.query(&sql, &[&ids]).map_err(err("ADDRESSBOOK_OBJECT"))?;
    Ok(rows.iter().map(card).collect())
}

/// Runs a query through a portal and hands its rows over a batch at a time.
fn stream<T>(
    tx: &mut Transaction<'_>,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
    convert: fn(&postgres::Row) -> T,
    each: &mut dyn FnMut(Vec<T>) -> Result<()>,
) -> Result<()> {
    let portal = tx.bind(sql, params).map_err(err("reading the store"))?;
    loop {
        let rows = tx
            .query_portal(&portal, BATCH)
            .map_err(err("reading the store"))?;
        if rows.is_empty() {
            return Ok(());
        }
        let n = rows.len();
        each(rows.iter().map(convert).collect())?;
        if (n as i32) < BATCH {
            return Ok(());
        }
    }
}

/// A calendar object as `scan` reads it.
pub struct ObjectText {
    /// RESOURCE_ID.
    pub id: i64,
    /// CALENDAR_RESOURCE_ID.
    pub calendar_id: i64,
    /// RESOURCE_NAME.
    pub name: String,
    /// ICALENDAR_TEXT.
    pub text: String,
}

/// Streams every calendar object, in RESOURCE_ID order (`scan`).
pub fn all_objects(
    tx: &mut Transaction<'_>,
    each: &mut dyn FnMut(Vec<ObjectText>) -> Result<()>,
) -> Result<()> {
    stream(
        tx,
        "SELECT RESOURCE_ID::bigint, CALENDAR_RESOURCE_ID::bigint, RESOURCE_NAME, ICALENDAR_TEXT FROM CALENDAR_OBJECT ORDER BY RESOURCE_ID",
        &[],
        |r| ObjectText {
            id: r.get(0),
            calendar_id: r.get(1),
            name: r.get(2),
            text: r.get(3),
        },
        each,
    )
}

/// A distinct value of a uid or address column and how many rows hold it.
#[derive(Clone, Debug)]
pub struct ValueRows {
    /// The value as stored.
    pub value: String,
    /// Rows that hold it.
    pub rows: i64,
}

/// The distinct non-empty values of `table.column` with their row counts, in value order: what
/// plan surveys and verify checks of the uid and address columns.
pub fn value_counts(
    tx: &mut Transaction<'_>,
    table: &str,
    column: &str,
) -> std::result::Result<Vec<ValueRows>, postgres::Error> {
    let sql = format!(
        "SELECT {column}, COUNT(*) FROM {table} WHERE {column} IS NOT NULL AND {column} <> '' \
         GROUP BY {column} ORDER BY {column}"
    );
    Ok(tx
        .query(&sql, &[])?
        .iter()
        .map(|r| ValueRows {
            value: r.get(0),
            rows: r.get(1),
        })
        .collect())
}
