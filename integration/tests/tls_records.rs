//! What rustls queues while attache only reads reaches the peer at once:
//! a TLS 1.2 client asking to renegotiate gets `no_renegotiation`, TLS 1.3
//! session tickets arrive before any response, and a record that breaks the
//! protocol after the handshake (a malformed KeyUpdate, a record with no
//! content type) is answered with an alert, not a bare close.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use attache_integration::pki::Pki;
use attache_integration::{Attache, servers};
use ring::aead;
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Tls13ClientSessionValue};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ConnectionTrafficSecrets, RootCertStore};

/// How long a test waits for an answer that, without the fix, never comes.
const ANSWER: Duration = Duration::from_secs(20);

async fn front_door(pki: &Pki) -> Attache {
    Attache::run(&pki.front_door_config(servers::echo().await))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls12_client_asking_to_renegotiate_gets_the_alert_at_once() {
    let pki = Pki::new();
    let door = front_door(&pki).await;
    let front = door.listener("front").to_string();
    let (cert, key, ca) = (pki.cert("app"), pki.key("app"), pki.ca());
    let output = tokio::task::spawn_blocking(move || {
        let mut client = Command::new("timeout")
            .args(["30", "openssl", "s_client", "-connect", &front, "-tls1_2"])
            .args(["-cert", &cert, "-key", &key, "-CAfile", &ca])
            .args(["-servername", "localhost"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = client.stdin.take().unwrap();
        let mut stdout = BufReader::new(client.stdout.take().unwrap());
        stdin.write_all(b"hello\n").unwrap();
        let mut line = String::new();
        while line.trim_end() != "hello" {
            line.clear();
            assert!(stdout.read_line(&mut line).unwrap() > 0, "no echo");
        }
        // `R` alone on a line makes s_client renegotiate; stdin stays open,
        // so only an answer from attache ends it.
        stdin.write_all(b"R\n").unwrap();
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
        let mut errors = String::new();
        let _ = client.stderr.take().unwrap().read_to_string(&mut errors);
        let status = client.wait().unwrap();
        drop(stdin);
        (status, format!("{rest}{errors}"))
    })
    .await
    .unwrap();
    let (status, text) = output;
    assert_ne!(
        status.code(),
        Some(124),
        "no answer to the renegotiation: {text}"
    );
    assert!(text.contains("no renegotiation"), "{text}");
}

/// Counts the TLS 1.3 tickets the server sends.
#[derive(Debug)]
struct CountingStore {
    inner: ClientSessionMemoryCache,
    tickets: Arc<AtomicUsize>,
}

impl ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(server_name, group);
    }
    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(server_name)
    }
    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(server_name, value);
    }
    fn tls12_session(
        &self,
        server_name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }
    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name);
    }
    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.tickets.fetch_add(1, Ordering::SeqCst);
        self.inner.insert_tls13_ticket(server_name, value);
    }
    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(server_name)
    }
}

/// A TLS 1.3 client (AES-128-GCM only, so the test can write records of its
/// own with the extracted keys) with the allowed client certificate.
fn client_config(pki: &Pki, tickets: Arc<AtomicUsize>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(pki.ca()).unwrap())
        .unwrap();
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_file(pki.cert("app")).unwrap()],
            PrivateKeyDer::from_pem_file(pki.key("app")).unwrap(),
        )
        .unwrap();
    config.resumption = rustls::client::Resumption::store(Arc::new(CountingStore {
        inner: ClientSessionMemoryCache::new(8),
        tickets,
    }));
    config.enable_secret_extraction = true;
    Arc::new(config)
}

/// A finished TLS 1.3 handshake, its socket and its connection.
fn handshake(
    config: Arc<ClientConfig>,
    front: SocketAddr,
) -> (std::net::TcpStream, ClientConnection) {
    let mut socket = std::net::TcpStream::connect(front).unwrap();
    socket.set_read_timeout(Some(ANSWER)).unwrap();
    let mut connection =
        ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    while connection.is_handshaking() {
        connection.complete_io(&mut socket).unwrap();
    }
    while connection.wants_write() {
        connection.write_tls(&mut socket).unwrap();
    }
    (socket, connection)
}

#[tokio::test(flavor = "multi_thread")]
async fn tls13_session_tickets_arrive_before_any_response() {
    let pki = Pki::new();
    let door = front_door(&pki).await;
    let front = door.listener("front");
    let tickets = Arc::new(AtomicUsize::new(0));
    let config = client_config(&pki, tickets.clone());
    let received = tokio::task::spawn_blocking(move || {
        let (mut socket, mut connection) = handshake(config, front);
        // Nothing is sent: only what attache sends on its own arrives.
        while tickets.load(Ordering::SeqCst) == 0 {
            match connection.read_tls(&mut socket) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    connection.process_new_packets().unwrap();
                }
            }
        }
        tickets.load(Ordering::SeqCst)
    })
    .await
    .unwrap();
    assert!(received > 0, "no session ticket before the first response");
}

/// TLS 1.3 record protection with keys the test holds.
struct RecordKeys {
    key: aead::LessSafeKey,
    iv: [u8; 12],
    sequence: u64,
}

impl RecordKeys {
    fn new(secrets: (u64, ConnectionTrafficSecrets)) -> Self {
        let (sequence, ConnectionTrafficSecrets::Aes128Gcm { key, iv }) = secrets else {
            panic!("the client offers AES-128-GCM only");
        };
        let key = aead::LessSafeKey::new(
            aead::UnboundKey::new(&aead::AES_128_GCM, key.as_ref()).unwrap(),
        );
        Self {
            key,
            iv: iv.as_ref().try_into().unwrap(),
            sequence,
        }
    }

    fn nonce(&mut self) -> aead::Nonce {
        let mut nonce = self.iv;
        for (byte, sequence) in nonce[4..].iter_mut().zip(self.sequence.to_be_bytes()) {
            *byte ^= sequence;
        }
        self.sequence += 1;
        aead::Nonce::assume_unique_for_key(nonce)
    }

    /// An application-data record carrying `inner` (content, type, padding).
    fn seal(&mut self, inner: &[u8]) -> Vec<u8> {
        let length = u16::try_from(inner.len() + 16).unwrap().to_be_bytes();
        let header = [0x17, 3, 3, length[0], length[1]];
        let mut body = inner.to_vec();
        let nonce = self.nonce();
        self.key
            .seal_in_place_append_tag(nonce, aead::Aad::from(header), &mut body)
            .unwrap();
        [header.as_slice(), &body].concat()
    }

    /// The content type and content of each record in `bytes`.
    fn open_all(&mut self, mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut records = Vec::new();
        while bytes.len() >= 5 {
            let length = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
            let header: [u8; 5] = bytes[..5].try_into().unwrap();
            let mut body = bytes[5..5 + length].to_vec();
            bytes = &bytes[5 + length..];
            let nonce = self.nonce();
            let inner = self
                .key
                .open_in_place(nonce, aead::Aad::from(header), &mut body)
                .unwrap();
            let end = inner.iter().rposition(|byte| *byte != 0).unwrap();
            records.push((inner[end], inner[..end].to_vec()));
        }
        records
    }
}

/// Sends `inner` as a protected record after a finished handshake and an
/// echoed message, and returns what attache sends back until it closes.
fn send_after_handshake(pki: &Pki, front: SocketAddr, inner: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let config = client_config(pki, Arc::new(AtomicUsize::new(0)));
    let (mut socket, mut connection) = handshake(config, front);
    connection.writer().write_all(b"ping").unwrap();
    let mut echoed = Vec::new();
    while echoed.len() < 4 {
        connection.complete_io(&mut socket).unwrap();
        let mut chunk = [0; 16];
        if let Ok(read) = connection.reader().read(&mut chunk) {
            echoed.extend_from_slice(&chunk[..read]);
        }
    }
    assert_eq!(echoed, b"ping");
    let secrets = connection.dangerous_extract_secrets().unwrap();
    let mut sending = RecordKeys::new(secrets.tx);
    let mut receiving = RecordKeys::new(secrets.rx);
    socket.write_all(&sending.seal(inner)).unwrap();
    let mut answer = Vec::new();
    socket
        .read_to_end(&mut answer)
        .expect("attache closes the connection within the wait");
    receiving.open_all(&answer)
}

const CONTENT_ALERT: u8 = 21;
const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_ILLEGAL_PARAMETER: u8 = 47;

#[tokio::test(flavor = "multi_thread")]
async fn protocol_errors_after_the_handshake_get_an_alert_not_a_bare_close() {
    let pki = Pki::new();
    let door = front_door(&pki).await;
    let front = door.listener("front");
    let cases: [(&str, Vec<u8>, [u8; 2]); 2] = [
        // KeyUpdate (24) whose request_update is 5, neither 0 nor 1: rustls'
        // fatal illegal_parameter.
        (
            "malformed KeyUpdate",
            vec![24, 0, 0, 1, 5, 22],
            [2, ALERT_ILLEGAL_PARAMETER],
        ),
        // Inner plaintext of zeros only: no content type at all. rustls 0.23
        // queues no alert for it; attache closes with close_notify.
        ("zero content type", vec![0, 0, 0], [1, ALERT_CLOSE_NOTIFY]),
    ];
    for (case, inner, expected) in cases {
        let pki = &pki;
        let records = tokio::task::block_in_place(|| send_after_handshake(pki, front, &inner));
        let alert = records
            .iter()
            .find(|(content_type, _)| *content_type == CONTENT_ALERT)
            .unwrap_or_else(|| {
                panic!(
                    "{case}: closed without an alert: {records:?}\n{}",
                    door.log_text()
                )
            });
        assert_eq!(alert.1, expected, "{case}: the alert");
    }
}
