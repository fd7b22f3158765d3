//! Provisioning: directory records the calendar server will not give a principal, and the
//! places outside the store that name principals by GUID.
//!
//! `provision` finds current users, places and resources that get no principal and says why:
//! not in the calendar service access group (2.x `restrictToGroup`, [`access`]), no augment
//! record while the default augment disables calendaring (3+, [`augments`]), no e-mail address
//! (warning), a GUID or e-mail shared by several records (error). Old GUIDs still listed in the
//! group or in augments.xml are resolved through the mapping and replaced by the new ones.
//! Without `--apply` it only reports (`provision.csv`); with it, it writes the group (LDAP or a
//! dsimport file) and augments.xml (backed up first, edited as text).
//!
//! [`proxy`] moves delegates (`calendaruserproxy.sqlite`) and auto-accept (`resourceinfo.sqlite`)
//! to the new GUIDs.

pub mod access;
pub mod augments;
pub mod proxy;

pub use proxy::{apply_db_rewrite, plan_db_rewrite, DbKind, DbPlan, DbRow};

use crate::address::{CalAddress, Guid, RecordType};
use crate::config::Config;
use crate::directory::{Directory, DirectoryRecord};
use crate::error::{Error, Result};
use crate::mapping::{self, Mapper, Observed};
use access::AccessPlan;
use augments::{AugmentsFile, NewRecord, UidRewrite};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The report file name in `[report] dir`.
pub const CSV_FILE: &str = "provision.csv";
/// The dsimport file written when the group cannot be changed over LDAP and no `output` is set.
pub const DSIMPORT_FILE: &str = "provision-access-group.dsimport.txt";

/// How much a finding matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// `--apply` fixes it.
    Fix,
    /// A human must fix it in the directory (exit 1 until then).
    Error,
    /// Worth knowing; does not keep the exit code at 1.
    Warning,
    /// Informational.
    Note,
}

impl Severity {
    /// The stored word for this severity (the `severity` column): `fix`, `error`, `warning`, `note`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fix => "fix",
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Note => "note",
        }
    }

    /// Whether it makes `provision` exit 1.
    pub fn needs_doing(self) -> bool {
        matches!(self, Self::Fix | Self::Error)
    }
}

/// Problem codes (the `problem` column).
pub mod problem {
    /// A principal not in the access group (by GUID, nested groups included); `--apply` adds it.
    pub const NOT_IN_ACCESS_GROUP: &str = "not-in-access-group";
    /// The access group lists an old GUID that maps to a current record; `--apply` replaces it.
    pub const STALE_IN_ACCESS_GROUP: &str = "stale-guid-in-access-group";
    /// The access group lists a GUID that matches no current record; kept, noted.
    pub const UNMATCHED_IN_ACCESS_GROUP: &str = "unmatched-guid-in-access-group";
    /// The access group lists an old GUID with several candidate records; left for a human.
    pub const AMBIGUOUS_IN_ACCESS_GROUP: &str = "ambiguous-guid-in-access-group";
    /// A principal with no augments.xml record of its own while the record that applies (wildcard or default) disables calendaring; `--apply` adds one.
    pub const NO_AUGMENT: &str = "no-augment-record";
    /// An augments.xml record for an old GUID that maps to a current record; rewritten unless the new GUID has its own.
    pub const STALE_AUGMENT: &str = "stale-augment-record";
    /// An augments.xml record for a GUID that matches no current record; kept, noted.
    pub const UNMATCHED_AUGMENT: &str = "unmatched-augment-record";
    /// An augments.xml record for an old GUID with several candidate records; left for a human.
    pub const AMBIGUOUS_AUGMENT: &str = "ambiguous-augment-record";
    /// A principal whose own augments.xml record disables calendaring; kept as an explicit choice.
    pub const AUGMENT_DISABLES: &str = "augment-disables-calendar";
    /// A principal with no e-mail address, so it gets no `mailto:` address.
    pub const NO_EMAIL: &str = "no-email";
    /// Two current records carry the same GUID (the second is ignored); a directory error.
    pub const DUPLICATE_GUID: &str = "duplicate-guid";
    /// Two current records carry the same e-mail address; a directory error.
    pub const DUPLICATE_EMAIL: &str = "duplicate-email";
}

/// One problem with one record (one row of provision.csv).
#[derive(Clone, Debug, Serialize)]
pub struct RecordProblem {
    /// GUID of the record (or the GUID found, for `unknown`).
    pub guid: String,
    /// The record's first short name (empty for `unknown`).
    pub short_name: String,
    /// The record's full name (empty when it has none).
    pub full_name: String,
    /// user, location, resource, group, or `unknown` for a GUID no current record has.
    #[serde(rename = "type")]
    pub kind: String,
    /// Problem code, one of [`problem`].
    pub problem: &'static str,
    /// Whether `--apply` fixes it, a human must, or it is only worth knowing.
    pub severity: Severity,
    /// What was found, in words.
    pub detail: String,
    /// What `--apply` does about it (or what a human must do).
    pub action: String,
    /// For stale GUIDs: the mapping rule and its evidence.
    pub rule: String,
    /// Which records or GUIDs the rule went through.
    pub evidence: String,
}

impl RecordProblem {
    fn for_record(r: &DirectoryRecord, problem: &'static str, severity: Severity) -> RecordProblem {
        RecordProblem {
            guid: r.guid.to_string(),
            short_name: r.short_names.first().cloned().unwrap_or_default(),
            full_name: r.full_name.clone().unwrap_or_default(),
            kind: r.kind.as_str().to_string(),
            problem,
            severity,
            detail: String::new(),
            action: String::new(),
            rule: String::new(),
            evidence: String::new(),
        }
    }

    fn for_guid(guid: &str, problem: &'static str, severity: Severity) -> RecordProblem {
        RecordProblem {
            guid: guid.to_string(),
            short_name: String::new(),
            full_name: String::new(),
            kind: "unknown".into(),
            problem,
            severity,
            detail: String::new(),
            action: String::new(),
            rule: String::new(),
            evidence: String::new(),
        }
    }
}

/// The augments.xml part of a provisioning plan.
#[derive(Clone, Debug, Serialize)]
pub struct AugmentsPlan {
    /// Path of the augments.xml file.
    pub path: PathBuf,
    /// Records for old GUIDs to move to the new GUIDs.
    pub rewrites: Vec<UidRewrite>,
    /// Records to add for principals that have none.
    pub additions: Vec<NewRecord>,
    #[serde(skip)]
    file: Option<AugmentsFile>,
}

impl AugmentsPlan {
    /// True when applying the plan would change nothing in augments.xml.
    pub fn is_empty(&self) -> bool {
        self.rewrites.is_empty() && self.additions.is_empty()
    }
}

/// Everything `provision` found, and what `--apply` would change.
#[derive(Clone, Debug, Serialize)]
pub struct ProvisionReport {
    /// Where the current directory came from (LDAP URL or LDIF file).
    pub directory: String,
    /// Users, places and resources checked.
    pub checked: usize,
    /// Problems, sorted: fixes and errors first.
    pub findings: Vec<RecordProblem>,
    /// Access group changes; None when no `[provision] access_group` is configured.
    pub access: Option<AccessPlan>,
    /// augments.xml changes; None when no `[provision] augments_file` is configured.
    pub augments: Option<AugmentsPlan>,
    /// Warnings met while checking (directory and files).
    pub warnings: Vec<String>,
}

impl ProvisionReport {
    /// Findings by severity.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut out: BTreeMap<&'static str, usize> = [
            Severity::Fix,
            Severity::Error,
            Severity::Warning,
            Severity::Note,
        ]
        .iter()
        .map(|s| (s.as_str(), 0))
        .collect();
        for f in &self.findings {
            *out.entry(f.severity.as_str()).or_default() += 1;
        }
        out
    }

    /// Whether anything needs doing (exit 1).
    pub fn needs_doing(&self) -> bool {
        self.findings.iter().any(|f| f.severity.needs_doing())
    }
}

fn needs_principal(r: &DirectoryRecord) -> bool {
    matches!(
        r.kind,
        RecordType::User | RecordType::Location | RecordType::Resource
    ) && !r.guid.is_system()
}

/// Duplicate GUIDs the directory reader dropped (it keeps the first record and warns).
fn duplicate_guids(dir: &Directory) -> Vec<(Guid, String, String)> {
    let mut out = Vec::new();
    for w in &dir.warnings {
        let Some((head, tail)) = w.split_once(": same GUID ") else {
            continue;
        };
        let Some((guid, first)) = tail.split_once(" as ") else {
            continue;
        };
        let Some(g) = Guid::from_any(guid) else {
            continue;
        };
        let skipped = head.strip_prefix("skipped ").unwrap_or(head).to_string();
        out.push((g, skipped, first.to_string()));
    }
    out
}

/// What every stage of [`analyse`] reads: the mapping, the current records by GUID, and the
/// records that need a principal.
struct Analysis<'a> {
    cfg: &'a Config,
    current: &'a Directory,
    mapper: Mapper<'a>,
    by_guid: HashMap<&'a Guid, &'a DirectoryRecord>,
    principals: Vec<&'a DirectoryRecord>,
}

/// A finding with the rule and evidence of the resolution behind it.
fn resolved(mut f: RecordProblem, res: &mapping::Resolution) -> RecordProblem {
    f.rule = res.rule.as_str().to_string();
    f.evidence = res.evidence.clone();
    f
}

/// Finds every problem and plans the changes, given loaded directories.
pub fn analyse(cfg: &Config, current: &Directory, old: &Directory) -> Result<ProvisionReport> {
    let a = Analysis {
        cfg,
        current,
        mapper: Mapper::new(cfg, current, old)?,
        by_guid: current.records.iter().map(|r| (&r.guid, r)).collect(),
        principals: current
            .records
            .iter()
            .filter(|r| needs_principal(r))
            .collect(),
    };
    let mut findings: Vec<RecordProblem> = Vec::new();
    let mut warnings = Vec::new();
    let access = match &cfg.provision.access_group {
        None => None,
        Some(name) => Some(a.access_group(name, &mut findings)?),
    };
    let augments = match &cfg.provision.augments_file {
        None => None,
        Some(path) => Some(a.augments(path, &mut findings)?),
    };
    a.emails_and_duplicates(&mut findings);
    warnings.extend(current.warnings.iter().cloned());

    findings.sort_by(|a, b| {
        (a.severity, a.problem, &a.kind, &a.short_name, &a.guid).cmp(&(
            b.severity,
            b.problem,
            &b.kind,
            &b.short_name,
            &b.guid,
        ))
    });
    Ok(ProvisionReport {
        directory: current.origin.clone(),
        checked: a.principals.len(),
        findings,
        access,
        augments,
        warnings,
    })
}

impl Analysis<'_> {
    fn resolve(&self, g: &Guid) -> mapping::Resolution {
        self.mapper
            .resolve(&CalAddress::UrnUuid(g.clone()), &Observed::default())
    }

    /// The access group (2.x): old GUIDs it lists, then the records it does not reach.
    fn access_group(&self, name: &str, findings: &mut Vec<RecordProblem>) -> Result<AccessPlan> {
        let group = access::find_group(self.current, name)?;
        let mut plan = AccessPlan {
            group_guid: Some(group.guid.clone()),
            group_name: group.short_names.first().cloned().unwrap_or_default(),
            group_source: group.source.clone(),
            uses_member_uid: !group.member_names.is_empty(),
            ..AccessPlan::default()
        };
        let replaced = self.stale_in_access_group(group, &mut plan, findings);
        self.missing_from_access_group(group, &mut plan, &replaced, findings);
        plan.finish(group);
        Ok(plan)
    }

    /// The old GUIDs the access group lists (members and nested groups): replaced by the new ones
    /// the mapping finds, kept otherwise. Returns the findings by new GUID.
    fn stale_in_access_group(
        &self,
        group: &DirectoryRecord,
        plan: &mut AccessPlan,
        findings: &mut Vec<RecordProblem>,
    ) -> HashMap<Guid, RecordProblem> {
        let gname = plan.group_name.clone();
        let mut replaced: HashMap<Guid, RecordProblem> = HashMap::new();
        for (nested, list) in [(false, &group.member_guids), (true, &group.nested_guids)] {
            for g in list {
                if self.by_guid.contains_key(g) {
                    continue;
                }
                let res = self.resolve(g);
                match (&res.outcome, &res.target) {
                    (mapping::Verdict::Mapped | mapping::Verdict::Unchanged, Some(t)) => {
                        let Some(target) = self.by_guid.get(&t.guid) else {
                            continue;
                        };
                        let (add, remove) = if nested {
                            (&mut plan.add_nested, &mut plan.remove_nested)
                        } else {
                            (&mut plan.add_members, &mut plan.remove_members)
                        };
                        remove.push(g.clone());
                        let already = if nested {
                            group.nested_guids.contains(&t.guid)
                        } else {
                            group.member_guids.contains(&t.guid)
                        };
                        if !already && !add.contains(&t.guid) {
                            add.push(t.guid.clone());
                        }
                        let mut f = RecordProblem::for_record(
                            target,
                            problem::STALE_IN_ACCESS_GROUP,
                            Severity::Fix,
                        );
                        f.detail = format!("group {gname} lists old GUID {g}");
                        f.action = if already {
                            format!("remove old GUID {g} (new GUID already a member)")
                        } else {
                            format!("replace old GUID {g} with {} in group {gname}", t.guid)
                        };
                        let f = resolved(f, &res);
                        replaced.insert(t.guid.clone(), f.clone());
                        findings.push(f);
                    }
                    (mapping::Verdict::Ambiguous, _) => {
                        let mut f = RecordProblem::for_guid(
                            g.as_str(),
                            problem::AMBIGUOUS_IN_ACCESS_GROUP,
                            Severity::Warning,
                        );
                        f.detail = format!(
                            "group {gname} lists old GUID {g}; candidates: {}",
                            res.candidates.join("; ")
                        );
                        f.action = "kept; name the right record in [rewrite] mapping_file".into();
                        findings.push(resolved(f, &res));
                    }
                    _ => {
                        let mut f = RecordProblem::for_guid(
                            g.as_str(),
                            problem::UNMATCHED_IN_ACCESS_GROUP,
                            Severity::Note,
                        );
                        f.detail = format!(
                            "group {gname} lists GUID {g}, which matches no current record"
                        );
                        f.action = "kept".into();
                        findings.push(resolved(f, &res));
                    }
                }
            }
        }
        replaced
    }

    /// The records the access group does not reach once its old GUIDs are replaced (nested groups
    /// included): added by GUID, and by short name where the group lists members that way.
    fn missing_from_access_group(
        &self,
        group: &DirectoryRecord,
        plan: &mut AccessPlan,
        replaced: &HashMap<Guid, RecordProblem>,
        findings: &mut Vec<RecordProblem>,
    ) {
        let gname = plan.group_name.clone();
        let members: Vec<Guid> = group
            .member_guids
            .iter()
            .filter(|g| !plan.remove_members.contains(g))
            .chain(plan.add_members.iter())
            .cloned()
            .collect();
        let nested: Vec<Guid> = group
            .nested_guids
            .iter()
            .filter(|g| !plan.remove_nested.contains(g))
            .chain(plan.add_nested.iter())
            .cloned()
            .collect();
        let reach = access::expand(&self.by_guid, &members, &nested);
        for r in &self.principals {
            let short = r.short_names.first().cloned().unwrap_or_default();
            if plan.uses_member_uid
                && r.kind == RecordType::User
                && !short.is_empty()
                && (replaced.contains_key(&r.guid) || !reach.contains(&r.guid))
                && !group.member_names.contains(&short)
                && !plan.add_names.contains(&short)
            {
                plan.add_names.push(short.clone());
            }
            if reach.contains(&r.guid) {
                continue;
            }
            plan.add_members.push(r.guid.clone());
            let mut f = RecordProblem::for_record(r, problem::NOT_IN_ACCESS_GROUP, Severity::Fix);
            f.detail = if group.member_names.contains(&short) {
                format!("listed in group {gname} by short name only; the server goes by GUID")
            } else {
                format!("not a member of group {gname} (nested groups included)")
            };
            f.action = if plan.uses_member_uid && r.kind == RecordType::User {
                format!(
                    "add GUID {} and short name {short} to group {gname}",
                    r.guid
                )
            } else {
                format!("add GUID {} to group {gname}", r.guid)
            };
            findings.push(f);
        }
    }

    /// augments.xml (3+): records kept under old GUIDs, then the records it leaves disabled.
    fn augments(&self, path: &Path, findings: &mut Vec<RecordProblem>) -> Result<AugmentsPlan> {
        let file = AugmentsFile::read(path)?;
        let (rewrites, claimed) = self.stale_augments(&file, findings);
        let additions = self.missing_augments(&file, &claimed, findings);
        Ok(AugmentsPlan {
            path: path.to_path_buf(),
            rewrites,
            additions,
            file: Some(file),
        })
    }

    /// Augment records whose uid is an old GUID: rewritten to the new GUID the mapping finds
    /// (unless it has a record of its own). Returns the rewrites and the new GUIDs they claim.
    fn stale_augments(
        &self,
        file: &AugmentsFile,
        findings: &mut Vec<RecordProblem>,
    ) -> (Vec<UidRewrite>, Vec<Guid>) {
        let mut rewrites: Vec<UidRewrite> = Vec::new();
        let mut claimed: Vec<Guid> = Vec::new();
        for rec in &file.records {
            let Some(uid_field) = rec.field("uid") else {
                continue;
            };
            let Some(g) = Guid::parse(&uid_field.text) else {
                continue;
            };
            if self.by_guid.contains_key(&g) {
                continue;
            }
            let res = self.resolve(&g);
            let at = format!("{}:{}", file.name, rec.line);
            match (&res.outcome, &res.target) {
                (mapping::Verdict::Mapped | mapping::Verdict::Unchanged, Some(t)) => {
                    let Some(target) = self.by_guid.get(&t.guid) else {
                        continue;
                    };
                    let own = file.exact(t.guid.as_str()).is_some() || claimed.contains(&t.guid);
                    let mut f = RecordProblem::for_record(
                        target,
                        problem::STALE_AUGMENT,
                        if own { Severity::Note } else { Severity::Fix },
                    );
                    f.detail = format!("{at}: record for old GUID {g}");
                    if own {
                        f.action =
                            format!("kept; the new GUID {} already has its own record", t.guid);
                    } else {
                        f.action = format!("rewrite <uid> {g} to {}", t.guid);
                        claimed.push(t.guid.clone());
                        rewrites.push(UidRewrite {
                            old: uid_field.text.clone(),
                            new: t.guid.clone(),
                            line: rec.line,
                            span: uid_field.text_span.clone(),
                        });
                    }
                    findings.push(resolved(f, &res));
                }
                (mapping::Verdict::Ambiguous, _) => {
                    let mut f = RecordProblem::for_guid(
                        g.as_str(),
                        problem::AMBIGUOUS_AUGMENT,
                        Severity::Warning,
                    );
                    f.detail = format!("{at}: candidates: {}", res.candidates.join("; "));
                    f.action = "kept; name the right record in [rewrite] mapping_file".into();
                    findings.push(resolved(f, &res));
                }
                _ => {
                    let mut f = RecordProblem::for_guid(
                        g.as_str(),
                        problem::UNMATCHED_AUGMENT,
                        Severity::Note,
                    );
                    f.detail = format!("{at}: record for a GUID no current record has");
                    f.action = "kept".into();
                    findings.push(resolved(f, &res));
                }
            }
        }
        (rewrites, claimed)
    }

    /// The records augments.xml leaves without calendaring: a new record each (as `[provision]`
    /// says), unless their own record disables it on purpose.
    fn missing_augments(
        &self,
        file: &AugmentsFile,
        claimed: &[Guid],
        findings: &mut Vec<RecordProblem>,
    ) -> Vec<NewRecord> {
        let cfg = self.cfg;
        let mut additions = Vec::new();
        for r in &self.principals {
            if claimed.contains(&r.guid) {
                continue;
            }
            let (on, decided_by, own) = file.calendar_enabled(&r.guid, r.kind);
            if on {
                continue;
            }
            if own {
                let mut f = RecordProblem::for_record(r, problem::AUGMENT_DISABLES, Severity::Note);
                f.detail = "its own augment record disables calendaring".into();
                f.action =
                    "kept (an explicit choice; edit augments.xml by hand to change it)".into();
                findings.push(f);
                continue;
            }
            let room = matches!(r.kind, RecordType::Location | RecordType::Resource);
            let rec = NewRecord {
                guid: r.guid.clone(),
                kind: r.kind,
                enable_calendar: cfg.provision.enable_calendar,
                enable_addressbook: cfg.provision.enable_addressbook,
                auto_schedule: room && cfg.provision.auto_schedule_rooms,
            };
            let mut f = RecordProblem::for_record(r, problem::NO_AUGMENT, Severity::Fix);
            f.detail = format!(
                "no augment record; record `{}` disables calendaring",
                decided_by.unwrap_or_default()
            );
            f.action = format!(
                "add record (enable-calendar {}, enable-addressbook {}{})",
                rec.enable_calendar,
                rec.enable_addressbook,
                if rec.auto_schedule {
                    ", auto-schedule"
                } else {
                    ""
                }
            );
            if !cfg.provision.enable_calendar {
                f.severity = Severity::Warning;
                f.action = "none: [provision] enable_calendar = false".into();
            } else {
                additions.push(rec);
            }
            findings.push(f);
        }
        additions
    }

    /// Records without an e-mail address, addresses on several records, duplicate GUIDs.
    fn emails_and_duplicates(&self, findings: &mut Vec<RecordProblem>) {
        let current = self.current;
        for r in &self.principals {
            if r.emails.is_empty() {
                let mut f = RecordProblem::for_record(r, problem::NO_EMAIL, Severity::Warning);
                f.detail = "no e-mail address: the server gives it no mailto: address, so invitations by e-mail cannot reach it".into();
                f.action = "none (add an e-mail address in the directory)".into();
                findings.push(f);
            }
        }
        let mut by_mail: BTreeMap<&str, Vec<&DirectoryRecord>> = BTreeMap::new();
        for r in &current.records {
            for e in &r.emails {
                let list = by_mail.entry(e.as_str()).or_default();
                if !list.iter().any(|x| x.guid == r.guid) {
                    list.push(r);
                }
            }
        }
        for (mail, recs) in &by_mail {
            if recs.len() < 2 {
                continue;
            }
            for r in recs {
                let others: Vec<String> = recs
                    .iter()
                    .filter(|o| o.guid != r.guid)
                    .map(|o| {
                        format!(
                            "{} {} ({})",
                            o.kind,
                            o.short_names.first().map(String::as_str).unwrap_or(""),
                            o.guid
                        )
                    })
                    .collect();
                let mut f = RecordProblem::for_record(r, problem::DUPLICATE_EMAIL, Severity::Error);
                f.detail = format!("e-mail {mail} is also on {}", others.join(", "));
                f.action = "none: give each record its own address in the directory".into();
                findings.push(f);
            }
        }
        for (g, skipped, first) in duplicate_guids(current) {
            let mut f = match self.by_guid.get(&g) {
                Some(r) => RecordProblem::for_record(r, problem::DUPLICATE_GUID, Severity::Error),
                None => {
                    RecordProblem::for_guid(g.as_str(), problem::DUPLICATE_GUID, Severity::Error)
                }
            };
            f.detail = format!("GUID {g} is on {first} and on {skipped} (the second was ignored)");
            f.action = "none: give each record its own GUID in the directory".into();
            findings.push(f);
        }
    }
}

/// A resolver for [`plan_db_rewrite`] backed by the mapping's rules: the current GUID for an old
/// or current GUID (mapped or unchanged), `None` for ambiguous, unmatched or external ones.
/// (Kept for callers of the library: [`Mapper::guid_resolver`].)
pub fn guid_resolver<'m, 'a: 'm>(mapper: &'m Mapper<'a>) -> impl Fn(&Guid) -> Option<Guid> + 'm {
    mapper.guid_resolver()
}

/// Loads the directories as configured and analyses them: the findings for report.html.
pub fn findings(cfg: &Config) -> Result<ProvisionReport> {
    let (current, old) = crate::plan::load_directories(cfg)?;
    analyse(cfg, &current, &old)
}

/// A CSV cell a spreadsheet will not execute.
fn cell(s: &str) -> String {
    match s.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@') => format!("'{s}"),
        _ => s.to_string(),
    }
}

/// The CSV columns of provision.csv.
pub const CSV_HEADER: [&str; 10] = [
    "guid",
    "short_name",
    "full_name",
    "type",
    "problem",
    "severity",
    "detail",
    "action",
    "rule",
    "evidence",
];

/// provision.csv as bytes.
pub fn csv_bytes(report: &ProvisionReport) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let e = |e: csv::Error| Error::runtime(format!("CSV: {e}"));
    w.write_record(CSV_HEADER).map_err(e)?;
    for f in &report.findings {
        w.write_record(
            [
                &f.guid,
                &f.short_name,
                &f.full_name,
                &f.kind,
                f.problem,
                f.severity.as_str(),
                &f.detail,
                &f.action,
                &f.rule,
                &f.evidence,
            ]
            .iter()
            .map(|c| cell(c)),
        )
        .map_err(e)?;
    }
    w.into_inner()
        .map_err(|e| Error::runtime(format!("CSV: {e}")))
}

/// Writes provision.csv into `dir` (atomically); returns its path.
pub fn write_csv(report: &ProvisionReport, out: &crate::config::ReportConfig) -> Result<PathBuf> {
    let path = out.dir.join(CSV_FILE);
    crate::fsutil::write_atomic(
        &path,
        &crate::report::with_bom(out.csv_bom, csv_bytes(report)?),
    )?;
    Ok(path)
}

/// What `--apply` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Applied {
    /// Changes made to the access group over LDAP; None when none were made that way.
    pub ldap: Option<access::LdapApplied>,
    /// dsimport file written for the access group (to import by hand).
    pub dsimport: Option<PathBuf>,
    /// The augments.xml written; None when it was not changed.
    pub augments_file: Option<PathBuf>,
    /// SHA-256 of the original augments.xml saved in the state folder's backups.
    pub augments_backup: Option<String>,
    /// The journal run that wrote augments.xml (`rollback --run N` restores it).
    pub augments_run: Option<i64>,
    /// augments.xml records added.
    pub augments_added: usize,
    /// augments.xml records rewritten to new GUIDs.
    pub augments_rewritten: usize,
}

/// Carries out a report's changes.
pub fn apply(cfg: &Config, report: &ProvisionReport) -> Result<Applied> {
    let mut done = Applied::default();
    if let Some(plan) = report.access.as_ref().filter(|p| !p.is_empty()) {
        let live = cfg.directory.url.is_some();
        if live && cfg.provision.output.is_none() {
            done.ldap = Some(access::apply_ldap(&cfg.directory, plan)?);
        } else {
            let path = cfg
                .provision
                .output
                .clone()
                .unwrap_or_else(|| cfg.report.dir.join(DSIMPORT_FILE));
            crate::fsutil::write_atomic(&path, access::dsimport_text(plan).as_bytes())?;
            done.dsimport = Some(path);
        }
    }
    if let Some(plan) = report.augments.as_ref().filter(|p| !p.is_empty()) {
        let file = match &plan.file {
            Some(f) => f.clone(),
            None => AugmentsFile::read(&plan.path)?,
        };
        // The file must still be what was analysed.
        let now = std::fs::read(&plan.path).map_err(|e| Error::io("cannot read", &plan.path, e))?;
        if now != file.text.as_bytes() {
            return Err(Error::runtime(format!(
                "{} changed while provision ran; nothing written to it (run provision again)",
                plan.path.display()
            )));
        }
        let new_text = augments::edit(&file, &plan.rewrites, &plan.additions);
        // Never write what the server could not read.
        AugmentsFile::parse(new_text.clone(), &plan.path.display().to_string()).map_err(|e| {
            Error::runtime(format!("internal error: the edited augments file is not well-formed ({e}); nothing written"))
        })?;
        let (run, sha) = crate::journal::journaled_file_write(
            &cfg.state.path,
            "provision",
            &plan.path,
            new_text.as_bytes(),
        )?;
        done.augments_run = Some(run);
        done.augments_file = Some(plan.path.clone());
        done.augments_backup = Some(sha);
        done.augments_added = plan.additions.len();
        done.augments_rewritten = plan.rewrites.len();
    }
    Ok(done)
}
