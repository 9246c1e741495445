//! Building and checking Ethernet frames in tests: UDP/IPv4, ICMP echo, TCP/IPv4 with partial
//! or full checksums, and the checksum checks (RFC 1071, RFC 791, RFC 9293 §3.1).

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;

/// The one's complement sum of `data` as 16-bit big-endian words, not folded.
pub fn sum(mut acc: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [b] = words.remainder() {
        acc += u64::from(*b) << 8;
    }
    acc
}

/// Folds a sum to 16 bits.
pub fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(0, data))
}

/// An Ethernet frame.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 header (20 bytes, checksum set) for `payload_len` bytes of protocol `proto`.
pub fn ipv4_header(src: [u8; 4], dst: [u8; 4], proto: u8, payload_len: usize) -> Vec<u8> {
    let total = (20 + payload_len) as u16;
    let mut h = vec![0x45, 0, 0, 0, 0x42, 0x42, 0x40, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// The pseudo-header sum of TCP/UDP over IPv4 (RFC 9293 §3.1).
pub fn pseudo_sum(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u64 {
    sum(sum(0, &src), &dst) + u64::from(proto) + len as u64
}

/// A UDP/IPv4 frame with a full UDP checksum.
pub fn udp4(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    data: &[u8],
) -> Vec<u8> {
    let len = 8 + data.len();
    let mut udp = Vec::with_capacity(len);
    udp.extend_from_slice(&src.1.to_be_bytes());
    udp.extend_from_slice(&dst.1.to_be_bytes());
    udp.extend_from_slice(&(len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(data);
    let c = match !fold(sum(pseudo_sum(src.0, dst.0, 17, len), &udp)) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    let mut ip = ipv4_header(src.0, dst.0, 17, len);
    ip.extend_from_slice(&udp);
    ethernet(dst_mac, src_mac, ETHERTYPE_IPV4, &ip)
}

/// An ICMP echo request frame.
pub fn icmp_echo(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    id: u16,
    seq: u16,
    data: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(data);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = ipv4_header(src, dst, 1, icmp.len());
    ip.extend_from_slice(&icmp);
    ethernet(dst_mac, src_mac, ETHERTYPE_IPV4, &ip)
}

/// A TCP/IPv4 frame carrying `data` with sequence number `seq`, flags ACK|PSH, and either a
/// full checksum or (`partial`) only the pseudo-header sum, as a driver with VIRTIO_NET_F_CSUM
/// leaves it (csum_start 34, csum_offset 16).
pub fn tcp4(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    seq: u32,
    data: &[u8],
    partial: bool,
) -> Vec<u8> {
    let len = 20 + data.len();
    let mut tcp = vec![0x13, 0x88, 0x13, 0x89];
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    tcp.extend_from_slice(data);
    let pseudo = pseudo_sum(src, dst, 6, len);
    let c = if partial {
        fold(pseudo)
    } else {
        !fold(sum(pseudo, &tcp))
    };
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = ipv4_header(src, dst, 6, len);
    ip.extend_from_slice(&tcp);
    ethernet(dst_mac, src_mac, ETHERTYPE_IPV4, &ip)
}

/// Whether an Ethernet + IPv4 + TCP frame's IP header checksum and TCP checksum verify.
pub fn tcp4_checksums_ok(f: &[u8]) -> bool {
    if f.len() < 54 || checksum(&f[14..34]) != 0 {
        return false;
    }
    let src: [u8; 4] = f[26..30].try_into().unwrap();
    let dst: [u8; 4] = f[30..34].try_into().unwrap();
    let tcp = &f[34..];
    fold(sum(pseudo_sum(src, dst, 6, tcp.len()), tcp)) == 0xffff
}

/// The TCP payload of an Ethernet + IPv4 (20-byte header) + TCP (20-byte header) frame.
pub fn tcp4_payload(f: &[u8]) -> &[u8] {
    &f[54..]
}

/// The UDP destination port and payload of an Ethernet + IPv4 + UDP frame, if it is one.
pub fn udp4_payload(f: &[u8]) -> Option<(u16, &[u8])> {
    if f.len() < 42 || f[12..14] != ETHERTYPE_IPV4.to_be_bytes() || f[23] != 17 {
        return None;
    }
    let ihl = usize::from(f[14] & 0xf) * 4;
    let udp = f.get(14 + ihl..)?;
    let port = u16::from_be_bytes([udp[2], udp[3]]);
    Some((port, udp.get(8..)?))
}
