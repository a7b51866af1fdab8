//! Homeostat's OTLP/gRPC `Export` handler against tonic's codec path, measured in
//! one run on the same requests, so the choice in `ingest/otlp_grpc.rs` rests on
//! numbers rather than on belief.
//!
//! The tonic side is what a tonic server with a pass-through codec would be: tonic
//! frames, decompresses and limits the message (`max_decoding_message_size`), then
//! hands the bytes to the same intake (shedding, the fast decoder, the pipeline
//! queue) as homeostat's own handler. Both servers run in this process on loopback.
//!
//! It prints, for each server:
//! - `accepted`: traces requests (the load generator's fleet, ~520 spans each) sent
//!   by 8 concurrent clients for `ROUND` while the queue is drained: requests per
//!   second and process CPU per request (client included, the same for both);
//! - `accepted (gzip)`: the same requests gzip-compressed (once, before the run);
//! - `shed`: the same with the pipeline queue full and the requests gzip-compressed,
//!   which both must answer UNAVAILABLE: what shedding costs;
//! - the gRPC status each gives an oversized message, a gzip bomb (small on the wire,
//!   over the limit inflated), corrupt gzip and a non-gRPC content type.
//!
//! Rounds alternate between the servers (3 each); medians and ratios are printed.
//! `cargo bench --bench grpc_receivers`

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http;
use bytes::{BufMut, Bytes};
use homeostat::columnar::Signal;
use homeostat::ingest::OtlpIntake;
use homeostat::ingest::decode::{Encoding, encode_response};
use homeostat::ingest::otlp_grpc::{self, SERVICES, TRACES_PATH};
use homeostat::loadgen::fleet::{Fleet, FleetSpec};
use homeostat::loadgen::target::RawCodec as Pass;
use homeostat::loadgen::templates;
use homeostat::self_metrics::SelfMetrics;
use tonic::codec::CompressionEncoding;
use tonic::server::{Grpc, NamedService, UnaryService};

const ROUND: Duration = Duration::from_secs(4);
const CLIENTS: usize = 8;
const LIMIT: usize = 4 << 20;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The traces `Export` method on tonic's codec path.
#[derive(Clone)]
struct TonicTraces(OtlpIntake, usize);

impl NamedService for TonicTraces {
    const NAME: &'static str = SERVICES[0];
}

impl UnaryService<Bytes> for TonicTraces {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, tonic::Status>>;
    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let intake = self.0.clone();
        Box::pin(async move {
            let body = request.into_inner();
            match intake
                .accept_async("grpc", Signal::Traces, body, Encoding::Protobuf, false)
                .await
            {
                Ok(decoded) => Ok(tonic::Response::new(encode_response(
                    &decoded,
                    Encoding::Protobuf,
                ))),
                Err(e) => Err(tonic::Status::new(e.grpc_code().into(), e.to_string())),
            }
        })
    }
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for TonicTraces {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let service = self.clone();
        Box::pin(async move {
            let mut grpc = Grpc::new(Pass)
                .accept_compressed(CompressionEncoding::Gzip)
                .apply_max_message_size_config(Some(service.1), None);
            Ok(grpc.unary(service, request).await)
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Server {
    Homeostat,
    Tonic,
}

/// Starts `server` on loopback with a queue that is drained (or left full).
async fn start(server: Server, drained: bool, limit: usize) -> String {
    let (queue, mut inbox) = tokio::sync::mpsc::channel(if drained { 64 } else { 1 });
    let intake = OtlpIntake::new(queue.clone(), limit, Arc::new(SelfMetrics::new()));
    if drained {
        tokio::spawn(async move { while inbox.recv().await.is_some() {} });
    } else {
        // Fill the one slot and keep the receiver alive so the queue stays full.
        let permit = queue.try_reserve().expect("empty queue");
        std::mem::forget(permit);
        std::mem::forget(inbox);
    }
    let router = match server {
        Server::Homeostat => otlp_grpc::router(intake).await.expect("router"),
        Server::Tonic => tonic::service::Routes::new(TonicTraces(intake, limit)).into_axum_router(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Sends pre-framed requests for `ROUND` from `CLIENTS` HTTP/2 clients (so the
/// client's cost is the same for both servers and no compression is spent on the
/// client side): (requests/s, CPU ms per request, answers that were not `expected`).
async fn load(
    url: &str,
    frames: Arc<Vec<Bytes>>,
    gzip: bool,
    expected: tonic::Code,
) -> (f64, f64, u64) {
    let done = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let (start, cpu) = (Instant::now(), cpu_seconds());
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let http2 = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .expect("client");
        let url = format!("{url}{TRACES_PATH}");
        let (frames, done, wrong) = (frames.clone(), done.clone(), wrong.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = client;
            while start.elapsed() < ROUND {
                let frame = frames[i % frames.len()].clone();
                i += CLIENTS;
                let mut request = http2
                    .post(&url)
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(frame);
                if gzip {
                    request = request.header("grpc-encoding", "gzip");
                }
                let code = match request.send().await {
                    // Errors are trailers-only answers: the status is in the headers.
                    Ok(response) => match response.headers().get("grpc-status") {
                        Some(v) => tonic::Code::from(
                            v.to_str().ok().and_then(|v| v.parse().ok()).unwrap_or(2),
                        ),
                        None => {
                            let ok =
                                response.status().is_success() && response.bytes().await.is_ok();
                            if ok {
                                tonic::Code::Ok
                            } else {
                                tonic::Code::Unknown
                            }
                        }
                    },
                    Err(_) => tonic::Code::Unavailable,
                };
                if code != expected {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.expect("client");
    }
    let (secs, n) = (
        start.elapsed().as_secs_f64(),
        done.load(Ordering::Relaxed).max(1),
    );
    (
        n as f64 / secs,
        (cpu_seconds() - cpu) * 1000.0 / n as f64,
        wrong.load(Ordering::Relaxed),
    )
}

/// The gRPC status `url` answers for a raw request frame and headers.
async fn status(url: &str, content_type: &str, gzip: bool, frame: Vec<u8>) -> String {
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let mut request = client
        .post(format!("{url}{TRACES_PATH}"))
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(frame);
    if gzip {
        request = request.header("grpc-encoding", "gzip");
    }
    match request.send().await {
        Ok(response) => {
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok());
            match code {
                Some(code) => format!("{:?}", tonic::Code::from_i32(code)),
                None => format!("HTTP {} (status in trailers)", response.status()),
            }
        }
        Err(e) => format!("error: {e}"),
    }
}

fn frame(compressed: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(compressed)];
    out.put_u32(payload.len() as u32);
    out.extend_from_slice(payload);
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

async fn statuses(server: Server) {
    let url = start(server, true, 64 * 1024).await;
    let cases: [(&str, &str, bool, Vec<u8>); 4] = [
        (
            "oversized (128 KiB > 64 KiB)",
            "application/grpc",
            false,
            frame(false, &vec![0; 128 * 1024]),
        ),
        (
            "gzip bomb (1 MiB inflated)",
            "application/grpc",
            true,
            frame(true, &gzip(&vec![0; 1 << 20])),
        ),
        (
            "corrupt gzip",
            "application/grpc",
            true,
            frame(true, b"not gzip at all"),
        ),
        (
            "content-type application/json",
            "application/json",
            false,
            frame(false, b""),
        ),
    ];
    for (what, content_type, gz, body) in cases {
        let answer = status(&url, content_type, gz, body).await;
        println!("  {server:?} {what}: {answer}");
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let fleet = Fleet::new(FleetSpec::default());
    let bodies: Vec<Bytes> = templates(&fleet, 16)
        .iter()
        .enumerate()
        .map(|(i, t)| t.traces(i as u64, None))
        .collect();
    let plain: Arc<Vec<Bytes>> = Arc::new(bodies.iter().map(|b| frame(false, b).into()).collect());
    let gzipped: Arc<Vec<Bytes>> = Arc::new(
        bodies
            .iter()
            .map(|b| frame(true, &gzip(b)).into())
            .collect(),
    );
    println!("gRPC statuses:");
    for server in [Server::Homeostat, Server::Tonic] {
        statuses(server).await;
    }
    for (what, drained, gz, expected) in [
        ("accepted", true, false, tonic::Code::Ok),
        ("accepted (gzip)", true, true, tonic::Code::Ok),
        (
            "shed (queue full, gzip)",
            false,
            true,
            tonic::Code::Unavailable,
        ),
    ] {
        let frames = if gz { gzipped.clone() } else { plain.clone() };
        let mut results = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
        for round in 0..6 {
            let server = if round % 2 == 0 {
                Server::Homeostat
            } else {
                Server::Tonic
            };
            let url = start(server, drained, LIMIT).await;
            let (rate, cpu, wrong) = load(&url, frames.clone(), gz, expected).await;
            assert_eq!(wrong, 0, "{server:?} gave unexpected answers");
            let slot = &mut results[usize::from(server == Server::Tonic)];
            slot.0.push(rate);
            slot.1.push(cpu);
        }
        let [(h_rate, h_cpu), (t_rate, t_cpu)] = results.map(|(r, c)| (median(r), median(c)));
        println!(
            "{what}: homeostat {h_rate:.0} req/s {h_cpu:.3} CPU ms/req; tonic {t_rate:.0} req/s \
             {t_cpu:.3} CPU ms/req; tonic/homeostat: throughput {:.2}x, CPU per request {:.2}x",
            t_rate / h_rate,
            t_cpu / h_cpu
        );
    }
}
