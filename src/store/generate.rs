//! Builds test stores that look like a real Mac OS X Server 10.6 (CalendarServer 2.x) store, or a
//! plain folder tree of `.ics` files: deterministic for a seed, fast (homes are written in
//! parallel), and with bounded memory whatever the number of resources.
//!
//! ```no_run
//! use principal_reconciler::store::generate::StoreBuilder;
//! let store = StoreBuilder::new("/tmp/store").homes(20).resources(1000).owner(501, 20).build().unwrap();
//! println!("{} resources under {}", store.resources, store.root.display());
//! ```

use super::xattrs::{self, attr_name, attr_name_short, encode_value};
use super::HomeLayout;
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// A small, seeded pseudo-random generator (SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence is fixed by `seed` (the same seed gives the same store).
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
    /// An upper-case RFC 4122-shaped UUID.
    pub fn uuid(&mut self) -> String {
        let a = self.next_u64();
        let b = self.next_u64();
        format!(
            "{:08X}-{:04X}-4{:03X}-{:04X}-{:012X}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (b >> 48) & 0x3fff,
            b & 0xffff_ffff_ffff
        )
    }
}

/// A directory person the generated events refer to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Person {
    /// The person's GUID, upper-case.
    pub guid: String,
    /// Short name (login), e.g. `user07`.
    pub short_name: String,
    /// Full name shown in events' CN parameters.
    pub full_name: String,
    /// E-mail address, `<short>@<mail domain>`.
    pub email: String,
}

/// A generated calendar home.
#[derive(Clone, Debug)]
pub struct GeneratedHome {
    /// Folder layout of the home (hashed, flat-uids or users).
    pub layout: HomeLayout,
    /// GUID (hashed, flat-uids) or short name (users).
    pub id: String,
    /// Full path of the home folder.
    pub path: PathBuf,
}

/// What [`StoreBuilder::build`] made.
#[derive(Clone, Debug)]
pub struct GeneratedStore {
    /// The store root to configure as `[store] path` (the `Documents` folder, or the .ics folder).
    pub root: PathBuf,
    /// Calendar homes written.
    pub homes: Vec<GeneratedHome>,
    /// The people the events name, to build a matching directory from.
    pub people: Vec<Person>,
    /// Well-formed resources written (malformed ones not included).
    pub resources: u64,
    /// Truncated resources written (one per malformed resource asked for).
    pub malformed: Vec<PathBuf>,
    /// Symbolic links written inside the store (to be refused, never followed).
    pub symlinks: Vec<PathBuf>,
    /// Entries named like resources that cannot be read as one (a folder named `x.ics`).
    pub unreadable: Vec<PathBuf>,
}

/// Builder of a test store.
#[derive(Clone, Debug)]
pub struct StoreBuilder {
    root: PathBuf,
    seed: u64,
    homes: usize,
    guids: Vec<String>,
    resources: usize,
    owner: Option<(u32, u32)>,
    prefix: String,
    domain: String,
    flat_uids_homes: usize,
    users_homes: usize,
    malformed: usize,
    symlinks: bool,
    unreadable: bool,
    ics_dir: bool,
    xattrs: bool,
    style: PropertyStyle,
}

/// Where a generated home's resource count goes.
const TIMEZONE: &str = "BEGIN:VTIMEZONE\r\nTZID:Europe/Paris\r\nBEGIN:DAYLIGHT\r\nTZOFFSETFROM:+0100\r\nRRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU\r\nDTSTART:19810329T020000\r\nTZNAME:CEST\r\nTZOFFSETTO:+0200\r\nEND:DAYLIGHT\r\nBEGIN:STANDARD\r\nTZOFFSETFROM:+0200\r\nRRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU\r\nDTSTART:19961027T030000\r\nTZNAME:CET\r\nTZOFFSETTO:+0100\r\nEND:STANDARD\r\nEND:VTIMEZONE\r\n";

const FIRST: [&str; 12] = [
    "Anna",
    "Bruno",
    "Chloé",
    "David",
    "Émilie",
    "François",
    "Greta",
    "Hugo",
    "Inès",
    "Jürgen",
    "Katarzyna",
    "Léon",
];
const LAST: [&str; 10] = [
    "Martin", "Bernard", "Dubois", "Müller", "Nowak", "Rossi", "García", "O'Brien", "Lefèvre",
    "Smith",
];
const SUMMARIES: [&str; 8] = [
    "Weekly staff meeting",
    "Budget review",
    "Réunion de service",
    "1:1",
    "Project kick-off, room 2.14",
    "Lunch",
    "Conference call with the partners; agenda attached",
    "Planning Q3 — all hands",
];

impl StoreBuilder {
    /// A CalendarServer 2.x store (`root` is the `Documents` folder; `calendars/` goes inside).
    pub fn new(root: impl Into<PathBuf>) -> StoreBuilder {
        StoreBuilder {
            root: root.into(),
            seed: 1,
            homes: 10,
            guids: Vec::new(),
            resources: 100,
            owner: None,
            prefix: xattrs::platform_prefix().to_string(),
            domain: "example.com".into(),
            flat_uids_homes: 0,
            users_homes: 0,
            malformed: 0,
            symlinks: false,
            unreadable: false,
            ics_dir: false,
            xattrs: true,
            style: PropertyStyle::Cs25,
        }
    }

    /// A plain folder tree of `.ics` files (`<root>/<short>/<calendar>/*.ics`), no attributes.
    pub fn ics_dir(root: impl Into<PathBuf>) -> StoreBuilder {
        let mut b = StoreBuilder::new(root);
        b.ics_dir = true;
        b.xattrs = false;
        b
    }

    /// Seed of the pseudo-random choices (the same seed gives the same store).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Number of hashed (2.x) homes, with generated GUIDs.
    pub fn homes(mut self, n: usize) -> Self {
        self.homes = n.max(1);
        self
    }
    /// Hashed homes for exactly these GUIDs (overrides [`homes`](Self::homes)).
    pub fn guids<S: AsRef<str>>(mut self, guids: &[S]) -> Self {
        self.guids = guids
            .iter()
            .map(|g| g.as_ref().to_ascii_uppercase())
            .collect();
        self
    }
    /// Total number of well-formed resources, spread over the homes.
    pub fn resources(mut self, n: usize) -> Self {
        self.resources = n;
        self
    }
    /// Owner and group of every file and folder written.
    pub fn owner(mut self, uid: u32, gid: u32) -> Self {
        self.owner = Some((uid, gid));
        self
    }
    /// Extended attribute prefix written on files (`user.` or `WebDAV:`).
    pub fn xattr_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }
    /// How the WebDAV properties are written (default: as CalendarServer 2.5 writes them).
    pub fn property_style(mut self, style: PropertyStyle) -> Self {
        self.style = style;
        self
    }
    /// Write no extended attributes at all.
    pub fn without_xattrs(mut self) -> Self {
        self.xattrs = false;
        self
    }
    /// Mail domain of the generated people's addresses.
    pub fn mail_domain(mut self, d: &str) -> Self {
        self.domain = d.to_string();
        self
    }
    /// Add `n` homes in the 1.x `calendars/__uids__/<GUID>/` layout.
    pub fn flat_uids_homes(mut self, n: usize) -> Self {
        self.flat_uids_homes = n;
        self
    }
    /// Add `n` homes in the 1.x `calendars/users/<short>/` layout.
    pub fn users_homes(mut self, n: usize) -> Self {
        self.users_homes = n;
        self
    }
    /// Add `n` malformed resources (truncated calendar objects) to the first home's calendar.
    pub fn malformed(mut self, n: usize) -> Self {
        self.malformed = n;
        self
    }
    /// Add symlinks: a resource pointing out of the store, and a collection pointing to `/`.
    pub fn symlinks(mut self) -> Self {
        self.symlinks = true;
        self
    }
    /// Add a folder named `broken.ics` where a resource would be.
    pub fn unreadable(mut self) -> Self {
        self.unreadable = true;
        self
    }

    fn people(&self) -> Vec<Person> {
        let mut rng = Rng::new(self.seed);
        let n = if self.guids.is_empty() {
            self.homes
        } else {
            self.guids.len()
        } + self.flat_uids_homes
            + self.users_homes;
        (0..n)
            .map(|i| {
                let guid = self.guids.get(i).cloned().unwrap_or_else(|| rng.uuid());
                let first = FIRST[i % FIRST.len()];
                let last = LAST[(i / FIRST.len()) % LAST.len()];
                Person {
                    guid,
                    short_name: format!("user{i:02}"),
                    full_name: format!("{first} {last}"),
                    email: format!("user{i:02}@{}", self.domain),
                }
            })
            .collect()
    }

    /// Writes the store.
    pub fn build(self) -> Result<GeneratedStore> {
        let people = self.people();
        let homes = self.place_homes(&people);
        fs::create_dir_all(&self.root).map_err(|e| Error::io("cannot create", &self.root, e))?;
        let per_home = self.resources / homes.len();
        let extra = self.resources % homes.len();
        homes
            .par_iter()
            .enumerate()
            .map(|(i, h)| self.write_home(i, h, &people, per_home + usize::from(i < extra)))
            .collect::<Result<Vec<()>>>()?;
        let mut out = GeneratedStore {
            root: self.root.clone(),
            homes,
            people,
            resources: self.resources as u64,
            malformed: Vec::new(),
            symlinks: Vec::new(),
            unreadable: Vec::new(),
        };
        self.write_damage(&mut out)?;
        self.chown_folders(&out)?;
        Ok(out)
    }

    /// Where each person's home goes: hashed homes first, then flat `__uids__`, then `users`
    /// (or all by short name in an ics-dir tree).
    fn place_homes(&self, people: &[Person]) -> Vec<GeneratedHome> {
        let hashed = if self.guids.is_empty() {
            self.homes
        } else {
            self.guids.len()
        };
        let mut homes = Vec::new();
        let cal = self.root.join("calendars");
        for (i, p) in people.iter().enumerate() {
            let (layout, id, path) = if self.ics_dir {
                (
                    HomeLayout::Users,
                    p.short_name.clone(),
                    self.root.join(&p.short_name),
                )
            } else if i < hashed {
                (
                    HomeLayout::Hashed,
                    p.guid.clone(),
                    cal.join("__uids__")
                        .join(&p.guid[0..2])
                        .join(&p.guid[2..4])
                        .join(&p.guid),
                )
            } else if i < hashed + self.flat_uids_homes {
                (
                    HomeLayout::FlatUids,
                    p.guid.clone(),
                    cal.join("__uids__").join(&p.guid),
                )
            } else {
                (
                    HomeLayout::Users,
                    p.short_name.clone(),
                    cal.join("users").join(&p.short_name),
                )
            };
            homes.push(GeneratedHome { layout, id, path });
        }
        homes
    }

    /// The malformed, symlinked and unreadable entries asked for, in the first home's calendar.
    fn write_damage(&self, out: &mut GeneratedStore) -> Result<()> {
        let first_cal = out.homes[0].path.join("calendar");
        for i in 0..self.malformed {
            let p = first_cal.join(format!("malformed-{i}.ics"));
            let text = format!("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:malformed-{i}\r\nDTSTART:20100101T100000Z\r\n");
            self.write_file(&p, text.as_bytes(), self.style(&mut Rng::new(i as u64)))?;
            out.malformed.push(p);
        }
        if self.symlinks {
            let p = first_cal.join("outside.ics");
            std::os::unix::fs::symlink("/etc/hostname", &p)
                .map_err(|e| Error::io("cannot create symlink", &p, e))?;
            out.symlinks.push(p);
            let d = out.homes[0].path.join("linked");
            std::os::unix::fs::symlink("/", &d)
                .map_err(|e| Error::io("cannot create symlink", &d, e))?;
            out.symlinks.push(d);
        }
        if self.unreadable {
            let p = first_cal.join("broken.ics");
            fs::create_dir(&p).map_err(|e| Error::io("cannot create", &p, e))?;
            self.chown(&p)?;
            out.unreadable.push(p);
        }
        Ok(())
    }

    /// Gives the folders above the homes the store's owner.
    fn chown_folders(&self, out: &GeneratedStore) -> Result<()> {
        let cal = self.root.join("calendars");
        if !self.ics_dir {
            for d in [
                self.root.clone(),
                cal.clone(),
                cal.join("__uids__"),
                cal.join("users"),
            ] {
                if d.exists() {
                    self.chown(&d)?;
                }
            }
            for h in &out.homes {
                if h.layout == HomeLayout::Hashed {
                    let l2 = h.path.parent().unwrap_or(&h.path);
                    self.chown(l2)?;
                    self.chown(l2.parent().unwrap_or(l2))?;
                }
            }
        } else {
            self.chown(&self.root)?;
        }
        Ok(())
    }

    fn chown(&self, p: &Path) -> Result<()> {
        if let Some((u, g)) = self.owner {
            std::os::unix::fs::lchown(p, Some(u), Some(g))
                .map_err(|e| Error::io("cannot chown", p, e))?;
        }
        Ok(())
    }

    fn mkdir(&self, p: &Path) -> Result<()> {
        fs::create_dir_all(p).map_err(|e| Error::io("cannot create", p, e))?;
        self.chown(p)
    }

    /// The style of one resource or collection (`Mixed` decides by `rng`).
    fn style(&self, rng: &mut Rng) -> PropertyStyle {
        match self.style {
            PropertyStyle::Mixed if rng.chance(50) => PropertyStyle::Cs33,
            PropertyStyle::Mixed => PropertyStyle::Cs25,
            s => s,
        }
    }

    /// Sets a property whose value is the XML document `xml`, compressed, named as `style` names it.
    fn set(&self, p: &Path, style: PropertyStyle, property: &str, xml: &str) -> Result<()> {
        if self.xattrs {
            let name = match style {
                PropertyStyle::Cs33 => attr_name_short(&self.prefix, property),
                _ => attr_name(&self.prefix, property),
            };
            xattr::set(p, &name, &encode_value(xml.as_bytes()))
                .map_err(|e| Error::io(&format!("cannot set {name} on"), p, e))?;
        }
        Ok(())
    }

    fn write_file(&self, p: &Path, bytes: &[u8], style: PropertyStyle) -> Result<()> {
        fs::write(p, bytes).map_err(|e| Error::io("cannot write", p, e))?;
        let md5 = super::md5_hex(bytes);
        let prop = xattrs::getcontentmd5();
        self.set(p, style, &prop, &text_xml(style, &prop, &md5))?;
        self.chown(p)
    }

    fn collection(
        &self,
        dir: &Path,
        kind: Option<(&str, &str)>,
        rng: &mut Rng,
    ) -> Result<PropertyStyle> {
        self.mkdir(dir)?;
        let style = self.style(rng);
        let mut types = vec![("DAV:", "collection", None)];
        if let Some((ns, name)) = kind {
            types.push((ns, name, None));
        }
        self.set(
            dir,
            style,
            "{DAV:}resourcetype",
            &children_xml(style, "{DAV:}resourcetype", &types),
        )?;
        let ctag = match style {
            // 2.x: the time of the change; 3.x: a UUID and a counter.
            PropertyStyle::Cs33 => format!("{}#{}", rng.uuid().to_lowercase(), rng.below(50)),
            _ => format!(
                "2010-0{}-1{} 10:{:02}:{:02}.{:06}",
                1 + rng.below(9),
                rng.below(10),
                rng.below(60),
                rng.below(60),
                rng.below(1_000_000)
            ),
        };
        let prop = xattrs::getctag();
        self.set(dir, style, &prop, &text_xml(style, &prop, &ctag))?;
        if !self.ics_dir {
            // A few bytes standing for the SQLite index the server rebuilds at will.
            let db = dir.join(".db.sqlite");
            fs::write(&db, b"SQLite format 3\0principal-reconciler test index\n")
                .map_err(|e| Error::io("cannot write", &db, e))?;
            self.chown(&db)?;
        }
        Ok(style)
    }

    fn write_home(
        &self,
        index: usize,
        home: &GeneratedHome,
        people: &[Person],
        count: usize,
    ) -> Result<()> {
        let mut rng = Rng::new(
            self.seed
                .wrapping_mul(1_000_003)
                .wrapping_add(index as u64 + 1),
        );
        let me = &people[index];
        self.mkdir(&home.path)?;
        let caldav = xattrs::CALDAV_NS;
        let calendar = home.path.join("calendar");
        self.collection(&calendar, Some((caldav, "calendar")), &mut rng)?;
        let mut second = None;
        if !self.ics_dir {
            let inbox = home.path.join("inbox");
            let style = self.collection(&inbox, Some((caldav, "schedule-inbox")), &mut rng)?;
            let fb = format!("{{{caldav}}}calendar-free-busy-set");
            let href = format!("/calendars/__uids__/{}/calendar/", me.guid);
            self.set(
                &inbox,
                style,
                &fb,
                &children_xml(style, &fb, &[("DAV:", "href", Some(&href))]),
            )?;
            self.collection(
                &home.path.join("outbox"),
                Some((caldav, "schedule-outbox")),
                &mut rng,
            )?;
            self.mkdir(&home.path.join("dropbox"))?;
            self.mkdir(&home.path.join("freebusy"))?;
            if index % 3 == 0 {
                let d = home.path.join(rng.uuid());
                self.collection(&d, Some((caldav, "calendar")), &mut rng)?;
                second = Some(d);
            }
            for (n, inbox_item) in (0..count).map(|n| (n, n % 10 == 1)) {
                let dir = if inbox_item {
                    home.path.join("inbox")
                } else if let (Some(d), true) = (&second, n % 4 == 3) {
                    d.clone()
                } else {
                    calendar.clone()
                };
                self.write_event(&dir, index, n, people, &mut rng, inbox_item)?;
            }
        } else {
            for n in 0..count {
                self.write_event(&calendar, index, n, people, &mut rng, false)?;
            }
        }
        Ok(())
    }

    /// One event, with the properties CalendarServer 2.5 writes on a PUT: `getcontentmd5`,
    /// `getcontenttype`, and for a scheduling object (every event in a calendar: they all have an
    /// organizer and attendees) `scheduling-object-resource` "true", a `schedule-tag` and a
    /// `scheduling-match-etags` of 1–4 entries ending with the current ETag (earlier ones stay
    /// while the server processes replies without changing the schedule tag). An inbox item is
    /// no scheduling object ("false", neither of the other two) and has `originator` and
    /// `recipient` hrefs instead.
    fn write_event(
        &self,
        dir: &Path,
        home: usize,
        n: usize,
        people: &[Person],
        rng: &mut Rng,
        inbox_item: bool,
    ) -> Result<()> {
        let uid = rng.uuid();
        let (text, organizer) = event_by(rng, &uid, home, people, &self.domain);
        let p = dir.join(format!("{uid}.ics"));
        // The properties draw from their own generator: the events stay what they were.
        let mut prng = Rng::new(uid_seed(&uid));
        let style = self.style(&mut prng);
        self.write_file(&p, text.as_bytes(), style)?;
        if !self.xattrs {
            return Ok(());
        }
        if n % 7 == 0 {
            // An attribute that is neither a WebDAV property nor zlib: must survive every write.
            let name = format!("{}principal-reconciler-test.raw", self.prefix);
            xattr::set(&p, &name, b"\x80\x02raw, not zlib")
                .map_err(|e| Error::io("cannot set xattr on", &p, e))?;
        }
        if self.ics_dir {
            return Ok(());
        }
        let ctype = "{DAV:}getcontenttype";
        let mime = if inbox_item {
            "text/calendar;charset=utf-8"
        } else {
            "text/calendar"
        };
        self.set(&p, style, ctype, &text_xml(style, ctype, mime))?;
        let sched = xattrs::scheduling_object_resource();
        let is_sched = if inbox_item { "false" } else { "true" };
        self.set(&p, style, &sched, &text_xml(style, &sched, is_sched))?;
        if inbox_item {
            let from = address_of(&mut prng, &people[organizer]);
            let from = if prng.chance(10) {
                "mailto:partner@outside.example.net".to_string()
            } else {
                from
            };
            let to = address_of(&mut prng, &people[home]);
            for (prop, href) in [(xattrs::originator(), from), (xattrs::recipient(), to)] {
                let xml = children_xml(style, &prop, &[("DAV:", "href", Some(&href))]);
                self.set(&p, style, &prop, &xml)?;
            }
            return Ok(());
        }
        let tag = xattrs::schedule_tag();
        self.set(
            &p,
            style,
            &tag,
            &text_xml(style, &tag, &prng.uuid().to_lowercase()),
        )?;
        let md5 = super::md5_hex(text.as_bytes());
        let mut etags: Vec<String> = (0..prng.below(4))
            .map(|_| format!("{:016x}{:016x}", prng.next_u64(), prng.next_u64()))
            .collect();
        etags.push(md5);
        let entries: Vec<(&str, &str, Option<&str>)> = etags
            .iter()
            .map(|e| ("DAV:", "getetag", Some(e.as_str())))
            .collect();
        let list = xattrs::scheduling_match_etags();
        self.set(&p, style, &list, &children_xml(style, &list, &entries))?;
        Ok(())
    }
}

/// A seed for a resource's own generator.
fn uid_seed(uid: &str) -> u64 {
    uid.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// How a generated store's WebDAV properties are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PropertyStyle {
    /// CalendarServer 2.5 (Mac OS X Server 10.6): long attribute names
    /// (`{http:%2F%2Ftwistedmatrix.com%2Fxml_namespace%2Fdav%2Fprivate%2F}…`), zlib-compressed XML:
    /// declaration and CRLF, the element on one line, CRLF.
    #[default]
    Cs25,
    /// CalendarServer 3.3 on a file store (`txdav/base/propertystore/xattr.py`): short names
    /// (`{TDP:}`, `{CALDAV:}`, `{CS:}`, `{TD:}`), zlib-compressed XML as its pretty writer makes it:
    /// declaration and LF, child elements each on a CRLF-ended line indented by two spaces.
    Cs33,
    /// Each resource and collection in one of the two (a 2.5 store partly served by 3.3 since).
    Mixed,
}

/// The document of a property holding only text, as `style` writes it.
pub fn text_xml(style: PropertyStyle, property: &str, text: &str) -> String {
    match style {
        PropertyStyle::Cs33 => {
            let (ns, name) = xattrs::split_property(property);
            format!(
                "<?xml version='1.0' encoding='UTF-8'?>\n<{name} xmlns='{ns}'>{}</{name}>",
                escape(text)
            )
        }
        _ => xattrs::text_property_xml(property, text),
    }
}

/// The document of a property holding elements (`(namespace, name, text)`), as `style` writes it.
pub fn children_xml(
    style: PropertyStyle,
    property: &str,
    children: &[(&str, &str, Option<&str>)],
) -> String {
    let (ns, name) = xattrs::split_property(property);
    let child = |(cns, cname, text): &(&str, &str, Option<&str>)| {
        let xmlns = if *cns == ns {
            String::new()
        } else {
            format!(" xmlns='{cns}'")
        };
        match text {
            Some(t) => format!("<{cname}{xmlns}>{}</{cname}>", escape(t)),
            None => format!("<{cname}{xmlns}/>"),
        }
    };
    match style {
        PropertyStyle::Cs33 => {
            let mut s =
                format!("<?xml version='1.0' encoding='UTF-8'?>\n<{name} xmlns='{ns}'>\r\n");
            for c in children {
                s.push_str("  ");
                s.push_str(&child(c));
                s.push_str("\r\n");
            }
            s.push_str(&format!("</{name}>"));
            s
        }
        _ => {
            let inner: String = children.iter().map(child).collect();
            format!("<?xml version='1.0' encoding='UTF-8'?>\r\n<{name} xmlns='{ns}'>{inner}</{name}>\r\n")
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Folds a content line at 75 octets (RFC 5545 3.1), never inside a UTF-8 sequence, and ends it
/// with CRLF.
pub fn fold_line(out: &mut String, line: &str) {
    let mut start = 0;
    let mut limit = 75;
    let b = line.as_bytes();
    while b.len() - start > limit {
        let mut cut = start + limit;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push_str(&line[start..cut]);
        out.push_str("\r\n ");
        start = cut;
        limit = 74;
    }
    out.push_str(&line[start..]);
    out.push_str("\r\n");
}

fn address_of(rng: &mut Rng, p: &Person) -> String {
    match rng.below(20) {
        0..=11 => format!("urn:uuid:{}", p.guid),
        12..=16 => format!("mailto:{}", p.email),
        17 => format!("/principals/__uids__/{}/", p.guid),
        18 => format!("/principals/users/{}/", p.short_name),
        _ => format!(
            "http://cal.example.com:8008/principals/__uids__/{}/",
            p.guid
        ),
    }
}

fn cal_address_line(rng: &mut Rng, prop: &str, p: &Person, extra: &str) -> String {
    let addr = address_of(rng, p);
    let cn = if p.full_name.contains([',', ';', ':']) || rng.chance(50) {
        format!("\"{}\"", p.full_name)
    } else {
        p.full_name.clone()
    };
    if prop == "ORGANIZER" {
        format!("ORGANIZER;CN={cn};EMAIL={}:{addr}", p.email)
    } else {
        format!(
            "ATTENDEE;CN={cn};CUTYPE=INDIVIDUAL;EMAIL={};{extra}:{addr}",
            p.email
        )
    }
}

/// One realistic iCal 3/4-style event: CRLF, folded lines, an ORGANIZER and 2–6 attendees mixing
/// `urn:uuid:`, `mailto:` and principal-URL forms, sometimes an outside attendee and a recurrence
/// with an overridden instance.
pub fn event(rng: &mut Rng, uid: &str, home: usize, people: &[Person], domain: &str) -> String {
    event_by(rng, uid, home, people, domain).0
}

/// [`event`], and the index of its organizer in `people`.
fn event_by(
    rng: &mut Rng,
    uid: &str,
    home: usize,
    people: &[Person],
    domain: &str,
) -> (String, usize) {
    let ical4 = rng.chance(60);
    let mut s = String::with_capacity(2048);
    s.push_str("BEGIN:VCALENDAR\r\n");
    s.push_str(if ical4 {
        "VERSION:2.0\r\nPRODID:-//Apple Inc.//iCal 4.0.4//EN\r\n"
    } else {
        "PRODID:-//Apple Inc.//iCal 3.0//EN\r\nVERSION:2.0\r\n"
    });
    s.push_str("CALSCALE:GREGORIAN\r\n");
    s.push_str(TIMEZONE);
    let organizer = if rng.chance(70) {
        home
    } else {
        rng.below(people.len())
    };
    let n_att = 2 + rng.below(5);
    let mut attendees = vec![organizer];
    while attendees.len() < n_att.min(people.len()) {
        let a = rng.below(people.len());
        if !attendees.contains(&a) {
            attendees.push(a);
        }
    }
    let external = rng.chance(15);
    let (month, day, hour) = (1 + rng.below(12), 1 + rng.below(28), 8 + rng.below(9));
    let recurring = rng.chance(20);
    let summary = SUMMARIES[rng.below(SUMMARIES.len())];
    let stamp = format!(
        "2010{:02}{:02}T{:02}{:02}{:02}Z",
        month,
        day,
        hour,
        rng.below(60),
        rng.below(60)
    );
    let partstats = ["ACCEPTED", "NEEDS-ACTION", "TENTATIVE", "DECLINED"];
    let body = |s: &mut String, rng: &mut Rng, recurrence_id: Option<&str>| {
        s.push_str("BEGIN:VEVENT\r\n");
        let _ = write!(s, "CREATED:{stamp}\r\n");
        let _ = write!(s, "UID:{uid}\r\n");
        if let Some(r) = recurrence_id {
            let _ = write!(s, "RECURRENCE-ID;TZID=Europe/Paris:{r}\r\n");
        }
        let _ = write!(
            s,
            "DTEND;TZID=Europe/Paris:2010{month:02}{day:02}T{:02}0000\r\n",
            hour + 1
        );
        s.push_str("TRANSP:OPAQUE\r\n");
        fold_line(s, &format!("SUMMARY:{summary}"));
        let _ = write!(
            s,
            "DTSTART;TZID=Europe/Paris:2010{month:02}{day:02}T{hour:02}0000\r\n"
        );
        let _ = write!(s, "DTSTAMP:{stamp}\r\n");
        if recurring && recurrence_id.is_none() {
            s.push_str("RRULE:FREQ=WEEKLY;INTERVAL=1;COUNT=10\r\n");
        }
        let _ = write!(s, "SEQUENCE:{}\r\n", rng.below(6));
        fold_line(
            s,
            &cal_address_line(rng, "ORGANIZER", &people[organizer], ""),
        );
        for (k, &a) in attendees.iter().enumerate() {
            let extra = if k == 0 {
                "PARTSTAT=ACCEPTED;ROLE=CHAIR".to_string()
            } else {
                format!(
                    "PARTSTAT={};ROLE=REQ-PARTICIPANT;RSVP=TRUE",
                    partstats[rng.below(partstats.len())]
                )
            };
            fold_line(s, &cal_address_line(rng, "ATTENDEE", &people[a], &extra));
        }
        if external {
            fold_line(s, "ATTENDEE;CN=Outside Partner;CUTYPE=INDIVIDUAL;PARTSTAT=NEEDS-ACTION;ROLE=REQ-PARTICIPANT;RSVP=TRUE:mailto:partner@outside.example.net");
        }
        let _ = domain;
        s.push_str("END:VEVENT\r\n");
    };
    body(&mut s, rng, None);
    if recurring {
        let r = format!("2010{month:02}{:02}T{hour:02}0000", (day + 7).min(28));
        body(&mut s, rng, Some(&r));
    }
    s.push_str("END:VCALENDAR\r\n");
    (s, organizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_at_75_octets_on_char_boundaries() {
        let mut out = String::new();
        let line = format!("ATTENDEE;CN=\"{}\":mailto:x@example.com", "é".repeat(60));
        fold_line(&mut out, &line);
        for l in out.split("\r\n").filter(|l| !l.is_empty()) {
            assert!(l.len() <= 75, "{} octets: {l}", l.len());
        }
        assert_eq!(out.replace("\r\n ", "").trim_end(), line);
    }

    #[test]
    fn deterministic_uuids() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert_eq!(a.uuid(), b.uuid());
        assert!(crate::address::Guid::parse(&a.uuid()).is_some());
    }
}
