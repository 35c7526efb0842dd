//! `twinsan target start|stop|status`: a manual-mode node serves one configured target on the portals an outside
//! cluster manager (Pacemaker's `ocf:twinsan:target`) gives it, and says whether a portal answers a login.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use twinsan_iscsi::pdu::{LoginRequest, Pdu, BHS_LEN};
use twinsan_iscsi::text::TextPairs;
use twinsan_node::admin;
use twinsan_node::api::{Request, Response, TargetServing};

use crate::Global;

/// How long the login probe waits to connect, and then for the answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The initiator name the login probe uses (it logs in no further than the security stage).
const PROBE_INITIATOR: &str = "iqn.2026-12.org.twinsan:probe";

/// `twinsan target start IQN --portal ADDR[:PORT]...`.
pub fn start(global: &Global, iqn: String, portals: Vec<SocketAddr>) -> anyhow::Result<()> {
    let (_, socket) = crate::cluster_cmd::socket(global)?;
    let portals = portals.iter().map(|p| p.to_string()).collect();
    say(crate::volume_cmd::send(
        &socket,
        &Request::TargetStart { iqn, portals },
    )?)
}

/// `twinsan target stop IQN`.
pub fn stop(global: &Global, iqn: String) -> anyhow::Result<()> {
    let (_, socket) = crate::cluster_cmd::socket(global)?;
    say(crate::volume_cmd::send(
        &socket,
        &Request::TargetStop { iqn },
    )?)
}

fn say(message: Option<String>) -> anyhow::Result<()> {
    if let Some(m) = message {
        println!("{m}");
    }
    Ok(())
}

/// What the login probe found at a portal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A login response that knows the target (success, or an authentication or authorization refusal).
    Answered,
    /// A login response that says the target is not there (0203h, 0204h) or the target failed (class 3).
    NoTarget,
    /// No login response: nothing listens, the connection broke, or the answer was not a login response.
    NoAnswer,
}

impl Probe {
    fn word(self) -> &'static str {
        match self {
            Probe::Answered => "answered",
            Probe::NoTarget => "no-target",
            Probe::NoAnswer => "no-answer",
        }
    }
}

/// `twinsan target status IQN [--portal ADDR[:PORT]] [--json]`: exits 0 when the target is served here (and,
/// with `--portal`, served on that portal and a login there is answered), else fails with the reason.
pub fn status(
    global: &Global,
    iqn: String,
    portal: Option<SocketAddr>,
    json: bool,
) -> anyhow::Result<()> {
    let (_, socket) = crate::cluster_cmd::socket(global)?;
    let status: TargetServing =
        match admin::request(&socket, &Request::TargetStatus { iqn: iqn.clone() })? {
            Response::Target { status } => status,
            Response::Error { message } => anyhow::bail!(message),
            _ => anyhow::bail!("the node daemon answered the target status request without one"),
        };
    let probe = portal.map(|p| (p, probe(p, &iqn)));
    let mode = serde_json::to_value(status.mode)?;
    if json {
        let mut v = serde_json::to_value(&status)?;
        if let (Some((p, result)), Some(obj)) = (probe, v.as_object_mut()) {
            obj.insert("probe_portal".into(), p.to_string().into());
            obj.insert("login".into(), result.word().into());
        }
        println!("{v}");
    } else {
        let served = if status.portals.is_empty() {
            "served nowhere on this node".to_owned()
        } else {
            format!("served on {}", status.portals.join(", "))
        };
        println!("{iqn}: {served} ({})", mode.as_str().unwrap_or("automatic"));
        if let Some((p, result)) = probe {
            println!("login at {p}: {}", result.word());
        }
    }
    if status.portals.is_empty() {
        anyhow::bail!("{iqn} is not served on this node");
    }
    if let Some((p, result)) = probe {
        if !status.portals.contains(&p.to_string()) {
            anyhow::bail!(
                "{iqn} is served on {}, not on {p}",
                status.portals.join(", ")
            );
        }
        if result != Probe::Answered {
            anyhow::bail!("{iqn}: a login at {p} got {}", result.word());
        }
    }
    Ok(())
}

/// Sends one Login Request for `iqn` at `portal` (security stage, no transit, so no session is made) and reads the
/// response's status.
pub fn probe(portal: SocketAddr, iqn: &str) -> Probe {
    match exchange(portal, iqn) {
        Ok(Some((class, detail))) => match (class, detail) {
            (0, _) | (2, 1) | (2, 2) => Probe::Answered,
            _ => Probe::NoTarget,
        },
        Ok(None) | Err(_) => Probe::NoAnswer,
    }
}

fn exchange(portal: SocketAddr, iqn: &str) -> std::io::Result<Option<(u8, u8)>> {
    let mut stream = TcpStream::connect_timeout(&portal, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    let mut keys = TextPairs::default();
    keys.push("InitiatorName", PROBE_INITIATOR);
    keys.push("SessionType", "Normal");
    keys.push("TargetName", iqn);
    keys.push("AuthMethod", "None,CHAP");
    let data = keys.encode();
    let request = Pdu::LoginRequest(LoginRequest {
        transit: false,
        cont: false,
        csg: 0,
        nsg: 0,
        version_max: 0,
        version_min: 0,
        data_len: data.len() as u32,
        isid: [0x80, 0x00, 0x74, 0x77, 0x69, 0x6e],
        tsih: 0,
        itt: 1,
        cid: 0,
        cmd_sn: 0,
        exp_stat_sn: 0,
    });
    let mut out = request.encode().to_vec();
    out.extend_from_slice(&data);
    out.resize(out.len().div_ceil(4) * 4, 0);
    stream.write_all(&out)?;
    let mut bhs = [0u8; BHS_LEN];
    stream.read_exact(&mut bhs)?;
    Ok(match Pdu::decode(&bhs) {
        Ok(Pdu::LoginResponse(r)) => Some((r.status_class, r.status_detail)),
        _ => None,
    })
}
