//! Command-line parsing (clap) and dispatch to the subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use attache_config::model::{self, LogFormat, LogLevel};
use attache_config::{Config, Endpoint};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;

use crate::telemetry::{logging, output};
use crate::{runtime, wait};

/// attache: a sidecar proxy that runs beside one application.
///
/// The app talks plaintext to localhost; attache forwards to the real
/// service with timeouts, balancing and metrics, and drains cleanly on
/// SIGTERM. Start with `attache tcp --help` for a one-liner, or
/// `attache run -c FILE` with a config (examples in config/examples/).
#[derive(Debug, Parser)]
#[command(name = "attache", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy described by a YAML config file (the main job).
    Run {
        /// The config file; `${VAR}` and `${VAR:-default}` are read from the environment.
        #[arg(short, long, env = "ATTACHE_CONFIG", value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Validate a config file: exit 0, or print every problem with its key path and line and exit 1.
    Check {
        /// The config file to validate.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Also load every certificate, key and CA file the config names, as
        /// `run` does at start (where the files exist: in the pod, not in CI).
        #[arg(long)]
        tls_files: bool,
    },
    /// Forward TCP from a local address to one or more upstream endpoints, without a config file.
    ///
    /// Example: attache tcp --listen 127.0.0.1:16379 --upstream 127.0.0.1:6379
    ///
    /// mTLS front door: attache tcp --listen 0.0.0.0:8443 --upstream 127.0.0.1:8080
    ///   --tls-cert tls.crt --tls-key tls.key --tls-client-ca ca.crt
    ///   --allow-uri 'spiffe://cluster.local/ns/default/sa/*'
    ///
    /// mTLS ambassador: attache tcp --listen 127.0.0.1:6379 --upstream redis.prod:6380
    ///   --upstream-tls-ca ca.crt --upstream-tls-cert app.crt --upstream-tls-key app.key
    Tcp(Box<TcpArgs>),
    /// Proxy HTTP/1.1 and HTTP/2 from a local address to one or more upstream
    /// endpoints, without a config file (the defaults of an `http` listener).
    ///
    /// Example: attache http --listen 127.0.0.1:9080 --upstream payments:8080
    ///
    /// HTTPS front door: attache http --listen 0.0.0.0:8443 --upstream 127.0.0.1:8080
    ///   --tls-cert tls.crt --tls-key tls.key --tls-client-ca ca.crt
    Http(Box<TcpArgs>),
    /// A pooling Postgres ambassador, without a config file: the client's
    /// SSLRequest answered by attache (TLS with --tls-cert/--tls-key, client
    /// certificates with --tls-client-ca), loopback clients trusted, and their
    /// transactions multiplexed over a pool of server connections.
    ///
    /// Example: attache postgres --listen 127.0.0.1:6432 --upstream postgres.prod:5432
    ///
    /// Session pooling with a query limit: attache postgres --listen 127.0.0.1:6432
    ///   --upstream 127.0.0.1:5432 --pool-mode session --query-timeout 30s
    Postgres(Box<PostgresArgs>),
    /// A MySQL/MariaDB ambassador, without a config file. With --user and
    /// --password, attache logs clients in as that user and multiplexes
    /// their transactions over a pool of server connections; without, each
    /// client's own login goes to a server connection of its own. With
    /// --tls-cert/--tls-key (and --user), clients' TLS starts in-band.
    ///
    /// Example: attache mysql --listen 127.0.0.1:3307 --upstream mariadb.prod:3306
    ///   --user app --password "$APP_PASSWORD"
    Mysql(Box<MysqlArgs>),
    /// A Redis ambassador from a local address to a Redis (or its Sentinels),
    /// without a config file: commands multiplexed over a few shared
    /// connections, with the defaults of a `redis` listener.
    ///
    /// Example: attache redis --listen 127.0.0.1:6379 --upstream redis.prod:6379
    ///
    /// Behind Sentinel: attache redis --listen 127.0.0.1:6379 --sentinel-master mymaster
    ///   --upstream sentinel-0:26379 --upstream sentinel-1:26379 --upstream sentinel-2:26379
    Redis(Box<RedisArgs>),
    /// Wait until every target accepts a TCP connection, then exit 0 (for init containers).
    ///
    /// Example: attache wait tcp://mariadb:3306 tcp://redis:6379 --timeout 60s
    Wait {
        /// Targets as tcp://HOST:PORT (or HOST:PORT).
        #[arg(required = true, value_name = "TARGET")]
        targets: Vec<wait::Target>,
        /// Give up, exiting 1, after this long.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Time between two rounds of connection attempts.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// Make development certificates: a local CA and leaf certificates it signs.
    ///
    /// For trying mTLS in a minute and for tests; production certificates come
    /// from cert-manager, SPIRE or a company CA.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Add the attache native sidecar to every Deployment, StatefulSet,
    /// DaemonSet, ReplicaSet, Job, CronJob and Pod in Kubernetes YAML; the
    /// result goes to stdout, other documents unchanged.
    ///
    /// Example: attache inject deploy.yaml --config-map web-attache | kubectl apply -f -
    Inject {
        /// YAML file (one or many documents); `-` or none reads stdin.
        file: Option<PathBuf>,
        /// ConfigMap holding attache.yaml, mounted at /etc/attache.
        #[arg(long, default_value = "attache")]
        config_map: String,
        /// Secret with TLS material, mounted at /etc/attache/tls.
        #[arg(long)]
        secret: Option<String>,
        /// Container image of the sidecar.
        #[arg(long, default_value = concat!("attache:", env!("CARGO_PKG_VERSION")))]
        image: String,
        /// Admin port the probes use (the sidecar listens on 0.0.0.0 there).
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
    },
    /// Print the version.
    Version,
    /// Print a shell completion script: `attache completions bash > /etc/bash_completion.d/attache`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `attache man > attache.1 && man ./attache.1`.
    Man,
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Write DIR/ca.crt and DIR/ca.key (mode 0600): a new development CA.
    Ca {
        /// Directory to write to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace an existing CA key (certificates it signed stop verifying).
        #[arg(long)]
        force: bool,
    },
    /// Write OUT/NAME.crt and OUT/NAME.key (mode 0600), signed by the CA in --ca,
    /// usable as a server and as a client certificate.
    ///
    /// Example: attache certs issue --ca certs --out certs --name frontend
    ///   --uri spiffe://cluster.local/ns/default/sa/frontend --dns frontend.default.svc
    Issue {
        /// Directory holding ca.crt and ca.key.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Directory to write to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// File name stem and subject common name.
        #[arg(long)]
        name: String,
        /// DNS name SAN; repeatable. Without any --dns, --ip or --uri, NAME is used.
        #[arg(long, value_name = "NAME")]
        dns: Vec<String>,
        /// IP address SAN; repeatable.
        #[arg(long, value_name = "ADDR")]
        ip: Vec<std::net::IpAddr>,
        /// URI SAN, such as a SPIFFE ID; repeatable.
        #[arg(long, value_name = "URI")]
        uri: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 90)]
        days: u32,
    },
}

/// Where the admin server listens.
#[derive(Debug, Clone, Copy)]
enum AdminAddress {
    Listen(SocketAddr),
    Off,
}

impl std::str::FromStr for AdminAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "off" {
            return Ok(Self::Off);
        }
        text.parse()
            .map(Self::Listen)
            .map_err(|_| format!("{text:?} is not IP:PORT or `off`"))
    }
}

#[derive(Debug, Args)]
struct AdminArgs {
    /// Admin server address (/live /startup /ready /metrics); port 0 picks a
    /// free port and logs it; `off` disables it. Overrides the config's
    /// `admin.listen` (default 127.0.0.1:9901).
    #[arg(long, value_name = "ADDR|off")]
    admin: Option<AdminAddress>,
    /// Serve POST /shutdown (loopback callers only), so a Job can stop its sidecar.
    #[arg(long)]
    admin_shutdown: bool,
}

impl AdminArgs {
    fn apply(&self, admin: &mut model::Admin) {
        match self.admin {
            Some(AdminAddress::Listen(address)) => admin.listen = Some(address),
            Some(AdminAddress::Off) => admin.listen = None,
            None => {}
        }
        admin.shutdown_endpoint |= self.admin_shutdown;
    }
}

/// Balancing, spelled as in the config (`round_robin`); the kebab-case
/// spelling clap prefers is accepted too.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum BalanceArg {
    #[value(name = "round_robin", alias = "round-robin")]
    RoundRobin,
    #[value(name = "least_connections", alias = "least-connections")]
    LeastConnections,
    #[value(name = "peak_ewma", alias = "peak-ewma")]
    PeakEwma,
}

#[derive(Debug, Args)]
struct TcpArgs {
    /// Local address to accept connections on, e.g. 127.0.0.1:6379 or [::1]:6379.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// The listener's and upstream's name in metrics and logs (default: the
    /// protocol's, `tcp`, `http` or `redis`).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Upstream endpoint HOST:PORT; repeat for several. Hostnames resolve at every connect.
    #[arg(long, required = true, value_name = "HOST:PORT")]
    upstream: Vec<Endpoint>,
    /// How an endpoint is picked for each connection.
    #[arg(long, value_enum, default_value = "round_robin")]
    balance: BalanceArg,
    /// Limit on one connect attempt to one endpoint.
    #[arg(long, default_value_t = Text(model::DEFAULT_CONNECT_TIMEOUT))]
    connect_timeout: Text,
    /// Close a connection that moved no byte in either direction for this long.
    #[arg(long, default_value_t = Text(model::DEFAULT_IDLE_TIMEOUT))]
    idle_timeout: Text,
    /// Concurrent client connections; excess ones are closed at once and counted.
    #[arg(long, default_value_t = model::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Upstream connections handed to clients at once; clients beyond it wait
    /// for a slot (up to 256, for 5 s) or are refused.
    #[arg(long, default_value_t = model::DEFAULT_UPSTREAM_MAX_CONNECTIONS)]
    upstream_max_connections: usize,
    /// Allow plaintext on a non-loopback listen address.
    #[arg(long)]
    unsafe_plaintext: bool,
    /// While draining, keep accepting connections from loopback clients (classic sidecars).
    #[arg(long)]
    keep_accepting_while_draining: bool,
    /// After SIGTERM, keep accepting for this long before closing the listener.
    #[arg(long, default_value_t = Text(model::DEFAULT_DRAIN_MIN_DELAY))]
    drain_min_delay: Text,
    /// After SIGTERM, exit when the last connection closes or after this long.
    #[arg(long, default_value_t = Text(model::DEFAULT_DRAIN_GRACE_PERIOD))]
    drain_grace_period: Text,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    admin: AdminArgs,
    /// Log level (RUST_LOG overrides it).
    #[arg(long, value_enum, default_value = "info")]
    log_level: LogLevelArg,
}

/// TLS on either leg, in the spirit of ghostunnel.
#[derive(Debug, Args)]
struct TlsArgs {
    /// Terminate TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        help_heading = "TLS front door"
    )]
    tls_cert: Option<PathBuf>,
    /// Private key for --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_cert",
        help_heading = "TLS front door"
    )]
    tls_key: Option<PathBuf>,
    /// CA bundle that client certificates must chain to; without it, clients need no certificate.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_cert",
        help_heading = "TLS front door"
    )]
    tls_client_ca: Option<PathBuf>,
    /// Let in clients whose certificate has this URI SAN (SPIFFE ID; `*` = one path segment); repeatable.
    #[arg(
        long,
        value_name = "URI",
        requires = "tls_client_ca",
        help_heading = "TLS front door"
    )]
    allow_uri: Vec<String>,
    /// Let in clients whose certificate has this DNS SAN; repeatable.
    #[arg(
        long,
        value_name = "NAME",
        requires = "tls_client_ca",
        help_heading = "TLS front door"
    )]
    allow_dns: Vec<String>,
    /// Let in clients whose certificate has this subject CN; repeatable.
    #[arg(
        long,
        value_name = "NAME",
        requires = "tls_client_ca",
        help_heading = "TLS front door"
    )]
    allow_cn: Vec<String>,
    /// Originate TLS to the upstream, verifying its certificate against this CA bundle.
    #[arg(long, value_name = "FILE", help_heading = "TLS to the upstream")]
    upstream_tls_ca: Option<PathBuf>,
    /// Client certificate chain for mutual TLS to the upstream; needs --upstream-tls-key.
    #[arg(long, value_name = "FILE", requires_all = ["upstream_tls_key", "upstream_tls_ca"], help_heading = "TLS to the upstream")]
    upstream_tls_cert: Option<PathBuf>,
    /// Private key for --upstream-tls-cert.
    #[arg(
        long,
        value_name = "FILE",
        requires = "upstream_tls_cert",
        help_heading = "TLS to the upstream"
    )]
    upstream_tls_key: Option<PathBuf>,
    /// Name sent as SNI and verified (default: the upstream's host).
    #[arg(
        long,
        value_name = "NAME",
        requires = "upstream_tls_ca",
        help_heading = "TLS to the upstream"
    )]
    upstream_tls_server_name: Option<String>,
    /// Accept only an upstream whose certificate has this URI SAN (SPIFFE ID); repeatable.
    #[arg(
        long,
        value_name = "URI",
        requires = "upstream_tls_ca",
        help_heading = "TLS to the upstream"
    )]
    upstream_allow_uri: Vec<String>,
}

/// `attache postgres`: the `tcp` flags plus a `postgres` listener's settings.
#[derive(Debug, Args)]
struct PostgresArgs {
    #[command(flatten)]
    common: TcpArgs,
    /// When a server connection returns to its pool: at the end of each
    /// transaction, or when the client disconnects.
    #[arg(
        long,
        value_enum,
        default_value = "transaction",
        help_heading = "Postgres"
    )]
    pool_mode: PoolModeArg,
    /// Server connections per (database, user).
    #[arg(long, default_value_t = model::DEFAULT_POOL_SIZE, help_heading = "Postgres")]
    pool_size: u32,
    /// Cancel a query that runs longer than this (off by default).
    #[arg(long, value_name = "DURATION", help_heading = "Postgres")]
    query_timeout: Option<String>,
    /// Log into the server as this user instead of the client's.
    #[arg(long, value_name = "USER", help_heading = "Postgres")]
    server_user: Option<String>,
    /// The password for the server login, when the server asks for one.
    #[arg(
        long,
        env = "ATTACHE_POSTGRES_SERVER_PASSWORD",
        hide_env_values = true,
        help_heading = "Postgres"
    )]
    server_password: Option<String>,
}

/// `attache mysql`: the `tcp` flags plus a `mysql` listener's settings.
#[derive(Debug, Args)]
struct MysqlArgs {
    #[command(flatten)]
    common: TcpArgs,
    /// When a server connection returns to its pool: at the end of each
    /// transaction (the default with --user), or when the client
    /// disconnects (the only mode without).
    #[arg(long, value_enum, help_heading = "MySQL")]
    pool_mode: Option<PoolModeArg>,
    /// Server connections per (schema, user).
    #[arg(long, default_value_t = model::DEFAULT_POOL_SIZE, help_heading = "MySQL")]
    pool_size: u32,
    /// Interrupt a query (KILL QUERY) that runs longer than this (off by default).
    #[arg(long, value_name = "DURATION", help_heading = "MySQL")]
    query_timeout: Option<String>,
    /// The user clients log in as, and attache logs into the server as
    /// (`auth: local`); without it, each client's own login is relayed.
    #[arg(long, env = "ATTACHE_MYSQL_USER", help_heading = "MySQL")]
    user: Option<String>,
    /// That user's password.
    #[arg(
        long,
        env = "ATTACHE_MYSQL_PASSWORD",
        hide_env_values = true,
        requires = "user",
        help_heading = "MySQL"
    )]
    password: Option<String>,
}

impl MysqlArgs {
    fn document(self) -> serde_json::Value {
        let mut document = self.common.document(model::Protocol::Mysql);
        let (auth, default_mode) = match self.user {
            Some(_) => (model::DatabaseAuth::Local, PoolModeArg::Transaction),
            None => (model::DatabaseAuth::Passthrough, PoolModeArg::Session),
        };
        let auth = match auth {
            model::DatabaseAuth::Local => "local",
            model::DatabaseAuth::Passthrough => "passthrough",
        };
        let pool_mode = match self.pool_mode.unwrap_or(default_mode) {
            PoolModeArg::Session => model::PoolMode::Session,
            PoolModeArg::Transaction => model::PoolMode::Transaction,
        };
        let users = self
            .user
            .map(|user| json!({ user: self.password.unwrap_or_default() }));
        document["listeners"][0]["mysql"] = json!({
            "auth": auth,
            "pool_mode": pool_mode.as_str(),
            "pool_size": self.pool_size,
            "query_timeout": self.query_timeout,
            "users": users,
        });
        document
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PoolModeArg {
    Session,
    Transaction,
}

impl PostgresArgs {
    fn document(self) -> serde_json::Value {
        let mut document = self.common.document(model::Protocol::Postgres);
        let pool_mode = match self.pool_mode {
            PoolModeArg::Session => model::PoolMode::Session,
            PoolModeArg::Transaction => model::PoolMode::Transaction,
        };
        document["listeners"][0]["postgres"] = json!({
            "pool_mode": pool_mode.as_str(),
            "pool_size": self.pool_size,
            "query_timeout": self.query_timeout,
            "server_user": self.server_user,
            "server_password": self.server_password.filter(|password| !password.is_empty()),
        });
        document
    }
}

/// `attache redis`: the `tcp` flags plus a `redis` listener's settings.
#[derive(Debug, Args)]
struct RedisArgs {
    #[command(flatten)]
    common: TcpArgs,
    /// Long-lived upstream connections shared by every client, per database.
    #[arg(long, default_value_t = model::DEFAULT_SHARED_CONNECTIONS, help_heading = "Redis")]
    shared_connections: usize,
    /// A command without a reply after this gets an error reply.
    #[arg(long, default_value_t = Text(model::DEFAULT_COMMAND_TIMEOUT), help_heading = "Redis")]
    command_timeout: Text,
    /// Connections lent to one client at a time (transactions, blocking commands, pub/sub).
    #[arg(long, default_value_t = model::DEFAULT_MAX_PINNED, help_heading = "Redis")]
    max_pinned: u32,
    /// Password clients must AUTH with (checked by attache, never sent upstream).
    #[arg(
        long,
        env = "ATTACHE_REDIS_PASSWORD",
        hide_env_values = true,
        help_heading = "Redis"
    )]
    password: Option<String>,
    /// attache's own ACL user for Redis (needs --upstream-password).
    #[arg(long, requires = "upstream_password", help_heading = "Redis")]
    upstream_username: Option<String>,
    /// attache's own password for Redis, sent on every upstream connection.
    #[arg(
        long,
        env = "ATTACHE_REDIS_UPSTREAM_PASSWORD",
        hide_env_values = true,
        help_heading = "Redis"
    )]
    upstream_password: Option<String>,
    /// The upstreams are Redis Sentinels; follow the master they monitor under this name.
    #[arg(long, value_name = "NAME", help_heading = "Redis")]
    sentinel_master: Option<String>,
    /// Cache replies to reads of keys with this prefix or pattern (`user:`,
    /// `session:*`); repeat for more. Kept correct by Redis' invalidation messages.
    #[arg(
        long,
        value_name = "PATTERN",
        requires = "cache_max_memory",
        help_heading = "Redis cache"
    )]
    cache_keys: Vec<String>,
    /// Memory the cache may use: bytes or with a unit (64MiB, 1GiB).
    #[arg(
        long,
        value_name = "SIZE",
        requires = "cache_keys",
        help_heading = "Redis cache"
    )]
    cache_max_memory: Option<String>,
}

impl RedisArgs {
    /// The config document these flags describe (see [`TcpArgs::document`]).
    fn document(self) -> serde_json::Value {
        let mut document = self.common.document(model::Protocol::Redis);
        // Empty means none, as in a config file (`${PASSWORD:-}`).
        let given = |value: Option<String>| value.filter(|value| !value.is_empty());
        document["listeners"][0]["redis"] = json!({
            "shared_connections": self.shared_connections,
            "command_timeout": self.command_timeout,
            "max_pinned": self.max_pinned,
            "password": given(self.password),
            "upstream_username": self.upstream_username,
            "upstream_password": given(self.upstream_password),
        });
        if let Some(max_memory) = self.cache_max_memory {
            document["listeners"][0]["redis"]["cache"] = json!({
                "max_memory": max_memory,
                "keys": self.cache_keys,
            });
        }
        if let Some(master_name) = self.sentinel_master {
            let upstream = document["listeners"][0]["upstream"]
                .as_str()
                .unwrap_or("redis")
                .to_owned();
            document["upstreams"][upstream]["sentinel"] = json!({ "master_name": master_name });
        }
        document
    }
}

impl TlsArgs {
    fn listener(&self) -> Option<serde_json::Value> {
        let (cert, key) = (self.tls_cert.as_ref()?, self.tls_key.as_ref()?);
        Some(json!({
            "cert": cert,
            "key": key,
            "client_ca": self.tls_client_ca,
            "client_auth": if self.tls_client_ca.is_some() { "required" } else { "none" },
            "allow": {
                "uris": self.allow_uri,
                "dns": self.allow_dns,
                "cns": self.allow_cn,
            },
        }))
    }

    fn upstream(&self) -> Option<serde_json::Value> {
        Some(json!({
            "ca": self.upstream_tls_ca.as_ref()?,
            "cert": self.upstream_tls_cert,
            "key": self.upstream_tls_key,
            "server_name": self.upstream_tls_server_name,
            "allow": { "uris": self.upstream_allow_uri },
        }))
    }
}

/// A duration flag, written and read as a config file writes it (`1h 30m`);
/// its default comes from the model, so `--help` shows the config's own.
#[derive(Debug, Clone, Copy)]
struct Text(Duration);

impl std::fmt::Display for Text {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        humantime::format_duration(self.0).fmt(formatter)
    }
}

impl std::str::FromStr for Text {
    type Err = humantime::DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(text).map(Self)
    }
}

impl serde::Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogLevelArg {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl TcpArgs {
    /// The config document these flags describe: one listener named after
    /// `protocol` forwarding to an upstream of the same name. It goes
    /// through the same conversion, defaults and validation as a file.
    fn document(self, protocol: model::Protocol) -> serde_json::Value {
        let name = self.name.as_deref().unwrap_or(protocol.as_str());
        let admin_listen = match self.admin.admin {
            Some(AdminAddress::Listen(address)) => json!(address),
            Some(AdminAddress::Off) => json!("off"),
            None => json!(model::DEFAULT_ADMIN_LISTEN),
        };
        let endpoints: Vec<String> = self.upstream.iter().map(ToString::to_string).collect();
        json!({
            "admin": { "listen": admin_listen, "shutdown_endpoint": self.admin.admin_shutdown },
            "log": { "level": self.log_level.as_str() },
            "drain": { "min_delay": self.drain_min_delay, "grace_period": self.drain_grace_period },
            "listeners": [{
                "name": name,
                "listen": self.listen,
                "protocol": protocol.as_str(),
                "upstream": name,
                "max_connections": self.max_connections,
                "idle_timeout": self.idle_timeout,
                "keep_accepting_while_draining": self.keep_accepting_while_draining,
                "unsafe_plaintext": self.unsafe_plaintext,
                "tls": self.tls.listener(),
            }],
            "upstreams": {
                name: {
                    "endpoints": endpoints,
                    "balance": self.balance.as_str(),
                    "connect_timeout": self.connect_timeout,
                    "tls": self.tls.upstream(),
                    "limits": { "max_connections": self.upstream_max_connections },
                },
            },
        })
    }
}

impl LogLevelArg {
    fn as_str(self) -> &'static str {
        match self {
            Self::Trace => LogLevel::Trace,
            Self::Debug => LogLevel::Debug,
            Self::Info => LogLevel::Info,
            Self::Warn => LogLevel::Warn,
            Self::Error => LogLevel::Error,
        }
        .as_str()
    }
}

impl BalanceArg {
    fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastConnections => "least_connections",
            Self::PeakEwma => "peak_ewma",
        }
    }
}

/// Parses the command line and runs the chosen subcommand.
pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "attache", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man => {
            let page = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
            match page.render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => fail(&error),
            }
        }
        Command::Version => {
            println!("attache {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Certs(command) => certs(command),
        Command::Check { config, tls_files } => match attache_config::load(&config) {
            Ok(loaded) => {
                let problems = if tls_files {
                    tls_problems(&loaded)
                } else {
                    Vec::new()
                };
                if !problems.is_empty() {
                    for problem in problems {
                        eprintln!("attache: {}: {problem}", config.display());
                    }
                    return ExitCode::FAILURE;
                }
                println!(
                    "{}: ok ({} listeners, {} upstreams)",
                    config.display(),
                    loaded.listeners.len(),
                    loaded.upstreams.len()
                );
                ExitCode::SUCCESS
            }
            Err(error) => fail(&error),
        },
        Command::Run { config, admin } => {
            let loaded = attache_config::read(&config).and_then(|text| {
                attache_config::parse_with_process_env(&text, &config).map(|loaded| (loaded, text))
            });
            match loaded {
                Ok((mut loaded, text)) => {
                    admin.apply(&mut loaded.admin);
                    let file = runtime::ConfigFile {
                        path: config,
                        text,
                        adjust: Box::new(move |config| admin.apply(&mut config.admin)),
                    };
                    serve(loaded, Some(file))
                }
                // The config's own log format is unknown here: auto.
                Err(error) => fatal(LogFormat::Auto, &error),
            }
        }
        Command::Inject {
            file,
            config_map,
            secret,
            image,
            admin_port,
        } => {
            let options = crate::inject::Options {
                image,
                config_map,
                secret,
                admin_port,
            };
            let input = match file.as_deref() {
                Some(path) if path != std::path::Path::new("-") => std::fs::read_to_string(path)
                    .map_err(|error| format!("cannot read {}: {error}", path.display())),
                _ => std::io::read_to_string(std::io::stdin())
                    .map_err(|error| format!("cannot read stdin: {error}")),
            };
            match input.and_then(|text| {
                crate::inject::inject(&text, &options).map_err(|error| error.to_string())
            }) {
                Ok(output) => {
                    print!("{output}");
                    ExitCode::SUCCESS
                }
                Err(error) => fail(&error),
            }
        }
        Command::Tcp(arguments) => one_liner(arguments.document(model::Protocol::Tcp)),
        Command::Http(arguments) => one_liner(arguments.document(model::Protocol::Http)),
        Command::Redis(arguments) => one_liner(arguments.document()),
        Command::Postgres(arguments) => one_liner(arguments.document()),
        Command::Mysql(arguments) => one_liner(arguments.document()),
        Command::Wait {
            targets,
            timeout,
            interval,
        } => {
            logging::init(LogLevel::Info, LogFormat::Auto);
            match block_on(wait::wait(targets, timeout, interval)) {
                Ok(Ok(())) => ExitCode::SUCCESS,
                Ok(Err(error)) => fail(&error),
                Err(error) => fail(&*error),
            }
        }
    }
}

fn certs(command: CertsCommand) -> ExitCode {
    use attache_certs::dev_ca;

    let written = match command {
        CertsCommand::Ca { out, days, force } => dev_ca::create_ca(&out, days, force),
        CertsCommand::Issue {
            ca,
            out,
            name,
            dns,
            ip,
            uri,
            days,
        } => dev_ca::issue(
            &ca,
            &out,
            &dev_ca::LeafRequest {
                name,
                dns_names: dns,
                ip_addresses: ip,
                uris: uri,
                days,
            },
        ),
    };
    match written {
        Ok(certificate) => {
            println!("wrote {} and its key", certificate.display());
            ExitCode::SUCCESS
        }
        Err(error) => fail(&error),
    }
}

fn serve(config: Config, file: Option<runtime::ConfigFile>) -> ExitCode {
    let format = config.log.format;
    logging::init(config.log.level, format);
    match block_on(runtime::run(config, file)) {
        Ok(Ok(())) => {
            // What is queued (the drain summary) reaches a reader that
            // reads; a stuck one holds the exit back a second at most.
            output::flush(Duration::from_secs(1));
            ExitCode::SUCCESS
        }
        Ok(Err(error)) => fatal(format, &describe(&error)),
        Err(error) => fatal(format, &*error),
    }
}

/// Runs `attache tcp` / `http` / `redis`: the config their flags describe,
/// converted and validated as a file would be (nulls are keys left out).
fn one_liner(document: serde_json::Value) -> ExitCode {
    match read_one_liner(document) {
        Ok(config) => serve(config, None),
        Err(attache_config::ConfigError::Invalid { problems, .. }) => {
            // Key paths name what a flag sets; lines mean nothing here.
            let first = problems.first().map_or_else(String::new, |problem| {
                format!("{}: {}", problem.path, problem.message)
            });
            fatal(LogFormat::Auto, &format!("invalid arguments: {first}"))
        }
        Err(error) => fatal(LogFormat::Auto, &error),
    }
}

/// The config a one-liner's document describes, read as a file would be
/// (nulls are keys left out).
fn read_one_liner(mut document: serde_json::Value) -> Result<Config, attache_config::ConfigError> {
    drop_nulls(&mut document);
    attache_config::parse_literal(&document.to_string(), "the command line")
}

/// Removes `null` members, so an absent flag is an absent key.
fn drop_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(members) => {
            members.retain(|_, member| !member.is_null());
            members.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// Runs `future` on a runtime sized to the CPUs attache may use: with one
/// (a CPU limit of 1 or less, or a single-CPU affinity mask), a
/// current-thread runtime, which spares every wake-up a cross-thread
/// hand-off (measured: about 15% more HTTP requests per second on one CPU);
/// with more, a worker thread per CPU. `ATTACHE_WORKER_THREADS` overrides
/// the count.
fn block_on<F: Future>(future: F) -> Result<F::Output, Box<dyn std::error::Error>> {
    let threads = match std::env::var("ATTACHE_WORKER_THREADS") {
        Ok(value) => value
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|threads| *threads > 0)
            .ok_or_else(|| format!("ATTACHE_WORKER_THREADS={value:?} is not a positive number"))?,
        Err(_) => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
    };
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    Ok(runtime.block_on(future))
}

/// What loading each listener's and upstream's TLS material found wrong,
/// each problem naming its listener or upstream once.
fn tls_problems(config: &Config) -> Vec<String> {
    let named = |owner: String, error: attache_certs::tls::TlsError| {
        let error = error.to_string();
        if error.starts_with(&owner) {
            error
        } else {
            format!("{owner}: {error}")
        }
    };
    let listeners = config.listeners.iter().filter_map(|listener| {
        let tls = listener.tls.as_ref()?;
        let error = attache_certs::tls::server_config(tls, &listener.name).err()?;
        Some(named(format!("listener {:?}", listener.name), error))
    });
    let upstreams = config.upstreams.iter().filter_map(|upstream| {
        let tls = upstream.tls.as_ref()?;
        let error = attache_certs::tls::client_config(tls, &upstream.name).err()?;
        Some(named(format!("upstream {:?}", upstream.name), error))
    });
    listeners.chain(upstreams).collect()
}

/// The error and its causes, "listener \"a\": TLS: ...: No such file", each
/// cause written once: many errors already print their source in their own
/// message, and `{:#}` would repeat it.
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("attache: {error}");
    ExitCode::FAILURE
}

/// Ends a command that serves: the error as text on a terminal, else as one
/// JSON event shaped like every other log line, so a log pipeline that
/// parses attache's lines also parses the one that says why it stopped.
/// Queued like every line, so a stuck reader holds the exit back a second
/// at most.
fn fatal(format: LogFormat, error: &dyn std::fmt::Display) -> ExitCode {
    let line = if logging::json_on_stderr(format) {
        serde_json::json!({
            "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            "level": "ERROR",
            "message": format!("attache: {error}"),
            "target": "attache",
        })
        .to_string()
    } else {
        format!("attache: {error}")
    };
    output::Stream::Stderr.write_line(format!("{line}\n").as_bytes());
    output::flush(Duration::from_secs(1));
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_writes_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let repeated = anyhow::Error::new(io).context("tls.crt: cannot read: No such file");
        let error = repeated.context("listener \"a\"");
        assert_eq!(
            describe(&error),
            "listener \"a\": tls.crt: cannot read: No such file"
        );
        let chained = anyhow::anyhow!("Address in use").context("cannot listen on 127.0.0.1:1");
        assert_eq!(
            describe(&chained),
            "cannot listen on 127.0.0.1:1: Address in use"
        );
    }

    /// What `attache <one-liner> ARGS` runs.
    fn one_liner_config(arguments: &[&str]) -> Config {
        read_one_liner(one_liner_document(arguments)).unwrap()
    }

    /// The document `attache <one-liner> ARGS` writes.
    fn one_liner_document(arguments: &[&str]) -> serde_json::Value {
        match Cli::try_parse_from(arguments).unwrap().command {
            Command::Tcp(arguments) => arguments.document(model::Protocol::Tcp),
            Command::Http(arguments) => arguments.document(model::Protocol::Http),
            Command::Redis(arguments) => arguments.document(),
            Command::Postgres(arguments) => arguments.document(),
            Command::Mysql(arguments) => arguments.document(),
            other => panic!("not a one-liner: {other:?}"),
        }
    }

    #[test]
    fn one_liners_mean_what_the_same_config_file_means() {
        let http = one_liner_config(&[
            "attache",
            "http",
            "--listen",
            "127.0.0.1:8080",
            "--upstream",
            "127.0.0.1:9000",
            "--tls-cert",
            "t.crt",
            "--tls-key",
            "t.key",
        ]);
        let file = attache_config::parse(
            "listeners:\n  - name: http\n    listen: 127.0.0.1:8080\n    protocol: http\n    upstream: http\n    tls: { cert: t.crt, key: t.key, client_auth: none }\nupstreams:\n  http: { endpoints: [\"127.0.0.1:9000\"] }\n",
            "file",
            &|_| None,
        )
        .unwrap();
        assert_eq!(http, file);
        // The HTTP ALPN default lives in the config crate only.
        let alpn = &http.listeners[0].tls.as_ref().unwrap().alpn;
        assert_eq!(alpn, &["h2", "http/1.1"]);
    }

    #[test]
    fn a_dollar_in_a_flag_is_a_dollar() {
        let redis = one_liner_config(&[
            "attache",
            "redis",
            "--listen",
            "127.0.0.1:6379",
            "--upstream",
            "127.0.0.1:6380",
            "--password",
            "pa$$${word}",
            "--sentinel-master",
            "main",
        ]);
        let attache_config::ListenerKind::Redis(settings) = &redis.listeners[0].kind else {
            panic!("a redis listener");
        };
        assert_eq!(settings.password.as_deref(), Some("pa$$${word}"));
        assert_eq!(
            redis.upstreams[0].sentinel.as_ref().unwrap().master_name,
            "main"
        );
    }

    #[test]
    fn one_liners_take_a_name_and_both_spellings_of_a_balance() {
        let named = one_liner_config(&[
            "attache",
            "redis",
            "--listen",
            "127.0.0.1:6379",
            "--upstream",
            "127.0.0.1:6380",
            "--name",
            "sessions",
            "--sentinel-master",
            "main",
            "--balance",
            "least-connections",
        ]);
        assert_eq!(named.listeners[0].name, "sessions");
        assert_eq!(named.upstreams[0].name, "sessions");
        assert!(named.upstreams[0].sentinel.is_some());
        assert_eq!(
            named.upstreams[0].balance,
            attache_config::Balance::LeastConnections
        );
        let config_spelling = one_liner_config(&[
            "attache",
            "tcp",
            "--listen",
            "127.0.0.1:1",
            "--upstream",
            "127.0.0.1:2",
            "--balance",
            "peak_ewma",
        ]);
        assert_eq!(config_spelling.listeners[0].name, "tcp");
        assert_eq!(
            config_spelling.upstreams[0].balance,
            attache_config::Balance::PeakEwma
        );
    }

    #[test]
    fn the_mysql_one_liner_pools_with_a_user_and_relays_each_login_without() {
        let pooled = one_liner_config(&[
            "attache",
            "mysql",
            "--listen",
            "127.0.0.1:3307",
            "--upstream",
            "127.0.0.1:3306",
            "--user",
            "app",
            "--password",
            "s3cret",
            "--pool-size",
            "5",
            "--query-timeout",
            "2s",
        ]);
        let attache_config::ListenerKind::Mysql(settings) = &pooled.listeners[0].kind else {
            panic!("not a mysql listener: {:?}", pooled.listeners[0].kind);
        };
        assert_eq!(settings.pool.auth, attache_config::DatabaseAuth::Local);
        assert_eq!(
            settings.pool.pool_mode,
            attache_config::PoolMode::Transaction
        );
        assert_eq!(settings.pool.pool_size, 5);
        assert_eq!(
            settings.pool.query_timeout,
            Some(std::time::Duration::from_secs(2))
        );
        assert_eq!(settings.users["app"], "s3cret");
        assert_eq!(pooled.listeners[0].name, "mysql");

        let relayed = one_liner_config(&[
            "attache",
            "mysql",
            "--listen",
            "127.0.0.1:3307",
            "--upstream",
            "127.0.0.1:3306",
        ]);
        let attache_config::ListenerKind::Mysql(settings) = &relayed.listeners[0].kind else {
            panic!("not a mysql listener: {:?}", relayed.listeners[0].kind);
        };
        assert_eq!(
            settings.pool.auth,
            attache_config::DatabaseAuth::Passthrough
        );
        assert_eq!(settings.pool.pool_mode, attache_config::PoolMode::Session);
        assert!(settings.users.is_empty());
        assert!(!relayed.mysql_start_tls("mysql"));

        // TLS to the server starts inside the protocol.
        let in_band = one_liner_config(&[
            "attache",
            "mysql",
            "--listen",
            "127.0.0.1:3307",
            "--upstream",
            "127.0.0.1:3306",
            "--user",
            "app",
            "--upstream-tls-ca",
            "ca.crt",
        ]);
        assert!(in_band.mysql_start_tls("mysql"));
    }

    #[test]
    fn the_postgres_one_liner_is_a_pooling_listener_that_starts_upstream_tls_in_band() {
        let postgres = one_liner_config(&[
            "attache",
            "postgres",
            "--listen",
            "127.0.0.1:6432",
            "--upstream",
            "127.0.0.1:5432",
            "--tls-cert",
            "t.crt",
            "--tls-key",
            "t.key",
            "--pool-mode",
            "session",
            "--pool-size",
            "5",
            "--query-timeout",
            "2s",
        ]);
        let attache_config::ListenerKind::Postgres(settings) = &postgres.listeners[0].kind else {
            panic!("not a postgres listener: {:?}", postgres.listeners[0].kind);
        };
        assert_eq!(settings.pool.pool_mode, attache_config::PoolMode::Session);
        assert_eq!(settings.pool.pool_size, 5);
        assert_eq!(
            settings.pool.query_timeout,
            Some(std::time::Duration::from_secs(2))
        );
        assert_eq!(settings.pool.server_password, None);
        assert_eq!(postgres.listeners[0].name, "postgres");
        // Postgres' own ALPN (direct TLS), not HTTP's.
        assert_eq!(
            postgres.listeners[0].tls.as_ref().unwrap().alpn,
            ["postgresql"]
        );
        // TLS to the server starts inside the protocol (SSLRequest).
        let in_band = one_liner_config(&[
            "attache",
            "postgres",
            "--listen",
            "127.0.0.1:6432",
            "--upstream",
            "127.0.0.1:5432",
            "--upstream-tls-ca",
            "ca.crt",
        ]);
        assert_eq!(
            in_band.postgres_start_tls("postgres"),
            Some(attache_config::ServerSslMode::Require)
        );
    }
}
