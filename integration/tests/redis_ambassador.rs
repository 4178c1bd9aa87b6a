//! The Redis ambassador (`protocol: redis`) with the `redis` crate and raw
//! RESP: data types, pipelines and large values through shared upstream
//! connections; many concurrent clients each seeing only their own
//! replies, in order, over a fixed number of upstream connections;
//! SELECT isolation; refused and malformed input; an upstream that dies
//! with commands in flight.

use std::net::SocketAddr;
use std::time::Duration;

use attache_integration::Attache;
use attache_integration::redis_server::RedisServer;
use attache_integration::servers::{random_bytes, sha256_hex};
use redis::AsyncCommands as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn config(redis: SocketAddr, extra: &str) -> String {
    format!(
        "listeners:
  - name: redis
    listen: 127.0.0.1:0
    protocol: redis
    upstream: redis
{extra}
upstreams:
  redis: {{ endpoints: [\"{redis}\"] }}
"
    )
}

async fn connect(attache: &Attache) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{}/", attache.listener("redis")))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A connection straight to the Redis at `address`, bypassing attache.
async fn direct(address: SocketAddr) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{address}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn shared_redis() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 6379))
}

#[tokio::test]
async fn data_types_scripts_scans_pipelines_and_large_values_go_through() {
    let attache = Attache::run(&config(shared_redis(), "")).await.unwrap();
    let mut redis = connect(&attache).await;
    let prefix = format!("attache:test:types:{}", std::process::id());
    let key = |name: &str| format!("{prefix}:{name}");

    let _: () = redis.set(key("string"), "value").await.unwrap();
    assert_eq!(
        redis.get::<_, String>(key("string")).await.unwrap(),
        "value"
    );
    let _: () = redis
        .hset_multiple(key("hash"), &[("a", 1), ("b", 2)])
        .await
        .unwrap();
    assert_eq!(redis.hget::<_, _, i64>(key("hash"), "b").await.unwrap(), 2);
    let _: () = redis.rpush(key("list"), &[1, 2, 3]).await.unwrap();
    assert_eq!(
        redis
            .lrange::<_, Vec<i64>>(key("list"), 0, -1)
            .await
            .unwrap(),
        [1, 2, 3]
    );
    let _: () = redis.sadd(key("set"), &["x", "y", "x"]).await.unwrap();
    assert_eq!(redis.scard::<_, i64>(key("set")).await.unwrap(), 2);
    let _: () = redis
        .zadd_multiple(key("zset"), &[(2, "two"), (1, "one")])
        .await
        .unwrap();
    assert_eq!(
        redis
            .zrange::<_, Vec<String>>(key("zset"), 0, -1)
            .await
            .unwrap(),
        ["one", "two"]
    );
    let _: String = redis::cmd("XADD")
        .arg(key("stream"))
        .arg("*")
        .arg("field")
        .arg("value")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        redis::cmd("XLEN")
            .arg(key("stream"))
            .query_async::<i64>(&mut redis)
            .await
            .unwrap(),
        1
    );
    let sum: i64 = redis::cmd("EVAL")
        .arg("return tonumber(ARGV[1]) + redis.call('HGET', KEYS[1], 'a')")
        .arg(1)
        .arg(key("hash"))
        .arg(41)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(sum, 42);

    // SCAN iterates through the proxy like any other command.
    for index in 0..30 {
        let _: () = redis
            .set(key(&format!("scan:{index}")), index)
            .await
            .unwrap();
    }
    let mut cursor = 0u64;
    let mut found = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(key("scan:*"))
            .arg("COUNT")
            .arg(100)
            .query_async(&mut redis)
            .await
            .unwrap();
        found += keys.len();
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert_eq!(found, 30);
    let scanned: Vec<String> = (0..30).map(|index| key(&format!("scan:{index}"))).collect();
    let _: () = redis.del(scanned).await.unwrap();

    // A pipeline of 1000 commands, answered in order.
    let mut pipeline = redis::pipe();
    for index in 0..1000 {
        pipeline.cmd("INCRBY").arg(key("counter")).arg(index);
    }
    let totals: Vec<i64> = pipeline.query_async(&mut redis).await.unwrap();
    let expected: Vec<i64> = (0..1000)
        .scan(0, |sum, index| {
            *sum += index;
            Some(*sum)
        })
        .collect();
    assert_eq!(totals, expected);

    // An 8 MiB value, byte-exact both ways.
    let large = random_bytes(8 * 1024 * 1024, 5);
    let _: () = redis.set(key("large"), &large).await.unwrap();
    let back: Vec<u8> = redis.get(key("large")).await.unwrap();
    assert_eq!(sha256_hex(&back), sha256_hex(&large));

    let _: () = redis::cmd("DEL")
        .arg(
            [
                "string", "hash", "list", "set", "zset", "stream", "counter", "large",
            ]
            .map(key)
            .to_vec(),
        )
        .query_async(&mut redis)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_clients_see_their_own_sequences_over_two_upstream_connections() {
    let server = RedisServer::plain();
    let attache = Attache::run(&config(
        server.address,
        "    redis: { shared_connections: 2 }",
    ))
    .await
    .unwrap();
    let front = attache.listener("redis");
    let clients = (0..200).map(|client| {
        tokio::spawn(async move {
            let mut redis = redis::Client::open(format!("redis://{front}/"))
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let key = format!("client:{client}");
            let mut seen = Vec::new();
            for round in 0..10 {
                seen.push(redis.incr::<_, _, i64>(&key, 1).await.unwrap());
                let (a, b): (i64, i64) = redis::pipe()
                    .incr(&key, 1)
                    .incr(&key, 1)
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                seen.extend([a, b]);
                assert_eq!(seen.len(), 3 * (round + 1));
            }
            seen
        })
    });
    for (client, handle) in clients.enumerate() {
        let seen = handle.await.unwrap();
        assert_eq!(seen, (1..=30).collect::<Vec<i64>>(), "client {client}");
    }
    // The server saw attache's two shared connections (and this one).
    let mut direct = direct(server.address).await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(list.lines().count(), 3, "{list}");
}

#[tokio::test]
async fn select_moves_a_client_to_its_own_database() {
    let server = RedisServer::plain();
    let attache = Attache::run(&config(server.address, "")).await.unwrap();
    let front = attache.listener("redis");
    let open = |database: u8| async move {
        redis::Client::open(format!("redis://{front}/{database}"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    };
    let mut zero = open(0).await;
    let mut three = open(3).await;
    let _: () = zero.set("isolated", "in 0").await.unwrap();
    let _: () = three.set("isolated", "in 3").await.unwrap();
    assert_eq!(zero.get::<_, String>("isolated").await.unwrap(), "in 0");
    assert_eq!(three.get::<_, String>("isolated").await.unwrap(), "in 3");
    let mut direct = redis::Client::open(format!("redis://{}/3", server.address))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    assert_eq!(direct.get::<_, String>("isolated").await.unwrap(), "in 3");

    // A database Redis does not have (16 by default) gets Redis' refusal,
    // and the client stays where it was.
    let error = redis::cmd("SELECT")
        .arg(99)
        .query_async::<()>(&mut three)
        .await
        .expect_err("database 99 does not exist");
    assert!(
        error.to_string().contains("DB index is out of range"),
        "{error}"
    );
    assert_eq!(three.get::<_, String>("isolated").await.unwrap(), "in 3");
}

/// Sends `request` on a raw connection and reads until `expected` bytes came.
async fn exchange(
    front: SocketAddr,
    request: &[u8],
    expected: usize,
) -> (Vec<u8>, tokio::net::TcpStream) {
    let mut stream = tokio::net::TcpStream::connect(front).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut reply = vec![0; expected];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    (reply, stream)
}

#[tokio::test]
async fn refused_commands_get_an_error_and_the_connection_goes_on() {
    let attache = Attache::run(&config(shared_redis(), "")).await.unwrap();
    let refusal = b"-ERR attache: RESET would reset a connection other clients share; not served by attache\r\n";
    let (reply, _) = exchange(
        attache.listener("redis"),
        b"*1\r\n$5\r\nRESET\r\n*1\r\n$4\r\nPING\r\n",
        refusal.len() + 7,
    )
    .await;
    assert_eq!(reply, [&refusal[..], b"+PONG\r\n"].concat());
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_are_atomic_under_concurrent_writers() {
    let server = RedisServer::plain();
    let attache = Attache::run(&config(server.address, "")).await.unwrap();
    let front = attache.listener("redis");
    // Each transaction moves 1 from "a" to "b"; other clients hammer a
    // third key meanwhile. a + b stays 0 in every snapshot.
    let writers = (0..8).map(|_| {
        tokio::spawn(async move {
            let mut redis = redis::Client::open(format!("redis://{front}/"))
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            for _ in 0..50 {
                let (a, b): (i64, i64) = redis::pipe()
                    .atomic()
                    .decr("a", 1)
                    .incr("b", 1)
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                assert_eq!(a + b, 0, "a transaction's own replies");
                let _: i64 = redis.incr("noise", 1).await.unwrap();
            }
        })
    });
    let checker = tokio::spawn(async move {
        let mut redis = redis::Client::open(format!("redis://{front}/"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        for _ in 0..100 {
            let (a, b): (Option<i64>, Option<i64>) = redis::pipe()
                .atomic()
                .get("a")
                .get("b")
                .query_async(&mut redis)
                .await
                .unwrap();
            assert_eq!(a.unwrap_or(0) + b.unwrap_or(0), 0);
        }
    });
    for writer in writers {
        writer.await.unwrap();
    }
    checker.await.unwrap();
    let mut direct = direct(server.address).await;
    assert_eq!(direct.get::<_, i64>("b").await.unwrap(), 400);
    assert_eq!(direct.get::<_, i64>("noise").await.unwrap(), 400);
}

#[tokio::test]
async fn watch_aborts_the_transaction_when_another_client_touches_the_key() {
    let attache = Attache::run(&config(shared_redis(), "")).await.unwrap();
    let key = format!("attache:test:watch:{}", std::process::id());
    let mut watcher = connect(&attache).await;
    let mut other = connect(&attache).await;
    let _: () = watcher.set(&key, 1).await.unwrap();
    let _: () = redis::cmd("WATCH")
        .arg(&key)
        .query_async(&mut watcher)
        .await
        .unwrap();
    let _: () = other.set(&key, 2).await.unwrap();
    let result: Option<(String,)> = redis::pipe()
        .atomic()
        .set(&key, 3)
        .query_async(&mut watcher)
        .await
        .unwrap();
    assert_eq!(
        result, None,
        "EXEC returns nil: the transaction was aborted"
    );
    assert_eq!(other.get::<_, i64>(&key).await.unwrap(), 2);
    // The pinned connection went back clean: the watcher carries on.
    let _: () = watcher.set(&key, 4).await.unwrap();
    assert_eq!(other.get::<_, i64>(&key).await.unwrap(), 4);
    let _: () = other.del(&key).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn blpop_is_woken_by_another_clients_lpush() {
    let attache = Attache::run(&config(shared_redis(), "")).await.unwrap();
    let key = format!("attache:test:blpop:{}", std::process::id());
    let mut waiter = connect(&attache).await;
    let mut pusher = connect(&attache).await;
    let popped = tokio::spawn({
        let key = key.clone();
        async move {
            let value: Option<(String, String)> = waiter.blpop(&key, 10.0).await.unwrap();
            (value, waiter)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _: () = pusher.lpush(&key, "job").await.unwrap();
    let (value, mut waiter) = tokio::time::timeout(Duration::from_secs(10), popped)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(value, Some((key.clone(), "job".to_owned())));
    assert_eq!(
        redis::cmd("PING")
            .query_async::<String>(&mut waiter)
            .await
            .unwrap(),
        "PONG"
    );
}

#[tokio::test]
async fn pub_sub_reaches_a_subscriber_through_the_proxy() {
    let attache = Attache::run(&config(shared_redis(), "")).await.unwrap();
    let channel = format!("attache:test:news:{}", std::process::id());
    let client = redis::Client::open(format!("redis://{}/", attache.listener("redis"))).unwrap();
    let mut subscriber = client.get_async_pubsub().await.unwrap();
    subscriber.subscribe(&channel).await.unwrap();
    let mut publisher = connect(&attache).await;
    let receivers: i64 = publisher.publish(&channel, "hello").await.unwrap();
    assert_eq!(receivers, 1);
    let mut messages = subscriber.on_message();
    let message = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::StreamExt::next(&mut messages),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(message.get_channel_name(), channel);
    assert_eq!(message.get_payload::<String>().unwrap(), "hello");
}

/// `SET key value` in RESP.
fn set_command(key: &str, value: &[u8]) -> Vec<u8> {
    let mut command = format!(
        "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
        key.len(),
        value.len()
    )
    .into_bytes();
    command.extend_from_slice(value);
    command.extend_from_slice(b"\r\n");
    command
}

/// Writes `bytes` in pieces of the given sizes (the last piece takes the
/// rest), each its own write, waiting for the kernel to take each.
async fn write_in_pieces(stream: &mut tokio::net::TcpStream, bytes: &[u8], sizes: &[usize]) {
    let mut rest = bytes;
    for size in sizes {
        let (piece, after) = rest.split_at((*size).min(rest.len()));
        stream.write_all(piece).await.unwrap();
        stream.flush().await.unwrap();
        rest = after;
    }
    stream.write_all(rest).await.unwrap();
}

// attache reads a client between commands onto the stack and keeps no read
// buffer for it; a command cut anywhere, one far larger than a read, and a
// pipeline of many must still be read whole, shared and pinned alike.
#[tokio::test]
async fn commands_cut_anywhere_and_pipelines_larger_than_a_read_arrive_whole() {
    let attache = Attache::run(&config(shared_redis(), "")).await.unwrap();
    let front = attache.listener("redis");
    let mut direct = direct(shared_redis()).await;
    let prefix = format!("attache:test:pieces:{}", std::process::id());
    let value = random_bytes(300 * 1024 + 7, 41);

    let mut stream = tokio::net::TcpStream::connect(front).await.unwrap();
    stream.set_nodelay(true).unwrap();
    // Shared: cut inside the header, the length, and the value.
    let shared_key = format!("{prefix}:shared");
    write_in_pieces(
        &mut stream,
        &set_command(&shared_key, &value),
        &[1, 2, 5, 9, 17, 70_001],
    )
    .await;
    let mut reply = [0; 5];
    stream.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"+OK\r\n");
    // Pinned (a transaction): the same cuts inside MULTI ... EXEC.
    let pinned_key = format!("{prefix}:pinned");
    let transaction = [
        &b"*1\r\n$5\r\nMULTI\r\n"[..],
        &set_command(&pinned_key, &value),
        b"*1\r\n$4\r\nEXEC\r\n",
    ]
    .concat();
    write_in_pieces(&mut stream, &transaction, &[3, 20, 1, 16_390, 2]).await;
    let expected = b"+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n";
    let mut reply = vec![0; expected.len()];
    stream.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply, expected);
    for key in [&shared_key, &pinned_key] {
        let stored: Vec<u8> = direct.get(key).await.unwrap();
        assert_eq!(sha256_hex(&stored), sha256_hex(&value), "{key}");
    }

    // A pipeline of 2,000 commands (about 90 KiB) in one write.
    let counter = format!("{prefix}:counter");
    let increment = format!("*2\r\n$4\r\nINCR\r\n${}\r\n{counter}\r\n", counter.len());
    let pipeline = increment.repeat(2000);
    stream.write_all(pipeline.as_bytes()).await.unwrap();
    let expected: String = (1..=2000).map(|n| format!(":{n}\r\n")).collect();
    let mut reply = vec![0; expected.len()];
    tokio::time::timeout(Duration::from_secs(30), stream.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8(reply).unwrap(), expected);
    let _: () = direct
        .del(&[shared_key, pinned_key, counter])
        .await
        .unwrap();
}

#[tokio::test]
async fn malformed_input_closes_only_that_client() {
    let attache = Attache::run(&config(shared_redis(), "")).await.unwrap();
    let front = attache.listener("redis");
    let mut bystander = connect(&attache).await;
    for hostile in [
        &b"*1\r\n$4\r\nPING\r\n*1\r\n$x\r\n"[..],
        b"*1\r\n$999999999999\r\n",
        b"*1\r\n:1\r\n",
        // Nesting, which no command has: refused at the first inner array.
        &b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n"[..],
    ] {
        let mut stream = tokio::net::TcpStream::connect(front).await.unwrap();
        stream.write_all(hostile).await.unwrap();
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply))
            .await
            .expect("the connection is closed")
            .unwrap();
        let text = String::from_utf8_lossy(&reply);
        assert!(text.contains("-ERR Protocol error"), "{text}");
        if hostile.starts_with(b"*1\r\n$4\r\nPING") {
            assert!(
                text.starts_with("+PONG\r\n"),
                "what came before is answered: {text}"
            );
        }
        assert_eq!(
            redis::cmd("PING")
                .query_async::<String>(&mut bystander)
                .await
                .unwrap(),
            "PONG"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_in_flight_when_the_upstream_dies_get_an_error_reply() {
    let mut server = RedisServer::plain();
    let attache = Attache::run(&config(
        server.address,
        "    redis: { command_timeout: 30s }",
    ))
    .await
    .unwrap();
    let mut direct = direct(server.address).await;
    let mut client = connect(&attache).await;
    let _: () = client.set("before", 1).await.unwrap();
    // Writes now hang on the server; then it dies.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(10_000)
        .arg("WRITE")
        .query_async(&mut direct)
        .await
        .unwrap();
    let in_flight = tokio::spawn(async move {
        let result: redis::RedisResult<()> = client.set("during", 1).await;
        (result, client)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.stop();
    let (result, mut client) = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("no hang")
        .unwrap();
    let error = result.unwrap_err();
    assert!(error.to_string().contains("attache"), "{error}");
    server.restart();
    let _: () = client.set("after", 1).await.unwrap();
    assert_eq!(client.get::<_, i64>("after").await.unwrap(), 1);
}

#[tokio::test]
async fn commands_are_counted_by_name_and_result() {
    let server = RedisServer::plain();
    let attache = Attache::run(&config(server.address, "")).await.unwrap();
    let mut redis = connect(&attache).await;
    let _: () = redis.set("text", "not a number").await.unwrap();
    let _: String = redis.get("text").await.unwrap();
    assert!(redis.incr::<_, _, i64>("text", 1).await.is_err());
    assert!(
        redis::cmd("RESET")
            .query_async::<()>(&mut redis)
            .await
            .is_err()
    );
    let _: String = redis::cmd("OBJECT")
        .arg("ENCODING")
        .arg("text")
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: Option<(String, String)> = redis.blpop("empty", 0.1).await.unwrap();
    let sample = |command: &str, result: &str| {
        format!(
            "attache_redis_commands_total{{listener=\"redis\",command=\"{command}\",result=\"{result}\"}}"
        )
    };
    for (command, result, expected) in [
        ("set", "ok", 1.0),
        ("get", "ok", 1.0),
        // Counted in its pinned session when its (nil) reply came.
        ("blpop", "ok", 1.0),
        ("incrby", "error", 1.0),
        ("other", "failed", 1.0),
        // OBJECT, and the two CLIENT SETINFO the redis crate sends on connect.
        ("other", "ok", 3.0),
    ] {
        assert_eq!(
            attache.metric(&sample(command, result)).await.unwrap(),
            expected,
            "{command} {result}"
        );
    }
    let connections = |kind: &str| {
        format!("attache_redis_upstream_connections{{listener=\"redis\",kind=\"{kind}\"}}")
    };
    assert_eq!(attache.metric(&connections("shared")).await.unwrap(), 1.0);
    // One client over one shared connection.
    assert_eq!(
        attache
            .metric("attache_redis_multiplexing_ratio{listener=\"redis\"}")
            .await
            .unwrap(),
        1.0
    );
    assert_eq!(
        attache.metric(&connections("pinned")).await.unwrap(),
        0.0,
        "the BLPOP session ended"
    );
    assert_eq!(
        attache
            .metric("attache_redis_command_duration_seconds_count{listener=\"redis\"}")
            .await
            .unwrap(),
        4.0
    );
}

#[tokio::test]
async fn clients_authenticate_to_attache_and_attache_to_redis() {
    let server = RedisServer::plain_with(&["--requirepass", "server-secret"]);
    let attache = Attache::run(&config(
        server.address,
        "    redis: { password: front-secret, upstream_password: server-secret }",
    ))
    .await
    .unwrap();
    let front = attache.listener("redis");
    let open = |url: String| async move {
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
    };
    // No password: every command is refused until AUTH.
    let (reply, _) = exchange(front, b"*1\r\n$4\r\nPING\r\n", 32).await;
    assert_eq!(
        reply,
        b"-NOAUTH Authentication required.\r\n"[..32].to_vec()
    );
    // The wrong password is refused.
    let wrong = open(format!("redis://:guess@{front}/")).await;
    assert_eq!(
        wrong.unwrap_err().kind(),
        redis::ErrorKind::AuthenticationFailed
    );
    // The server's own password is not the client's.
    assert!(
        open(format!("redis://:server-secret@{front}/"))
            .await
            .is_err()
    );
    // The right one: shared and pinned connections both log in upstream,
    // also after a pinned connection was RESET and reused.
    let mut redis = open(format!("redis://:front-secret@{front}/"))
        .await
        .unwrap();
    let _: () = redis.set("authed", 1).await.unwrap();
    for round in 0..3 {
        let (value,): (i64,) = redis::pipe()
            .atomic()
            .incr("authed", 1)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(value, 2 + round);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_on_both_legs_with_client_certificates() {
    let pki = attache_integration::pki::Pki::new();
    let server = RedisServer::tls(&pki);
    let config = format!(
        "listeners:
  - name: redis
    listen: 127.0.0.1:0
    protocol: redis
    upstream: redis
    tls: {{ cert: {cert}, key: {key}, client_ca: {ca} }}
    redis: {{ shared_connections: 1 }}
upstreams:
  redis:
    endpoints: [\"{address}\"]
    tls: {{ ca: {ca}, cert: {app_cert}, key: {app_key}, server_name: localhost }}
",
        cert = pki.cert("server"),
        key = pki.key("server"),
        ca = pki.ca(),
        app_cert = pki.cert("app"),
        app_key = pki.key("app"),
        address = server.address,
    );
    let attache = Attache::run(&config).await.unwrap();
    let front = attache.listener("redis");
    let redis_cli = |arguments: &[&str]| {
        let output = std::process::Command::new("redis-cli")
            .args([
                "--tls",
                "--cacert",
                &pki.ca(),
                "--cert",
                &pki.cert("app"),
                "--key",
                &pki.key("app"),
            ])
            .args(["-h", "127.0.0.1", "-p", &front.port().to_string()])
            .args(arguments)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    assert_eq!(redis_cli(&["SET", "over-tls", "both ways"]), "OK");
    assert_eq!(redis_cli(&["GET", "over-tls"]), "both ways");
    assert_eq!(redis_cli(&["STRLEN", "over-tls"]), "9");
    let handshakes = format!(
        "attache_upstream_tls_handshakes_total{{upstream=\"redis\",endpoint=\"{}\",result=\"ok\"}}",
        server.address
    );
    assert_eq!(
        attache.metric(&handshakes).await.unwrap(),
        1.0,
        "one shared connection served all three"
    );
    // A script runs on a (TLS) connection of its own.
    assert_eq!(
        redis_cli(&["EVAL", "return redis.call('GET', KEYS[1])", "1", "over-tls"]),
        "both ways"
    );
    assert_eq!(attache.metric(&handshakes).await.unwrap(), 2.0);
}

/// Reads `count` whole frames from `stream`.
async fn frames(stream: &mut tokio::net::TcpStream, count: usize) -> Vec<Vec<u8>> {
    let mut buffer = Vec::new();
    let mut frames = Vec::new();
    let limits = attache_resp::Limits::default();
    while frames.len() < count {
        while let Some(frame) = attache_resp::check(&buffer, &limits).unwrap() {
            frames.push(buffer.drain(..frame.length).collect());
            if frames.len() == count {
                return frames;
            }
        }
        let mut chunk = [0; 4096];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("a reply in time")
            .unwrap();
        assert!(read > 0, "closed after {frames:?}");
        buffer.extend_from_slice(&chunk[..read]);
    }
    frames
}

#[tokio::test]
async fn resp3_clients_get_resp3_replies_and_push_messages() {
    let server = RedisServer::plain();
    let attache = Attache::run(&config(server.address, "")).await.unwrap();
    let front = attache.listener("redis");
    // The redis crate over RESP3: maps come back as maps.
    let mut resp3 = redis::Client::open(format!("redis://{front}/?protocol=resp3"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = resp3
        .hset_multiple("h", &[("a", "1"), ("b", "2")])
        .await
        .unwrap();
    let all: std::collections::HashMap<String, String> = resp3.hgetall("h").await.unwrap();
    assert_eq!(all.len(), 2);

    // Raw RESP3: HELLO 3 is answered with the server's map; a subscription
    // delivers push frames; after it, the client is back on shared
    // connections, still speaking RESP3.
    let mut subscriber = tokio::net::TcpStream::connect(front).await.unwrap();
    subscriber
        .write_all(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n")
        .await
        .unwrap();
    let hello = frames(&mut subscriber, 1).await;
    assert_eq!(
        hello[0][0],
        b'%',
        "a RESP3 map: {}",
        String::from_utf8_lossy(&hello[0])
    );
    assert!(String::from_utf8_lossy(&hello[0]).contains("proto\r\n:3"));
    subscriber
        .write_all(b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nnews\r\n")
        .await
        .unwrap();
    let confirmed = frames(&mut subscriber, 1).await;
    assert!(
        confirmed[0].starts_with(b">3\r\n$9\r\nsubscribe"),
        "{}",
        String::from_utf8_lossy(&confirmed[0])
    );
    let _: i64 = resp3.publish("news", "fresh").await.unwrap();
    let message = frames(&mut subscriber, 1).await;
    assert_eq!(
        message[0],
        b">3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nfresh\r\n"
    );
    subscriber
        .write_all(b"*1\r\n$11\r\nUNSUBSCRIBE\r\n*2\r\n$3\r\nGET\r\n$1\r\nx\r\n")
        .await
        .unwrap();
    let after = frames(&mut subscriber, 2).await;
    assert!(after[0].starts_with(b">3\r\n$11\r\nunsubscribe"));
    assert_eq!(
        after[1], b"_\r\n",
        "a RESP3 null from the shared connection"
    );
}

/// A relay to `redis` that, while armed, cuts the next connection whose
/// first bytes mention `fault-once` without forwarding them: the command
/// is in flight from attache's side and never reaches Redis. A fault
/// injector, since no real server fails on cue like this.
async fn faulty_relay(
    redis: SocketAddr,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trigger = armed.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let trigger = trigger.clone();
            tokio::spawn(async move {
                let upstream = tokio::net::TcpStream::connect(redis).await.unwrap();
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_upstream, mut to_upstream) = upstream.into_split();
                let replies = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_upstream, &mut to_client).await;
                });
                let mut chunk = vec![0; 64 * 1024];
                loop {
                    let read = match from_client.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(read) => read,
                    };
                    let mentions = chunk[..read]
                        .windows(10)
                        .any(|window| window == b"fault-once");
                    if mentions && trigger.swap(false, Ordering::SeqCst) {
                        break; // the command never reaches Redis; both sides close
                    }
                    if to_upstream.write_all(&chunk[..read]).await.is_err() {
                        break;
                    }
                }
                replies.abort();
            });
        }
    });
    (address, armed)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_in_flight_is_retried_once_and_a_write_never() {
    use std::sync::atomic::Ordering;
    let server = RedisServer::plain();
    let (relay, armed) = faulty_relay(server.address).await;
    let attache = Attache::run(&config(relay, "    redis: { shared_connections: 1 }"))
        .await
        .unwrap();
    let mut direct = direct(server.address).await;
    let _: () = direct.set("fault-once:read", "still here").await.unwrap();
    let mut client = connect(&attache).await;

    armed.store(true, Ordering::SeqCst);
    let value: String = client.get("fault-once:read").await.unwrap();
    assert_eq!(
        value, "still here",
        "the read was sent again on a new connection"
    );
    assert!(!armed.load(Ordering::SeqCst), "the fault did happen");

    armed.store(true, Ordering::SeqCst);
    let written: redis::RedisResult<()> = client.set("fault-once:write", "lost").await;
    let error = written.unwrap_err();
    assert!(error.to_string().contains("attache"), "{error}");
    assert!(!armed.load(Ordering::SeqCst));
    assert_eq!(
        direct
            .get::<_, Option<String>>("fault-once:write")
            .await
            .unwrap(),
        None,
        "not retried"
    );
    // The connection is back for everything else.
    let _: () = client.set("fault-once:after", 1).await.unwrap();
}

#[tokio::test]
async fn a_client_logging_in_as_its_own_user_gets_a_connection_of_its_own() {
    let server = RedisServer::plain();
    let mut direct = direct(server.address).await;
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "alice",
            "on",
            ">alice-secret",
            "~alice:*",
            "+@all",
        ])
        .query_async(&mut direct)
        .await
        .unwrap();
    let attache = Attache::run(&config(server.address, "")).await.unwrap();
    let front = attache.listener("redis");
    let mut alice = redis::Client::open(format!("redis://alice:alice-secret@{front}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = alice.set("alice:note", "mine").await.unwrap();
    // Redis checks alice's ACL: her connection really is hers.
    let denied: redis::RedisResult<()> = alice.set("bob:note", "not mine").await;
    let denied = denied.unwrap_err();
    assert!(format!("{denied:?}").contains("NoPerm"), "{denied:?}");
    // Other clients stay on the shared connections as the default user.
    let mut other = connect(&attache).await;
    let _: () = other.set("bob:note", "his").await.unwrap();
    let whoami: String = redis::cmd("ACL")
        .arg("WHOAMI")
        .query_async(&mut other)
        .await
        .unwrap();
    assert_eq!(whoami, "default");
    let whoami: String = redis::cmd("ACL")
        .arg("WHOAMI")
        .query_async(&mut alice)
        .await
        .unwrap();
    assert_eq!(whoami, "alice");
    assert_eq!(
        attache
            .metric("attache_redis_upstream_connections{listener=\"redis\",kind=\"pinned\"}")
            .await
            .unwrap(),
        1.0
    );
}
