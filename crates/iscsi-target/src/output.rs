//! A connection's output waiting for the socket.
//!
//! Small PDUs are packed into one buffer; large data segments (READ data) are queued as the buffers they already
//! are and written with `writev`, so a 1 MiB read is never copied in user space.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::tcp::OwnedWriteHalf;

use twinsan_iscsi::frame::{self, FrameLimits};
use twinsan_iscsi::pdu::BHS_LEN;

/// Data segments at least this long are queued by reference instead of copied.
const SHARE_AT: usize = 16 * 1024;
/// Most buffers handed to one `writev`.
const MAX_IOV: usize = 64;

/// Bytes queued for the socket, in order: `queue`, then `tail`.
#[derive(Default)]
pub(crate) struct Output {
    queue: VecDeque<Bytes>,
    tail: BytesMut,
    len: usize,
}

impl Output {
    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues a PDU whose data segment is copied (short segments).
    pub fn push(&mut self, bhs: &[u8; BHS_LEN], data: &[u8], limits: &FrameLimits) {
        let before = self.tail.len();
        frame::encode(&mut self.tail, bhs, &[], data, limits);
        self.len += self.tail.len() - before;
    }

    /// Queues a PDU whose data segment is a slice of a shared buffer; long segments are not copied.
    pub fn push_shared(&mut self, bhs: &[u8; BHS_LEN], data: Bytes, limits: &FrameLimits) {
        if data.len() < SHARE_AT {
            self.push(bhs, &data, limits);
            return;
        }
        let before = self.tail.len();
        frame::encode_header(&mut self.tail, bhs, limits);
        self.len += self.tail.len() - before;
        let head = self.tail.split().freeze();
        self.queue.push_back(head);
        self.len += data.len();
        let before = self.tail.len();
        frame::encode_data_trailer(&mut self.tail, &data, limits);
        self.len += self.tail.len() - before;
        self.queue.push_back(data);
    }

    /// Writes as much as the socket takes now, without waiting.
    pub fn write_now(&mut self, wr: &OwnedWriteHalf) -> io::Result<()> {
        while self.len > 0 {
            let n = {
                let mut iov: Vec<IoSlice<'_>> =
                    Vec::with_capacity(MAX_IOV.min(self.queue.len() + 1));
                iov.extend(self.queue.iter().take(MAX_IOV - 1).map(|b| IoSlice::new(b)));
                if self.queue.len() < MAX_IOV && !self.tail.is_empty() {
                    iov.push(IoSlice::new(&self.tail));
                }
                match wr.try_write_vectored(&iov) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e),
                }
            };
            self.consume(n);
        }
        Ok(())
    }

    fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            match self.queue.front_mut() {
                Some(front) if front.len() <= n => {
                    n -= front.len();
                    self.queue.pop_front();
                }
                Some(front) => {
                    front.advance(n);
                    return;
                }
                None => {
                    self.tail.advance(n);
                    return;
                }
            }
        }
    }

    /// Everything waiting, in order, as one buffer (for the last write before closing).
    pub fn take_all(&mut self) -> Vec<u8> {
        let mut all = Vec::with_capacity(self.len);
        for b in self.queue.drain(..) {
            all.extend_from_slice(&b);
        }
        all.extend_from_slice(&self.tail);
        self.tail.clear();
        self.len = 0;
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinsan_iscsi::pdu::{NopIn, Pdu};

    fn bhs(len: usize) -> [u8; BHS_LEN] {
        Pdu::NopIn(NopIn {
            data_len: len as u32,
            lun: 0,
            itt: 1,
            ttt: 0xffff_ffff,
            stat_sn: 1,
            exp_cmd_sn: 1,
            max_cmd_sn: 1,
        })
        .encode()
    }

    #[test]
    fn shared_and_copied_pdus_keep_their_order_and_framing() {
        for digests in [false, true] {
            let limits = FrameLimits {
                header_digest: digests,
                data_digest: digests,
                max_data_len: 1 << 20,
            };
            let big: Bytes = (0..40_001u32).map(|i| i as u8).collect::<Vec<_>>().into();
            let mut out = Output::default();
            let mut expect = BytesMut::new();
            out.push(&bhs(3), b"abc", &limits);
            frame::encode(&mut expect, &bhs(3), &[], b"abc", &limits);
            out.push_shared(&bhs(big.len()), big.clone(), &limits);
            frame::encode(&mut expect, &bhs(big.len()), &[], &big, &limits);
            out.push(&bhs(0), b"", &limits);
            frame::encode(&mut expect, &bhs(0), &[], b"", &limits);
            assert_eq!(out.len(), expect.len());
            // Consume in odd-sized steps, as partial writes would.
            let mut got = Vec::new();
            while !out.is_empty() {
                let mut flat = Vec::new();
                for b in &out.queue {
                    flat.extend_from_slice(b);
                }
                flat.extend_from_slice(&out.tail);
                let n = 7919.min(flat.len());
                got.extend_from_slice(&flat[..n]);
                out.consume(n);
            }
            assert_eq!(got, expect.to_vec());
        }
    }
}
