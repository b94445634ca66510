//! `mqtt-bench`: a small MQTT 3.1.1 load generator for whole-broker throughput.
//!
//! It speaks just enough MQTT over raw TCP (CONNECT, SUBSCRIBE, PUBLISH, PUBACK) to stay out of
//! the measurement's way, so the same run can compare this broker with any other on the same
//! machine (`tests/bench/compare.sh` runs it against this broker and Mosquitto).
//!
//! ```text
//! mqtt-bench --port 1883 --mode fan-in  --qos 1 --clients 10 --messages 100000
//! mqtt-bench --port 1883 --mode fan-out --qos 0 --clients 10 --messages 20000
//! mqtt-bench --port 1883 --mode latency --qos 1 --rate 2000 --messages 20000
//! ```
//! fan-in: `--clients` publishers share `--messages` among them, one subscriber on
//! `bench/<run>/#` (`<run>` = this process's id, so that a late message of an earlier run never
//! counts in this one).
//! fan-out: one publisher sends `--messages`, each of `--clients` subscribers receives all.
//! Prints one line: mode, qos, expected and received deliveries, seconds, deliveries per second.
//! `--sub-port P` connects the subscribers to another port (another node of a cluster), and
//! `--settle-ms N` waits after subscribing before publishing (for the cluster's interest).
//!
//! connect-storm: `--clients` connections send CONNECT at once (e.g. against a slow
//! authentication plugin) while an already-connected client keeps measuring its publish →
//! receive round trip; prints how long the storm took and the round trips before and during it.
//! `--username` / `--password` are sent by every connection.
//!
//! idle: `--clients` connections are opened, `--window` at a time (each waits for its CONNACK),
//! and then held without traffic for `--messages` seconds; prints the connect rate as soon as
//! all are connected (`tests/bench/idle.sh` measures the broker's memory and CPU meanwhile).
//! Keep Alive is 60 s, so hold them for less than the broker's 90 s limit. With
//! `--persistent true` they ask for persistent sessions, which stay when they close. With
//! `--subscribe true` each also subscribes, QoS 1, to a topic of its own (`devices/<id>/cmd`,
//! as a device waits for its commands) before the next connects.
//!
//! flood-ping / flood-subscribe: `--clients` connections send PINGREQ (or SUBSCRIBE and
//! UNSUBSCRIBE pairs) as fast as the broker takes them for `--messages` milliseconds, while
//! another client measures its publish → receive round trip before and during the flood.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    host: String,
    port: u16,
    mode: String,
    qos: u8,
    clients: usize,
    messages: u64,
    payload: usize,
    window: usize,
    username: Option<String>,
    password: Option<String>,
    /// Subscribers keep persistent sessions (clean session = 0).
    persistent: bool,
    /// `idle` mode: each connection subscribes to a topic of its own.
    subscribe: bool,
    /// `latency` mode: messages per second the publisher paces itself to.
    rate: u64,
    /// Subscribers connect to this port (another node of a cluster); default `port`.
    sub_port: Option<u16>,
    /// Milliseconds to wait after subscribing before publishing (a cluster's interest to
    /// reach the publisher's node).
    settle_ms: u64,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        host: "127.0.0.1".into(),
        port: 1883,
        mode: "fan-in".into(),
        qos: 0,
        clients: 10,
        messages: 100_000,
        payload: 64,
        window: 64,
        username: None,
        password: None,
        persistent: false,
        subscribe: false,
        rate: 2000,
        sub_port: None,
        settle_ms: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--host" => a.host = v,
            "--port" => a.port = v.parse()?,
            "--mode" => a.mode = v,
            "--qos" => a.qos = v.parse()?,
            "--clients" => a.clients = v.parse()?,
            "--messages" => a.messages = v.parse()?,
            "--payload" => a.payload = v.parse()?,
            "--window" => a.window = v.parse()?,
            "--username" => a.username = Some(v),
            "--password" => a.password = Some(v),
            "--persistent" => a.persistent = v.parse()?,
            "--subscribe" => a.subscribe = v.parse()?,
            "--rate" => a.rate = v.parse()?,
            "--sub-port" => a.sub_port = Some(v.parse()?),
            "--settle-ms" => a.settle_ms = v.parse()?,
            _ => bail!("unknown option {k}"),
        }
    }
    if a.qos > 1
        || ![
            "fan-in",
            "fan-out",
            "connect-storm",
            "idle",
            "flood-ping",
            "flood-subscribe",
            "latency",
        ]
        .contains(&a.mode.as_str())
        || a.clients == 0
        || a.rate == 0
    {
        bail!("--mode fan-in|fan-out|connect-storm|idle|flood-ping|flood-subscribe|latency, --qos 0|1, --clients >= 1, --rate >= 1");
    }
    Ok(a)
}

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_u16(s.len() as u16);
    b.put_slice(s.as_bytes());
}

fn put_len(b: &mut BytesMut, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        b.put_u8(byte);
        if n == 0 {
            break;
        }
    }
}

/// Splits one complete packet (byte1, body) off the front of `buf`.
fn take_packet(buf: &mut BytesMut) -> Option<(u8, BytesMut)> {
    let mut len = 0usize;
    let mut i = 1;
    loop {
        let b = *buf.get(i)?;
        len |= ((b & 0x7F) as usize) << (7 * (i - 1));
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    if buf.len() < i + len {
        return None;
    }
    let byte1 = buf[0];
    buf.advance(i);
    Some((byte1, buf.split_to(len)))
}

async fn connect(a: &Args, id: &str) -> anyhow::Result<(TcpStream, BytesMut)> {
    connect_with(a, id, true).await
}

async fn connect_with(a: &Args, id: &str, clean: bool) -> anyhow::Result<(TcpStream, BytesMut)> {
    connect_to(a, a.port, id, clean).await
}

/// A subscriber's connection: to `--sub-port` when given.
async fn connect_sub(a: &Args, id: &str, clean: bool) -> anyhow::Result<(TcpStream, BytesMut)> {
    connect_to(a, a.sub_port.unwrap_or(a.port), id, clean).await
}

async fn connect_to(
    a: &Args,
    port: u16,
    id: &str,
    clean: bool,
) -> anyhow::Result<(TcpStream, BytesMut)> {
    let mut s = TcpStream::connect((a.host.as_str(), port)).await?;
    s.set_nodelay(true)?;
    let mut body = BytesMut::new();
    put_str(&mut body, "MQTT");
    let mut flags = if clean { 0x02 } else { 0x00 };
    if a.username.is_some() {
        flags |= 0x80;
    }
    if a.password.is_some() {
        flags |= 0x40;
    }
    body.put_slice(&[4, flags, 0, 60]);
    put_str(&mut body, id);
    for v in [&a.username, &a.password].into_iter().flatten() {
        put_str(&mut body, v);
    }
    let mut p = BytesMut::new();
    p.put_u8(0x10);
    put_len(&mut p, body.len());
    p.put_slice(&body);
    s.write_all(&p).await?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        if let Some((b1, body)) = take_packet(&mut buf) {
            if b1 != 0x20 || body.get(1) != Some(&0) {
                bail!("connect refused: {b1:#x} {body:?}");
            }
            return Ok((s, buf));
        }
        if s.read_buf(&mut buf).await? == 0 {
            bail!("closed during connect");
        }
    }
}

async fn subscribe(
    s: &mut TcpStream,
    buf: &mut BytesMut,
    filter: &str,
    qos: u8,
) -> anyhow::Result<()> {
    let mut body = BytesMut::new();
    body.put_u16(1);
    put_str(&mut body, filter);
    body.put_u8(qos);
    let mut p = BytesMut::new();
    p.put_u8(0x82);
    put_len(&mut p, body.len());
    p.put_slice(&body);
    s.write_all(&p).await?;
    loop {
        if let Some((b1, _)) = take_packet(buf) {
            if b1 >> 4 == 9 {
                return Ok(());
            }
            continue;
        }
        if s.read_buf(buf).await? == 0 {
            bail!("closed during subscribe");
        }
    }
}

/// Reads PUBLISHes, acknowledging QoS 1, counting into `count` and stamping `last`.
async fn subscriber(
    mut s: TcpStream,
    mut buf: BytesMut,
    count: Arc<AtomicU64>,
    last: Arc<AtomicU64>,
    start: Instant,
) -> anyhow::Result<()> {
    let mut acks = BytesMut::new();
    loop {
        let mut n = 0;
        while let Some((b1, mut body)) = take_packet(&mut buf) {
            if b1 >> 4 != 3 {
                continue;
            }
            n += 1;
            if (b1 >> 1) & 3 == 1 {
                let tlen = body.get_u16() as usize;
                body.advance(tlen);
                let id = body.get_u16();
                acks.put_slice(&[0x40, 0x02]);
                acks.put_u16(id);
            }
        }
        if n > 0 {
            count.fetch_add(n, Ordering::Relaxed);
            last.store(start.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        if !acks.is_empty() {
            s.write_all(&acks).await?;
            acks.clear();
        }
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// Publishes `n` messages to `topic`, keeping at most `window` QoS 1 messages unacknowledged.
/// Returns the PUBACK latency of every QoS 1 message, in milliseconds.
async fn publisher(a: Arc<Args>, id: String, topic: String, n: u64) -> anyhow::Result<Vec<f64>> {
    let mut sent_at = std::collections::VecDeque::new();
    let mut latencies = Vec::new();
    let (mut s, mut buf) = connect(&a, &id).await?;
    let payload = vec![b'x'; a.payload];
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut sent = 0u64;
    let mut acked = 0u64;
    let mut packet_id: u16 = 0;
    while acked < n || (a.qos == 0 && sent < n) {
        let room = if a.qos == 0 {
            256
        } else {
            a.window as u64 - (sent - acked)
        };
        let batch = room.min(n - sent);
        for _ in 0..batch {
            let rem = 2 + topic.len() + if a.qos == 1 { 2 } else { 0 } + payload.len();
            out.put_u8(0x30 | (a.qos << 1));
            put_len(&mut out, rem);
            put_str(&mut out, &topic);
            if a.qos == 1 {
                packet_id = packet_id.wrapping_add(1).max(1);
                out.put_u16(packet_id);
            }
            out.put_slice(&payload);
        }
        let now = Instant::now();
        if a.qos == 1 {
            sent_at.extend(std::iter::repeat_n(now, batch as usize));
        }
        sent += batch;
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
        if a.qos == 0 {
            if sent >= n {
                break;
            }
            continue;
        }
        if s.read_buf(&mut buf).await? == 0 {
            bail!("publisher connection closed");
        }
        while let Some((b1, _)) = take_packet(&mut buf) {
            if b1 >> 4 == 4 {
                acked += 1;
                // PUBACKs come in PUBLISH order ([MQTT-4.6.0-2]).
                if let Some(t) = sent_at.pop_front() {
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }
    }
    // Send DISCONNECT only after the QoS 0 stream has been written.
    s.write_all(&[0xE0, 0x00]).await?;
    Ok(latencies)
}

/// Raises the open-files soft limit to the hard limit (a storm needs a descriptor per client).
#[cfg(unix)]
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Windows has no per-process limit on sockets to raise.
#[cfg(not(unix))]
fn raise_fd_limit() {}

/// ` puback_p50_ms=… puback_p99_ms=…` for sorted PUBACK round trips; empty when there are none.
fn puback_fields(sorted: &[f64]) -> String {
    if sorted.is_empty() {
        return String::new();
    }
    format!(
        " puback_p50_ms={:.3} puback_p99_ms={:.3}",
        percentile(sorted, 0.5),
        percentile(sorted, 0.99)
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Publishes QoS 0 to its own subscription every 10 ms until `stop`; returns round trips in ms.
async fn measure_rtt(
    a: Arc<Args>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<Vec<f64>> {
    let topic = format!("bench/rtt/{}", std::process::id());
    let (mut s, mut buf) = connect(&a, &format!("bench-rtt-{}", std::process::id())).await?;
    subscribe(&mut s, &mut buf, &topic, 0).await?;
    let mut rtts = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut p = BytesMut::new();
        p.put_u8(0x30);
        put_len(&mut p, 2 + topic.len() + 1);
        put_str(&mut p, &topic);
        p.put_u8(b'r');
        let sent = Instant::now();
        s.write_all(&p).await?;
        loop {
            if let Some((b1, _)) = take_packet(&mut buf) {
                if b1 >> 4 == 3 {
                    break;
                }
                continue;
            }
            if s.read_buf(&mut buf).await? == 0 {
                bail!("rtt connection closed");
            }
        }
        rtts.push(sent.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(rtts)
}

async fn connect_storm(a: Arc<Args>) -> anyhow::Result<()> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let baseline_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let baseline = tokio::spawn(measure_rtt(a.clone(), baseline_stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    baseline_stop.store(true, Ordering::Relaxed);
    let mut before = baseline.await??;
    let during_task = tokio::spawn(measure_rtt(a.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let start = Instant::now();
    let mut storm = Vec::new();
    for i in 0..a.clients {
        let a = a.clone();
        storm.push(tokio::spawn(async move {
            let t = Instant::now();
            let conn = connect(&a, &format!("bench-storm-{}-{i}", std::process::id())).await;
            conn.map(|c| (t.elapsed().as_secs_f64() * 1000.0, c))
        }));
    }
    let mut latencies = Vec::new();
    let mut held = Vec::new();
    let mut failed = 0;
    for t in storm {
        match t.await? {
            Ok((ms, c)) => {
                latencies.push(ms);
                held.push(c);
            }
            Err(_) => failed += 1,
        }
    }
    let total = start.elapsed().as_secs_f64() * 1000.0;
    stop.store(true, Ordering::Relaxed);
    let mut during = during_task.await??;
    for v in [&mut latencies, &mut before, &mut during] {
        v.sort_by(|x, y| x.total_cmp(y));
    }
    println!(
        "mode=connect-storm clients={} connected={} failed={} storm_ms={:.0} connect_p50_ms={:.1} connect_p99_ms={:.1}",
        a.clients,
        latencies.len(),
        failed,
        total,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    println!(
        "rtt_before_p50_ms={:.2} rtt_before_p99_ms={:.2} rtt_during_p50_ms={:.2} rtt_during_p99_ms={:.2} rtt_during_max_ms={:.2} samples_during={}",
        percentile(&before, 0.5),
        percentile(&before, 0.99),
        percentile(&during, 0.5),
        percentile(&during, 0.99),
        during.last().copied().unwrap_or(0.0),
        during.len()
    );
    drop(held);
    Ok(())
}

/// Opens `--clients` idle connections, `--window` at a time, reports the rate, and holds them
/// for `--messages` seconds.
async fn idle(a: Arc<Args>) -> anyhow::Result<()> {
    let permits = Arc::new(tokio::sync::Semaphore::new(a.window.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(a.clients);
    for i in 0..a.clients {
        let permit = permits.clone().acquire_owned().await?;
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("bench-idle-{}-{i}", std::process::id());
            let mut c = connect_with(&a, &id, !a.persistent).await;
            if let (true, Ok((s, buf))) = (a.subscribe, c.as_mut()) {
                let subscribed = subscribe(s, buf, &format!("devices/{id}/cmd"), 1).await;
                c = subscribed.and(c);
            }
            drop(permit);
            // Closed with a reset, not a FIN: tens of thousands of closes would otherwise leave
            // as many local ports in TIME_WAIT, and the next round could not connect.
            c.and_then(|(s, _)| s.set_zero_linger().map(|()| s).map_err(Into::into))
        }));
    }
    let mut held = Vec::with_capacity(a.clients);
    let mut failed = 0;
    for t in tasks {
        match t.await? {
            Ok(s) => held.push(s),
            Err(_) => failed += 1,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "mode=idle clients={} connected={} failed={} connect_secs={:.2} connects_per_sec={:.0}",
        a.clients,
        held.len(),
        failed,
        secs,
        held.len() as f64 / secs
    );
    use std::io::Write as _;
    std::io::stdout().flush()?;
    tokio::time::sleep(Duration::from_secs(a.messages)).await;
    drop(held);
    Ok(())
}

/// One flooding connection: writes batches of PINGREQ (or SUBSCRIBE + UNSUBSCRIBE pairs) and
/// reads the answers, until `stop`. Returns how many requests it sent.
async fn flooder(
    a: Arc<Args>,
    i: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<u64> {
    let (s, _) = connect(&a, &format!("bench-flood-{}-{i}", std::process::id())).await?;
    let (mut r, mut w) = s.into_split();
    let mut batch = BytesMut::new();
    let per_batch: u64 = 100;
    for n in 0..per_batch {
        if a.mode == "flood-ping" {
            batch.put_slice(&[0xC0, 0x00]);
        } else {
            let filter = format!("flood/{i}/{}/+", n % 10);
            for (byte1, qos) in [(0x82u8, Some(1u8)), (0xA2, None)] {
                let mut body = BytesMut::new();
                body.put_u16(n as u16 + 1);
                put_str(&mut body, &filter);
                body.extend(qos);
                batch.put_u8(byte1);
                put_len(&mut batch, body.len());
                batch.put_slice(&body);
            }
        }
    }
    // Answers are read and thrown away so that the broker is never held back by this side.
    let reader = tokio::spawn(async move {
        let mut sink = vec![0u8; 64 * 1024];
        while matches!(r.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    // Writes as fast as the broker reads, checking `stop` even while the socket is full (a
    // broker that throttles this connection leaves the write pending).
    let mut sent = 0;
    let mut pos = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Ok(n) = tokio::time::timeout(Duration::from_millis(50), w.write(&batch[pos..])).await
        {
            pos += n?;
            if pos == batch.len() {
                pos = 0;
                sent += per_batch;
            }
        }
    }
    drop(w);
    reader.abort();
    Ok(sent)
}

async fn flood(a: Arc<Args>) -> anyhow::Result<()> {
    let baseline_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let baseline = tokio::spawn(measure_rtt(a.clone(), baseline_stop.clone()));
    tokio::time::sleep(Duration::from_millis(a.messages)).await;
    baseline_stop.store(true, Ordering::Relaxed);
    let mut before = baseline.await??;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flooders = Vec::new();
    for i in 0..a.clients {
        flooders.push(tokio::spawn(flooder(a.clone(), i, stop.clone())));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let during_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let during_task = tokio::spawn(measure_rtt(a.clone(), during_stop.clone()));
    tokio::time::sleep(Duration::from_millis(a.messages)).await;
    during_stop.store(true, Ordering::Relaxed);
    let mut during = during_task.await??;
    stop.store(true, Ordering::Relaxed);
    let mut requests = 0;
    for f in flooders {
        requests += f.await??;
    }
    for v in [&mut before, &mut during] {
        v.sort_by(|x, y| x.total_cmp(y));
    }
    let seconds = (a.messages as f64 + 200.0) / 1000.0;
    println!(
        "mode={} flooders={} requests_written_per_s={:.0} rtt_before_p50_ms={:.3} rtt_before_p99_ms={:.3} rtt_during_p50_ms={:.3} rtt_during_p99_ms={:.3} p50_ratio={:.2} p99_ratio={:.2} samples={}/{}",
        a.mode,
        a.clients,
        requests as f64 / seconds,
        percentile(&before, 0.5),
        percentile(&before, 0.99),
        percentile(&during, 0.5),
        percentile(&during, 0.99),
        percentile(&during, 0.5) / percentile(&before, 0.5).max(1e-9),
        percentile(&during, 0.99) / percentile(&before, 0.99).max(1e-9),
        before.len(),
        during.len()
    );
    Ok(())
}

/// Locks `m`, also after a panic elsewhere (the map stays usable).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `latency`: one subscriber and one publisher sending `messages` at `rate` per second (light,
/// steady load, not a flood). Each payload carries its send time; prints the PUBACK round trip
/// (QoS 1) and the publish-to-delivery time, p50 and p99, in milliseconds.
async fn latency(a: Arc<Args>) -> anyhow::Result<()> {
    let run = std::process::id();
    let topic = format!("bench/latency/{run}");
    let (mut sub, mut sbuf) = connect_sub(&a, &format!("bench-lat-sub-{run}"), true).await?;
    subscribe(&mut sub, &mut sbuf, &topic, a.qos).await?;
    tokio::time::sleep(Duration::from_millis(a.settle_ms)).await;
    let base = Instant::now();
    let n = a.messages;
    let receiver = tokio::spawn(async move {
        let mut delays = Vec::with_capacity(n as usize);
        let mut acks = BytesMut::new();
        while (delays.len() as u64) < n {
            while let Some((b1, mut body)) = take_packet(&mut sbuf) {
                if b1 >> 4 != 3 {
                    continue;
                }
                let tlen = body.get_u16() as usize;
                body.advance(tlen);
                if (b1 >> 1) & 3 == 1 {
                    let id = body.get_u16();
                    acks.put_slice(&[0x40, 0x02]);
                    acks.put_u16(id);
                }
                let sent = body.get_u64();
                let now = base.elapsed().as_nanos() as u64;
                delays.push(now.saturating_sub(sent) as f64 / 1e6);
            }
            if !acks.is_empty() {
                sub.write_all(&acks).await?;
                acks.clear();
            }
            if (delays.len() as u64) < n && sub.read_buf(&mut sbuf).await? == 0 {
                bail!("subscriber connection closed");
            }
        }
        anyhow::Ok(delays)
    });
    let (publ, pbuf) = connect(&a, &format!("bench-lat-pub-{run}")).await?;
    let (mut rd, mut wr) = publ.into_split();
    // PUBACKs are timed as they arrive, by their own task.
    let pending = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let acks = (a.qos == 1).then(|| {
        let pending = pending.clone();
        tokio::spawn(async move {
            let mut pbuf = pbuf;
            let mut pubacks = Vec::with_capacity(n as usize);
            while (pubacks.len() as u64) < n {
                while let Some((b1, mut body)) = take_packet(&mut pbuf) {
                    if b1 >> 4 == 4 {
                        if let Some(t) = lock(&pending).remove(&body.get_u16()) {
                            let t: Instant = t;
                            pubacks.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                    }
                }
                if (pubacks.len() as u64) < n && rd.read_buf(&mut pbuf).await? == 0 {
                    bail!("publisher connection closed");
                }
            }
            anyhow::Ok(pubacks)
        })
    });
    // Paced by deadline: the average rate holds whatever the timer's granularity.
    let period = Duration::from_nanos(1_000_000_000 / a.rate);
    let started = tokio::time::Instant::now();
    let mut out = BytesMut::new();
    for i in 0..n {
        tokio::time::sleep_until(started + period * i as u32).await;
        let packet_id = (i % 65_535 + 1) as u16;
        let rem = 2 + topic.len() + if a.qos == 1 { 2 } else { 0 } + a.payload.max(8);
        out.put_u8(0x30 | (a.qos << 1));
        put_len(&mut out, rem);
        put_str(&mut out, &topic);
        if a.qos == 1 {
            out.put_u16(packet_id);
            lock(&pending).insert(packet_id, Instant::now());
        }
        out.put_u64(base.elapsed().as_nanos() as u64);
        out.put_bytes(b'x', a.payload.saturating_sub(8));
        wr.write_all(&out).await?;
        out.clear();
    }
    let mut pubacks = match acks {
        Some(task) => tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .context("PUBACKs did not all arrive")???,
        None => Vec::new(),
    };
    let mut delays = tokio::time::timeout(Duration::from_secs(30), receiver)
        .await
        .context("deliveries did not all arrive")???;
    delays.sort_by(|x, y| x.total_cmp(y));
    pubacks.sort_by(|x, y| x.total_cmp(y));
    let puback = puback_fields(&pubacks);
    println!(
        "mode=latency qos={} rate={} messages={n} e2e_p50_ms={:.3} e2e_p99_ms={:.3}{puback}",
        a.qos,
        a.rate,
        percentile(&delays, 0.5),
        percentile(&delays, 0.99)
    );
    wr.write_all(&[0xE0, 0x00]).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    raise_fd_limit();
    let a = Arc::new(parse()?);
    if a.mode == "connect-storm" {
        return connect_storm(a).await;
    }
    if a.mode == "idle" {
        return idle(a).await;
    }
    if a.mode.starts_with("flood-") {
        return flood(a).await;
    }
    if a.mode == "latency" {
        return latency(a).await;
    }
    let count = Arc::new(AtomicU64::new(0));
    let last = Arc::new(AtomicU64::new(0));
    let run = std::process::id();
    let (subscribers, publishers, expected) = if a.mode == "fan-in" {
        (1, a.clients, a.messages)
    } else {
        (a.clients, 1, a.messages * a.clients as u64)
    };
    let mut subs = Vec::new();
    for i in 0..subscribers {
        let (mut s, mut buf) =
            connect_sub(&a, &format!("bench-sub-{run}-{i}"), !a.persistent).await?;
        subscribe(&mut s, &mut buf, &format!("bench/{run}/#"), a.qos).await?;
        subs.push((s, buf));
    }
    tokio::time::sleep(Duration::from_millis(a.settle_ms)).await;
    let start = Instant::now();
    for (s, buf) in subs {
        tokio::spawn(subscriber(s, buf, count.clone(), last.clone(), start));
    }
    let per = a.messages / publishers as u64;
    let mut pubs = Vec::new();
    for i in 0..publishers {
        let n = if i == 0 {
            a.messages - per * (publishers as u64 - 1)
        } else {
            per
        };
        pubs.push(tokio::spawn(publisher(
            a.clone(),
            format!("bench-pub-{run}-{i}"),
            format!("bench/{run}/{i}"),
            n,
        )));
    }
    let mut puback = Vec::new();
    for p in pubs {
        puback.extend(p.await??);
    }
    puback.sort_by(|x, y| x.total_cmp(y));
    // Wait for every delivery, or until nothing has arrived for two seconds.
    let mut seen = 0;
    let mut idle_since = Instant::now();
    while count.load(Ordering::Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let c = count.load(Ordering::Relaxed);
        if c != seen {
            seen = c;
            idle_since = Instant::now();
        } else if idle_since.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    let received = count.load(Ordering::Relaxed);
    let secs = last.load(Ordering::Relaxed) as f64 / 1e6;
    let rate = if secs > 0.0 {
        received as f64 / secs
    } else {
        0.0
    };
    if a.persistent {
        // Discard the persistent sessions, so that the next run does not queue for them.
        for i in 0..subscribers {
            let (mut s, _) = connect_sub(&a, &format!("bench-sub-{run}-{i}"), true).await?;
            s.write_all(&[0xE0, 0x00]).await?;
        }
    }
    let puback_ms = puback_fields(&puback);
    println!(
        "mode={} qos={} clients={} payload={} expected={} received={} secs={:.3} rate={:.0}{puback_ms}",
        a.mode, a.qos, a.clients, a.payload, expected, received, secs, rate
    );
    Ok(())
}
