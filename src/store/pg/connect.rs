//! Connecting to CalendarServer's PostgreSQL database: the `[store] dsn` (a libpq URL or a
//! `key=value` string; a host beginning with `/` is a Unix-socket folder, as macOS Server's private
//! PostgreSQL uses), the password from `password_file` or `PRINCIPAL_RECONCILER_STORE_PASSWORD`
//! (never the command line, never the DSN), TLS with rustls when the server offers it
//! (`sslmode=prefer`, the libpq default) or must (`sslmode=require`).

use crate::config::{StoreConfig, StoreKind, STORE_PASSWORD_ENV};
use crate::error::{Error, Result};
use postgres::config::{Host, SslMode};
use std::sync::Arc;

/// Checks the DSN of a database store's `[store]`: a libpq connection string that holds no
/// password. The cli calls it once the configuration is read (`at` names the file); the keys
/// that need no database client are checked by the configuration itself.
pub fn check_dsn(store: &StoreConfig, at: &str) -> Result<()> {
    let Some(dsn) = store
        .dsn
        .as_deref()
        .filter(|_| store.kind == StoreKind::CalendarserverPg)
    else {
        return Ok(());
    };
    let parsed = parse_dsn(dsn).map_err(|e| e.context(at))?;
    if parsed.get_password().is_some() {
        return Err(Error::usage(format!(
            "{at}: [store] dsn must not hold the password; put it in `password_file` or the environment variable {STORE_PASSWORD_ENV}"
        )));
    }
    Ok(())
}

fn parse_dsn(dsn: &str) -> Result<postgres::Config> {
    dsn.parse::<postgres::Config>().map_err(|e| {
        Error::usage(format!(
            "[store] dsn `{dsn}` is not a libpq connection string: {e}"
        ))
    })
}

/// The database as configured, ready to connect to.
#[derive(Clone)]
pub struct Target {
    /// The libpq connection parameters (password included when read from the file or environment).
    pub config: postgres::Config,
    /// The database's identity for messages, plans and journals: `postgresql://user@host:port/db`.
    pub label: String,
    tls_ca_file: Option<std::path::PathBuf>,
}

impl Target {
    /// Reads `[store]`: DSN, password, TLS roots. Nothing is connected yet.
    pub fn from_config(store: &StoreConfig) -> Result<Target> {
        let dsn = store
            .dsn
            .as_deref()
            .ok_or_else(|| Error::usage("[store] needs `dsn` for kind = \"calendarserver-pg\""))?;
        let mut config = parse_dsn(dsn)?;
        if config.get_user().is_none() {
            config.user(&whoami_user());
        }
        if config.get_hosts().is_empty() {
            // libpq's default: the Unix socket in /var/run/postgresql (Debian) or /tmp.
            let dir = ["/var/run/postgresql", "/tmp"]
                .into_iter()
                .find(|d| std::path::Path::new(d).is_dir())
                .unwrap_or("/tmp");
            config.host_path(dir);
        }
        if config.get_dbname().is_none() {
            let user = config.get_user().unwrap_or_default().to_string();
            config.dbname(&user);
        }
        if let Some(p) = &store.password_file {
            let text = std::fs::read_to_string(p).map_err(|e| {
                Error::usage(format!(
                    "cannot read [store] password_file {}: {e}",
                    p.display()
                ))
            })?;
            config.password(text.trim_end_matches(['\r', '\n']));
        } else if let Ok(pw) = std::env::var(STORE_PASSWORD_ENV) {
            config.password(pw);
        }
        config.application_name("principal-reconciler");
        config.connect_timeout(std::time::Duration::from_secs(30));
        let label = label_of(&config);
        Ok(Target {
            config,
            label,
            tls_ca_file: store.tls_ca_file.clone(),
        })
    }

    /// The same server, another database (for rehearsals: `CREATE DATABASE … TEMPLATE`).
    pub fn with_dbname(&self, db: &str) -> Target {
        let mut t = self.clone();
        t.config.dbname(db);
        t.label = label_of(&t.config);
        t
    }

    /// The database name (empty when the configuration names none).
    pub fn dbname(&self) -> &str {
        self.config.get_dbname().unwrap_or_default()
    }

    /// Connects (TLS negotiated as `sslmode` says); errors name the server and the reason.
    pub fn connect(&self) -> Result<postgres::Client> {
        let result = if self.config.get_ssl_mode() == SslMode::Disable || self.all_unix() {
            self.config.connect(postgres::NoTls)
        } else {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new((*self.tls_config()?).clone());
            self.config.connect(tls)
        };
        result.map_err(|e| self.error("cannot connect to", &e))
    }

    fn all_unix(&self) -> bool {
        self.config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, Host::Unix(_)))
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &self.tls_ca_file {
            let file = std::fs::File::open(ca).map_err(|e| {
                Error::usage(format!(
                    "cannot read [store] tls_ca_file {}: {e}",
                    ca.display()
                ))
            })?;
            let mut reader = std::io::BufReader::new(file);
            for cert in rustls_pemfile::certs(&mut reader) {
                let cert =
                    cert.map_err(|e| Error::usage(format!("tls_ca_file {}: {e}", ca.display())))?;
                roots.add(cert).map_err(|e| {
                    Error::usage(format!(
                        "tls_ca_file {}: unusable certificate: {e}",
                        ca.display()
                    ))
                })?;
            }
            if roots.is_empty() {
                return Err(Error::usage(format!(
                    "tls_ca_file {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
                    ca.display()
                )));
            }
        } else {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::runtime(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// A database error as a runtime error naming the server, the SQLSTATE and a hint.
    pub fn error(&self, what: &str, e: &postgres::Error) -> Error {
        Error::runtime(format!("{what} {}: {}", self.label, describe(e)))
    }
}

/// The text of a database error: the server's message and SQLSTATE, or the client's reason (with a
/// hint for TLS and password problems).
pub fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(d) = db.detail() {
            s.push_str(&format!("; {d}"));
        }
        if db.code().code() == "28P01" || db.code().code() == "28000" {
            s.push_str(&format!(
                " — check the user in [store] dsn and the password in [store] password_file or {STORE_PASSWORD_ENV}"
            ));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    let lower = s.to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("unknownissuer") {
        s.push_str(" (give the CA that signed the database server's certificate with [store] tls_ca_file, or add sslmode=disable to the dsn on a trusted network)");
    } else if lower.contains("password missing") {
        s.push_str(&format!(
            " (the server asks for a password: put it in [store] password_file or {STORE_PASSWORD_ENV})"
        ));
    }
    s
}

fn whoami_user() -> String {
    std::env::var("PGUSER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "postgres".into())
}

fn label_of(c: &postgres::Config) -> String {
    let host = match c.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgresql://{}@{}:{}/{}",
        c.get_user().unwrap_or_default(),
        host,
        port,
        c.get_dbname().unwrap_or_default()
    )
}

/// Other sessions on the database (CalendarServer's connections), as `pid user application`.
pub fn other_sessions(client: &mut postgres::Client) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT pid, COALESCE(usename, ''), COALESCE(application_name, ''), COALESCE(host(client_addr), 'local')
             FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND COALESCE(backend_type, 'client backend') = 'client backend'
             ORDER BY pid",
            &[],
        )
        .map_err(|e| Error::runtime(format!("cannot read pg_stat_activity: {}", describe(&e))))?;
    Ok(rows
        .iter()
        .map(|r| {
            let app: String = r.get(2);
            format!(
                "pid {} user {} from {}{}",
                r.get::<_, i32>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(3),
                if app.is_empty() {
                    String::new()
                } else {
                    format!(" ({app})")
                }
            )
        })
        .collect())
}

/// Refuses to write while other sessions use the database (CalendarServer caches and would
/// overwrite the changes), unless forced.
pub fn refuse_while_connected(
    client: &mut postgres::Client,
    label: &str,
    force: bool,
) -> Result<()> {
    if force {
        return Ok(());
    }
    let others = other_sessions(client)?;
    if others.is_empty() {
        return Ok(());
    }
    Err(Error::usage(format!(
        "the calendar server seems to be running: {} other session(s) on {label} ({}); stop it first — it caches data and would overwrite the changes — or pass --force",
        others.len(),
        others.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dsn: &str) -> StoreConfig {
        StoreConfig {
            kind: StoreKind::CalendarserverPg,
            dsn: Some(dsn.into()),
            ..Default::default()
        }
    }

    #[test]
    fn url_and_key_value_forms_and_socket_folders() {
        let t =
            Target::from_config(&store("postgresql://caldav@db.example.com:5433/caldav")).unwrap();
        assert_eq!(t.label, "postgresql://caldav@db.example.com:5433/caldav");
        let t = Target::from_config(&store(
            "host=/Library/Server/Calendar\\ and\\ Contacts/Data/Database.xpg/Socket user=caldav dbname=caldav",
        ))
        .unwrap();
        assert!(
            matches!(t.config.get_hosts()[0], Host::Unix(_)),
            "{}",
            t.label
        );
        assert!(t.label.contains("/Socket"), "{}", t.label);
        let t = Target::from_config(&store(
            "postgresql://_calendar@%2Fvar%2Frun%2Fpostgresql/caldav",
        ))
        .unwrap();
        assert!(matches!(t.config.get_hosts()[0], Host::Unix(_)));
    }

    #[test]
    fn a_password_in_the_dsn_is_refused() {
        let err = check_dsn(&store("postgresql://u:secret@h/db"), "c.toml").unwrap_err();
        assert!(
            err.message.contains("must not hold the password"),
            "{}",
            err.message
        );
        let err = check_dsn(&store("host=h password=secret"), "c.toml").unwrap_err();
        assert!(
            err.message.contains("must not hold the password"),
            "{}",
            err.message
        );
        let err = check_dsn(&store("postgresql://h:notaport/db"), "c.toml").unwrap_err();
        assert!(err.message.contains("not a libpq"), "{}", err.message);
    }
}
