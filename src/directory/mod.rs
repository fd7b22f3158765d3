//! The directory: current records from live LDAP or an LDIF snapshot, old records from exports.
//!
//! Sources: a live LDAP server ([`ldap`]), an LDIF snapshot ([`ldif`]) and, for the old directory,
//! dsexport / Workgroup Manager exports ([`dsexport`]) or LDIF. Every source yields
//! [`DirectoryRecord`]s; the preset mapping ([`presets`]) is the same for a server and a snapshot.

pub mod dsexport;
pub mod entry;
pub mod ldap;
pub mod ldif;
pub mod presets;

use crate::address::{Guid, Principal, RecordType};
use crate::config::{DirectoryConfig, Preset};
use crate::error::{Error, Result};
use crate::progress::Progress;
use entry::{classify, norm_dn, to_record, RawEntry, Skip};
use presets::Schema;
use serde::Serialize;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// One user, group, place or resource, wherever it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DirectoryRecord {
    /// Which kind of record it is.
    pub kind: RecordType,
    /// Its GUID (the principal's identity for the calendar server).
    pub guid: Guid,
    /// Short names; the first is the login.
    pub short_names: Vec<String>,
    /// Full name (display name); None when the record has none.
    pub full_name: Option<String>,
    /// E-mail addresses, lower-cased, first = primary.
    pub emails: Vec<String>,
    /// Groups: member GUIDs (apple-group-memberguid / GroupMembers).
    pub member_guids: Vec<Guid>,
    /// Groups: member short names (memberUid / GroupMembership).
    pub member_names: Vec<String>,
    /// Groups: nested group GUIDs.
    pub nested_guids: Vec<Guid>,
    /// Where it came from: a DN, or `file:line` of an export.
    pub source: String,
}

impl DirectoryRecord {
    /// The record as the rewriter needs it.
    pub fn principal(&self) -> Principal {
        Principal {
            guid: self.guid.clone(),
            kind: self.kind,
            short_name: self.short_names.first().cloned().unwrap_or_default(),
            full_name: self.full_name.clone(),
            emails: self.emails.clone(),
        }
    }
}

/// All records from one source.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Directory {
    /// Every record read, in source order.
    pub records: Vec<DirectoryRecord>,
    /// Where the records came from (server URL, LDIF path, export files).
    pub origin: String,
    /// Things a human should know (partial results, skipped entries, ...).
    pub warnings: Vec<String>,
}

impl Directory {
    /// Number of records of each type (every type present, zeros included).
    pub fn counts(&self) -> std::collections::BTreeMap<RecordType, usize> {
        let mut out: std::collections::BTreeMap<RecordType, usize> =
            RecordType::ALL.iter().map(|k| (*k, 0)).collect();
        for r in &self.records {
            *out.entry(r.kind).or_default() += 1;
        }
        out
    }
}

/// Gathers records from entries: the GUID duplicate check, skipped-entry warnings and member DN
/// resolution shared by the live pull and the LDIF reader.
pub(crate) struct Collector {
    mapping: Schema,
    dir: Directory,
    by_guid: HashMap<Guid, usize>,
    member_dns: Vec<(usize, Vec<String>)>,
}

impl Collector {
    pub(crate) fn new(mapping: Schema, origin: String) -> Collector {
        Collector {
            mapping,
            dir: Directory {
                origin,
                ..Directory::default()
            },
            by_guid: HashMap::new(),
            member_dns: Vec::new(),
        }
    }

    pub(crate) fn warn(&mut self, w: String) {
        self.dir.warnings.push(w);
    }

    /// Adds an entry known to be of `kind`.
    pub(crate) fn add(&mut self, e: &RawEntry, kind: RecordType) {
        let t = self.mapping.get(kind);
        match to_record(e, t, self.mapping.guid_form) {
            Ok(r) => {
                if let Some(&first) = self.by_guid.get(&r.guid) {
                    let w = format!(
                        "skipped {} {}: same GUID {} as {} {}",
                        r.kind,
                        r.source,
                        r.guid,
                        self.dir.records[first].kind,
                        self.dir.records[first].source
                    );
                    tracing::warn!("{w}");
                    self.dir.warnings.push(w);
                    return;
                }
                let dns: Vec<String> = t.member_dn.iter().flat_map(|a| e.texts(a)).collect();
                let idx = self.dir.records.len();
                if !dns.is_empty() {
                    self.member_dns.push((idx, dns));
                }
                self.by_guid.insert(r.guid.clone(), idx);
                self.dir.records.push(r);
            }
            Err(Skip::NoGuid(w)) => {
                tracing::warn!("{w}");
                self.dir.warnings.push(w);
            }
            Err(Skip::NotARecord) => {}
        }
    }

    pub(crate) fn finish(mut self) -> Directory {
        if !self.member_dns.is_empty() {
            let by_dn: HashMap<String, Guid> = self
                .dir
                .records
                .iter()
                .map(|r| (norm_dn(&r.source), r.guid.clone()))
                .collect();
            for (idx, dns) in std::mem::take(&mut self.member_dns) {
                for dn in dns {
                    if let Some(g) = by_dn.get(&norm_dn(&dn)) {
                        let rec = &mut self.dir.records[idx];
                        if !rec.member_guids.contains(g) {
                            rec.member_guids.push(g.clone());
                        }
                    }
                }
            }
        }
        self.dir
    }
}

/// Reads the current directory as configured (`url` or `ldif`).
pub fn load_current(cfg: &DirectoryConfig) -> Result<Directory> {
    load_current_with(cfg, &|| {})
}

/// [`load_current`], calling `on_entry` for every entry received (progress display).
pub fn load_current_with(cfg: &DirectoryConfig, on_entry: &(dyn Fn() + Sync)) -> Result<Directory> {
    let dir = load_current_unchecked(cfg, on_entry)?;
    refuse_empty(cfg, dir)
}

/// An empty current directory is an error unless `allow_empty = true`: a typo in the base, a
/// container or the GUID attribute (or an empty snapshot) would otherwise make everyone look gone.
fn refuse_empty(cfg: &DirectoryConfig, dir: Directory) -> Result<Directory> {
    if !dir.records.is_empty() || cfg.allow_empty {
        return Ok(dir);
    }
    let mapping = Schema::from_config(cfg);
    let no_guid: Vec<&String> = dir
        .warnings
        .iter()
        .filter(|w| {
            w.starts_with("skipped ") && (w.contains(": no ") || w.contains("not a usable GUID"))
        })
        .collect();
    let guid_attr = mapping
        .types
        .first()
        .map(|t| t.guid.join("/"))
        .unwrap_or_default();
    let base = cfg.base.as_deref().unwrap_or("");
    let what = match &cfg.ldif {
        Some(path) => format!(
            "{}: the LDIF snapshot holds no user, group, place or resource record",
            path.display()
        ),
        None => {
            let searched: Vec<String> = mapping
                .types
                .iter()
                .filter_map(|t| {
                    let f = t.filter.as_ref()?;
                    let b = if t.container.is_empty() {
                        base.to_string()
                    } else {
                        format!("{},{base}", t.container)
                    };
                    Some(format!("{b} for {f}"))
                })
                .collect();
            format!(
                "{}: the directory returned no user, group, place or resource record (searched {})",
                cfg.url.as_deref().unwrap_or_default(),
                searched.join("; ")
            )
        }
    };
    let why = if let Some(first) = no_guid.first() {
        format!(
            "{} entries were skipped for want of the GUID attribute `{guid_attr}` (first: {first}): check [directory.attributes] guid",
            no_guid.len()
        )
    } else {
        let mut w = format!(
            "check [directory] base (`{base}`), [directory.containers] and [directory.filters] against the server's tree"
        );
        if let Some(first) = dir.warnings.first() {
            w.push_str(&format!(" ({first})"));
        }
        w
    };
    Err(Error::runtime(format!(
        "{what}; {why}. An empty directory would make everyone look gone; if it really is empty, set allow_empty = true in [directory]"
    )))
}

fn load_current_unchecked(
    cfg: &DirectoryConfig,
    on_entry: &(dyn Fn() + Sync),
) -> Result<Directory> {
    if let Some(path) = &cfg.ldif {
        return load_ldif(path, &Schema::from_config(cfg), cfg.base.as_deref());
    }
    if cfg.url.is_none() {
        return Err(Error::usage(
            "[directory] needs `url` (a live LDAP server) or `ldif` (a snapshot)",
        ));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::runtime(format!("cannot start the LDAP client runtime: {e}")))?;
    rt.block_on(ldap::pull(cfg, on_entry))
}

fn open(path: &Path) -> Result<BufReader<std::fs::File>> {
    let f = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::usage(format!("{}: file not found", path.display()))
        } else {
            Error::io("cannot read", path, e)
        }
    })?;
    Ok(BufReader::with_capacity(1 << 16, f))
}

/// Reads an LDIF snapshot with a mapping: entries are typed by the mapping's containers and
/// filters (as a live server would select them), else by their object classes.
pub fn load_ldif(path: &Path, mapping: &Schema, base: Option<&str>) -> Result<Directory> {
    let input = open(path)?;
    read_ldif(input, &path.display().to_string(), mapping, base)
}

fn read_ldif(
    input: impl BufRead,
    name: &str,
    mapping: &Schema,
    base: Option<&str>,
) -> Result<Directory> {
    let mut reader = ldif::LdifReader::new(input, name);
    let mut out = Collector::new(mapping.clone(), name.to_string());
    let mut entries = 0usize;
    while let Some((e, _line)) = reader.next_entry()? {
        entries += 1;
        if let Some(kind) = classify(&e, mapping, base) {
            out.add(&e, kind);
        }
    }
    if out.dir.records.is_empty() && entries > 0 {
        out.warn(format!(
            "{name}: {entries} entries read, none of them a user, group, place or resource record (by the containers and filters configured, or their object classes)"
        ));
    }
    Ok(out.finish())
}

/// Reads the old directory's export files (dsexport / Workgroup Manager / LDIF, detected).
pub fn load_old(files: &[PathBuf]) -> Result<Directory> {
    let mut dir = Directory {
        origin: files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        ..Directory::default()
    };
    let od = Schema::preset(Preset::OpenDirectory);
    let mut seen: HashMap<Guid, String> = HashMap::new();
    for path in files {
        let name = path.display().to_string();
        let mut input = open(path)?;
        // Find the first line that is neither blank nor a comment, keeping what was read.
        let mut consumed: Vec<u8> = Vec::new();
        let mut line_no = 0usize;
        let (first, first_line) = loop {
            let mut buf = Vec::new();
            let n = input
                .read_until(b'\n', &mut buf)
                .map_err(|e| Error::io("cannot read", path, e))?;
            if n == 0 {
                break (None, line_no);
            }
            line_no += 1;
            consumed.extend_from_slice(&buf);
            let text = String::from_utf8_lossy(&buf);
            let t = text.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            break (Some(text.into_owned()), line_no);
        };
        let Some(first) = first else {
            dir.warnings.push(format!("{name}: empty, no records"));
            continue;
        };
        let part = match dsexport::detect(&first) {
            Some(dsexport::Format::DsExport) => {
                let p = dsexport::parse(input, &name, first.trim_end_matches(['\r', '\n']), first_line)?;
                Directory { records: p.records, origin: name.clone(), warnings: p.warnings }
            }
            Some(dsexport::Format::Ldif) => {
                let whole = std::io::Cursor::new(consumed).chain(input);
                read_ldif(whole, &name, &od, None)?
            }
            None => {
                return Err(Error::usage(format!(
                    "{name}:{first_line}: neither a dsexport / Workgroup Manager export (first line like \
                     `0x0A 0x5C 0x3A 0x2C dsRecTypeStandard:Users 3 RecordName RealName GeneratedUID`) nor LDIF (`dn:`)"
                )))
            }
        };
        dir.warnings.extend(part.warnings);
        for r in part.records {
            if let Some(first) = seen.get(&r.guid) {
                dir.warnings.push(format!(
                    "{}: GUID {} already read at {first}; kept the first",
                    r.source, r.guid
                ));
                continue;
            }
            seen.insert(r.guid.clone(), r.source.clone());
            dir.records.push(r);
        }
    }
    Ok(dir)
}

/// [`load_current`], reporting every entry received from a server to `progress` (a file is read
/// without a progress report).
pub fn pull(cfg: &DirectoryConfig, progress: &dyn Progress) -> Result<Directory> {
    if cfg.url.is_some() {
        let bar = progress.start("directory", None);
        let tick = || bar.inc(1);
        let d = load_current_with(cfg, &tick);
        bar.finish();
        d
    } else {
        load_current(cfg)
    }
}

/// Writes records as an LDIF snapshot (temporary file + rename, so a failed run leaves nothing
/// half-written) readable back as `[directory] ldif` with the same preset.
pub fn write_snapshot(
    path: &Path,
    dir: &Directory,
    mapping: &Schema,
    base: Option<&str>,
) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot.ldif".into());
    let tmp = parent.join(format!(".{file_name}.tmp{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let f = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(f);
        ldif::write_records(&mut w, &dir.records, mapping, base, &dir.origin)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io("cannot write LDIF snapshot", path, e));
    }
    Ok(())
}
