//! The cluster manager of twinsan, as a core with no I/O (Pacemaker semantics for one job: a two-node cluster
//! whose resources are, per replicated volume, the volume, its virtual IP, its iSCSI target and its LUNs).
//!
//! - [`scheduler`]: the pure function that turns the configuration and the cluster state into the ordered
//!   actions of one transition, with notes that explain each decision; tested with golden cases kept as data
//!   files under `tests/scheduler/`, like Pacemaker's scheduler regression tests.
//! - [`membership`]: which nodes are Online, from heartbeats on one or more cluster links (redundant links, like
//!   corosync's), with the time and the datagrams passed in.
//! - [`lease`]: when a Primary may complete I/O without its peer, and when the survivor may take over, so a
//!   frozen Primary never acknowledges a write the survivor does not have.
//! - [`failover`]: the node's gating of the scheduler's actions (start-up wait, witness settling, early loss,
//!   held takeovers, which side starts, retries due), the scheduler input it builds from its own state and the
//!   peer's report, and the fence-request rules; simulated with the scheduler, membership and leases in the loop.
//! - [`message`]: the codec of what nodes tell each other besides heartbeats (reports, fencing), with the peer's
//!   states as typed values.
//! - [`backoff`]: when a failed action is tried again.
//!
//! The sockets and clock of membership, the resource agents and the executor that runs the actions are drivers
//! around this core; they pass the time and the datagrams in and carry the actions out.

pub mod backoff;
pub mod error;
pub mod failover;
pub mod lease;
pub mod membership;
pub mod message;
pub mod scheduler;
pub mod witness;

#[cfg(test)]
mod test_rng;

pub use error::{InputError, MembershipError};
pub use scheduler::{schedule, ClusterInput, Schedule};
