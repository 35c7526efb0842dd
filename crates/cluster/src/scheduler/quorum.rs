//! Quorum: whether the nodes this node can see may run resources at all.
//!
//! Votes: one per configured node, plus one for the witness when one is configured. The partition is the set of
//! online nodes (this node's membership); it has quorum with more than half of all votes. Two nodes without a
//! witness: together 2 of 2, a lone node 1 of 2 (no quorum). With a witness: together 2 of 3 whatever the witness
//! says, a lone node 2 of 3 only if it holds the witness vote.
//!
//! Without quorum: with a witness, nothing is promoted and everything this partition runs stops (the witness is
//! there so that two separated nodes never both promote; `no_quorum_policy` does not apply). Without a witness,
//! `no_quorum_policy` decides: `ignore` (the seed's two-node mode) acts as if quorate — after a full partition
//! both sides may promote, and the split brain is reported by the volume when the link heals — while `stop`
//! stops everything.

use super::input::{ClusterInput, NoQuorumPolicy};

/// What quorum allows this partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuorumVerdict {
    /// Run and promote as placement decides.
    MayRun,
    /// Promote nothing and stop what runs here; the text says why.
    StopAll(String),
}

/// Decides quorum for the partition the input describes and adds a `quorum: ...` note whenever a vote is
/// missing.
pub fn assess(input: &ClusterInput, notes: &mut Vec<String>) -> QuorumVerdict {
    let state = &input.state;
    let options = &input.config.options;
    let mut online: Vec<&str> = state
        .nodes
        .iter()
        .filter(|n| n.online)
        .map(|n| n.name.as_str())
        .collect();
    online.sort_unstable();
    let vote_here = options.witness
        && state
            .witness_vote
            .as_deref()
            .is_some_and(|holder| online.contains(&holder));
    let total = state.nodes.len() + usize::from(options.witness);
    let votes = online.len() + usize::from(vote_here);
    let quorate = votes * 2 > total;
    if online.is_empty() {
        notes.push("quorum: no node is online: nothing can run".to_string());
        return QuorumVerdict::StopAll("no node is online".to_string());
    }
    let members = online.join(", ");
    let tally = format!("{votes} of {total} votes");
    if votes == total {
        return QuorumVerdict::MayRun;
    }
    if quorate {
        let how = if vote_here {
            format!("{members} with the witness vote")
        } else {
            members
        };
        notes.push(format!("quorum: {how}: {tally}, quorate"));
        return QuorumVerdict::MayRun;
    }
    if options.witness {
        let why = match state.witness_vote.as_deref() {
            None => "no node holds the witness vote".to_string(),
            Some(holder) => format!("the witness vote is held by {holder}, outside this partition"),
        };
        notes.push(format!(
            "quorum: {members} without quorum ({tally}): {why}; nothing is promoted and what runs on {members} stops, \
             so that two separated nodes never both promote"
        ));
        return QuorumVerdict::StopAll(why);
    }
    match options.no_quorum_policy {
        NoQuorumPolicy::Ignore => {
            notes.push(format!(
                "quorum: {members} without quorum ({tally}); no-quorum-policy ignore (two-node mode): it decides alone; \
                 if the peer is alive and only cut off, both sides may promote, and the volume reports the split \
                 brain when the link heals"
            ));
            QuorumVerdict::MayRun
        }
        NoQuorumPolicy::Stop => {
            notes.push(format!(
                "quorum: {members} without quorum ({tally}); no-quorum-policy stop: nothing is promoted and what \
                 runs on {members} stops"
            ));
            QuorumVerdict::StopAll("no-quorum-policy is stop".to_string())
        }
    }
}
