//! A migration test world: a generated 10.6 store whose people all got new GUIDs, the new
//! directory as LDIF, the old directory as a dsexport file, and a configuration file.
#![allow(dead_code)]

pub use principal_reconciler::store::generate::Person;
use principal_reconciler::store::generate::{GeneratedStore, StoreBuilder};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub struct World {
    pub dir: tempfile::TempDir,
    pub store: GeneratedStore,
    pub config: PathBuf,
    /// old GUID → new GUID
    pub new_guid: BTreeMap<String, String>,
}

/// The GUID a person gets in the rebuilt directory (deterministic).
pub fn renewed(old: &str) -> String {
    let h = hex::encode_upper(Sha256::digest(old.as_bytes()));
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

pub fn ldif(people: &[Person], new_guid: &BTreeMap<String, String>) -> String {
    let mut s = String::from("version: 1\n\n");
    for p in people {
        s.push_str(&format!(
            "dn: uid={short},cn=users,dc=example,dc=com\nobjectClass: inetOrgPerson\nobjectClass: apple-user\nuid: {short}\ncn: {full}\nsn: {full}\nmail: {mail}\napple-generateduid: {guid}\n\n",
            short = p.short_name,
            full = p.full_name,
            mail = p.email,
            guid = new_guid[&p.guid],
        ));
    }
    s
}

pub fn dsexport(people: &[Person]) -> String {
    let mut s = String::from("0x0A 0x5C 0x3A 0x2C dsRecTypeStandard:Users 4 dsAttrTypeStandard:RecordName dsAttrTypeStandard:GeneratedUID dsAttrTypeStandard:RealName dsAttrTypeStandard:EMailAddress\n");
    for p in people {
        s.push_str(&format!(
            "{}:{}:{}:{}\n",
            p.short_name, p.guid, p.full_name, p.email
        ));
    }
    s
}

impl World {
    /// `homes` hashed homes with `resources` events in all, owned by 501:20.
    pub fn new(homes: usize, resources: usize, seed: u64) -> World {
        Self::with(|root| {
            StoreBuilder::new(root)
                .homes(homes)
                .resources(resources)
                .seed(seed)
                .owner(501, 20)
        })
    }

    /// A world around the store `build` describes (given the store root to use).
    pub fn with(build: impl FnOnce(PathBuf) -> StoreBuilder) -> World {
        let dir = tempfile::tempdir().unwrap();
        let store = build(dir.path().join("Documents")).build().unwrap();
        let new_guid: BTreeMap<String, String> = store
            .people
            .iter()
            .map(|p| (p.guid.clone(), renewed(&p.guid)))
            .collect();
        std::fs::write(dir.path().join("new.ldif"), ldif(&store.people, &new_guid)).unwrap();
        std::fs::write(dir.path().join("old-users.txt"), dsexport(&store.people)).unwrap();
        let config = dir.path().join("principal-reconciler.toml");
        std::fs::write(
            &config,
            "[directory]\nldif = \"new.ldif\"\n\n[old_directory]\nfiles = [\"old-users.txt\"]\n\n[store]\nkind = \"calendarserver-fs\"\npath = \"Documents\"\n\n[rewrite]\ninternal_domains = [\"example.com\"]\n\n[state]\npath = \"state\"\n\n[report]\ndir = \"reports\"\n",
        )
        .unwrap();
        World {
            dir,
            store,
            config,
            new_guid,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn cmd(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::cargo_bin("principal-reconciler").unwrap();
        c.arg("--config").arg(&self.config).arg("--no-progress");
        c
    }
}

/// Everything a rollback must restore: per path, content hash, owner, group, mode and attributes.
/// Collection `getctag` attributes are left out: they must change on every write, rollback included,
/// so clients re-sync.
pub type Tree = BTreeMap<String, (String, u32, u32, u32, BTreeMap<String, Vec<u8>>)>;

pub fn tree(root: &Path) -> Tree {
    let mut out = Tree::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let hash = if m.is_file() {
            hex::encode(Sha256::digest(std::fs::read(&p).unwrap()))
        } else if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
            "dir".into()
        } else {
            format!("link:{}", std::fs::read_link(&p).unwrap().display())
        };
        let mut attrs = BTreeMap::new();
        if !m.file_type().is_symlink() {
            for n in xattr::list(&p).into_iter().flatten() {
                let name = n.to_string_lossy().into_owned();
                if name.contains("getctag") {
                    continue;
                }
                attrs.insert(name, xattr::get(&p, &n).unwrap().unwrap_or_default());
            }
        }
        out.insert(rel, (hash, m.uid(), m.gid(), m.mode() & 0o7777, attrs));
    }
    out
}

/// Every .ics file's bytes under `root`, by relative path.
pub fn resources(root: &Path) -> BTreeMap<String, Vec<u8>> {
    tree(root)
        .into_iter()
        .filter(|(p, _)| p.ends_with(".ics"))
        .map(|(p, _)| {
            let bytes = std::fs::read(root.join(&p)).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Asserts two trees are equal, naming the paths that differ.
pub fn assert_same_tree(got: &Tree, want: &Tree, what: &str) {
    let mut diffs = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            None => diffs.push(format!("missing {k}")),
            Some(g) if g != v => diffs.push(format!(
                "differs {k}: {:?} vs {:?}",
                (&g.0, g.1, g.2, g.3, g.4.keys().collect::<Vec<_>>()),
                (&v.0, v.1, v.2, v.3, v.4.keys().collect::<Vec<_>>())
            )),
            _ => {}
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        diffs.push(format!("extra {k}"));
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} differences, first: {:#?}",
        diffs.len(),
        &diffs[..diffs.len().min(10)]
    );
}
