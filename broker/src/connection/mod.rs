//! One network connection, from its first byte to close: the I/O around the session's state
//! machine ([`crate::session::protocol::machine::Machine`]), and the calls into the rest of
//! the broker (router, plugins, session store) that carry out what the machine asks for.
//!
//! [`serve`] reads CONNECT (within `limits.connect_timeout`), validates it, binds the connection
//! to a session through [`Broker::attach`], answers CONNACK, restores the session's parked state
//! (redelivering unacknowledged messages with DUP set, [MQTT-4.4.0-1]) and then loops:
//!
//! * decode every complete packet that has arrived and act on it;
//! * drain the session queue up to the inflight window into the write buffer;
//! * wait for the socket (readable, or writable while the buffer holds data — the buffer is
//!   written without blocking, so a client that stops reading never stalls the loop), the
//!   session queue, a control request (takeover, kick), shutdown, or the next deadline.
//!
//! Bounds, so that no client can make the broker grow or stall:
//! * at most [`WRITE_BUFFER_HIGH`] (plus one message) waits in the write buffer: above it the
//!   session queue is not drained into it (messages wait there, bounded by the queue limits)
//!   and the client is not read (its requests would only add answers). A client that leaves
//!   the buffer unread for `limits.slow_consumer_timeout` is disconnected (`slow_consumer`);
//! * keep-alive (1.5 × keep alive, [MQTT-3.1.2-24]) is enforced whatever the write side does;
//! * control packets (PINGREQ, SUBSCRIBE, UNSUBSCRIBE) beyond `limits.max_control_rate` per
//!   second are not read until the next second: a client flooding them costs the broker a
//!   bounded amount of work, and others keep their latency ([`ControlRate`](crate::session::protocol::timers::ControlRate));
//! * back-pressure: a connection that publishes while the bytes queued for connected sessions are over
//!   `limits.memory_high_watermark` is not read from again until they fall below 90 % of it.
//!   Connections that only subscribe and acknowledge keep being read, so queues drain (and
//!   `Broker::run_overload_guard` disconnects the largest queues when they do not);
//! * payloads are copied out of the read buffer (`publish::own_bytes`), so a queued message holds
//!   its own bytes and not the whole buffer it arrived in (a 10-byte message could otherwise
//!   pin a 64 KiB read buffer, and a 100 KiB one a 256 KiB buffer, beyond what the queue
//!   limits count);
//! * topics and filters deeper than `limits.max_topic_levels` are refused before they reach
//!   the router or a plugin.
//!
//! When the loop ends it tells a v5 client why (DISCONNECT with a reason code), hands the
//! session state back, publishes or schedules the will unless the client disconnected normally
//! ([MQTT-3.1.2-8], [MQTT-3.14.4-3]), and ends the session when its expiry interval is 0.
//!
//! The parts: this file is the driver (the loop that owns the socket, its deadlines and
//! flushing) and `state` what it drives; `accept` runs CONNECT to CONNACK; `packets`
//! feeds what the client sends to the machine, and `publish`, `subscribe` and `auth`
//! carry out its requests (ACL, routing, subscriptions, re-authentication); `effects`
//! carries out its outputs and drains the session queue through it; `finish` closes.
//! `exit` names every way a connection ends.

mod accept;
mod auth;
mod effects;
mod exit;
mod finish;
mod io;
mod order;
mod packets;
mod publish;
mod state;
mod subscribe;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::time::Instant;

use crate::broker::Broker;
use crate::codec::reason::ReasonCode;
use crate::metrics;

use crate::session::protocol::timers::{Liveness, Timeout};
use exit::Exit;
use io::{poll_io, release_if_empty, IoEvent};
use order::{others_waiting, waiting_tasks, Quiet, YIELD_TO_AT_MOST};
use state::{event, Connection};

pub use io::Transport;
pub use order::{let_answers_go, wait_for_deliveries_on_this_runtime};

/// Above this many bytes waiting to be written, the session queue is not drained into the
/// write buffer and the client is not read (see the module docs).
pub const WRITE_BUFFER_HIGH: usize = crate::session::protocol::machine::OUTPUT_HIGH;

/// How often a connection paused by the memory high-water mark looks whether to resume.
const BACKPRESSURE_RECHECK: Duration = Duration::from_millis(50);

/// How long closing a connection waits to hand the client its last packets.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// A deadline so far away that it never fires (no limit is due).
const NEVER: Duration = Duration::from_secs(86_400 * 365);

/// Where a connection came from; passed down from the listener.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Peer address.
    pub peer: SocketAddr,
    /// Listener name.
    pub listener: Arc<str>,
    /// Local (listener) port.
    pub local_port: u16,
    /// `mqtt` or `mqtt-ws`.
    pub transport: &'static str,
    /// TLS client certificate common name.
    pub cert_common_name: Option<String>,
    /// TLS client certificate subject.
    pub cert_subject: Option<String>,
}

/// What a connection holds of its CONNECT for as long as it lasts: the will and the user name.
fn connect_held(
    will: Option<&crate::codec::LastWill>,
    identity: &crate::session::Identity,
) -> usize {
    let will = will.map_or(0, |w| {
        w.topic.len() + w.payload.len() + w.properties.heap_size()
    });
    will + identity.username.as_deref().map_or(0, str::len)
}

/// Whether what a connection would hold of its CONNECT (will, user name) fits within
/// `limits.max_incoming_bytes` next to what the others hold; the connection charges it from
/// its first turn on.
fn connect_fits(
    broker: &Broker,
    rbuf: &BytesMut,
    will: Option<&crate::codec::LastWill>,
    identity: &crate::session::Identity,
) -> bool {
    let held = rbuf.len() + connect_held(will, identity);
    let (gauge, limit) = (
        &broker.metrics.incoming_bytes,
        broker.config.limits.max_incoming_bytes,
    );
    let mut probe = io::IncomingCharge::default();
    let fits = probe.set(gauge, held, limit);
    probe.clear(gauge);
    fits
}

/// Serves one connection until it closes, then drops `hold` (the listener's connection
/// permits). Never panics on network input.
///
/// A plain function returning an `async move` block rather than an `async fn`: an `async fn`
/// keeps a second copy of each argument in its state for the whole connection.
#[allow(clippy::manual_async_fn)]
pub fn serve<S: Transport, H: Send>(
    broker: Arc<Broker>,
    mut stream: S,
    info: Box<ConnInfo>,
    hold: H,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let mut rbuf = BytesMut::new();
        // CONNECT to CONNACK runs once, in its own allocation: the task keeps only what the
        // connection needs from then on (see the module docs of `io`).
        let accepted = Box::pin(async {
            // Moved in: what the listener said about the connection is not needed after
            // CONNACK.
            let info = info;
            let connect = accept::read_connect(&broker, &mut stream, &mut rbuf, &info).await?;
            Connection::accept(&broker, &mut stream, &mut rbuf, connect, &info).await
        });
        let Some(mut conn) = accepted.await else {
            // Refused, or no CONNECT: let a refused client read its CONNACK.
            io::linger(&mut stream, &mut rbuf).await;
            drop(hold);
            return;
        };
        // The CONNECT's buffer, unless more packets arrived with it.
        io::release_if_empty(&mut rbuf);
        metrics::add(&broker.metrics.connections, 1);
        let exit = conn.run(&mut stream, &mut rbuf).await;
        let lingers = exit.lingers();
        conn.finish(&mut stream, exit).await;
        // A publisher on this worker may be waiting for this connection to write.
        let_answers_go();
        metrics::sub(&broker.metrics.connections, 1);
        if lingers {
            io::linger(&mut stream, &mut rbuf).await;
        }
        drop(hold);
    }
}

impl Connection {
    /// The connection loop: decode and act, drain the session queue, wait for the next event.
    ///
    /// A plain function returning an `async move` block, like [`serve`], and what is worked
    /// out before each wait is computed in [`Connection::before_wait`]: only what the wait
    /// itself needs is kept in the task while the connection sits idle.
    #[allow(clippy::manual_async_fn)]
    fn run<'a, S: Transport>(
        &'a mut self,
        stream: &'a mut S,
        rbuf: &'a mut BytesMut,
    ) -> impl std::future::Future<Output = Exit> + Send + 'a {
        async move {
            let limits = &self.broker.config.limits;
            let stall_limit = Duration::from_secs(limits.slow_consumer_timeout);
            let mut liveness = Liveness::new(self.keep_alive, stall_limit, Instant::now());
            let deadline = tokio::time::sleep(NEVER);
            tokio::pin!(deadline);
            // Packets that arrived together with CONNECT are waiting in `rbuf`.
            let mut input_pending = true;
            // How quiet the client was before the input read last (see `act`).
            let mut quiet = Quiet::Busy;
            loop {
                if let Err(exit) = self.act(rbuf, &mut input_pending, &mut quiet).await {
                    return exit;
                }
                let (reading, room) =
                    self.before_wait(rbuf, input_pending, &mut liveness, deadline.as_mut());
                let (wbuf, session) = self.machine.output_and_session();
                let io = poll_io(stream, wbuf, &mut self.need_flush, rbuf, reading);
                tokio::select! {
                    biased;
                    // Kicks, takeovers and the broker's shutdown all come this way.
                    () = self.control_rx.notified() => {
                        if let Some(ctrl) = self.control_rx.try_recv() {
                            return Exit::from_control(ctrl);
                        }
                    }
                    event = io => match event {
                        Ok(IoEvent { read, written }) => {
                            if written > 0 {
                                metrics::add(&self.broker.metrics.bytes_sent, written as u64);
                                liveness.written();
                            }
                            match read {
                                Some(0) => return Exit::Closed,
                                Some(n) => {
                                    metrics::add(&self.broker.metrics.bytes_received, n as u64);
                                    let now = Instant::now();
                                    quiet = Quiet::of(liveness.since_read(now));
                                    liveness.read(now);
                                    input_pending = true;
                                }
                                None => {}
                            }
                        }
                        Err(e) => return Exit::Io(e),
                    },
                    _ = session.notified(), if room => {}
                    _ = &mut deadline => {
                        let now = Instant::now();
                        let throttled = self.machine.control_rate.blocked_until().is_some();
                        if self.paused || input_pending || throttled {
                            // Not reading is the broker's choice: it is not the client's silence.
                            liveness.not_reading(now);
                        }
                        match liveness.expired(now) {
                            Some(Timeout::KeepAlive) => return Exit::KeepAliveTimeout,
                            Some(Timeout::SlowConsumer) => return Exit::SlowConsumer,
                            None => deadline.as_mut().reset(now + NEVER),
                        }
                    }
                }
            }
        }
    }

    /// Between a turn of work and the next wait: gives back idle buffers, brings the deadline
    /// forward to the next limit, and says whether to read and whether to take deliveries.
    fn before_wait(
        &mut self,
        rbuf: &mut BytesMut,
        input_pending: bool,
        liveness: &mut Liveness,
        deadline: std::pin::Pin<&mut tokio::time::Sleep>,
    ) -> (bool, bool) {
        let now = Instant::now();
        self.release_idle_buffers(rbuf, input_pending);
        // Only gives back here: the buffer grows by reading and decoding, charged in `act`.
        let held = rbuf.capacity() + self.input_held();
        self.incoming
            .shrink(&self.broker.metrics.incoming_bytes, held);
        let waiting = self.machine.output_len();
        liveness.output_waiting(waiting > 0, now);
        let throttled = self.machine.control_rate.blocked_until();
        let reading =
            waiting < WRITE_BUFFER_HIGH && !self.paused && !input_pending && throttled.is_none();
        // New deliveries are taken when the buffer is empty: while the socket is full, the
        // queue fills up and the next drain takes a large batch, instead of waking up for
        // every message.
        let room = waiting == 0 && self.machine.outbound.room() > 0;
        let recheck = self.paused.then(|| now + BACKPRESSURE_RECHECK);
        let due = [liveness.next_due(), recheck, throttled]
            .into_iter()
            .flatten()
            .min();
        // Only ever brought forward here (re-arming a timer on every turn costs); once it
        // fires it is pushed out and the next turn brings it forward again.
        if let Some(due) = due.filter(|d| *d < deadline.deadline()) {
            deadline.reset(due);
        }
        (reading, room)
    }

    /// What the connection holds of the client's input beyond its read buffer, for as long as
    /// it lasts: the topics its aliases name, its will and its user name (charged against
    /// `limits.max_incoming_bytes`, see [`io::IncomingCharge`]).
    fn input_held(&self) -> usize {
        self.machine.inbound.alias_bytes() + connect_held(self.will.as_deref(), &self.identity)
    }

    /// Gives back the buffers an idle connection does not need: an idle connection holds none.
    fn release_idle_buffers(&mut self, rbuf: &mut BytesMut, input_pending: bool) {
        if !input_pending {
            release_if_empty(rbuf);
        }
        let wbuf = self.machine.output();
        if wbuf.is_empty() && wbuf.capacity() > 0 {
            *wbuf = BytesMut::new();
        }
    }

    /// One turn of work between waits: resume after back-pressure, act on the packets that
    /// arrived, and move deliveries into the write buffer.
    ///
    /// Two rules decide who goes first when input wakes other connections on this worker
    /// (see [`order`]): input that arrived together is acted on in arrival order (a read that
    /// starts with a PUBLISH after a quiet spell, [`Quiet::Idle`], yields once before it is
    /// decoded when a few other tasks are waiting, [`others_waiting`]); and at light load
    /// ([`crate::broker::LIGHT_MESSAGES_PER_SEC`]) the deliveries a paced PUBLISH causes go out
    /// before the publisher's own answers ([`order::after_deliveries`]).
    ///
    /// Only at light load: publishers that wait for their PUBACKs before sending more lose
    /// throughput to every microsecond the PUBACK waits (without the load condition, fan-in
    /// QoS 1 lost 14 %).
    async fn act(
        &mut self,
        rbuf: &mut BytesMut,
        input_pending: &mut bool,
        quiet: &mut Quiet,
    ) -> Result<(), Exit> {
        let quiet = std::mem::replace(quiet, Quiet::Busy);
        if quiet == Quiet::Idle && rbuf.first().is_some_and(|b| b >> 4 == 3) && others_waiting() {
            tokio::task::yield_now().await;
        }
        if self.paused && self.broker.below_low_watermark() {
            self.paused = false;
        }
        let rate = &mut self.machine.control_rate;
        // Only a spent budget needs the clock (spending refills it first).
        if rate.blocked_until().is_some() {
            rate.refill(Instant::now());
        }
        let woken_before = crate::session::woken_here();
        if *input_pending && !self.paused && rate.blocked_until().is_none() {
            let max_packet = self.broker.config.limits.max_packet_size;
            *input_pending = !self.decode_all(rbuf, max_packet).await?;
            // What is left is a packet still arriving (decoding reserved room for the rest);
            // the topics its aliases name are held from the client's input too.
            let held = rbuf.capacity() + self.input_held();
            let limit = self.broker.config.limits.max_incoming_bytes;
            let gauge = &self.broker.metrics.incoming_bytes;
            if !self.incoming.set(gauge, held, limit) {
                return Err(Exit::protocol(
                    ReasonCode::QuotaExceeded,
                    "what the client's input holds (a packet still arriving, topic aliases, its will) would pass limits.max_incoming_bytes",
                ));
            }
        }
        // Waking a connection here means this turn's messages were queued for it.
        if quiet != Quiet::Busy
            && crate::session::woken_here() != woken_before
            && self.machine.output_len() > 0
            && waiting_tasks() <= YIELD_TO_AT_MOST
            && self
                .broker
                .load
                .is_light(&self.broker.metrics.messages_received)
        {
            order::after_deliveries().await;
        }
        if self.machine.output_len() < WRITE_BUFFER_HIGH {
            self.drain_queue();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle connection costs is mostly its task: the state of `serve`'s future. A
    /// second binding of the connection in it once made every connection 300 bytes larger
    /// (RSS per idle connection 1.86 → 2.41 KiB) without any test noticing.
    #[tokio::test]
    async fn the_connection_task_stays_small() {
        let broker = Broker::new(crate::config::Config::default(), std::env::temp_dir());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let info = Box::new(ConnInfo {
            peer: addr,
            listener: Arc::from("test"),
            local_port: addr.port(),
            transport: "mqtt",
            cert_common_name: None,
            cert_subject: None,
        });
        let task = serve(broker, stream, info, ());
        let size = std::mem::size_of_val(&task);
        // 832 bytes in the test profile when this was written (896 in release).
        assert!(size <= 900, "the connection task grew to {size} bytes");
    }
}
