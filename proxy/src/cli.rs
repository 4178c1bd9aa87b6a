//! Command-line parsing (clap) and dispatch to the subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use attache_config::model::{self, LogFormat, LogLevel};
use attache_config::{Balance, Breaker, Config, Endpoint, Limits, Retry};
use clap::{Args, Parser, Subcommand, ValueEnum};

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

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BalanceArg {
    RoundRobin,
    LeastConnections,
    PeakEwma,
}

#[derive(Debug, Args)]
struct TcpArgs {
    /// Local address to accept connections on, e.g. 127.0.0.1:6379 or [::1]:6379.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Upstream endpoint HOST:PORT; repeat for several. Hostnames resolve at every connect.
    #[arg(long, required = true, value_name = "HOST:PORT")]
    upstream: Vec<Endpoint>,
    /// How an endpoint is picked for each connection.
    #[arg(long, value_enum, default_value = "round-robin")]
    balance: BalanceArg,
    /// Limit on one connect attempt to one endpoint.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// Close a connection that moved no byte in either direction for this long.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
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
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    drain_min_delay: Duration,
    /// After SIGTERM, exit when the last connection closes or after this long.
    #[arg(long, default_value = "25s", value_parser = humantime::parse_duration)]
    drain_grace_period: Duration,
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

/// `attache redis`: the `tcp` flags plus a `redis` listener's settings.
#[derive(Debug, Args)]
struct RedisArgs {
    #[command(flatten)]
    common: TcpArgs,
    /// Long-lived upstream connections shared by every client, per database.
    #[arg(long, default_value_t = model::DEFAULT_SHARED_CONNECTIONS, help_heading = "Redis")]
    shared_connections: usize,
    /// A command without a reply after this gets an error reply.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, help_heading = "Redis")]
    command_timeout: Duration,
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
}

impl RedisArgs {
    fn into_config(self) -> Config {
        let mut config = self.common.into_config(model::Protocol::Redis);
        // Empty means none, as in a config file (`${PASSWORD:-}`).
        let given = |value: Option<String>| value.filter(|value| !value.is_empty());
        config.listeners[0].redis = Some(model::RedisListener {
            shared_connections: self.shared_connections,
            command_timeout: self.command_timeout,
            max_pinned: self.max_pinned,
            password: given(self.password),
            username: None,
            upstream_username: self.upstream_username,
            upstream_password: given(self.upstream_password),
        });
        config.upstreams[0].sentinel = self
            .sentinel_master
            .map(|master_name| model::Sentinel { master_name });
        config
    }
}

impl TlsArgs {
    fn listener(&self) -> Option<model::ListenerTls> {
        let (cert, key) = (self.tls_cert.clone()?, self.tls_key.clone()?);
        Some(model::ListenerTls {
            cert,
            key,
            client_ca: self.tls_client_ca.clone(),
            client_auth: if self.tls_client_ca.is_some() {
                model::ClientAuth::Required
            } else {
                model::ClientAuth::None
            },
            min_version: model::TlsVersion::default(),
            alpn: Vec::new(),
            allow: model::IdentityAllowList {
                uris: self.allow_uri.clone(),
                dns: self.allow_dns.clone(),
                cns: self.allow_cn.clone(),
            },
        })
    }

    fn upstream(&self) -> Option<model::UpstreamTls> {
        Some(model::UpstreamTls {
            ca: self.upstream_tls_ca.clone()?,
            cert: self.upstream_tls_cert.clone(),
            key: self.upstream_tls_key.clone(),
            server_name: self.upstream_tls_server_name.clone(),
            min_version: model::TlsVersion::default(),
            allow: model::IdentityAllowList {
                uris: self.upstream_allow_uri.clone(),
                ..model::IdentityAllowList::default()
            },
            alpn: Vec::new(),
        })
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
    fn into_config(self, protocol: model::Protocol) -> Config {
        let mut admin = model::Admin::default();
        self.admin.apply(&mut admin);
        let (name, http) = match protocol {
            model::Protocol::Http => ("http".to_owned(), Some(model::HttpListener::default())),
            model::Protocol::Redis => ("redis".to_owned(), None),
            model::Protocol::Tcp => ("tcp".to_owned(), None),
        };
        Config {
            tracing: model::Tracing::default(),
            admin,
            log: model::Log {
                level: match self.log_level {
                    LogLevelArg::Trace => LogLevel::Trace,
                    LogLevelArg::Debug => LogLevel::Debug,
                    LogLevelArg::Info => LogLevel::Info,
                    LogLevelArg::Warn => LogLevel::Warn,
                    LogLevelArg::Error => LogLevel::Error,
                },
                format: LogFormat::Auto,
            },
            drain: model::Drain {
                min_delay: self.drain_min_delay,
                grace_period: self.drain_grace_period,
            },
            listeners: vec![model::Listener {
                name: name.clone(),
                listen: self.listen,
                protocol,
                upstream: Some(name.clone()),
                max_connections: self.max_connections,
                idle_timeout: self.idle_timeout,
                keep_accepting_while_draining: self.keep_accepting_while_draining,
                unsafe_plaintext: self.unsafe_plaintext,
                proxy_protocol: None,
                tls: self.tls.listener().map(|mut tls| {
                    if protocol == model::Protocol::Http {
                        tls.alpn = vec!["h2".to_owned(), "http/1.1".to_owned()];
                    }
                    tls
                }),
                http,
                redis: None,
            }],
            upstreams: vec![model::Upstream {
                name,
                endpoints: self.upstream,
                balance: match self.balance {
                    BalanceArg::RoundRobin => Balance::RoundRobin,
                    BalanceArg::LeastConnections => Balance::LeastConnections,
                    BalanceArg::PeakEwma => Balance::PeakEwma,
                },
                connect_timeout: self.connect_timeout,
                tls: self.tls.upstream(),
                warm_pool: None,
                limits: Limits {
                    max_connections: self.upstream_max_connections,
                    ..Limits::default()
                },
                retry: Retry::default(),
                breaker: Breaker::default(),
                health_check: None,
                http_version: model::HttpVersion::default(),
                sentinel: None,
                proxy_protocol: None,
            }],
        }
    }
}

/// Parses the command line and runs the chosen subcommand.
pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
        Command::Tcp(arguments) => one_liner(arguments.into_config(model::Protocol::Tcp)),
        Command::Http(arguments) => one_liner(arguments.into_config(model::Protocol::Http)),
        Command::Redis(arguments) => one_liner(arguments.into_config()),
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

/// Runs `attache tcp` / `http` / `redis`: the config their flags describe.
fn one_liner(config: Config) -> ExitCode {
    let problems = attache_config::validate::validate(&config, &Default::default());
    if let Some(problem) = problems.first() {
        return fatal(config.log.format, &format!("invalid arguments: {problem}"));
    }
    serve(config, None)
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
    output::Stream::Stderr.write_line(format!("{line}\n").into_bytes());
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
}
