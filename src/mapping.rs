//! Mapping: every old address or GUID found in the store to a current directory record.
//!
//! Each address is resolved through fixed rules, in order, and the rule and its evidence are kept
//! for the reports:
//! 1. `override` — `[rewrite] mapping_file` (see [`crate::mapping_file`]) wins over everything;
//!    its `-` rows and `[rewrite] leavers` acknowledge people who left (`acknowledged`);
//! 2. `same-guid` — the GUID still exists in the current directory;
//! 3. `old-export-guid` — old GUID → old export record → its short names → current record;
//! 4. `principal-name` — principal URL with a short name → current record with that short name;
//! 5. `old-export-mail` / `current-mail` / `domain-alias` — a `mailto:` through the old export,
//!    then the current directory, then after `[[rewrite.domain_alias]]`;
//! 6. `store-evidence` — a GUID value whose lines unanimously carry one EMAIL parameter.
//!
//! Outcomes: `unchanged` (already canonical), `mapped`, `ambiguous` (several candidates; never
//! rewritten), `unmatched` (internal, no candidate), `external` (never touched), `acknowledged`
//! (a person who left, said so by the admin: never touched, not a problem). Deterministic:
//! the same inputs give the same mapping.

use crate::address::{AddressForm, CalAddress, Guid, Principal, RecordType};
use crate::config::Config;
use crate::directory::{Directory, DirectoryRecord};
use crate::error::{Error, Result};
use crate::state::plan_rows;
use crate::store::{self, Home};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
/// How one address resolved, as written in the `outcome` column of the reports.
pub enum Verdict {
    /// `unchanged`: already in the canonical form for its current record.
    Unchanged,
    /// `mapped`: resolved to one current record and rewritten.
    Mapped,
    /// `ambiguous`: several candidate records; never rewritten.
    Ambiguous,
    /// `unmatched`: an internal address with no candidate record.
    Unmatched,
    /// `external`: outside the internal domains or not a principal form; never touched.
    External,
    /// `acknowledged`: a leaver named by the admin; never touched, not a problem.
    Acknowledged,
}

impl Verdict {
    /// Every outcome, in report order.
    pub const ALL: [Verdict; 6] = [
        Self::Unchanged,
        Self::Mapped,
        Self::Ambiguous,
        Self::Unmatched,
        Self::External,
        Self::Acknowledged,
    ];

    /// The stored word for this outcome (`unchanged`, `mapped`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unchanged => "unchanged",
            Self::Mapped => "mapped",
            Self::Ambiguous => "ambiguous",
            Self::Unmatched => "unmatched",
            Self::External => "external",
            Self::Acknowledged => "acknowledged",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
/// Which mapping rule decided an address, as written in the `rule` column of the reports.
pub enum Rule {
    /// `override`: a row of `[rewrite] mapping_file` or a `[rewrite] leavers` entry.
    Override,
    /// `same-guid`: the GUID still exists in the current directory.
    SameGuid,
    /// `old-export-guid`: old GUID → old export record → its short names → current record.
    OldExportGuid,
    /// `principal-name`: a principal URL's short name names a current record.
    PrincipalName,
    /// `old-export-mail`: a `mailto:` found in the old export, then followed to a current record.
    OldExportMail,
    /// `current-mail`: a `mailto:` found directly in the current directory.
    CurrentMail,
    /// `domain-alias`: a `mailto:` found after applying `[[rewrite.domain_alias]]`.
    DomainAlias,
    /// `store-evidence`: a GUID whose lines unanimously carry one EMAIL parameter.
    StoreEvidence,
    /// `outside-domains`: a `mailto:` whose domain is not in `[rewrite] internal_domains`.
    OutsideDomains,
    /// `not-a-principal`: a value in no address form of this server.
    NotAPrincipal,
    /// `no-candidate`: no rule found any record (with `unmatched`).
    NoCandidate,
    /// `leaver`: the address belongs to a `[rewrite] leavers` entry.
    Leaver,
}

impl Rule {
    /// The stored word for this rule (kebab-case, e.g. `same-guid`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Override => "override",
            Self::SameGuid => "same-guid",
            Self::OldExportGuid => "old-export-guid",
            Self::PrincipalName => "principal-name",
            Self::OldExportMail => "old-export-mail",
            Self::CurrentMail => "current-mail",
            Self::DomainAlias => "domain-alias",
            Self::StoreEvidence => "store-evidence",
            Self::OutsideDomains => "outside-domains",
            Self::NotAPrincipal => "not-a-principal",
            Self::NoCandidate => "no-candidate",
            Self::Leaver => "leaver",
        }
    }
}

/// What the store says about one distinct address.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Resources that mention it.
    pub resources: usize,
    /// EMAIL parameter values seen on lines carrying it, with counts (lower-cased).
    pub emails: BTreeMap<String, usize>,
}

/// How one address resolved.
#[derive(Clone, Debug, Serialize)]
pub struct Resolution {
    /// Normalised key of the address ([`CalAddress::key`]).
    pub old_value: String,
    /// Address form of the old value (`mailto`, `urn:uuid`, `principal-name`, ...; [`crate::address::AddressKind::as_str`]).
    pub form: &'static str,
    /// How the address resolved.
    pub outcome: Verdict,
    /// Which rule decided it.
    pub rule: Rule,
    /// Human-readable evidence for the decision (e.g. which record or domain).
    pub evidence: String,
    /// The current principal it maps to (mapped and unchanged only; else None).
    pub target: Option<Principal>,
    /// The canonical value written for it (mapped and unchanged only).
    pub new_value: Option<String>,
    /// Ambiguous: the candidates, as `GUID (short name)`.
    pub candidates: Vec<String>,
    /// Resources in the store that mention the address.
    pub resources: usize,
}

/// One line of the override file, or one `[rewrite] leavers` entry.
#[derive(Clone, Debug)]
struct Override {
    /// Matches addresses with this key, or any address naming this GUID.
    old_key: Option<String>,
    old_guid: Option<Guid>,
    /// The current record it becomes; `None`: a person who left (leave it as it is).
    target: Option<usize>,
    at: String,
}

/// `[rewrite] internal_domains` must be set whenever an address can be resolved by its
/// `mailto:` (any directory record has an e-mail address): an empty list never means "every
/// domain is internal" — that rewrote external partners to whoever in the directory shared their
/// address. A usage error (exit 2) names the key and the domains the directories use.
fn require_internal_domains(cfg: &Config, current: &Directory, old: &Directory) -> Result<()> {
    if !cfg.rewrite.internal_domains.is_empty() {
        return Ok(());
    }
    let mut domains: std::collections::BTreeMap<String, usize> = Default::default();
    for r in current.records.iter().chain(old.records.iter()) {
        for e in &r.emails {
            if let Some((_, d)) = e.rsplit_once('@') {
                *domains.entry(d.to_ascii_lowercase()).or_default() += 1;
            }
        }
    }
    if domains.is_empty() {
        return Ok(()); // no address can be matched by mail: nothing to decide
    }
    let mut by_count: Vec<(String, usize)> = domains.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let seen: Vec<String> = by_count
        .iter()
        .take(8)
        .map(|(d, n)| format!("{d} ({n})"))
        .collect();
    Err(Error::usage(format!(
        "{}: [rewrite] internal_domains is not set, and mailto: addresses can be matched to directory records by their e-mail; list your organisation's mail domains, e.g. internal_domains = [\"{}\"] (addresses at other domains are never rewritten). The directories' records use: {}",
        cfg.source.display(),
        by_count[0].0,
        seen.join(", ")
    )))
}

impl Override {
    fn matches(&self, key: &str, guid: Option<&Guid>) -> bool {
        self.old_key.as_deref() == Some(key)
            || (self.old_guid.is_some() && self.old_guid.as_ref() == guid)
    }
}

/// Indices over the current and old directories; resolves addresses.
pub struct Mapper<'a> {
    current: &'a [DirectoryRecord],
    old: &'a [DirectoryRecord],
    form: AddressForm,
    internal: Vec<String>,
    aliases: Vec<(String, String)>,
    overrides: Vec<Override>,
    /// Mapping-file rows skipped (no target, repeated): shown with the plan.
    pub warnings: Vec<String>,
    cur_by_guid: HashMap<&'a Guid, usize>,
    cur_by_short: HashMap<String, Vec<usize>>,
    cur_by_mail: HashMap<&'a str, Vec<usize>>,
    old_by_guid: HashMap<&'a Guid, Vec<usize>>,
    old_by_mail: HashMap<&'a str, Vec<usize>>,
}

/// A lookup's result before it becomes a [`Resolution`].
enum Found {
    One(usize, Rule, String),
    Many(Vec<usize>, Rule, String),
    /// Acknowledged as a person who left (where it was said).
    Leaver(String),
    None,
}

fn push_unique(v: &mut Vec<usize>, i: usize) {
    if !v.contains(&i) {
        v.push(i);
    }
}

impl<'a> Mapper<'a> {
    /// Builds a mapper from the configuration's rewrite rules and overrides and the current and old directories.
    pub fn new(cfg: &Config, current: &'a Directory, old: &'a Directory) -> Result<Mapper<'a>> {
        require_internal_domains(cfg, current, old)?;
        let mut m = Mapper {
            current: &current.records,
            old: &old.records,
            form: cfg.rewrite.address_form,
            internal: cfg
                .rewrite
                .internal_domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            aliases: cfg
                .rewrite
                .domain_alias
                .iter()
                .map(|a| (a.from.to_ascii_lowercase(), a.to.to_ascii_lowercase()))
                .collect(),
            overrides: Vec::new(),
            warnings: Vec::new(),
            cur_by_guid: HashMap::new(),
            cur_by_short: HashMap::new(),
            cur_by_mail: HashMap::new(),
            old_by_guid: HashMap::new(),
            old_by_mail: HashMap::new(),
        };
        for (i, r) in current.records.iter().enumerate() {
            m.cur_by_guid.entry(&r.guid).or_insert(i);
            for s in &r.short_names {
                push_unique(m.cur_by_short.entry(s.to_lowercase()).or_default(), i);
            }
            for e in &r.emails {
                push_unique(m.cur_by_mail.entry(e.as_str()).or_default(), i);
            }
        }
        for (i, r) in old.records.iter().enumerate() {
            push_unique(m.old_by_guid.entry(&r.guid).or_default(), i);
            for e in &r.emails {
                push_unique(m.old_by_mail.entry(e.as_str()).or_default(), i);
            }
        }
        if let Some(path) = &cfg.rewrite.mapping_file {
            let file = crate::mapping_file::read(path)?;
            m.warnings = file.warnings.clone();
            m.overrides = m.resolve_overrides(&file)?;
        }
        for (i, l) in cfg.rewrite.leavers.iter().enumerate() {
            let old = crate::mapping_file::old_address(l);
            let (old_key, old_guid) = Self::override_key(&old);
            m.overrides.push(Override {
                old_key,
                old_guid,
                target: None,
                at: format!("[rewrite] leavers entry {}", i + 1),
            });
        }
        Ok(m)
    }

    fn override_key(old: &str) -> (Option<String>, Option<Guid>) {
        let old_guid = Guid::parse(old);
        let old_key = if old_guid.is_some() {
            None
        } else {
            Some(CalAddress::parse(old).key())
        };
        (old_key, old_guid)
    }

    /// The mapping file's targets resolved against the current directory.
    fn resolve_overrides(&self, file: &crate::mapping_file::MappingFile) -> Result<Vec<Override>> {
        use crate::mapping_file::Target;
        let mut out = Vec::new();
        for row in &file.rows {
            let at = &row.at;
            let target = match &row.target {
                Target::Leaver => None,
                Target::Record(new) => Some(
                    match Guid::parse(new).and_then(|g| self.cur_by_guid.get(&g).copied()) {
                        Some(i) => i,
                        None => match self.cur_by_short.get(&new.to_lowercase()).map(Vec::as_slice) {
                            Some([i]) => *i,
                            Some(many) => {
                                return Err(Error::usage(format!(
                                    "{at}: `{new}` names {} current records; use the GUID",
                                    many.len()
                                )))
                            }
                            None => {
                                return Err(Error::usage(format!(
                                    "{at}: `{new}` is neither the GUID nor the short name of a current directory record"
                                )))
                            }
                        },
                    },
                ),
            };
            let (old_key, old_guid) = Self::override_key(&row.old);
            out.push(Override {
                old_key,
                old_guid,
                target,
                at: at.clone(),
            });
        }
        Ok(out)
    }

    /// Mapping-file rows and leavers entries that name no address of `mapping` (typos, people
    /// with nothing in the store): warnings for the plan.
    pub fn unused_overrides(&self, mapping: &Mapping) -> Vec<String> {
        let keys: Vec<(&str, Option<Guid>)> = mapping
            .entries
            .values()
            .map(|r| (r.old_value.as_str(), parse_found(&r.old_value).guid()))
            .collect();
        self.overrides
            .iter()
            .filter(|o| !keys.iter().any(|(k, g)| o.matches(k, g.as_ref())))
            .map(|o| {
                let what = o
                    .old_key
                    .clone()
                    .or_else(|| o.old_guid.as_ref().map(|g| g.to_string()))
                    .unwrap_or_default();
                format!("{}: {what} matches no address in the store", o.at)
            })
            .collect()
    }

    /// Whether a mail domain is the organisation's (`[rewrite] internal_domains`, or the old
    /// side of a `domain_alias`). With no internal domain configured nothing is internal.
    pub fn is_internal(&self, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        self.internal
            .iter()
            .any(|d| domain == *d || domain.ends_with(&format!(".{d}")))
            || self.aliases.iter().any(|(from, _)| domain == *from)
    }

    fn describe(&self, i: usize) -> String {
        let r = &self.current[i];
        format!(
            "{} ({})",
            r.guid,
            r.short_names.first().map(String::as_str).unwrap_or("?")
        )
    }

    /// Current records with one of `names` as a short name, preferring records of `kind`.
    fn by_short_names(&self, names: &[String], kind: Option<RecordType>) -> Vec<usize> {
        let mut all = Vec::new();
        for n in names {
            for &i in self
                .cur_by_short
                .get(&n.to_lowercase())
                .into_iter()
                .flatten()
            {
                push_unique(&mut all, i);
            }
        }
        let same: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&i| Some(self.current[i].kind) == kind)
            .collect();
        if same.is_empty() {
            all
        } else {
            same
        }
    }

    fn found(cands: Vec<usize>, rule: Rule, evidence: String) -> Found {
        match cands.len() {
            0 => Found::None,
            1 => Found::One(cands[0], rule, evidence),
            _ => Found::Many(cands, rule, evidence),
        }
    }

    /// Rule 3: an old GUID through the old export's records.
    fn via_old_guid(&self, guid: &Guid) -> Found {
        let Some(olds) = self.old_by_guid.get(guid) else {
            return Found::None;
        };
        let mut cands = Vec::new();
        let mut evidence = Vec::new();
        for &o in olds {
            let rec = &self.old[o];
            let found = self.by_short_names(&rec.short_names, Some(rec.kind));
            evidence.push(format!(
                "old record {} short name {}",
                rec.source,
                rec.short_names.join("/")
            ));
            for i in found {
                push_unique(&mut cands, i);
            }
        }
        Self::found(cands, Rule::OldExportGuid, evidence.join("; "))
    }

    /// Rule 5: a mail address through the old export, the current directory, then domain aliases.
    fn via_mail(&self, mail: &str) -> Found {
        if let Some(olds) = self.old_by_mail.get(mail) {
            let mut cands = Vec::new();
            let mut evidence = Vec::new();
            for &o in olds {
                let rec = &self.old[o];
                evidence.push(format!(
                    "old record {} short name {}",
                    rec.source,
                    rec.short_names.join("/")
                ));
                for i in self.by_short_names(&rec.short_names, Some(rec.kind)) {
                    push_unique(&mut cands, i);
                }
            }
            if !cands.is_empty() {
                return Self::found(cands, Rule::OldExportMail, evidence.join("; "));
            }
        }
        if let Some(c) = self.cur_by_mail.get(mail) {
            return Self::found(
                c.clone(),
                Rule::CurrentMail,
                format!("current record with mail {mail}"),
            );
        }
        if let Some((local, domain)) = mail.rsplit_once('@') {
            for (from, to) in &self.aliases {
                if domain == from {
                    let aliased = format!("{local}@{to}");
                    if let Some(c) = self.cur_by_mail.get(aliased.as_str()) {
                        return Self::found(
                            c.clone(),
                            Rule::DomainAlias,
                            format!("{from} → {to}: current record with mail {aliased}"),
                        );
                    }
                }
            }
        }
        Found::None
    }

    fn lookup(&self, addr: &CalAddress, seen: &Observed) -> Found {
        let key = addr.key();
        let guid = addr.guid();
        for o in &self.overrides {
            if o.matches(&key, guid.as_ref()) {
                return match o.target {
                    Some(t) => Found::One(t, Rule::Override, format!("mapping_file {}", o.at)),
                    None => Found::Leaver(o.at.clone()),
                };
            }
        }
        if let Some(g) = &guid {
            if let Some(&i) = self.cur_by_guid.get(g) {
                return Found::One(
                    i,
                    Rule::SameGuid,
                    format!("GUID {g} is in the current directory"),
                );
            }
            match self.via_old_guid(g) {
                Found::None => {}
                f => return f,
            }
        }
        match addr {
            CalAddress::PrincipalName { kind, short, .. } => {
                let c = self.by_short_names(std::slice::from_ref(short), Some(*kind));
                let c: Vec<usize> = c
                    .into_iter()
                    .filter(|&i| self.current[i].kind == *kind)
                    .collect();
                return Self::found(
                    c,
                    Rule::PrincipalName,
                    format!("current {kind} with short name {short}"),
                );
            }
            CalAddress::Mailto(mail) => return self.via_mail(mail),
            _ => {}
        }
        if guid.is_some() {
            let internal: Vec<(&String, &usize)> = seen
                .emails
                .iter()
                .filter(|(e, _)| e.rsplit_once('@').is_some_and(|(_, d)| self.is_internal(d)))
                .collect();
            if let [(mail, n)] = internal.as_slice() {
                if seen.emails.len() == 1 {
                    return match self.via_mail(mail) {
                        Found::One(i, r, ev) => Found::One(
                            i,
                            Rule::StoreEvidence,
                            format!("EMAIL={mail} on {n} line(s), then {}: {ev}", r.as_str()),
                        ),
                        Found::Many(c, r, ev) => Found::Many(
                            c,
                            Rule::StoreEvidence,
                            format!("EMAIL={mail} on {n} line(s), then {}: {ev}", r.as_str()),
                        ),
                        other => other,
                    };
                }
            }
        }
        Found::None
    }

    /// Resolves one address.
    pub fn resolve(&self, addr: &CalAddress, seen: &Observed) -> Resolution {
        let key = addr.key();
        let mut res = Resolution {
            old_value: key.clone(),
            form: addr.kind().as_str(),
            outcome: Verdict::Unmatched,
            rule: Rule::NoCandidate,
            evidence: String::new(),
            target: None,
            new_value: None,
            candidates: Vec::new(),
            resources: seen.resources,
        };
        let guid = addr.guid();
        let overridden = self
            .overrides
            .iter()
            .any(|o| o.matches(&key, guid.as_ref()));
        if !overridden {
            match addr {
                CalAddress::Other(_) => {
                    res.outcome = Verdict::External;
                    res.rule = Rule::NotAPrincipal;
                    res.evidence = "not an address form of this server".into();
                    return res;
                }
                CalAddress::Mailto(_) => {
                    let domain = addr.domain().unwrap_or("");
                    if !self.is_internal(domain) {
                        res.outcome = Verdict::External;
                        res.rule = Rule::OutsideDomains;
                        res.evidence = format!("domain {domain} is not in internal_domains");
                        return res;
                    }
                }
                _ => {}
            }
        }
        match self.lookup(addr, seen) {
            Found::One(i, rule, evidence) => {
                let p = self.current[i].principal();
                let value = p.canonical_address(self.form, addr);
                res.outcome = if value == addr.to_string() {
                    Verdict::Unchanged
                } else {
                    Verdict::Mapped
                };
                res.rule = rule;
                res.evidence = evidence;
                res.new_value = Some(value);
                res.target = Some(p);
            }
            Found::Many(mut c, rule, evidence) => {
                c.sort_by(|a, b| self.current[*a].guid.cmp(&self.current[*b].guid));
                res.outcome = Verdict::Ambiguous;
                res.rule = rule;
                res.evidence = evidence;
                res.candidates = c.iter().map(|&i| self.describe(i)).collect();
            }
            Found::Leaver(at) => {
                res.outcome = Verdict::Acknowledged;
                res.rule = Rule::Leaver;
                res.evidence = format!("a person who left ({at}): left as it is");
            }
            Found::None => {
                res.evidence = match addr {
                    CalAddress::Mailto(m) => format!("no old or current record has mail {m}"),
                    _ if addr.guid().is_some() => {
                        "GUID is in neither the current directory nor the old export".to_string()
                    }
                    _ => "no current record with that short name".to_string(),
                };
            }
        }
        res
    }
}

/// The mapping of every distinct address the store holds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Mapping {
    /// By normalised address key (sorted: deterministic reports).
    pub entries: BTreeMap<String, Resolution>,
}

impl Mapping {
    /// Resolves every observed address.
    pub fn build(
        mapper: &Mapper<'_>,
        observed: &BTreeMap<String, (CalAddress, Observed)>,
    ) -> Mapping {
        let entries = observed
            .iter()
            .map(|(key, (addr, seen))| (key.clone(), mapper.resolve(addr, seen)))
            .collect();
        Mapping { entries }
    }

    /// The table the rewriter uses: mapped and unchanged addresses → their principal.
    pub fn resolver(&self) -> HashMap<String, Principal> {
        self.entries
            .iter()
            .filter(|(_, r)| matches!(r.outcome, Verdict::Mapped | Verdict::Unchanged))
            .filter_map(|(k, r)| r.target.clone().map(|p| (k.clone(), p)))
            .collect()
    }

    /// Number of resolved addresses per outcome word, every outcome present (zero included).
    pub fn counts_by_outcome(&self) -> BTreeMap<&'static str, usize> {
        let mut m: BTreeMap<&'static str, usize> =
            Verdict::ALL.iter().map(|o| (o.as_str(), 0)).collect();
        for r in self.entries.values() {
            *m.entry(r.outcome.as_str()).or_default() += 1;
        }
        m
    }

    /// Number of resolved addresses per rule word (only rules that were used).
    pub fn counts_by_rule(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for r in self.entries.values() {
            *m.entry(r.rule.as_str()).or_default() += 1;
        }
        m
    }

    /// Keys with the given outcome, sorted.
    pub fn with_outcome(&self, o: Verdict) -> BTreeSet<&str> {
        self.entries
            .iter()
            .filter(|(_, r)| r.outcome == o)
            .map(|(k, _)| k.as_str())
            .collect()
    }
}

/// Adds one occurrence of an address (as written in a calendar) to the observations.
/// Bare GUIDs (X-CALENDARSERVER-PERUSER-UID values) count as `urn:uuid:` addresses.
pub fn parse_found(value: &str) -> CalAddress {
    match CalAddress::parse(value) {
        CalAddress::Other(s) => match Guid::parse(&s) {
            Some(g) => CalAddress::UrnUuid(g),
            None => CalAddress::Other(s),
        },
        a => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, DomainAlias};
    use std::path::Path;

    fn rec(
        kind: RecordType,
        guid: &str,
        short: &str,
        full: &str,
        mail: &[&str],
    ) -> DirectoryRecord {
        DirectoryRecord {
            kind,
            guid: Guid::parse(guid).unwrap(),
            short_names: vec![short.into()],
            full_name: Some(full.into()),
            emails: mail.iter().map(|m| m.to_string()).collect(),
            member_guids: vec![],
            member_names: vec![],
            nested_guids: vec![],
            source: format!("uid={short}"),
        }
    }

    const NEW_JANE: &str = "11111111-0000-0000-0000-000000000001";
    const OLD_JANE: &str = "AAAAAAAA-0000-0000-0000-000000000001";
    const NEW_BOB: &str = "11111111-0000-0000-0000-000000000002";
    const OLD_BOB: &str = "AAAAAAAA-0000-0000-0000-000000000002";
    const NEW_ROOM: &str = "11111111-0000-0000-0000-0000000000F1";
    const OLD_GONE: &str = "AAAAAAAA-0000-0000-0000-0000000000FF";

    fn fixture() -> (Config, Directory, Directory) {
        let mut cfg = Config::parse(
            "[directory]\nldif = \"x\"\n[store]\npath = \"s\"\n[rewrite]\ninternal_domains = [\"example.com\"]\n",
            Path::new("/tmp/c.toml"),
        )
        .unwrap();
        cfg.rewrite.domain_alias.push(DomainAlias {
            from: "old.example.com".into(),
            to: "example.com".into(),
        });
        let current = Directory {
            records: vec![
                rec(
                    RecordType::User,
                    NEW_JANE,
                    "jane",
                    "Jane Doe",
                    &["jane@example.com"],
                ),
                rec(
                    RecordType::User,
                    NEW_BOB,
                    "bob",
                    "Bob Roe",
                    &["bob@example.com"],
                ),
                rec(RecordType::Location, NEW_ROOM, "room1", "Room One", &[]),
                rec(
                    RecordType::User,
                    "11111111-0000-0000-0000-000000000003",
                    "sam",
                    "Sam A",
                    &["sam@example.com"],
                ),
                rec(
                    RecordType::User,
                    "11111111-0000-0000-0000-000000000004",
                    "sam2",
                    "Sam B",
                    &["sam@example.com"],
                ),
            ],
            ..Default::default()
        };
        let old = Directory {
            records: vec![
                rec(
                    RecordType::User,
                    OLD_JANE,
                    "jane",
                    "Jane Doe",
                    &["jdoe@example.com"],
                ),
                rec(
                    RecordType::User,
                    OLD_BOB,
                    "bob",
                    "Bob Roe",
                    &["bob@example.com"],
                ),
            ],
            ..Default::default()
        };
        (cfg, current, old)
    }

    fn resolve(m: &Mapper<'_>, s: &str) -> Resolution {
        m.resolve(
            &parse_found(s),
            &Observed {
                resources: 1,
                emails: BTreeMap::new(),
            },
        )
    }

    #[test]
    fn every_rule_and_outcome() {
        let (cfg, cur, old) = fixture();
        let m = Mapper::new(&cfg, &cur, &old).unwrap();
        let r = resolve(&m, &format!("urn:uuid:{NEW_JANE}"));
        assert_eq!((r.outcome, r.rule), (Verdict::Unchanged, Rule::SameGuid));
        let r = resolve(&m, &format!("urn:uuid:{}", OLD_JANE.to_lowercase()));
        assert_eq!((r.outcome, r.rule), (Verdict::Mapped, Rule::OldExportGuid));
        assert_eq!(
            r.new_value.as_deref(),
            Some(format!("urn:uuid:{NEW_JANE}").as_str())
        );
        let r = resolve(&m, &format!("/principals/__uids__/{OLD_BOB}/"));
        assert_eq!((r.outcome, r.rule), (Verdict::Mapped, Rule::OldExportGuid));
        let r = resolve(
            &m,
            "http://cal.example.com:8008/principals/locations/room1/",
        );
        assert_eq!((r.outcome, r.rule), (Verdict::Mapped, Rule::PrincipalName));
        assert_eq!(r.target.unwrap().kind, RecordType::Location);
        let r = resolve(&m, "/principals/users/room1/");
        assert_eq!(
            r.outcome,
            Verdict::Unmatched,
            "a user URL must not map to a room"
        );
        let r = resolve(&m, "mailto:JDOE@example.com");
        assert_eq!((r.outcome, r.rule), (Verdict::Mapped, Rule::OldExportMail));
        let r = resolve(&m, "mailto:bob@example.com");
        assert_eq!((r.outcome, r.rule), (Verdict::Mapped, Rule::OldExportMail));
        let r = resolve(&m, "mailto:jane@old.example.com");
        assert_eq!((r.outcome, r.rule), (Verdict::Mapped, Rule::DomainAlias));
        let r = resolve(&m, "mailto:sam@example.com");
        assert_eq!((r.outcome, r.rule), (Verdict::Ambiguous, Rule::CurrentMail));
        assert_eq!(r.candidates.len(), 2);
        assert!(r.target.is_none());
        let r = resolve(&m, "mailto:someone@partner.org");
        assert_eq!(
            (r.outcome, r.rule),
            (Verdict::External, Rule::OutsideDomains)
        );
        let r = resolve(&m, &format!("urn:uuid:{OLD_GONE}"));
        assert_eq!((r.outcome, r.rule), (Verdict::Unmatched, Rule::NoCandidate));
        let r = resolve(&m, "mailto:left@example.com");
        assert_eq!(r.outcome, Verdict::Unmatched);
        let r = resolve(&m, "tel:+15551234");
        assert_eq!(r.outcome, Verdict::External);
    }

    #[test]
    fn store_evidence_only_when_unanimous() {
        let (cfg, cur, old) = fixture();
        let m = Mapper::new(&cfg, &cur, &old).unwrap();
        let addr = parse_found(&format!("urn:uuid:{OLD_GONE}"));
        let one = Observed {
            resources: 2,
            emails: [("jane@example.com".to_string(), 2)].into(),
        };
        let r = m.resolve(&addr, &one);
        assert_eq!((r.outcome, r.rule), (Verdict::Mapped, Rule::StoreEvidence));
        assert_eq!(r.target.unwrap().guid.as_str(), NEW_JANE);
        let split = Observed {
            resources: 2,
            emails: [
                ("jane@example.com".to_string(), 1),
                ("bob@example.com".to_string(), 1),
            ]
            .into(),
        };
        assert_eq!(m.resolve(&addr, &split).outcome, Verdict::Unmatched);
    }

    #[test]
    fn overrides_win_and_bad_lines_are_named() {
        let (mut cfg, cur, old) = fixture();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("o.csv");
        std::fs::write(
            &f,
            format!("old,new\n# comment\n{OLD_GONE},bob\nmailto:sam@example.com,{NEW_JANE}\n"),
        )
        .unwrap();
        cfg.rewrite.mapping_file = Some(f.clone());
        let m = Mapper::new(&cfg, &cur, &old).unwrap();
        let r = resolve(&m, &format!("urn:x-uid:{OLD_GONE}"));
        assert_eq!((r.outcome, r.rule), (Verdict::Mapped, Rule::Override));
        assert_eq!(r.target.unwrap().short_name, "bob");
        let r = resolve(&m, "mailto:sam@example.com");
        assert_eq!(
            (r.rule, r.target.unwrap().short_name.as_str()),
            (Rule::Override, "jane")
        );
        std::fs::write(&f, "old,new\nmailto:x@example.com,nobody\n").unwrap();
        let err = Mapper::new(&cfg, &cur, &old).err().unwrap();
        assert!(err.message.contains("o.csv:2:"), "{}", err.message);
        assert!(err.message.contains("nobody"), "{}", err.message);
    }

    #[test]
    fn mapping_is_deterministic_and_feeds_the_rewriter() {
        let (cfg, cur, old) = fixture();
        let m = Mapper::new(&cfg, &cur, &old).unwrap();
        let mut observed = BTreeMap::new();
        for s in [
            "mailto:jdoe@example.com",
            "urn:uuid:AAAAAAAA-0000-0000-0000-0000000000FF",
            "mailto:sam@example.com",
        ] {
            let a = parse_found(s);
            observed.insert(
                a.key(),
                (
                    a,
                    Observed {
                        resources: 1,
                        ..Default::default()
                    },
                ),
            );
        }
        let a = Mapping::build(&m, &observed);
        let b = Mapping::build(&m, &observed);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        let resolver = a.resolver();
        assert_eq!(resolver.len(), 1);
        assert!(resolver.contains_key("mailto:jdoe@example.com"));
        assert_eq!(a.counts_by_outcome()["ambiguous"], 1);
    }
}

impl Mapper<'_> {
    /// A resolver of GUIDs (for the principal databases' rewrite) backed by the mapping's rules:
    /// the current GUID for an old or current GUID (mapped or unchanged), `None` for ambiguous,
    /// unmatched or external ones.
    pub fn guid_resolver(&self) -> impl Fn(&Guid) -> Option<Guid> + '_ {
        move |g: &Guid| {
            let res = self.resolve(&CalAddress::UrnUuid(g.clone()), &Observed::default());
            match res.outcome {
                Verdict::Mapped | Verdict::Unchanged => res.target.map(|t| t.guid),
                _ => None,
            }
        }
    }
}

/// What a home's owner resolved to.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HomeFinding {
    /// The calendar home.
    pub home: Home,
    /// `current` (owner GUID unchanged), `moved` (maps to another GUID), `ambiguous` or `unmatched`.
    pub outcome: &'static str,
    /// The current owner's GUID; None when ambiguous or unmatched.
    pub new_guid: Option<String>,
}

/// The address a home's folder name stands for.
pub fn home_address(h: &Home) -> CalAddress {
    match h.layout {
        store::HomeLayout::Users => CalAddress::PrincipalName {
            kind: RecordType::User,
            short: h.id.clone(),
            base: None,
        },
        _ => match Guid::parse(&h.id) {
            Some(g) => CalAddress::UrnUuid(g),
            None => CalAddress::UrnXUid(h.id.clone()),
        },
    }
}

/// What the owner of home `h` resolved to in `mapping`.
pub fn home_finding(mapping: &Mapping, h: &Home) -> HomeFinding {
    let key = home_address(h).key();
    let (outcome, new_guid) = match mapping.entries.get(&key) {
        Some(r) => match (&r.target, r.outcome) {
            (Some(p), _) if Some(&p.guid) == Guid::parse(&h.id).as_ref() => {
                ("current", Some(p.guid.to_string()))
            }
            (Some(p), _) => ("moved", Some(p.guid.to_string())),
            (None, Verdict::Ambiguous) => ("ambiguous", None),
            (None, _) => ("unmatched", None),
        },
        None => ("unmatched", None),
    };
    HomeFinding {
        home: h.clone(),
        outcome,
        new_guid,
    }
}

/// The rows of a resource's changed properties (whole lines kept for the report's examples).
pub fn change_rows(
    changes: &[crate::ical::Change],
    keep_lines: bool,
) -> Vec<plan_rows::ChangeRow<'_>> {
    changes
        .iter()
        .map(|c| plan_rows::ChangeRow {
            line: c.line as i64,
            property: &c.property,
            old_value: &c.old_value,
            new_value: &c.new_value,
            old_line: if keep_lines { &c.old_line } else { "" },
            new_line: if keep_lines { &c.new_line } else { "" },
        })
        .collect()
}
