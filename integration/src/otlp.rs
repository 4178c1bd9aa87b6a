//! A local OTLP/HTTP receiver: accepts `POST /v1/traces` with protobuf
//! bodies, as a collector would, and decodes every span it gets.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use tokio::net::TcpListener;

use crate::servers::hex;

/// A span as received, with ids in hex and attribute values as text.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service_name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// `SpanKind` as numbered in OTLP: 2 server, 3 client.
    pub kind: i32,
    pub attributes: HashMap<String, String>,
    /// `Status.code`: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
}

/// OTLP `SpanKind` of a server span.
pub const SERVER: i32 = 2;
/// OTLP `SpanKind` of a client span.
pub const CLIENT: i32 = 3;

/// A running receiver.
pub struct Collector {
    pub address: SocketAddr,
    tls: bool,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    /// The headers of every export request.
    headers: Arc<Mutex<Vec<http::HeaderMap>>>,
}

impl Collector {
    /// Starts a plaintext receiver on a free loopback port.
    ///
    /// # Panics
    /// When no port can be bound.
    pub async fn start() -> Self {
        Self::serve(None).await
    }

    /// Starts a receiver that speaks TLS with `cert` and `key` (PEM files)
    /// and, with `client_ca`, requires a client certificate it signed.
    ///
    /// # Panics
    /// When the files cannot be used or no port can be bound.
    pub async fn start_tls(cert: &str, key: &str, client_ca: Option<&str>) -> Self {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .expect("certificate file")
            .collect::<Result<_, _>>()
            .expect("certificates");
        let key = PrivateKeyDer::from_pem_file(key).expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for certificate in CertificateDer::pem_file_iter(ca).expect("CA file") {
                    roots.add(certificate.expect("CA")).expect("CA");
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(chain, key).expect("server config");
        Self::serve(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let headers = Arc::new(Mutex::new(Vec::new()));
        let collector = Self {
            address,
            tls: tls.is_some(),
            spans: spans.clone(),
            headers: headers.clone(),
        };
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (spans, headers, tls) = (spans.clone(), headers.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let (spans, headers) = (spans.clone(), headers.clone());
                        async move {
                            headers.lock().unwrap().push(request.headers().clone());
                            Ok::<_, Infallible>(receive(&spans, request).await)
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = match tls {
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(stream) => {
                                builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await
                            }
                            Err(_) => return,
                        },
                        None => {
                            builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await
                        }
                    };
                });
            }
        });
        collector
    }

    /// The base URL to configure as the OTLP endpoint.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.address)
    }

    /// The values of header `name` on every export request so far.
    ///
    /// # Panics
    /// When the lock is poisoned.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .lock()
            .unwrap()
            .iter()
            .flat_map(|headers| headers.get_all(name))
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .collect()
    }

    /// Every span received so far.
    ///
    /// # Panics
    /// When the lock is poisoned.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the spans received, up to 30 s.
    ///
    /// # Panics
    /// When it does not hold in time.
    pub async fn wait_until(&self, done: impl Fn(&[ReceivedSpan]) -> bool) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(Instant::now() < deadline, "spans so far: {spans:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn receive(
    sink: &Mutex<Vec<ReceivedSpan>>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let answer = |status: StatusCode| {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status;
        response
    };
    let is_protobuf = request
        .headers()
        .get("content-type")
        .is_some_and(|value| value == "application/x-protobuf");
    if request.uri().path() != "/v1/traces" || !is_protobuf {
        return answer(StatusCode::NOT_FOUND);
    }
    let Ok(body) = request.into_body().collect().await else {
        return answer(StatusCode::BAD_REQUEST);
    };
    let Ok(export) = ExportTraceServiceRequest::decode(body.to_bytes()) else {
        return answer(StatusCode::BAD_REQUEST);
    };
    let mut received = Vec::new();
    for resource_spans in export.resource_spans {
        let service_name = resource_spans
            .resource
            .as_ref()
            .and_then(|resource| attributes(&resource.attributes).remove("service.name"))
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                received.push(ReceivedSpan {
                    service_name: service_name.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    attributes: attributes(&span.attributes),
                    status_code: span.status.map_or(0, |status| status.code),
                });
            }
        }
    }
    sink.lock().unwrap().extend(received);
    let mut response = answer(StatusCode::OK);
    response.headers_mut().insert(
        "content-type",
        "application/x-protobuf".parse().expect("header"),
    );
    response
}

fn attributes(list: &[KeyValue]) -> HashMap<String, String> {
    list.iter()
        .map(|pair| {
            let value = match pair.value.as_ref().and_then(|value| value.value.as_ref()) {
                Some(AnyValue::StringValue(text)) => text.clone(),
                Some(AnyValue::IntValue(number)) => number.to_string(),
                Some(AnyValue::BoolValue(flag)) => flag.to_string(),
                Some(AnyValue::DoubleValue(number)) => number.to_string(),
                other => format!("{other:?}"),
            };
            (pair.key.clone(), value)
        })
        .collect()
}
