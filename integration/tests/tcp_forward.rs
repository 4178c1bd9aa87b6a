//! L4 forwarding through the real binary: byte-exact bulk transfer both ways,
//! many concurrent connections, half-close, IPv6, balancing, hostnames and
//! the idle timeout.

use std::time::Duration;

use std::net::SocketAddr;

use attache_integration::{Attache, exchange, servers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn one_listener(
    listen: &str,
    endpoints: &[String],
    extra_listener: &str,
    extra_upstream: &str,
) -> String {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|endpoint| format!("\"{endpoint}\""))
        .collect();
    format!(
        "listeners:\n  - name: front\n    listen: \"{listen}\"\n    protocol: tcp\n    upstream: back\n{extra_listener}\
         upstreams:\n  back:\n    endpoints: [{}]\n{extra_upstream}",
        endpoints.join(", ")
    )
}

/// attache with one listener forwarding to `upstream`.
async fn forward_to(upstream: SocketAddr) -> Attache {
    Attache::run(&one_listener(
        "127.0.0.1:0",
        &[upstream.to_string()],
        "",
        "",
    ))
    .await
    .unwrap()
}

#[tokio::test]
async fn sixty_four_mib_both_ways_at_once_arrive_intact() {
    const SIZE: usize = 64 * 1024 * 1024;
    let (upstream, mut server_hashes) = servers::source_sink(SIZE, 1).await;
    let attache = forward_to(upstream).await;

    let mut client = TcpStream::connect(attache.listener("front")).await.unwrap();
    let payload = servers::random_bytes(SIZE, 2);
    let received = exchange(&mut client, &payload).await.unwrap();

    let server = server_hashes.recv().await.unwrap();
    assert_eq!(received.len(), SIZE);
    assert_eq!(
        server.received,
        servers::sha256_hex(&payload),
        "client to upstream"
    );
    assert_eq!(
        servers::sha256_hex(&received),
        server.sent,
        "upstream to client"
    );
    let to_upstream = attache
        .metric("attache_transferred_bytes_total{listener=\"front\",direction=\"to_upstream\"}")
        .await
        .unwrap();
    assert_eq!(to_upstream, SIZE as f64);
}

#[tokio::test]
async fn two_hundred_concurrent_connections_each_get_their_own_bytes_back() {
    let upstream = servers::echo().await;
    let attache = forward_to(upstream).await;
    let front = attache.listener("front");

    let clients = (0..200u64).map(|index| {
        tokio::spawn(async move {
            let payload = servers::random_bytes(32 * 1024 + index as usize, index);
            let mut stream = TcpStream::connect(front).await?;
            Ok::<_, std::io::Error>(exchange(&mut stream, &payload).await? == payload)
        })
    });
    let results = futures_join(clients).await;
    assert_eq!(
        results.iter().filter(|intact| **intact).count(),
        200,
        "every echo intact and unmixed"
    );
    let opened = attache
        .metric("attache_connections_total{listener=\"front\"}")
        .await
        .unwrap();
    assert_eq!(opened, 200.0);
}

async fn futures_join(
    handles: impl Iterator<Item = tokio::task::JoinHandle<std::io::Result<bool>>>,
) -> Vec<bool> {
    let mut results = Vec::new();
    for handle in handles {
        results.push(handle.await.unwrap().unwrap());
    }
    results
}

#[tokio::test]
async fn a_client_that_half_closes_still_receives_the_whole_reply() {
    const TAIL: usize = 4 * 1024 * 1024;
    let upstream = servers::reply_after_eof(TAIL).await;
    let attache = forward_to(upstream).await;

    let mut client = TcpStream::connect(attache.listener("front")).await.unwrap();
    let request = servers::random_bytes(100_000, 3);
    client.write_all(&request).await.unwrap();
    client.shutdown().await.unwrap();
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).await.unwrap();

    let header = format!("{} {}\n", request.len(), servers::sha256_hex(&request));
    assert!(
        reply.starts_with(header.as_bytes()),
        "upstream saw the whole request, then EOF"
    );
    assert_eq!(
        &reply[header.len()..],
        servers::random_bytes(TAIL, 7).as_slice(),
        "the whole reply arrived"
    );
}

#[tokio::test]
async fn an_upstream_that_half_closes_still_receives_everything_the_client_sends() {
    let (upstream, mut received_hashes) = servers::greet_then_read(b"server done talking").await;
    let attache = forward_to(upstream).await;

    let mut client = TcpStream::connect(attache.listener("front")).await.unwrap();
    let mut greeting = Vec::new();
    client.read_to_end(&mut greeting).await.unwrap();
    assert_eq!(
        greeting, b"server done talking",
        "the upstream's EOF reached the client"
    );
    // The client keeps talking after the upstream's half-close.
    let request = servers::random_bytes(3 * 1024 * 1024, 9);
    client.write_all(&request).await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(
        received_hashes.recv().await.unwrap(),
        servers::sha256_hex(&request)
    );
}

#[tokio::test]
async fn ipv6_loopback_listener_and_hostname_endpoint_work() {
    let upstream = servers::echo().await;
    // "localhost" is resolved at connect time, as a Kubernetes service name would be.
    let endpoint = format!("localhost:{}", upstream.port());
    let attache = Attache::run(&one_listener("[::1]:0", &[endpoint], "", ""))
        .await
        .unwrap();
    let front = attache.listener("front");
    assert!(front.is_ipv6());

    let mut client = TcpStream::connect(front).await.unwrap();
    assert_eq!(
        exchange(&mut client, b"over ipv6").await.unwrap(),
        b"over ipv6"
    );
}

async fn greetings(front: std::net::SocketAddr, count: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..count {
        let mut client = TcpStream::connect(front).await.unwrap();
        let mut greeting = String::new();
        client.read_to_string(&mut greeting).await.unwrap();
        seen.push(greeting);
    }
    seen
}

#[tokio::test]
async fn round_robin_takes_each_endpoint_in_turn() {
    let endpoints = [
        servers::greeter("a").await,
        servers::greeter("b").await,
        servers::greeter("c").await,
    ];
    let endpoints: Vec<_> = endpoints.iter().map(ToString::to_string).collect();
    let attache = Attache::run(&one_listener("127.0.0.1:0", &endpoints, "", ""))
        .await
        .unwrap();
    assert_eq!(
        greetings(attache.listener("front"), 6).await,
        ["a", "b", "c", "a", "b", "c"]
    );
}

#[tokio::test]
async fn least_connections_avoids_the_endpoint_holding_a_connection() {
    let busy = servers::echo().await;
    let free = servers::greeter("free").await;
    let endpoints = [busy.to_string(), free.to_string()];
    let attache = Attache::run(&one_listener(
        "127.0.0.1:0",
        &endpoints,
        "",
        "    balance: least_connections\n",
    ))
    .await
    .unwrap();
    let front = attache.listener("front");
    // The first connection goes to the echo endpoint and stays open.
    let mut held = TcpStream::connect(front).await.unwrap();
    held.write_all(b"x").await.unwrap();
    let mut byte = [0; 1];
    held.read_exact(&mut byte).await.unwrap();
    assert_eq!(
        &byte, b"x",
        "the first connection reached the echo endpoint"
    );
    for _ in 0..3 {
        // Balance only once the previous greeting is closed on attache's side
        // too, so the held connection is the only one counted.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while attache
            .metric("attache_connections_active{listener=\"front\"}")
            .await
            .unwrap()
            != 1.0
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "connections never settled"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let greeting = tokio::time::timeout(Duration::from_secs(20), greetings(front, 1)).await;
        assert_eq!(
            greeting.ok(),
            Some(vec!["free".to_owned()]),
            "log:\n{}",
            attache.log_text()
        );
    }
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_counted() {
    let upstream = servers::echo().await;
    let attache = Attache::run(&one_listener(
        "127.0.0.1:0",
        &[upstream.to_string()],
        "    idle_timeout: 300ms\n",
        "",
    ))
    .await
    .unwrap();
    let mut client = TcpStream::connect(attache.listener("front")).await.unwrap();
    client.write_all(b"ping").await.unwrap();
    let mut echoed = [0; 4];
    client.read_exact(&mut echoed).await.unwrap();
    // Nothing more is sent: attache closes the connection.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), client.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "closed by attache, got {read:?}");
    let idle = attache
        .metric("attache_connections_closed_total{listener=\"front\",result=\"idle_timeout\"}")
        .await
        .unwrap();
    assert_eq!(idle, 1.0);
}
