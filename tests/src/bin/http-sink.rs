//! A local HTTP service for benchmarks (the web_hook fan-in benchmark): answers 200 to every
//! request over kept-alive connections, and prints its port on stdout.
//!
//! http-sink

use broker_tests::HttpServer;

#[tokio::main]
async fn main() {
    let sink = HttpServer::start_discarding(|_| (200, String::new(), 0)).await;
    println!("{}", sink.port);
    std::future::pending::<()>().await;
}
