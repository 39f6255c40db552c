//! The kernel's UDP socket tables, parsed: how many datagrams the kernel
//! dropped at given sockets because their receive buffers were full. Sans-IO
//! like the rest of this crate: the caller reads `/proc/net/udp`,
//! `/proc/net/udp6` and `/proc/net/snmp` and passes the text in. The relay
//! reports its own socket's drops as a metric; the load tester reports its
//! sockets' drops next to the latencies it measured, because a latency
//! taken while datagrams were dropped measures the kernel's buffers.

/// The summed `drops` column of the rows of a `/proc/net/udp` or
/// `/proc/net/udp6` table whose socket inode is one of `inodes`, and how
/// many rows matched. Rows that do not parse are skipped.
pub fn socket_drops(table: &str, inodes: &[u64]) -> (u64, usize) {
    let mut drops = 0u64;
    let mut matched = 0usize;
    for line in table.lines().skip(1) {
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (Some(inode), Some(d)) = (cols.get(9), cols.get(12)) else {
            continue;
        };
        let (Ok(inode), Ok(d)) = (inode.parse::<u64>(), d.parse::<u64>()) else {
            continue;
        };
        if inodes.contains(&inode) {
            drops = drops.saturating_add(d);
            matched += 1;
        }
    }
    (drops, matched)
}

/// The host's `Udp: RcvbufErrors` counter from `/proc/net/snmp` (all UDP
/// sockets of the network namespace), if present.
pub fn host_rcvbuf_errors(snmp: &str) -> Option<u64> {
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let header = lines.next()?;
    let values = lines.next()?;
    let i = header
        .split_whitespace()
        .position(|h| h == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  763: 0100007F:1C84 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4711 2 0000000000000000 115254
  764: 0100007F:1C85 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4712 2 0000000000000000 7
  765: 0100007F:1C86 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4713 2 0000000000000000 0
";

    #[test]
    fn sums_the_drops_of_the_named_sockets_only() {
        assert_eq!(socket_drops(UDP, &[4711]), (115_254, 1));
        assert_eq!(socket_drops(UDP, &[4712, 4713]), (7, 2));
        assert_eq!(socket_drops(UDP, &[1]), (0, 0));
        assert_eq!(socket_drops("header only\n", &[4711]), (0, 0));
        assert_eq!(socket_drops("h\n garbage line\n", &[4711]), (0, 0));
    }

    #[test]
    fn reads_rcvbuf_errors_from_snmp() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
Udp: 100 2 16 90 16 0 0 0 0\n";
        assert_eq!(host_rcvbuf_errors(snmp), Some(16));
        assert_eq!(host_rcvbuf_errors("Ip: a\nIp: 1\n"), None);
    }
}
