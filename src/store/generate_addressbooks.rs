//! Builds test address books like the 10.6 Address Book Server's (and CalendarServer 3.x's):
//! `addressbooks/__uids__/XX/YY/<GUID>/addressbook/*.vcf`, cards in vCard 3.0 as Apple Address
//! Book writes them (CRLF, `item1.` groups, `X-ABLabel`, `type=` parameters repeated, long notes
//! folded at 75 octets), `getcontentmd5` on every card, `resourcetype` and `getctag` on every
//! collection. Deterministic for a seed.
//!
//! Every home holds contact cards with their own UIDs, the cards of a few colleagues from the
//! directory, and one group card (`X-ADDRESSBOOKSERVER-KIND:group`) whose members are:
//! - two ordinary contact cards of the book (`urn:uuid:<card UID>`: never changed);
//! - in even-numbered homes, a colleague's card that was copied from the directory and kept the
//!   colleague's GUID as its UID (a card of the book: never changed either);
//! - two colleagues by their directory GUID only (foreign members: principals, rewritten when the
//!   GUIDs change), one of them spelled in lower case;
//! - with [`AddressBookBuilder::departed_member`], someone who left ([`DEPARTED`]).

use super::generate::{fold_line, GeneratedHome, Person, Rng};
use super::xattrs::{self, attr_name, encode_value, text_property_value};
use super::HomeLayout;
use crate::error::{Error, Result};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// The GUID of a member who is in no directory, old or new.
pub const DEPARTED: &str = "DEADBEEF-0000-4000-8000-00000000DEAD";

/// What one home's group card names.
#[derive(Clone, Debug, Default)]
pub struct GroupMembers {
    /// The group card.
    pub path: PathBuf,
    /// Member uids that are cards of the same book (left alone).
    pub cards: Vec<String>,
    /// Member uids that are directory GUIDs of these people (as written; rewritten).
    pub principals: Vec<String>,
    /// Member uids that name nobody.
    pub departed: Vec<String>,
}

/// What [`AddressBookBuilder::build`] made.
#[derive(Clone, Debug)]
pub struct GeneratedAddressBooks {
    /// The address-book root (the folder holding `addressbooks/`).
    pub root: PathBuf,
    /// Address-book homes written.
    pub homes: Vec<GeneratedHome>,
    /// Cards written, group cards included.
    pub cards: u64,
    /// One per home, in the order of `homes`.
    pub groups: Vec<GroupMembers>,
}

/// Builder of test address books for a list of people (each gets a home under their GUID).
#[derive(Clone, Debug)]
pub struct AddressBookBuilder {
    root: PathBuf,
    people: Vec<Person>,
    seed: u64,
    contacts: usize,
    owner: Option<(u32, u32)>,
    prefix: String,
    departed: bool,
}

const FIRST: [&str; 8] = [
    "Marie", "Lukas", "Søren", "Aiko", "Zoë", "Pål", "Nuno", "Agnès",
];
const LAST: [&str; 8] = [
    "Lefebvre",
    "Schröder",
    "Nakamura",
    "Kowalski",
    "Ó Briain",
    "Álvarez",
    "Lindqvist",
    "Huber",
];

impl AddressBookBuilder {
    /// Address books under `root` (`addressbooks/` goes inside), one home per person.
    pub fn new(root: impl Into<PathBuf>, people: &[Person]) -> AddressBookBuilder {
        AddressBookBuilder {
            root: root.into(),
            people: people.to_vec(),
            seed: 1,
            contacts: 4,
            owner: None,
            prefix: xattrs::platform_prefix().to_string(),
            departed: false,
        }
    }

    /// Seed of the pseudo-random choices (the same seed gives the same address books).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Ordinary contact cards per home (at least 2: the group names two of them).
    pub fn contacts(mut self, n: usize) -> Self {
        self.contacts = n.max(2);
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
    /// Every group also names [`DEPARTED`], who is in no directory.
    pub fn departed_member(mut self) -> Self {
        self.departed = true;
        self
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

    fn set(&self, p: &Path, property: &str, value: &[u8]) -> Result<()> {
        let name = attr_name(&self.prefix, property);
        xattr::set(p, &name, value).map_err(|e| Error::io(&format!("cannot set {name} on"), p, e))
    }

    fn write_card(&self, dir: &Path, uid: &str, text: &str) -> Result<PathBuf> {
        let p = dir.join(format!("{uid}.vcf"));
        fs::write(&p, text).map_err(|e| Error::io("cannot write", &p, e))?;
        let md5 = super::md5_hex(text.as_bytes());
        self.set(
            &p,
            &xattrs::getcontentmd5(),
            &text_property_value(&xattrs::getcontentmd5(), &md5),
        )?;
        let ct = "{DAV:}getcontenttype";
        let xml = "<?xml version='1.0' encoding='UTF-8'?>\r\n<getcontenttype xmlns='DAV:'>text/vcard</getcontenttype>\r\n";
        self.set(&p, ct, &encode_value(xml.as_bytes()))?;
        self.chown(&p)?;
        Ok(p)
    }

    /// Writes the address books.
    pub fn build(self) -> Result<GeneratedAddressBooks> {
        let top = self.root.join(super::addressbook::DIR);
        self.mkdir(&self.root)?;
        self.mkdir(&top.join("__uids__"))?;
        self.chown(&top)?;
        let mut out = GeneratedAddressBooks {
            root: self.root.clone(),
            homes: Vec::new(),
            cards: 0,
            groups: Vec::new(),
        };
        for (i, me) in self.people.iter().enumerate() {
            let mut rng = Rng::new(self.seed.wrapping_mul(7_000_003).wrapping_add(i as u64));
            let g = &me.guid;
            let home = top.join("__uids__").join(&g[0..2]).join(&g[2..4]).join(g);
            let book = self.write_book(&home, &mut rng)?;
            let mut group = self.write_cards(i, &book, &mut rng, &mut out.cards)?;
            group.path = self.write_group(me, &book, &mut rng, &group)?;
            out.cards += 1;
            out.groups.push(group);
            out.homes.push(GeneratedHome {
                layout: HomeLayout::Hashed,
                id: g.clone(),
                path: home,
            });
        }
        Ok(out)
    }

    /// One home's folders and its `addressbook` collection (resource type, ctag, index file).
    fn write_book(&self, home: &Path, rng: &mut Rng) -> Result<PathBuf> {
        self.mkdir(home)?;
        self.chown(home.parent().unwrap_or(home))?;
        self.chown(home.parent().and_then(Path::parent).unwrap_or(home))?;
        let book = home.join("addressbook");
        self.mkdir(&book)?;
        let rt = "<?xml version='1.0' encoding='UTF-8'?>\r\n<resourcetype xmlns='DAV:'><collection/><addressbook xmlns='urn:ietf:params:xml:ns:carddav'/></resourcetype>\r\n";
        self.set(&book, "{DAV:}resourcetype", &encode_value(rt.as_bytes()))?;
        let ctag = format!(
            "2010-0{}-1{} 09:{:02}:{:02}.{:06}",
            1 + rng.below(9),
            rng.below(10),
            rng.below(60),
            rng.below(60),
            rng.below(1_000_000)
        );
        self.set(
            &book,
            &xattrs::getctag(),
            &text_property_value(&xattrs::getctag(), &ctag),
        )?;
        let db = book.join(".db.sqlite");
        fs::write(&db, b"SQLite format 3\0principal-reconciler test index\n")
            .map_err(|e| Error::io("cannot write", &db, e))?;
        self.chown(&db)?;
        Ok(book)
    }

    /// Home `i`'s contacts and colleague cards, counted in `cards`; returns who its group card
    /// is to name.
    fn write_cards(
        &self,
        i: usize,
        book: &Path,
        rng: &mut Rng,
        cards: &mut u64,
    ) -> Result<GroupMembers> {
        let n = self.people.len();
        let me = &self.people[i];
        let mut group = GroupMembers::default();
        for j in 0..self.contacts {
            let uid = rng.uuid();
            let text = contact(rng, &uid, j);
            self.write_card(book, &uid, &text)?;
            *cards += 1;
            if j < 2 {
                group.cards.push(uid);
            }
        }
        if n > 1 {
            // Colleagues from the directory.
            let a = &self.people[(i + 1) % n];
            let b = &self.people[(i + 2) % n];
            let copied_uid = if i % 2 == 0 {
                a.guid.clone()
            } else {
                rng.uuid()
            };
            self.write_card(book, &copied_uid, &colleague(a, &copied_uid))?;
            *cards += 1;
            if i % 2 == 0 {
                group.cards.push(copied_uid);
            }
            group.principals.push(b.guid.clone());
            if n > 2 {
                let c = &self.people[(i + 3) % n];
                if c.guid != me.guid {
                    group.principals.push(c.guid.to_ascii_lowercase());
                }
            }
        }
        if self.departed {
            group.departed.push(DEPARTED.to_string());
        }
        Ok(group)
    }

    /// The group card of `me`'s book, naming `group`'s members; returns its path.
    fn write_group(
        &self,
        me: &Person,
        book: &Path,
        rng: &mut Rng,
        group: &GroupMembers,
    ) -> Result<PathBuf> {
        let uid = rng.uuid();
        let mut members: Vec<&String> = group
            .cards
            .iter()
            .chain(&group.principals)
            .chain(&group.departed)
            .collect();
        members.sort_by_key(|m| m.to_ascii_uppercase());
        let mut text = String::from(
            "BEGIN:VCARD\r\nVERSION:3.0\r\nPRODID:-//Apple Inc.//Address Book 5.0//EN\r\n",
        );
        let _ = write!(
            text,
            "N:Team of {};;;;\r\nFN:Team of {}\r\nX-ADDRESSBOOKSERVER-KIND:group\r\n",
            me.full_name, me.full_name
        );
        for m in members {
            fold_line(
                &mut text,
                &format!("X-ADDRESSBOOKSERVER-MEMBER:urn:uuid:{m}"),
            );
        }
        let _ = write!(
            text,
            "REV:2010-06-1{}T1{}:04:27Z\r\nUID:{uid}\r\nEND:VCARD\r\n",
            rng.below(10),
            rng.below(10)
        );
        self.write_card(book, &uid, &text)
    }
}

/// An ordinary contact as Address Book 5 (Mac OS X 10.6) writes it.
fn contact(rng: &mut Rng, uid: &str, j: usize) -> String {
    let first = FIRST[rng.below(FIRST.len())];
    let last = LAST[rng.below(LAST.len())];
    let mut s = String::from(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nPRODID:-//Apple Inc.//Address Book 5.0//EN\r\n",
    );
    let _ = write!(s, "N:{last};{first};;;\r\nFN:{first} {last}\r\n");
    if rng.chance(50) {
        let _ = write!(s, "ORG:Cabinet {last}\\, Associés;\r\n");
    }
    let _ = write!(
        s,
        "EMAIL;type=INTERNET;type=HOME;type=pref:{}.{}{j}@mail.example.net\r\n",
        first.to_lowercase().replace(' ', ""),
        last.to_lowercase().replace(' ', "")
    );
    let _ = write!(
        s,
        "TEL;type=CELL;type=pref:+33 6 {:02} {:02} {:02} {:02}\r\n",
        rng.below(100),
        rng.below(100),
        rng.below(100),
        rng.below(100)
    );
    let _ = write!(s, "item1.ADR;type=HOME;type=pref:;;{} rue des Lilas;Paris;;7501{};France\r\nitem1.X-ABADR:fr\r\n", 1 + rng.below(90), rng.below(10));
    if rng.chance(50) {
        s.push_str("item2.X-ABRELATEDNAMES;type=pref:Jeanne\r\nitem2.X-ABLabel:_$!<Sister>!$_\r\n");
    }
    if rng.chance(40) {
        fold_line(&mut s, "NOTE:Rencontrée au salon de l'automne — rappeler pour le devis\\, envoyer la brochure et le catalogue des formations 2010.");
    }
    let _ = write!(
        s,
        "REV:2010-05-2{}T08:1{}:00Z\r\nUID:{uid}\r\nEND:VCARD\r\n",
        rng.below(10),
        rng.below(10)
    );
    s
}

/// A colleague's card as the directory gave it.
fn colleague(p: &Person, uid: &str) -> String {
    let (first, last) = p.full_name.split_once(' ').unwrap_or((&p.full_name, ""));
    let mut s = String::from(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nPRODID:-//Apple Inc.//Address Book 5.0//EN\r\n",
    );
    let _ = write!(
        s,
        "N:{last};{first};;;\r\nFN:{}\r\nORG:Example;\r\n",
        p.full_name
    );
    let _ = write!(s, "EMAIL;type=INTERNET;type=WORK;type=pref:{}\r\n", p.email);
    let _ = write!(s, "UID:{uid}\r\nEND:VCARD\r\n");
    s
}
