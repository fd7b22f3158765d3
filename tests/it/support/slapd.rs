//! A throwaway OpenLDAP slapd for tests: a temporary directory, an old-style slapd.conf with the
//! Debian schemas plus our Open Directory test schema, entries loaded with slapadd, listening on
//! 127.0.0.1 on free ports (ldap:// and, with TLS, ldaps://), stopped by pid on Drop.
//!
//! Include with `#[path = "support/slapd.rs"] mod slapd;` and start one in one line:
//! `let Some(srv) = slapd::Slapd::builder().entries(&ldif).start() else { return };`
//! When slapd is missing the helper prints a loud message and returns `None` (the test is
//! skipped), except with `CI=true`, where it panics.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SLAPD: &str = "/usr/sbin/slapd";
pub const BASE: &str = "dc=example,dc=com";
pub const ROOTDN: &str = "cn=admin,dc=example,dc=com";
pub const ROOTPW: &str = "root secret";

/// A running slapd; killed (by its pid) when dropped.
pub struct Slapd {
    /// `ldap://127.0.0.1:PORT`
    pub url: String,
    /// `ldaps://127.0.0.1:PORT` when built with `.tls()`.
    pub ldaps_url: Option<String>,
    /// The PEM of the test CA that signed the server certificate (with `.tls()`).
    pub ca_file: Option<PathBuf>,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

#[derive(Default, Clone)]
pub struct Builder {
    sizelimit: Option<u32>,
    prtotal_unlimited: bool,
    tls: bool,
    /// The server presents the CA certificate itself as its certificate (a misconfiguration).
    ca_as_server: bool,
    entries: String,
    acl: Option<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The base entry and the Open Directory containers (cn=users, groups, places, resources).
pub fn base_entries() -> String {
    let mut s = format!("dn: {BASE}\nobjectClass: top\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n");
    for c in ["users", "groups", "places", "resources"] {
        let _ = write!(
            s,
            "dn: cn={c},{BASE}\nobjectClass: top\nobjectClass: container\ncn: {c}\n\n"
        );
    }
    s
}

/// A deterministic upper-case GUID for test record `n` of a kind (`kind` 1..=4).
pub fn guid(kind: u32, n: u32) -> String {
    format!("{kind:08X}-0000-4000-8000-{n:012X}")
}

/// LDIF of an Open Directory user under cn=users.
pub fn od_user(short: &str, n: u32, full: &str, mail: &str) -> String {
    format!(
        "dn: uid={short},cn=users,{BASE}\nobjectClass: top\nobjectClass: person\nobjectClass: organizationalPerson\n\
         objectClass: inetOrgPerson\nobjectClass: posixAccount\nobjectClass: apple-user\nuid: {short}\ncn: {full}\nsn: {short}\n\
         mail: {mail}\nuidNumber: {}\ngidNumber: 20\nhomeDirectory: /Users/{short}\napple-generateduid: {}\n\
         authAuthority: ;Kerberosv5;;{short}@OD.EXAMPLE.COM;OD.EXAMPLE.COM;\n\n",
        1000 + n,
        guid(1, n)
    )
}

/// LDIF of `count` OD users `user0..`.
pub fn od_users(count: u32) -> String {
    let mut s = String::with_capacity(count as usize * 400);
    for n in 0..count {
        s.push_str(&od_user(
            &format!("user{n}"),
            n,
            &format!("User {n}"),
            &format!("user{n}@example.com"),
        ));
    }
    s
}

pub fn slapd_available() -> bool {
    Path::new(SLAPD).exists()
}

fn skip_or_fail(why: &str) -> Option<Slapd> {
    if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
        panic!("CI=true and the test slapd cannot run: {why}");
    }
    eprintln!("\n!!!!!!!!!! SKIPPED: {why} (install slapd + ldap-utils to run the LDAP tests) !!!!!!!!!!\n");
    None
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Builder {
    /// Global size limit (anonymous and ordinary binds; the rootdn is never limited).
    pub fn sizelimit(mut self, n: u32) -> Self {
        self.sizelimit = Some(n);
        self
    }
    /// `limits * size.prtotal=unlimited`: paged searches may return everything.
    pub fn prtotal_unlimited(mut self) -> Self {
        self.prtotal_unlimited = true;
        self
    }
    /// A test CA and a server certificate for 127.0.0.1; also listens on ldaps://.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }
    /// Like `tls()`, but the server presents the CA's own certificate (CA:TRUE) as its
    /// certificate: a misconfiguration clients must explain.
    pub fn tls_with_ca_as_server_cert(mut self) -> Self {
        self.tls = true;
        self.ca_as_server = true;
        self
    }
    /// Entries loaded with slapadd before start (the base entry and containers are added first).
    pub fn entries(mut self, ldif: &str) -> Self {
        self.entries.push_str(ldif);
        self
    }
    /// Replaces the default ACL (`access to * by * read`).
    pub fn acl(mut self, acl: &str) -> Self {
        self.acl = Some(acl.to_string());
        self
    }

    pub fn start(self) -> Option<Slapd> {
        if !slapd_available() {
            return skip_or_fail(&format!("{SLAPD} not found"));
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir(d.join("db")).expect("db dir");
        let schema = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/it/fixtures/apple-od-test.schema"
        );
        let mut conf = String::new();
        for s in ["core", "cosine", "inetorgperson", "nis"] {
            let _ = writeln!(conf, "include /etc/ldap/schema/{s}.schema");
        }
        let _ = writeln!(conf, "include {schema}");
        let _ = writeln!(conf, "modulepath /usr/lib/ldap\nmoduleload back_mdb");
        let _ = writeln!(
            conf,
            "pidfile {}/slapd.pid\nargsfile {}/slapd.args",
            d.display(),
            d.display()
        );
        if let Some(n) = self.sizelimit {
            let _ = writeln!(conf, "sizelimit {n}");
        }
        let mut ca_file = None;
        if self.tls {
            let ca = make_certs(d, self.ca_as_server);
            let served = if self.ca_as_server { "ca" } else { "server" };
            let _ = writeln!(
                conf,
                "TLSCACertificateFile {}\nTLSCertificateFile {}/{served}.pem\nTLSCertificateKeyFile {}/{served}.key",
                ca.display(),
                d.display(),
                d.display()
            );
            ca_file = Some(ca);
        }
        let _ = writeln!(
            conf,
            "database mdb\nmaxsize 1073741824\nsuffix \"{BASE}\"\nrootdn \"{ROOTDN}\"\nrootpw \"{ROOTPW}\"\ndirectory {}/db",
            d.display()
        );
        if self.prtotal_unlimited {
            let _ = writeln!(conf, "limits * size.prtotal=unlimited");
        }
        let _ = writeln!(
            conf,
            "{}",
            self.acl.as_deref().unwrap_or("access to * by * read")
        );
        std::fs::write(d.join("slapd.conf"), &conf).expect("slapd.conf");

        let ldif = d.join("data.ldif");
        let mut f = std::fs::File::create(&ldif).expect("data.ldif");
        f.write_all(base_entries().as_bytes()).unwrap();
        f.write_all(self.entries.as_bytes()).unwrap();
        drop(f);
        run(
            Command::new("/usr/sbin/slapadd")
                .arg("-q")
                .arg("-f")
                .arg(d.join("slapd.conf"))
                .arg("-l")
                .arg(&ldif),
            "slapadd",
        );

        let port = free_port();
        let url = format!("ldap://127.0.0.1:{port}");
        let (ldaps_url, listen) = if self.tls {
            let p2 = free_port();
            (
                Some(format!("ldaps://127.0.0.1:{p2}")),
                format!("{url}/ ldaps://127.0.0.1:{p2}/"),
            )
        } else {
            (None, format!("{url}/"))
        };
        let log = std::fs::File::create(d.join("slapd.log")).expect("log");
        let child = Command::new(SLAPD)
            .arg("-f")
            .arg(d.join("slapd.conf"))
            .arg("-h")
            .arg(&listen)
            .arg("-d")
            .arg("0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn slapd");
        let srv = Slapd {
            url,
            ldaps_url,
            ca_file,
            dir,
            child: Some(child),
        };
        srv.wait_ready(port);
        Some(srv)
    }
}

pub fn make_certs(d: &Path, ca_serves: bool) -> PathBuf {
    // A CA that serves TLS itself must be allowed to sign the handshake.
    let ca_usage = if ca_serves {
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
    } else {
        "keyUsage=critical,keyCertSign,cRLSign"
    };
    let ssl =
        |args: &[&str], what: &str| run(Command::new("openssl").args(args).current_dir(d), what);
    ssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=principal-reconciler test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            ca_usage,
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        "openssl CA",
    );
    ssl(
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        "openssl server key",
    );
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    ssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
        "openssl server cert",
    );
    d.join("ca.pem")
}

impl Slapd {
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A server holding `ldif` (plus the base entry and containers), default settings.
    pub fn start(ldif: &str) -> Option<Slapd> {
        Builder::default().entries(ldif).start()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn wait_ready(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!("slapd did not listen on {port}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default()
    }

    /// Kills the server now (SIGKILL by pid) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}
