//! `attache redis` answers as Redis does, and no reply ever reaches a
//! client that did not ask for it: UNSUBSCRIBE from nothing gets one reply
//! per channel, a reply nobody asked for closes its shared connection
//! instead of shifting every later reply, and QUIT ends a pinned session
//! with `+OK` and a closed connection.

use std::net::SocketAddr;
use std::time::Duration;

use attache_integration::Attache;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// How long a test waits for a reply that, without the fix, never comes.
const REPLY: Duration = Duration::from_secs(20);

async fn ambassador(upstream: SocketAddr, shared_connections: usize) -> Attache {
    Attache::spawn(
        &[
            "redis",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream.to_string(),
            "--shared-connections",
            &shared_connections.to_string(),
            "--admin",
            "127.0.0.1:0",
        ],
        None,
    )
    .await
    .unwrap()
}

/// Reads `count` whole RESP frames.
async fn frames(stream: &mut TcpStream, count: usize, buffer: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let limits = attache_resp::Limits::for_replies();
    let mut frames = Vec::new();
    loop {
        while frames.len() < count
            && let Some(frame) = attache_resp::check(buffer, &limits).unwrap()
        {
            frames.push(buffer.drain(..frame.length).collect());
        }
        if frames.len() == count {
            return frames;
        }
        let mut chunk = [0; 4096];
        let read = tokio::time::timeout(REPLY, stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no reply in time after {frames:?}"))
            .unwrap();
        assert!(read > 0, "closed after {frames:?}");
        buffer.extend_from_slice(&chunk[..read]);
    }
}

fn command(words: &[&str]) -> Vec<u8> {
    let mut encoded = format!("*{}\r\n", words.len());
    for word in words {
        encoded.push_str(&format!("${}\r\n{word}\r\n", word.len()));
    }
    encoded.into_bytes()
}

fn bulk(text: &str) -> Vec<u8> {
    format!("${}\r\n{text}\r\n", text.len()).into_bytes()
}

fn unsubscribed(kind: &str, channel: Option<&str>) -> Vec<u8> {
    let channel = channel.map_or_else(|| b"$-1\r\n".to_vec(), bulk);
    [
        b"*3\r\n".as_slice(),
        &bulk(kind),
        &channel,
        b":0\r\n".as_slice(),
    ]
    .concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsubscribing_from_nothing_answers_every_channel_and_only_its_client() {
    let attache = ambassador("127.0.0.1:6379".parse().unwrap(), 2).await;
    let front = attache.listener("redis");
    let clients: Vec<_> = (0..8)
        .map(|client| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(front).await.unwrap();
                let mut buffer = Vec::new();
                let key = format!("attache:transparency:{}:{client}", std::process::id());
                for round in 0..40 {
                    let value = format!("{client}-{round}");
                    let mut pipeline = command(&["SET", &key, &value]);
                    pipeline.extend(command(&["UNSUBSCRIBE", "a", "b", "c"]));
                    pipeline.extend(command(&["PUNSUBSCRIBE"]));
                    pipeline.extend(command(&["SUNSUBSCRIBE", "s"]));
                    pipeline.extend(command(&["GET", &key]));
                    stream.write_all(&pipeline).await.unwrap();
                    let replies = frames(&mut stream, 7, &mut buffer).await;
                    let expected = [
                        b"+OK\r\n".to_vec(),
                        unsubscribed("unsubscribe", Some("a")),
                        unsubscribed("unsubscribe", Some("b")),
                        unsubscribed("unsubscribe", Some("c")),
                        unsubscribed("punsubscribe", None),
                        unsubscribed("sunsubscribe", Some("s")),
                        bulk(&value),
                    ];
                    for (got, want) in replies.iter().zip(&expected) {
                        assert_eq!(
                            String::from_utf8_lossy(got),
                            String::from_utf8_lossy(want),
                            "client {client}, round {round}: a reply that is not its own"
                        );
                    }
                }
                stream.write_all(&command(&["DEL", &key])).await.unwrap();
                frames(&mut stream, 1, &mut buffer).await;
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
}

/// A fake Redis that answers `+OK` to every command, and to `GET twice`
/// two replies: one asked for, one nobody asked for. Returns its address
/// and a counter of the connections attache made to it.
async fn double_replying_upstream() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>)
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut input = bytes::BytesMut::new();
                let limits = attache_resp::Limits::default();
                loop {
                    while let Ok(Some(command)) = attache_resp::parse_command(&mut input, &limits) {
                        let reply: &[u8] =
                            if command.args.len() == 2 && command.args[1] == "twice"[..] {
                                b"$5\r\nfirst\r\n$5\r\nextra\r\n"
                            } else {
                                b"+OK\r\n"
                            };
                        if stream.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                    let mut chunk = [0; 4096];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => input.extend_from_slice(&chunk[..read]),
                    }
                }
            });
        }
    });
    (address, connections)
}

#[tokio::test]
async fn a_reply_nobody_asked_for_closes_its_shared_connection_and_reaches_no_client() {
    let (upstream, connections) = double_replying_upstream().await;
    // One shared connection: every client's commands go through it.
    let attache = ambassador(upstream, 1).await;
    let front = attache.listener("redis");
    let mut first = TcpStream::connect(front).await.unwrap();
    let mut buffer = Vec::new();
    first.write_all(&command(&["GET", "twice"])).await.unwrap();
    assert_eq!(frames(&mut first, 1, &mut buffer).await[0], bulk("first"));
    attache
        .wait_for_log_text("the upstream sent a reply nobody asked for")
        .await
        .unwrap();
    // Every later command, from this client or another, gets its own reply.
    for client in [&mut first, &mut TcpStream::connect(front).await.unwrap()] {
        let mut buffer = Vec::new();
        for _ in 0..3 {
            client
                .write_all(&command(&["SET", "k", "v"]))
                .await
                .unwrap();
            assert_eq!(frames(client, 1, &mut buffer).await[0], b"+OK\r\n");
        }
    }
    assert!(
        connections.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the desynchronised connection was replaced"
    );
}

#[tokio::test]
async fn quit_in_a_pinned_session_answers_ok_and_closes() {
    let attache = ambassador("127.0.0.1:6379".parse().unwrap(), 2).await;
    let front = attache.listener("redis");
    let sessions: [&[&[&str]]; 5] = [
        &[&["CLIENT", "TRACKING", "ON"]],
        &[&["CLIENT", "ID"]],
        &[&["MULTI"]],
        &[&["WATCH", "attache:transparency:watched"]],
        &[&["SUBSCRIBE", "attache:transparency:channel"]],
    ];
    for session in sessions {
        let mut client = TcpStream::connect(front).await.unwrap();
        let mut buffer = Vec::new();
        for words in session {
            client.write_all(&command(words)).await.unwrap();
            frames(&mut client, 1, &mut buffer).await;
        }
        client.write_all(&command(&["QUIT"])).await.unwrap();
        assert_eq!(
            frames(&mut client, 1, &mut buffer).await[0],
            b"+OK\r\n",
            "{session:?}"
        );
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(REPLY, client.read_to_end(&mut rest)).await;
        assert!(
            matches!(closed, Ok(Ok(_))) && rest.is_empty(),
            "{session:?}: attache closes the connection after QUIT"
        );
    }
    // Every pinned connection went back (reset) or was discarded.
    attache
        .wait_for_metric(
            "attache_redis_upstream_connections{listener=\"redis\",kind=\"pinned\"}",
            0.0,
        )
        .await
        .unwrap();
}

/// What `input` gets from the server at `address`: every reply until the
/// server closes the connection, or `replies` of them.
async fn answers(address: SocketAddr, input: &[u8], replies: Option<usize>) -> Vec<u8> {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(input).await.unwrap();
    match replies {
        Some(count) => frames(&mut stream, count, &mut Vec::new()).await.concat(),
        None => {
            let mut all = Vec::new();
            tokio::time::timeout(REPLY, stream.read_to_end(&mut all))
                .await
                .expect("closed after a protocol error")
                .unwrap();
            all
        }
    }
}

#[tokio::test]
async fn inline_quoting_empty_counts_and_protocol_errors_are_as_on_redis() {
    let redis: SocketAddr = "127.0.0.1:6379".parse().unwrap();
    let attache = ambassador(redis, 2).await;
    let key = format!("attache:quoting:{}", std::process::id());
    let quoted = format!(
        "set \"{key} sp ace\" \"a\\x41b\"\r\nget \"{key} sp ace\"\r\nget '{key} sp ace'\r\ndel \"{key} sp ace\"\r\n"
    );
    let cases: Vec<(Vec<u8>, Option<usize>)> = vec![
        (quoted.into_bytes(), Some(4)),
        (
            b"*0\r\n*-10\r\nPING\r\n*1\r\n$4\r\nPING\r\n".to_vec(),
            Some(2),
        ),
        (format!("set \"\"\"{key}\"\"\" v\r\n").into_bytes(), None),
        (b"*1\r\n:1\r\n".to_vec(), None),
        (b"*x\r\n".to_vec(), None),
        (b"*1\r\n$x\r\n".to_vec(), None),
    ];
    for (input, replies) in cases {
        let direct = answers(redis, &input, replies).await;
        let through = answers(attache.listener("redis"), &input, replies).await;
        assert_eq!(
            String::from_utf8_lossy(&through),
            String::from_utf8_lossy(&direct),
            "{}",
            String::from_utf8_lossy(&input)
        );
    }
}

#[tokio::test]
async fn deep_replies_from_scripts_pass_and_fail_no_one() {
    let redis: SocketAddr = "127.0.0.1:6379".parse().unwrap();
    let attache = ambassador(redis, 1).await;
    let script = "local t = {1} for i = 1, 200 do t = {t} end return t";
    let input = command(&["EVAL", script, "0"]);
    let direct = answers(redis, &input, Some(1)).await;
    assert!(direct.starts_with(b"*1\r\n*1\r\n"), "Redis nests it");
    // Another client's command shares the one shared connection.
    let mut bystander = TcpStream::connect(attache.listener("redis")).await.unwrap();
    let mut buffer = Vec::new();
    bystander.write_all(&command(&["PING"])).await.unwrap();
    assert_eq!(
        frames(&mut bystander, 1, &mut buffer).await[0],
        b"+PONG\r\n"
    );
    let through = answers(attache.listener("redis"), &input, Some(1)).await;
    assert_eq!(
        String::from_utf8_lossy(&through),
        String::from_utf8_lossy(&direct)
    );
    bystander.write_all(&command(&["PING"])).await.unwrap();
    assert_eq!(
        frames(&mut bystander, 1, &mut buffer).await[0],
        b"+PONG\r\n"
    );
}

#[tokio::test]
async fn a_long_script_blocks_no_shared_connection_and_script_kill_reaches_it() {
    let redis = attache_integration::redis_server::RedisServer::plain_with(&[
        "--busy-reply-threshold",
        "50",
    ]);
    // One shared connection: a script on it would hold every client.
    let attache = ambassador(redis.address, 1).await;
    let front = attache.listener("redis");
    let mut script = TcpStream::connect(front).await.unwrap();
    script
        .write_all(&command(&["EVAL", "while true do end", "0"]))
        .await
        .unwrap();
    // Redis says BUSY to everyone once the script ran past the threshold.
    let mut direct = TcpStream::connect(redis.address).await.unwrap();
    let mut buffer = Vec::new();
    loop {
        direct.write_all(&command(&["PING"])).await.unwrap();
        if frames(&mut direct, 1, &mut buffer).await[0].starts_with(b"-BUSY") {
            break;
        }
    }
    let mut other = TcpStream::connect(front).await.unwrap();
    let mut other_buffer = Vec::new();
    other.write_all(&command(&["PING"])).await.unwrap();
    let busy = frames(&mut other, 1, &mut other_buffer).await.concat();
    assert!(
        busy.starts_with(b"-BUSY"),
        "{}",
        String::from_utf8_lossy(&busy)
    );

    let mut killer = TcpStream::connect(front).await.unwrap();
    killer
        .write_all(&command(&["SCRIPT", "KILL"]))
        .await
        .unwrap();
    assert_eq!(frames(&mut killer, 1, &mut Vec::new()).await[0], b"+OK\r\n");
    let killed = frames(&mut script, 1, &mut Vec::new()).await.concat();
    assert!(
        String::from_utf8_lossy(&killed).contains("Script killed"),
        "{}",
        String::from_utf8_lossy(&killed)
    );
    other.write_all(&command(&["PING"])).await.unwrap();
    assert_eq!(
        frames(&mut other, 1, &mut other_buffer).await[0],
        b"+PONG\r\n"
    );
}

#[tokio::test]
async fn a_pinned_connection_redis_closed_while_idle_is_not_lent() {
    let redis = attache_integration::redis_server::RedisServer::plain();
    let attache = ambassador(redis.address, 1).await;
    let mut client = TcpStream::connect(attache.listener("redis")).await.unwrap();
    let mut buffer = Vec::new();
    let transaction = [command(&["MULTI"]), command(&["PING"]), command(&["EXEC"])].concat();
    client.write_all(&transaction).await.unwrap();
    let replies = frames(&mut client, 3, &mut buffer).await;
    assert_eq!(replies[2], b"*1\r\n+PONG\r\n");
    attache
        .wait_for_metric(
            "attache_redis_upstream_connections{listener=\"redis\",kind=\"pinned\"}",
            0.0,
        )
        .await
        .unwrap();
    // Redis closes every client connection: the pinned one idles in the pool.
    let mut direct = TcpStream::connect(redis.address).await.unwrap();
    direct
        .write_all(&command(&[
            "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes",
        ]))
        .await
        .unwrap();
    frames(&mut direct, 1, &mut Vec::new()).await;
    client.write_all(&transaction).await.unwrap();
    let replies = frames(&mut client, 3, &mut buffer).await;
    assert_eq!(
        replies,
        [
            b"+OK\r\n".to_vec(),
            b"+QUEUED\r\n".to_vec(),
            b"*1\r\n+PONG\r\n".to_vec()
        ],
        "the next transaction runs on a live connection"
    );
}
