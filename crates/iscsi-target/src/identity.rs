//! LUN identity (VPD 80h serial, VPD 83h NAA designator) derived from stable inputs, so an initiator sees the
//! same device after a restart and multipath software does not mistake one LUN for another.

use md5::{Digest, Md5};

use twinsan_scsi::LunIdentity;

/// Vendor identification reported in INQUIRY.
pub const VENDOR: &str = "TWINSAN";
/// Product identification reported in INQUIRY.
pub const PRODUCT: &str = "twinsan disk";

/// The identity of a LUN whose uniqueness comes from `seed` (for `twinsan serve`: the target name, the LUN
/// number and the canonical path of the backing store; for a replicated volume: its UUID).
pub fn derive(seed: &[&[u8]], target_name: &str, portal_group_tag: u16) -> LunIdentity {
    let mut h = Md5::new();
    h.update(b"twinsan-lun-identity\0");
    for part in seed {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let digest: [u8; 16] = h.finalize().into();
    let mut naa = digest;
    // NAA 6 (IEEE Registered Extended): the designator type lives in the top nibble.
    naa[0] = 0x60 | (naa[0] & 0x0f);
    let serial: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    let revision = env!("CARGO_PKG_VERSION")
        .split('.')
        .take(2)
        .collect::<Vec<_>>()
        .join(".");
    LunIdentity {
        vendor: VENDOR.into(),
        product: PRODUCT.into(),
        revision,
        serial,
        naa,
        target_name: target_name.into(),
        relative_port: 1,
        target_portal_group: portal_group_tag,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_distinct() {
        let a = derive(&[b"iqn.a", b"1", b"/x"], "iqn.a", 1);
        assert_eq!(a, derive(&[b"iqn.a", b"1", b"/x"], "iqn.a", 1));
        let b = derive(&[b"iqn.a", b"2", b"/x"], "iqn.a", 1);
        assert_ne!(a.serial, b.serial);
        assert_ne!(a.naa, b.naa);
        assert_eq!(a.naa[0] >> 4, 6);
        // Length-prefixing keeps ("ab","c") apart from ("a","bc").
        assert_ne!(
            derive(&[b"ab", b"c"], "t", 1).naa,
            derive(&[b"a", b"bc"], "t", 1).naa
        );
    }
}
