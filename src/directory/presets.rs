//! Attribute and container/filter mapping per directory kind (`[directory] preset`), with the
//! `[directory.attributes]`, `[directory.filters]` and `[directory.containers]` overrides applied.
//!
//! The same mapping reads a live server and an LDIF snapshot, so a snapshot taken once gives the
//! same records as the server it came from.

use crate::address::RecordType;
use crate::config::{DirectoryConfig, Preset};

/// How the GUID attribute's values are turned into a [`crate::address::Guid`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuidForm {
    /// A UUID string (`8-4-4-4-12`), any case.
    Uuid,
    /// Active Directory `objectGUID`: 16 raw bytes, first three groups little-endian (a UUID
    /// string is accepted too).
    AdBinary,
    /// Any non-empty id (389-ds `nsUniqueId`), upper-cased.
    Any,
}

/// Attributes for one record type. Each field is a list of candidates: for single values (GUID,
/// full name) the first attribute present wins; for lists (short names, e-mail, members) the
/// values of all of them are gathered in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeSchema {
    /// The record type these attributes read.
    pub kind: RecordType,
    /// Relative to the base (`cn=users`); empty = the base itself.
    pub container: String,
    /// LDAP filter selecting this type's entries; `None` = this type is not read.
    pub filter: Option<String>,
    /// GUID attribute candidates (Open Directory: `apple-generateduid`).
    pub guid: Vec<String>,
    /// Short name attribute candidates (e.g. `uid`), first value = the login.
    pub short_name: Vec<String>,
    /// Full name attribute candidates (e.g. `cn`).
    pub full_name: Vec<String>,
    /// E-mail attribute candidates (e.g. `mail`).
    pub email: Vec<String>,
    /// Member GUID attribute candidates (`apple-group-memberguid`).
    pub member_guid: Vec<String>,
    /// Member short name attribute candidates (`memberUid`).
    pub member_uid: Vec<String>,
    /// Nested group GUID attribute candidates (`apple-group-nestedgroup`).
    pub nested_guid: Vec<String>,
    /// Member DNs (`member`, `uniqueMember`), resolved to GUIDs after the pull.
    pub member_dn: Vec<String>,
}

impl TypeSchema {
    /// Every attribute to request from the server for this type (operational ones by name).
    pub fn requested_attributes(&self) -> Vec<String> {
        let mut out: Vec<String> = vec!["objectClass".to_string()];
        for list in [
            &self.guid,
            &self.short_name,
            &self.full_name,
            &self.email,
            &self.member_guid,
            &self.member_uid,
            &self.nested_guid,
            &self.member_dn,
        ] {
            for a in list {
                if !out.iter().any(|o| o.eq_ignore_ascii_case(a)) {
                    out.push(a.clone());
                }
            }
        }
        out
    }
}

/// The directory schema: one [`TypeSchema`] per record type, in the order they are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schema {
    /// The `[directory] preset` the defaults came from.
    pub preset: Preset,
    /// How GUID attribute values are read.
    pub guid_form: GuidForm,
    /// One attribute mapping per record type, in read order.
    pub types: Vec<TypeSchema>,
}

fn v(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn type_key(kind: RecordType) -> &'static str {
    kind.as_str()
}

impl Schema {
    /// The preset's defaults with the configuration's overrides applied.
    pub fn from_config(cfg: &DirectoryConfig) -> Schema {
        let mut m = Schema::preset(cfg.preset);
        for t in &mut m.types {
            let key = type_key(t.kind);
            if let Some(f) = cfg.filters.get(key) {
                t.filter = Some(f.clone());
            }
            if let Some(c) = cfg.containers.get(key) {
                t.container = c.trim().to_string();
            }
            for (name, attr) in &cfg.attributes {
                let slot = match name.as_str() {
                    "guid" => &mut t.guid,
                    "short_name" => &mut t.short_name,
                    "full_name" => &mut t.full_name,
                    "email" => &mut t.email,
                    "member_guid" => &mut t.member_guid,
                    "member_uid" => &mut t.member_uid,
                    "nested_guid" => &mut t.nested_guid,
                    _ => continue,
                };
                *slot = vec![attr.clone()];
            }
        }
        m
    }

    /// The defaults of one preset.
    pub fn preset(preset: Preset) -> Schema {
        match preset {
            Preset::OpenDirectory => open_directory(preset),
            Preset::OpenLdap | Preset::Ds389 => open_ldap_or_389(preset),
            Preset::ActiveDirectory => active_directory(preset),
            Preset::FreeIpa => free_ipa(preset),
        }
    }

    /// The mapping for `kind`.
    pub fn get(&self, kind: RecordType) -> &TypeSchema {
        self.types
            .iter()
            .find(|t| t.kind == kind)
            .unwrap_or(&self.types[0])
    }
}

/// A type's mapping with the attributes most presets share (uid, cn, mail) and no GUID or
/// membership attributes yet.
fn base_type(kind: RecordType, container: &str, filter: Option<&str>) -> TypeSchema {
    TypeSchema {
        kind,
        container: container.to_string(),
        filter: filter.map(str::to_string),
        guid: Vec::new(),
        short_name: v(&["uid"]),
        full_name: v(&["cn"]),
        email: v(&["mail"]),
        member_guid: Vec::new(),
        member_uid: Vec::new(),
        nested_guid: Vec::new(),
        member_dn: Vec::new(),
    }
}

/// Open Directory (OpenLDAP with Apple's schema): apple-generateduid GUIDs.
fn open_directory(preset: Preset) -> Schema {
    let mut user = base_type(
        RecordType::User,
        "cn=users",
        Some("(objectClass=apple-user)"),
    );
    user.guid = v(&["apple-generateduid"]);
    let mut group = base_type(
        RecordType::Group,
        "cn=groups",
        Some("(objectClass=apple-group)"),
    );
    group.guid = v(&["apple-generateduid"]);
    group.short_name = v(&["cn"]);
    group.full_name = v(&["apple-group-realname"]);
    group.member_guid = v(&["apple-group-memberguid"]);
    group.member_uid = v(&["memberUid"]);
    group.nested_guid = v(&["apple-group-nestedgroup"]);
    let mut place = base_type(
        RecordType::Location,
        "cn=places",
        Some("(objectClass=apple-resource)"),
    );
    place.guid = v(&["apple-generateduid"]);
    place.short_name = v(&["cn"]);
    place.full_name = v(&["apple-realname", "cn"]);
    let mut resource = place.clone();
    resource.kind = RecordType::Resource;
    resource.container = "cn=resources".to_string();
    Schema {
        preset,
        guid_form: GuidForm::Uuid,
        types: vec![user, group, place, resource],
    }
}

/// OpenLDAP (entryUUID) or 389 Directory Server (nsUniqueId, ou=People / ou=Groups).
fn open_ldap_or_389(preset: Preset) -> Schema {
    let (guid, form, users, groups) = if preset == Preset::OpenLdap {
        ("entryUUID", GuidForm::Uuid, "", "")
    } else {
        ("nsUniqueId", GuidForm::Any, "ou=People", "ou=Groups")
    };
    let mut user = base_type(
        RecordType::User,
        users,
        Some("(|(objectClass=inetOrgPerson)(objectClass=posixAccount))"),
    );
    user.guid = v(&[guid]);
    let mut group = base_type(
        RecordType::Group,
        groups,
        Some(
            "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup))",
        ),
    );
    group.guid = v(&[guid]);
    group.short_name = v(&["cn"]);
    group.member_uid = v(&["memberUid"]);
    group.member_dn = v(&["member", "uniqueMember"]);
    let mut place = base_type(RecordType::Location, "", None);
    place.guid = v(&[guid]);
    place.short_name = v(&["cn"]);
    let mut resource = place.clone();
    resource.kind = RecordType::Resource;
    Schema {
        preset,
        guid_form: form,
        types: vec![user, group, place, resource],
    }
}

/// Active Directory: binary objectGUID, sAMAccountName short names.
fn active_directory(preset: Preset) -> Schema {
    let mut user = base_type(
        RecordType::User,
        "",
        Some("(&(objectClass=user)(!(objectClass=computer)))"),
    );
    user.guid = v(&["objectGUID"]);
    user.short_name = v(&["sAMAccountName"]);
    user.full_name = v(&["displayName", "cn"]);
    let mut group = base_type(RecordType::Group, "", Some("(objectClass=group)"));
    group.guid = v(&["objectGUID"]);
    group.short_name = v(&["sAMAccountName"]);
    group.full_name = v(&["displayName", "cn"]);
    group.member_dn = v(&["member"]);
    let mut place = base_type(RecordType::Location, "", None);
    place.guid = v(&["objectGUID"]);
    place.short_name = v(&["sAMAccountName", "cn"]);
    let mut resource = place.clone();
    resource.kind = RecordType::Resource;
    Schema {
        preset,
        guid_form: GuidForm::AdBinary,
        types: vec![user, group, place, resource],
    }
}

/// FreeIPA: ipaUniqueID GUIDs under cn=accounts.
fn free_ipa(preset: Preset) -> Schema {
    let mut user = base_type(
        RecordType::User,
        "cn=users,cn=accounts",
        Some("(objectClass=person)"),
    );
    user.guid = v(&["ipaUniqueID"]);
    let mut group = base_type(
        RecordType::Group,
        "cn=groups,cn=accounts",
        Some("(|(objectClass=ipausergroup)(objectClass=groupOfNames)(objectClass=posixGroup))"),
    );
    group.guid = v(&["ipaUniqueID"]);
    group.short_name = v(&["cn"]);
    group.full_name = v(&["description", "cn"]);
    group.member_uid = v(&["memberUid"]);
    group.member_dn = v(&["member"]);
    let mut place = base_type(RecordType::Location, "", None);
    place.guid = v(&["ipaUniqueID"]);
    place.short_name = v(&["cn"]);
    let mut resource = place.clone();
    resource.kind = RecordType::Resource;
    Schema {
        preset,
        guid_form: GuidForm::Uuid,
        types: vec![user, group, place, resource],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn cfg(preset: Preset) -> DirectoryConfig {
        DirectoryConfig {
            url: None,
            ldif: Some("x.ldif".into()),
            bind_dn: None,
            password_file: None,
            base: None,
            preset,
            starttls: false,
            tls_ca_file: None,
            tls_insecure: false,
            page_size: 500,
            timeout: 30,
            allow_partial: false,
            allow_cleartext_bind: false,
            allow_empty: false,
            attributes: BTreeMap::new(),
            filters: BTreeMap::new(),
            containers: BTreeMap::new(),
        }
    }

    #[test]
    fn overrides_replace_every_type() {
        let mut c = cfg(Preset::OpenDirectory);
        c.attributes.insert("guid".into(), "entryUUID".into());
        c.filters.insert("user".into(), "(uid=a\\2a)".into());
        c.containers.insert("location".into(), "ou=rooms".into());
        let m = Schema::from_config(&c);
        assert!(m
            .types
            .iter()
            .all(|t| t.guid == vec!["entryUUID".to_string()]));
        assert_eq!(
            m.get(RecordType::User).filter.as_deref(),
            Some("(uid=a\\2a)")
        );
        assert_eq!(m.get(RecordType::Location).container, "ou=rooms");
        assert_eq!(m.get(RecordType::Resource).container, "cn=resources");
    }

    #[test]
    fn opendirectory_requests_what_it_reads() {
        let m = Schema::preset(Preset::OpenDirectory);
        let attrs = m.get(RecordType::Group).requested_attributes();
        for a in [
            "objectClass",
            "apple-generateduid",
            "cn",
            "apple-group-realname",
            "apple-group-memberguid",
            "memberUid",
            "apple-group-nestedgroup",
            "mail",
        ] {
            assert!(attrs.iter().any(|x| x == a), "{a} missing from {attrs:?}");
        }
        assert_eq!(attrs.iter().filter(|a| *a == "cn").count(), 1);
    }
}
