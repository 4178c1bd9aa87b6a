//! A private `redis-server` on a free loopback port, for tests that stop,
//! restart or reconfigure their Redis (the shared one on 6379 must not be
//! touched). No persistence; killed on drop.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pki::Pki;
use crate::servers;

/// The server's log, in its directory.
const LOG_FILE: &str = "redis.log";
/// What the server logs once it listens on every port it was given.
const READY: &str = "Ready to accept connections";

pub struct RedisServer {
    child: Option<Child>,
    pub address: SocketAddr,
    arguments: Vec<String>,
    directory: tempfile::TempDir,
}

impl RedisServer {
    /// Plaintext Redis.
    pub fn plain() -> Self {
        Self::plain_with(&[])
    }

    /// Plaintext Redis with extra `redis-server` arguments (`--requirepass x`).
    pub fn plain_with(extra: &[&str]) -> Self {
        Self::start(|port| {
            let mut arguments = vec!["--port".to_owned(), port.to_string()];
            arguments.extend(extra.iter().map(|argument| (*argument).to_owned()));
            arguments
        })
    }

    /// Redis with TLS only, requiring client certificates from `pki`'s CA.
    pub fn tls(pki: &Pki) -> Self {
        Self::start(|port| {
            [
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                &pki.cert("server"),
                "--tls-key-file",
                &pki.key("server"),
                "--tls-ca-cert-file",
                &pki.ca(),
                "--tls-auth-clients",
                "yes",
            ]
            .iter()
            .map(|argument| (*argument).to_owned())
            .collect()
        })
    }

    /// Starts a server on a free port (`arguments` names it in the
    /// server's arguments); another port is tried when the server exits
    /// before accepting (something took the port between its choice and
    /// the server's bind).
    fn start(arguments: impl Fn(u16) -> Vec<String>) -> Self {
        let mut attempts = 0;
        loop {
            let mut server = Self::on(servers::closed_port().port(), &arguments);
            match server.launch() {
                Ok(()) => return server,
                Err(status) => {
                    attempts += 1;
                    assert!(
                        attempts < 5,
                        "redis-server exited ({status}) before accepting, {attempts} times"
                    );
                }
            }
        }
    }

    /// A server for `port`, not started yet.
    fn on(port: u16, arguments: impl Fn(u16) -> Vec<String>) -> Self {
        let directory = tempfile::tempdir().expect("temporary directory");
        let dir = directory.path().display().to_string();
        let mut arguments = arguments(port);
        arguments.extend(
            [
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir,
                "--logfile",
                LOG_FILE,
            ]
            .map(str::to_owned),
        );
        Self {
            child: None,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            arguments,
            directory,
        }
    }

    /// Kills the server (its clients see their connections closed).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and waits until it accepts.
    pub fn restart(&mut self) {
        if let Err(status) = self.launch() {
            panic!(
                "redis-server exited ({status}) before accepting on {}; is the port taken?",
                self.address
            );
        }
    }

    /// (Re)starts the server and waits until it accepts; `Err` when it
    /// exited first. The server's own log says when it listens: a port
    /// that accepts is not enough, because when the server cannot bind,
    /// whoever took the port in the meantime (another test's server
    /// bound to port 0, even an outgoing connection to itself) accepts
    /// in its place.
    fn launch(&mut self) -> Result<(), std::process::ExitStatus> {
        self.stop();
        let log = self.directory.path().join(LOG_FILE);
        let logged_before = std::fs::metadata(&log).map_or(0, |metadata| metadata.len());
        let child = Command::new("redis-server")
            .args(&self.arguments)
            .current_dir(self.directory.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        let child = self.child.insert(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = std::fs::read(&log).is_ok_and(|text| {
                let logged = text.get(logged_before as usize..).unwrap_or_default();
                logged
                    .windows(READY.len())
                    .any(|window| window == READY.as_bytes())
            });
            if ready {
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(status);
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}",
                self.address
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_another_listener_took_is_not_mistaken_for_the_server() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
        let port = taken.local_addr().expect("bound address").port();
        let mut server = RedisServer::on(port, |port| vec!["--port".to_owned(), port.to_string()]);
        assert!(
            server.launch().is_err(),
            "redis-server could not bind {port}, yet was taken as started"
        );
    }
}
