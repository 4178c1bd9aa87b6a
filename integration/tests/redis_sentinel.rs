//! A Sentinel-monitored Redis through the ambassador: a master, a replica
//! and three `redis-server --sentinel` processes on loopback; the master is
//! killed, the Sentinels promote the replica, and writes through the same
//! client connection succeed against the new master.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use attache_integration::Attache;
use attache_integration::redis_server::RedisServer;
use attache_integration::servers;
use redis::AsyncCommands as _;

/// Sentinel processes, killed on drop.
struct Sentinels {
    children: Vec<Child>,
    addresses: Vec<SocketAddr>,
    _directory: tempfile::TempDir,
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_sentinels(master: SocketAddr) -> Sentinels {
    let directory = tempfile::tempdir().unwrap();
    let mut children = Vec::new();
    let mut addresses = Vec::new();
    for index in 0..3 {
        let port = servers::closed_port().port();
        let config = directory.path().join(format!("sentinel-{index}.conf"));
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 3000\n\
                 sentinel parallel-syncs mymaster 1\n",
                dir = directory.path().display(),
                master_port = master.port(),
            ),
        )
        .unwrap();
        children.push(
            Command::new("redis-server")
                .arg(&config)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel"),
        );
        addresses.push(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    Sentinels {
        children,
        addresses,
        _directory: directory,
    }
}

/// `INFO section` of the server at `address`, or why it failed: a Sentinel
/// promoting a replica kills the replica's normal clients (`CLIENT KILL
/// TYPE normal`), so a probe may lose its connection mid-way and ask again.
async fn info(address: SocketAddr, section: &str) -> String {
    let asked = async {
        let mut connection = redis::Client::open(format!("redis://{address}/"))?
            .get_multiplexed_async_connection()
            .await?;
        redis::cmd("INFO")
            .arg(section)
            .query_async::<String>(&mut connection)
            .await
    };
    asked
        .await
        .unwrap_or_else(|error| format!("(INFO {section} failed: {error})"))
}

async fn wait_for(what: &str, timeout: Duration, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A master, its replica and three Sentinels that all see both and each
/// other: ready for a failover.
async fn monitored_group() -> (RedisServer, RedisServer, Sentinels) {
    let master = RedisServer::plain();
    let replica_of = master.address.port().to_string();
    let replica = RedisServer::plain_with(&["--replicaof", "127.0.0.1", &replica_of]);
    wait_for("replication", Duration::from_secs(20), async || {
        info(replica.address, "replication")
            .await
            .contains("master_link_status:up")
    })
    .await;
    let sentinels = start_sentinels(master.address);
    for sentinel in &sentinels.addresses {
        let sentinel = *sentinel;
        wait_for(
            "a Sentinel to see the replica and its peers",
            Duration::from_secs(30),
            async || {
                tokio::net::TcpStream::connect(sentinel).await.is_ok()
                    && info(sentinel, "sentinel")
                        .await
                        .contains("slaves=1,sentinels=3")
            },
        )
        .await;
    }
    (master, replica, sentinels)
}

impl Sentinels {
    /// The Sentinels as a YAML list's items: `"127.0.0.1:P1", ...`.
    fn endpoints(&self) -> String {
        self.addresses
            .iter()
            .map(|address| format!("\"{address}\""))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_follow_the_master_after_a_sentinel_failover() {
    let (mut master, replica, sentinels) = monitored_group().await;
    let endpoints = sentinels.endpoints();
    let config = format!(
        "listeners:
  - name: redis
    listen: 127.0.0.1:0
    protocol: redis
    upstream: cache
upstreams:
  cache:
    endpoints: [{}]
    sentinel: {{ master_name: mymaster }}
",
        endpoints
    );
    let attache = Attache::run(&config).await.unwrap();
    let mut client = redis::Client::open(format!("redis://{}/", attache.listener("redis")))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    wait_for(
        "attache to learn the master",
        Duration::from_secs(10),
        async || client.set::<_, _, ()>("before", "failover").await.is_ok(),
    )
    .await;

    master.stop();
    // The same client connection keeps writing; once the Sentinels have
    // promoted the replica, the writes land there.
    wait_for(
        "a write after the failover",
        Duration::from_secs(60),
        async || client.set::<_, _, ()>("after", "failover").await.is_ok(),
    )
    .await;
    let role = info(replica.address, "replication").await;
    assert!(role.contains("role:master"), "{role}");
    let mut promoted = redis::Client::open(format!("redis://{}/", replica.address))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    assert_eq!(
        promoted.get::<_, String>("after").await.unwrap(),
        "failover"
    );
    assert_eq!(
        promoted.get::<_, String>("before").await.unwrap(),
        "failover"
    );
    // The first master and the promoted one are logged (the log is read by
    // a thread: wait for the lines).
    let deadline = std::time::Instant::now() + attache_integration::START_TIMEOUT;
    while attache
        .events()
        .iter()
        .filter(|event| event["message"] == "Redis master (from Sentinel)")
        .count()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the promoted master is not logged: {}",
            attache.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failover_clears_the_cache_and_reads_follow_the_new_master() {
    let (master, replica, sentinels) = monitored_group().await;
    let endpoints = sentinels.endpoints();
    let config = format!(
        "listeners:
  - name: redis
    listen: 127.0.0.1:0
    protocol: redis
    upstream: cache
    redis:
      cache: {{ max_memory: 1MiB, keys: [\"cached:\"] }}
upstreams:
  cache:
    endpoints: [{}]
    sentinel: {{ master_name: mymaster }}
",
        endpoints
    );
    let attache = Attache::run(&config).await.unwrap();
    let enabled = "attache_redis_cache_enabled{listener=\"redis\"}";
    attache.wait_for_metric(enabled, 1.0).await.unwrap();
    let mut client = redis::Client::open(format!("redis://{}/", attache.listener("redis")))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = client.set("cached:k", "old").await.unwrap();
    let hits = "attache_redis_cache_requests_total{listener=\"redis\",result=\"hit\"}";
    wait_for("a cache hit", Duration::from_secs(10), async || {
        let value: String = client.get("cached:k").await.unwrap();
        assert_eq!(value, "old");
        attache.metric(hits).await.unwrap() >= 1.0
    })
    .await;

    // A failover with both servers alive: the old master becomes a replica.
    let mut sentinel = redis::Client::open(format!("redis://{}/", sentinels.addresses[0]))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg("mymaster")
        .query_async(&mut sentinel)
        .await
        .unwrap();
    wait_for(
        "the replica to be promoted",
        Duration::from_secs(60),
        async || {
            info(replica.address, "replication")
                .await
                .contains("role:master")
        },
    )
    .await;
    wait_for(
        "the cache to drop tracking",
        Duration::from_secs(30),
        async || {
            let metrics = attache.metrics().await.unwrap();
            ["failover", "closed"].iter().any(|reason| {
                metrics
                .get(&format!(
                    "attache_redis_cache_disabled_total{{listener=\"redis\",reason=\"{reason}\"}}"
                ))
                .is_some_and(|count| *count >= 1.0)
            })
        },
    )
    .await;
    // Written on the new master directly: read through attache, never the old value for long.
    let mut promoted = redis::Client::open(format!("redis://{}/", replica.address))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = promoted.set("cached:k", "new").await.unwrap();
    wait_for(
        "the new value through attache",
        Duration::from_secs(30),
        async || {
            matches!(
                client.get::<_, String>("cached:k").await.as_deref(),
                Ok("new")
            )
        },
    )
    .await;
    attache.wait_for_metric(enabled, 1.0).await.unwrap();
    for _ in 0..20 {
        assert_eq!(client.get::<_, String>("cached:k").await.unwrap(), "new");
    }
    drop(master);
}
