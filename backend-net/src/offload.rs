//! Software fallbacks for the offloads a receiving driver did not ack: completing a partial
//! checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM) and cutting a TCP segmentation offload frame
//! (VIRTIO_NET_HDR_GSO_TCPV4 / TCPV6) into MSS-sized frames with full checksums.
//!
//! Checksums are the Internet checksum (RFC 1071) with the TCP pseudo-header of RFC 9293 §3.1
//! (IPv4) and RFC 8200 §8.1 (IPv6). A partial checksum, as virtio-net defines it, already holds
//! the pseudo-header sum in the checksum field; completing it is summing from `csum_start` to
//! the end and storing the complement (as Linux's `skb_checksum_help`).

use crate::hdr::{Gso, NetHdr};
use crate::mac::ETH_HLEN;

/// Most segments one GSO frame may be cut into; more (a tiny `gso_size`) drops the frame.
pub const MAX_SEGMENTS: usize = 1024;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// A frame the software offload cannot handle: it is dropped and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// The checksum location is outside the frame.
    #[error("checksum location {0} is outside the frame")]
    CsumRange(usize),
    /// Not Ethernet + IPv4/IPv6 (without extension headers) + TCP, or headers cut short.
    #[error("GSO frame is not a well-formed TCP/IP frame: {0}")]
    NotTcp(&'static str),
    /// More segments than [`MAX_SEGMENTS`].
    #[error("GSO frame would make {0} segments")]
    TooManySegments(usize),
    /// A segment's IP length (IPv4 total length, IPv6 payload length) would exceed the 16-bit
    /// field: `gso_size` plus the headers is above 65,535 bytes.
    #[error("GSO frame would make segments with an IP length of {0} bytes (at most 65535)")]
    SegmentTooLong(usize),
}

/// Largest value of the IPv4 total length and IPv6 payload length fields, bytes.
pub const MAX_IP_LENGTH: usize = u16::MAX as usize;

/// Adds `data` as big-endian 16-bit words to a one's complement running sum.
fn sum_words(mut sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    sum
}

/// Folds a running sum to 16 bits and complements it; 0 becomes 0xffff (equal in one's
/// complement, and required for UDP).
fn finish(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    match !(sum as u16) {
        0 => 0xffff,
        c => c,
    }
}

/// The Internet checksum of `data`.
pub fn internet_checksum(data: &[u8]) -> u16 {
    finish(sum_words(0, data))
}

/// Completes a partial checksum in place: sums `frame[csum_start..]` (whose checksum field
/// holds the pseudo-header sum) and stores the result at `csum_start + csum_offset`.
///
/// # Errors
/// [`OffloadError::CsumRange`] when the field lies outside `frame`.
pub fn complete_checksum(
    frame: &mut [u8],
    csum_start: u16,
    csum_offset: u16,
) -> Result<(), OffloadError> {
    let start = usize::from(csum_start);
    let at = start + usize::from(csum_offset);
    if at + 2 > frame.len() {
        return Err(OffloadError::CsumRange(at));
    }
    let c = internet_checksum(&frame[start..]);
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Offsets of the headers of an Ethernet + IP + TCP frame.
struct TcpFrame {
    /// Start of the IP header.
    ip: usize,
    /// Start of the TCP header.
    tcp: usize,
    /// Start of the payload.
    payload: usize,
    v6: bool,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|w| u16::from_be_bytes([w[0], w[1]]))
}

fn locate(frame: &[u8], gso: Gso) -> Result<TcpFrame, OffloadError> {
    let mut ip = ETH_HLEN;
    let mut ethertype = be16(frame, 12).ok_or(OffloadError::NotTcp("short Ethernet header"))?;
    if ethertype == ETHERTYPE_VLAN {
        ethertype = be16(frame, 16).ok_or(OffloadError::NotTcp("short VLAN tag"))?;
        ip += 4;
    }
    let (tcp, v6) = match (gso, ethertype) {
        (Gso::TcpV4, ETHERTYPE_IPV4) => {
            let vihl = *frame
                .get(ip)
                .ok_or(OffloadError::NotTcp("short IPv4 header"))?;
            let ihl = usize::from(vihl & 0x0f) * 4;
            if vihl >> 4 != 4 || ihl < 20 || frame.get(ip + 9) != Some(&IPPROTO_TCP) {
                return Err(OffloadError::NotTcp("not an IPv4 TCP packet"));
            }
            (ip + ihl, false)
        }
        (Gso::TcpV6, ETHERTYPE_IPV6) => {
            if frame.get(ip).map(|v| v >> 4) != Some(6) || frame.get(ip + 6) != Some(&IPPROTO_TCP) {
                return Err(OffloadError::NotTcp(
                    "not an IPv6 TCP packet without extension headers",
                ));
            }
            (ip + 40, true)
        }
        _ => return Err(OffloadError::NotTcp("EtherType does not match gso_type")),
    };
    let doff = frame.get(tcp + 12).map(|d| usize::from(d >> 4) * 4);
    let payload = match doff {
        Some(d) if d >= 20 && tcp + d <= frame.len() => tcp + d,
        _ => return Err(OffloadError::NotTcp("short TCP header")),
    };
    Ok(TcpFrame {
        ip,
        tcp,
        payload,
        v6,
    })
}

/// Cuts a TCP segmentation offload frame into frames of at most `hdr.gso_size` payload bytes,
/// each with correct IP lengths, IPv4 identification and header checksum, TCP sequence number,
/// flags (FIN and PSH on the last only, CWR on the first only) and full TCP checksum.
///
/// # Errors
/// [`OffloadError`] when the frame is not TCP over IPv4/IPv6 matching `hdr.gso_type`, would
/// make more than [`MAX_SEGMENTS`] segments, or a segment whose IP length does not fit 16 bits
/// ([`MAX_IP_LENGTH`]).
pub fn segment_tcp(frame: &[u8], hdr: &NetHdr) -> Result<Vec<Vec<u8>>, OffloadError> {
    let t = locate(frame, hdr.gso())?;
    let mss = usize::from(hdr.gso_size.max(1));
    let payload = &frame[t.payload..];
    let count = payload.len().div_ceil(mss).max(1);
    if count > MAX_SEGMENTS {
        return Err(OffloadError::TooManySegments(count));
    }
    let longest = ip_length(&t, t.payload + mss.min(payload.len()));
    if longest > MAX_IP_LENGTH {
        return Err(OffloadError::SegmentTooLong(longest));
    }
    let headers = &frame[..t.payload];
    let seq0 = u32::from_be_bytes([
        frame[t.tcp + 4],
        frame[t.tcp + 5],
        frame[t.tcp + 6],
        frame[t.tcp + 7],
    ]);
    let flags0 = frame[t.tcp + 13];
    let id0 = be16(frame, t.ip + 4).unwrap_or(0);
    let mut out = Vec::with_capacity(count);
    for (i, chunk) in payload
        .chunks(mss)
        .chain(payload.is_empty().then_some(&[][..]))
        .enumerate()
    {
        let mut seg = Vec::with_capacity(headers.len() + chunk.len());
        seg.extend_from_slice(headers);
        seg.extend_from_slice(chunk);
        let last = i + 1 == count;
        // i < MAX_SEGMENTS and mss <= 65535: the offset fits in u32.
        let seq = seq0.wrapping_add((i * mss) as u32);
        seg[t.tcp + 4..t.tcp + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if !last {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        seg[t.tcp + 13] = flags;
        fix_ip_and_tcp(&mut seg, &t, id0.wrapping_add(i as u16));
        out.push(seg);
    }
    Ok(out)
}

/// The IP length field's value for a segment of `seg_len` bytes laid out as `t`: the IPv6
/// payload length (after the 40-byte fixed header) or the IPv4 total length.
fn ip_length(t: &TcpFrame, seg_len: usize) -> usize {
    if t.v6 {
        seg_len - t.ip - 40
    } else {
        seg_len - t.ip
    }
}

/// Sets the IP length fields (and IPv4 identification and header checksum) of `seg` and
/// computes its TCP checksum from scratch. The caller checked that the IP length fits
/// ([`MAX_IP_LENGTH`]).
fn fix_ip_and_tcp(seg: &mut [u8], t: &TcpFrame, id: u16) {
    let tcp_len = seg.len() - t.tcp;
    let length = u16::try_from(ip_length(t, seg.len())).unwrap_or(u16::MAX);
    let pseudo = if t.v6 {
        seg[t.ip + 4..t.ip + 6].copy_from_slice(&length.to_be_bytes());
        let s = sum_words(0, &seg[t.ip + 8..t.ip + 40]);
        s + tcp_len as u64 + u64::from(IPPROTO_TCP)
    } else {
        seg[t.ip + 2..t.ip + 4].copy_from_slice(&length.to_be_bytes());
        seg[t.ip + 4..t.ip + 6].copy_from_slice(&id.to_be_bytes());
        seg[t.ip + 10..t.ip + 12].fill(0);
        let c = internet_checksum(&seg[t.ip..t.tcp]);
        seg[t.ip + 10..t.ip + 12].copy_from_slice(&c.to_be_bytes());
        let s = sum_words(0, &seg[t.ip + 12..t.ip + 20]);
        s + tcp_len as u64 + u64::from(IPPROTO_TCP)
    };
    seg[t.tcp + 16..t.tcp + 18].fill(0);
    let c = finish(sum_words(pseudo, &seg[t.tcp..]));
    seg[t.tcp + 16..t.tcp + 18].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;
    use virtio_bindings::virtio_net::{VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6};

    use super::*;
    use crate::hdr::{F_NEEDS_CSUM, MAX_GSO_FRAME};

    /// An Ethernet + IPv4 + TCP frame with `payload`, correct checksums, flags PSH|FIN|CWR|ACK.
    pub(crate) fn tcp4_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1, 0x08, 0x00];
        let total = (20 + 20 + payload.len()) as u16;
        f.extend([
            0x45,
            0,
            0,
            0,
            0x12,
            0x34,
            0x40,
            0,
            64,
            IPPROTO_TCP,
            0,
            0,
            10,
            0,
            0,
            1,
            10,
            0,
            0,
            2,
        ]);
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f.extend([
            0x30, 0x39, 0x00, 0x50, 0, 0, 0x10, 0, 0, 0, 0, 0, 0x50, 0x99, 0xff, 0xff, 0, 0, 0, 0,
        ]);
        f.extend_from_slice(payload);
        let t = locate(&f, Gso::TcpV4).unwrap();
        fix_ip_and_tcp(&mut f, &t, 0x1234);
        f
    }

    /// An Ethernet + IPv6 + TCP frame with `payload` and a correct checksum.
    fn tcp6_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1, 0x86, 0xdd];
        f.extend([0x60, 0, 0, 0, 0, 0, IPPROTO_TCP, 64]);
        f.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        f.extend([
            0x30, 0x39, 0x00, 0x50, 0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0,
            0, 0, 0,
        ]);
        f.extend_from_slice(payload);
        let t = locate(&f, Gso::TcpV6).unwrap();
        fix_ip_and_tcp(&mut f, &t, 0);
        f
    }

    /// Whether the IPv4 header and TCP checksums of `f` verify (sum to 0xffff / fold to 0).
    fn verifies(f: &[u8], gso: Gso) -> bool {
        let t = locate(f, gso).unwrap();
        let tcp_len = (f.len() - t.tcp) as u64;
        let pseudo = if t.v6 {
            sum_words(0, &f[t.ip + 8..t.ip + 40]) + tcp_len + 6
        } else {
            if internet_checksum(&f[t.ip..t.tcp]) != 0xffff {
                return false;
            }
            sum_words(0, &f[t.ip + 12..t.ip + 20]) + tcp_len + 6
        };
        matches!(finish(sum_words(pseudo, &f[t.tcp..])), 0xffff)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2, complement 220d.
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
        assert_eq!(internet_checksum(&[0xff]), 0x00ff);
    }

    #[test]
    fn completing_a_partial_checksum_gives_the_full_one() {
        let full = tcp4_frame(b"hello, partial checksum");
        assert!(verifies(&full, Gso::TcpV4));
        // What a driver with VIRTIO_NET_F_CSUM sends: the pseudo-header sum, not complemented.
        let mut partial = full.clone();
        let tcp = 34;
        let tcp_len = (partial.len() - tcp) as u64;
        let pseudo = sum_words(0, &partial[26..34]) + tcp_len + 6;
        let folded = !finish(pseudo);
        partial[tcp + 16..tcp + 18].copy_from_slice(&folded.to_be_bytes());
        complete_checksum(&mut partial, tcp as u16, 16).unwrap();
        assert_eq!(partial, full);
        assert_eq!(
            complete_checksum(&mut partial, 60, 16),
            Err(OffloadError::CsumRange(76))
        );
    }

    #[test]
    fn segments_a_tcp4_frame() {
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let frame = tcp4_frame(&payload);
        let hdr = NetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
            gso_size: 1448,
            ..Default::default()
        };
        let segs = segment_tcp(&frame, &hdr).unwrap();
        assert_eq!(segs.len(), 3);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(verifies(s, Gso::TcpV4), "segment {i} checksums");
            assert_eq!(u16::from_be_bytes([s[16], s[17]]) as usize, s.len() - 14);
            assert_eq!(u16::from_be_bytes([s[18], s[19]]), 0x1234 + i as u16);
            let seq = u32::from_be_bytes([s[38], s[39], s[40], s[41]]);
            assert_eq!(seq, 0x1000 + (i as u32) * 1448);
            let flags = s[47];
            assert_eq!(flags & (TCP_FIN | TCP_PSH) != 0, i == 2);
            assert_eq!(flags & TCP_CWR != 0, i == 0);
            joined.extend_from_slice(&s[54..]);
        }
        assert_eq!(joined, payload);
        assert!(segs[0].len() == 54 + 1448 && segs[2].len() == 54 + 104);
    }

    #[test]
    fn segments_a_tcp6_frame() {
        let payload = vec![7u8; 2000];
        let frame = tcp6_frame(&payload);
        let hdr = NetHdr {
            gso_type: VIRTIO_NET_HDR_GSO_TCPV6 as u8,
            gso_size: 1000,
            ..Default::default()
        };
        let segs = segment_tcp(&frame, &hdr).unwrap();
        assert_eq!(segs.len(), 2);
        for s in &segs {
            assert!(verifies(s, Gso::TcpV6));
            assert_eq!(u16::from_be_bytes([s[18], s[19]]) as usize, s.len() - 54);
        }
        let seq1 = u32::from_be_bytes([segs[1][58], segs[1][59], segs[1][60], segs[1][61]]);
        assert_eq!(
            seq1,
            0xffff_fff0u32.wrapping_add(1000),
            "sequence numbers wrap"
        );
    }

    #[test]
    fn rejects_what_it_cannot_segment() {
        let frame = tcp4_frame(&[0; 100]);
        let v6 = NetHdr {
            gso_type: VIRTIO_NET_HDR_GSO_TCPV6 as u8,
            gso_size: 10,
            ..Default::default()
        };
        assert!(matches!(
            segment_tcp(&frame, &v6),
            Err(OffloadError::NotTcp(_))
        ));
        let mut udp = frame.clone();
        udp[23] = 17;
        let v4 = NetHdr {
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
            gso_size: 10,
            ..Default::default()
        };
        assert!(matches!(
            segment_tcp(&udp, &v4),
            Err(OffloadError::NotTcp(_))
        ));
        assert!(matches!(
            segment_tcp(&frame[..40], &v4),
            Err(OffloadError::NotTcp(_))
        ));
        let big = tcp4_frame(&[0; 5000]);
        let tiny = NetHdr { gso_size: 1, ..v4 };
        assert_eq!(
            segment_tcp(&big, &tiny),
            Err(OffloadError::TooManySegments(5000))
        );
    }

    #[test]
    fn refuses_segments_longer_than_the_ip_length_field() {
        let v4 = NetHdr {
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
            gso_size: u16::MAX,
            ..Default::default()
        };
        // The largest GSO frame: 65,500 payload bytes make an IPv4 packet of 65,540.
        let largest = tcp4_frame(&vec![1; MAX_GSO_FRAME - 54]);
        assert_eq!(
            segment_tcp(&largest, &v4),
            Err(OffloadError::SegmentTooLong(65_540))
        );
        // 65,495 payload bytes fill the field exactly.
        let fits = tcp4_frame(&vec![1; 65_495]);
        let segs = segment_tcp(&fits, &v4).unwrap();
        assert_eq!(segs.len(), 1);
        assert_eq!(&segs[0][16..18], &[0xff, 0xff]);
        assert!(verifies(&segs[0], Gso::TcpV4));
        let split = NetHdr {
            gso_size: 32_768,
            ..v4
        };
        assert_eq!(segment_tcp(&largest, &split).unwrap().len(), 2);
    }

    proptest! {
        /// Over the whole GSO range (frames up to 64 KiB, any `gso_size` that makes at most
        /// MAX_SEGMENTS segments), IPv4 and IPv6: the segments carry the payload in order, each
        /// with checksums that verify and an IP length field that is its true length; a
        /// `gso_size` whose segments would not fit the 16-bit IP length is refused.
        #[test]
        fn segmentation_preserves_payload_and_checksums(
            (len, mss) in prop_oneof![
                (0usize..=MAX_GSO_FRAME - 54, 64u16..=u16::MAX),
                // Near the 16-bit limit of the IP length.
                (MAX_GSO_FRAME - 90..=MAX_GSO_FRAME - 54, 65_450u16..=u16::MAX),
            ],
            v6 in any::<bool>(),
        ) {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let (frame, gso, gso_type, hdrs) = if v6 {
                (tcp6_frame(&payload), Gso::TcpV6, VIRTIO_NET_HDR_GSO_TCPV6, 74)
            } else {
                (tcp4_frame(&payload), Gso::TcpV4, VIRTIO_NET_HDR_GSO_TCPV4, 54)
            };
            let hdr = NetHdr { gso_type: gso_type as u8, gso_size: mss, ..Default::default() };
            let longest = hdrs - 14 - if v6 { 40 } else { 0 } + usize::from(mss).min(len);
            let segs = match segment_tcp(&frame, &hdr) {
                Err(OffloadError::SegmentTooLong(n)) => {
                    prop_assert_eq!(n, longest);
                    prop_assert!(n > MAX_IP_LENGTH);
                    return Ok(());
                }
                r => r.unwrap(),
            };
            prop_assert!(longest <= MAX_IP_LENGTH);
            let mut joined = Vec::new();
            for s in &segs {
                prop_assert!(verifies(s, gso));
                prop_assert!(s.len() - hdrs <= usize::from(mss));
                let (at, ip_len) = if v6 { (18, s.len() - 54) } else { (16, s.len() - 14) };
                prop_assert_eq!(usize::from(u16::from_be_bytes([s[at], s[at + 1]])), ip_len);
                joined.extend_from_slice(&s[hdrs..]);
            }
            prop_assert_eq!(joined, payload);
        }

        #[test]
        fn arbitrary_frames_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..200), v6 in any::<bool>(), mss in 0u16..100) {
            let gso_type = if v6 { VIRTIO_NET_HDR_GSO_TCPV6 } else { VIRTIO_NET_HDR_GSO_TCPV4 } as u8;
            let _ = segment_tcp(&frame, &NetHdr { gso_type, gso_size: mss, ..Default::default() });
            let mut f = frame.clone();
            let _ = complete_checksum(&mut f, mss, 16);
        }
    }
}
