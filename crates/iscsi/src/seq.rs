//! RFC 1982 serial number arithmetic on 32-bit sequence numbers, and the session's CmdSN window.

/// `a < b` in serial arithmetic.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

/// `a <= b` in serial arithmetic.
pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

/// What to do with a command's CmdSN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdSnCheck {
    /// The next expected command: deliver it now.
    InOrder,
    /// Inside the window but ahead of a gap: hold it until the gap fills.
    Ahead,
    /// Outside [ExpCmdSN, MaxCmdSN] or already seen: drop it silently (RFC 7143 section 3.2.2.1).
    Drop,
}

/// The CmdSN window of a session. MaxCmdSN follows the real free queue capacity, which is how the target
/// applies backpressure: an initiator may not send past MaxCmdSN.
#[derive(Clone, Debug)]
pub struct CmdWindow {
    exp_cmd_sn: u32,
    capacity: u32,
    in_use: u32,
    /// MaxCmdSN as advertised: it never goes back (RFC 7143 section 4.2.2.1), so a slot taken by an immediate
    /// command narrows the window only as later commands arrive, never below what the initiator was told.
    max_cmd_sn: u32,
}

impl CmdWindow {
    /// A window starting at `exp_cmd_sn` (the CmdSN of the leading login) with room for `capacity` commands.
    pub fn new(exp_cmd_sn: u32, capacity: u32) -> Self {
        assert!(capacity >= 1);
        CmdWindow {
            exp_cmd_sn,
            capacity,
            in_use: 0,
            max_cmd_sn: exp_cmd_sn.wrapping_add(capacity).wrapping_sub(1),
        }
    }

    /// ExpCmdSN to put in responses.
    pub fn exp_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn
    }

    /// MaxCmdSN to put in responses: the last CmdSN for which a queue slot is free. When the queue is full this
    /// is ExpCmdSN - 1, which closes the window (RFC 7143 section 3.2.2.1).
    pub fn max_cmd_sn(&self) -> u32 {
        self.max_cmd_sn
    }

    /// Follows the free capacity upwards; a window narrower than advertised stays as advertised.
    fn update_max(&mut self) {
        let free = self.capacity.saturating_sub(self.in_use);
        let m = self.exp_cmd_sn.wrapping_add(free).wrapping_sub(1);
        if sn_lt(self.max_cmd_sn, m) {
            self.max_cmd_sn = m;
        }
    }

    /// Classifies a non-immediate command's CmdSN.
    pub fn check(&self, cmd_sn: u32) -> CmdSnCheck {
        if cmd_sn == self.exp_cmd_sn && sn_le(cmd_sn, self.max_cmd_sn) {
            CmdSnCheck::InOrder
        } else if sn_lt(self.exp_cmd_sn, cmd_sn) && sn_le(cmd_sn, self.max_cmd_sn()) {
            CmdSnCheck::Ahead
        } else {
            CmdSnCheck::Drop
        }
    }

    /// A command with CmdSN == ExpCmdSN was taken: advance ExpCmdSN and hold a slot until `release`.
    pub fn advance(&mut self) {
        self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
        self.in_use += 1;
        self.update_max();
    }

    /// Takes a slot without advancing (immediate commands, which have no CmdSN of their own).
    pub fn hold(&mut self) {
        self.in_use += 1;
        self.update_max();
    }

    /// A command finished: its slot is free again.
    pub fn release(&mut self) {
        self.in_use = self.in_use.saturating_sub(1);
        self.update_max();
    }

    /// Commands holding a slot.
    pub fn in_use(&self) -> u32 {
        self.in_use
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_compare_wraps() {
        assert!(sn_lt(0xffff_fff0, 5));
        assert!(!sn_lt(5, 0xffff_fff0));
        assert!(sn_le(7, 7));
        assert!(!sn_lt(7, 7));
    }

    #[test]
    fn window_tracks_capacity() {
        let mut w = CmdWindow::new(10, 4);
        assert_eq!(w.max_cmd_sn(), 13);
        assert_eq!(w.check(10), CmdSnCheck::InOrder);
        assert_eq!(w.check(12), CmdSnCheck::Ahead);
        assert_eq!(w.check(14), CmdSnCheck::Drop);
        assert_eq!(w.check(9), CmdSnCheck::Drop);
        for _ in 0..4 {
            w.advance();
        }
        // Full: the window is closed (MaxCmdSN = ExpCmdSN - 1) and nothing is accepted.
        assert_eq!(w.exp_cmd_sn(), 14);
        assert_eq!(w.max_cmd_sn(), 13);
        assert_eq!(w.check(14), CmdSnCheck::Drop);
        w.release();
        assert_eq!(w.max_cmd_sn(), 14);
        assert_eq!(w.check(14), CmdSnCheck::InOrder);
    }

    #[test]
    fn max_cmd_sn_never_goes_back() {
        let mut w = CmdWindow::new(10, 2);
        assert_eq!(w.max_cmd_sn(), 11);
        // An immediate command takes a slot: the advertised window stays, and CmdSN 10 and 11 are still taken.
        w.hold();
        assert_eq!(w.max_cmd_sn(), 11);
        assert_eq!(w.check(10), CmdSnCheck::InOrder);
        w.advance();
        assert_eq!(w.check(11), CmdSnCheck::InOrder);
        w.advance();
        // Now over capacity: closed until slots come back.
        assert_eq!((w.exp_cmd_sn(), w.max_cmd_sn()), (12, 11));
        assert_eq!(w.check(12), CmdSnCheck::Drop);
        w.release();
        assert_eq!(w.max_cmd_sn(), 11);
        w.release();
        assert_eq!(w.max_cmd_sn(), 12);
        w.release();
        assert_eq!(w.max_cmd_sn(), 13);
    }

    #[test]
    fn window_wraps_around() {
        let mut w = CmdWindow::new(u32::MAX, 2);
        assert_eq!(w.max_cmd_sn(), 0);
        assert_eq!(w.check(0), CmdSnCheck::Ahead);
        w.advance();
        assert_eq!(w.exp_cmd_sn(), 0);
        assert_eq!(w.check(0), CmdSnCheck::InOrder);
    }
}
