//! attache running out of file descriptors is attache's problem, not the
//! upstream's: connects that fail with EMFILE are counted as
//! `local_resources` and never feed an endpoint's circuit breaker.

use std::time::Duration;

use attache_integration::{Attache, Launch, servers, write_config};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Clients queued at once: more than the descriptors attache has left.
const CLIENTS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_never_ejects_a_healthy_upstream() {
    let upstream = servers::echo().await;
    // One failure would open the breaker for the rest of the test.
    let config = write_config(&format!(
        "listeners:
  - {{ name: front, listen: \"127.0.0.1:0\", protocol: tcp, upstream: app }}
upstreams:
  app:
    endpoints: [\"{upstream}\"]
    retry: {{ attempts: 1 }}
    breaker: {{ consecutive_failures: 1, open_for: 10m, max_open_for: 10m }}
"
    ))
    .unwrap();
    let path = config.path().display().to_string();
    let attache = Attache::launch(Launch {
        arguments: &["run", "-c", &path, "--admin", "127.0.0.1:0"],
        config: Some(config),
        // One worker: the listener accepts every queued client (until the
        // descriptors run out) before any client's task connects upstream,
        // so the first connects find none left.
        env: &[("ATTACHE_WORKER_THREADS", "1")],
        stalled: None,
        open_files: Some(64),
    })
    .await
    .unwrap();
    let front = attache.listener("front");
    let pid = Pid::from_raw(i32::try_from(attache.pid()).unwrap());

    // Queue every client in the kernel's backlog while attache is stopped.
    kill(pid, Signal::SIGSTOP).unwrap();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(TcpStream::connect(front).await.unwrap());
    }
    kill(pid, Signal::SIGCONT).unwrap();
    let exchanges: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let _ = client.write_all(b"ping").await;
                let _ = client.shutdown().await;
                let mut reply = Vec::new();
                let _ = client.read_to_end(&mut reply).await;
                reply == b"ping"
            })
        })
        .collect();
    let mut echoed = 0;
    for exchange in exchanges {
        // Generous: clients queued behind exhausted descriptors are
        // accepted as earlier ones finish.
        let done = tokio::time::timeout(Duration::from_secs(120), exchange)
            .await
            .expect("every queued client is answered or closed")
            .unwrap();
        echoed += usize::from(done);
    }
    assert!(echoed > 0, "some clients were served");

    let metrics = attache.metrics().await.unwrap();
    let endpoint = format!("upstream=\"app\",endpoint=\"{upstream}\"");
    let local = metrics
        .get(&format!(
            "attache_upstream_connect_failures_total{{{endpoint},reason=\"local_resources\"}}"
        ))
        .copied()
        .unwrap_or_default();
    assert!(local > 0.0, "no connect failed for lack of descriptors");
    assert!(
        metrics["attache_connections_refused_total{listener=\"front\",reason=\"local_resources\"}"]
            > 0.0
    );
    let opened = metrics
        .get(&format!(
            "attache_upstream_breaker_transitions_total{{{endpoint},state=\"open\"}}"
        ))
        .copied()
        .unwrap_or_default();
    assert_eq!(
        opened, 0.0,
        "attache's own EMFILE ejected a healthy upstream"
    );

    // And the next client is served.
    let mut client = TcpStream::connect(front).await.unwrap();
    client.write_all(b"again").await.unwrap();
    client.shutdown().await.unwrap();
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"again");
}
