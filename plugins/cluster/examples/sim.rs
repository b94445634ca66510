//! The scale model of docs/cluster.md: what routing MQTT by NATS interest costs for a given
//! cluster and workload, measured on a generated workload through the real topic-to-subject
//! mapping and a NATS-style subject matcher.
//!
//! ```text
//! cargo run --release -p cluster --example sim                 # 10 nodes, 1 M clients
//! cargo run --release -p cluster --example sim -- nodes=3 clients=100000 rate=200000
//! ```
//!
//! The workload (every number is a `key=value` argument):
//! * `clients` (1 000 000) spread evenly over `nodes` (10); `backend_share` (0.001) of them are
//!   backend applications, the rest devices;
//! * each device subscribes to `subs_per_device` (10) filters: its own command topics
//!   `c/<id>/<k>` (all but two), its model's firmware topics `fw/<model>/#` (`models`, 1 000)
//!   and its site's configuration `cfg/<site>/+` (`sites`, 10 000);
//! * each backend application holds one shared subscription `$share/ingest/t/<region>/#`
//!   (`regions`, 100 — NATS queue groups, one member gets each message);
//! * `rate` (1 000 000) messages/s of `payload` (64) bytes: `telemetry` (0.95) of them devices'
//!   `t/<region>/<id>/<metric>`, the rest commands `c/<id>/<k>` from backend applications.
//!
//! It counts each node's NATS interest (the distinct subjects its subscriptions need, counted
//! once per node however many local clients share them) exactly, over every client. For the
//! traffic it builds the subject tries of every backend application and of a `scale` (0.1)
//! fraction of the devices, samples `samples` (200 000) messages of those devices and measures,
//! per message, which other nodes have interest; the mean over the sample, times `rate`, gives
//! the NATS traffic. (A device's command topics interest only its own node, so a fraction of
//! the devices gives the same proportions as all of them.)

use std::collections::{HashMap, HashSet};

use cluster::subject::{filter_subjects, topic_subject, DEFAULT_PREFIX};

/// The model's parameters, with the defaults of docs/cluster.md.
#[derive(Debug, Clone)]
struct Params {
    nodes: usize,
    clients: usize,
    backend_share: f64,
    subs_per_device: usize,
    models: usize,
    sites: usize,
    regions: usize,
    rate: f64,
    payload: usize,
    telemetry: f64,
    samples: usize,
    scale: f64,
}

impl Params {
    fn from_args() -> Result<Params, String> {
        let mut p = Params {
            nodes: 10,
            clients: 1_000_000,
            backend_share: 0.001,
            subs_per_device: 10,
            models: 1_000,
            sites: 10_000,
            regions: 100,
            rate: 1_000_000.0,
            payload: 64,
            telemetry: 0.95,
            samples: 200_000,
            scale: 0.1,
        };
        for arg in std::env::args().skip(1) {
            let (k, v) = arg
                .split_once('=')
                .ok_or_else(|| format!("{arg}: expected key=value"))?;
            let n = |v: &str| v.parse::<f64>().map_err(|e| format!("{k}: {e}"));
            match k {
                "nodes" => p.nodes = n(v)? as usize,
                "clients" => p.clients = n(v)? as usize,
                "backend_share" => p.backend_share = n(v)?,
                "subs_per_device" => p.subs_per_device = n(v)? as usize,
                "models" => p.models = n(v)? as usize,
                "sites" => p.sites = n(v)? as usize,
                "regions" => p.regions = n(v)? as usize,
                "rate" => p.rate = n(v)?,
                "payload" => p.payload = n(v)? as usize,
                "telemetry" => p.telemetry = n(v)?,
                "samples" => p.samples = n(v)? as usize,
                "scale" => p.scale = n(v)?,
                _ => return Err(format!("unknown parameter {k}")),
            }
        }
        if p.nodes == 0 || p.clients == 0 || p.subs_per_device < 3 || p.scale <= 0.0 {
            return Err("nodes, clients and scale must be positive, subs_per_device >= 3".into());
        }
        Ok(p)
    }
}

/// xorshift64*: a reproducible generator, so two runs with the same parameters agree.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// One node's NATS interest as a token trie, matched the way the NATS server matches.
#[derive(Default)]
struct Sublist {
    children: HashMap<String, Sublist>,
    /// A subscription ends at this token.
    here: bool,
    /// A `>` subscription below this token.
    rest: bool,
}

impl Sublist {
    fn insert(&mut self, subject: &str) {
        let mut node = self;
        for token in subject.split('.') {
            if token == ">" {
                node.rest = true;
                return;
            }
            node = node.children.entry(token.to_owned()).or_default();
        }
        node.here = true;
    }

    fn matches(&self, tokens: &[&str]) -> bool {
        let Some((first, rest)) = tokens.split_first() else {
            return self.here;
        };
        if self.rest {
            return true;
        }
        let exact = self.children.get(*first).is_some_and(|c| c.matches(rest));
        exact || self.children.get("*").is_some_and(|c| c.matches(rest))
    }
}

/// The clients of the model: who each is and where it is connected.
struct Client {
    node: usize,
    backend: bool,
    model: usize,
    site: usize,
    region: usize,
}

/// A device's subscriptions: its command topics, its model's firmware, its site's configuration.
fn device_filters(p: &Params, id: usize, c: &Client) -> Vec<String> {
    let mut filters: Vec<String> = (0..p.subs_per_device - 2)
        .map(|k| format!("c/{id}/{k}"))
        .collect();
    filters.push(format!("fw/{}/#", c.model));
    filters.push(format!("cfg/{}/+", c.site));
    filters
}

/// The distinct NATS subjects over all nodes (each node subscribes a subject once, however many
/// of its clients need it) and the number of MQTT subscriptions, over every client. Subjects
/// only one client can need (its command topics) are counted, not stored.
fn count_interest(p: &Params, clients: &[Client]) -> (usize, usize) {
    let mut shared: HashSet<(usize, String)> = HashSet::new();
    let (mut unique, mut subscriptions) = (0, 0);
    for (id, c) in clients.iter().enumerate() {
        if c.backend {
            let filter = format!("t/{}/#", c.region);
            shared.extend(
                filter_subjects(DEFAULT_PREFIX, &filter)
                    .into_iter()
                    .map(|s| (c.node, s)),
            );
            subscriptions += 1;
            continue;
        }
        for f in device_filters(p, id, c) {
            subscriptions += 1;
            let subjects = filter_subjects(DEFAULT_PREFIX, &f);
            if f.starts_with("c/") {
                unique += subjects.len();
            } else {
                shared.extend(subjects.into_iter().map(|s| (c.node, s)));
            }
        }
    }
    (unique + shared.len(), subscriptions)
}

fn main() {
    let p = match Params::from_args() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("sim: {e}");
            std::process::exit(2);
        }
    };
    let built = ((p.clients as f64 * p.scale).round() as usize).clamp(p.nodes, p.clients);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let clients: Vec<Client> = (0..p.clients)
        .map(|i| Client {
            node: i % p.nodes,
            backend: rng.chance(p.backend_share),
            model: rng.below(p.models),
            site: rng.below(p.sites),
            region: rng.below(p.regions),
        })
        .collect();

    let (interest, mqtt_subscriptions) = count_interest(&p, &clients);

    // Subjects per node (plain and queue-group), as tries for matching: every backend
    // application's (where they are decides which nodes receive telemetry) and the devices of
    // the built fraction (a command reaches the node of the one device it is for).
    let mut subjects: Vec<HashSet<String>> = vec![HashSet::new(); p.nodes];
    let mut queue_groups: Vec<HashSet<String>> = vec![HashSet::new(); p.nodes];
    for (id, c) in clients.iter().enumerate() {
        if c.backend {
            let filter = format!("t/{}/#", c.region);
            queue_groups[c.node].extend(filter_subjects(DEFAULT_PREFIX, &filter));
            continue;
        }
        if id >= built {
            continue;
        }
        for f in device_filters(&p, id, c) {
            subjects[c.node].extend(filter_subjects(DEFAULT_PREFIX, &f));
        }
    }
    let mut tries: Vec<Sublist> = (0..p.nodes).map(|_| Sublist::default()).collect();
    for (n, set) in subjects.iter().enumerate() {
        for s in set {
            tries[n].insert(s);
        }
    }
    let mut group_tries: Vec<Sublist> = (0..p.nodes).map(|_| Sublist::default()).collect();
    for (n, set) in queue_groups.iter().enumerate() {
        for s in set {
            group_tries[n].insert(s);
        }
    }

    // Sample messages: which other nodes must receive each one through NATS.
    let devices: Vec<usize> = (0..built).filter(|&i| !clients[i].backend).collect();
    let backends: Vec<usize> = (0..p.clients).filter(|&i| clients[i].backend).collect();
    let (mut remote_deliveries, mut with_remote, mut subject_bytes) = (0usize, 0usize, 0usize);
    let mut per_node_in = vec![0usize; p.nodes];
    for _ in 0..p.samples {
        let (publisher, topic) = if rng.chance(p.telemetry) || backends.is_empty() {
            let d = devices[rng.below(devices.len())];
            let c = &clients[d];
            (c.node, format!("t/{}/{d}/temp", c.region))
        } else {
            let b = &clients[backends[rng.below(backends.len())]];
            let d = devices[rng.below(devices.len())];
            let k = rng.below(p.subs_per_device - 2);
            (b.node, format!("c/{d}/{k}"))
        };
        let subject = topic_subject(DEFAULT_PREFIX, &topic);
        subject_bytes += subject.len();
        let tokens: Vec<&str> = subject.split('.').collect();
        let mut remote = 0;
        for n in (0..p.nodes).filter(|&n| n != publisher) {
            if tries[n].matches(&tokens) {
                remote += 1;
                per_node_in[n] += 1;
            }
        }
        // A queue group delivers once, to one member, wherever it is (a remote one with
        // probability (nodes with members - 1) / nodes with members when spread evenly).
        let members: Vec<usize> = (0..p.nodes)
            .filter(|&n| group_tries[n].matches(&tokens))
            .collect();
        if !members.is_empty() {
            let chosen = members[rng.below(members.len())];
            if chosen != publisher {
                remote += 1;
                per_node_in[chosen] += 1;
            }
        }
        remote_deliveries += remote;
        with_remote += usize::from(remote > 0);
    }

    let samples = p.samples as f64;
    let interest = interest as f64;
    let mean_subject = subject_bytes as f64 / samples;
    // NATS's wire cost per message: "PUB <subject> <len>\r\n" + header block for the MQTT
    // properties + payload, roughly; the cluster's own envelope adds about 16 bytes.
    let wire = mean_subject + p.payload as f64 + 16.0 + 30.0;
    let egress = remote_deliveries as f64 / samples * p.rate;
    let busiest_in = per_node_in.iter().copied().max().unwrap_or(0) as f64 / samples * p.rate;
    println!("model: {p:?}");
    println!(
        "{} clients, MQTT subscriptions {mqtt_subscriptions}; traffic sampled over {built} of the clients",
        p.clients
    );
    println!("NATS interest (distinct subjects over all nodes): {interest:.0}");
    println!(
        "  per node: {:.0}; NATS server memory for it at ~250 B each: {:.0} MiB",
        interest / p.nodes as f64,
        interest * 250.0 / 1048576.0
    );
    println!(
        "NATS ingress: {:.0} msg/s, {:.0} MB/s (every PUBLISH goes to NATS; mean subject {mean_subject:.0} B)",
        p.rate,
        p.rate * wire / 1e6
    );
    println!(
        "messages with interest on another node: {:.1} %; NATS egress {egress:.0} msg/s, {:.0} MB/s",
        with_remote as f64 / samples * 100.0,
        egress * wire / 1e6
    );
    println!(
        "busiest node receives {busiest_in:.0} msg/s from NATS; each node publishes {:.0} msg/s to it",
        p.rate / p.nodes as f64
    );
    let reconnect_ops = mqtt_subscriptions as f64 / p.nodes as f64;
    println!(
        "a node lost: its {:.0} clients reconnect elsewhere and re-subscribe: ~{reconnect_ops:.0} NATS SUB operations",
        p.clients as f64 / p.nodes as f64
    );
}
