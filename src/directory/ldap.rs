//! Live LDAP pull (ldap3 on tokio): connect (ldaps:// or StartTLS, verified with rustls), bind,
//! paged streaming searches per record type, and one clear line per failure naming the server,
//! the step and the LDAP result code.

use super::entry::RawEntry;
use super::presets::{Schema, TypeSchema};
use super::{Collector, Directory};
use crate::address::RecordType;
use crate::config::{DirectoryConfig, PASSWORD_ENV};
use crate::error::{Error, Result};
use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::asn1::{StructureTag, PL};
use ldap3::{LdapConnAsync, LdapConnSettings, LdapError, LdapResult, Scope};
use std::sync::Arc;
use std::time::Duration;

/// The bind password: `password_file`, else the environment variable; never argv, never logged.
pub fn bind_password(cfg: &DirectoryConfig) -> Result<Option<String>> {
    if let Some(p) = &cfg.password_file {
        let text = std::fs::read_to_string(p)
            .map_err(|e| Error::usage(format!("cannot read password_file {}: {e}", p.display())))?;
        return Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()));
    }
    Ok(std::env::var(PASSWORD_ENV).ok())
}

/// The standard name of an LDAP result code (RFC 4511 and friends).
pub fn rc_name(rc: u32) -> &'static str {
    match rc {
        0 => "success",
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        7 => "authMethodNotSupported",
        8 => "strongerAuthRequired",
        10 => "referral",
        11 => "adminLimitExceeded",
        12 => "unavailableCriticalExtension",
        13 => "confidentialityRequired",
        14 => "saslBindInProgress",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        48 => "inappropriateAuthentication",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        80 => "other",
        81 => "serverDown",
        85 => "timeout",
        88 => "userCanceled",
        _ => "unknown",
    }
}

/// `LDAP result <rc> (<name>): <server text>`.
pub fn describe_result(r: &LdapResult) -> String {
    let text = r.text.trim();
    if text.is_empty() {
        format!("LDAP result {} ({})", r.rc, rc_name(r.rc))
    } else {
        format!("LDAP result {} ({}): {text}", r.rc, rc_name(r.rc))
    }
}

/// A TLS failure found inside an ldap3 / I/O error.
enum TlsFailure<'a> {
    Rustls(&'a rustls::Error),
    Other(String),
}

/// Finds a rustls error inside an ldap3 / I/O error.
fn tls_error(e: &LdapError) -> Option<TlsFailure<'_>> {
    match e {
        LdapError::Rustls { source } => Some(TlsFailure::Rustls(source)),
        LdapError::DNSName { source } => Some(TlsFailure::Other(format!(
            "the server name in the url is not usable for TLS ({source})"
        ))),
        LdapError::Io { source } => {
            let inner = source.get_ref()?;
            if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                return Some(TlsFailure::Rustls(r));
            }
            (source.kind() == std::io::ErrorKind::InvalidData)
                .then(|| TlsFailure::Other(inner.to_string()))
        }
        _ => None,
    }
}

/// A TLS failure in words: what the server's certificate (or handshake) did wrong and what to
/// check, taking into account what is configured.
fn describe_tls(f: &TlsFailure<'_>, cfg: &DirectoryConfig) -> String {
    use rustls::CertificateError as C;
    let host = cfg
        .url
        .as_deref()
        .and_then(|u| u.split("://").nth(1))
        .map(|r| r.split(['/', '?']).next().unwrap_or(r).to_string())
        .unwrap_or_default();
    let check = format!(
        "check it with `openssl s_client -connect {host} -showcerts`{}",
        if cfg.starttls { " -starttls ldap" } else { "" }
    );
    let ca = match &cfg.tls_ca_file {
        Some(p) => format!(
            "it was not issued by the CA certificate(s) in tls_ca_file {}: check that this file holds the CA that signed the server's certificate (and any intermediate the server does not send)",
            p.display()
        ),
        None => "it was not issued by a CA this tool trusts: give the CA that signed it with [directory] tls_ca_file".to_string(),
    };
    let e = match f {
        TlsFailure::Other(s) => return format!("{s}; {check}"),
        TlsFailure::Rustls(e) => e,
    };
    let what = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => format!("the server's certificate is not trusted: {ca}"),
            C::BadSignature => format!("the server's certificate has a bad signature: {ca}"),
            C::Expired | C::ExpiredContext { .. } => {
                "the server's certificate has expired: renew it on the server".to_string()
            }
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet: check the clocks of this machine and the server".to_string()
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                "the server's certificate does not name `{}` ({c}): use the name it was issued for in the url, or reissue it with that name in its subjectAltName",
                host.rsplit_once(':').map(|(h, _)| h).unwrap_or(&host)
            ),
            C::Revoked => "the server's certificate has been revoked".to_string(),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "the server's certificate is not issued for TLS servers (extended key usage serverAuth missing)".to_string()
            }
            C::BadEncoding => "the server's certificate cannot be decoded".to_string(),
            C::Other(o) => {
                let inner = o.to_string();
                if inner.contains("CaUsedAsEndEntity") {
                    "the server presents a CA certificate as its own certificate; configure the server with a certificate issued by that CA for its name (basicConstraints CA:FALSE), not the CA certificate itself".to_string()
                } else if inner.contains("EndEntityUsedAsCa") {
                    "a certificate in the server's chain that signs another is not a CA certificate".to_string()
                } else if inner.contains("UnsupportedCertVersion") {
                    "the server's certificate is not an X.509 v3 certificate".to_string()
                } else {
                    format!("the server's certificate was rejected ({inner})")
                }
            }
            other => format!("the server's certificate was rejected ({other})"),
        },
        rustls::Error::AlertReceived(a) => format!(
            "the server refused the TLS handshake (alert: {a:?}); it may require a client certificate or an other TLS version"
        ),
        rustls::Error::PeerIncompatible(p) => format!(
            "the server offers no TLS version or cipher this tool accepts (TLS 1.2 or newer): {p:?}"
        ),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "the server did not answer with TLS (is this the ldaps:// port? with starttls use the ldap:// port)".to_string()
        }
        other => format!("TLS error: {other}"),
    };
    format!("{what}; {check}")
}

fn describe(e: &LdapError) -> String {
    match e {
        LdapError::LdapResult { result } => describe_result(result),
        LdapError::Io { source } => match source.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                "connection refused (is the server running, is the port right?)".into()
            }
            std::io::ErrorKind::ConnectionReset => "connection reset by the server".into(),
            std::io::ErrorKind::UnexpectedEof => "the server closed the connection".into(),
            _ => source.to_string(),
        },
        LdapError::Timeout { .. } => {
            "no answer within the timeout (raise [directory] timeout?)".into()
        }
        LdapError::EndOfStream | LdapError::ResultRecv { .. } | LdapError::OpSend { .. } => {
            "the connection to the server was lost".into()
        }
        other => other.to_string(),
    }
}

fn tls_client_config(cfg: &DirectoryConfig) -> Result<Option<Arc<rustls::ClientConfig>>> {
    let Some(ca) = &cfg.tls_ca_file else {
        return Ok(None);
    };
    let file = std::fs::File::open(ca)
        .map_err(|e| Error::usage(format!("cannot read tls_ca_file {}: {e}", ca.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    let mut reader = std::io::BufReader::new(file);
    for cert in rustls_pemfile::certs(&mut reader) {
        let cert = cert.map_err(|e| Error::usage(format!("tls_ca_file {}: {e}", ca.display())))?;
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
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::runtime(format!("TLS setup: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

/// What stopped a search early, and how to raise it.
fn limit_advice(rc: u32) -> Option<&'static str> {
    match rc {
        4 => Some(
            "raise the server's size limit for this bind: OpenLDAP `limits dn.exact=\"<bind dn>\" size=unlimited` \
             (paged searches need `size.prtotal=unlimited`), Open Directory: Server Admin > Open Directory > Settings > \
             Protocols > \"maximum number of search results\" (default 11000)",
        ),
        3 => Some(
            "raise the server's time limit for this bind: OpenLDAP `limits dn.exact=\"<bind dn>\" time=unlimited`, \
             Open Directory: Server Admin > Open Directory > Settings > Protocols > \"search times out in\"",
        ),
        11 => Some(
            "raise the server's administrative limit (OpenLDAP `limits ... size.prtotal=unlimited` / \
             `size.pr=`, Active Directory MaxPageSize / MaxResultSetSize via ntdsutil), or lower [directory] page_size",
        ),
        _ => None,
    }
}

/// Decodes a SearchResultEntry (RFC 4511 `[APPLICATION 4] { objectName, attributes }`) straight
/// into a [`RawEntry`]: values stay bytes (text and binary alike, so a 16-byte id is never lost to
/// the text/binary split), no intermediate maps, and malformed BER is an error, not a panic.
fn raw_entry(tag: StructureTag) -> Option<RawEntry> {
    let prim = |t: StructureTag| match t.payload {
        PL::P(v) => Some(v),
        PL::C(_) => None,
    };
    let cons = |t: StructureTag| match t.payload {
        PL::C(v) => Some(v),
        PL::P(_) => None,
    };
    let mut parts = cons(tag.match_id(4)?)?.into_iter();
    let dn = String::from_utf8(prim(parts.next()?)?).ok()?;
    let mut e = RawEntry::new(dn);
    for pa in cons(parts.next()?)? {
        let mut pa = cons(pa)?.into_iter();
        let name = String::from_utf8(prim(pa.next()?)?).ok()?;
        let values = cons(pa.next()?)?
            .into_iter()
            .map(prim)
            .collect::<Option<Vec<Vec<u8>>>>()?;
        e.attrs.push((name, values));
    }
    Some(e)
}

/// Opens a connection to the configured server (TLS as configured) and binds as `bind_dn` when
/// one is set. Errors name the server, the step and the LDAP result code. The connection is
/// driven on the current tokio runtime.
pub async fn connect_bound(cfg: &DirectoryConfig) -> Result<ldap3::Ldap> {
    let url = cfg.url.clone().unwrap_or_default();
    let timeout = Duration::from_secs(cfg.timeout.max(1));
    let fail = |step: &str, msg: String| Error::runtime(format!("{url}: {step} failed: {msg}"));

    let password = match &cfg.bind_dn {
        Some(dn) => Some(bind_password(cfg)?.ok_or_else(|| {
            Error::usage(format!(
                "[directory] bind_dn `{dn}` needs a password: set password_file or the environment variable {PASSWORD_ENV}"
            ))
        })?),
        None => None,
    };

    let mut settings = LdapConnSettings::new()
        .set_conn_timeout(timeout)
        .set_starttls(cfg.starttls);
    if cfg.tls_insecure {
        tracing::warn!(
            "{url}: tls_insecure = true: the server's certificate is NOT checked; anyone on the network path can read the bind password and forge directory data"
        );
        settings = settings.set_no_tls_verify(true);
    } else if let Some(config) = tls_client_config(cfg)? {
        settings = settings.set_config(config);
    }
    let is_ldaps = url.to_ascii_lowercase().starts_with("ldaps://");
    if cfg.bind_dn.is_some() && url.to_ascii_lowercase().starts_with("ldap://") && !cfg.starttls {
        tracing::warn!(
            "{url}: allow_cleartext_bind = true: the bind password is sent in clear over the network"
        );
    }

    tracing::info!("connecting to {url}");
    let connected =
        tokio::time::timeout(timeout, LdapConnAsync::with_settings(settings, &url)).await;
    let (conn, mut ldap) = match connected {
        Err(_) => {
            return Err(fail(
                "connect",
                format!("no connection within {}s", timeout.as_secs()),
            ))
        }
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            if let Some(t) = tls_error(&e) {
                let step = if cfg.starttls {
                    "starttls"
                } else {
                    "TLS handshake"
                };
                return Err(fail(step, describe_tls(&t, cfg)));
            }
            if let LdapError::LdapResult { result } = &e {
                return Err(fail("starttls", describe_result(result)));
            }
            let step = if matches!(
                e,
                LdapError::Io { .. } | LdapError::Timeout { .. } | LdapError::UrlParsing { .. }
            ) {
                "connect"
            } else if cfg.starttls {
                "starttls"
            } else if is_ldaps {
                "TLS handshake"
            } else {
                "connect"
            };
            return Err(fail(step, describe(&e)));
        }
    };
    ldap3::drive!(conn);

    if let (Some(dn), Some(pw)) = (&cfg.bind_dn, &password) {
        tracing::info!("binding as {dn}");
        let res = ldap.with_timeout(timeout).simple_bind(dn, pw).await;
        match res {
            Ok(r) if r.rc == 0 => {}
            Ok(r) => return Err(fail(&format!("bind as {dn}"), describe_result(&r))),
            Err(e) => return Err(fail(&format!("bind as {dn}"), describe(&e))),
        }
    }
    Ok(ldap)
}

/// Pulls every configured record type from the server.
pub async fn pull(cfg: &DirectoryConfig, on_entry: &(dyn Fn() + Sync)) -> Result<Directory> {
    let url = cfg.url.clone().unwrap_or_default();
    let base = cfg.base.clone().unwrap_or_default();
    let mapping = Schema::from_config(cfg);
    let mut ldap = connect_bound(cfg).await?;

    let mut out = Collector::new(mapping.clone(), format!("{url} (base {base})"));
    for t in &mapping.types {
        let Some(filter) = &t.filter else { continue };
        let search_base = if t.container.is_empty() {
            base.clone()
        } else {
            format!("{},{base}", t.container)
        };
        let search = Search {
            cfg,
            url: &url,
            step: format!("search of {search_base} for {filter}"),
            base: search_base,
            filter,
            kind: t.kind,
        };
        search.run(&mut ldap, t, &mut out, on_entry).await?;
    }
    let _ = ldap.unbind().await;
    Ok(out.finish())
}

/// One record type's search of the directory.
struct Search<'a> {
    cfg: &'a DirectoryConfig,
    url: &'a str,
    /// `search of BASE for FILTER`, as errors and warnings name it.
    step: String,
    base: String,
    filter: &'a str,
    kind: RecordType,
}

impl Search<'_> {
    fn fail(&self, msg: String) -> Error {
        Error::runtime(format!("{}: {} failed: {msg}", self.url, self.step))
    }

    /// Runs the search (paged), adds every entry to `out` and checks how it ended.
    async fn run(
        &self,
        ldap: &mut ldap3::Ldap,
        t: &TypeSchema,
        out: &mut Collector,
        on_entry: &(dyn Fn() + Sync),
    ) -> Result<()> {
        let timeout = Duration::from_secs(self.cfg.timeout.max(1));
        let attrs = t.requested_attributes();
        let adapters: Vec<Box<dyn Adapter<_, _>>> = vec![
            Box::new(EntriesOnly::new()),
            Box::new(PagedResults::new(self.cfg.page_size)),
        ];
        tracing::info!("searching {} {}", self.base, self.filter);
        let mut stream = match ldap
            .with_timeout(timeout)
            .streaming_search_with(
                adapters,
                &self.base,
                Scope::Subtree,
                self.filter,
                attrs.clone(),
            )
            .await
        {
            Ok(s) => s,
            Err(LdapError::FilterParsing) => {
                return Err(Error::usage(format!(
                    "[directory] {} filter `{}` is not a valid LDAP filter",
                    self.kind, self.filter
                )))
            }
            Err(e) => return Err(self.fail(describe(&e))),
        };
        let mut count = 0usize;
        let mut stopped: Option<LdapResult> = None;
        loop {
            match stream.next().await {
                Ok(Some(re)) => {
                    if re.is_ref() || re.is_intermediate() {
                        continue;
                    }
                    let Some(e) = raw_entry(re.0) else {
                        return Err(self.fail(format!(
                            "malformed search entry after {count} {} entries",
                            self.kind
                        )));
                    };
                    out.add(&e, self.kind);
                    count += 1;
                    on_entry();
                }
                Ok(None) => break,
                Err(LdapError::LdapResult { result }) => {
                    stopped = Some(result);
                    break;
                }
                Err(e) => {
                    return Err(self.fail(format!(
                        "{} after {count} {} entries",
                        describe(&e),
                        self.kind
                    )))
                }
            }
        }
        let res = match stopped {
            Some(r) => r,
            None => stream.finish().await,
        };
        self.ended(&res, count, out)
    }

    /// How the search ended, after `count` entries: fine, a missing container (a warning), a
    /// list the server cut short (an error unless `allow_partial`), or an error.
    fn ended(&self, res: &LdapResult, count: usize, out: &mut Collector) -> Result<()> {
        let (url, step, kind) = (self.url, &self.step, self.kind);
        match res.rc {
            0 => {}
            32 => out.warn(format!(
                "{url}: {} does not exist (LDAP result 32 noSuchObject): no {kind} records",
                self.base
            )),
            rc if limit_advice(rc).is_some() => {
                let advice = limit_advice(rc).unwrap_or_default();
                let what = format!(
                    "{} after {count} {kind} entries: the server cut the list short",
                    describe_result(res),
                );
                if self.cfg.allow_partial {
                    let w = format!(
                        "{url}: {step}: {what}; continuing because allow_partial = true, so records missing from it will look gone; {advice}"
                    );
                    tracing::warn!("{w}");
                    out.warn(w);
                } else {
                    return Err(self.fail(
                        format!("{what}, and a truncated directory would make real users look gone. To fix it, {advice}; or set allow_partial = true to go on anyway"),
                    ));
                }
            }
            88 => {
                return Err(self.fail(format!(
                    "{} after {count} {kind} entries",
                    describe(&LdapError::EndOfStream),
                )))
            }
            _ => {
                return Err(self.fail(format!(
                    "{} after {count} {kind} entries",
                    describe_result(res)
                )))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_codes_are_named() {
        let r = LdapResult {
            rc: 49,
            matched: String::new(),
            text: "bad".into(),
            refs: vec![],
            ctrls: vec![],
        };
        assert_eq!(
            describe_result(&r),
            "LDAP result 49 (invalidCredentials): bad"
        );
        assert!(limit_advice(4).unwrap().contains("size.prtotal=unlimited"));
        assert!(limit_advice(4)
            .unwrap()
            .contains("maximum number of search results"));
        assert!(limit_advice(49).is_none());
    }
}
