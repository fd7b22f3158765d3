//! The calendar service access group (2.x `restrictToGroup`, `com.apple.access_calendar`): who is
//! in it (by GUID, nested groups expanded), and writing the missing members to it — over LDAP
//! with batched modifies, or as a dsimport file for a group in the server's local node.

use crate::address::{Guid, RecordType};
use crate::config::DirectoryConfig;
use crate::directory::ldap::{connect_bound, describe_result, rc_name};
use crate::directory::presets::Schema;
use crate::directory::{Directory, DirectoryRecord};
use crate::error::{Error, Result};
use ldap3::{LdapError, LdapResult, Mod};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// Values per LDAP modify request.
pub const BATCH: usize = 100;

/// Finds the access group by GUID or by name (short name, then full name; case-insensitive).
pub fn find_group<'a>(dir: &'a Directory, wanted: &str) -> Result<&'a DirectoryRecord> {
    let groups = || dir.records.iter().filter(|r| r.kind == RecordType::Group);
    let found = match Guid::parse(wanted) {
        Some(g) => groups().find(|r| r.guid == g),
        None => groups()
            .find(|r| r.short_names.iter().any(|s| s.eq_ignore_ascii_case(wanted)))
            .or_else(|| {
                groups().find(|r| {
                    r.full_name
                        .as_deref()
                        .is_some_and(|f| f.eq_ignore_ascii_case(wanted))
                })
            }),
    };
    found.ok_or_else(|| {
        Error::usage(format!(
            "[provision] access_group `{wanted}`: no group with that name or GUID in {}",
            dir.origin
        ))
    })
}

/// Everything a group's members reach: direct members and the members of nested groups (member
/// GUIDs that are groups, and `nested_guids`), cycles tolerated. Group GUIDs are included.
pub fn expand(
    by_guid: &HashMap<&Guid, &DirectoryRecord>,
    members: &[Guid],
    nested: &[Guid],
) -> HashSet<Guid> {
    let mut seen: HashSet<Guid> = HashSet::new();
    let mut queue: Vec<Guid> = members.iter().chain(nested).cloned().collect();
    while let Some(g) = queue.pop() {
        if !seen.insert(g.clone()) {
            continue;
        }
        if let Some(r) = by_guid.get(&g) {
            if r.kind == RecordType::Group {
                queue.extend(r.member_guids.iter().cloned());
                queue.extend(r.nested_guids.iter().cloned());
            }
        }
    }
    seen
}

/// What to change in the access group.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AccessPlan {
    /// GUID of the access group (always set on a plan made by `provision`).
    pub group_guid: Option<Guid>,
    /// First short name of the access group (`[provision] access_group` may name it by GUID).
    pub group_name: String,
    /// The group's DN (or the export line it came from).
    pub group_source: String,
    /// Whether the group lists short names too (memberUid / GroupMembership).
    pub uses_member_uid: bool,
    /// Principal GUIDs to add as members (`apple-group-memberguid` / GroupMembers).
    pub add_members: Vec<Guid>,
    /// Old GUIDs to remove from the members.
    pub remove_members: Vec<Guid>,
    /// Group GUIDs to add as nested groups (`apple-group-nestedgroup` / NestedGroups).
    pub add_nested: Vec<Guid>,
    /// Old group GUIDs to remove from the nested groups.
    pub remove_nested: Vec<Guid>,
    /// Short names to add to memberUid / GroupMembership.
    pub add_names: Vec<String>,
    /// The member lists after the change (for a dsimport file).
    pub final_members: Vec<Guid>,
    /// The nested-group list after the change.
    pub final_nested: Vec<Guid>,
    /// The short-name list after the change.
    pub final_names: Vec<String>,
}

impl AccessPlan {
    /// True when the plan changes nothing in the group.
    pub fn is_empty(&self) -> bool {
        self.add_members.is_empty()
            && self.remove_members.is_empty()
            && self.add_nested.is_empty()
            && self.remove_nested.is_empty()
            && self.add_names.is_empty()
    }

    /// Fills the final lists from the group's current ones and the planned changes.
    pub fn finish(&mut self, group: &DirectoryRecord) {
        let apply = |cur: &[Guid], add: &[Guid], remove: &[Guid]| -> Vec<Guid> {
            let mut out: Vec<Guid> = cur
                .iter()
                .filter(|g| !remove.contains(g))
                .cloned()
                .collect();
            for g in add {
                if !out.contains(g) {
                    out.push(g.clone());
                }
            }
            out
        };
        self.final_members = apply(&group.member_guids, &self.add_members, &self.remove_members);
        self.final_nested = apply(&group.nested_guids, &self.add_nested, &self.remove_nested);
        let mut names = group.member_names.clone();
        for n in &self.add_names {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        self.final_names = names;
    }
}

/// What an LDAP apply did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LdapApplied {
    /// LDAP URL of the server written to.
    pub server: String,
    /// DN of the access group modified.
    pub dn: String,
    /// Modify requests sent.
    pub requests: usize,
    /// Attribute values added.
    pub values_added: usize,
    /// Attribute values removed.
    pub values_removed: usize,
    /// Values someone else had already added (or removed) in the meantime.
    pub already_there: usize,
}

struct Op {
    add: bool,
    attr: String,
    values: Vec<String>,
}

/// Writes the plan to the group over LDAP: adds first (so an interruption never loses a
/// member), then removals, each as modifies of at most [`BATCH`] values.
pub fn apply_ldap(cfg: &DirectoryConfig, plan: &AccessPlan) -> Result<LdapApplied> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::runtime(format!("cannot start the LDAP client runtime: {e}")))?;
    rt.block_on(apply_ldap_async(cfg, plan))
}

fn first_attr(list: &[String], what: &str) -> Result<String> {
    list.first().cloned().ok_or_else(|| {
        Error::usage(format!(
            "the [directory] mapping has no {what} attribute for groups: set [directory.attributes] {what}"
        ))
    })
}

async fn apply_ldap_async(cfg: &DirectoryConfig, plan: &AccessPlan) -> Result<LdapApplied> {
    let url = cfg.url.clone().unwrap_or_default();
    let dn = plan.group_source.clone();
    let ops = modify_ops(cfg, plan)?;
    let mut done = LdapApplied {
        server: url.clone(),
        dn: dn.clone(),
        ..LdapApplied::default()
    };
    if ops.iter().all(|o| o.values.is_empty()) {
        return Ok(done);
    }
    let mut w = GroupWriter {
        ldap: connect_bound(cfg).await?,
        timeout: std::time::Duration::from_secs(cfg.timeout.max(1)),
        who: cfg
            .bind_dn
            .as_deref()
            .map(|b| format!("the bind DN `{b}`"))
            .unwrap_or_else(|| "an anonymous bind".to_string()),
        url,
        dn,
    };
    for op in &ops {
        for chunk in op.values.chunks(BATCH) {
            w.modify(op, chunk, &mut done).await?;
        }
    }
    let _ = w.ldap.unbind().await;
    Ok(done)
}

/// The modifies the plan needs, adds before removals (so an interruption never loses a member).
fn modify_ops(cfg: &DirectoryConfig, plan: &AccessPlan) -> Result<Vec<Op>> {
    let mapping = Schema::from_config(cfg);
    let t = mapping.get(RecordType::Group);
    let mut ops: Vec<Op> = Vec::new();
    let strs = |v: &[Guid]| v.iter().map(|g| g.as_str().to_string()).collect::<Vec<_>>();
    if !plan.add_members.is_empty() || !plan.remove_members.is_empty() {
        let attr = first_attr(&t.member_guid, "member_guid")?;
        ops.push(Op {
            add: true,
            attr: attr.clone(),
            values: strs(&plan.add_members),
        });
        ops.push(Op {
            add: false,
            attr,
            values: strs(&plan.remove_members),
        });
    }
    if !plan.add_names.is_empty() {
        ops.push(Op {
            add: true,
            attr: first_attr(&t.member_uid, "member_uid")?,
            values: plan.add_names.clone(),
        });
    }
    if !plan.add_nested.is_empty() || !plan.remove_nested.is_empty() {
        let attr = first_attr(&t.nested_guid, "nested_guid")?;
        ops.push(Op {
            add: true,
            attr: attr.clone(),
            values: strs(&plan.add_nested),
        });
        ops.push(Op {
            add: false,
            attr,
            values: strs(&plan.remove_nested),
        });
    }
    // Adds before removals.
    ops.sort_by_key(|o| !o.add);
    Ok(ops)
}

/// A bound connection writing one access group.
struct GroupWriter {
    ldap: ldap3::Ldap,
    timeout: std::time::Duration,
    url: String,
    dn: String,
    /// Who is bound, in words (for the no-write-access advice).
    who: String,
}

impl GroupWriter {
    /// The error for a failed modify (`what` it was), with what earlier requests did.
    fn fail(&self, what: &str, msg: String, done: &LdapApplied) -> Error {
        Error::runtime(format!(
            "{}: modify of {} ({what}) failed: {msg}{}",
            self.url,
            self.dn,
            if done.requests > 0 {
                format!(
                    "; {} earlier request(s) were applied ({} value(s) added, {} removed)",
                    done.requests, done.values_added, done.values_removed
                )
            } else {
                String::new()
            }
        ))
    }

    /// Sends `vals` as one modify of `op`.
    async fn send(&mut self, op: &Op, vals: &[String]) -> ldap3::result::Result<LdapResult> {
        let set: HashSet<String> = vals.iter().cloned().collect();
        let m = vec![if op.add {
            Mod::Add(op.attr.clone(), set)
        } else {
            Mod::Delete(op.attr.clone(), set)
        }];
        self.ldap
            .with_timeout(self.timeout)
            .modify(&self.dn, m)
            .await
    }

    /// One chunk of `op` as one modify; value by value when someone changed the group meanwhile.
    async fn modify(&mut self, op: &Op, chunk: &[String], done: &mut LdapApplied) -> Result<()> {
        let what = format!(
            "{} {} value(s) {} {}",
            if op.add { "add" } else { "remove" },
            chunk.len(),
            if op.add { "to" } else { "from" },
            op.attr
        );
        let benign = if op.add { 20 } else { 16 };
        match self.send(op, chunk).await {
            Ok(r) if r.rc == 0 => {
                done.requests += 1;
                if op.add {
                    done.values_added += chunk.len();
                } else {
                    done.values_removed += chunk.len();
                }
            }
            Ok(r) if r.rc == benign => {
                // Someone changed the group meanwhile: go value by value.
                for v in chunk {
                    let r = match self.send(op, std::slice::from_ref(v)).await {
                        Ok(r) => r,
                        Err(e) => return Err(self.fail(&what, ldap_error_text(&e), done)),
                    };
                    match r.rc {
                        0 => {
                            done.requests += 1;
                            if op.add {
                                done.values_added += 1;
                            } else {
                                done.values_removed += 1;
                            }
                        }
                        rc if rc == benign => done.already_there += 1,
                        _ => return Err(self.fail(&what, describe_result(&r), done)),
                    }
                }
            }
            Ok(r) => {
                let mut msg = describe_result(&r);
                if r.rc == 50 {
                    msg.push_str(&format!(
                        "; {} has no write access to {}: bind as a directory administrator ([directory] bind_dn, e.g. diradmin) or grant it write access",
                        self.who, op.attr
                    ));
                }
                return Err(self.fail(&what, msg, done));
            }
            Err(e) => return Err(self.fail(&what, ldap_error_text(&e), done)),
        }
        Ok(())
    }
}

fn ldap_error_text(e: &LdapError) -> String {
    match e {
        LdapError::LdapResult { result } => describe_result(result),
        LdapError::Timeout { .. } => "no answer within the timeout".into(),
        other => format!("{other} ({})", rc_name(80)),
    }
}

fn ds_escape_value(v: &str) -> String {
    v.replace(',', "\\,")
}

fn ds_field(values: &[String]) -> String {
    let joined = values
        .iter()
        .map(|v| ds_escape_value(v))
        .collect::<Vec<_>>()
        .join(",");
    joined.replace(':', "\\:").replace('\n', "\\\n")
}

/// The dsimport (character-delimited) file holding the group's complete member lists after the
/// change, for a group that lives in the server's local node.
pub fn dsimport_text(plan: &AccessPlan) -> String {
    let mut attrs = vec![
        "dsAttrTypeStandard:RecordName",
        "dsAttrTypeStandard:GeneratedUID",
        "dsAttrTypeStandard:GroupMembers",
    ];
    let mut fields = vec![
        ds_field(std::slice::from_ref(&plan.group_name)),
        ds_field(&[plan
            .group_guid
            .as_ref()
            .map(|g| g.as_str().to_string())
            .unwrap_or_default()]),
        ds_field(
            &plan
                .final_members
                .iter()
                .map(|g| g.as_str().to_string())
                .collect::<Vec<_>>(),
        ),
    ];
    if plan.uses_member_uid {
        attrs.push("dsAttrTypeStandard:GroupMembership");
        fields.push(ds_field(&plan.final_names));
    }
    if !plan.final_nested.is_empty() {
        attrs.push("dsAttrTypeStandard:NestedGroups");
        fields.push(ds_field(
            &plan
                .final_nested
                .iter()
                .map(|g| g.as_str().to_string())
                .collect::<Vec<_>>(),
        ));
    }
    format!(
        "0x0A 0x5C 0x3A 0x2C dsRecTypeStandard:Groups {} {}\n{}\n",
        attrs.len(),
        attrs.join(" "),
        fields.join(":")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: RecordType, guid: &str, short: &str) -> DirectoryRecord {
        DirectoryRecord {
            kind,
            guid: Guid::parse(guid).unwrap(),
            short_names: vec![short.into()],
            full_name: None,
            emails: vec![],
            member_guids: vec![],
            member_names: vec![],
            nested_guids: vec![],
            source: format!("cn={short}"),
        }
    }

    const U1: &str = "10000000-0000-4000-8000-000000000001";
    const U2: &str = "10000000-0000-4000-8000-000000000002";
    const G1: &str = "20000000-0000-4000-8000-000000000001";
    const G2: &str = "20000000-0000-4000-8000-000000000002";

    #[test]
    fn nested_groups_expand_and_cycles_end() {
        let mut g1 = rec(RecordType::Group, G1, "outer");
        let mut g2 = rec(RecordType::Group, G2, "inner");
        g1.nested_guids = vec![Guid::parse(G2).unwrap()];
        g2.member_guids = vec![Guid::parse(U2).unwrap(), Guid::parse(G1).unwrap()];
        let recs = [g1.clone(), g2, rec(RecordType::User, U1, "a")];
        let by: HashMap<&Guid, &DirectoryRecord> = recs.iter().map(|r| (&r.guid, r)).collect();
        let all = expand(&by, &g1.member_guids, &g1.nested_guids);
        assert!(all.contains(&Guid::parse(U2).unwrap()));
        assert!(!all.contains(&Guid::parse(U1).unwrap()));
    }

    #[test]
    fn dsimport_escapes_and_lists_everything() {
        let plan = AccessPlan {
            group_guid: Some(Guid::parse(G1).unwrap()),
            group_name: "com.apple.access_calendar".into(),
            uses_member_uid: true,
            final_members: vec![Guid::parse(U1).unwrap(), Guid::parse(U2).unwrap()],
            final_names: vec!["a,b".into(), "c:d".into()],
            ..AccessPlan::default()
        };
        let t = dsimport_text(&plan);
        assert_eq!(
            t,
            format!("0x0A 0x5C 0x3A 0x2C dsRecTypeStandard:Groups 4 dsAttrTypeStandard:RecordName dsAttrTypeStandard:GeneratedUID dsAttrTypeStandard:GroupMembers dsAttrTypeStandard:GroupMembership\ncom.apple.access_calendar:{G1}:{U1},{U2}:a\\,b,c\\:d\n")
        );
    }
}
