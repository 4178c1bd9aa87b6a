//! A listener's `idle_timeout` on the protocols attache does not relay byte
//! by byte: an HTTP response whose upstream stops sending is cut, a quiet
//! WebSocket tunnel is closed, and an idle Redis client is closed while one
//! blocked in a pinned session is not (Redis' own `timeout` rule).

use std::time::Duration;

use attache_integration::Attache;
use attache_integration::http_app::HttpApp;
use attache_integration::redis_server::RedisServer;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn listener(protocol: &str, upstream: &str, idle_timeout: &str) -> String {
    format!(
        "listeners:
  - {{name: front, listen: 127.0.0.1:0, protocol: {protocol}, upstream: app, idle_timeout: {idle_timeout}}}
upstreams:
  app:
    endpoints: [\"{upstream}\"]
"
    )
}

const IDLE_CLOSES: &str =
    "attache_connections_closed_total{listener=\"front\",result=\"idle_timeout\"}";

async fn idle_closes(attache: &Attache) -> f64 {
    attache.metric(IDLE_CLOSES).await.unwrap()
}

#[tokio::test]
async fn an_http_response_whose_upstream_stops_sending_is_cut_after_the_idle_timeout() {
    let app = HttpApp::start("app").await;
    let attache = Attache::run(&listener("http", &app.address.to_string(), "1s"))
        .await
        .unwrap();
    let url = format!("http://{}/stall/1000", attache.listener("front"));
    let output = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "30", &url])
        .output()
        .await
        .unwrap();
    // 18: "transfer closed with outstanding read data remaining".
    assert_eq!(output.status.code(), Some(18), "{output:?}");
    assert_eq!(output.stdout, vec![b'x'; 1000]);
    attache
        .wait_for_metric(
            "attache_connections_closed_total{listener=\"front\",result=\"idle_timeout\"}",
            1.0,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_websocket_tunnel_that_moves_nothing_is_closed_after_the_idle_timeout() {
    let app = HttpApp::start("app").await;
    let attache = Attache::run(&listener("http", &app.address.to_string(), "3s"))
        .await
        .unwrap();
    let front = attache.listener("front");
    let stream = TcpStream::connect(front).await.unwrap();
    let (mut socket, _) = tokio_tungstenite::client_async(format!("ws://{front}/ws"), stream)
        .await
        .unwrap();
    // Messages every 0.5 s, well within the 3 s timeout, keep it open
    // for longer than the timeout.
    for round in 0..8 {
        let message = Message::text(format!("ping {round}"));
        socket.send(message.clone()).await.unwrap();
        assert_eq!(socket.next().await.unwrap().unwrap(), message);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Then silence: the tunnel ends within the timeout and a little.
    let ended = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("the quiet tunnel is closed");
    assert!(
        !matches!(ended, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{ended:?}"
    );
}

#[tokio::test]
async fn an_idle_redis_client_is_closed_but_a_blocked_one_is_not() {
    let redis = RedisServer::plain();
    let attache = Attache::run(&listener("redis", &redis.address.to_string(), "1s"))
        .await
        .unwrap();
    let front = attache.listener("front");

    // Blocked in BLPOP for three timeouts, then served.
    let key = format!("idle-timeout-{}", std::process::id());
    let mut blocked = TcpStream::connect(front).await.unwrap();
    let blpop = format!(
        "*3\r\n$5\r\nBLPOP\r\n${}\r\n{key}\r\n$1\r\n0\r\n",
        key.len()
    );
    blocked.write_all(blpop.as_bytes()).await.unwrap();

    // Quiet after one command: closed.
    let mut quiet = TcpStream::connect(front).await.unwrap();
    quiet.write_all(b"PING\r\n").await.unwrap();
    let mut reply = [0; 7];
    quiet.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"+PONG\r\n");
    let read = tokio::time::timeout(Duration::from_secs(10), quiet.read(&mut [0; 16]))
        .await
        .expect("an idle client is closed");
    assert_eq!(read.unwrap(), 0);
    // The connection's task counts the close after the client has seen it.
    attache.wait_for_metric(IDLE_CLOSES, 1.0).await.unwrap();

    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut pusher = TcpStream::connect(front).await.unwrap();
    let rpush = format!(
        "*3\r\n$5\r\nRPUSH\r\n${}\r\n{key}\r\n$5\r\nvalue\r\n",
        key.len()
    );
    pusher.write_all(rpush.as_bytes()).await.unwrap();
    let expected = format!("*2\r\n${}\r\n{key}\r\n$5\r\nvalue\r\n", key.len());
    let mut popped = vec![0; expected.len()];
    blocked.read_exact(&mut popped).await.unwrap();
    assert_eq!(String::from_utf8(popped).unwrap(), expected);
    assert_eq!(
        idle_closes(&attache).await,
        1.0,
        "the blocked client was kept"
    );
}
