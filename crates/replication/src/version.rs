//! Protocol versions of the replication link: the range this build speaks, the version two nodes agree on at
//! connect, and the features each version brings.
//!
//! Policy (docs/upgrade.md): a release talks to the previous release, so a pair can be upgraded one node at a
//! time. Each side announces the range it speaks during the handshake (see [`crate::wire`], *Versions*); both
//! then speak the highest version in both ranges, and a feature newer than that version stays off
//! ([`ProtocolVersion::speaks`]) until both nodes run a release that has it.

use std::fmt;

/// The replication protocol versions this build speaks. 2: reservation state frames (the first release with a
/// fixed version, commit b3ce254, speaks exactly 2); 3: `ResizeRequest`/`ResizeReply` on a live connection
/// (online resize); 4: two copies of different sizes agree at connect (the smaller grows: a resize the link cut
/// short completes when it comes back). Frames are the same as in 3; only the behaviour at connect differs.
pub const PROTOCOL_VERSIONS: VersionRange = VersionRange { min: 2, max: 5 };

/// A range of protocol versions, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionRange {
    /// The lowest version.
    pub min: u32,
    /// The highest version.
    pub max: u32,
}

impl VersionRange {
    /// One version only: what a release before version ranges speaks.
    pub const fn only(version: u32) -> VersionRange {
        VersionRange {
            min: version,
            max: version,
        }
    }

    /// Whether `version` is in the range.
    pub const fn contains(&self, version: u32) -> bool {
        self.min <= version && version <= self.max
    }

    /// The highest version both ranges hold, or `None` if they do not overlap.
    pub fn highest_common(&self, other: &VersionRange) -> Option<u32> {
        let low = self.min.max(other.min);
        let high = self.max.min(other.max);
        (low <= high).then_some(high)
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..={}", self.min, self.max)
        }
    }
}

/// A feature of the replication protocol that not every version has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Feature {
    /// `Message::Reservations` and its acknowledgement (version 2; every version this build speaks has it).
    ReservationState,
    /// `Message::ResizeRequest`/`ResizeReply` on a live connection, to grow the volume online (version 3).
    OnlineResize,
    /// At connect, a copy smaller than the peer's grows to the peer's size instead of refusing the connection
    /// (version 4).
    SizeAtConnect,
    /// A disk that attaches on a connected node compares generations again on the live link (`Sizes` on a live
    /// link starts the answer), and a Primary may attach its disk under its peer (version 5). Before, the
    /// exchange closed the link, which a diskless Primary cannot afford: it serves through that link.
    LiveReexchange,
}

impl Feature {
    /// Every feature.
    pub const ALL: [Feature; 4] = [
        Feature::ReservationState,
        Feature::OnlineResize,
        Feature::SizeAtConnect,
        Feature::LiveReexchange,
    ];

    /// The first protocol version that has the feature.
    pub const fn since(self) -> u32 {
        match self {
            Feature::ReservationState => 2,
            Feature::OnlineResize => 3,
            Feature::SizeAtConnect => 4,
            Feature::LiveReexchange => 5,
        }
    }
}

/// The protocol version two connected nodes agreed on: the highest both speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion(u32);

impl ProtocolVersion {
    /// The version both `ours` and `theirs` speak, the highest such; `None` if the ranges do not overlap.
    pub fn negotiate(ours: &VersionRange, theirs: &VersionRange) -> Option<ProtocolVersion> {
        ours.highest_common(theirs).map(ProtocolVersion)
    }

    /// The version number.
    pub const fn number(self) -> u32 {
        self.0
    }

    /// Whether a peer speaking this version understands `feature`.
    pub const fn speaks(self, feature: Feature) -> bool {
        self.0 >= feature.since()
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_common_version_is_spoken() {
        let previous = VersionRange::only(2);
        let next = VersionRange { min: 3, max: 4 };
        let ours = PROTOCOL_VERSIONS;
        assert_eq!(
            ProtocolVersion::negotiate(&ours, &previous).map(ProtocolVersion::number),
            Some(2)
        );
        assert_eq!(
            ProtocolVersion::negotiate(&previous, &ours).map(ProtocolVersion::number),
            Some(2)
        );
        assert_eq!(
            ProtocolVersion::negotiate(&ours, &ours).map(ProtocolVersion::number),
            Some(5)
        );
        assert_eq!(
            ProtocolVersion::negotiate(&ours, &next).map(ProtocolVersion::number),
            Some(4)
        );
        // 0.2.0 speaks 2..=3.
        let release_0_2 = VersionRange { min: 2, max: 3 };
        assert_eq!(
            ProtocolVersion::negotiate(&ours, &release_0_2).map(ProtocolVersion::number),
            Some(3)
        );
        assert_eq!(ProtocolVersion::negotiate(&previous, &next), None);
    }

    #[test]
    fn features_newer_than_the_version_stay_off() {
        let old = ProtocolVersion::negotiate(&PROTOCOL_VERSIONS, &VersionRange::only(2)).unwrap();
        assert!(old.speaks(Feature::ReservationState));
        assert!(!old.speaks(Feature::OnlineResize));
        let release_0_2 =
            ProtocolVersion::negotiate(&PROTOCOL_VERSIONS, &VersionRange { min: 2, max: 3 })
                .unwrap();
        assert!(release_0_2.speaks(Feature::OnlineResize));
        assert!(!release_0_2.speaks(Feature::SizeAtConnect));
        let new = ProtocolVersion::negotiate(&PROTOCOL_VERSIONS, &PROTOCOL_VERSIONS).unwrap();
        assert!(Feature::ALL.into_iter().all(|f| new.speaks(f)));
        // Every feature is spoken by the highest version this build speaks.
        assert!(Feature::ALL
            .into_iter()
            .all(|f| PROTOCOL_VERSIONS.contains(f.since()) || f.since() < PROTOCOL_VERSIONS.min));
    }

    #[test]
    fn ranges_print_as_rust_ranges() {
        assert_eq!(VersionRange::only(2).to_string(), "2");
        assert_eq!(PROTOCOL_VERSIONS.to_string(), "2..=5");
    }
}
