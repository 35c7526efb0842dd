//! The login phase (RFC 7143 sections 6 and 13): stages, CHAP, and negotiation of every key.
//!
//! [`Login`] takes each Login Request (header and text) and returns what to answer. The engine supplies what
//! only it knows through [`LoginEnv`] (which targets exist, who may use them, their CHAP secrets) and the random
//! bytes CHAP needs; it owns TSIH assignment and session reinstatement.

use crate::chap::{self, Credentials};
use crate::error::LoginStatus;
use crate::pdu::LoginRequest;
use crate::text::TextPairs;

/// Login stages (CSG/NSG values).
pub mod stage {
    pub const SECURITY: u8 = 0;
    pub const OPERATIONAL: u8 = 1;
    pub const FULL_FEATURE: u8 = 3;
}

/// Most text bytes accepted across Login Requests continued with the C bit.
pub const MAX_LOGIN_TEXT: usize = 64 * 1024;

/// Whether a session carries SCSI commands or only SendTargets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionType {
    Normal,
    Discovery,
}

/// CHAP secrets a target requires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChapPolicy {
    /// What the initiator must prove it knows.
    pub initiator: Credentials,
    /// With mutual CHAP, what the target proves in return; the initiator must then challenge it.
    pub mutual: Option<Credentials>,
}

/// What the engine tells the login about targets and access.
pub trait LoginEnv {
    /// May `initiator` log in to `target`, and with which CHAP policy? Errors are NotFound or
    /// AuthorizationFailure.
    fn normal_access(
        &self,
        target: &str,
        initiator: &str,
    ) -> Result<Option<ChapPolicy>, LoginStatus>;
    /// CHAP policy of discovery sessions.
    fn discovery_access(&self, initiator: &str) -> Result<Option<ChapPolicy>, LoginStatus>;
}

/// The target's own limits and preferences for the operational keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetLimits {
    /// MaxRecvDataSegmentLength this target declares (what it can receive in one PDU).
    pub max_recv_data_segment_length: u32,
    /// Largest MaxBurstLength accepted.
    pub max_burst_length: u32,
    /// Largest FirstBurstLength accepted.
    pub first_burst_length: u32,
    /// Largest MaxOutstandingR2T accepted.
    pub max_outstanding_r2t: u32,
    /// Target Portal Group Tag of the portal the connection came in on.
    pub portal_group_tag: u16,
}

impl Default for TargetLimits {
    fn default() -> Self {
        TargetLimits {
            max_recv_data_segment_length: 256 * 1024,
            max_burst_length: 1024 * 1024,
            first_burst_length: 256 * 1024,
            max_outstanding_r2t: 1,
            portal_group_tag: 1,
        }
    }
}

/// Session parameters in force after login; field names are the RFC keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub session_type: SessionType,
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    pub target_name: Option<String>,
    pub header_digest: bool,
    pub data_digest: bool,
    /// The initiator's MaxRecvDataSegmentLength: the largest segment the target may send.
    pub initiator_mrdsl: u32,
    /// The target's declared MaxRecvDataSegmentLength: the largest segment it accepts.
    pub target_mrdsl: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
    pub max_connections: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub error_recovery_level: u32,
}

impl Negotiated {
    fn defaults() -> Self {
        Negotiated {
            session_type: SessionType::Normal,
            initiator_name: String::new(),
            initiator_alias: None,
            target_name: None,
            header_digest: false,
            data_digest: false,
            initiator_mrdsl: 8192,
            target_mrdsl: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            initial_r2t: true,
            immediate_data: true,
            max_outstanding_r2t: 1,
            max_connections: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
        }
    }
}

/// What to answer one Login Request with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginReply {
    pub transit: bool,
    pub csg: u8,
    pub nsg: u8,
    pub text: TextPairs,
    pub status: LoginStatus,
}

/// The outcome of one Login Request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginStep {
    /// Send the reply and wait for the next Login Request.
    Continue(LoginReply),
    /// Send the reply (T=1, NSG=FullFeature) and enter the full feature phase with these parameters.
    Complete(LoginReply, Box<Negotiated>),
    /// Send the reply (a non-zero status) and close the connection. The string says why, for the log.
    Fail(LoginReply, String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Chap {
    /// AuthMethod=CHAP chosen; waiting for CHAP_A.
    AwaitAlgorithm,
    /// Challenge sent; waiting for CHAP_N/CHAP_R.
    AwaitResponse {
        id: u8,
        challenge: [u8; chap::CHALLENGE_LEN],
    },
    Done,
}

/// The login state machine of one connection.
#[derive(Debug)]
pub struct Login {
    limits: TargetLimits,
    n: Negotiated,
    /// Keys already negotiated (each may be negotiated once per login).
    seen: Vec<String>,
    /// First Login Request handled (identity keys checked).
    started: bool,
    /// The CHAP policy that applies once the target is known; None = no authentication.
    policy: Option<ChapPolicy>,
    chap: Option<Chap>,
    auth_done: bool,
    /// Current stage as agreed so far.
    stage: u8,
    declared_mrdsl: bool,
    /// Text of Login Requests continued with the C bit.
    pending: Vec<u8>,
    isid: [u8; 6],
    tsih: u16,
}

fn fail(req: &LoginRequest, status: LoginStatus, why: impl Into<String>) -> LoginStep {
    LoginStep::Fail(
        LoginReply {
            transit: false,
            csg: req.csg,
            nsg: req.nsg,
            text: TextPairs::default(),
            status,
        },
        why.into(),
    )
}

/// Parses a numeric value: decimal or 0x hex (RFC 7143 section 6.1).
fn number(v: &str) -> Option<u64> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else if v.bytes().all(|c| c.is_ascii_digit()) && !v.is_empty() && v.len() <= 20 {
        v.parse().ok()
    } else {
        None
    }
}

fn boolean(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

const SECURITY_KEYS: &[&str] = &[
    "AuthMethod",
    "CHAP_A",
    "CHAP_I",
    "CHAP_C",
    "CHAP_N",
    "CHAP_R",
];
/// Keys that mean nothing in a discovery session (RFC 7143 section 13: "irrelevant" there).
const NORMAL_ONLY_KEYS: &[&str] = &[
    "MaxConnections",
    "InitialR2T",
    "ImmediateData",
    "MaxBurstLength",
    "FirstBurstLength",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
];

impl Login {
    /// A fresh login on a new connection.
    pub fn new(limits: TargetLimits) -> Self {
        Login {
            limits,
            n: Negotiated::defaults(),
            seen: Vec::new(),
            started: false,
            policy: None,
            chap: None,
            auth_done: false,
            stage: stage::SECURITY,
            declared_mrdsl: false,
            pending: Vec::new(),
            isid: [0; 6],
            tsih: 0,
        }
    }

    /// The ISID and TSIH of the first Login Request.
    pub fn session_id(&self) -> ([u8; 6], u16) {
        (self.isid, self.tsih)
    }

    /// Parameters negotiated so far (InitiatorName, TargetName and SessionType are known after the first PDU).
    pub fn negotiated(&self) -> &Negotiated {
        &self.n
    }

    /// Handles one Login Request. `random` fills buffers with unpredictable bytes (CHAP identifier/challenge).
    pub fn step(
        &mut self,
        req: &LoginRequest,
        data: &[u8],
        env: &dyn LoginEnv,
        random: &mut dyn FnMut(&mut [u8]),
    ) -> LoginStep {
        if req.version_min > 0 {
            // Keep the initiator's name for the log line, if the text says it.
            if let Some(name) = TextPairs::parse(data)
                .ok()
                .and_then(|p| p.value("InitiatorName").map(str::to_owned))
            {
                self.n.initiator_name = name;
            }
            return fail(
                req,
                LoginStatus::UnsupportedVersion,
                format!("initiator needs iSCSI version >= {}", req.version_min),
            );
        }
        if !self.started {
            self.isid = req.isid;
            self.tsih = req.tsih;
        } else if req.isid != self.isid || req.tsih != self.tsih {
            return fail(
                req,
                LoginStatus::InitiatorError,
                "ISID or TSIH changed during login",
            );
        }
        if req.csg == 2 || req.csg == stage::FULL_FEATURE {
            return fail(
                req,
                LoginStatus::InitiatorError,
                format!("invalid current stage {}", req.csg),
            );
        }
        if req.transit && (req.nsg == 2 || req.nsg <= req.csg) {
            return fail(
                req,
                LoginStatus::InitiatorError,
                format!("invalid transition from stage {} to {}", req.csg, req.nsg),
            );
        }
        if req.csg < self.stage {
            return fail(
                req,
                LoginStatus::InitiatorError,
                "login stage went backwards",
            );
        }
        if self.pending.len() + data.len() > MAX_LOGIN_TEXT {
            return fail(req, LoginStatus::InitiatorError, "login text too long");
        }
        self.pending.extend_from_slice(data);
        if req.cont {
            if req.transit {
                return fail(req, LoginStatus::InitiatorError, "C and T bits both set");
            }
            // More text follows: acknowledge with an empty response in the same stage.
            return LoginStep::Continue(LoginReply {
                transit: false,
                csg: req.csg,
                nsg: req.nsg,
                text: TextPairs::default(),
                status: LoginStatus::Success,
            });
        }
        let text = std::mem::take(&mut self.pending);
        let pairs = match TextPairs::parse(&text) {
            Ok(p) => p,
            Err(e) => return fail(req, LoginStatus::InitiatorError, format!("login text: {e}")),
        };
        let mut reply = TextPairs::default();

        if !self.started {
            if let Err(step) = self.first_request(req, &pairs, env, &mut reply) {
                return step;
            }
            self.started = true;
        }
        if req.csg == stage::OPERATIONAL && !self.auth_done {
            if self.policy.is_some() {
                return fail(
                    req,
                    LoginStatus::AuthenticationFailure,
                    "target requires CHAP but initiator skipped the security stage",
                );
            }
            self.auth_done = true;
        }
        self.stage = req.csg;

        for (key, value) in &pairs.0 {
            let key = key.as_str();
            if matches!(
                key,
                "InitiatorName" | "TargetName" | "SessionType" | "InitiatorAlias"
            ) {
                continue; // handled with the first request
            }
            if SECURITY_KEYS.contains(&key) {
                continue; // handled below, in order
            }
            if self.seen.iter().any(|k| k == key) {
                return fail(
                    req,
                    LoginStatus::InitiatorError,
                    format!("key {key} negotiated twice"),
                );
            }
            self.seen.push(key.to_owned());
            if let Some(answer) = self.negotiate(key, value) {
                reply.push(key, answer);
            }
        }

        if req.csg == stage::SECURITY {
            if let Err(step) = self.security(req, &pairs, random, &mut reply) {
                return step;
            }
        } else if pairs
            .0
            .iter()
            .any(|(k, _)| SECURITY_KEYS.contains(&k.as_str()))
        {
            return fail(
                req,
                LoginStatus::InitiatorError,
                "security key in the operational stage",
            );
        }

        // Declare our receive limit once, in the operational stage (RFC 7143 section 13.12).
        if req.csg == stage::OPERATIONAL && !self.declared_mrdsl {
            self.declared_mrdsl = true;
            self.n.target_mrdsl = self.limits.max_recv_data_segment_length;
            reply.push(
                "MaxRecvDataSegmentLength",
                self.limits.max_recv_data_segment_length.to_string(),
            );
        }

        let stage_done = req.csg != stage::SECURITY || self.auth_done;
        let transit = req.transit && stage_done;
        let out = LoginReply {
            transit,
            csg: req.csg,
            nsg: if transit { req.nsg } else { req.csg },
            text: reply,
            status: LoginStatus::Success,
        };
        if transit && req.nsg == stage::FULL_FEATURE {
            if self.n.first_burst_length > self.n.max_burst_length {
                self.n.first_burst_length = self.n.max_burst_length;
            }
            LoginStep::Complete(out, Box::new(self.n.clone()))
        } else {
            if transit {
                self.stage = req.nsg;
            }
            LoginStep::Continue(out)
        }
    }

    fn first_request(
        &mut self,
        req: &LoginRequest,
        pairs: &TextPairs,
        env: &dyn LoginEnv,
        reply: &mut TextPairs,
    ) -> Result<(), LoginStep> {
        let Some(initiator) = pairs.value("InitiatorName") else {
            return Err(fail(
                req,
                LoginStatus::MissingParameter,
                "first Login Request has no InitiatorName",
            ));
        };
        if initiator.is_empty() {
            return Err(fail(
                req,
                LoginStatus::MissingParameter,
                "empty InitiatorName",
            ));
        }
        self.n.initiator_name = initiator.to_owned();
        self.n.initiator_alias = pairs.value("InitiatorAlias").map(str::to_owned);
        self.n.session_type = match pairs.value("SessionType").unwrap_or("Normal") {
            "Normal" => SessionType::Normal,
            "Discovery" => SessionType::Discovery,
            other => {
                return Err(fail(
                    req,
                    LoginStatus::SessionTypeNotSupported,
                    format!("unknown SessionType {other:?}"),
                ));
            }
        };
        let access = match self.n.session_type {
            SessionType::Normal => {
                let Some(target) = pairs.value("TargetName") else {
                    return Err(fail(
                        req,
                        LoginStatus::MissingParameter,
                        "normal session without TargetName",
                    ));
                };
                self.n.target_name = Some(target.to_owned());
                reply.push(
                    "TargetPortalGroupTag",
                    self.limits.portal_group_tag.to_string(),
                );
                env.normal_access(target, initiator)
            }
            SessionType::Discovery => env.discovery_access(initiator),
        };
        match access {
            Ok(policy) => self.policy = policy,
            Err(status) => {
                let why = format!(
                    "initiator {initiator} refused for {}: {status}",
                    self.n.target_name.as_deref().unwrap_or("discovery")
                );
                return Err(fail(req, status, why));
            }
        }
        Ok(())
    }

    /// Answers one operational key, or None for declarative keys that need no answer.
    fn negotiate(&mut self, key: &str, value: &str) -> Option<String> {
        let discovery = self.n.session_type == SessionType::Discovery;
        if discovery && NORMAL_ONLY_KEYS.contains(&key) {
            return Some("Irrelevant".into());
        }
        let reject = || Some("Reject".to_string());
        let num = |lo: u64, hi: u64| {
            number(value)
                .filter(|v| (lo..=hi).contains(v))
                .map(|v| v as u32)
        };
        match key {
            "HeaderDigest" | "DataDigest" => {
                let choice = value.split(',').find(|v| matches!(*v, "CRC32C" | "None"));
                let Some(choice) = choice else {
                    return reject();
                };
                let on = choice == "CRC32C";
                if key == "HeaderDigest" {
                    self.n.header_digest = on;
                } else {
                    self.n.data_digest = on;
                }
                Some(choice.into())
            }
            "MaxRecvDataSegmentLength" => match num(512, (1 << 24) - 1) {
                Some(v) => {
                    self.n.initiator_mrdsl = v;
                    None
                }
                None => reject(),
            },
            "MaxBurstLength" => match num(512, (1 << 24) - 1) {
                Some(v) => {
                    self.n.max_burst_length = v.min(self.limits.max_burst_length);
                    Some(self.n.max_burst_length.to_string())
                }
                None => reject(),
            },
            "FirstBurstLength" => match num(512, (1 << 24) - 1) {
                Some(v) => {
                    self.n.first_burst_length = v.min(self.limits.first_burst_length);
                    Some(self.n.first_burst_length.to_string())
                }
                None => reject(),
            },
            "MaxConnections" => match num(1, 65535) {
                Some(_) => {
                    self.n.max_connections = 1;
                    Some("1".into())
                }
                None => reject(),
            },
            "MaxOutstandingR2T" => match num(1, 65535) {
                Some(v) => {
                    self.n.max_outstanding_r2t = v.min(self.limits.max_outstanding_r2t);
                    Some(self.n.max_outstanding_r2t.to_string())
                }
                None => reject(),
            },
            "DefaultTime2Wait" => match num(0, 3600) {
                // Result function is Max; we have no minimum of our own.
                Some(v) => {
                    self.n.default_time2wait = v;
                    Some(v.to_string())
                }
                None => reject(),
            },
            "DefaultTime2Retain" => match num(0, 3600) {
                // Result function is Min; at ErrorRecoveryLevel 0 nothing is retained.
                Some(_) => {
                    self.n.default_time2retain = 0;
                    Some("0".into())
                }
                None => reject(),
            },
            "ErrorRecoveryLevel" => match num(0, 2) {
                Some(_) => {
                    self.n.error_recovery_level = 0;
                    Some("0".into())
                }
                None => reject(),
            },
            "InitialR2T" => match boolean(value) {
                // Result function is OR and we answer Yes: immediate data up to FirstBurstLength already covers
                // small writes, and solicited-only Data-Out keeps each command's data one sequence per R2T.
                Some(_) => {
                    self.n.initial_r2t = true;
                    Some("Yes".into())
                }
                None => reject(),
            },
            "ImmediateData" => match boolean(value) {
                Some(v) => {
                    self.n.immediate_data = v;
                    Some(yes_no(v).into())
                }
                None => reject(),
            },
            "DataPDUInOrder" | "DataSequenceInOrder" => match boolean(value) {
                // OR with our Yes: in-order is all this target implements.
                Some(_) => Some("Yes".into()),
                None => reject(),
            },
            "IFMarker" | "OFMarker" => match boolean(value) {
                Some(_) => Some("No".into()),
                None => reject(),
            },
            "IFMarkInt" | "OFMarkInt" => Some("Irrelevant".into()),
            "TaskReporting" => Some("RFC3720".into()),
            "iSCSIProtocolLevel" => match number(value) {
                Some(v) => Some(v.min(1).to_string()),
                None => reject(),
            },
            // Declarative keys only a target may send, or that need no answer.
            "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" => Some("Irrelevant".into()),
            _ => Some("NotUnderstood".into()),
        }
    }

    /// Runs the security stage's keys: AuthMethod, then the CHAP exchange.
    fn security(
        &mut self,
        req: &LoginRequest,
        pairs: &TextPairs,
        random: &mut dyn FnMut(&mut [u8]),
        reply: &mut TextPairs,
    ) -> Result<(), LoginStep> {
        if let Some(methods) = pairs.value("AuthMethod") {
            if self.chap.is_some() || self.auth_done {
                return Err(fail(
                    req,
                    LoginStatus::InitiatorError,
                    "AuthMethod negotiated twice",
                ));
            }
            let offered: Vec<&str> = methods.split(',').collect();
            if self.policy.is_some() {
                if !offered.contains(&"CHAP") {
                    return Err(fail(
                        req,
                        LoginStatus::AuthenticationFailure,
                        "target requires CHAP, initiator did not offer it",
                    ));
                }
                reply.push("AuthMethod", "CHAP");
                self.chap = Some(Chap::AwaitAlgorithm);
            } else {
                if !offered.contains(&"None") {
                    return Err(fail(
                        req,
                        LoginStatus::AuthenticationFailure,
                        "initiator requires authentication the target is not configured for",
                    ));
                }
                reply.push("AuthMethod", "None");
                self.auth_done = true;
            }
        } else if self.chap.is_none() && !self.auth_done {
            if self.policy.is_some() {
                if req.transit {
                    return Err(fail(
                        req,
                        LoginStatus::AuthenticationFailure,
                        "target requires CHAP, initiator offered no AuthMethod",
                    ));
                }
            } else {
                self.auth_done = true;
            }
        }

        match self.chap.clone() {
            Some(Chap::AwaitAlgorithm) => {
                if let Some(algs) = pairs.value("CHAP_A") {
                    if !algs.split(',').any(|a| a == "5") {
                        reply.push("CHAP_A", "Reject");
                        return Err(fail(
                            req,
                            LoginStatus::AuthenticationFailure,
                            "initiator offers no CHAP algorithm but MD5",
                        ));
                    }
                    let mut id = [0u8; 1];
                    random(&mut id);
                    let mut challenge = [0u8; chap::CHALLENGE_LEN];
                    random(&mut challenge);
                    reply.push("CHAP_A", "5");
                    reply.push("CHAP_I", id[0].to_string());
                    reply.push("CHAP_C", chap::encode_hex(&challenge));
                    self.chap = Some(Chap::AwaitResponse {
                        id: id[0],
                        challenge,
                    });
                } else if pairs.value("CHAP_N").is_some() || pairs.value("CHAP_R").is_some() {
                    return Err(fail(
                        req,
                        LoginStatus::InitiatorError,
                        "CHAP response before CHAP_A",
                    ));
                }
            }
            Some(Chap::AwaitResponse { id, challenge }) => {
                let (Some(name), Some(resp)) = (pairs.value("CHAP_N"), pairs.value("CHAP_R"))
                else {
                    return Err(fail(
                        req,
                        LoginStatus::AuthenticationFailure,
                        "CHAP_N or CHAP_R missing",
                    ));
                };
                let Some(policy) = self.policy.clone() else {
                    return Err(fail(
                        req,
                        LoginStatus::TargetError,
                        "CHAP state without a policy",
                    ));
                };
                let expected = chap::response(id, &policy.initiator.secret, &challenge);
                let got = chap::decode_binary(resp).unwrap_or_default();
                // Compare the name and the response both, in constant time, so neither leaks which was wrong.
                let name_ok =
                    chap::constant_time_eq(name.as_bytes(), policy.initiator.user.as_bytes());
                let resp_ok = chap::constant_time_eq(&got, &expected);
                if !(name_ok & resp_ok) {
                    return Err(fail(
                        req,
                        LoginStatus::AuthenticationFailure,
                        format!("CHAP authentication failed for user {name:?}"),
                    ));
                }
                let mutual_i = pairs.value("CHAP_I");
                let mutual_c = pairs.value("CHAP_C");
                match (&policy.mutual, mutual_i, mutual_c) {
                    (Some(ours), Some(i), Some(c)) => {
                        let Some(i) = number(i).filter(|&i| i <= 255) else {
                            return Err(fail(
                                req,
                                LoginStatus::AuthenticationFailure,
                                "mutual CHAP_I is not a byte",
                            ));
                        };
                        let Some(c) = chap::decode_binary(c)
                            .filter(|c| !c.is_empty() && c.len() <= chap::MAX_CHALLENGE_LEN)
                        else {
                            return Err(fail(
                                req,
                                LoginStatus::AuthenticationFailure,
                                "mutual CHAP_C is malformed",
                            ));
                        };
                        if c == challenge {
                            return Err(fail(
                                req,
                                LoginStatus::AuthenticationFailure,
                                "initiator reflected the target's CHAP challenge",
                            ));
                        }
                        reply.push("CHAP_N", ours.user.clone());
                        reply.push(
                            "CHAP_R",
                            chap::encode_hex(&chap::response(i as u8, &ours.secret, &c)),
                        );
                    }
                    (Some(_), _, _) => {
                        return Err(fail(
                            req,
                            LoginStatus::AuthenticationFailure,
                            "target requires mutual CHAP; initiator sent no challenge",
                        ));
                    }
                    (None, None, None) => {}
                    (None, _, _) => {
                        return Err(fail(
                            req,
                            LoginStatus::AuthenticationFailure,
                            "initiator asks for mutual CHAP, which is not configured",
                        ));
                    }
                }
                self.chap = Some(Chap::Done);
                self.auth_done = true;
            }
            Some(Chap::Done) => {
                if pairs.0.iter().any(|(k, _)| k.starts_with("CHAP_")) {
                    return Err(fail(
                        req,
                        LoginStatus::InitiatorError,
                        "CHAP keys after authentication",
                    ));
                }
            }
            None => {
                if pairs.0.iter().any(|(k, _)| k.starts_with("CHAP_")) {
                    return Err(fail(
                        req,
                        LoginStatus::InitiatorError,
                        "CHAP keys without AuthMethod=CHAP",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Env {
        chap: Option<ChapPolicy>,
    }
    impl LoginEnv for Env {
        fn normal_access(
            &self,
            target: &str,
            initiator: &str,
        ) -> Result<Option<ChapPolicy>, LoginStatus> {
            if target != "iqn.t" {
                return Err(LoginStatus::NotFound);
            }
            if initiator == "iqn.bad" {
                return Err(LoginStatus::AuthorizationFailure);
            }
            Ok(self.chap.clone())
        }
        fn discovery_access(&self, _: &str) -> Result<Option<ChapPolicy>, LoginStatus> {
            Ok(None)
        }
    }

    fn req(csg: u8, nsg: u8, transit: bool) -> LoginRequest {
        LoginRequest {
            transit,
            cont: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            data_len: 0,
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 0,
            itt: 1,
            cid: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
        }
    }

    fn zeros(b: &mut [u8]) {
        b.fill(7);
    }

    fn text(s: &[(&str, &str)]) -> Vec<u8> {
        TextPairs(
            s.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .encode()
    }

    #[test]
    fn plain_login_negotiates_keys() {
        let env = Env { chap: None };
        let mut l = Login::new(TargetLimits::default());
        let step = l.step(
            &req(0, 1, true),
            &text(&[
                ("InitiatorName", "iqn.i"),
                ("TargetName", "iqn.t"),
                ("AuthMethod", "None"),
            ]),
            &env,
            &mut zeros,
        );
        let LoginStep::Continue(r) = step else {
            panic!("{step:?}")
        };
        assert!(r.transit);
        assert_eq!(r.nsg, 1);
        assert_eq!(r.text.value("AuthMethod"), Some("None"));
        assert_eq!(r.text.value("TargetPortalGroupTag"), Some("1"));
        let step = l.step(
            &req(1, 3, true),
            &text(&[
                ("HeaderDigest", "CRC32C,None"),
                ("DataDigest", "None"),
                ("MaxBurstLength", "16776192"),
                ("FirstBurstLength", "262144"),
                ("InitialR2T", "No"),
                ("MaxRecvDataSegmentLength", "262144"),
                ("X-com.example.Foo", "1"),
            ]),
            &env,
            &mut zeros,
        );
        let LoginStep::Complete(r, n) = step else {
            panic!("{step:?}")
        };
        assert_eq!(r.text.value("HeaderDigest"), Some("CRC32C"));
        assert_eq!(r.text.value("MaxBurstLength"), Some("1048576"));
        assert_eq!(r.text.value("X-com.example.Foo"), Some("NotUnderstood"));
        assert_eq!(r.text.value("MaxRecvDataSegmentLength"), Some("262144"));
        assert!(n.header_digest && !n.data_digest && n.initial_r2t);
        assert_eq!(n.initiator_mrdsl, 262144);
    }

    #[test]
    fn refuses_unknown_target_and_disallowed_initiator() {
        let env = Env { chap: None };
        let mut l = Login::new(TargetLimits::default());
        let step = l.step(
            &req(1, 3, true),
            &text(&[("InitiatorName", "iqn.i"), ("TargetName", "iqn.x")]),
            &env,
            &mut zeros,
        );
        assert!(matches!(
            step,
            LoginStep::Fail(
                LoginReply {
                    status: LoginStatus::NotFound,
                    ..
                },
                _
            )
        ));
        let mut l = Login::new(TargetLimits::default());
        let step = l.step(
            &req(1, 3, true),
            &text(&[("InitiatorName", "iqn.bad"), ("TargetName", "iqn.t")]),
            &env,
            &mut zeros,
        );
        assert!(matches!(
            step,
            LoginStep::Fail(
                LoginReply {
                    status: LoginStatus::AuthorizationFailure,
                    ..
                },
                _
            )
        ));
    }

    #[test]
    fn chap_and_mutual_chap() {
        let policy = ChapPolicy {
            initiator: Credentials {
                user: "u".into(),
                secret: b"secret12345678".to_vec(),
            },
            mutual: Some(Credentials {
                user: "t".into(),
                secret: b"tsecret1234567".to_vec(),
            }),
        };
        let env = Env { chap: Some(policy) };
        let mut l = Login::new(TargetLimits::default());
        let LoginStep::Continue(r) = l.step(
            &req(0, 1, false),
            &text(&[
                ("InitiatorName", "iqn.i"),
                ("TargetName", "iqn.t"),
                ("AuthMethod", "CHAP,None"),
            ]),
            &env,
            &mut zeros,
        ) else {
            panic!()
        };
        assert_eq!(r.text.value("AuthMethod"), Some("CHAP"));
        let LoginStep::Continue(r) = l.step(
            &req(0, 1, false),
            &text(&[("CHAP_A", "5")]),
            &env,
            &mut zeros,
        ) else {
            panic!()
        };
        let id: u8 = r.text.value("CHAP_I").unwrap().parse().unwrap();
        let c = chap::decode_binary(r.text.value("CHAP_C").unwrap()).unwrap();
        let resp = chap::encode_hex(&chap::response(id, b"secret12345678", &c));
        // A reflected challenge is refused.
        let mut l2 = Login {
            ..Login::new(TargetLimits::default())
        };
        l2.chap = l.chap.clone();
        l2.policy = l.policy.clone();
        l2.started = true;
        l2.isid = l.isid;
        let reflected = l2.step(
            &req(0, 1, true),
            &text(&[
                ("CHAP_N", "u"),
                ("CHAP_R", &resp),
                ("CHAP_I", "9"),
                ("CHAP_C", &chap::encode_hex(&c)),
            ]),
            &env,
            &mut zeros,
        );
        assert!(matches!(
            reflected,
            LoginStep::Fail(
                LoginReply {
                    status: LoginStatus::AuthenticationFailure,
                    ..
                },
                _
            )
        ));
        let ic = [1u8, 2, 3, 4];
        let LoginStep::Continue(r) = l.step(
            &req(0, 1, true),
            &text(&[
                ("CHAP_N", "u"),
                ("CHAP_R", &resp),
                ("CHAP_I", "9"),
                ("CHAP_C", &chap::encode_hex(&ic)),
            ]),
            &env,
            &mut zeros,
        ) else {
            panic!()
        };
        assert!(r.transit);
        assert_eq!(r.text.value("CHAP_N"), Some("t"));
        assert_eq!(
            r.text.value("CHAP_R"),
            Some(chap::encode_hex(&chap::response(9, b"tsecret1234567", &ic)).as_str())
        );
    }

    #[test]
    fn wrong_chap_secret_fails() {
        let policy = ChapPolicy {
            initiator: Credentials {
                user: "u".into(),
                secret: b"s".to_vec(),
            },
            mutual: None,
        };
        let env = Env { chap: Some(policy) };
        let mut l = Login::new(TargetLimits::default());
        l.step(
            &req(0, 1, false),
            &text(&[
                ("InitiatorName", "iqn.i"),
                ("TargetName", "iqn.t"),
                ("AuthMethod", "CHAP"),
            ]),
            &env,
            &mut zeros,
        );
        l.step(
            &req(0, 1, false),
            &text(&[("CHAP_A", "5")]),
            &env,
            &mut zeros,
        );
        let step = l.step(
            &req(0, 1, true),
            &text(&[("CHAP_N", "u"), ("CHAP_R", "0x00")]),
            &env,
            &mut zeros,
        );
        assert!(matches!(
            step,
            LoginStep::Fail(
                LoginReply {
                    status: LoginStatus::AuthenticationFailure,
                    ..
                },
                _
            )
        ));
    }

    #[test]
    fn chap_required_cannot_be_skipped() {
        let policy = ChapPolicy {
            initiator: Credentials {
                user: "u".into(),
                secret: b"s".to_vec(),
            },
            mutual: None,
        };
        let env = Env { chap: Some(policy) };
        let mut l = Login::new(TargetLimits::default());
        let step = l.step(
            &req(1, 3, true),
            &text(&[("InitiatorName", "iqn.i"), ("TargetName", "iqn.t")]),
            &env,
            &mut zeros,
        );
        assert!(matches!(
            step,
            LoginStep::Fail(
                LoginReply {
                    status: LoginStatus::AuthenticationFailure,
                    ..
                },
                _
            )
        ));
    }

    #[test]
    fn duplicate_key_fails() {
        let env = Env { chap: None };
        let mut l = Login::new(TargetLimits::default());
        let step = l.step(
            &req(1, 3, true),
            &text(&[
                ("InitiatorName", "iqn.i"),
                ("TargetName", "iqn.t"),
                ("MaxBurstLength", "512"),
                ("MaxBurstLength", "1024"),
            ]),
            &env,
            &mut zeros,
        );
        assert!(matches!(
            step,
            LoginStep::Fail(
                LoginReply {
                    status: LoginStatus::InitiatorError,
                    ..
                },
                _
            )
        ));
    }
}
