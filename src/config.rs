//! The configuration file (`principal-reconciler.toml`): what it may hold, how it is read.
//!
//! Unknown keys are errors naming the key, the file and the line. Relative paths resolve against
//! the folder holding the configuration file.

use crate::address::AddressForm;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Configuration file read when `--config` is not given, looked for in the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "principal-reconciler.toml";
/// Environment variable holding the directory bind password when `[directory] password_file` is unset.
pub const PASSWORD_ENV: &str = "PRINCIPAL_RECONCILER_BIND_PASSWORD";
/// Where the PostgreSQL store's password comes from when `[store] password_file` is unset.
pub const STORE_PASSWORD_ENV: &str = "PRINCIPAL_RECONCILER_STORE_PASSWORD";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
/// The whole `principal-reconciler.toml`: one field per `[section]`.
pub struct Config {
    /// `[directory]`: the current (rebuilt) directory the store is reconciled against.
    pub directory: DirectoryConfig,
    #[serde(default)]
    /// `[old_directory]`: exports of the directory as it was before the rebuild.
    pub old_directory: OldDirectoryConfig,
    /// `[store]`: the CalendarServer store to repair.
    pub store: StoreConfig,
    #[serde(default)]
    /// `[rewrite]`: how calendar user addresses are rewritten.
    pub rewrite: RewriteConfig,
    #[serde(default)]
    /// `[state]`: where plans, the journal and backups are kept.
    pub state: StateConfig,
    #[serde(default)]
    /// `[report]`: where CSV reports are written.
    pub report: ReportConfig,
    #[serde(default)]
    /// `[provision]`: enabling the new directory's principals for calendar service.
    pub provision: ProvisionConfig,
    /// The file this configuration was read from.
    #[serde(skip)]
    pub source: PathBuf,
}

/// Kind of directory server, for its default attributes and containers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    #[default]
    #[serde(rename = "opendirectory")]
    /// Apple Open Directory (`opendirectory`, the default).
    OpenDirectory,
    #[serde(rename = "openldap")]
    /// OpenLDAP (`openldap`).
    OpenLdap,
    /// Microsoft Active Directory (`active-directory`).
    ActiveDirectory,
    #[serde(rename = "freeipa")]
    /// FreeIPA (`freeipa`).
    FreeIpa,
    #[serde(rename = "389ds")]
    /// 389 Directory Server (`389ds`).
    Ds389,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
/// `[directory]`: how to reach and read the current directory.
pub struct DirectoryConfig {
    /// `ldap://` or `ldaps://` URL of the current directory.
    pub url: Option<String>,
    /// An LDIF snapshot of the current directory, used instead of `url`.
    pub ldif: Option<PathBuf>,
    /// DN for a simple bind; anonymous bind when unset.
    pub bind_dn: Option<String>,
    /// File holding the bind password (else the environment variable `PRINCIPAL_RECONCILER_BIND_PASSWORD`).
    pub password_file: Option<PathBuf>,
    /// Search base (e.g. `dc=od,dc=example,dc=com`).
    pub base: Option<String>,
    #[serde(default)]
    /// Kind of server, which picks default attributes, filters and containers.
    pub preset: Preset,
    #[serde(default)]
    /// Upgrade an `ldap://` connection with StartTLS before binding.
    pub starttls: bool,
    /// PEM file with the CA certificate(s) that signed the server's certificate.
    pub tls_ca_file: Option<PathBuf>,
    /// Skip certificate verification (loudly warned about).
    #[serde(default)]
    pub tls_insecure: bool,
    #[serde(default = "default_page_size")]
    /// Entries asked for per page of a paged search (default 500).
    pub page_size: i32,
    /// Seconds for connecting and for each operation (at least 1).
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    /// Accept a directory that stopped early (size/time/admin limit) with a warning.
    #[serde(default)]
    pub allow_partial: bool,
    /// Accept a simple bind over `ldap://` without StartTLS: the bind password crosses the
    /// network in clear. Unsafe; for a test server on an isolated network only.
    #[serde(default)]
    pub allow_cleartext_bind: bool,
    /// Accept a current directory that holds no records at all (otherwise an error: a typo in the
    /// base, a container or the GUID attribute must not make everyone look gone).
    #[serde(default)]
    pub allow_empty: bool,
    /// Attribute overrides: guid, short_name, full_name, email, member_guid, member_uid, nested_guid.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Per-type filter overrides: user, group, location, resource.
    #[serde(default)]
    pub filters: BTreeMap<String, String>,
    /// Per-type container overrides (relative to `base`): user, group, location, resource.
    #[serde(default)]
    pub containers: BTreeMap<String, String>,
}

fn default_page_size() -> i32 {
    500
}
fn default_timeout() -> u64 {
    30
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
/// `[old_directory]`: the directory as it was before the rebuild, from export files.
pub struct OldDirectoryConfig {
    /// dsexport / Workgroup Manager exports or LDIF files of the directory as it was.
    #[serde(default)]
    pub files: Vec<PathBuf>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
/// Which kind of store `[store] path` holds (`[store] kind`).
pub enum StoreKind {
    /// CalendarServer 2.x file store (Mac OS X Server 10.5/10.6).
    #[default]
    CalendarserverFs,
    /// CalendarServer 3+ PostgreSQL store.
    CalendarserverPg,
    /// Any folder tree of `.ics` files.
    IcsDir,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
/// `[store]`: where the store is and how to reach it.
pub struct StoreConfig {
    #[serde(default)]
    /// Kind of store (default `calendarserver-fs`).
    pub kind: StoreKind,
    /// The store's data root (`/Library/CalendarServer/Documents`) or the .ics folder (file stores).
    #[serde(default)]
    pub path: PathBuf,
    /// Who must own the store's files: `user:group` names or `uid:gid` numbers.
    pub owner: Option<String>,
    /// Extended attribute prefix: `user.` (Linux) or `WebDAV:` (macOS); detected when unset.
    pub xattr_prefix: Option<String>,
    /// The server's data root holding `calendaruserproxy.sqlite` and `resourceinfo.sqlite`
    /// (`/Library/CalendarServer/Data`); looked for beside the store (`../Data`) when unset.
    pub data_root: Option<PathBuf>,
    /// The Address Book Server's document root (10.6: `/Library/AddressBookServer/Documents`,
    /// holding `addressbooks/`). Unset: `addressbooks/` under `path` (3.x) is used when it exists.
    pub addressbook_root: Option<PathBuf>,
    /// `calendarserver-pg`: the database, as a libpq URL (`postgresql://USER@HOST:PORT/DB`) or
    /// `key=value` string; a host starting with `/` is a Unix-socket folder. No password in it.
    pub dsn: Option<String>,
    /// `calendarserver-pg`: a file holding the database password (else the environment variable
    /// `PRINCIPAL_RECONCILER_STORE_PASSWORD`).
    pub password_file: Option<PathBuf>,
    /// `calendarserver-pg`: PEM file with the CA that signed the database server's certificate
    /// (else the system's roots).
    pub tls_ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
/// `[rewrite]`: rules for rewriting calendar user addresses.
pub struct RewriteConfig {
    #[serde(default)]
    /// Form written for rewritten addresses (default `urn:uuid:` GUID form).
    pub address_form: AddressForm,
    /// Mail domains of the organisation: addresses outside them are never touched.
    #[serde(default)]
    pub internal_domains: Vec<String>,
    /// CSV of `old,new` rows that win over every rule (format: [`crate::mapping_file`]).
    pub mapping_file: Option<PathBuf>,
    #[serde(default)]
    /// `[[rewrite.domain_alias]]` entries: mail domains renamed in the rebuild.
    pub domain_alias: Vec<DomainAlias>,
    /// Addresses or GUIDs of people who left: left as they are, not reported as problems.
    #[serde(default)]
    pub leavers: Vec<String>,
}

impl Default for RewriteConfig {
    fn default() -> Self {
        RewriteConfig {
            address_form: AddressForm::UrnUuid,
            internal_domains: Vec::new(),
            mapping_file: None,
            domain_alias: Vec::new(),
            leavers: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
/// One `[[rewrite.domain_alias]]`: a mail domain renamed from `from` to `to` (compared case-insensitively).
pub struct DomainAlias {
    /// The old mail domain, as found in stored addresses.
    pub from: String,
    /// The new mail domain that replaces it.
    pub to: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
/// `[state]`: the state folder and how many plans to keep.
pub struct StateConfig {
    /// Folder holding the state database, the journal and the backups of original files.
    #[serde(default = "default_state_path")]
    pub path: PathBuf,
    /// Plans kept after each successful `plan` (the newest ones; a plan a run still needs is kept
    /// too). At least 1.
    #[serde(default = "default_keep_plans")]
    pub keep_plans: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            path: default_state_path(),
            keep_plans: default_keep_plans(),
        }
    }
}

fn default_keep_plans() -> usize {
    5
}

fn default_state_path() -> PathBuf {
    PathBuf::from("principal-reconciler-state")
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
/// `[report]`: where the CSV reports go.
pub struct ReportConfig {
    #[serde(default = "default_report_dir")]
    /// Folder the CSV reports are written to (default `reports`).
    pub dir: PathBuf,
    /// Start every CSV with a UTF-8 byte-order mark (spreadsheets then read accented names right).
    #[serde(default)]
    pub csv_bom: bool,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            dir: default_report_dir(),
            csv_bom: false,
        }
    }
}

fn default_report_dir() -> PathBuf {
    PathBuf::from("reports")
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
/// `[provision]`: enabling the new directory's principals for calendar and address book service.
pub struct ProvisionConfig {
    /// Run provisioning as part of `migrate`.
    #[serde(default)]
    pub enabled: bool,
    /// The calendar service access group (2.x `restrictToGroup`), name or GUID.
    pub access_group: Option<String>,
    /// CalendarServer 3+ `augments.xml`.
    pub augments_file: Option<PathBuf>,
    /// Where to write a dsimport file when the access group lives in the server's local node.
    pub output: Option<PathBuf>,
    #[serde(default = "yes")]
    /// Enable calendar service for provisioned principals (default true).
    pub enable_calendar: bool,
    #[serde(default)]
    /// Enable address book service for provisioned principals (default false).
    pub enable_addressbook: bool,
    #[serde(default = "yes")]
    /// Set auto-schedule on provisioned locations and resources (rooms accept invitations themselves; default true).
    pub auto_schedule_rooms: bool,
}

fn yes() -> bool {
    true
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        ProvisionConfig {
            enabled: false,
            access_group: None,
            augments_file: None,
            output: None,
            enable_calendar: true,
            enable_addressbook: false,
            auto_schedule_rooms: true,
        }
    }
}

/// Checks the `[store]` keys each store kind needs or refuses. The DSN itself (a libpq string
/// without a password) is checked by the database backend once the file is read
/// ([`crate::store::pg::connect::check_dsn`], called by the cli).
fn check_store_keys(store: &StoreConfig, at: &str) -> Result<()> {
    if store.kind != StoreKind::CalendarserverPg {
        if store.path.as_os_str().is_empty() {
            return Err(Error::usage(format!(
                "{at}: [store] needs `path` (the store's folder)"
            )));
        }
        for (key, set) in [
            ("dsn", store.dsn.is_some()),
            ("password_file", store.password_file.is_some()),
            ("tls_ca_file", store.tls_ca_file.is_some()),
        ] {
            if set {
                return Err(Error::usage(format!(
                    "{at}: [store] `{key}` is for kind = \"calendarserver-pg\" only"
                )));
            }
        }
        return Ok(());
    }
    if store.dsn.is_none() {
        return Err(Error::usage(format!(
            "{at}: [store] kind = \"calendarserver-pg\" needs `dsn` (e.g. \"postgresql://caldav@localhost:5432/caldav\")"
        )));
    }
    Ok(())
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::usage(format!(
                    "configuration file {} not found (give one with --config, or print an example with `principal-reconciler config`)",
                    path.display()
                ))
            } else {
                Error::usage(format!("cannot read configuration file {}: {e}", path.display()))
            }
        })?;
        Config::parse(&text, path)
    }

    /// Parses configuration text; `path` names the file in messages and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let msg = e.message().trim().to_string();
            match line {
                Some(l) => Error::usage(format!("{}:{l}: {msg}", path.display())),
                None => Error::usage(format!("{}: {msg}", path.display())),
            }
        })?;
        cfg.source = path.to_path_buf();
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        cfg.resolve_paths(&base);
        cfg.check()?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let fix_opt = |p: &mut Option<PathBuf>| {
            if let Some(p) = p {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        };
        fix_opt(&mut self.directory.ldif);
        fix_opt(&mut self.directory.password_file);
        fix_opt(&mut self.directory.tls_ca_file);
        self.old_directory.files.iter_mut().for_each(fix);
        if self.store.kind != StoreKind::CalendarserverPg || !self.store.path.as_os_str().is_empty()
        {
            fix(&mut self.store.path);
        }
        fix_opt(&mut self.store.data_root);
        fix_opt(&mut self.store.addressbook_root);
        fix_opt(&mut self.store.password_file);
        fix_opt(&mut self.store.tls_ca_file);
        fix_opt(&mut self.rewrite.mapping_file);
        fix(&mut self.state.path);
        fix(&mut self.report.dir);
        fix_opt(&mut self.provision.augments_file);
        fix_opt(&mut self.provision.output);
    }

    fn check(&self) -> Result<()> {
        let at = self.source.display();
        let d = &self.directory;
        match (&d.url, &d.ldif) {
            (Some(_), Some(_)) => {
                return Err(Error::usage(format!(
                    "{at}: [directory] has both `url` and `ldif`; keep one (a live server or a snapshot)"
                )))
            }
            (None, None) => {
                return Err(Error::usage(format!(
                    "{at}: [directory] needs `url` (a live LDAP server) or `ldif` (a snapshot)"
                )))
            }
            _ => {}
        }
        if let Some(url) = &d.url {
            let lower = url.to_ascii_lowercase();
            if !(lower.starts_with("ldap://")
                || lower.starts_with("ldaps://")
                || lower.starts_with("ldapi://"))
            {
                return Err(Error::usage(format!(
                    "{at}: [directory] url `{url}` must start with ldap://, ldaps:// or ldapi://"
                )));
            }
            if d.base.is_none() {
                return Err(Error::usage(format!(
                    "{at}: [directory] url needs `base` (the search base)"
                )));
            }
        }
        if let Some(url) = &d.url {
            let lower = url.to_ascii_lowercase();
            if lower.starts_with("ldap://")
                && d.bind_dn.is_some()
                && !d.starttls
                && !d.allow_cleartext_bind
            {
                return Err(Error::usage(format!(
                    "{at}: [directory] a bind as `{}` over `{url}` without StartTLS would send the password in clear; use an ldaps:// url, or set starttls = true, or (unsafe, test networks only) allow_cleartext_bind = true",
                    d.bind_dn.as_deref().unwrap_or_default()
                )));
            }
        }
        if d.timeout == 0 {
            return Err(Error::usage(format!(
                "{at}: [directory] timeout must be at least 1 (seconds); there is no \"no timeout\" setting — give a large value instead"
            )));
        }
        if self.state.keep_plans == 0 {
            return Err(Error::usage(format!(
                "{at}: [state] keep_plans must be at least 1 (the plan `apply` carries out is always kept)"
            )));
        }
        if d.page_size < 1 {
            return Err(Error::usage(format!(
                "{at}: [directory] page_size must be at least 1"
            )));
        }
        for key in d.attributes.keys() {
            const KNOWN: [&str; 7] = [
                "guid",
                "short_name",
                "full_name",
                "email",
                "member_guid",
                "member_uid",
                "nested_guid",
            ];
            if !KNOWN.contains(&key.as_str()) {
                return Err(Error::usage(format!(
                    "{at}: [directory.attributes] unknown key `{key}` (known: {})",
                    KNOWN.join(", ")
                )));
            }
        }
        for (table, map) in [("filters", &d.filters), ("containers", &d.containers)] {
            for key in map.keys() {
                if !["user", "group", "location", "resource"].contains(&key.as_str()) {
                    return Err(Error::usage(format!(
                        "{at}: [directory.{table}] unknown key `{key}` (known: user, group, location, resource)"
                    )));
                }
            }
        }
        check_store_keys(&self.store, &at.to_string())?;
        if let Some(owner) = &self.store.owner {
            if owner.split(':').count() != 2 || owner.split(':').any(str::is_empty) {
                return Err(Error::usage(format!(
                    "{at}: [store] owner `{owner}` must be `user:group` (names or numbers)"
                )));
            }
        }
        Ok(())
    }

    /// The delegate and auto-accept databases of the store's server, where they exist.
    pub fn principal_databases(&self) -> Vec<PathBuf> {
        let roots: Vec<PathBuf> = match &self.store.data_root {
            Some(r) => vec![r.clone()],
            // A database store has no folder to look beside: only `data_root` says where.
            None if self.store.kind == StoreKind::CalendarserverPg => vec![],
            None => vec![self.store.path.clone(), self.store.path.join("../Data")],
        };
        let mut out = Vec::new();
        for r in roots {
            // `proxies.sqlite` is the delegate database of CalendarServer 3.x–5.x (same table).
            for name in [
                "calendaruserproxy.sqlite",
                "proxies.sqlite",
                "resourceinfo.sqlite",
            ] {
                let p = r.join(name);
                if p.is_file() {
                    out.push(p.canonicalize().unwrap_or(p));
                }
            }
        }
        out.dedup();
        out
    }

    /// Whether an e-mail domain belongs to the organisation (`[rewrite] internal_domains`).
    pub fn is_internal_domain(&self, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        self.rewrite.internal_domains.iter().any(|d| {
            let d = d.to_ascii_lowercase();
            domain == d || domain.ends_with(&format!(".{d}"))
        })
    }

    /// The bind password: from `password_file`, else from the environment; never from argv.
    pub fn bind_password(&self) -> Result<Option<String>> {
        if let Some(p) = &self.directory.password_file {
            let text = std::fs::read_to_string(p).map_err(|e| {
                Error::usage(format!("cannot read password_file {}: {e}", p.display()))
            })?;
            return Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()));
        }
        Ok(std::env::var(PASSWORD_ENV).ok())
    }
}

/// The commented example configuration `principal-reconciler config` prints.
pub const EXAMPLE: &str = include_str!("../examples/principal-reconciler.example.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses() {
        let cfg = Config::parse(EXAMPLE, Path::new("/etc/pr/principal-reconciler.toml")).unwrap();
        assert_eq!(
            cfg.store.path,
            PathBuf::from("/Library/CalendarServer/Documents")
        );
        assert_eq!(
            cfg.state.path,
            PathBuf::from("/etc/pr/principal-reconciler-state")
        );
        assert_eq!(cfg.rewrite.address_form, AddressForm::UrnUuid);
        assert!(cfg.is_internal_domain("EXAMPLE.com"));
        assert!(cfg.is_internal_domain("mail.example.com"));
        assert!(!cfg.is_internal_domain("example.org"));
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = "[directory]\nldif = \"x.ldif\"\n\n[store]\npath = \"s\"\ncolour = \"blue\"\n";
        let err = Config::parse(text, Path::new("c.toml")).unwrap_err();
        assert!(err.message.starts_with("c.toml:6:"), "{}", err.message);
        assert!(err.message.contains("colour"), "{}", err.message);
        assert_eq!(err.exit_status(), crate::error::ExitStatus::Usage);
    }

    #[test]
    fn addressbook_root_is_read_from_the_config_folder() {
        let text = "[directory]\nldif = \"x.ldif\"\n\n[store]\npath = \"Documents\"\naddressbook_root = \"../AddressBookServer/Documents\"\n";
        let cfg = Config::parse(text, Path::new("/srv/pr/c.toml")).unwrap();
        assert_eq!(
            cfg.store.addressbook_root,
            Some(PathBuf::from("/srv/pr/../AddressBookServer/Documents"))
        );
        let cfg = Config::parse(EXAMPLE, Path::new("/etc/pr/c.toml")).unwrap();
        assert_eq!(cfg.store.addressbook_root, None);
        assert!(EXAMPLE.contains("# addressbook_root = \"/Library/AddressBookServer/Documents\""));
        let err = Config::parse(
            &text.replace("addressbook_root", "adressbook_root"),
            Path::new("c.toml"),
        )
        .unwrap_err();
        assert!(err.message.starts_with("c.toml:6:"), "{}", err.message);
        assert!(err.message.contains("adressbook_root"), "{}", err.message);
    }

    #[test]
    fn needs_a_directory_source() {
        let err =
            Config::parse("[directory]\n[store]\npath = \"s\"\n", Path::new("c.toml")).unwrap_err();
        assert!(err.message.contains("needs `url`"), "{}", err.message);
    }
}
