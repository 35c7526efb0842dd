//! The Prometheus metrics of a node (and of `twinsan serve`): a [`Snapshot`] of what the node knows, taken at
//! each scrape, encoded in the OpenMetrics text format by `prometheus-client`.
//!
//! Nothing here runs on the data path: the data path only adds to the atomic counters it owns (the target's
//! [`IoStats`], a volume's link traffic and acknowledgement histogram), which a scrape reads. docs/monitoring.md
//! lists every family; `tests/metrics.rs` scrapes a real pair with a real Prometheus.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelValue, EncodeMetric, LabelValueEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use twinsan_replication::generation::Role;
use twinsan_replication::state::{ConnState, DiskState, ReplState};
use twinsan_target::stats::{HistogramSnapshot, IoStats, LoginFailure, OpKind, TargetStats};

use crate::api;
use crate::process::ProcessSample;
use crate::volume::Volume;

/// The two text formats a scrape can ask for (by its `Accept` header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0, what Prometheus asks for first.
    OpenMetrics,
    /// The Prometheus text format 0.0.4, for everything else (curl, `promtool check metrics`, older scrapers).
    Text,
}

impl Format {
    /// The format for a request with this `Accept` header.
    pub fn for_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    /// Its content type.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// One volume on this node.
#[derive(Clone, Debug, PartialEq)]
pub struct VolumeSample {
    pub name: String,
    pub peer: String,
    pub primary: bool,
    pub up_to_date: bool,
    pub split_brain: bool,
    pub suspended: bool,
    pub connected: bool,
    pub out_of_sync_bytes: u64,
    /// What the running resync still has to copy; 0 when none runs.
    pub resync_remaining_bytes: u64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub acks: HistogramSnapshot,
}

impl VolumeSample {
    /// The volume as it is now.
    pub fn of(volume: &Volume) -> VolumeSample {
        let s = volume.status();
        let resyncing = match s.replication {
            ReplState::SyncSource
            | ReplState::SyncTarget
            | ReplState::PausedSyncS
            | ReplState::PausedSyncT => true,
            ReplState::Off | ReplState::Established | ReplState::VerifyS | ReplState::VerifyT => {
                false
            }
        };
        let (sent_bytes, received_bytes) = volume.link_traffic();
        VolumeSample {
            name: volume.name().to_string(),
            peer: volume.peer_name().to_string(),
            primary: s.role == Role::Primary,
            up_to_date: s.disk == DiskState::UpToDate,
            split_brain: s.split_brain,
            suspended: s.suspended,
            connected: s.connection == ConnState::Connected,
            out_of_sync_bytes: s.out_of_sync_bytes,
            resync_remaining_bytes: if resyncing { s.out_of_sync_bytes } else { 0 },
            sent_bytes,
            received_bytes,
            acks: volume.ack_durations(),
        }
    }
}

/// One resource of the cluster, as this node sees it on each node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceSample {
    pub name: String,
    /// Per node: whether it runs there (for a volume: it is up there).
    pub running: Vec<(String, bool)>,
    /// Per node: its fail count there.
    pub fail_counts: Vec<(String, u32)>,
}

/// The cluster as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSample {
    /// Every node, with whether it is Online in this node's view.
    pub nodes: Vec<(String, bool)>,
    /// Whether this node holds the witness's vote; `None` without a witness.
    pub witness_vote: Option<bool>,
    pub resources: Vec<ResourceSample>,
    /// Times this node took a stack over after its peer was lost.
    pub failovers: u64,
}

impl ClusterSample {
    /// From `twinsan status`'s view.
    pub fn of(status: &api::ClusterStatus, failovers: u64) -> ClusterSample {
        let nodes: Vec<(String, bool)> = status
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.online))
            .collect();
        let resources = status
            .resources
            .iter()
            .map(|r| ResourceSample {
                name: r.name.clone(),
                running: nodes
                    .iter()
                    .map(|(n, _)| (n.clone(), r.started.contains(n)))
                    .collect(),
                fail_counts: nodes
                    .iter()
                    .map(|(n, _)| (n.clone(), r.fail_counts.get(n).copied().unwrap_or(0)))
                    .collect(),
            })
            .collect();
        ClusterSample {
            nodes,
            witness_vote: status
                .witness
                .as_ref()
                .map(|w| w.vote.as_deref() == Some(status.node.as_str())),
            resources,
            failovers,
        }
    }
}

/// Everything one scrape reports.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub volumes: Vec<VolumeSample>,
    /// `None` in manual mode and for `twinsan serve`.
    pub cluster: Option<ClusterSample>,
    pub targets: Vec<(String, Arc<TargetStats>)>,
    pub process: Option<ProcessSample>,
}

impl Snapshot {
    /// The target counters of `io` and this process, without volumes or cluster (what `twinsan serve` has).
    pub fn of_targets(io: &IoStats) -> Snapshot {
        Snapshot {
            targets: io.targets(),
            process: ProcessSample::now(),
            ..Snapshot::default()
        }
    }

    /// The text of this snapshot in `format`.
    pub fn encode(self, format: Format) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut text = String::new();
        // Writing into a String cannot fail; a formatting error would be a bug in an encoder.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
            tracing::error!("encoding the metrics failed: {e}");
        }
        match format {
            Format::OpenMetrics => text,
            Format::Text => classic(&text),
        }
    }
}

/// The Prometheus text format 0.0.4 of the OpenMetrics text `open` (as prometheus-client writes it): a counter
/// family is named with its `_total` suffix in HELP and TYPE, as its samples are; `# UNIT` and `# EOF` go (the
/// older format has neither). Everything else is the same in both.
fn classic(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    let mut lines = open.lines().peekable();
    while let Some(line) = lines.next() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            let counter = lines
                .peek()
                .is_some_and(|next| *next == format!("# TYPE {name} counter"));
            if counter {
                let help = &rest[name.len()..];
                out.push_str(&format!(
                    "# HELP {name}_total{help}\n# TYPE {name}_total counter\n"
                ));
                lines.next();
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

type Labels<'a, const N: usize> = [(&'static str, &'a str); N];

/// A label value as the text format wants it: backslash, double quote and newline escaped (the encoder writes
/// a `&str` as it is).
#[derive(Clone, Copy, Debug)]
struct Escaped<'a>(&'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, out: &mut LabelValueEncoder) -> fmt::Result {
        use fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => out.write_str("\\\\")?,
                '"' => out.write_str("\\\"")?,
                '\n' => out.write_str("\\n")?,
                c => out.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Writes one family: its descriptor, then each labelled sample.
fn family<'s, const N: usize>(
    out: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels<'s, N>, Value<'s>)>,
) -> fmt::Result {
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let mut metric = out.encode_descriptor(name, help, unit.as_ref(), kind)?;
    for (labels, value) in samples {
        let labels = labels.map(|(name, v)| (name, Escaped(v)));
        let sample = metric.encode_family(&labels)?;
        value.encode(sample)?;
    }
    Ok(())
}

/// A sample's value.
enum Value<'a> {
    Gauge(i64),
    GaugeF(f64),
    Counter(u64),
    CounterF(f64),
    Seconds(&'a HistogramSnapshot),
}

impl Value<'_> {
    fn flag(on: bool) -> Value<'static> {
        Value::Gauge(i64::from(on))
    }

    fn bytes(n: u64) -> Value<'static> {
        Value::Gauge(i64::try_from(n).unwrap_or(i64::MAX))
    }

    fn encode(self, out: prometheus_client::encoding::MetricEncoder) -> fmt::Result {
        match self {
            Value::Gauge(v) => ConstGauge::new(v).encode(out),
            Value::GaugeF(v) => ConstGauge::new(v).encode(out),
            Value::Counter(v) => ConstCounter::new(v).encode(out),
            Value::CounterF(v) => ConstCounter::new(v).encode(out),
            Value::Seconds(h) => {
                let mut out = out;
                // The encoder sums the buckets itself, and takes f64::MAX for +Inf.
                let mut buckets = h.buckets.clone();
                buckets.push((f64::MAX, h.over));
                out.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &buckets, None)
            }
        }
    }
}

/// Writes a family of one sample without labels.
fn single(
    out: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    kind: MetricType,
    value: Value<'_>,
) -> fmt::Result {
    let metric = out.encode_descriptor(name, help, unit.as_ref(), kind)?;
    value.encode(metric)
}

impl Collector for Snapshot {
    fn encode(&self, mut out: DescriptorEncoder) -> fmt::Result {
        self.encode_build(&mut out)?;
        self.encode_volumes(&mut out)?;
        if let Some(c) = &self.cluster {
            encode_cluster(c, &mut out)?;
        }
        self.encode_targets(&mut out)?;
        if let Some(p) = &self.process {
            encode_process(p, &mut out)?;
        }
        Ok(())
    }
}

impl Snapshot {
    fn encode_build(&self, out: &mut DescriptorEncoder) -> fmt::Result {
        family(
            out,
            "twinsan_build_info",
            "twinsan's version; always 1.",
            None,
            MetricType::Gauge,
            [([("version", env!("CARGO_PKG_VERSION"))], Value::Gauge(1))],
        )
    }

    fn encode_volumes(&self, out: &mut DescriptorEncoder) -> fmt::Result {
        let vols = &self.volumes;
        let by_volume = |f: fn(&VolumeSample) -> Value<'static>| {
            vols.iter()
                .map(move |v| ([("volume", v.name.as_str())], f(v)))
        };
        family(
            out,
            "twinsan_volume_primary",
            "1 while this node is Primary for the volume.",
            None,
            MetricType::Gauge,
            by_volume(|v| Value::flag(v.primary)),
        )?;
        family(
            out,
            "twinsan_volume_up_to_date",
            "1 while this node's copy of the volume is UpToDate.",
            None,
            MetricType::Gauge,
            by_volume(|v| Value::flag(v.up_to_date)),
        )?;
        family(
            out,
            "twinsan_volume_split_brain",
            "1 while a split brain found on connect is unresolved (see docs/operations.md).",
            None,
            MetricType::Gauge,
            by_volume(|v| Value::flag(v.split_brain)),
        )?;
        family(out, "twinsan_volume_suspended",
            "1 while the volume's I/O is suspended (fencing in progress, or no lease from the cluster).", None,
            MetricType::Gauge, by_volume(|v| Value::flag(v.suspended)))?;
        let by_peer = |f: fn(&VolumeSample) -> Value<'static>| {
            vols.iter().map(move |v| {
                (
                    [("volume", v.name.as_str()), ("peer", v.peer.as_str())],
                    f(v),
                )
            })
        };
        family(
            out,
            "twinsan_peer_connected",
            "1 while the replication link to the peer is connected.",
            None,
            MetricType::Gauge,
            by_peer(|v| Value::flag(v.connected)),
        )?;
        family(
            out,
            "twinsan_peer_out_of_sync",
            "Data this node knows differs from the peer's copy.",
            Some(Unit::Bytes),
            MetricType::Gauge,
            by_peer(|v| Value::bytes(v.out_of_sync_bytes)),
        )?;
        family(
            out,
            "twinsan_peer_resync_remaining",
            "Data the running resync still has to copy; 0 when none runs.",
            Some(Unit::Bytes),
            MetricType::Gauge,
            by_peer(|v| Value::bytes(v.resync_remaining_bytes)),
        )?;
        family(out, "twinsan_replication_sent",
            "Bytes sent to the peer on the replication link (data, resync, acknowledgements, control).",
            Some(Unit::Bytes), MetricType::Counter, by_peer(|v| Value::Counter(v.sent_bytes)))?;
        family(
            out,
            "twinsan_replication_received",
            "Bytes received from the peer on the replication link.",
            Some(Unit::Bytes),
            MetricType::Counter,
            by_peer(|v| Value::Counter(v.received_bytes)),
        )?;
        family(
            out,
            "twinsan_replication_ack_duration",
            "Time from a replicated write handed to the link to the peer's acknowledgement.",
            Some(Unit::Seconds),
            MetricType::Histogram,
            vols.iter().map(|v| {
                (
                    [("volume", v.name.as_str()), ("peer", v.peer.as_str())],
                    Value::Seconds(&v.acks),
                )
            }),
        )
    }

    fn encode_targets(&self, out: &mut DescriptorEncoder) -> fmt::Result {
        // Logins refused before a target was named count under "" (see IoStats): a session gauge for it would
        // say nothing.
        let named = || self.targets.iter().filter(|(name, _)| !name.is_empty());
        family(
            out,
            "twinsan_iscsi_sessions",
            "iSCSI sessions logged in to the target now (normal sessions, not discovery).",
            None,
            MetricType::Gauge,
            named().map(|(name, t)| ([("target", name.as_str())], Value::Gauge(t.sessions()))),
        )?;
        family(
            out,
            "twinsan_iscsi_login_failures",
            "Logins refused, by reason; target \"\" for discovery and unknown target names.",
            None,
            MetricType::Counter,
            self.targets.iter().flat_map(|(name, t)| {
                LoginFailure::ALL.into_iter().map(move |why| {
                    (
                        [("target", name.as_str()), ("reason", why.label())],
                        Value::Counter(t.login_failures(why)),
                    )
                })
            }),
        )?;
        let luns: Vec<(&str, String, Arc<twinsan_target::stats::LunStats>)> = named()
            .flat_map(|(name, t)| {
                t.luns()
                    .into_iter()
                    .map(move |(n, s)| (name.as_str(), n.to_string(), s))
            })
            .collect();
        let durations: Vec<(&str, &str, OpKind, HistogramSnapshot)> = luns
            .iter()
            .flat_map(|(t, l, s)| OpKind::ALL.map(|op| (*t, l.as_str(), op, s.durations(op))))
            .collect();
        family(
            out,
            "twinsan_scsi_commands",
            "SCSI commands answered, by kind (read, write, other).",
            None,
            MetricType::Counter,
            durations.iter().map(|(t, l, op, h)| {
                (
                    [("target", *t), ("lun", *l), ("op", op.label())],
                    Value::Counter(h.count),
                )
            }),
        )?;
        family(
            out,
            "twinsan_scsi",
            "Data moved by SCSI commands: read (to initiators) and write (from them).",
            Some(Unit::Bytes),
            MetricType::Counter,
            luns.iter().flat_map(|(t, l, s)| {
                [
                    (
                        [("target", *t), ("lun", l.as_str()), ("direction", "read")],
                        Value::Counter(s.read_bytes()),
                    ),
                    (
                        [("target", *t), ("lun", l.as_str()), ("direction", "write")],
                        Value::Counter(s.write_bytes()),
                    ),
                ]
            }),
        )?;
        family(
            out,
            "twinsan_scsi_command_duration",
            "Time from a command's arrival to its status queued for the initiator.",
            Some(Unit::Seconds),
            MetricType::Histogram,
            durations.iter().map(|(t, l, op, h)| {
                (
                    [("target", *t), ("lun", *l), ("op", op.label())],
                    Value::Seconds(h),
                )
            }),
        )
    }
}

fn encode_cluster(c: &ClusterSample, out: &mut DescriptorEncoder) -> fmt::Result {
    family(
        out,
        "twinsan_cluster_node_online",
        "1 while the node is Online in this node's view of the cluster (a node sees itself Online until it left).",
        None,
        MetricType::Gauge,
        c.nodes
            .iter()
            .map(|(n, on)| ([("node", n.as_str())], Value::flag(*on))),
    )?;
    if let Some(vote) = c.witness_vote {
        single(
            out,
            "twinsan_cluster_witness_vote",
            "1 while this node holds the witness's vote (at most one node of a pair does).",
            None,
            MetricType::Gauge,
            Value::flag(vote),
        )?;
    }
    family(
        out,
        "twinsan_cluster_resource_running",
        "1 while the resource runs on the node (a volume: is up there), in this node's view.",
        None,
        MetricType::Gauge,
        c.resources.iter().flat_map(|r| {
            r.running.iter().map(|(n, on)| {
                (
                    [("resource", r.name.as_str()), ("node", n.as_str())],
                    Value::flag(*on),
                )
            })
        }),
    )?;
    family(
        out,
        "twinsan_cluster_failcount",
        "Failures of the resource on the node since the last `twinsan resource cleanup`.",
        None,
        MetricType::Gauge,
        c.resources.iter().flat_map(|r| {
            r.fail_counts.iter().map(|(n, count)| {
                (
                    [("resource", r.name.as_str()), ("node", n.as_str())],
                    Value::Gauge(i64::from(*count)),
                )
            })
        }),
    )?;
    single(
        out,
        "twinsan_cluster_failovers",
        "Times this node took a stack over after its peer was lost, since it started.",
        None,
        MetricType::Counter,
        Value::Counter(c.failovers),
    )
}

fn encode_process(p: &ProcessSample, out: &mut DescriptorEncoder) -> fmt::Result {
    single(
        out,
        "process_cpu_seconds",
        "User and system CPU time spent.",
        None,
        MetricType::Counter,
        Value::CounterF(p.cpu_seconds),
    )?;
    single(
        out,
        "process_resident_memory",
        "Resident memory size.",
        Some(Unit::Bytes),
        MetricType::Gauge,
        Value::bytes(p.resident_bytes),
    )?;
    single(
        out,
        "process_virtual_memory",
        "Virtual memory size.",
        Some(Unit::Bytes),
        MetricType::Gauge,
        Value::bytes(p.virtual_bytes),
    )?;
    single(
        out,
        "process_open_fds",
        "Open file descriptors.",
        None,
        MetricType::Gauge,
        Value::Gauge(p.open_fds),
    )?;
    single(
        out,
        "process_max_fds",
        "The limit of open file descriptors.",
        None,
        MetricType::Gauge,
        Value::Gauge(p.max_fds),
    )?;
    single(
        out,
        "process_threads",
        "Threads of the process.",
        None,
        MetricType::Gauge,
        Value::Gauge(p.threads),
    )?;
    single(
        out,
        "process_start_time",
        "Start time of the process since the Unix epoch.",
        Some(Unit::Seconds),
        MetricType::Gauge,
        Value::GaugeF(p.start_time_seconds),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use twinsan_target::stats::DurationHistogram;

    use super::*;

    fn sample() -> Snapshot {
        let io = IoStats::default();
        let t = io.target("iqn.2025-08.local.twinsan:vol0");
        let lun = t.lun(1);
        lun.record(OpKind::Write, 0, 65536, Duration::from_micros(300));
        lun.record(OpKind::Read, 4096, 0, Duration::from_micros(40));
        let acks = DurationHistogram::default();
        acks.observe(Duration::from_micros(700));
        Snapshot {
            volumes: vec![VolumeSample {
                name: "vol0".into(),
                peer: "node2".into(),
                primary: true,
                up_to_date: true,
                split_brain: false,
                suspended: false,
                connected: true,
                out_of_sync_bytes: 8192,
                resync_remaining_bytes: 0,
                sent_bytes: 70000,
                received_bytes: 1200,
                acks: acks.snapshot(),
            }],
            cluster: Some(ClusterSample {
                nodes: vec![("node1".into(), true), ("node2".into(), false)],
                witness_vote: Some(true),
                resources: vec![ResourceSample {
                    name: "vol0-vip".into(),
                    running: vec![("node1".into(), true), ("node2".into(), false)],
                    fail_counts: vec![("node1".into(), 0), ("node2".into(), 2)],
                }],
                failovers: 1,
            }),
            targets: io.targets(),
            process: ProcessSample::now(),
        }
    }

    #[test]
    fn every_family_is_written_with_its_labels() {
        let text = sample().encode(Format::OpenMetrics);
        for line in [
            "twinsan_volume_primary{volume=\"vol0\"} 1",
            "twinsan_peer_connected{volume=\"vol0\",peer=\"node2\"} 1",
            "twinsan_peer_out_of_sync_bytes{volume=\"vol0\",peer=\"node2\"} 8192",
            "twinsan_replication_sent_bytes_total{volume=\"vol0\",peer=\"node2\"} 70000",
            "twinsan_replication_ack_duration_seconds_count{volume=\"vol0\",peer=\"node2\"} 1",
            "twinsan_cluster_node_online{node=\"node2\"} 0",
            "twinsan_cluster_witness_vote 1",
            "twinsan_cluster_failcount{resource=\"vol0-vip\",node=\"node2\"} 2",
            "twinsan_cluster_failovers_total 1",
            "twinsan_iscsi_sessions{target=\"iqn.2025-08.local.twinsan:vol0\"} 0",
            "twinsan_scsi_commands_total{target=\"iqn.2025-08.local.twinsan:vol0\",lun=\"1\",op=\"write\"} 1",
            "twinsan_scsi_bytes_total{target=\"iqn.2025-08.local.twinsan:vol0\",lun=\"1\",direction=\"read\"} 4096",
            "twinsan_scsi_command_duration_seconds_bucket{le=\"0.0005\",target=\"iqn.2025-08.local.twinsan:vol0\",lun=\"1\",op=\"write\"} 1",
            "twinsan_build_info{version=\"",
            "process_cpu_seconds_total ",
            "# EOF",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = Snapshot::default();
        s.volumes.push(VolumeSample {
            name: "a\"b\\c".into(),
            ..sample().volumes.remove(0)
        });
        let text = s.encode(Format::Text);
        assert!(
            text.contains(r#"twinsan_volume_primary{volume="a\"b\\c"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn the_text_format_names_counters_by_their_samples() {
        let text = sample().encode(Format::Text);
        assert!(text.contains(
            "# HELP twinsan_cluster_failovers_total Times this node took a stack over after its peer was lost, \
             since it started.\n# TYPE twinsan_cluster_failovers_total counter\ntwinsan_cluster_failovers_total 1\n"
        ), "{text}");
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE twinsan_peer_out_of_sync_bytes gauge\n"),
            "{text}"
        );
        assert_eq!(Format::for_accept(None), Format::Text);
        assert_eq!(
            Format::for_accept(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
    }
}
