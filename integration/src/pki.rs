//! A development PKI for TLS tests, made with the binary's own
//! `attache certs` (and `openssl ca` for what it cannot make).

use std::process::Command;

use crate::binary;

/// A development PKI made with `attache certs`: our CA with a server
/// certificate, the allowed client, a client with another SPIFFE ID, an
/// expired client; and a stranger signed by another CA.
pub struct Pki {
    directory: tempfile::TempDir,
}

pub const ALLOWED_ID: &str = "spiffe://cluster.local/ns/default/sa/app";

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    pub fn new() -> Self {
        let directory = tempfile::tempdir().unwrap();
        let pki = Self { directory };
        pki.attache(&["certs", "ca", "--out", &pki.path("ca")]);
        pki.attache(&["certs", "ca", "--out", &pki.path("other-ca")]);
        pki.issue("ca", "server", &["--dns", "localhost", "--ip", "127.0.0.1"]);
        pki.issue("ca", "app", &["--uri", ALLOWED_ID]);
        pki.issue(
            "ca",
            "intruder",
            &["--uri", "spiffe://cluster.local/ns/default/sa/intruder"],
        );
        pki.issue("ca", "expired", &["--uri", ALLOWED_ID, "--days", "0"]);
        pki.issue("other-ca", "stranger", &["--uri", ALLOWED_ID]);
        pki.issue_future("future");
        pki
    }

    /// A client certificate from our CA that becomes valid only in 2099,
    /// made with `openssl ca` (`attache certs` cannot postdate).
    pub fn issue_future(&self, name: &str) {
        let ca_dir = self.path("openssl-ca");
        std::fs::create_dir_all(format!("{ca_dir}/new")).unwrap();
        std::fs::write(format!("{ca_dir}/index.txt"), "").unwrap();
        std::fs::write(format!("{ca_dir}/serial"), "1000\n").unwrap();
        std::fs::write(
            format!("{ca_dir}/ca.cnf"),
            format!(
                "[ca]\ndefault_ca = local\n[local]\ndatabase = {ca_dir}/index.txt\nnew_certs_dir = {ca_dir}/new\n\
                 serial = {ca_dir}/serial\ndefault_md = sha256\npolicy = any\nx509_extensions = leaf\n\
                 [any]\ncommonName = supplied\n[leaf]\nbasicConstraints = CA:FALSE\nextendedKeyUsage = clientAuth\n"
            ),
        )
        .unwrap();
        let (key, csr, cert) = (
            self.key(name),
            format!("{ca_dir}/{name}.csr"),
            self.cert(name),
        );
        let run = |arguments: &[&str]| {
            let output = Command::new("openssl").args(arguments).output().unwrap();
            assert!(
                output.status.success(),
                "openssl {arguments:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        run(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ]);
        run(&[
            "req",
            "-new",
            "-key",
            &key,
            "-subj",
            &format!("/CN={name}"),
            "-out",
            &csr,
        ]);
        run(&[
            "ca",
            "-batch",
            "-notext",
            "-config",
            &format!("{ca_dir}/ca.cnf"),
            "-cert",
            &self.ca(),
            "-keyfile",
            &self.path("ca/ca.key"),
            "-in",
            &csr,
            "-out",
            &cert,
            "-startdate",
            "20990101000000Z",
            "-enddate",
            "20991231000000Z",
        ]);
    }

    pub fn attache(&self, arguments: &[&str]) {
        let output = Command::new(binary()).args(arguments).output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn issue(&self, ca: &str, name: &str, extra: &[&str]) {
        let (ca, out) = (self.path(ca), self.path("certs"));
        let mut arguments = vec!["certs", "issue", "--ca", &ca, "--out", &out, "--name", name];
        arguments.extend_from_slice(extra);
        self.attache(&arguments);
    }

    pub fn path(&self, relative: &str) -> String {
        self.directory.path().join(relative).display().to_string()
    }

    pub fn cert(&self, name: &str) -> String {
        self.path(&format!("certs/{name}.crt"))
    }

    pub fn key(&self, name: &str) -> String {
        self.path(&format!("certs/{name}.key"))
    }

    pub fn ca(&self) -> String {
        self.path("ca/ca.crt")
    }

    /// A config with TLS listener `front` (this PKI's server certificate,
    /// client certificates from its CA required) forwarding to `upstream`.
    pub fn front_door_config(&self, upstream: std::net::SocketAddr) -> String {
        format!(
            "listeners:\n  - name: front\n    listen: 127.0.0.1:0\n    protocol: tcp\n    upstream: app\n\
             \x20   tls: {{cert: {}, key: {}, client_ca: {}}}\n\
             upstreams:\n  app:\n    endpoints: [\"{upstream}\"]\n",
            self.cert("server"),
            self.key("server"),
            self.ca(),
        )
    }
}
